//! Starting an instance: rootfs, network, OCI bundle, the shim that runs the container, then
//! the startup probe. Each step undoes what came before if it fails, so a failed start leaves
//! nothing behind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use command_fds::{CommandFdExt as _, FdMapping};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::watch;

use super::reap::{self, release};
use super::{Instance, InstanceSpec, InstanceState, InstanceStatus, StartPhases};
use crate::contract::{instance_env, validate_user_env};
use crate::error::RuntimeError;
use crate::logs::Stream;
use crate::network::InstanceNetwork;
use crate::rootfs::Rootfs;
use crate::runtime::{InstanceRecord, Runtime};
use crate::shim::ShimEvent;
use crate::spec::{SpecInput, command_line, resolve_user, runtime_spec};

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Runtime {
    /// Starts an instance and waits until its startup probe passes (services) or its process
    /// runs (job tasks, which have no startup probe). On error nothing of the instance is left.
    pub async fn start(&self, spec: InstanceSpec) -> Result<Arc<Instance>, RuntimeError> {
        validate_user_env(spec.env.iter().map(|(k, _)| k.as_str()))
            .map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
        let began = Instant::now();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let dir = self.inner.instances_dir.join(&id);
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).map_err(RuntimeError::io("create directory", &bundle))?;
        let planned = InstanceNetwork {
            netns: format!("wharf-{id}"),
            host_interface: format!("wh{id}"),
            ip: std::net::Ipv4Addr::UNSPECIFIED,
        };
        InstanceRecord { id: id.clone(), network: planned }.write(&dir)?;

        let t = Instant::now();
        let (layers, memory) = (spec.layers.clone(), spec.resources.memory_bytes);
        let mount_dir = dir.clone();
        let rootfs = tokio::task::spawn_blocking(move || Rootfs::mount(&mount_dir, &layers, memory))
            .await
            .map_err(|e| RuntimeError::Shim(e.to_string()))
            .and_then(|r| r);
        let rootfs = match rootfs {
            Ok(r) => r,
            Err(e) => {
                release(&self.inner, &id, &Rootfs::paths(&dir), None, &dir).await;
                return Err(e);
            }
        };
        let rootfs_us = micros(t.elapsed());

        let t = Instant::now();
        let network = match self.inner.network.create(&id).await {
            Ok(n) => n,
            Err(e) => {
                release(&self.inner, &id, &rootfs, None, &dir).await;
                return Err(e);
            }
        };
        let network_us = micros(t.elapsed());

        let launched = match self.write_bundle(&spec, &id, &dir, &rootfs, &network) {
            Ok(()) => self.launch_shim(&id, &dir).await,
            Err(e) => Err(e),
        };
        let (mut child, mut events, stdout, stderr) = match launched {
            Ok(parts) => parts,
            Err(e) => {
                release(&self.inner, &id, &rootfs, Some(&network), &dir).await;
                return Err(e);
            }
        };
        let first = tokio::time::timeout(Duration::from_secs(60), events.next_line()).await;
        let (create_us, exec_us) = match first {
            Ok(Ok(Some(line))) => match serde_json::from_str::<ShimEvent>(&line) {
                Ok(ShimEvent::Started { create_us, start_us, .. }) => (create_us, start_us),
                Ok(ShimEvent::Failed { error }) => {
                    let _ = child.wait().await;
                    release(&self.inner, &id, &rootfs, Some(&network), &dir).await;
                    return Err(RuntimeError::Shim(error));
                }
                other => {
                    let _ = child.kill().await;
                    release(&self.inner, &id, &rootfs, Some(&network), &dir).await;
                    return Err(RuntimeError::Shim(format!("unexpected first report {other:?}")));
                }
            },
            other => {
                let _ = child.kill().await;
                let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
                release(&self.inner, &id, &rootfs, Some(&network), &dir).await;
                return Err(RuntimeError::Shim(format!("no report from the container helper ({other:?}): {log}")));
            }
        };
        let running_at = Instant::now();

        let port = spec.startup_probe.as_ref().map_or(spec.port, |p| match &p.action {
            super::ProbeAction::Tcp { port } | super::ProbeAction::HttpGet { port, .. } => *port,
        });
        let (status, _) = watch::channel(InstanceStatus { state: InstanceState::Starting, reason: None, exit: None });
        let control = child.stdin.take();
        let instance = Arc::new(Instance {
            id: id.clone(),
            owner: spec.owner.clone(),
            addr: SocketAddr::new(network.ip.into(), if spec.port == 0 { port } else { spec.port }),
            created_at: SystemTime::now(),
            dir: dir.clone(),
            rootfs,
            network,
            memory_bytes: spec.resources.memory_bytes,
            grace_period: spec.grace_period,
            status,
            phases: Mutex::new(StartPhases { rootfs_us, network_us, create_us, exec_us, ..StartPhases::default() }),
            control: tokio::sync::Mutex::new(control),
            recent: Mutex::default(),
            failure: Mutex::new(None),
            exited: std::sync::atomic::AtomicBool::new(false),
        });
        self.inner.instances.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), instance.clone());
        let readers = vec![
            tokio::spawn(reap::read_output(self.clone(), instance.clone(), stdout, Stream::Stdout)),
            tokio::spawn(reap::read_output(self.clone(), instance.clone(), stderr, Stream::Stderr)),
        ];
        tokio::spawn(reap::reap(self.clone(), instance.clone(), events, child, readers));

        if let Some(probe) = &spec.startup_probe {
            if let Err(reason) = super::probe_until_ready(&instance, probe).await {
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
        if let Some(probe) = spec.liveness_probe.clone() {
            tokio::spawn(super::watch_liveness(self.clone(), instance.clone(), probe));
        }
        Ok(instance)
    }

    fn write_bundle(
        &self,
        spec: &InstanceSpec,
        id: &str,
        dir: &Path,
        rootfs: &Rootfs,
        network: &InstanceNetwork,
    ) -> Result<(), RuntimeError> {
        let image = &spec.image.config.config;
        let args =
            command_line(image, spec.command.as_deref(), spec.args.as_deref()).map_err(RuntimeError::InvalidSpec)?;
        let user = resolve_user(image.user.as_deref(), &rootfs.merged).map_err(RuntimeError::InvalidSpec)?;
        let env = instance_env(image.env.as_deref().unwrap_or_default(), &spec.env, &spec.owner, spec.port);
        let resolv_conf = dir.join("resolv.conf");
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        std::fs::write(&resolv_conf, host_resolv).map_err(RuntimeError::io("write", &resolv_conf))?;
        let hosts = dir.join("hosts");
        let hosts_text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{}\t{id}\n", network.ip);
        std::fs::write(&hosts, hosts_text).map_err(RuntimeError::io("write", &hosts))?;
        let cgroup = format!("/{}", crate::cgroup::name(id));
        let netns = network.netns_path();
        let config = runtime_spec(&SpecInput {
            args,
            env,
            cwd: image.working_dir.as_deref().unwrap_or("/"),
            user,
            rootfs: &rootfs.merged,
            hostname: id,
            netns: &netns,
            cgroup: &cgroup,
            resources: spec.resources,
            resolv_conf: &resolv_conf,
            hosts: &hosts,
        });
        let path = dir.join("bundle").join("config.json");
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
        std::fs::write(&path, bytes).map_err(RuntimeError::io("write", &path))
    }

    /// Starts `wharf shim` for instance `id` with the container's output pipes on fds 3 and 4.
    async fn launch_shim(&self, id: &str, dir: &Path) -> Result<reap::ShimParts, RuntimeError> {
        let (stdout_r, stdout_w) = std::io::pipe().map_err(RuntimeError::io("create pipe for", dir))?;
        let (stderr_r, stderr_w) = std::io::pipe().map_err(RuntimeError::io("create pipe for", dir))?;
        let log_path = dir.join("shim.log");
        let log = std::fs::File::create(&log_path).map_err(RuntimeError::io("create", &log_path))?;
        let mut cmd = std::process::Command::new(&self.inner.helper);
        cmd.arg("shim")
            .arg("--id")
            .arg(id)
            .arg("--bundle")
            .arg(dir.join("bundle"))
            .arg("--state-root")
            .arg(&self.inner.state_root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        cmd.fd_mappings(vec![
            FdMapping { parent_fd: stdout_w.into(), child_fd: 3 },
            FdMapping { parent_fd: stderr_w.into(), child_fd: 4 },
        ])
        .map_err(|e| RuntimeError::Shim(e.to_string()))?;
        let mut cmd = tokio::process::Command::from(cmd);
        let mut child = cmd.spawn().map_err(RuntimeError::io("start the container helper", &self.inner.helper))?;
        drop(cmd); // closes our copies of the pipes' write ends
        let events = child.stdout.take().ok_or_else(|| RuntimeError::Shim("no event pipe".to_owned()))?;
        Ok((child, BufReader::new(events).lines(), stdout_r, stderr_r))
    }
}
