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
    /// Config file (TOML with keys data_dir, api_addr, ingress_addr, https_addr, registry_addr, metrics_addr, domain,
    /// idle_timeout, instance_memory_limit, instance_cpu_limit, cgroup_parent, log_rate_limit,
    /// log_store_limit, secrets_key_file, max_image_size, max_blob_size, upload_expiry, image_gc_grace, and the
    /// edge limits: header_read_timeout, connection_idle_timeout, max_connections,
    /// max_header_bytes, max_api_body_bytes, tls_handshake_timeout, pull_connect_timeout,
    /// pull_read_timeout, upstream_resolv_conf, vpc_networks, a list of NAME=CIDR[,CIDR...], and
    /// acme_directory, acme_ca_file, acme_email, hsts_max_age).
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
    /// Address of the HTTPS ingress (TLS 1.2/1.3, HTTP/2 and HTTP/1.1); service hosts get
    /// certificates from Wharf's local CA, <data-dir>/tls/local-ca.pem [default: none, no HTTPS]
    #[arg(long, env = "WHARF_HTTPS_ADDR")]
    pub https_addr: Option<SocketAddr>,
    /// Address of the embedded OCI registry [default: 127.0.0.1:5000]
    #[arg(long, env = "WHARF_REGISTRY_ADDR")]
    pub registry_addr: Option<SocketAddr>,
    /// Address of the Prometheus metrics endpoint (GET /metrics, no authentication: keep it on
    /// loopback or a private network), e.g. 127.0.0.1:9464 [default: none, no endpoint]
    #[arg(long, env = "WHARF_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Service URLs are http://{service}-{project hash}.{region}.{domain}; names under localhost reach
    /// loopback without /etc/hosts edits [default: localhost]
    #[arg(long, env = "WHARF_DOMAIN")]
    pub domain: Option<String>,
    /// The host name the HTTPS ingress serves the web console (and the API it calls) on, with a
    /// certificate from the local CA; `off` for none. Needs --https-addr [default: console.{domain}]
    #[arg(long, env = "WHARF_CONSOLE_HOST")]
    pub console_host: Option<String>,
    /// How long an idle instance is kept before it is stopped, e.g. 60s, 15m [default: 60s]
    #[arg(long, env = "WHARF_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Most bytes an image's layers may unpack to, all together, e.g. 20GiB [default: half
    /// the free space of the data directory at start, at most 64GiB]
    #[arg(long, env = "WHARF_MAX_IMAGE_SIZE")]
    pub max_image_size: Option<String>,
    /// Largest blob the registry accepts in one upload, e.g. 2GiB [default: 10GiB]
    #[arg(long, env = "WHARF_MAX_BLOB_SIZE")]
    pub max_blob_size: Option<String>,
    /// Registry upload sessions idle this long are deleted [default: 1h]
    #[arg(long, env = "WHARF_UPLOAD_EXPIRY")]
    pub upload_expiry: Option<String>,
    /// Image garbage collection keeps blobs and snapshots younger than this, so pushes in
    /// progress survive it [default: 1h]
    #[arg(long, env = "WHARF_IMAGE_GC_GRACE")]
    pub image_gc_grace: Option<String>,
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
    /// The resolv.conf whose nameservers get the DNS queries of instances that Wharf does not
    /// answer itself (they may be on loopback or a private address) [default: /etc/resolv.conf]
    #[arg(long, env = "WHARF_UPSTREAM_RESOLV_CONF")]
    pub upstream_resolv_conf: Option<PathBuf>,
    /// A private network revisions and jobs may opt into with vpcAccess (`--network`,
    /// `--subnet` or `--vpc-connector NAME`): NAME=CIDR[,CIDR...]; repeat for more (in the
    /// environment: separated by `;`) [default: none]
    #[arg(long = "vpc-network", env = "WHARF_VPC_NETWORKS", value_delimiter = ';')]
    pub vpc_networks: Vec<String>,
    /// The key-encryption key of stored secrets: a file holding 32 random bytes in base64,
    /// mode 0600, e.g. provided by an external KMS; it must exist [default:
    /// <data-dir>/secrets.kek, created on first start]
    #[arg(long, env = "WHARF_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub build: super::build_config::BuildArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
}

