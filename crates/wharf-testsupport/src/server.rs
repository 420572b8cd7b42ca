//! A real `wharf server` for a test: free ports, a temporary data directory, the log kept in
//! `<data-dir>/server.log` and printed if start-up fails, and a stop on drop so a failing test
//! leaves no server behind; then a [`LeakGuard`] checks (and cleans) what the server's scope
//! left on the machine.
//!
//! The server and the CLI run in a sealed environment: only `PATH` (and `TMPDIR`,
//! `RUST_BACKTRACE`) is inherited; `HOME`, `XDG_CONFIG_HOME` and `DOCKER_CONFIG` point into the
//! test's temporary directory and `WHARF_CONFIG` at an empty config file there, so no test reads
//! the developer's `~/.config/wharf`, `/etc/wharf/config.toml`, `~/.docker/config.json` or
//! `WHARF_*`/`CLOUDSDK_*` variables.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::leaks::LeakGuard;
use crate::wait_until;

/// Where a started server listens (a copy of its `server.json`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Addresses {
    pub pid: u32,
    pub api_addr: String,
    pub ingress_addr: String,
    /// The HTTPS ingress, when the server was started with `WHARF_HTTPS_ADDR`.
    #[serde(default)]
    pub https_addr: Option<String>,
    pub registry_addr: String,
    /// The Prometheus endpoint, when the server was started with `WHARF_METRICS_ADDR`.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

#[derive(Debug)]
pub struct WharfServer {
    binary: PathBuf,
    data_dir: PathBuf,
    /// The sealed home: `home/` (HOME), `home/.config` (XDG_CONFIG_HOME), `home/.docker`
    /// (DOCKER_CONFIG) and `config.toml` (WHARF_CONFIG, empty).
    root: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub addrs: Addresses,
    pub token: String,
    /// Declared before `_temp`: the leak check runs before the data directory is deleted.
    guard: LeakGuard,
    _temp: Option<tempfile::TempDir>,
}

/// The environment every test server and CLI gets, before the test's own variables.
fn sealed_env(cmd: &mut Command, root: &Path) {
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var_os("PATH")
            .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
    );
    for inherited in ["TMPDIR", "RUST_BACKTRACE"] {
        if let Some(value) = std::env::var_os(inherited) {
            cmd.env(inherited, value);
        }
    }
    let home = root.join("home");
    cmd.env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env("WHARF_CONFIG", root.join("config.toml"));
}

/// Creates the sealed home under `root`.
fn prepare_root(root: &Path) -> anyhow::Result<()> {
    let home = root.join("home");
    std::fs::create_dir_all(home.join(".config"))?;
    std::fs::create_dir_all(home.join(".docker"))?;
    std::fs::write(root.join("config.toml"), "")?;
    Ok(())
}

impl WharfServer {
    /// Starts `binary server` in a fresh temporary data directory.
    pub fn start(binary: &Path) -> anyhow::Result<WharfServer> {
        WharfServer::start_with_env(binary, &[])
    }

    /// Like [`WharfServer::start`], with extra environment variables for the server process.
    pub fn start_with_env(binary: &Path, env: &[(&str, &str)]) -> anyhow::Result<WharfServer> {
        let temp = tempfile::Builder::new().prefix("wharf-test-").tempdir()?;
        let root = temp.path().to_owned();
        prepare_root(&root)?;
        let data_dir = root.join("data");
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let guard = LeakGuard::new(&data_dir);
        let mut server = WharfServer::launch(binary, &data_dir, &root, env, guard)?;
        server._temp = Some(temp);
        Ok(server)
    }

