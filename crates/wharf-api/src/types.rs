//! The resources, field for field as Cloud Run Admin API v2 has them (the subset Wharf acts
//! on). Types a client sends deny unknown fields: see [`crate::fields`] for how a request
//! body is read. Defaults are omitted on output, as proto3 JSON
//! does; int64 fields are strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn is_zero(n: &i64) -> bool {
    *n == 0
}
fn is_zero32(n: &i32) -> bool {
    *n == 0
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// int64 fields: written as JSON strings, read from strings or numbers.
mod int64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(i64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Service {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_time: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub creator: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_modifier: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_stage: Option<String>,
    pub template: RevisionTemplate,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
    #[serde(skip_serializing_if = "is_false")]
    pub invoker_iam_disabled: bool,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal_condition: Option<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub latest_ready_revision: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub latest_created_revision: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic_statuses: Vec<TrafficTargetStatus>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uri: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub reconciling: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub etag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RevisionTemplate {
    /// The full revision name to create (`{service}-{suffix}`); generated when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling: Option<RevisionScaling>,
    /// Request timeout, e.g. `"300s"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_environment: Option<String>,
    #[serde(skip_serializing_if = "is_zero32")]
    pub max_instance_request_concurrency: i32,
    #[serde(skip_serializing_if = "is_false")]
    pub session_affinity: bool,
    /// Private networks the revision's instances may reach (Cloud Run's VPC egress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_access: Option<VpcAccess>,
    /// Volumes the containers may mount: Secret Manager secrets and in-memory `emptyDir`s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

/// A named volume (`google.cloud.run.v2.Volume`). Wharf has the `secret` and `emptyDir`
/// kinds; `gcs`, `nfs` and `cloudSqlInstance` are refused by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
}

/// An in-memory scratch directory (`EmptyDirVolumeSource`): a tmpfs of its own per
/// instance, its pages charged to the instance's memory, gone with the instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EmptyDirVolumeSource {
    /// `MEMORY` (the only medium Cloud Run has; `MEDIUM_UNSPECIFIED` or empty mean it too).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub medium: String,
    /// A Kubernetes quantity (`64Mi`); empty: half the container's memory limit.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub size_limit: String,
}

/// `EmptyDirVolumeSource.medium`: memory.
pub const EMPTY_DIR_MEDIUM_MEMORY: &str = "MEMORY";

/// Files holding versions of one secret (`SecretVolumeSource`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SecretVolumeSource {
    /// `NAME` (in the service's project) or `projects/PROJECT/secrets/NAME`.
    pub secret: String,
    /// Which versions appear as which files; empty: the latest version, as a file named
    /// after the secret.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<VersionToPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct VersionToPath {
    /// Relative to the mount path.
    pub path: String,
    /// A number or `latest` (the default).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

/// Where a container sees a volume (`VolumeMount`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
}

/// `VpcAccess`: a Serverless VPC Access connector, or Direct VPC egress through network
/// interfaces (one of the two), and which traffic goes there. In Wharf both name a network
/// of the server's configuration (`--vpc-network`); see docs/security.md.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct VpcAccess {
    /// `projects/{project}/locations/{location}/connectors/{connector}`, or the bare name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub connector: String,
    /// `ALL_TRAFFIC` or `PRIVATE_RANGES_ONLY` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterface>,
}

/// One Direct VPC egress interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NetworkInterface {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub network: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subnetwork: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

