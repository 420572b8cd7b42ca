//! `wharf server`: wires the platform's components together and serves them.
//!
//! Start-up opens the state database (applying migrations), the owner credential, the image
//! store and snapshot store, binds the three listeners (port 0 allowed), writes the bound
//! addresses to `<data-dir>/server.json` for the CLI and tests, then serves until SIGINT or
//! SIGTERM, when it stops accepting, finishes in-flight requests and removes `server.json`.
//! Every listener runs under the same [`config::EdgeLimits`] (a [`wharf_router::Listener`]
//! each: connection cap, timeouts, header limits), and start-up raises the process's
//! RLIMIT_NOFILE to its hard limit.

mod api;
mod build_config;
mod build_networks;
mod config;
mod console;
mod housekeeping;
mod metadata;
mod metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wharf_iam::Iam;
use wharf_image::content::StoreLimits;
use wharf_image::remote::{RemoteRegistry, default_docker_config};
use wharf_image::snapshot::UnpackLimits;
use wharf_image::{ImageStore, Resolver, SnapshotStore};
use wharf_router::Listener;
use wharf_store::Store;

pub use config::{DEFAULT_DATA_DIR, ServerArgs, ServerConfig};

/// The file in the data directory that tells clients where a running server listens.
pub const SERVER_INFO_FILE: &str = "server.json";

/// What `server.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    pub pid: u32,
    pub api_addr: SocketAddr,
    pub ingress_addr: SocketAddr,
    /// The HTTPS ingress, when `--https-addr` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_addr: Option<SocketAddr>,
    pub registry_addr: SocketAddr,
    /// The Prometheus endpoint, when `--metrics-addr` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Everything the API handlers share.
#[derive(Debug, Clone)]
pub struct Platform {
    pub iam: Iam,
    pub images: ImageStore,
    pub resolver: Resolver,
    pub control: wharf_control::ControlPlane,
    pub logs: wharf_runtime::logs::LogStore,
    pub housekeeping: housekeeping::ImageHousekeeping,
    pub builds: wharf_build::Builder,
    pub secrets: wharf_secrets::SecretManager,
    /// Request, instance and server metrics, in process: `metrics.snapshot()` is what
    /// `/metrics` renders (see `wharf_logging::metrics`), also read by the console's charts API;
    /// usage, which outlives a restart, is read from the control plane.
    pub metrics: Arc<wharf_logging::metrics::Metrics>,
    /// The last hour of each service's metrics, sampled from `metrics` every 10 s by
    /// [`sample_metrics_history`], for the console's charts.
    pub metrics_history: Arc<wharf_logging::history::MetricsHistory>,
    /// Signed-in browsers of the web console (`/console`), in the state database.
    pub console_sessions: console::sessions::Sessions,
    /// Failed console sign-ins per client address (429 past 10 a minute).
    pub console_sign_ins: console::rate_limit::SignInLimiter,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let config = ServerConfig::resolve(&args)?;
    raise_nofile_limit(&config);
    let data_dir = &config.data_dir;
    create_private_dir(data_dir)?;

    let db = Store::open(&data_dir.join("state.db"))?;
    let iam = Iam::open(db.clone(), data_dir)?;
    let secrets = open_secrets(&config, db.clone())?;
    let images = ImageStore::open(data_dir, db.clone())?.with_limits(StoreLimits {
        max_blob_bytes: config.max_blob_size,
        upload_expiry: config.upload_expiry,
        ..StoreLimits::default()
    });
    let unpack_limits = match config.max_image_size {
        Some(bytes) => UnpackLimits::with_max_bytes(bytes),
        None => UnpackLimits::sized_for(data_dir)
            .with_context(|| format!("cannot measure the free space of {}", data_dir.display()))?,
    };
    tracing::info!(max_image_bytes = unpack_limits.max_bytes, "layer unpacking limits");
    let snapshots =
        Arc::new(SnapshotStore::open(&data_dir.join("snapshots"), images.blobs().clone())?.with_limits(unpack_limits));

