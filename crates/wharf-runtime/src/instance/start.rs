//! Starting an instance: rootfs, network, OCI bundle, the container (started through the
//! instance supervisor and its shim), then the startup probe. Until the container runs,
//! everything created so far is held by a [`PartialStart`], which releases it if the start
//! fails (or is abandoned), so a failed start leaves nothing behind. From then on the instance's reaper owns it all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::reap::{self, release};
use super::{Instance, InstanceSpec, InstanceState, InstanceStatus, StartPhases};
use crate::contract::{instance_env, validate_user_env};
use crate::error::RuntimeError;
use crate::logs::Stream;
use crate::network::InstanceNetwork;
use crate::resources::Resources;
use crate::rootfs::Rootfs;
use crate::runtime::{InstanceCaller, InstanceRecord, Runtime};
use crate::shim::ShimEvent;
use crate::spec::{SpecError, SpecInput, command_line, runtime_spec};

/// How long the shim may take to create and start the container.
const SHIM_REPORT_TIMEOUT: Duration = Duration::from_secs(60);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What a start has created so far, released unless the start gets as far as handing it to
/// the instance ([`PartialStart::into_parts`]). [`PartialStart::fail`] releases it and
/// returns the error; dropping it (the start future was cancelled) releases it in the
/// background.
#[derive(Debug)]
struct PartialStart {
    created: Option<Created>,
}

#[derive(Debug)]
struct Created {
    runtime: Runtime,
    id: String,
    dir: PathBuf,
    rootfs: Option<Rootfs>,
    network: Option<InstanceNetwork>,
    /// Whether the supervisor was asked to start the container.
    launched: bool,
}

impl Created {
    /// Stops the container, if its start was asked for (the supervisor kills it as soon as it
    /// runs, if it does not yet), and releases mounts, network, container state and the
    /// instance directory.
    async fn release(self) {
        if self.launched {
            let supervisor = &self.runtime.inner.supervisor;
            supervisor.forget(&self.id);
            supervisor.command(&crate::supervisor::SupervisorCommand::Stop { id: self.id.clone(), grace_ms: 0 }).await;
            let id = self.id.clone();
            let _ = tokio::task::spawn_blocking(move || crate::cgroup::kill_and_remove(&id)).await;
        }
        // A rootfs not (yet) mounted is unmounted by path: unmounting nothing is no error.
        let rootfs = self.rootfs.unwrap_or_else(|| Rootfs::paths(&self.dir));
        release(&self.runtime.inner, &self.id, &rootfs, self.network.as_ref(), &self.dir).await;
    }
}

impl PartialStart {
    fn new(runtime: &Runtime, id: &str, dir: &Path) -> PartialStart {
        PartialStart {
            created: Some(Created {
                runtime: runtime.clone(),
                id: id.to_owned(),
                dir: dir.to_owned(),
                rootfs: None,
                network: None,
                launched: false,
            }),
        }
    }

    fn created(&mut self) -> &mut Created {
        self.created.as_mut().expect("a partial start is used only until fail or into_parts")
    }

    /// Releases everything created so far and returns `error`, the reason the start failed.
    async fn fail(mut self, error: RuntimeError) -> RuntimeError {
        tracing::debug!(error = %error, "start failed; releasing what it created");
        if let Some(created) = self.created.take() {
            created.release().await;
        }
        error
    }

    /// Hands the rootfs and network over to the instance; the guard releases nothing.
    /// Can only be called once the container runs.
    fn into_parts(mut self) -> (Rootfs, InstanceNetwork) {
        let created = self.created.take().expect("into_parts is called once");
        match (created.rootfs, created.network) {
            (Some(rootfs), Some(network)) if created.launched => (rootfs, network),
            _ => unreachable!("into_parts is called only after the container was reported running"),
        }
    }
}