/// Flags for the certificates of mapped domains (`wharf run domain-mappings`), which need
/// `--https-addr`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AcmeArgs {
    /// The ACME directory mapped domains get certificates from; `off` for none (mapped domains
    /// then say so, and are served with the local CA's certificate)
    /// [default: https://acme-v02.api.letsencrypt.org/directory]
    #[arg(long, env = "WHARF_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// A PEM root certificate to trust for the ACME server's own HTTPS (a private ACME CA)
    /// [default: the system's trust store]
    #[arg(long, env = "WHARF_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,
    /// The contact address of the ACME account [default: none]
    #[arg(long, env = "WHARF_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// Send `Strict-Transport-Security: max-age=SECONDS` on mapped domains' HTTPS responses,
    /// e.g. 31536000 [default: off]
    #[arg(long, env = "WHARF_HSTS_MAX_AGE")]
    pub hsts_max_age: Option<u64>,
    /// How the ACME server validates a mapped domain: tls-alpn-01 (it connects to the HTTPS
    /// ingress, which must be reachable on port 443) or http-01 (the plain ingress, port 80)
    /// [default: tls-alpn-01 when --https-addr has port 443, else http-01]
    #[arg(long, env = "WHARF_ACME_CHALLENGE")]
    pub acme_challenge: Option<String>,
}

/// How mapped domains get certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// `None`: ACME is off.
    pub directory: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub email: Option<String>,
    pub hsts_max_age: Option<u64>,
    /// `Some(true)`: TLS-ALPN-01; `Some(false)`: HTTP-01; `None`: by the HTTPS port.
    pub tls_alpn01: Option<bool>,
}

impl AcmeSettings {
    fn resolve(args: &AcmeArgs, file: &ConfigFile) -> anyhow::Result<AcmeSettings> {
        let directory = args
            .acme_directory
            .clone()
            .or(file.acme_directory.clone())
            .unwrap_or_else(|| wharf_router::acme::LETS_ENCRYPT_DIRECTORY.to_owned());
        let directory = match directory.trim() {
            "off" => None,
            url if url.starts_with("https://") || url.starts_with("http://") => Some(url.to_owned()),
            other => {
                anyhow::bail!("--acme-directory {other:?} is not a URL; give the directory's https:// URL, or off")
            }
        };
        let ca_file = args.acme_ca_file.clone().or(file.acme_ca_file.clone());
        if let Some(path) = &ca_file {
            anyhow::ensure!(path.is_file(), "--acme-ca-file {} is not a readable file", path.display());
        }
        let email = args.acme_email.clone().or(file.acme_email.clone()).filter(|e| !e.is_empty());
        if let Some(email) = &email {
            anyhow::ensure!(
                email.contains('@') && !email.contains(char::is_whitespace),
                "--acme-email {email:?} is not an email address"
            );
        }
        let tls_alpn01 = match args.acme_challenge.as_deref().or(file.acme_challenge.as_deref()) {
            None | Some("auto") => None,
            Some("tls-alpn-01") => Some(true),
            Some("http-01") => Some(false),
            Some(other) => {
                anyhow::bail!("--acme-challenge {other:?} is not a challenge Wharf answers; use tls-alpn-01 or http-01")
            }
        };
        Ok(AcmeSettings {
            directory,
            ca_file,
            email,
            hsts_max_age: args.hsts_max_age.or(file.hsts_max_age),
            tls_alpn01,
        })
    }
}

