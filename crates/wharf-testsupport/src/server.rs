//! A real `wharf server` for a test: free ports, a temporary data directory, the log kept in
//! `<data-dir>/server.log` and printed if start-up fails, and a stop on drop so a failing test
//! leaves no server behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::wait_until;

/// Where a started server listens (a copy of its `server.json`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Addresses {
    pub pid: u32,
    pub api_addr: String,
    pub ingress_addr: String,
    pub registry_addr: String,
}

#[derive(Debug)]
pub struct WharfServer {
    binary: PathBuf,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub addrs: Addresses,
    pub token: String,
}

impl WharfServer {
    /// Starts `binary server` in a fresh temporary data directory.
    pub fn start(binary: &Path) -> anyhow::Result<WharfServer> {
        WharfServer::start_with_env(binary, &[])
    }

    /// Like [`WharfServer::start`], with extra environment variables for the server process.
    pub fn start_with_env(binary: &Path, env: &[(&str, &str)]) -> anyhow::Result<WharfServer> {
        let temp = tempfile::Builder::new().prefix("wharf-test-").tempdir()?;
        let data_dir = temp.path().to_owned();
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut server = WharfServer::launch(binary, &data_dir, env)?;
        server._temp = Some(temp);
        Ok(server)
    }

    fn launch(binary: &Path, data_dir: &Path, env: Vec<(String, String)>) -> anyhow::Result<WharfServer> {
        let _ = std::fs::remove_file(data_dir.join("server.json"));
        std::fs::create_dir_all(data_dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("server.log"))?;
        let child = Command::new(binary)
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
        let mut server = WharfServer {
            binary: binary.to_owned(),
            data_dir: data_dir.to_owned(),
            _temp: None,
            child: Some(child),
            env,
            addrs: Addresses {
                pid,
                api_addr: String::new(),
                ingress_addr: String::new(),
                registry_addr: String::new(),
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
    /// A server that had to be killed is started once more on its data directory and stopped
    /// again: its start-up sweep removes what the killed one left (mounts, namespaces).
    pub fn stop(&mut self) -> anyhow::Result<bool> {
        let Some(child) = self.child.take() else { return Ok(true) };
        if terminate(child) {
            return Ok(true);
        }
        let log = self.log();
        eprintln!("wharf server did not stop within 60 s; sweeping its data directory. Log:\n{log}");
        if let Ok(mut sweeper) = WharfServer::launch(&self.binary, &self.data_dir, self.env.clone())
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
        let mut next = WharfServer::launch(&self.binary, &self.data_dir, std::mem::take(&mut self.env))?;
        next._temp = temp;
        *self = next;
        Ok(())
    }

    /// Runs the wharf CLI against this server.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.binary)
            .args(args)
            .env("WHARF_DATA_DIR", &self.data_dir)
            .env_remove("WHARF_TOKEN")
            .env_remove("WHARF_API")
            .env_remove("WHARF_REGISTRY")
            .output()
            .context("cannot run the wharf CLI")
    }
}

/// SIGTERM, then up to 60 s for a clean exit, then SIGKILL. Returns whether it exited cleanly.
fn terminate(mut child: Child) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    match wait_until("wharf server to stop", Duration::from_secs(60), || child.try_wait().ok().flatten()) {
        Ok(status) => status.success(),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            false
        }
    }
}

impl Drop for WharfServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
