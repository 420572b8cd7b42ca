//! A real browser for end-to-end tests of the web console: Debian's headless `chromium`
//! driven through `chromedriver` with the W3C WebDriver protocol (JSON over HTTP on
//! loopback), by a small client written here on reqwest.
//!
//! [`Browser::start`] runs chromedriver on a free loopback port in its own process group with
//! a temporary profile directory; dropping the [`Browser`] ends the WebDriver session, kills
//! that process group and any process still using the profile directory, so a failing test
//! leaves no chromium behind. Chromium runs as root here, which needs `--no-sandbox`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless chromium and the chromedriver that drives it; both gone on drop.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: tempfile::TempDir,
}

/// An element found on the current page.
#[derive(Debug, Clone)]
pub struct Element {
    id: String,
}

/// Whether this machine has what [`Browser::start`] needs.
pub fn available() -> bool {
    find_program(&["chromedriver"]).is_some() && find_program(&["chromium", "chromium-browser"]).is_some()
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    names.iter().find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()))
}

fn free_port() -> anyhow::Result<u16> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?.port())
}

impl Browser {
    /// Starts chromedriver and a headless chromium window of `width` x `height`.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        use std::os::unix::process::CommandExt as _;
        let driver_bin = find_program(&["chromedriver"])
            .context("chromedriver is not installed (apt-get install chromium-driver)")?;
        let chromium = find_program(&["chromium", "chromium-browser"])
            .context("chromium is not installed (apt-get install chromium)")?;
        let profile = tempfile::Builder::new().prefix("wharf-chromium-").tempdir()?;
        let port = free_port()?;
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", driver_bin.display()))?;
        let http = reqwest::Client::builder().no_proxy().pool_idle_timeout(Duration::from_secs(5)).build()?;
        let mut browser =
            Browser { driver, base: format!("http://127.0.0.1:{port}"), session: String::new(), http, profile };
        browser.wait_for_driver().await?;
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-proxy-server".to_owned(),
            format!("--user-data-dir={}", browser.profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let answer = browser.raw("POST", "/session", Some(capabilities)).await?;
        browser.session =
            answer["sessionId"].as_str().context("WebDriver answered a new session without sessionId")?.to_owned();
        Ok(browser)
    }

    async fn wait_for_driver(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{}/status", self.base)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return Ok(());
            }
            if let Some(status) = self.driver.try_wait()? {
                bail!("chromedriver exited with {status} before it was ready");
            }
            if Instant::now() > deadline {
                bail!("chromedriver was not ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One WebDriver command; returns its `value`, or fails with WebDriver's error.
    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request.send().await.with_context(|| format!("WebDriver {method} {path}"))?;
        let status = response.status();
        let value: Value = response.json().await.with_context(|| format!("WebDriver {method} {path}: not JSON"))?;
        if !status.is_success() {
            bail!(
                "WebDriver {method} {path}: {status} {}: {}",
                value["value"]["error"].as_str().unwrap_or(""),
                value["value"]["message"].as_str().unwrap_or("").lines().next().unwrap_or("")
            );
        }
        Ok(value["value"].clone())
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.raw(method, &format!("/session/{}{path}", self.session), body).await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command("POST", "/url", Some(json!({ "url": url }))).await.map(drop)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page, returns its value.
    pub async fn script(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.command("POST", "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// Waits until `script` returns something truthy (other than `false`/`null`/""), and
    /// returns it. Fails after `timeout` with `what` and the page's visible alerts.
    pub async fn wait(&self, what: &str, timeout: Duration, script: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(script, vec![]).await?;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(value);
            }
            if Instant::now() > deadline {
                let page = self
                    .script(
                        "return location.hash + ' | alerts: ' + [...document.querySelectorAll('[role=alert]')].map(e => e.textContent).filter(Boolean).join(' | ') + ' | main: ' + (document.querySelector('main')?.innerText || '').slice(0, 800)",
                        vec![],
                    )
                    .await
                    .unwrap_or_default();
                bail!("timed out after {timeout:?} waiting for {what}; the page: {page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first element matching a CSS selector, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let script = format!("return document.querySelector({}) !== null", serde_json::to_string(css)?);
        self.wait(&format!("an element {css}"), Duration::from_secs(10), &script).await?;
        let value = self.command("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await?;
        let id = value[ELEMENT_KEY].as_str().with_context(|| format!("no element id for {css}"))?;
        Ok(Element { id: id.to_owned() })
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.command("POST", &format!("/element/{}/click", element.id), None).await.map(drop)
    }

    /// Clears a text field and types `text` into it, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.command("POST", &format!("/element/{}/clear", element.id), None).await?;
        self.command("POST", &format!("/element/{}/value", element.id), Some(json!({ "text": text }))).await.map(drop)
    }

    /// Sends keys (WebDriver key codes allowed, e.g. "\u{E004}" for Tab) to the focused element.
    pub async fn keys_to_active(&self, text: &str) -> anyhow::Result<()> {
        let active = self.command("GET", "/element/active", None).await?;
        let id = active[ELEMENT_KEY].as_str().context("no focused element")?.to_owned();
        self.command("POST", &format!("/element/{id}/value"), Some(json!({ "text": text }))).await.map(drop)
    }

    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let element = self.find(css).await?;
        let value = self.command("GET", &format!("/element/{}/text", element.id), None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let value = self.command("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap_or_default())?;
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))
    }

    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.command("POST", "/window/rect", Some(json!({"width": width, "height": height}))).await.map(drop)
    }

    /// Ends the WebDriver session (closing chromium) before the drop kills what is left.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        let session = std::mem::take(&mut self.session);
        if !session.is_empty() {
            self.raw("DELETE", &format!("/session/{session}"), None).await?;
        }
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let Ok(pid) = i32::try_from(self.driver.id()) else { return };
        // chromedriver leads its own process group; chromium's processes are in it too.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = self.driver.wait();
        // Anything that left the group but still uses this browser's profile directory.
        let profile = self.profile.path().to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&profile) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}
