//! The reverse proxies Wharf's ingress is measured against: nginx and HAProxy (Debian's 2.6),
//! each in front of the same instance the Wharf rows use, on a free loopback port, for as long
//! as the [`ReverseProxy`] lives. The configurations are what a user would write for this job,
//! tuned sensibly and nothing more: one worker (thread) per core, keep-alive to the client and
//! pooled, reused connections to the instance, no access log.
//!
//! nginx closes a connection after `keepalive_requests` requests (1,000 by default, HTTP/2
//! included) and the load generators do not reconnect, so both of its limits are raised.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::system::{wait_for, wrk};

/// A running reverse proxy in front of one upstream; stopped (SIGTERM, then reaped) on drop.
pub struct ReverseProxy {
    pub name: &'static str,
    pub port: u16,
    process: Child,
}

impl ReverseProxy {
    /// nginx with `worker_processes` = the number of cores.
    pub fn nginx(dir: &Path, upstream: &str) -> anyhow::Result<ReverseProxy> {
        ReverseProxy::start_nginx(&dir.join("nginx"), upstream, "", "", "nginx")
    }

    /// nginx terminating TLS (HTTP/2 and HTTP/1.1) with `cert` and `key` (PEM), as the HTTPS
    /// ingress's baseline.
    pub fn nginx_tls(dir: &Path, cert: &str, key: &str, upstream: &str) -> anyhow::Result<ReverseProxy> {
        let prefix = dir.join("nginx-tls");
        std::fs::create_dir_all(&prefix)?;
        std::fs::write(prefix.join("cert.pem"), cert)?;
        std::fs::write(prefix.join("key.pem"), key)?;
        let tls = format!(
            "ssl_certificate {p}/cert.pem; ssl_certificate_key {p}/key.pem; ssl_protocols TLSv1.2 TLSv1.3;",
            p = prefix.display()
        );
        ReverseProxy::start_nginx(&prefix, upstream, " ssl http2", &tls, "nginx (TLS)")
    }

    /// nginx under `prefix`, listening with `listen_options` and `server_directives` added.
    fn start_nginx(
        prefix: &Path,
        upstream: &str,
        listen_options: &str,
        server_directives: &str,
        name: &'static str,
    ) -> anyhow::Result<ReverseProxy> {
        let port = free_port()?;
        std::fs::create_dir_all(prefix.join("logs"))?;
        let conf = prefix.join("nginx.conf");
        let forwarded_proto =
            if listen_options.contains("ssl") { " proxy_set_header X-Forwarded-Proto https;" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "worker_processes {cores}; pid {p}/nginx.pid; error_log {p}/logs/error.log;
                 events {{ worker_connections 1024; }}
                 http {{ access_log off; keepalive_requests 1000000;
                   upstream app {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}
                   server {{ listen 127.0.0.1:{port}{listen_options}; {server_directives}
                     location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";{forwarded_proto} }} }} }}",
                cores = cores(),
                p = prefix.display()
            ),
        )?;
        let process = Command::new("nginx")
            .args(["-p", &prefix.to_string_lossy(), "-c", &conf.to_string_lossy(), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        ReverseProxy { name, port, process }.ready()
    }

    /// HAProxy with `nbthread` = the number of cores.
    pub fn haproxy(dir: &Path, upstream: &str) -> anyhow::Result<ReverseProxy> {
        let port = free_port()?;
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global
  nbthread {cores}
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend bench
  bind 127.0.0.1:{port}
  default_backend app
backend app
  server instance {upstream}
",
                cores = cores()
            ),
        )?;
        let process = Command::new("haproxy")
            .args(["-db", "-f", &conf.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start haproxy")?;
        ReverseProxy { name: "haproxy", port, process }.ready()
    }

    /// Where clients reach it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// wrk through it for `duration` (wrk's syntax, e.g. "5s"), with the CPU time the proxy
    /// spent per request (`cpu_us_per_request`, its processes and their children), and the
    /// part of it spent in the kernel (`kernel_cpu_us_per_request`).
    pub fn wrk(&self, duration: &str) -> anyhow::Result<BTreeMap<&'static str, f64>> {
        let pids = with_children(self.process.id());
        let before = cpu_seconds(&pids);
        let mut result = wrk(&self.url(), None, duration)?;
        let spent = cpu_seconds(&pids) - before;
        let requests = result["rps"] * result["seconds"];
        result.insert("cpu_us_per_request", spent.total() * 1e6 / requests.max(1.0));
        result.insert("kernel_cpu_us_per_request", spent.system * 1e6 / requests.max(1.0));
        Ok(result)
    }

    fn ready(self) -> anyhow::Result<ReverseProxy> {
        wait_for(self.name, Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok())?;
        Ok(self)
    }
}

impl Drop for ReverseProxy {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master must take its workers down with it.
        if let Ok(pid) = i32::try_from(self.process.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.process.wait();
    }
}

/// CPU time so far, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    /// In the kernel: system calls, and the network processing they run (on loopback, the
    /// receiving side's too).
    pub system: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime { user: self.user - earlier.user, system: self.system - earlier.system }
    }
}

impl std::ops::AddAssign for CpuTime {
    fn add_assign(&mut self, other: CpuTime) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// User and system CPU time of processes `pids` (all their threads) so far.
fn cpu_seconds(pids: &[u32]) -> CpuTime {
    let mut sum = CpuTime::default();
    for pid in pids {
        sum += cpu_seconds_of(&format!("/proc/{pid}/stat"));
    }
    sum
}

/// User and system CPU time in a `/proc/.../stat` file (0 if it is gone).
fn cpu_seconds_of(stat: &str) -> CpuTime {
    let ticks_per_second =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0).unwrap_or(100);
    let ticks = std::fs::read_to_string(stat).ok().and_then(|stat| {
        // Fields after the command name (which may hold spaces): state is field 3, utime and
        // stime are fields 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some((fields.get(11)?.parse::<u64>().ok()?, fields.get(12)?.parse::<u64>().ok()?))
    });
    let (user, system) = ticks.unwrap_or((0, 0));
    CpuTime { user: user as f64 / ticks_per_second as f64, system: system as f64 / ticks_per_second as f64 }
}

/// CPU time of process `pid`'s threads so far, summed by thread name (Wharf's
/// `wharf-ingress-N` workers against the rest of the server).
pub fn thread_cpu_seconds(pid: u32) -> BTreeMap<String, CpuTime> {
    let mut by_name: BTreeMap<String, CpuTime> = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else { continue };
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_owned();
        let name = if name.starts_with("wharf-ingress") { "ingress".to_owned() } else { "rest".to_owned() };
        *by_name.entry(name).or_default() += cpu_seconds_of(&format!("/proc/{pid}/task/{tid}/stat"));
    }
    by_name
}

/// `pid` and its direct children (nginx's workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let parent = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok());
            if parent == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
