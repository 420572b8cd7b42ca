//! `wharf server` settings: each comes from a flag, else a `WHARF_*` environment variable,
//! else the config file (`--config`, default `/etc/wharf/config.toml` when it exists), else
//! its embedded default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/wharf";
const DEFAULT_CONFIG_FILE: &str = "/etc/wharf/config.toml";

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Config file (TOML with keys data_dir, api_addr, ingress_addr, registry_addr, domain,
    /// idle_timeout, upstream_resolv_conf).
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where Wharf keeps its state database, images and credentials [default: /var/lib/wharf]
    #[arg(long, env = "WHARF_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the Cloud Run-compatible admin API [default: 127.0.0.1:8090]
    #[arg(long, env = "WHARF_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Address of the ingress router that serves service URLs [default: 127.0.0.1:8080]
    #[arg(long, env = "WHARF_INGRESS_ADDR")]
    pub ingress_addr: Option<SocketAddr>,
    /// Address of the embedded OCI registry [default: 127.0.0.1:5000]
    #[arg(long, env = "WHARF_REGISTRY_ADDR")]
    pub registry_addr: Option<SocketAddr>,
    /// Service URLs are http://{service}-{project}.{domain}; names under localhost reach
    /// loopback without /etc/hosts edits [default: localhost]
    #[arg(long, env = "WHARF_DOMAIN")]
    pub domain: Option<String>,
    /// How long an idle instance is kept before it is stopped, e.g. 60s, 15m [default: 60s]
    #[arg(long, env = "WHARF_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// The resolv.conf whose nameservers get the DNS queries of instances that Wharf does not
    /// answer itself (they may be on loopback or a private address) [default: /etc/resolv.conf]
    #[arg(long, env = "WHARF_UPSTREAM_RESOLV_CONF")]
    pub upstream_resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    api_addr: Option<SocketAddr>,
    ingress_addr: Option<SocketAddr>,
    registry_addr: Option<SocketAddr>,
    domain: Option<String>,
    idle_timeout: Option<String>,
    upstream_resolv_conf: Option<PathBuf>,
}

/// The settings a server runs with, after merging every source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub ingress_addr: SocketAddr,
    pub registry_addr: SocketAddr,
    pub domain: String,
    pub idle_timeout: Duration,
    pub upstream_resolv_conf: PathBuf,
}

/// Parses `500ms`, `60s`, `15m` or `1h` (any form `wharf_api::duration::parse` takes).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    Ok(wharf_api::duration::parse(text)?)
}

impl ServerConfig {
    pub fn resolve(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
        let file = match &args.config {
            Some(path) => read_config(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => read_config(Path::new(DEFAULT_CONFIG_FILE))?,
            None => ConfigFile::default(),
        };
        let addr = |s: &str| s.parse::<SocketAddr>().expect("embedded default address is valid");
        Ok(ServerConfig {
            data_dir: args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            api_addr: args.api_addr.or(file.api_addr).unwrap_or_else(|| addr("127.0.0.1:8090")),
            ingress_addr: args.ingress_addr.or(file.ingress_addr).unwrap_or_else(|| addr("127.0.0.1:8080")),
            registry_addr: args.registry_addr.or(file.registry_addr).unwrap_or_else(|| addr("127.0.0.1:5000")),
            domain: args.domain.clone().or(file.domain).unwrap_or_else(|| "localhost".to_owned()),
            idle_timeout: parse_duration(
                args.idle_timeout.as_deref().or(file.idle_timeout.as_deref()).unwrap_or("60s"),
            )
            .context("--idle-timeout")?,
            upstream_resolv_conf: args
                .upstream_resolv_conf
                .clone()
                .or(file.upstream_resolv_conf)
                .unwrap_or_else(|| "/etc/resolv.conf".into()),
        })
    }
}

fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServerArgs {
        ServerArgs {
            config: None,
            data_dir: None,
            api_addr: None,
            ingress_addr: None,
            registry_addr: None,
            domain: None,
            idle_timeout: None,
            upstream_resolv_conf: None,
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "data_dir = \"/srv/wharf\"\napi_addr = \"127.0.0.1:9999\"\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        a.api_addr = Some("127.0.0.1:1234".parse().unwrap());
        let c = ServerConfig::resolve(&a).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/wharf"));
        assert_eq!(c.api_addr.port(), 1234);
        assert_eq!(c.registry_addr.port(), 5000);
    }

    #[test]
    fn unknown_config_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "data_dri = \"/x\"\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        let err = ServerConfig::resolve(&a).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }
}
