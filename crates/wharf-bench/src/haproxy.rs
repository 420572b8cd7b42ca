//! The HAProxy baseline: HAProxy (Debian's 2.6) as a reverse proxy in front of the same
//! instance the Wharf rows use, measured with the same wrk run. The configuration is what a
//! user would write for this job, tuned sensibly and nothing more: one thread per core,
//! keep-alive to the client and pooled, reused connections to the server, no logging.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::system::{wait_for, wrk};

/// Starts HAProxy in front of `upstream` (host:port), runs wrk through it for `duration`
/// (wrk's syntax, e.g. "5s") and stops it.
pub fn baseline(dir: &Path, upstream: &str, duration: &str) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global
  nbthread 2
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
"
        ),
    )?;
    let mut haproxy = Command::new("haproxy")
        .args(["-db", "-f", &conf.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start haproxy")?;
    let result = (|| {
        wait_for("haproxy", Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())?;
        wrk(&format!("http://127.0.0.1:{port}/"), None, duration)
    })();
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    result
}