    let api_listener = bind(config.api_addr, "API").await?;
    let ingress_listener = bind_ingress(config.ingress_addr, "ingress", "--ingress-addr")?;
    let registry_listener = bind(config.registry_addr, "registry").await?;
    let https_listener = match config.https_addr {
        Some(addr) => Some(bind_ingress(addr, "HTTPS ingress", "--https-addr")?),
        None => None,
    };
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(bind(addr, "metrics").await?),
        None => None,
    };
    let info = ServerInfo {
        pid: std::process::id(),
        api_addr: api_listener.local_addr()?,
        ingress_addr: ingress_listener.local_addr()?,
        https_addr: https_listener.as_ref().map(TcpListener::local_addr).transpose()?,
        registry_addr: registry_listener.local_addr()?,
        metrics_addr: metrics_listener.as_ref().map(TcpListener::local_addr).transpose()?,
    };
    // Before the runtime: a failure here leaves nothing on the machine to undo.
    let builds = open_builder(&config, info.registry_addr)?;

    // Wharf's ID tokens name the API as their issuer; the keys are loaded (the first one
    // created) now, so no request waits for key generation.
    iam.issuer.set_url(&format!("http://{}", reachable(info.api_addr)));
    iam.issuer.load().context("cannot load the ID token signing keys")?;

    let table = Arc::new(wharf_router::RoutingTable::default());
    let shutdown = CancellationToken::new();
    let (dns, metadata_listener) = start_instance_services(&config, &table).await?;
    let instance_services = wharf_runtime::network::InstanceServices {
        dns: dns.addr(),
        metadata: ipv4_addr(&metadata_listener)?,
        ingress: instance_ingress_target(info.ingress_addr),
    };

    let helper = std::env::current_exe().context("cannot find the wharf binary for the container helper")?;
    let runtime = wharf_runtime::Runtime::open(
        wharf_runtime::RuntimeConfig {
            data_dir: data_dir.clone(),
            helper,
            log_retention_lines: 1_000_000,
            cgroup_parent: config.cgroup_parent.clone(),
            instance_limits: config.instance_limits,
            log_limits: config.log_limits,
            instance_services: Some(instance_services),
            vpc_networks: config.vpc_networks.clone(),
            build_egress_allow: config.build.egress_allow.clone(),
        },
        db.clone(),
    )
    .await
    .context("cannot start the container runtime (wharf server must run as root)")?;
    builds.set_egress_networks(Arc::new(build_networks::RuntimeBuildNetworks::new(runtime.clone())));
    // Its listener was bound before the runtime (whose rules DNAT to it); it answers once
    // the runtime can say which instance holds an address.
    let metadata = serve_metadata(
        metadata_listener,
        Listener::new("metadata", config.edge.listener.clone()),
        wharf_metadata::http::MetadataServer::new(Arc::new(metadata::RuntimeCallers(runtime.clone())), iam.clone()),
        shutdown.clone(),
    );

    let remote = Arc::new(RemoteRegistry::with_timeouts(default_docker_config(), config.edge.pull));
    let resolver = Resolver::new(images.clone(), snapshots.clone(), remote, local_registry_names(info.registry_addr));
    let settings = wharf_control::Settings {
        domain: config.domain.clone(),
        ingress_port: info.ingress_addr.port(),
        idle_timeout: config.idle_timeout,
        queue_timeout: std::time::Duration::from_secs(10),
        vpc_networks: config.vpc_networks.iter().map(|n| n.name.clone()).collect(),
    };
    let backend = Arc::new(
        wharf_runtime::RuntimeBackend::new(runtime.clone(), resolver.clone())
            .with_secrets(Arc::new(api::secrets::InstanceSecrets(secrets.clone()))),
    );
    let control = wharf_control::ControlPlane::open(db.clone(), resolver.clone(), backend, table.clone(), settings)
        .await
        .context("cannot open the control plane")?;
    let metrics = Arc::new(wharf_logging::metrics::Metrics::new());
    let pools = control.clone();
    metrics.set_pool_source(Box::new(move || pools.pool_reports()));
    let request_telemetry = wharf_logging::requests::RequestTelemetry::start(runtime.logs().clone(), metrics.clone());
    let observer: wharf_router::proxy::Observer = Some(request_telemetry);
    let housekeeping = housekeeping::ImageHousekeeping {
        images: images.clone(),
        snapshots,
        control: control.clone(),
        grace: config.image_gc_grace,
    };
    let metrics_history = Arc::new(wharf_logging::history::MetricsHistory::new());
    let platform = Platform {
        iam: iam.clone(),
        images: images.clone(),
        resolver,
        control: control.clone(),
        logs: runtime.logs().clone(),
        housekeeping: housekeeping.clone(),
        builds: builds.clone(),
        secrets,
        metrics: metrics.clone(),
        metrics_history: metrics_history.clone(),
        console_sessions: console::sessions::Sessions::open(db.clone()),
        console_sign_ins: console::rate_limit::SignInLimiter::default(),
    };

    let housekeeper = housekeeping.spawn(shutdown.clone());
    let history_sampler = tokio::spawn(sample_metrics_history(metrics.clone(), metrics_history, shutdown.clone()));
    let registry = metrics::counted(
        wharf_registry::router(wharf_registry::RegistryState { images, iam: iam.clone() }),
        metrics.clone(),
        wharf_logging::metrics::Surface::Registry,
    );
    let limits = &config.edge.listener;
    let https_port = info.https_addr.map(|addr| addr.port());
    let (https, domain_certificates) = match https_listener {
        Some(socket) => {
            let routed = table.clone();
            let local_ca = wharf_router::tls::LocalCa::open(&data_dir.join("tls"))
                .context("cannot set up the local CA of the HTTPS ingress")?;
            tracing::info!(ca = %local_ca.cert_path.display(), "HTTPS for service hosts uses the local CA");
            let certificates = wharf_router::tls::Certificates::new(
                Some(local_ca),
                Arc::new(move |name| routed.lookup(name).is_some() || routed.is_local_site(name)),
            );
            certificates.answer_challenges(table.acme_challenges().clone());
            let domain_certificates = domain_certificates(&config, &certificates, &table, https_port, &shutdown);
            table.set_https_policy(
                https_port.map(|port| wharf_router::HttpsPolicy { port, hsts_max_age: config.acme.hsts_max_age }),
            );
            let tls = wharf_router::tls::server_config(certificates).context("cannot set up TLS")?;
            let server = tokio::spawn(wharf_router::serve_tls(
                socket,
                Listener::new("HTTPS ingress", limits.clone()),
                table.clone(),
                wharf_router::Gate::new(iam.clone(), vec![wharf_runtime::network::INSTANCE_SUBNET]),
                observer.clone(),
                tls,
                shutdown.clone(),
            ));
            (Some(server), domain_certificates)
        }
        None => {
            let none: Arc<dyn wharf_router::acme::DomainCertificates> = Arc::new(wharf_router::acme::NoCertificates {
                reason: "HttpsNotConfigured",
                message: "This server has no HTTPS ingress, so mapped domains get no certificate and are served over \
                          plain HTTP; start wharf server with --https-addr (e.g. 0.0.0.0:443) to serve them over HTTPS."
                    .to_owned(),
            });
            (None, none)
        }
    };
    control
        .serve_domain_mappings(wharf_control::domains::DomainSettings {
            certificates: domain_certificates,
            addresses: public_addresses(info.https_addr.unwrap_or(info.ingress_addr)),
            https_port,
        })
        .context("cannot restore the domain mappings")?;
    let api_router = metrics::counted(
        api::router(platform, config.edge.max_api_body_bytes),
        metrics.clone(),
        wharf_logging::metrics::Surface::Api,
    );
    if https.is_some()
        && let Some(host) = &config.console_host
    {
        tracing::info!(%host, "the console is served on the HTTPS ingress");
        table.set_local_site(Some(Arc::new(console::https::ConsoleSite::new(
            host.clone(),
            api_router.clone(),
            tokio::runtime::Handle::current(),
        ))));
    }
    let servers = [
        serve(api_listener, Listener::new("API", limits.clone()), api_router, shutdown.clone()),
        tokio::spawn(wharf_router::serve(
            ingress_listener,
            Listener::new("ingress", limits.clone()),
            table,
            wharf_router::Gate::new(iam.clone(), vec![wharf_runtime::network::INSTANCE_SUBNET]),
            observer,
            shutdown.clone(),
        )),
        serve(registry_listener, Listener::new("registry", limits.clone()), registry, shutdown.clone()),
    ]
    .into_iter()
    .chain(https)
    .chain([metadata])
    .chain(metrics_listener.map(|socket| {
        serve(socket, Listener::new("metrics", limits.clone()), metrics::router(metrics.clone()), shutdown.clone())
    }));
    write_server_info(data_dir, &info)?;
    tracing::info!(
        api = %info.api_addr, ingress = %info.ingress_addr, https = ?info.https_addr, registry = %info.registry_addr,
        metrics = ?info.metrics_addr,
        data_dir = %data_dir.display(), "wharf server ready"
    );

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    for server in servers {
        let _ = server.await;
    }
    let _ = housekeeper.await;
    let _ = history_sampler.await;
    builds.shutdown().await;
    control.shutdown().await;
    runtime.shutdown().await;
    dns.shutdown();
    let _ = std::fs::remove_file(data_dir.join(SERVER_INFO_FILE));
    tracing::info!("stopped");
    Ok(())
}