pub const VPC_EGRESS_ALL_TRAFFIC: &str = "ALL_TRAFFIC";
pub const VPC_EGRESS_PRIVATE_RANGES_ONLY: &str = "PRIVATE_RANGES_ONLY";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RevisionScaling {
    #[serde(skip_serializing_if = "is_zero32")]
    pub min_instance_count: i32,
    #[serde(skip_serializing_if = "is_zero32")]
    pub max_instance_count: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Container {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `{"secretKeyRef": {"secret", "version"}}`: the variable's value is a secret version,
    /// read when each instance starts. Read strictly by the control plane's validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_source: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ResourceRequirements {
    /// `cpu` and `memory`, in Kubernetes quantity syntax.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: Labels,
    /// CPU only while requests are in flight (Cloud Run's default): absent means true for a
    /// service. `false` keeps CPU always allocated (`--no-cpu-throttling`). Jobs ignore it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_idle: Option<bool>,
    /// More CPU during start-up, until the instance is ready (`--cpu-boost`).
    #[serde(skip_serializing_if = "is_false")]
    pub startup_cpu_boost: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub container_port: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Probe {
    #[serde(skip_serializing_if = "is_zero32")]
    pub initial_delay_seconds: i32,
    #[serde(skip_serializing_if = "is_zero32")]
    pub timeout_seconds: i32,
    #[serde(skip_serializing_if = "is_zero32")]
    pub period_seconds: i32,
    #[serde(skip_serializing_if = "is_zero32")]
    pub failure_threshold: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// A call to the standard gRPC health service (`grpc.health.v1.Health/Check`) over HTTP/2
    /// cleartext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcAction>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpGetAction {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "is_zero32")]
    pub port: i32,
}

/// `probes.grpc`: the port (0: the container port) and the service name to ask the health
/// service about (empty: the server as a whole).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GrpcAction {
    #[serde(skip_serializing_if = "is_zero32")]
    pub port: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TcpSocketAction {
    #[serde(skip_serializing_if = "is_zero32")]
    pub port: i32,
}

pub const TRAFFIC_LATEST: &str = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST";
pub const TRAFFIC_REVISION: &str = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TrafficTarget {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(skip_serializing_if = "is_zero32")]
    pub percent: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TrafficTargetStatus {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(skip_serializing_if = "is_zero32")]
    pub percent: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uri: String,
}

pub const CONDITION_PENDING: &str = "CONDITION_PENDING";
pub const CONDITION_RECONCILING: &str = "CONDITION_RECONCILING";
pub const CONDITION_FAILED: &str = "CONDITION_FAILED";
pub const CONDITION_SUCCEEDED: &str = "CONDITION_SUCCEEDED";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_reason: Option<String>,
}

impl Condition {
    pub fn new(kind: &str, state: &str, message: impl Into<String>, time: &str) -> Condition {
        Condition {
            kind: kind.to_owned(),
            state: state.to_owned(),
            message: message.into(),
            last_transition_time: Some(time.to_owned()),
            severity: (state == CONDITION_FAILED).then(|| "ERROR".to_owned()),
            ..Condition::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Revision {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_stage: Option<String>,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling: Option<RevisionScaling>,
    #[serde(skip_serializing_if = "is_zero32")]
    pub max_instance_request_concurrency: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_environment: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub session_affinity: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub reconciling: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_uri: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub etag: String,
}

/// `google.rpc.Status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Status {
    pub code: i32,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<serde_json::Value>,
}

/// `google.longrunning.Operation`; `metadata` and `response` carry `@type`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "is_false")]
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<serde_json::Value>,
}

pub const SERVICE_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Service";
pub const REVISION_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Revision";

/// A resource as an `Any`: its JSON with `@type` first.
pub fn to_any(type_url: &str, resource: &impl Serialize) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("@type".to_owned(), serde_json::Value::from(type_url));
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(resource) {
        map.extend(fields);
    }
    serde_json::Value::Object(map)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListServicesResponse {
    pub services: Vec<Service>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

/// `google.longrunning.ListOperationsResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListOperationsResponse {
    pub operations: Vec<Operation>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListRevisionsResponse {
    pub revisions: Vec<Revision>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_cloud_run() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "template": {"containers": [{"image": "x", "env": [{"name": "A", "value": "1"}],
                         "resources": {"limits": {"memory": "256Mi"}}}],
                         "maxInstanceRequestConcurrency": 5, "timeout": "30s"},
            "generation": "3",
            "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]
        }))
        .unwrap();
        assert_eq!(service.generation, 3);
        assert_eq!(service.template.max_instance_request_concurrency, 5);
        let out = serde_json::to_value(&service).unwrap();
        assert_eq!(out["generation"], "3");
        assert_eq!(out["traffic"][0]["type"], TRAFFIC_LATEST);
        assert!(out.get("uri").is_none(), "defaults are omitted");
        let any = to_any(SERVICE_TYPE, &service);
        assert_eq!(any["@type"], SERVICE_TYPE);
    }
}
