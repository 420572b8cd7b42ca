//! The validated instance template: everything a backend needs to run one instance of a
//! revision or a job task, checked once when the revision or execution is created and stored
//! with it, then used as is by every start. Also who an instance runs for ([`Owner`]), the
//! probes, and the names of the environment the platform reserves.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Resources;

/// The grace period between SIGTERM and SIGKILL, as Cloud Run gives.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// How to run one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTemplate {
    /// Replaces the image's Entrypoint.
    pub command: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub args: Option<Vec<String>>,
    /// Replaces the image's WorkingDir (an absolute path).
    #[serde(default)]
    pub working_dir: Option<String>,
    pub env: Vec<(String, String)>,
    /// The port the container listens on (`PORT`).
    pub port: u16,
    pub resources: Resources,
    /// `None` for job tasks, which need not listen.
    pub startup_probe: Option<Probe>,
    pub liveness_probe: Option<Probe>,
    /// SIGTERM to SIGKILL.
    pub grace_period: Duration,
    /// The private network (of the server's configuration) the instance may reach, from
    /// the template's `vpcAccess`; `None`: public egress only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<VpcEgress>,
    /// Variables whose values are secret versions, read when each instance starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
    /// Files holding secret versions, on read-only in-memory mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<SecretFile>,
    /// When the instance gets CPU. Absent in templates stored before it existed: always on.
    #[serde(default)]
    pub cpu: CpuAllocation,
    /// In-memory `emptyDir` volumes: a tmpfs each, charged to the instance's memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_volumes: Vec<MemoryVolume>,
}

/// When an instance gets CPU, as Cloud Run allocates it (`resources.cpuIdle`,
/// `resources.startupCpuBoost`). The default, always on and no boost, is a job task's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuAllocation {
    /// CPU only while requests are in flight (and during start-up and shutdown): between
    /// requests the instance is frozen. A service's default (`cpuIdle: true`); never a job's.
    #[serde(default)]
    pub throttled: bool,
    /// More CPU than the limit until the instance is ready (`startupCpuBoost`).
    #[serde(default)]
    pub startup_boost: bool,
}

/// An in-memory volume (`emptyDir`) where the container mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryVolume {
    /// The directory in the container (absolute).
    pub mount_path: String,
    /// The tmpfs's `size=`: writes past it fail with ENOSPC. At most the memory limit.
    pub size_bytes: u64,
}

/// A template's VPC egress: the network it names and which traffic goes there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VpcEgress {
    pub network: String,
    /// `ALL_TRAFFIC` rather than `PRIVATE_RANGES_ONLY`. Enforced alike on Wharf (public
    /// egress is open either way): kept to round-trip and for a later real VPC.
    pub all_traffic: bool,
}

/// An environment variable whose value is a secret version (`valueSource.secretKeyRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretEnv {
    pub name: String,
    /// `projects/PROJECT/secrets/NAME`.
    pub secret: String,
    /// A number or `latest` (resolved at each start).
    pub version: String,
}

/// A file holding a secret version (a `secret` volume's item, where a `volumeMount` puts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretFile {
    /// The directory the volume is mounted at in the container (absolute).
    pub mount_path: String,
    /// The file's path below `mount_path` (relative, no `..`).
    pub path: String,
    pub secret: String,
    pub version: String,
    /// Permission bits of the file.
    pub mode: u32,
}