/// Every [`wharf_logging::history::STEP`] until shutdown, closes an interval of each
/// service's metrics history.
async fn sample_metrics_history(
    metrics: Arc<wharf_logging::metrics::Metrics>,
    history: Arc<wharf_logging::history::MetricsHistory>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(wharf_logging::history::STEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let _span = tracing::debug_span!("metrics_history_sample").entered();
        history.sample(&metrics.snapshot(), std::time::SystemTime::now());
    }
}

/// Where mapped domains' certificates come from: the ACME directory, or (ACME off) nowhere,
/// which their status says.
fn domain_certificates(
    config: &ServerConfig,
    certificates: &Arc<wharf_router::tls::Certificates>,
    table: &Arc<wharf_router::RoutingTable>,
    https_port: Option<u16>,
    shutdown: &CancellationToken,
) -> Arc<dyn wharf_router::acme::DomainCertificates> {
    let Some(directory) = &config.acme.directory else {
        return Arc::new(wharf_router::acme::NoCertificates {
            reason: "AcmeOff",
            message: format!(
                "ACME is off (--acme-directory off): the HTTPS ingress presents a certificate from Wharf's local CA, \
                 which only clients trusting {} accept.",
                config.data_dir.join("tls").join("local-ca.pem").display()
            ),
        });
    };
    let tls_alpn01 = config.acme.tls_alpn01.unwrap_or(https_port == Some(443));
    tracing::info!(
        %directory, challenge = if tls_alpn01 { "tls-alpn-01" } else { "http-01" },
        "mapped domains get certificates from ACME"
    );
    wharf_router::acme::AcmeManager::new(
        wharf_router::acme::AcmeConfig {
            directory: directory.clone(),
            ca_file: config.acme.ca_file.clone(),
            email: config.acme.email.clone(),
            dir: config.data_dir.join("tls").join("acme"),
            tls_alpn01,
        },
        certificates.clone(),
        table.acme_challenges().clone(),
        shutdown.clone(),
    )
}

