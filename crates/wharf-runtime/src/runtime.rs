//! The runtime handle: where instances live on disk, the host network, the log store, and the
//! table of running instances. Opening it sweeps up whatever an unclean exit of a previous
//! server on the same data directory left (processes, cgroups, mounts, namespaces).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wharf_store::Store;

use crate::admission::Admission;
use crate::cgroup::CgroupParent;
use crate::error::RuntimeError;
use crate::instance::Instance;
use crate::logs::LogStore;
use crate::network::{InstanceNetwork, Network};
use crate::rootfs::Rootfs;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    /// The `wharf` binary, whose `supervise` and `shim` subcommands run the containers.
    pub helper: PathBuf,
    /// How many log lines to keep.
    pub log_retention_lines: i64,
    /// The parent cgroup of every instance, relative to the hierarchy root (`wharf`).
    pub cgroup_parent: String,
    /// Total memory and CPU of all instances together, in the kernel and for admission.
    pub instance_limits: crate::cgroup::ParentLimits,
    /// Per-instance log rates, line length and the log store's size.
    pub log_limits: crate::logs::LogLimits,
    /// The server's listeners that instances reach at 169.254.169.254 (DNS, metadata) and at
    /// the ingress address; `None` gives instances no DNS and no way to the ingress.
    pub instance_services: Option<crate::network::InstanceServices>,
    /// The private networks revisions and jobs may opt into (`--vpc-network`).
    pub vpc_networks: Vec<crate::network::VpcNetwork>,
    /// The only destinations builds' `RUN` steps may reach (`--build-egress-allow`); `None`:
    /// every public address.
    pub build_egress_allow: Option<Vec<(std::net::Ipv4Addr, u8)>>,
}

impl RuntimeConfig {
    /// The settings a server has by default, for `data_dir` and the `helper` binary.
    pub fn new(data_dir: PathBuf, helper: PathBuf) -> RuntimeConfig {
        RuntimeConfig {
            data_dir,
            helper,
            log_retention_lines: 1_000_000,
            cgroup_parent: "wharf".to_owned(),
            instance_limits: crate::cgroup::ParentLimits::host_default(),
            log_limits: crate::logs::LogLimits::default(),
            instance_services: None,
            vpc_networks: Vec::new(),
            build_egress_allow: None,
        }
    }
}

/// How many instance launches may run at once, per core. A launch is mostly CPU (mounts,
/// netlink, the shim's fork and exec, libcontainer): more at once only share the cores, and a
/// thousand at once made this 2-core machine's load average pass 300 with next to no start
/// finishing (`docs/benchmarks.md`, 1000 instances).
const LAUNCHES_PER_CORE: usize = 2;

#[derive(Debug, Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) instances_dir: PathBuf,
    pub(crate) state_root: PathBuf,
    /// The one helper process that parents, stops and reaps this runtime's containers.
    pub(crate) supervisor: crate::supervisor::Supervisor,
    pub(crate) network: Network,
    pub(crate) logs: LogStore,
    pub(crate) cgroups: CgroupParent,
    /// Keeps the v1 freezer's static key on, so thaws and freezes stay cheap; released at
    /// shutdown, before the parent cgroup is removed.
    freezer_anchor: Mutex<Option<crate::cgroup::FreezerAnchor>>,
    pub(crate) admission: Admission,
    /// Launches (rootfs, network, container) under way at once: a burst of starts queues here
    /// instead of forking hundreds of shims together (`LAUNCHES_PER_CORE`).
    pub(crate) launches: tokio::sync::Semaphore,
    pub(crate) instances: Mutex<HashMap<String, Arc<Instance>>>,
    /// Who has which instance address: from the moment a start creates the instance's network
    /// (before its process runs) until its release destroys it, so an address never names a
    /// previous holder. What the metadata server asks ([`Runtime::caller`]).
    pub(crate) callers: Mutex<HashMap<std::net::Ipv4Addr, InstanceCaller>>,
}

/// The instance holding an address, as this runtime started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCaller {
    pub instance: String,
    pub owner: wharf_control::backend::Owner,
    /// Who it acts as; `None` for an instance started without one ([`Runtime::start`]).
    pub identity: Option<wharf_control::backend::InstanceIdentity>,
}

/// What is written to `<instance-dir>/instance.json` before anything is created, so a sweep
/// after a crash knows what to remove.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct InstanceRecord {
    pub(crate) id: String,
    pub(crate) network: InstanceNetwork,
}

impl InstanceRecord {
    pub(crate) fn write(&self, dir: &Path) -> Result<(), RuntimeError> {
        let path = dir.join("instance.json");
        let bytes = serde_json::to_vec(self).map_err(|e| RuntimeError::io("serialize", &path)(e.into()))?;
        std::fs::write(&path, bytes).map_err(RuntimeError::io("write", &path))
    }
}

