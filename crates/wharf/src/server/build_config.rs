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
        Ok(BuildSettings { limits, storage_driver, base_images })
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
        let e = toml::from_str::<BuildFile>("timeuot = \"5m\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `timeuot`"), "{e}");
    }
}
