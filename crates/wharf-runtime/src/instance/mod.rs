//! Instances: what one is ([`Instance`], its [`InstanceState`] and start-up [`StartPhases`]),
//! and its lifecycle, one file per operation: [`start`](start.rs) builds and starts one and
//! waits for readiness, [`probe`](probe.rs) checks readiness and liveness,
//! [`freeze`](freeze.rs) gives it CPU only while requests are in flight, [`stop`](stop.rs)
//! asks it to stop, and [`reap`](reap.rs) records how it ended and releases everything it used.

pub(crate) mod freeze;
pub(crate) mod probe;
pub(crate) mod reap;
pub(crate) mod start;
pub(crate) mod stop;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use wharf_image::ResolvedImage;

use crate::cgroup::CpuStats;
use crate::contract::Owner;
use crate::network::InstanceNetwork;
use crate::resources::Resources;
use crate::rootfs::Rootfs;

pub use probe::{Probe, ProbeAction, ProbeCheck, ProbeError};
pub(crate) use probe::{probe_until_ready, watch_liveness};

/// How many of an instance's last output lines are kept in memory to explain a failure.
const RECENT_LINES: usize = 20;

pub use wharf_control::backend::{ExitInfo, InstanceState, InstanceStatus};

/// Where a start's time went, so a slow start can be explained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartPhases {
    /// Mounting the tmpfs and overlay.
    pub rootfs_us: u64,
    /// Namespace, veth, address and routes.
    pub network_us: u64,
    /// libcontainer create (namespaces, cgroups, mounts, pivot_root), measured by the shim.
    pub create_us: u64,
    /// libcontainer start until the process runs, measured by the shim.
    pub exec_us: u64,
    /// From the process running until its port accepted a connection.
    pub first_listen_us: u64,
    /// Everything, from the start request until ready.
    pub total_us: u64,
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub owner: Owner,
    pub image: ResolvedImage,
    /// Snapshot directories of the image's layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// Replaces the image's Entrypoint.
    pub command: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub args: Option<Vec<String>>,
    /// Replaces the image's WorkingDir.
    pub working_dir: Option<String>,
    pub env: Vec<(String, String)>,
    /// The port the container listens on (`PORT`); services only.
    pub port: u16,
    pub resources: Resources,
    /// CPU always on or only during requests, and a start-up boost.
    pub cpu: wharf_control::backend::CpuAllocation,
    /// `None` for job tasks, which need not listen.
    pub startup_probe: Option<Probe>,
    pub liveness_probe: Option<Probe>,
    /// SIGTERM to SIGKILL.
    pub grace_period: Duration,
    /// The private network (of the server's `--vpc-network`s) the instance may reach.
    pub vpc_network: Option<String>,
    /// Secret files, already read, for the instance's read-only in-memory secret mounts.
    pub secret_files: Vec<SecretFileContent>,
    /// In-memory `emptyDir` volumes, a tmpfs each.
    pub memory_volumes: Vec<wharf_control::backend::MemoryVolume>,
}

/// One secret file: where it goes and its bytes (wiped when dropped).
#[derive(Clone)]
pub struct SecretFileContent {
    /// The volume's directory in the container.
    pub mount_path: String,
    /// Below `mount_path`.
    pub path: String,
    pub mode: u32,
    pub data: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SecretFileContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFileContent")
            .field("mount_path", &self.mount_path)
            .field("path", &self.path)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// A running (or finished) container instance.
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub owner: Owner,
    /// The project of its service or job (its identity's), labelling its log lines; `None`
    /// for an instance started without an identity (runtime tests and tools).
    pub project: Option<String>,
    /// Where the platform reaches the container's port.
    pub addr: SocketAddr,
    pub created_at: SystemTime,
    pub(crate) dir: PathBuf,
    pub(crate) rootfs: Rootfs,
    pub(crate) network: InstanceNetwork,
    pub(crate) memory_bytes: u64,
    /// The cgroup path libcontainer was given (`/wharf/wharf-<id>`).
    pub(crate) cgroup: String,
    /// This instance's share of the server-wide memory limit, returned once it is released.
    pub(crate) reservation: Mutex<Option<crate::admission::Reservation>>,
    pub(crate) grace_period: Duration,
    pub(crate) status: watch::Sender<InstanceStatus>,
    pub(crate) phases: Mutex<StartPhases>,
    pub(crate) recent: Mutex<VecDeque<String>>,
    /// Where its output goes (its own queue and rate budget).
    pub(crate) log: crate::logs::InstanceLog,
    /// Set before the platform kills an instance for a reason of its own (liveness failure,
    /// startup timeout), so the reaper reports that reason rather than the kill.
    pub(crate) failure: Mutex<Option<String>>,
    /// Raised as soon as the container is known to have exited, before teardown starts.
    pub(crate) exited: std::sync::atomic::AtomicBool,
    /// CPU always on, or only while requests are in flight.
    pub(crate) cpu: freeze::CpuGate,
}

impl Instance {
    pub fn status(&self) -> InstanceStatus {
        self.status.borrow().clone()
    }

    pub fn state(&self) -> InstanceState {
        self.status.borrow().state
    }

    pub fn phases(&self) -> StartPhases {
        *self.phases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the instance is stopped or failed and fully torn down.
    pub async fn wait_terminal(&self) -> InstanceStatus {
        let mut rx = self.status.subscribe();
        match rx.wait_for(|s| s.state.is_terminal()).await {
            Ok(status) => status.clone(),
            Err(_) => self.status(),
        }
    }

    /// CPU throttling counters, while the instance runs.
    pub fn cpu_stats(&self) -> Option<CpuStats> {
        crate::cgroup::cpu_stats(&self.cgroup)
    }

    /// CPU time used by the instance's processes so far, in microseconds.
    pub fn cpu_usage_us(&self) -> Option<u64> {
        crate::cgroup::cpu_usage_us(&self.cgroup)
    }

    /// Memory the instance uses now, without reclaimable page cache.
    pub fn memory_working_set(&self) -> Option<u64> {
        crate::cgroup::memory_working_set(&self.cgroup)
    }

    /// Whether the instance is frozen between requests now (its CPU is throttled).
    pub fn is_frozen(&self) -> bool {
        self.cpu.is_frozen()
    }

    /// A request to the instance begins: a frozen instance is thawed when this returns.
    pub fn request_started(&self) {
        self.cpu.request_started();
    }

    /// A request begun with [`Instance::request_started`] ended.
    pub fn request_ended(&self) {
        self.cpu.request_ended();
    }

    /// The last lines the container wrote.
    pub fn recent_output(&self) -> Vec<String> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Whether the container process has exited (its teardown may still be under way).
    pub fn has_exited(&self) -> bool {
        self.exited.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }

    pub fn netns(&self) -> &str {
        &self.network.netns
    }

    pub(crate) fn remember_line(&self, line: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back(line.to_owned());
    }

    pub(crate) fn set_state(&self, state: InstanceState) {
        self.status.send_modify(|s| {
            if !s.state.is_terminal() {
                s.state = state;
            }
        });
    }
}

/// Releases a leftover instance found by the start-up sweep.
pub(crate) async fn reap_leftover(
    inner: &crate::runtime::Inner,
    id: &str,
    rootfs: &Rootfs,
    network: Option<&InstanceNetwork>,
    dir: &Path,
) {
    let network = network.filter(|n| Path::new("/run/netns").join(&n.netns).exists());
    reap::release(inner, id, rootfs, network, dir).await;
}