/// The addresses DNS records of mapped domains should point at: the listener's own address
/// when it is a specific public one, else this machine's addresses that are neither loopback,
/// link-local nor instances'.
fn public_addresses(listener: SocketAddr) -> Vec<std::net::IpAddr> {
    let ip = listener.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        return vec![ip];
    }
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut addresses: Vec<std::net::IpAddr> = interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                let ip = v4.ip();
                let (subnet, prefix) = wharf_runtime::network::INSTANCE_SUBNET;
                let mask = u32::MAX << (32 - u32::from(prefix));
                let instance = u32::from(ip) & mask == u32::from(subnet) & mask;
                return (!ip.is_loopback() && !ip.is_link_local() && !instance).then_some(std::net::IpAddr::V4(ip));
            }
            let v6 = address.as_sockaddr_in6()?.ip();
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            (!v6.is_loopback() && !link_local && listener.is_ipv6()).then_some(std::net::IpAddr::V6(v6))
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The source builder: buildah with its storage under `<data-dir>/build`, pushing to and
/// pulling base images from this server's registry on loopback with the owner credential.
fn open_builder(config: &ServerConfig, registry_addr: SocketAddr) -> anyhow::Result<wharf_build::Builder> {
    let registry = match registry_addr {
        SocketAddr::V4(addr) if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        SocketAddr::V6(addr) if addr.ip().is_unspecified() => format!("[::1]:{}", addr.port()),
        other => other.to_string(),
    };
    let mut registry_names = local_registry_names(registry_addr);
    if !registry_names.contains(&registry) {
        registry_names.push(registry.clone());
    }
    let token_file = config.data_dir.join(wharf_iam::OWNER_TOKEN_FILE);
    let registry_token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read {} for builds to reach the registry", token_file.display()))?
        .trim()
        .to_owned();
    let builder = wharf_build::Builder::open(wharf_build::BuilderConfig {
        dir: config.data_dir.join("build"),
        registry,
        registry_names,
        registry_token,
        cgroup_parent: config.cgroup_parent.clone(),
        limits: config.build.limits.clone(),
        base_images: config.build.base_images.clone(),
        buildah: "buildah".into(),
        storage_driver: config.build.storage_driver.clone(),
    })
    .context("cannot prepare source builds")?;
    Ok(builder)
}