/// Flags for the protections of every listener against hostile clients (see [`EdgeLimits`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EdgeArgs {
    /// How long a client may take to send a request's headers or its first request, at most
    /// 30s [default: 15s]
    #[arg(long, env = "WHARF_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// How long a client connection with no request in flight stays open [default: 60s]
    #[arg(long, env = "WHARF_CONNECTION_IDLE_TIMEOUT")]
    pub connection_idle_timeout: Option<String>,
    /// Connections each listener serves at once; more get a 503 [default: 10000]
    #[arg(long, env = "WHARF_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// The most bytes of headers a request may send (431 beyond) [default: 65536]
    #[arg(long, env = "WHARF_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// How long a TLS client may take to complete its handshake, at most 30s [default: 10s]
    #[arg(long, env = "WHARF_TLS_HANDSHAKE_TIMEOUT")]
    pub tls_handshake_timeout: Option<String>,
    /// The most bytes of a JSON body the admin API reads (413 beyond) [default: 4194304]
    #[arg(long, env = "WHARF_MAX_API_BODY_BYTES")]
    pub max_api_body_bytes: Option<usize>,
    /// How long a pull waits to connect to a remote registry [default: 10s]
    #[arg(long, env = "WHARF_PULL_CONNECT_TIMEOUT")]
    pub pull_connect_timeout: Option<String>,
    /// How long a pull waits for the next bytes from a remote registry [default: 30s]
    #[arg(long, env = "WHARF_PULL_READ_TIMEOUT")]
    pub pull_read_timeout: Option<String>,
}

/// The server's protections against hostile clients and remotes, in one place: limits of
/// every listener (ingress, API, registry), the API's body limit and remote pull timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLimits {
    pub listener: wharf_router::ListenerLimits,
    pub max_api_body_bytes: usize,
    pub pull: wharf_image::remote::PullTimeouts,
}

impl Default for EdgeLimits {
    fn default() -> EdgeLimits {
        EdgeLimits {
            listener: wharf_router::ListenerLimits::default(),
            max_api_body_bytes: 4 * 1024 * 1024,
            pull: wharf_image::remote::PullTimeouts::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    api_addr: Option<SocketAddr>,
    ingress_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    registry_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    domain: Option<String>,
    console_host: Option<String>,
    idle_timeout: Option<String>,
    header_read_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    connection_idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    max_api_body_bytes: Option<usize>,
    pull_connect_timeout: Option<String>,
    pull_read_timeout: Option<String>,
    max_image_size: Option<String>,
    max_blob_size: Option<String>,
    upload_expiry: Option<String>,
    image_gc_grace: Option<String>,
    instance_memory_limit: Option<String>,
    instance_cpu_limit: Option<String>,
    cgroup_parent: Option<String>,
    log_rate_limit: Option<u32>,
    log_store_limit: Option<String>,
    upstream_resolv_conf: Option<PathBuf>,
    build: Option<super::build_config::BuildFile>,
    vpc_networks: Option<Vec<String>>,
    secrets_key_file: Option<PathBuf>,
    acme_directory: Option<String>,
    acme_ca_file: Option<PathBuf>,
    acme_email: Option<String>,
    hsts_max_age: Option<u64>,
    acme_challenge: Option<String>,
}

/// The settings a server runs with, after merging every source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub ingress_addr: SocketAddr,
    /// The HTTPS ingress, when enabled.
    pub https_addr: Option<SocketAddr>,
    pub registry_addr: SocketAddr,
    /// The Prometheus metrics endpoint, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub domain: String,
    /// The host the HTTPS ingress serves the console on (`None`: not on HTTPS).
    pub console_host: Option<String>,
    pub idle_timeout: Duration,
    pub edge: EdgeLimits,
    /// `None`: sized to the data directory's free space at start.
    pub max_image_size: Option<u64>,
    pub max_blob_size: u64,
    pub upload_expiry: Duration,
    pub image_gc_grace: Duration,
    /// Total memory and CPU of all instances.
    pub instance_limits: wharf_runtime::cgroup::ParentLimits,
    pub cgroup_parent: String,
    pub log_limits: wharf_runtime::logs::LogLimits,
    pub upstream_resolv_conf: PathBuf,
    pub build: super::build_config::BuildSettings,
    /// The private networks revisions and jobs may opt into.
    pub vpc_networks: Vec<wharf_runtime::network::VpcNetwork>,
    /// `None`: `<data-dir>/secrets.kek`, created when missing.
    pub secrets_key_file: Option<PathBuf>,
    pub acme: AcmeSettings,
}

/// Parses `500ms`, `60s`, `15m` or `1h` (any form `wharf_api::duration::parse` takes).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    Ok(wharf_api::duration::parse(text)?)
}