impl Drop for PartialStart {
    fn drop(&mut self) {
        if let Some(created) = self.created.take() {
            tracing::warn!(id = %created.id, "start abandoned; releasing what it created");
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(created.release().in_current_span())),
                Err(_) => tracing::error!(id = %created.id, "no runtime to release an abandoned start on"),
            }
        }
    }
}

/// A container reported running, with its event stream and the output FIFOs' read ends the
/// reaper takes over.
#[derive(Debug)]
struct Launched {
    events: UnboundedReceiver<ShimEvent>,
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    phases: StartPhases,
}

impl Runtime {
    /// Starts an instance and waits until its startup probe passes (services) or its process
    /// runs (job tasks, which have no startup probe). On error nothing of the instance is left.
    /// Everything the start logs is in an `instance` span carrying the instance's id.
    pub async fn start(&self, spec: InstanceSpec) -> Result<Arc<Instance>, RuntimeError> {
        self.start_as(spec, None).await
    }

    /// [`Runtime::start`] for an instance that acts as `identity`: from the moment its network
    /// exists (before its process runs) until it is released, [`Runtime::caller`] names it
    /// and its identity for its address.
    pub async fn start_as(
        &self,
        spec: InstanceSpec,
        identity: Option<wharf_control::backend::InstanceIdentity>,
    ) -> Result<Arc<Instance>, RuntimeError> {
        validate_user_env(spec.env.iter().map(|(k, _)| k.as_str()))?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let span = tracing::info_span!("instance", id = %id);
        let total_millis = self.inner.cgroups.limits.cpu_millis;
        if spec.resources.cpu_millis > total_millis {
            return Err(SpecError::CpuAboveServerLimit { cpu_millis: spec.resources.cpu_millis, total_millis }.into());
        }
        let reservation = self.inner.admission.reserve(spec.resources.memory_bytes)?;
        self.inner.cgroups.ensure()?;
        self.start_instance(id, spec, identity, reservation).instrument(span).await
    }