    fn launch(
        binary: &Path,
        data_dir: &Path,
        root: &Path,
        env: Vec<(String, String)>,
        guard: LeakGuard,
    ) -> anyhow::Result<WharfServer> {
        let _ = std::fs::remove_file(data_dir.join("server.json"));
        std::fs::create_dir_all(data_dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("server.log"))?;
        let mut cmd = Command::new(binary);
        sealed_env(&mut cmd, root);
        let child = cmd
            .args([
                "server",
                "--api-addr",
                "127.0.0.1:0",
                "--ingress-addr",
                "127.0.0.1:0",
                "--registry-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .env("WHARF_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id();
        guard.server(pid);
        let mut server = WharfServer {
            binary: binary.to_owned(),
            data_dir: data_dir.to_owned(),
            root: root.to_owned(),
            guard,
            _temp: None,
            child: Some(child),
            env,
            addrs: Addresses {
                pid,
                api_addr: String::new(),
                ingress_addr: String::new(),
                https_addr: None,
                registry_addr: String::new(),
                metrics_addr: None,
            },
            token: String::new(),
        };
        let info_path = data_dir.join("server.json");
        let started = wait_until("wharf server to write server.json", Duration::from_secs(30), || {
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Some(Err(anyhow::anyhow!("wharf server exited during start-up: {status}")));
            }
            let addrs: Addresses = serde_json::from_slice(&std::fs::read(&info_path).ok()?).ok()?;
            (addrs.pid == pid).then_some(Ok(addrs))
        });
        match started.and_then(|r| r) {
            Ok(addrs) => server.addrs = addrs,
            Err(e) => {
                // Stop it here: dropping a server that never started must not sweep (which
                // would start another one, and so on).
                if let Some(mut child) = server.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                bail!("{e:#}\n--- server.log ---\n{log}");
            }
        }
        server.token = std::fs::read_to_string(data_dir.join("owner.token"))?.trim().to_owned();
        Ok(server)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The sealed `HOME` the server and the CLI run with.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    /// The leak guard of this server's scope (to add instance ids a test learns of).
    pub fn leak_guard(&self) -> &LeakGuard {
        &self.guard
    }

    /// Stops the server and checks its scope now, instead of at drop: returns what it left
    /// on the machine (removed already).
    pub fn stop_and_check(&mut self) -> anyhow::Result<Vec<crate::leaks::Leftover>> {
        if !self.stop()? {
            bail!("wharf server did not stop cleanly:\n{}", self.log());
        }
        Ok(self.guard.check_and_clean())
    }

    /// An HTTP client builder (no proxy) whose requests carry the owner's token unless they
    /// set their own `Authorization`: services are private by default, and the owner may
    /// invoke every one of them through the ingress.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.token)) {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        crate::http_client().default_headers(headers)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.api_addr)
    }

    pub fn registry_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.registry_addr)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server with SIGTERM (SIGKILL after 60 s) and returns whether it exited cleanly.
    /// A server that had to be killed, or failed, is started once more on its data directory
    /// and stopped again: its start-up sweep removes what the other left (mounts, namespaces).
    /// A sweeper that cannot start is not retried.
    pub fn stop(&mut self) -> anyhow::Result<bool> {
        let Some(child) = self.child.take() else { return Ok(true) };
        let how = match terminate(child) {
            Exit::Clean => return Ok(true),
            Exit::Failed(status) => format!("exited with {status} when stopped"),
            Exit::Killed => "did not stop within 60 s".to_owned(),
        };
        let log = self.log();
        eprintln!("wharf server {how}; sweeping its data directory. Log:\n{log}");
        if let Ok(mut sweeper) =
            WharfServer::launch(&self.binary, &self.data_dir, &self.root, self.env.clone(), self.guard.clone())
            && let Some(child) = sweeper.child.take()
        {
            terminate(child);
        }
        Ok(false)
    }

    /// Stops the server and starts a new one on the same data directory (new ports).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if !self.stop()? {
            bail!("wharf server did not stop cleanly:\n{}", self.log());
        }
        let temp = self._temp.take();
        let env = std::mem::take(&mut self.env);
        let mut next = WharfServer::launch(&self.binary, &self.data_dir, &self.root, env, self.guard.clone())?;
        next._temp = temp;
        *self = next;
        Ok(())
    }

    /// Kills the server with SIGKILL, as a crash or an OOM kill would: no drain, no stop of
    /// its instances, no clean-up of any kind. Waits until the process is gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { bail!("the server is not running") };
        child.kill().context("cannot SIGKILL wharf server")?;
        child.wait().context("cannot reap the killed wharf server")?;
        Ok(())
    }

    /// Starts a new server on the same data directory (new ports) after [`WharfServer::kill`]:
    /// what the killed one left is the new one's to reconcile.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the server is still running: kill or stop it first");
        }
        let temp = self._temp.take();
        let env = std::mem::take(&mut self.env);
        let launched = WharfServer::launch(&self.binary, &self.data_dir, &self.root, env.clone(), self.guard.clone());
        let mut next = match launched {
            Ok(next) => next,
            Err(e) => {
                self._temp = temp;
                self.env = env;
                return Err(e);
            }
        };
        next._temp = temp;
        *self = next;
        Ok(())
    }

    /// SIGKILLs the server and starts a new one on the same data directory.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.start_again()
    }

    /// Runs the wharf CLI against this server, in the sealed environment, finding the server
    /// through its data directory.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli_with_env(args, &[])
    }

    /// Like [`WharfServer::cli`], with extra environment variables.
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(&self.binary);
        sealed_env(&mut cmd, &self.root);
        cmd.args(args)
            .env("WHARF_DATA_DIR", &self.data_dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .context("cannot run the wharf CLI")
    }
}

/// How a stopped server ended.
enum Exit {
    Clean,
    /// It exited by itself, but not with success.
    Failed(std::process::ExitStatus),
    /// It did not exit within 60 s of SIGTERM and was killed.
    Killed,
}

/// SIGTERM, then up to 60 s for a clean exit, then SIGKILL.
fn terminate(mut child: Child) -> Exit {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    match wait_until("wharf server to stop", Duration::from_secs(60), || child.try_wait().ok().flatten()) {
        Ok(status) if status.success() => Exit::Clean,
        Ok(status) => Exit::Failed(status),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Exit::Killed
        }
    }
}

impl Drop for WharfServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