/// Parses a byte size: a number of bytes, or one with a binary unit (`KiB`, `MiB`, `GiB`,
/// `TiB`; `K`, `M`, `G`, `T` mean the same).
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => anyhow::bail!("size {text:?} has unknown unit {other:?}; use bytes or KiB, MiB, GiB, TiB"),
    };
    let number: u64 =
        number.parse().map_err(|_| anyhow::anyhow!("size {text:?} must be a whole number with an optional unit"))?;
    let bytes = number.checked_mul(1u64 << shift).ok_or_else(|| anyhow::anyhow!("size {text:?} is too large"))?;
    anyhow::ensure!(bytes > 0, "size {text:?} must be more than 0");
    Ok(bytes)
}

impl ServerConfig {
    pub fn resolve(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
        let file = match &args.config {
            Some(path) => read_config(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => read_config(Path::new(DEFAULT_CONFIG_FILE))?,
            None => ConfigFile::default(),
        };
        let defaults = wharf_runtime::cgroup::ParentLimits::host_default();
        let memory = args.instance_memory_limit.clone().or(file.instance_memory_limit.clone());
        let cpu = args.instance_cpu_limit.clone().or(file.instance_cpu_limit.clone());
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
        if let Some(size) = args.log_store_limit.clone().or(file.log_store_limit.clone()) {
            log_limits.store_bytes = wharf_runtime::resources::parse_memory(&size).context("--log-store-limit")?;
        }
        let vpc_texts = if args.vpc_networks.is_empty() {
            file.vpc_networks.clone().unwrap_or_default()
        } else {
            args.vpc_networks.clone()
        };
        let mut vpc_networks: Vec<wharf_runtime::network::VpcNetwork> = Vec::new();
        for text in vpc_texts.iter().filter(|t| !t.trim().is_empty()) {
            let network: wharf_runtime::network::VpcNetwork =
                text.parse().map_err(|e: String| anyhow::anyhow!("--vpc-network: {e}"))?;
            anyhow::ensure!(
                vpc_networks.iter().all(|n| n.name != network.name),
                "--vpc-network: the network {} is given twice; give each name once, with all its CIDRs",
                network.name
            );
            vpc_networks.push(network);
        }
        let addr = |s: &str| s.parse::<SocketAddr>().expect("embedded default address is valid");
        let edge = resolve_edge(&args.edge, &file)?;
        let build = super::build_config::BuildSettings::resolve(&args.build, file.build.as_ref())?;
        let acme = AcmeSettings::resolve(&args.acme, &file)?;
        let console_host = console_host(args, &file)?;
        Ok(ServerConfig {
            data_dir: args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            api_addr: args.api_addr.or(file.api_addr).unwrap_or_else(|| addr("127.0.0.1:8090")),
            ingress_addr: args.ingress_addr.or(file.ingress_addr).unwrap_or_else(|| addr("127.0.0.1:8080")),
            https_addr: args.https_addr.or(file.https_addr),
            registry_addr: args.registry_addr.or(file.registry_addr).unwrap_or_else(|| addr("127.0.0.1:5000")),
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            console_host,
            domain: args.domain.clone().or(file.domain).unwrap_or_else(|| "localhost".to_owned()),
            idle_timeout: parse_duration(
                args.idle_timeout.as_deref().or(file.idle_timeout.as_deref()).unwrap_or("60s"),
            )
            .context("--idle-timeout")?,
            edge,
            max_image_size: args
                .max_image_size
                .as_deref()
                .or(file.max_image_size.as_deref())
                .map(parse_size)
                .transpose()
                .context("--max-image-size")?,
            max_blob_size: parse_size(
                args.max_blob_size.as_deref().or(file.max_blob_size.as_deref()).unwrap_or("10GiB"),
            )
            .context("--max-blob-size")?,
            upload_expiry: parse_duration(
                args.upload_expiry.as_deref().or(file.upload_expiry.as_deref()).unwrap_or("1h"),
            )
            .context("--upload-expiry")?,
            image_gc_grace: parse_duration(
                args.image_gc_grace.as_deref().or(file.image_gc_grace.as_deref()).unwrap_or("1h"),
            )
            .context("--image-gc-grace")?,
            instance_limits,
            cgroup_parent: args.cgroup_parent.clone().or(file.cgroup_parent).unwrap_or_else(|| "wharf".to_owned()),
            log_limits,
            upstream_resolv_conf: args
                .upstream_resolv_conf
                .clone()
                .or(file.upstream_resolv_conf.clone())
                .unwrap_or_else(|| "/etc/resolv.conf".into()),
            build,
            vpc_networks,
            secrets_key_file: args.secrets_key_file.clone().or(file.secrets_key_file.clone()),
            acme,
        })
    }
}

/// Merges the edge flags over the file over [`EdgeLimits::default`], and checks the result.
fn resolve_edge(args: &EdgeArgs, file: &ConfigFile) -> anyhow::Result<EdgeLimits> {
    let defaults = EdgeLimits::default();
    let duration = |flag: &Option<String>, key: &Option<String>, default: Duration, name: &str| match flag
        .as_deref()
        .or(key.as_deref())
    {
        Some(text) => parse_duration(text).with_context(|| format!("--{name}")),
        None => Ok(default),
    };
    let listener = wharf_router::ListenerLimits {
        header_read_timeout: duration(
            &args.header_read_timeout,
            &file.header_read_timeout,
            defaults.listener.header_read_timeout,
            "header-read-timeout",
        )?,
        idle_timeout: duration(
            &args.connection_idle_timeout,
            &file.connection_idle_timeout,
            defaults.listener.idle_timeout,
            "connection-idle-timeout",
        )?,
        max_connections: args.max_connections.or(file.max_connections).unwrap_or(defaults.listener.max_connections),
        max_header_bytes: args.max_header_bytes.or(file.max_header_bytes).unwrap_or(defaults.listener.max_header_bytes),
        max_headers: defaults.listener.max_headers,
        tls_handshake_timeout: duration(
            &args.tls_handshake_timeout,
            &file.tls_handshake_timeout,
            defaults.listener.tls_handshake_timeout,
            "tls-handshake-timeout",
        )?,
    };
    listener.validate().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let max_api_body_bytes = args.max_api_body_bytes.or(file.max_api_body_bytes).unwrap_or(defaults.max_api_body_bytes);
    if max_api_body_bytes < 1024 {
        anyhow::bail!("--max-api-body-bytes is {max_api_body_bytes}; it must be at least 1024");
    }
    let pull = wharf_image::remote::PullTimeouts {
        connect: duration(
            &args.pull_connect_timeout,
            &file.pull_connect_timeout,
            defaults.pull.connect,
            "pull-connect-timeout",
        )?,
        read: duration(&args.pull_read_timeout, &file.pull_read_timeout, defaults.pull.read, "pull-read-timeout")?,
    };
    if pull.connect.is_zero() || pull.read.is_zero() {
        anyhow::bail!("--pull-connect-timeout and --pull-read-timeout must be more than 0");
    }
    Ok(EdgeLimits { listener, max_api_body_bytes, pull })
}

/// `--console-host`: a DNS name (lowercased), `off`, or by default `console.{domain}`, which
/// no service host can be (those have a region label before the domain).
fn console_host(args: &ServerArgs, file: &ConfigFile) -> anyhow::Result<Option<String>> {
    let domain = args.domain.as_deref().or(file.domain.as_deref()).unwrap_or("localhost");
    let host = match args.console_host.as_deref().or(file.console_host.as_deref()) {
        None => format!("console.{domain}"),
        Some("off") => return Ok(None),
        Some(name) => name.trim_end_matches('.').to_ascii_lowercase(),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    anyhow::ensure!(
        host.len() <= 253 && host.split('.').all(valid_label),
        "--console-host {host:?} is not a DNS name; give a name such as console.example.com, or off"
    );
    Ok(Some(host))
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
            https_addr: None,
            registry_addr: None,
            metrics_addr: None,
            domain: None,
            console_host: None,
            idle_timeout: None,
            build: Default::default(),
            edge: EdgeArgs::default(),
            max_image_size: None,
            max_blob_size: None,
            upload_expiry: None,
            image_gc_grace: None,
            instance_memory_limit: None,
            instance_cpu_limit: None,
            cgroup_parent: None,
            log_rate_limit: None,
            log_store_limit: None,
            upstream_resolv_conf: None,
            vpc_networks: Vec::new(),
            secrets_key_file: None,
            acme: AcmeArgs::default(),
        }
    }

