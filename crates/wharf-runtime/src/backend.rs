//! The runtime as the control plane's instance backend: [`RuntimeBackend`] implements
//! `wharf_control::backend::InstanceBackend` (unpack the pinned image's layers, start a
//! sandboxed instance, stop, signal, log, stats), and an [`Instance`] is what the control
//! plane holds as its `InstanceHandle`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;
use wharf_control::backend::{
    BackendError, BoxFuture, InstanceBackend, InstanceHandle, InstanceState, InstanceStats, InstanceStatus, LaunchSpec,
    Owner, SecretSource, Severity, Signal,
};
use wharf_image::Resolver;

use crate::error::RuntimeError;
use crate::instance::{Instance, InstanceSpec, SecretFileContent};
use crate::runtime::Runtime;

/// Secret env vars (name, value) and secret files, read for one start.
type ReadSecrets = (Vec<(String, String)>, Vec<SecretFileContent>);

/// Runs the control plane's instances on this machine.
#[derive(Debug, Clone)]
pub struct RuntimeBackend {
    runtime: Runtime,
    resolver: Resolver,
    secrets: Option<Arc<dyn SecretSource>>,
}

impl RuntimeBackend {
    pub fn new(runtime: Runtime, resolver: Resolver) -> RuntimeBackend {
        RuntimeBackend { runtime, resolver, secrets: None }
    }

    /// Where instances' secret env vars and files are read from at each start.
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretSource>) -> RuntimeBackend {
        self.secrets = Some(secrets);
        self
    }

    /// Reads the template's secret versions, now (so `latest` means latest at this start).
    /// A version that cannot be read fails the start with a message naming the secret.
    fn read_secrets(&self, template: &wharf_control::backend::InstanceTemplate) -> Result<ReadSecrets, BackendError> {
        if template.secret_env.is_empty() && template.secret_files.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let source = self.secrets.as_ref().ok_or_else(|| {
            BackendError::InvalidSpec(
                "this backend has no secret store, so it cannot start instances that use secrets".to_owned(),
            )
        })?;
        let read = |secret: &str, version: &str, used_as: &str| {
            source.access(secret, version).map(zeroize::Zeroizing::new).map_err(|why| BackendError::NotReady {
                message: format!("secret {secret} version {version} ({used_as}) could not be read: {why}"),
            })
        };
        let mut env = Vec::new();
        for var in &template.secret_env {
            let data = read(&var.secret, &var.version, &format!("env {}", var.name))?;
            let value = std::str::from_utf8(&data).map_err(|_| BackendError::NotReady {
                message: format!(
                    "secret {} version {} (env {}) is not UTF-8 text, which an environment variable must be; mount it as a file instead",
                    var.secret, var.version, var.name
                ),
            })?;
            if value.contains('\0') {
                return Err(BackendError::NotReady {
                    message: format!(
                        "secret {} version {} (env {}) contains a NUL byte; mount it as a file instead",
                        var.secret, var.version, var.name
                    ),
                });
            }
            env.push((var.name.clone(), value.to_owned()));
        }
        let mut files = Vec::new();
        for file in &template.secret_files {
            let data = read(&file.secret, &file.version, &format!("file {}/{}", file.mount_path, file.path))?;
            files.push(SecretFileContent {
                mount_path: file.mount_path.clone(),
                path: file.path.clone(),
                mode: file.mode,
                data,
            });
        }
        Ok((env, files))
    }

    async fn start(&self, spec: LaunchSpec) -> Result<Arc<dyn InstanceHandle>, BackendError> {
        let layers = self.resolver.snapshots(&spec.image).await.map_err(|source| BackendError::Platform {
            what: format!("the image {} could not be unpacked", spec.image.digest),
            source: Box::new(source),
        })?;
        let (secret_env, secret_files) = self.read_secrets(&spec.template)?;
        let t = spec.template;
        let mut env = t.env;
        env.extend(secret_env);
        let instance_spec = InstanceSpec {
            owner: spec.owner,
            image: spec.image,
            layers,
            command: t.command,
            args: t.args,
            working_dir: t.working_dir,
            env,
            port: t.port,
            resources: t.resources,
            cpu: t.cpu,
            startup_probe: t.startup_probe,
            liveness_probe: t.liveness_probe,
            grace_period: t.grace_period,
            vpc_network: t.vpc.map(|v| v.network),
            secret_files,
            memory_volumes: t.memory_volumes,
        };
        match self.runtime.start_as(instance_spec, Some(spec.identity)).await {
            Ok(instance) => Ok(instance),
            Err(
                e @ (RuntimeError::InvalidSpec(_)
                | RuntimeError::InvalidEnv(_)
                | RuntimeError::UnknownVpcNetwork { .. }),
            ) => Err(BackendError::InvalidSpec(e.to_string())),
            Err(RuntimeError::StartupFailed { reason }) => Err(BackendError::NotReady { message: reason }),
            Err(RuntimeError::NoCapacity(e)) => Err(BackendError::NoCapacity { message: e.to_string() }),
            Err(e) => {
                Err(BackendError::Platform { what: "the instance could not start".to_owned(), source: Box::new(e) })
            }
        }
    }
}

