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
    /// idle_timeout, instance_memory_limit, instance_cpu_limit, cgroup_parent, log_rate_limit,
    /// log_store_limit).
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
    /// Memory all instances together may use, e.g. 16Gi; an instance that does not fit is not
    /// started (429) [default: 75% of the machine's memory minus 1 GiB]
    #[arg(long, env = "WHARF_INSTANCE_MEMORY_LIMIT")]
    pub instance_memory_limit: Option<String>,
    /// CPU all instances together may use, e.g. 2 or 1500m [default: every core]
    #[arg(long, env = "WHARF_INSTANCE_CPU_LIMIT")]
    pub instance_cpu_limit: Option<String>,
    /// The cgroup every instance's cgroup is created under [default: wharf]
    #[arg(long, env = "WHARF_CGROUP_PARENT")]
    pub cgroup_parent: Option<String>,
    /// Lines per second each instance may log; the excess is dropped and counted [default: 1000]
    #[arg(long, env = "WHARF_LOG_RATE_LIMIT")]
    pub log_rate_limit: Option<u32>,
    /// Total size of the stored logs, e.g. 1Gi; the oldest lines go first [default: 1Gi]
    #[arg(long, env = "WHARF_LOG_STORE_LIMIT")]
    pub log_store_limit: Option<String>,
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
    instance_memory_limit: Option<String>,
    instance_cpu_limit: Option<String>,
    cgroup_parent: Option<String>,
    log_rate_limit: Option<u32>,
    log_store_limit: Option<String>,
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
    /// Total memory and CPU of all instances.
    pub instance_limits: wharf_runtime::cgroup::ParentLimits,
    pub cgroup_parent: String,
    pub log_limits: wharf_runtime::logs::LogLimits,
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
        let defaults = wharf_runtime::cgroup::ParentLimits::host_default();
        let memory = args.instance_memory_limit.clone().or(file.instance_memory_limit);
        let cpu = args.instance_cpu_limit.clone().or(file.instance_cpu_limit);
        let instance_limits = wharf_runtime::cgroup::ParentLimits {
            memory_bytes: match memory {
                Some(m) => wharf_runtime::resources::parse_memory(&m).context("--instance-memory-limit")?,
                None => defaults.memory_bytes,
            },
            cpu_millis: match cpu {
                Some(c) => wharf_runtime::resources::parse_cpu(&c).context("--instance-cpu-limit")?,
                None => defaults.cpu_millis,
            },
        };
        let mut log_limits = wharf_runtime::logs::LogLimits::default();
        if let Some(rate) = args.log_rate_limit.or(file.log_rate_limit) {
            anyhow::ensure!(rate > 0, "--log-rate-limit must be at least 1 line per second");
            log_limits.lines_per_second = rate;
        }
        if let Some(size) = args.log_store_limit.clone().or(file.log_store_limit) {
            log_limits.store_bytes = wharf_runtime::resources::parse_memory(&size).context("--log-store-limit")?;
        }
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
            instance_limits,
            cgroup_parent: args.cgroup_parent.clone().or(file.cgroup_parent).unwrap_or_else(|| "wharf".to_owned()),
            log_limits,
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
            instance_memory_limit: None,
            instance_cpu_limit: None,
            cgroup_parent: None,
            log_rate_limit: None,
            log_store_limit: None,
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
        assert_eq!(c.cgroup_parent, "wharf");
        assert_eq!(c.instance_limits, wharf_runtime::cgroup::ParentLimits::host_default());
    }

    #[test]
    fn instance_limits_are_parsed_and_bad_ones_name_their_flag() {
        let mut a = args();
        a.instance_memory_limit = Some("256Mi".into());
        a.instance_cpu_limit = Some("1500m".into());
        a.log_store_limit = Some("64Mi".into());
        let c = ServerConfig::resolve(&a).unwrap();
        assert_eq!((c.instance_limits.memory_bytes, c.instance_limits.cpu_millis), (256 << 20, 1500));
        assert_eq!(c.log_limits.store_bytes, 64 << 20);
        a.instance_memory_limit = Some("lots".into());
        let err = format!("{:#}", ServerConfig::resolve(&a).unwrap_err());
        assert!(err.starts_with("--instance-memory-limit: invalid memory \"lots\""), "{err}");
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
