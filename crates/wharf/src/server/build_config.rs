//! `wharf server`'s build settings: flags `--build-*`, else `WHARF_BUILD_*`, else the config
//! file's `[build]` table, else the defaults below (also in `docs/builds.md`).

use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

/// Flags for source builds (`wharf run deploy --source`, `wharf builds submit`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BuildArgs {
    /// How long one build may run, e.g. 10m [default: 10m]
    #[arg(long, env = "WHARF_BUILD_TIMEOUT")]
    pub build_timeout: Option<String>,
    /// Memory of one build (its cgroup), e.g. 2Gi [default: 2Gi]
    #[arg(long, env = "WHARF_BUILD_MEMORY_LIMIT")]
    pub build_memory_limit: Option<String>,
    /// CPU of one build, e.g. 1 or 1500m [default: every core]
    #[arg(long, env = "WHARF_BUILD_CPU_LIMIT")]
    pub build_cpu_limit: Option<String>,
    /// Largest source upload (gzipped), e.g. 256MiB [default: 256MiB]
    #[arg(long, env = "WHARF_BUILD_MAX_SOURCE_SIZE")]
    pub build_max_source_size: Option<String>,
    /// Size of the build storage past which the layer cache is cleared [default: 20GiB]
    #[arg(long, env = "WHARF_BUILD_MAX_STORAGE")]
    pub build_max_storage: Option<String>,
    /// buildah's storage driver: overlay, or vfs where the data directory is on overlayfs [default: overlay]
    #[arg(long, env = "WHARF_BUILD_STORAGE_DRIVER")]
    pub build_storage_driver: Option<String>,
    /// The most one build may write to the build storage (layers, working containers), e.g.
    /// 10GiB; past it the build fails [default: 10GiB]
    #[arg(long, env = "WHARF_BUILD_DISK_QUOTA")]
    pub build_disk_quota: Option<String>,
    /// The network of RUN steps: none (loopback only), egress (a namespace per build with the
    /// instances' egress policy: the internet, not this host, private or link-local
    /// addresses), or host (the host's network, loopback services included: only for builds as
    /// trusted as root) [default: none]
    #[arg(long, env = "WHARF_BUILD_NETWORK")]
    pub build_network: Option<String>,
    /// With --build-network egress, the only destinations RUN steps may reach: CIDRs, e.g.
    /// 151.101.0.0/16,104.16.0.0/12 (a package mirror); the host, private and link-local
    /// ranges stay refused whatever is listed [default: every public address]
    #[arg(long, env = "WHARF_BUILD_EGRESS_ALLOW", value_delimiter = ',')]
    pub build_egress_allow: Vec<String>,
    /// Base image of Python builds without a Dockerfile [default: python:3.12-slim, in Wharf's registry]
    #[arg(long, env = "WHARF_BUILD_PYTHON_IMAGE")]
    pub build_python_image: Option<String>,
    /// Base image of Node.js builds without a Dockerfile [default: node:22-slim, in Wharf's registry]
    #[arg(long, env = "WHARF_BUILD_NODEJS_IMAGE")]
    pub build_nodejs_image: Option<String>,
    /// Base image of Go builds without a Dockerfile [default: golang:1.23, in Wharf's registry]
    #[arg(long, env = "WHARF_BUILD_GO_IMAGE")]
    pub build_go_image: Option<String>,
}

/// The config file's `[build]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildFile {
    timeout: Option<String>,
    memory_limit: Option<String>,
    cpu_limit: Option<String>,
    max_source_size: Option<String>,
    max_storage: Option<String>,
    storage_driver: Option<String>,
    disk_quota: Option<String>,
    network: Option<String>,
    egress_allow: Option<Vec<String>>,
    python_image: Option<String>,
    nodejs_image: Option<String>,
    go_image: Option<String>,
}

/// The build settings a server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSettings {
    pub limits: wharf_build::BuildLimits,
    pub storage_driver: String,
    pub base_images: wharf_build::BaseImages,
    /// The parsed `--build-egress-allow`, for the runtime's policy; `None`: every public address.
    pub egress_allow: Option<Vec<(std::net::Ipv4Addr, u8)>>,
}