    async fn start_instance(
        &self,
        id: String,
        spec: InstanceSpec,
        identity: Option<wharf_control::backend::InstanceIdentity>,
        reservation: crate::admission::Reservation,
    ) -> Result<Arc<Instance>, RuntimeError> {
        let began = Instant::now();
        tracing::debug!(owner = ?spec.owner, image = %spec.image.digest, "starting");
        let dir = self.inner.instances_dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(RuntimeError::io("create directory", &dir))?;
        let mut partial = PartialStart::new(self, &id, &dir);
        let project = identity.as_ref().map(|i| i.project.clone());
        let launched = {
            let _slot = self.inner.launches.acquire().await;
            self.launch(&spec, identity, &id, &dir, partial.created()).await
        };
        let launched = match launched {
            Ok(launched) => launched,
            Err(e) => return Err(partial.fail(e).await),
        };
        let (rootfs, network) = partial.into_parts();
        let running_at = Instant::now();

        let port = spec.startup_probe.as_ref().map_or(spec.port, |p| match &p.action {
            super::ProbeAction::Tcp { port }
            | super::ProbeAction::HttpGet { port, .. }
            | super::ProbeAction::Grpc { port, .. } => *port,
        });
        let (status, _) = watch::channel(InstanceStatus { state: InstanceState::Starting, reason: None, exit: None });
        let instance = Arc::new(Instance {
            id: id.clone(),
            owner: spec.owner.clone(),
            addr: SocketAddr::new(network.ip.into(), if spec.port == 0 { port } else { spec.port }),
            created_at: SystemTime::now(),
            dir: dir.clone(),
            rootfs,
            network,
            memory_bytes: spec.resources.memory_bytes,
            cgroup: self.inner.cgroups.instance_path(&id),
            reservation: Mutex::new(Some(reservation)),
            grace_period: spec.grace_period,
            status,
            phases: Mutex::new(launched.phases),
            recent: Mutex::default(),
            log: self.logs().instance(&spec.owner, project.clone(), &id),
            project,
            failure: Mutex::new(None),
            exited: std::sync::atomic::AtomicBool::new(false),
            cpu: if spec.cpu.throttled {
                let cgroup = self.inner.cgroups.instance_path(&id);
                super::freeze::CpuGate::throttled(crate::cgroup::Freezer::new(self.inner.cgroups.layout, &cgroup))
            } else {
                super::freeze::CpuGate::always_on()
            },
        });
        self.inner.instances.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), instance.clone());
        // The reaper now owns the container: from here a failed start is a kill, and the
        // reaper releases everything.
        let readers = vec![
            tokio::spawn(
                reap::read_output(self.clone(), instance.clone(), launched.stdout, Stream::Stdout).in_current_span(),
            ),
            tokio::spawn(
                reap::read_output(self.clone(), instance.clone(), launched.stderr, Stream::Stderr).in_current_span(),
            ),
        ];
        tokio::spawn(reap::reap(self.clone(), instance.clone(), launched.events, readers).in_current_span());

        if let Some(probe) = &spec.startup_probe {
            if let Err(e) = super::probe_until_ready(&instance, probe).await {
                // The probe's error says why, with the exit and last output if it exited.
                let reason = e.to_string();
                self.kill(&instance, reason.clone()).await;
                instance.wait_terminal().await;
                return Err(RuntimeError::StartupFailed { reason });
            }
            let mut phases = instance.phases.lock().unwrap_or_else(|p| p.into_inner());
            phases.first_listen_us = micros(running_at.elapsed());
            phases.total_us = micros(began.elapsed());
        } else {
            instance.phases.lock().unwrap_or_else(|p| p.into_inner()).total_us = micros(began.elapsed());
        }
        instance.set_state(InstanceState::Ready);
        if instance.state() != InstanceState::Ready {
            let status = instance.wait_terminal().await;
            return Err(RuntimeError::StartupFailed {
                reason: status.reason.unwrap_or_else(|| "the container exited while starting".to_owned()),
            });
        }
        if self.startup_cpu_millis(&spec) != spec.resources.cpu_millis {
            // The start-up boost ends with the start-up.
            if let Err(e) =
                crate::cgroup::set_cpu_quota(self.inner.cgroups.layout, &instance.cgroup, spec.resources.cpu_millis)
            {
                tracing::warn!(error = %e, "ending the start-up CPU boost failed");
            }
        }
        if instance.cpu.is_throttled() {
            instance.cpu.arm();
            tokio::spawn(super::freeze::freeze_when_idle(instance.clone()).in_current_span());
        }
        if let Some(probe) = spec.liveness_probe.clone() {
            tokio::spawn(super::watch_liveness(self.clone(), instance.clone(), probe).in_current_span());
        }
        tracing::debug!(addr = %instance.addr, phases = ?instance.phases(), "ready");
        Ok(instance)
    }

    /// The CPU an instance gets until it is ready: its limit, or with a start-up boost twice
    /// that (as Cloud Run's boost), at most 8 cores and what all instances together may use.
    fn startup_cpu_millis(&self, spec: &InstanceSpec) -> u64 {
        let limit = spec.resources.cpu_millis;
        if !spec.cpu.startup_boost {
            return limit;
        }
        (limit * 2).min(crate::resources::MAX_CPU_MILLIS).min(self.inner.cgroups.limits.cpu_millis).max(limit)
    }

    /// Mounts the rootfs, creates the network, writes the bundle and has the supervisor start
    /// the container, then waits for the first report. Each thing created is recorded in `created` as soon
    /// as it exists, for the caller to release if this fails.
    async fn launch(
        &self,
        spec: &InstanceSpec,
        identity: Option<wharf_control::backend::InstanceIdentity>,
        id: &str,
        dir: &Path,
        created: &mut Created,
    ) -> Result<Launched, RuntimeError> {
        let planned = InstanceNetwork {
            netns: format!("wharf-{id}"),
            host_interface: format!("wh{id}"),
            ip: std::net::Ipv4Addr::UNSPECIFIED,
            service_keys: Vec::new(),
            vpc_mapped: spec.vpc_network.is_some(),
        };
        InstanceRecord { id: id.to_owned(), network: planned }.write(dir)?;

        let t = Instant::now();
        let (layers, memory, mount_dir) = (spec.layers.clone(), spec.resources.memory_bytes, dir.to_owned());
        let rootfs = tokio::task::spawn_blocking(move || Rootfs::mount(&mount_dir, &layers, memory))
            .await
            .map_err(|e| RuntimeError::Shim(e.to_string()))??;
        let rootfs = created.rootfs.insert(rootfs).clone();
        let rootfs_us = micros(t.elapsed());
        tracing::debug!(us = rootfs_us, "rootfs mounted");

        let t = Instant::now();
        let network = self.inner.network.create(id, spec.vpc_network.as_deref()).await?;
        let network = created.network.insert(network).clone();
        let caller = InstanceCaller { instance: id.to_owned(), owner: spec.owner.clone(), identity };
        self.inner.callers.lock().unwrap_or_else(|p| p.into_inner()).insert(network.ip, caller);
        let network_us = micros(t.elapsed());
        tracing::debug!(us = network_us, ip = %network.ip, netns = %network.netns, "network ready");

        self.write_bundle(spec, id, &rootfs, &network)?;
        let (stdout_path, stderr_path) = (rootfs.scratch.join("stdout"), rootfs.scratch.join("stderr"));
        let shim_log = rootfs.scratch.join("shim.log");
        let (stdout, stderr) = (open_output_fifo(&stdout_path)?, open_output_fifo(&stderr_path)?);
        created.launched = true;
        let mut events = self
            .inner
            .supervisor
            .start(
                id,
                crate::supervisor::ContainerFiles {
                    bundle: bundle_dir(&rootfs.scratch),
                    log: shim_log.clone(),
                    stdout: stdout_path,
                    stderr: stderr_path,
                    netns: Some(network.netns_path()),
                },
                &self.inner.cgroups.instance_path(id),
            )
            .await?;
        let first = tokio::time::timeout(SHIM_REPORT_TIMEOUT, events.recv()).await;
        let (create_us, exec_us) = match first {
            Ok(Some(ShimEvent::Started { create_us, start_us, .. })) => (create_us, start_us),
            Ok(Some(ShimEvent::Failed { error })) => return Err(RuntimeError::Shim(error)),
            other => {
                let log = std::fs::read_to_string(&shim_log).unwrap_or_default();
                return Err(RuntimeError::Shim(format!("no report from the container helper ({other:?}): {log}")));
            }
        };
        tracing::debug!(create_us, exec_us, "container running");
        let phases = StartPhases { rootfs_us, network_us, create_us, exec_us, ..StartPhases::default() };
        Ok(Launched { events, stdout, stderr, phases })
    }

    fn write_bundle(
        &self,
        spec: &InstanceSpec,
        id: &str,
        rootfs: &Rootfs,
        network: &InstanceNetwork,
    ) -> Result<(), RuntimeError> {
        let image = &spec.image.config.config;
        let args = command_line(image, spec.command.as_deref(), spec.args.as_deref())?;
        // The shim resolves a named or numeric user in the merged tree, which only its mount
        // namespace holds; the spec says root until then.
        let image_user = image.user().as_deref().map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned);
        let env = instance_env(image.env().as_deref().unwrap_or_default(), &spec.env, &spec.owner, spec.port);
        // The instance's own files go on its scratch tmpfs too: a file created on the data
        // directory's disk costs an inode allocation, which on ext4 scans the recently
        // deleted inodes of its group, 5-10% of the machine when a thousand instances start.
        let resolv_conf = rootfs.scratch.join("resolv.conf");
        std::fs::write(&resolv_conf, crate::network::INSTANCE_RESOLV_CONF)
            .map_err(RuntimeError::io("write", &resolv_conf))?;
        let hosts = rootfs.scratch.join("hosts");
        let hosts_text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{}\t{id}\n", network.ip);
        std::fs::write(&hosts, hosts_text).map_err(RuntimeError::io("write", &hosts))?;
        let secret_mounts = write_secret_files(&rootfs.scratch, &spec.secret_files)?;
        let cgroup = self.inner.cgroups.instance_path(id);
        let netns = network.netns_path();
        let config = runtime_spec(&SpecInput {
            args,
            env,
            cwd: spec.working_dir.as_deref().or(image.working_dir().as_deref()).unwrap_or("/"),
            user: (0, 0),
            rootfs: &rootfs.merged,
            hostname: id,
            netns: &netns,
            cgroup: &cgroup,
            resources: Resources { cpu_millis: self.startup_cpu_millis(spec), ..spec.resources },
            resolv_conf: &resolv_conf,
            hosts: &hosts,
            nofile: crate::spec::host_nofile(),
            secret_mounts,
            memory_volumes: spec.memory_volumes.iter().map(|v| (v.mount_path.clone(), v.size_bytes)).collect(),
        })?;
        let mut annotations = std::collections::HashMap::from([(
            crate::rootfs::OVERLAY_ANNOTATION.to_owned(),
            rootfs.overlay_options.clone(),
        )]);
        if let Some(user) = image_user {
            annotations.insert(crate::rootfs::USER_ANNOTATION.to_owned(), user);
        }
        let mut config = config;
        config.set_annotations(Some(annotations));
        // The bundle lives on the instance's in-memory scratch, never on disk: its
        // config.json holds the environment, secret values included.
        let bundle = bundle_dir(&rootfs.scratch);
        std::fs::create_dir_all(&bundle).map_err(RuntimeError::io("create directory", &bundle))?;
        let path = bundle.join("config.json");
        config.save(&path).map_err(|source| SpecError::Write { path, source })?;
        Ok(())
    }
}