impl InstanceBackend for RuntimeBackend {
    fn start(&self, spec: LaunchSpec) -> BoxFuture<'static, Result<Arc<dyn InstanceHandle>, BackendError>> {
        let this = self.clone();
        Box::pin(async move { this.start(spec).await })
    }

    fn stop(&self, instance: Arc<dyn InstanceHandle>, grace: Duration) -> BoxFuture<'static, InstanceStatus> {
        let runtime = self.runtime.clone();
        Box::pin(async move {
            match runtime.instance(instance.id()) {
                Some(running) => {
                    let span = tracing::info_span!("instance.stop", instance = %running.id);
                    runtime.stop_within(&running, grace).instrument(span).await
                }
                // Already released.
                None => instance.wait_terminal().await,
            }
        })
    }

    fn signal(&self, instance: &dyn InstanceHandle, signal: Signal) -> BoxFuture<'static, Result<(), BackendError>> {
        let (runtime, id) = (self.runtime.clone(), instance.id().to_owned());
        Box::pin(async move {
            let running = runtime.instance(&id).ok_or_else(|| BackendError::Gone(id.clone()))?;
            runtime.signal(&running, signal.number()).await.then_some(()).ok_or(BackendError::Gone(id))
        })
    }

    fn log(&self, instance: &dyn InstanceHandle, severity: Severity, message: String) -> BoxFuture<'static, ()> {
        let (runtime, owner, id) = (self.runtime.clone(), instance.owner().clone(), instance.id().to_owned());
        let project = self.runtime.instance(&id).and_then(|i| i.project.clone());
        Box::pin(
            async move { runtime.logs().platform(&owner, project.as_deref(), &id, severity.name(), &message).await },
        )
    }

    fn stats(&self, instance: &dyn InstanceHandle) -> Option<InstanceStats> {
        let running = self.runtime.instance(instance.id())?;
        let cpu = running.cpu_stats()?;
        Some(InstanceStats {
            cpu_usage_us: running.cpu_usage_us().unwrap_or(0),
            frozen: running.is_frozen(),
            cpu_periods: cpu.periods,
            cpu_throttled_periods: cpu.throttled_periods,
            cpu_throttled_us: cpu.throttled_us,
            memory_bytes: running.memory_working_set().unwrap_or(0),
        })
    }
}

impl InstanceHandle for Instance {
    fn id(&self) -> &str {
        &self.id
    }

    fn owner(&self) -> &Owner {
        &self.owner
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn status(&self) -> InstanceStatus {
        Instance::status(self)
    }

    fn state(&self) -> InstanceState {
        Instance::state(self)
    }

    fn has_exited(&self) -> bool {
        Instance::has_exited(self)
    }

    fn wait_terminal(&self) -> BoxFuture<'_, InstanceStatus> {
        Box::pin(Instance::wait_terminal(self))
    }

    fn request_started(&self) {
        Instance::request_started(self);
    }

    fn request_ended(&self) {
        Instance::request_ended(self);
    }
}