    #[test]
    fn vpc_networks_come_from_flags_or_the_file_and_unsafe_ranges_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "vpc_networks = [\"lab=192.168.7.0/24\"]\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        let c = ServerConfig::resolve(&a).unwrap();
        assert_eq!(c.vpc_networks.len(), 1);
        assert_eq!(c.vpc_networks[0].name, "lab");
        a.vpc_networks = vec!["office=10.20.0.0/16, 172.16.5.0/24".to_owned()];
        let c = ServerConfig::resolve(&a).unwrap();
        let office = &c.vpc_networks[0];
        assert_eq!(office.name, "office");
        assert_eq!(office.cidrs, vec![("10.20.0.0".parse().unwrap(), 16), ("172.16.5.0".parse().unwrap(), 24)]);
        for (bad, why) in [
            ("office", "no '='"),
            ("office=10.0.0.0/33", "not an IPv4 CIDR"),
            ("Office=10.20.0.0/16", "lowercase"),
            ("meta=169.254.0.0/16", "overlaps 169.254.0.0/16"),
            ("all=0.0.0.0/0", "overlaps"),
            ("inst=10.0.0.0/8", "overlaps 10.213.0.0/16"),
        ] {
            a.vpc_networks = vec![bad.to_owned()];
            let err = format!("{:#}", ServerConfig::resolve(&a).unwrap_err());
            assert!(err.contains("--vpc-network") && err.contains(why), "{bad}: {err}");
        }
        a.vpc_networks = vec!["a=10.20.0.0/16".to_owned(), "a=10.21.0.0/16".to_owned()];
        let err = format!("{:#}", ServerConfig::resolve(&a).unwrap_err());
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn edge_limits_come_from_flags_and_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "max_connections = 50\nheader_read_timeout = \"5s\"\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        a.edge.header_read_timeout = Some("2s".to_owned());
        let c = ServerConfig::resolve(&a).unwrap();
        assert_eq!(c.edge.listener.max_connections, 50);
        assert_eq!(c.edge.listener.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.edge.max_api_body_bytes, EdgeLimits::default().max_api_body_bytes);