/// Opens Secret Manager with its key-encryption key: `--secrets-key-file` (which must exist),
/// else `<data-dir>/secrets.kek` (created on first start).
fn open_secrets(config: &ServerConfig, db: Store) -> anyhow::Result<wharf_secrets::SecretManager> {
    let (path, create) = match &config.secrets_key_file {
        Some(path) => (path.clone(), false),
        None => (config.data_dir.join(wharf_secrets::DEFAULT_KEY_FILE), true),
    };
    wharf_secrets::SecretManager::open(db, &path, create)
        .with_context(|| format!("cannot open the secrets store with key file {}", path.display()))
}

/// Starts what instances reach at 169.254.169.254 (see `wharf_runtime::network`): the DNS
/// resolver, which answers the hosts of this server's service URLs with the address instances
/// reach the ingress at, and binds the metadata HTTP server's listener (served by
/// [`serve_metadata`] once the runtime exists). Both on loopback.
async fn start_instance_services(
    config: &ServerConfig,
    table: &Arc<wharf_router::RoutingTable>,
) -> anyhow::Result<(wharf_metadata::DnsServer, TcpListener)> {
    let routes = table.clone();
    let local_names: wharf_metadata::LocalNames =
        Arc::new(move |name: &str| routes.lookup(name).map(|_| wharf_runtime::network::INGRESS_ADDR));
    let dns = wharf_metadata::DnsServer::start(wharf_metadata::dns::DnsConfig {
        bind: std::net::Ipv4Addr::LOCALHOST,
        upstream_resolv_conf: config.upstream_resolv_conf.clone(),
        local_names,
    })
    .await
    .context("cannot start the DNS resolver for instances")?;
    let metadata_listener =
        TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await.context("cannot listen for the metadata server")?;
    Ok((dns, metadata_listener))
}