/// `a.b.c.d/n` (or a lone address, /32), with its host bits cleared.
fn parse_allowed_cidr(text: &str) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
    let form = "give IPv4 CIDRs separated by commas, e.g. 203.0.113.0/24,198.51.100.7";
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let addr: std::net::Ipv4Addr = addr
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--build-egress-allow: {text:?} is not an IPv4 address: {form}"))?;
    let prefix: u8 = prefix
        .trim()
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| anyhow::anyhow!("--build-egress-allow: {text:?} has no prefix length 0-32: {form}"))?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    Ok((std::net::Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

impl BuildSettings {
    pub fn resolve(args: &BuildArgs, file: Option<&BuildFile>) -> anyhow::Result<BuildSettings> {
        let empty = BuildFile::default();
        let file = file.unwrap_or(&empty);
        let pick = |flag: &Option<String>, key: &Option<String>| flag.clone().or_else(|| key.clone());
        let mut limits = wharf_build::BuildLimits {
            cpu_millis: std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1000,
            ..wharf_build::BuildLimits::default()
        };
        if let Some(t) = pick(&args.build_timeout, &file.timeout) {
            limits.timeout = super::config::parse_duration(&t).context("--build-timeout")?;
            anyhow::ensure!(limits.timeout > Duration::ZERO, "--build-timeout must be more than 0");
        }
        if let Some(m) = pick(&args.build_memory_limit, &file.memory_limit) {
            limits.memory_bytes = wharf_runtime::resources::parse_memory(&m).context("--build-memory-limit")?;
        }
        if let Some(c) = pick(&args.build_cpu_limit, &file.cpu_limit) {
            limits.cpu_millis = wharf_runtime::resources::parse_cpu(&c).context("--build-cpu-limit")?;
        }
        if let Some(s) = pick(&args.build_max_source_size, &file.max_source_size) {
            limits.max_source_bytes = super::config::parse_size(&s).context("--build-max-source-size")?;
            limits.max_unpacked_source_bytes = limits.max_unpacked_source_bytes.max(limits.max_source_bytes * 4);
        }
        if let Some(s) = pick(&args.build_max_storage, &file.max_storage) {
            limits.max_storage_bytes = super::config::parse_size(&s).context("--build-max-storage")?;
        }
        if let Some(s) = pick(&args.build_disk_quota, &file.disk_quota) {
            limits.disk_quota_bytes = super::config::parse_size(&s).context("--build-disk-quota")?;
        }
        if let Some(network) = pick(&args.build_network, &file.network) {
            limits.network = network.parse().map_err(|e| anyhow::anyhow!("--build-network: {e}"))?;
        }
        let storage_driver = pick(&args.build_storage_driver, &file.storage_driver).unwrap_or_else(|| "overlay".into());
        anyhow::ensure!(
            matches!(storage_driver.as_str(), "overlay" | "vfs"),
            "--build-storage-driver {storage_driver:?} is not overlay or vfs"
        );
        let defaults = wharf_build::BaseImages::default();
        let base_images = wharf_build::BaseImages {
            python: pick(&args.build_python_image, &file.python_image).unwrap_or(defaults.python),
            nodejs: pick(&args.build_nodejs_image, &file.nodejs_image).unwrap_or(defaults.nodejs),
            go: pick(&args.build_go_image, &file.go_image).unwrap_or(defaults.go),
        };
        let allow_texts = if args.build_egress_allow.is_empty() {
            file.egress_allow.clone().unwrap_or_default()
        } else {
            args.build_egress_allow.clone()
        };
        let allow_texts: Vec<&str> = allow_texts.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).collect();
        let egress_allow = if allow_texts.is_empty() {
            None
        } else {
            anyhow::ensure!(
                limits.network == wharf_build::BuildNetwork::Egress,
                "--build-egress-allow limits what builds reach with --build-network egress, but the build network is \
                 {:?}: add --build-network egress",
                limits.network
            );
            let cidrs = allow_texts.iter().map(|t| parse_allowed_cidr(t)).collect::<anyhow::Result<Vec<_>>>()?;
            limits.egress_allow = cidrs.iter().map(|(net, prefix)| format!("{net}/{prefix}")).collect();
            Some(cidrs)
        };
        Ok(BuildSettings { limits, storage_driver, base_images, egress_allow })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_config_files_build_table_over_defaults() {
        let file: BuildFile =
            toml::from_str("timeout = \"5m\"\nmemory_limit = \"1Gi\"\npython_image = \"team/python:3\"\n").unwrap();
        let args = BuildArgs { build_timeout: Some("90s".into()), ..BuildArgs::default() };
        let settings = BuildSettings::resolve(&args, Some(&file)).unwrap();
        assert_eq!(settings.limits.timeout, Duration::from_secs(90));
        assert_eq!(settings.limits.memory_bytes, 1 << 30);
        assert_eq!(settings.base_images.python, "team/python:3");
        assert_eq!(settings.base_images.nodejs, "node:22-slim");
        assert_eq!(settings.storage_driver, "overlay");
        let bad = BuildArgs { build_storage_driver: Some("btrfs".into()), ..BuildArgs::default() };
        let e = BuildSettings::resolve(&bad, None).unwrap_err();
        assert_eq!(e.to_string(), "--build-storage-driver \"btrfs\" is not overlay or vfs");
        let allow = BuildArgs {
            build_network: Some("egress".into()),
            build_egress_allow: vec!["203.0.113.9/24".into(), " 198.51.100.7".into()],
            ..BuildArgs::default()
        };
        let settings = BuildSettings::resolve(&allow, None).unwrap();
        assert_eq!(
            settings.egress_allow,
            Some(vec![([203, 0, 113, 0].into(), 24), ([198, 51, 100, 7].into(), 32)]),
            "host bits cleared, a lone address is a /32"
        );
        assert_eq!(settings.limits.egress_allow, ["203.0.113.0/24", "198.51.100.7/32"]);
        let from_file: BuildFile = toml::from_str("network = \"egress\"\negress_allow = [\"10.1.0.0/16\"]\n").unwrap();
        assert!(BuildSettings::resolve(&BuildArgs::default(), Some(&from_file)).unwrap().egress_allow.is_some());
        let no_egress = BuildArgs { build_egress_allow: vec!["203.0.113.0/24".into()], ..BuildArgs::default() };
        let e = BuildSettings::resolve(&no_egress, None).unwrap_err();
        assert!(e.to_string().contains("add --build-network egress"), "{e}");
        let bad = BuildArgs { build_egress_allow: vec!["example.org".into()], ..allow.clone() };
        let e = BuildSettings::resolve(&bad, None).unwrap_err();
        assert!(e.to_string().contains("\"example.org\" is not an IPv4 address"), "{e}");
        let bad = BuildArgs { build_egress_allow: vec!["203.0.113.0/40".into()], ..allow };
        let e = BuildSettings::resolve(&bad, None).unwrap_err();
        assert!(e.to_string().contains("no prefix length 0-32"), "{e}");
        let e = toml::from_str::<BuildFile>("timeuot = \"5m\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `timeuot`"), "{e}");
    }
}