        a.edge.header_read_timeout = Some("45s".to_owned());
        let err = format!("{:#}", ServerConfig::resolve(&a).unwrap_err());
        assert!(err.contains("--header-read-timeout is 45s"), "{err}");
        a.edge.header_read_timeout = None;
        a.edge.max_header_bytes = Some(10);
        let err = format!("{:#}", ServerConfig::resolve(&a).unwrap_err());
        assert!(err.contains("--max-header-bytes is 10"), "{err}");
    }

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_say_why() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64GiB").unwrap(), 64 << 30);
        assert_eq!(parse_size("3 M").unwrap(), 3 << 20);
        for (bad, why) in
            [("1.5G", "unknown unit"), ("10XB", "unknown unit"), ("0", "more than 0"), ("", "whole number")]
        {
            let err = format!("{:#}", parse_size(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(format!("{:#}", parse_size("99999999999T").unwrap_err()).contains("too large"));
        let c = ServerConfig::resolve(&args()).unwrap();
        assert_eq!((c.max_image_size, c.max_blob_size), (None, 10 << 30));
        assert_eq!((c.upload_expiry, c.image_gc_grace), (Duration::from_secs(3600), Duration::from_secs(3600)));
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
    fn the_console_host_defaults_under_the_domain_and_is_checked() {
        let mut a = args();
        assert_eq!(ServerConfig::resolve(&a).unwrap().console_host.as_deref(), Some("console.localhost"));
        a.domain = Some("run.example.com".into());
        assert_eq!(ServerConfig::resolve(&a).unwrap().console_host.as_deref(), Some("console.run.example.com"));
        a.console_host = Some("Wharf.Example.com.".into());
        assert_eq!(ServerConfig::resolve(&a).unwrap().console_host.as_deref(), Some("wharf.example.com"));
        a.console_host = Some("off".into());
        assert_eq!(ServerConfig::resolve(&a).unwrap().console_host, None);
        a.console_host = Some("not a host/".into());
        let error = ServerConfig::resolve(&a).unwrap_err().to_string();
        assert!(error.starts_with("--console-host \"not a host/\" is not a DNS name"), "{error}");
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