fn ipv4_addr(listener: &TcpListener) -> anyhow::Result<std::net::SocketAddrV4> {
    match listener.local_addr()? {
        SocketAddr::V4(addr) => Ok(addr),
        other => anyhow::bail!("the metadata server bound {other}, not an IPv4 address"),
    }
}

/// Serves the metadata server on `socket` until `shutdown`; each connection's requests carry
/// its peer address, which is how the server knows the calling instance.
fn serve_metadata(
    socket: TcpListener,
    listener: Arc<Listener>,
    server: wharf_metadata::http::MetadataServer,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let router = wharf_metadata::http::router(server);
    tokio::spawn(listener.serve(socket, shutdown, move |remote| {
        hyper_util::service::TowerToHyperService::new(wharf_metadata::http::for_connection(&router, remote))
    }))
}

/// An address clients can connect to: a listener on every address is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, v4.port())),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port())),
        other => other,
    }
}

/// Where instances' connections to the ingress address go: the ingress listener itself, or
/// loopback when it listens on every address. `None` (with a warning) for an IPv6-only
/// ingress, which instances then cannot reach by service URL.
fn instance_ingress_target(ingress: SocketAddr) -> Option<std::net::SocketAddrV4> {
    match ingress {
        SocketAddr::V4(addr) if addr.ip().is_unspecified() => {
            Some(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        SocketAddr::V4(addr) => Some(addr),
        SocketAddr::V6(addr) => {
            tracing::warn!(ingress = %addr, "the ingress listens on IPv6 only; instances cannot reach service URLs");
            None
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict data directory {}", dir.display()))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for the {what} on {addr} (is another wharf server running? pass --{}-addr with a free port, or port 0)", what.to_lowercase()))
}

/// As [`bind`], for an ingress: one socket per worker thread (`wharf_router::bind_ingress`).
fn bind_ingress(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    wharf_router::bind_ingress(addr).with_context(|| {
        format!("cannot listen for the {what} on {addr} (is another wharf server running? pass {flag} with a free port, or port 0)")
    })
}

/// Names under which users refer to this server's registry in image references.
fn local_registry_names(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut names = vec![addr.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}")];
    names.dedup();
    names
}

/// Serves `router` on `socket` with `listener`'s connection limits until `shutdown`. Each
/// request carries the client's address (`ConnectInfo<SocketAddr>`).
fn serve(
    socket: TcpListener,
    listener: Arc<Listener>,
    router: axum::Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(listener.serve(socket, shutdown, move |remote: SocketAddr| {
        let router = router.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(remote));
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, request).await }
        })
    }))
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit: every client
/// connection, upstream connection and instance log pipe is a descriptor, and the usual
/// soft limit of 1024 would make a busy server fail with EMFILE long before the listeners'
/// connection caps. Says so when even the hard limit is below what the caps could use.
fn raise_nofile_limit(config: &ServerConfig) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open file limit (RLIMIT_NOFILE)");
            return;
        }
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open file limit (RLIMIT_NOFILE)");
                hard
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open file limit (RLIMIT_NOFILE)");
                soft
            }
        }
    } else {
        soft
    };
    // Each proxied connection may need a second descriptor for its upstream.
    let wanted = u64::try_from(config.edge.listener.max_connections).unwrap_or(u64::MAX).saturating_mul(4);
    if limit < wanted {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = config.edge.listener.max_connections,
            "the open file limit is low for --max-connections on three listeners; accepts may fail with EMFILE \
             (they are retried with a back-off); raise the hard limit (e.g. LimitNOFILE= in the systemd unit) or lower \
             --max-connections"
        );
    }
}

fn write_server_info(data_dir: &Path, info: &ServerInfo) -> anyhow::Result<()> {
    let path: PathBuf = data_dir.join(SERVER_INFO_FILE);
    let staged = path.with_extension("json.tmp");
    std::fs::write(&staged, serde_json::to_vec_pretty(info)?)
        .with_context(|| format!("cannot write {}", staged.display()))?;
    std::fs::rename(&staged, &path).with_context(|| format!("cannot write {}", path.display()))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