/// Creates the FIFO at `path` that one of the container's output streams goes to, and opens
/// its read end, non-blocking (the reader task polls it; the writers, the container's
/// processes, block as on a pipe). It reads end of file once every writer closed it.
fn open_output_fifo(path: &Path) -> Result<std::os::fd::OwnedFd, RuntimeError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| RuntimeError::io("create FIFO", path)(e.into()))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(RuntimeError::io("open", path))?;
    Ok(file.into())
}

/// The OCI bundle's directory: on the scratch tmpfs, so the spec (and the environment it
/// carries) is never written to disk and disappears with the instance.
fn bundle_dir(scratch: &Path) -> PathBuf {
    scratch.join("bundle")
}

/// Writes the secret files onto the instance's scratch tmpfs (in memory, charged to the
/// instance's memory like its writable layer), one directory per volume mount, and returns
/// the mounts that bind each directory read-only into the container.
fn write_secret_files(
    scratch: &Path,
    files: &[super::SecretFileContent],
) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for file in files {
        let volume_dir = match mounts.iter().find(|(path, _)| *path == file.mount_path) {
            Some((_, dir)) => dir.clone(),
            None => {
                let dir = scratch.join("secrets").join(mounts.len().to_string());
                std::fs::create_dir_all(&dir).map_err(RuntimeError::io("create directory", &dir))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(RuntimeError::io("chmod", &dir))?;
                mounts.push((file.mount_path.clone(), dir.clone()));
                dir
            }
        };
        let target = volume_dir.join(&file.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(RuntimeError::io("create directory", parent))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&target)
            .map_err(RuntimeError::io("create", &target))?;
        std::io::Write::write_all(&mut out, &file.data).map_err(RuntimeError::io("write", &target))?;
        // The umask may have narrowed the mode: set it as the volume asks.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))
            .map_err(RuntimeError::io("chmod", &target))?;
    }
    Ok(mounts)
}