impl Runtime {
    /// Opens the runtime on `config.data_dir`: sweeps leftovers, installs the host network
    /// rules, starts the log writer. Must run inside a tokio runtime.
    pub async fn open(config: RuntimeConfig, db: Store) -> Result<Runtime, RuntimeError> {
        let instances_dir = config.data_dir.join("instances");
        let state_root = config.data_dir.join("containers");
        for dir in [&instances_dir, &state_root] {
            std::fs::create_dir_all(dir).map_err(RuntimeError::io("create directory", dir))?;
        }
        let cgroups = CgroupParent::new(&config.cgroup_parent, config.instance_limits)?;
        cgroups.setup()?;
        let freezer_anchor = crate::cgroup::FreezerAnchor::hold(&cgroups).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no freezer anchor: thawing throttled instances costs more");
            None
        });
        tracing::info!(
            parent = %cgroups.path, memory = config.instance_limits.memory_bytes,
            cpu_millis = config.instance_limits.cpu_millis, "instance cgroup parent ready"
        );
        let network = Network::new(config.instance_services, config.vpc_networks)
            .with_build_egress_allow(config.build_egress_allow);
        network.setup_host().await?;
        crate::rootfs::make_instances_mount_point(&instances_dir)?;
        let inner = Inner {
            instances_dir,
            supervisor: crate::supervisor::Supervisor::new(config.helper, state_root.clone()),
            state_root,
            network,
            logs: LogStore::open(db, config.log_retention_lines, config.log_limits),
            admission: Admission::new(config.instance_limits.memory_bytes),
            launches: tokio::sync::Semaphore::new(
                LAUNCHES_PER_CORE * std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ),
            cgroups,
            freezer_anchor: Mutex::new(freezer_anchor),
            instances: Mutex::default(),
            callers: Mutex::default(),
        };
        let runtime = Runtime { inner: Arc::new(inner) };
        runtime.sweep().await;
        runtime.sweep_build_networks().await;
        if let Err(e) = crate::rootfs::mount_state_tmpfs(&runtime.inner.state_root) {
            tracing::warn!(error = %e, "container states stay on the data directory's disk: each start costs more");
        }
        Ok(runtime)
    }

    pub fn logs(&self) -> &LogStore {
        &self.inner.logs
    }

    /// Instances not yet torn down.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.inner.instances.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The parent cgroup every instance of this server lives under.
    pub fn cgroup_parent(&self) -> &CgroupParent {
        &self.inner.cgroups
    }

    /// The memory admission of instances against the server-wide limit.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// The instance whose network has address `ip` now (starting, running or stopping), as
    /// this runtime's own table says: the identity of a connection coming from an instance.
    pub fn caller(&self, ip: std::net::Ipv4Addr) -> Option<InstanceCaller> {
        self.inner.callers.lock().unwrap_or_else(|p| p.into_inner()).get(&ip).cloned()
    }

    pub fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        self.inner.instances.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Stops every instance (each with its grace period), then removes the host network rules
    /// if no other server uses them.
    pub async fn shutdown(&self) {
        let stops = self.instances().into_iter().map(|i| {
            let runtime = self.clone();
            tokio::spawn(async move { runtime.stop(&i).await })
        });
        for stop in stops.collect::<Vec<_>>() {
            let _ = stop.await;
        }
        self.inner.supervisor.close().await;
        crate::rootfs::unmount_instances_mount_point(&self.inner.instances_dir);
        crate::rootfs::unmount_state_tmpfs(&self.inner.state_root);
        self.inner.network.teardown_host().await;
        drop(self.inner.freezer_anchor.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.inner.cgroups.remove_if_unused();
        self.inner.logs.flush().await;
    }

    /// Removes what instances of a previous run on this data directory left behind.
    async fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.inner.instances_dir) else { return };
        for entry in entries.flatten() {
            let dir = entry.path();
            let record: Option<InstanceRecord> =
                std::fs::read(dir.join("instance.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let id = record.as_ref().map_or_else(|| entry.file_name().to_string_lossy().into_owned(), |r| r.id.clone());
            tracing::warn!(instance = %id, "sweeping up an instance left by a previous run");
            let kill_id = id.clone();
            let _ = tokio::task::spawn_blocking(move || crate::cgroup::kill_and_remove(&kill_id)).await;
            let network = record.map(|r| r.network);
            crate::instance::reap_leftover(&self.inner, &id, &Rootfs::paths(&dir), network.as_ref(), &dir).await;
        }
    }
}