/// Who an instance runs for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Owner {
    Service { service: String, revision: String, configuration: String },
    Task { job: String, execution: String, index: u32, attempt: u32, count: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ProbeAction {
    Tcp {
        port: u16,
    },
    HttpGet {
        port: u16,
        path: String,
    },
    /// The standard gRPC health check (`grpc.health.v1.Health/Check`) over HTTP/2 cleartext;
    /// `service` empty asks about the server as a whole.
    Grpc {
        port: u16,
        service: String,
    },
}

/// A probe with Cloud Run's timing fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

impl Probe {
    /// Cloud Run's default startup probe: TCP on the container port, a 240 s budget.
    pub fn default_startup(port: u16) -> Probe {
        Probe {
            action: ProbeAction::Tcp { port },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(240),
            timeout: Duration::from_secs(240),
            failure_threshold: 1,
        }
    }

    /// How long a startup probe may take in all before the instance fails.
    pub fn budget(&self) -> Duration {
        self.initial_delay + self.period * self.failure_threshold.max(1)
    }

    pub fn describe(&self) -> String {
        match &self.action {
            ProbeAction::Tcp { port } => format!("TCP probe on port {port}"),
            ProbeAction::HttpGet { port, path } => format!("HTTP probe GET {path} on port {port}"),
            ProbeAction::Grpc { port, service } if service.is_empty() => format!("gRPC health probe on port {port}"),
            ProbeAction::Grpc { port, service } => format!("gRPC health probe of {service:?} on port {port}"),
        }
    }
}

/// Names the platform sets; a revision's env may not.
pub const RESERVED_ENV: &[&str] = &[
    "PORT",
    "K_SERVICE",
    "K_REVISION",
    "K_CONFIGURATION",
    "CLOUD_RUN_JOB",
    "CLOUD_RUN_EXECUTION",
    "CLOUD_RUN_TASK_INDEX",
    "CLOUD_RUN_TASK_ATTEMPT",
    "CLOUD_RUN_TASK_COUNT",
];

/// Why a user's environment variable name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable {name} is reserved: the platform sets it (reserved names: {})", RESERVED_ENV.join(", "))]
    Reserved { name: String },
    #[error("environment variable name {name:?} is invalid: it may not be empty or contain '=' or NUL")]
    InvalidName { name: String },
}

/// Checks user-supplied env names: valid names, none reserved.
pub fn validate_user_env<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), EnvError> {
    for name in names {
        if RESERVED_ENV.contains(&name) {
            return Err(EnvError::Reserved { name: name.to_owned() });
        }
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(EnvError::InvalidName { name: name.to_owned() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_malformed_names_are_refused() {
        assert_eq!(validate_user_env(["A", "B_2"]), Ok(()));
        assert_eq!(validate_user_env(["PORT"]), Err(EnvError::Reserved { name: "PORT".into() }));
        assert_eq!(validate_user_env(["A=B"]), Err(EnvError::InvalidName { name: "A=B".into() }));
        assert!(EnvError::Reserved { name: "PORT".into() }.to_string().contains("K_SERVICE"));
    }

    #[test]
    fn a_template_survives_storage() {
        let t = InstanceTemplate {
            command: Some(vec!["/app".into()]),
            args: None,
            working_dir: Some("/srv".into()),
            env: vec![("A".into(), "1".into())],
            port: 8080,
            resources: Resources::default(),
            startup_probe: Some(Probe::default_startup(8080)),
            liveness_probe: None,
            grace_period: GRACE_PERIOD,
            vpc: Some(VpcEgress { network: "office".into(), all_traffic: false }),
            secret_env: vec![SecretEnv {
                name: "DB".into(),
                secret: "projects/p/secrets/db".into(),
                version: "latest".into(),
            }],
            secret_files: vec![SecretFile {
                mount_path: "/secrets".into(),
                path: "key".into(),
                secret: "projects/p/secrets/key".into(),
                version: "2".into(),
                mode: 0o400,
            }],
            cpu: CpuAllocation { throttled: true, startup_boost: true },
            memory_volumes: vec![MemoryVolume { mount_path: "/cache".into(), size_bytes: 64 << 20 }],
        };
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<InstanceTemplate>(&text).unwrap(), t);
        // A template stored before CPU allocation existed keeps CPU always on.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("cpu");
        assert_eq!(serde_json::from_value::<InstanceTemplate>(old).unwrap().cpu, CpuAllocation::default());
    }
}
