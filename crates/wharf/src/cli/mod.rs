//! The command-line client. It finds a server the way a user would expect:
//! `--api`/`WHARF_API` and `--registry`/`WHARF_REGISTRY` when given, else the addresses the
//! local server wrote to `<data-dir>/server.json`; the token from `WHARF_TOKEN`, else the CLI
//! config file (`~/.config/wharf/config.toml`, key `token`), else the local owner token in
//! `<data-dir>/owner.token` (readable by root only).

pub mod auth;
pub mod builds;
pub mod ctx;
pub mod flags;
pub mod iam;
pub mod images;
pub mod logging;
pub mod logs;
pub mod policy;
pub mod run;
pub mod secrets;
pub mod traffic;
pub mod volumes;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::server::{DEFAULT_DATA_DIR, SERVER_INFO_FILE, ServerInfo};

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Data directory of the local server, used to find its addresses and owner token.
    #[arg(long, env = "WHARF_DATA_DIR", global = true, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Base URL of the Wharf API, e.g. http://127.0.0.1:8090 (default: the local server's).
    #[arg(long, env = "WHARF_API", global = true)]
    pub api: Option<String>,
    /// Address of the Wharf registry, e.g. 127.0.0.1:5000 (default: the local server's).
    #[arg(long, env = "WHARF_REGISTRY", global = true)]
    pub registry: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct CliConfig {
    token: Option<String>,
    api: Option<String>,
    registry: Option<String>,
    project: Option<String>,
    region: Option<String>,
}

/// A default from the CLI config file (`project`, `region`).
pub fn cli_setting(key: &str) -> Option<String> {
    let config = read_cli_config().ok()?;
    match key {
        "project" => config.project,
        "region" => config.region,
        _ => None,
    }
}

/// A connection to a Wharf server: where its API and registry are, and the token to send.
#[derive(Debug, Clone)]
pub struct Client {
    pub api: String,
    pub registry: String,
    token: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn connect(args: &ConnectionArgs) -> anyhow::Result<Client> {
        let config = read_cli_config()?;
        let token = match std::env::var("WHARF_TOKEN").ok().filter(|t| !t.is_empty()).or(config.token) {
            Some(t) => t,
            None => read_owner_token(&args.data_dir)?,
        };
        Client::connect_with_token(args, token)
    }

    /// A client that sends `token` (`wharf auth login` checks a new credential with one).
    pub fn connect_with_token(args: &ConnectionArgs, token: String) -> anyhow::Result<Client> {
        let config = read_cli_config()?;
        let info = || -> anyhow::Result<ServerInfo> {
            let path = args.data_dir.join(SERVER_INFO_FILE);
            let text = std::fs::read(&path).with_context(|| {
                format!(
                    "no running wharf server found ({} is missing): start one with `wharf server`, \
                     or point the CLI at one with --api/--registry",
                    path.display()
                )
            })?;
            serde_json::from_slice(&text).with_context(|| format!("{} is not valid", path.display()))
        };
        let api = match args.api.clone().or(config.api) {
            Some(api) => api.trim_end_matches('/').to_owned(),
            None => format!("http://{}", info()?.api_addr),
        };
        let registry = match args.registry.clone().or(config.registry) {
            Some(r) => r,
            None => info()?.registry_addr.to_string(),
        };
        let http = reqwest::Client::builder().build().context("cannot build HTTP client")?;
        Ok(Client { api, registry, token, http })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn api_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.api)).bearer_auth(&self.token)
    }

    pub fn registry_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.registry)
    }
}

/// Turns an API error response into a readable error, keeping the server's message.
pub async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/errors/0/message"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or(body);
    bail!("{message} (HTTP {})", status.as_u16())
}

/// `~/.config/wharf/config.toml` (or under `$XDG_CONFIG_HOME`), if a home is known.
fn cli_config_path() -> Option<PathBuf> {
    let home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(home.join("wharf").join("config.toml"))
}

/// Sets `key` in the CLI config file, keeping its other settings; the file is private (0600)
/// because it may hold a credential. Returns the file's path.
pub fn store_cli_setting(key: &str, value: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = cli_config_path().context("neither HOME nor XDG_CONFIG_HOME is set: nowhere to keep settings")?;
    let mut table: toml::Table = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?,
        Err(_) => toml::Table::new(),
    };
    table.insert(key.to_owned(), toml::Value::String(value.to_owned()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staged = path.with_extension("toml.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .with_context(|| format!("cannot write {}", staged.display()))?;
    std::io::Write::write_all(&mut file, toml::to_string(&table)?.as_bytes())
        .with_context(|| format!("cannot write {}", staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staged, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn read_cli_config() -> anyhow::Result<CliConfig> {
    let Some(path) = cli_config_path() else {
        return Ok(CliConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{} is not valid", path.display())),
        Err(_) => Ok(CliConfig::default()),
    }
}

fn read_owner_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(wharf_iam::OWNER_TOKEN_FILE);
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the owner token {} (run as root on the server's machine, or set WHARF_TOKEN)",
            path.display()
        )
    })?;
    Ok(token.trim().to_owned())
}
