//! Knative `serving.knative.dev/v1` Service YAML read back into a Cloud Run v2 [`Service`]
//! (what `wharf run services replace FILE` deploys), and `run.googleapis.com/v1` Job YAML into
//! a v2 [`Job`] (`wharf run jobs replace FILE`). Fields are read strictly (an unknown field
//! is an error naming it and its line), output-only parts (`status`, `uid`, timestamps,
//! `generation`) are ignored, and the annotations Cloud Run gives meaning to become fields;
//! a `run.googleapis.com/` or `autoscaling.knative.dev/` annotation Wharf does not implement
//! is refused by name rather than kept as an inert string.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::jobs::{ExecutionTemplate, Job, TaskTemplate};
use crate::types::{
    Container, ContainerPort, EnvVar, GrpcAction, HttpGetAction, Probe, ResourceRequirements, RevisionScaling,
    RevisionTemplate, Service, TRAFFIC_LATEST, TRAFFIC_REVISION, TcpSocketAction, TrafficTarget,
};

/// Why a Knative YAML document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KnativeError {
    /// Not YAML, or a field unknown or of the wrong type; serde's message names the field's
    /// path, the line and the column.
    #[error(transparent)]
    Yaml(#[from] serde_norway::Error),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> KnativeError {
    KnativeError::Invalid { field: field.into(), message: message.into() }
}

type Map = BTreeMap<String, String>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: ServiceSpec,
    /// Output only: what `describe` printed; ignored.
    #[serde(default, rename = "status")]
    _status: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Map,
    #[serde(default)]
    annotations: Map,
    // Output only, ignored.
    #[serde(default, rename = "uid")]
    _uid: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "generation")]
    _generation: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "selfLink")]
    _self_link: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceSpec {
    template: Template,
    #[serde(default)]
    traffic: Vec<Traffic>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Template {
    #[serde(default)]
    metadata: Metadata,
    spec: RevisionSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RevisionSpec {
    #[serde(default)]
    container_concurrency: Option<i32>,
    #[serde(default)]
    timeout_seconds: Option<u32>,
    #[serde(default)]
    service_account_name: Option<String>,
    containers: Vec<KContainer>,
    #[serde(default)]
    volumes: Vec<KVolume>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KContainer {
    #[serde(default)]
    name: String,
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<KEnv>,
    #[serde(default)]
    ports: Vec<KPort>,
    #[serde(default)]
    resources: Option<KResources>,
    #[serde(default)]
    working_dir: String,
    #[serde(default)]
    startup_probe: Option<KProbe>,
    #[serde(default)]
    liveness_probe: Option<KProbe>,
    #[serde(default)]
    volume_mounts: Vec<KVolumeMount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KEnv {
    name: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    value_from: Option<KEnvSource>,
}

/// `valueFrom`: Cloud Run's v1 API has only `secretKeyRef` (a `configMapKeyRef` is refused
/// by name as an unknown field).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KEnvSource {
    secret_key_ref: KSecretKeySelector,
}

/// A secret version: `name` is the secret (or an alias of `run.googleapis.com/secrets`),
/// `key` the version (a number or `latest`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KSecretKeySelector {
    name: String,
    #[serde(default)]
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KVolumeMount {
    name: String,
    mount_path: String,
    /// Secret volumes are read-only whatever this says; an in-memory one cannot be.
    #[serde(default)]
    read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KVolume {
    name: String,
    #[serde(default)]
    secret: Option<KSecretVolume>,
    #[serde(default)]
    empty_dir: Option<KEmptyDir>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KSecretVolume {
    secret_name: String,
    #[serde(default)]
    items: Vec<KKeyToPath>,
    #[serde(default)]
    default_mode: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KKeyToPath {
    /// The version.
    #[serde(default)]
    key: String,
    path: String,
    #[serde(default)]
    mode: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KEmptyDir {
    /// `Memory`, Cloud Run's only medium.
    #[serde(default)]
    medium: String,
    #[serde(default)]
    size_limit: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KPort {
    #[serde(default)]
    name: String,
    container_port: i32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KResources {
    #[serde(default)]
    limits: Map,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KProbe {
    #[serde(default)]
    initial_delay_seconds: i32,
    #[serde(default)]
    timeout_seconds: i32,
    #[serde(default)]
    period_seconds: i32,
    #[serde(default)]
    failure_threshold: i32,
    #[serde(default)]
    http_get: Option<KHttpGet>,
    #[serde(default)]
    tcp_socket: Option<KTcp>,
    #[serde(default)]
    grpc: Option<KGrpc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KGrpc {
    #[serde(default)]
    port: i32,
    #[serde(default)]
    service: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KHttpGet {
    #[serde(default)]
    path: String,
    #[serde(default)]
    port: i32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KTcp {
    #[serde(default)]
    port: i32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Traffic {
    #[serde(default)]
    percent: i32,
    #[serde(default)]
    latest_revision: bool,
    #[serde(default)]
    revision_name: String,
    #[serde(default)]
    tag: String,
    /// Output only (a tag's URL); ignored.
    #[serde(default, rename = "url")]
    _url: Option<serde::de::IgnoredAny>,
}

/// A Knative service document, read.
#[derive(Debug, Clone, PartialEq)]
pub struct KnativeService {
    pub name: String,
    /// `metadata.namespace`: the project, when the document says.
    pub namespace: Option<String>,
    /// The `cloud.googleapis.com/location` label: the region, when the document says.
    pub location: Option<String>,
    pub service: Service,
}

/// Annotations gcloud and Cloud Run write for information only; read and dropped.
const INFORMATIONAL: &[&str] = &[
    "run.googleapis.com/client-name",
    "run.googleapis.com/client-version",
    "run.googleapis.com/operation-id",
    "run.googleapis.com/ingress-status",
    "run.googleapis.com/urls",
    "serving.knative.dev/creator",
    "serving.knative.dev/lastModifier",
    "client.knative.dev/user-image",
];

/// The annotation prefixes whose keys carry configuration: unknown keys there are refused.
const MEANINGFUL_PREFIXES: &[&str] = &["run.googleapis.com/", "autoscaling.knative.dev/", "serving.knative.dev/"];

fn take_bool(annotations: &mut Map, key: &str, field: &str) -> Result<Option<bool>, KnativeError> {
    match annotations.remove(key).as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => {
            Err(invalid(format!("{field}.annotations.{key}"), format!("{other:?} is not \"true\" or \"false\"")))
        }
    }
}

/// Cloud Run's VPC annotations as `vpcAccess`.
fn take_vpc(annotations: &mut Map, field: &str) -> Result<Option<crate::VpcAccess>, KnativeError> {
    use super::{VPC_CONNECTOR, VPC_EGRESS, VPC_NETWORK_INTERFACES};
    let connector = annotations.remove(VPC_CONNECTOR).unwrap_or_default();
    let network_interfaces = match annotations.remove(VPC_NETWORK_INTERFACES) {
        None => Vec::new(),
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            invalid(
                format!("{field}.annotations.{VPC_NETWORK_INTERFACES}"),
                format!("is not a JSON list of {{\"network\": ..., \"subnetwork\": ..., \"tags\": [...]}}: {e}"),
            )
        })?,
    };
    let egress = match annotations.remove(VPC_EGRESS).as_deref() {
        None => None,
        Some("all-traffic") => Some(crate::VPC_EGRESS_ALL_TRAFFIC.to_owned()),
        Some("private-ranges-only") => Some(crate::VPC_EGRESS_PRIVATE_RANGES_ONLY.to_owned()),
        Some(other) => {
            return Err(invalid(
                format!("{field}.annotations.{VPC_EGRESS}"),
                format!("{other:?} is not all-traffic or private-ranges-only"),
            ));
        }
    };
    if connector.is_empty() && network_interfaces.is_empty() && egress.is_none() {
        return Ok(None);
    }
    Ok(Some(crate::VpcAccess { connector, egress, network_interfaces }))
}

fn take_count(annotations: &mut Map, key: &str, field: &str) -> Result<i32, KnativeError> {
    match annotations.remove(key) {
        None => Ok(0),
        Some(text) => text.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            invalid(format!("{field}.annotations.{key}"), format!("{text:?} is not a count of instances"))
        }),
    }
}

/// Drops informational annotations and refuses configuration Wharf does not implement.
fn check_remaining(annotations: &mut Map, field: &str) -> Result<(), KnativeError> {
    annotations.retain(|k, _| !INFORMATIONAL.contains(&k.as_str()));
    if let Some(key) = annotations.keys().find(|k| MEANINGFUL_PREFIXES.iter().any(|p| k.starts_with(p))) {
        return Err(invalid(
            format!("{field}.annotations.{key}"),
            "this Cloud Run setting is not supported by Wharf yet; remove the annotation",
        ));
    }
    Ok(())
}

/// The `run.googleapis.com/secrets` annotation: `ALIAS:projects/P/secrets/NAME,...`, the
/// names a document's `secretKeyRef.name` and `secretName` may use for secrets of another
/// project (Kubernetes names cannot hold a `/`).
fn take_secret_aliases(annotations: &mut Map, field: &str) -> Result<Map, KnativeError> {
    let Some(text) = annotations.remove(super::SECRETS_ANNOTATION) else { return Ok(Map::new()) };
    let mut aliases = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once(':') {
            Some((alias, secret))
                if !alias.is_empty() && secret.starts_with("projects/") && secret.contains("/secrets/") =>
            {
                aliases.insert(alias.to_owned(), secret.to_owned());
            }
            _ => {
                return Err(invalid(
                    format!("{field}.annotations.{}", super::SECRETS_ANNOTATION),
                    format!("{pair:?} is not ALIAS:projects/PROJECT/secrets/NAME"),
                ));
            }
        }
    }
    Ok(aliases)
}

/// The Cloud Run v1 volumes and mounts as v2's: `secret` (secretName, items of key = version
/// and path, modes) and in-memory `emptyDir`, names resolved through the aliases.
fn volumes(list: Vec<KVolume>, aliases: &Map, field: &str) -> Result<Vec<crate::types::Volume>, KnativeError> {
    use crate::types::{EMPTY_DIR_MEDIUM_MEMORY, EmptyDirVolumeSource, SecretVolumeSource, VersionToPath, Volume};
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let secret = v.secret.map(|s| SecretVolumeSource {
                secret: aliases.get(&s.secret_name).cloned().unwrap_or(s.secret_name),
                items: s
                    .items
                    .into_iter()
                    .map(|item| VersionToPath { path: item.path, version: item.key, mode: item.mode })
                    .collect(),
                default_mode: s.default_mode,
            });
            let empty_dir = match v.empty_dir {
                None => None,
                Some(e) if e.medium.is_empty() || e.medium == "Memory" => {
                    Some(EmptyDirVolumeSource { medium: EMPTY_DIR_MEDIUM_MEMORY.to_owned(), size_limit: e.size_limit })
                }
                Some(e) => {
                    return Err(invalid(
                        format!("{field}.volumes[{i}].emptyDir.medium"),
                        format!("{:?} is not a medium Cloud Run has: write Memory", e.medium),
                    ));
                }
            };
            Ok(Volume { name: v.name, secret, empty_dir })
        })
        .collect()
}

/// Refuses a `readOnly` mount of an in-memory volume (it would be useless and Wharf would
/// mount it writable).
fn check_mounts(containers: &[KContainer], volumes: &[KVolume], field: &str) -> Result<(), KnativeError> {
    for (i, c) in containers.iter().enumerate() {
        for (j, m) in c.volume_mounts.iter().enumerate() {
            if m.read_only && volumes.iter().any(|v| v.name == m.name && v.empty_dir.is_some()) {
                return Err(invalid(
                    format!("{field}.containers[{i}].volumeMounts[{j}].readOnly"),
                    "an in-memory (emptyDir) volume is mounted writable: remove readOnly",
                ));
            }
        }
    }
    Ok(())
}

fn probe(p: KProbe) -> Probe {
    Probe {
        initial_delay_seconds: p.initial_delay_seconds,
        timeout_seconds: p.timeout_seconds,
        period_seconds: p.period_seconds,
        failure_threshold: p.failure_threshold,
        http_get: p.http_get.map(|h| HttpGetAction { path: h.path, port: h.port }),
        tcp_socket: p.tcp_socket.map(|t| TcpSocketAction { port: t.port }),
        grpc: p.grpc.map(|g| GrpcAction { port: g.port, service: g.service }),
    }
}

fn container(c: KContainer, cpu_idle: bool, startup_cpu_boost: bool, aliases: &Map) -> Container {
    let resources = c.resources.map(|r| r.limits).unwrap_or_default();
    let env = c
        .env
        .into_iter()
        .map(|e| match e.value_from {
            Some(source) => {
                let reference = source.secret_key_ref;
                let secret = aliases.get(&reference.name).cloned().unwrap_or(reference.name);
                EnvVar {
                    name: e.name,
                    value: (!e.value.is_empty()).then_some(e.value),
                    value_source: Some(
                        serde_json::json!({"secretKeyRef": {"secret": secret, "version": reference.key}}),
                    ),
                }
            }
            None => EnvVar { name: e.name, value: Some(e.value), value_source: None },
        })
        .collect();
    Container {
        name: c.name,
        image: c.image,
        command: c.command,
        args: c.args,
        env,
        resources: (!resources.is_empty() || cpu_idle || startup_cpu_boost).then_some(ResourceRequirements {
            limits: resources,
            cpu_idle,
            startup_cpu_boost,
        }),
        ports: c.ports.into_iter().map(|p| ContainerPort { name: p.name, container_port: p.container_port }).collect(),
        working_dir: c.working_dir,
        liveness_probe: c.liveness_probe.map(probe),
        startup_probe: c.startup_probe.map(probe),
        volume_mounts: c
            .volume_mounts
            .into_iter()
            .map(|m| crate::types::VolumeMount { name: m.name, mount_path: m.mount_path })
            .collect(),
    }
}

/// Reads a Knative `serving.knative.dev/v1` Service document.
pub fn service(text: &str) -> Result<KnativeService, KnativeError> {
    let doc: Document = serde_norway::from_str(text)?;
    if doc.api_version != "serving.knative.dev/v1" || doc.kind != "Service" {
        return Err(invalid(
            "apiVersion/kind",
            format!(
                "{}/{} is not a Knative service: services replace takes apiVersion serving.knative.dev/v1, kind Service",
                doc.api_version, doc.kind
            ),
        ));
    }
    let Document { metadata, spec, .. } = doc;
    if metadata.name.is_empty() {
        return Err(invalid("metadata.name", "the service's name is required"));
    }
    let mut labels = metadata.labels;
    let location = labels.remove("cloud.googleapis.com/location");
    let mut annotations = metadata.annotations;
    let ingress = match annotations.remove("run.googleapis.com/ingress").as_deref() {
        None => None,
        Some("all") => Some("INGRESS_TRAFFIC_ALL".to_owned()),
        Some("internal") => Some("INGRESS_TRAFFIC_INTERNAL_ONLY".to_owned()),
        Some("internal-and-cloud-load-balancing") => Some("INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER".to_owned()),
        Some(other) => {
            return Err(invalid(
                "metadata.annotations.run.googleapis.com/ingress",
                format!("{other:?} is not all, internal or internal-and-cloud-load-balancing"),
            ));
        }
    };
    let launch_stage = annotations.remove("run.googleapis.com/launch-stage");
    check_remaining(&mut annotations, "metadata")?;

    let Template { metadata: template_metadata, spec: revision } = spec.template;
    let mut template_annotations = template_metadata.annotations;
    let field = "spec.template.metadata";
    let min = take_count(&mut template_annotations, "autoscaling.knative.dev/minScale", field)?;
    let max = take_count(&mut template_annotations, "autoscaling.knative.dev/maxScale", field)?;
    let execution_environment = match template_annotations.remove("run.googleapis.com/execution-environment").as_deref()
    {
        None => None,
        Some("gen1") => Some("EXECUTION_ENVIRONMENT_GEN1".to_owned()),
        Some("gen2") => Some("EXECUTION_ENVIRONMENT_GEN2".to_owned()),
        Some(other) => {
            return Err(invalid(
                format!("{field}.annotations.run.googleapis.com/execution-environment"),
                format!("{other:?} is not gen1 or gen2"),
            ));
        }
    };
    let cpu_idle = take_bool(&mut template_annotations, "run.googleapis.com/cpu-throttling", field)?.unwrap_or(false);
    let boost = take_bool(&mut template_annotations, "run.googleapis.com/startup-cpu-boost", field)?.unwrap_or(false);
    let session_affinity =
        take_bool(&mut template_annotations, "run.googleapis.com/sessionAffinity", field)?.unwrap_or(false);
    let vpc_access = take_vpc(&mut template_annotations, field)?;
    let aliases = take_secret_aliases(&mut template_annotations, field)?;
    check_remaining(&mut template_annotations, field)?;
    check_mounts(&revision.containers, &revision.volumes, "spec.template.spec")?;

    let timeout = match revision.timeout_seconds {
        None => None,
        Some(0) => return Err(invalid("spec.template.spec.timeoutSeconds", "0 is not a timeout: give 1 to 3600")),
        Some(n) => Some(format!("{n}s")),
    };
    let template = RevisionTemplate {
        revision: template_metadata.name,
        labels: template_metadata.labels,
        annotations: template_annotations,
        scaling: (min > 0 || max > 0).then_some(RevisionScaling { min_instance_count: min, max_instance_count: max }),
        timeout,
        service_account: revision.service_account_name.unwrap_or_default(),
        containers: revision.containers.into_iter().map(|c| container(c, cpu_idle, boost, &aliases)).collect(),
        execution_environment,
        max_instance_request_concurrency: revision.container_concurrency.unwrap_or(0),
        session_affinity,
        vpc_access,
        volumes: volumes(revision.volumes, &aliases, "spec.template.spec")?,
    };
    let traffic = spec
        .traffic
        .into_iter()
        .map(|t| TrafficTarget {
            kind: Some(if t.latest_revision { TRAFFIC_LATEST } else { TRAFFIC_REVISION }.to_owned()),
            revision: t.revision_name,
            percent: t.percent,
            tag: t.tag,
        })
        .collect();
    let service = Service { labels, annotations, ingress, launch_stage, template, traffic, ..Service::default() };
    Ok(KnativeService { name: metadata.name, namespace: metadata.namespace, location, service })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JobDocument {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: JobSpec,
    #[serde(default, rename = "status")]
    _status: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JobSpec {
    template: ExecutionTemplateDoc,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExecutionTemplateDoc {
    #[serde(default)]
    metadata: Metadata,
    spec: ExecutionSpecDoc,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExecutionSpecDoc {
    #[serde(default)]
    parallelism: i32,
    #[serde(default)]
    task_count: i32,
    template: TaskTemplateDoc,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskTemplateDoc {
    spec: TaskSpecDoc,
}

/// A count written as a number or, as gcloud writes int64 fields, a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Count {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskSpecDoc {
    containers: Vec<KContainer>,
    #[serde(default)]
    max_retries: Option<i32>,
    #[serde(default)]
    timeout_seconds: Option<Count>,
    #[serde(default)]
    service_account_name: Option<String>,
    #[serde(default)]
    volumes: Vec<KVolume>,
}

/// A `run.googleapis.com/v1` Job document, read.
#[derive(Debug, Clone, PartialEq)]
pub struct KnativeJob {
    pub name: String,
    pub namespace: Option<String>,
    pub location: Option<String>,
    pub job: Job,
}

/// Reads a `run.googleapis.com/v1` Job document.
pub fn job(text: &str) -> Result<KnativeJob, KnativeError> {
    let doc: JobDocument = serde_norway::from_str(text)?;
    if doc.api_version != "run.googleapis.com/v1" || doc.kind != "Job" {
        return Err(invalid(
            "apiVersion/kind",
            format!(
                "{}/{} is not a Cloud Run job: jobs replace takes apiVersion run.googleapis.com/v1, kind Job",
                doc.api_version, doc.kind
            ),
        ));
    }
    let JobDocument { metadata, spec, .. } = doc;
    if metadata.name.is_empty() {
        return Err(invalid("metadata.name", "the job's name is required"));
    }
    let mut labels = metadata.labels;
    let location = labels.remove("cloud.googleapis.com/location");
    let mut annotations = metadata.annotations;
    annotations.remove("run.googleapis.com/launch-stage");
    check_remaining(&mut annotations, "metadata")?;
    if !annotations.is_empty() {
        return Err(invalid("metadata.annotations", "annotations on jobs are not supported by Wharf yet; remove them"));
    }
    let ExecutionTemplateDoc { metadata: execution_metadata, spec: execution } = spec.template;
    let mut execution_annotations = execution_metadata.annotations;
    let vpc_access = take_vpc(&mut execution_annotations, "spec.template.metadata")?;
    let aliases = take_secret_aliases(&mut execution_annotations, "spec.template.metadata")?;
    check_remaining(&mut execution_annotations, "spec.template.metadata")?;
    if !execution_annotations.is_empty() {
        return Err(invalid(
            "spec.template.metadata.annotations",
            "annotations on executions are not supported by Wharf yet; remove them",
        ));
    }
    let task = execution.template.spec;
    let task_field = "spec.template.spec.template.spec";
    check_mounts(&task.containers, &task.volumes, task_field)?;
    let timeout = match task.timeout_seconds {
        None => None,
        Some(Count::Number(n)) if n > 0 => Some(format!("{n}s")),
        Some(Count::Text(t)) if t.parse::<u64>().is_ok_and(|n| n > 0) => Some(format!("{t}s")),
        Some(other) => {
            return Err(invalid(
                "spec.template.spec.template.spec.timeoutSeconds",
                format!("{other:?} is not a number of seconds above 0"),
            ));
        }
    };
    let job = Job {
        labels,
        template: ExecutionTemplate {
            labels: execution_metadata.labels,
            parallelism: execution.parallelism,
            task_count: execution.task_count,
            template: TaskTemplate {
                containers: task.containers.into_iter().map(|c| container(c, false, false, &aliases)).collect(),
                timeout,
                max_retries: task.max_retries,
                service_account: task.service_account_name.unwrap_or_default(),
                vpc_access,
                volumes: volumes(task.volumes, &aliases, task_field)?,
            },
        },
        ..Job::default()
    };
    Ok(KnativeJob { name: metadata.name, namespace: metadata.namespace, location, job })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: demo
  labels:
    cloud.googleapis.com/location: us-central1
    team: web
  annotations:
    run.googleapis.com/ingress: all
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/minScale: '1'
        autoscaling.knative.dev/maxScale: '5'
        run.googleapis.com/execution-environment: gen2
        run.googleapis.com/cpu-throttling: 'true'
        run.googleapis.com/startup-cpu-boost: 'true'
    spec:
      containerConcurrency: 10
      timeoutSeconds: 60
      containers:
      - image: registry.local/hello:v1
        env:
        - name: GREETING
          value: hi
        ports:
        - name: http1
          containerPort: 9000
        resources:
          limits:
            memory: 256Mi
        startupProbe:
          tcpSocket:
            port: 9000
  traffic:
  - percent: 100
    latestRevision: true
  - percent: 0
    revisionName: hello-00001-abc
    tag: old
status:
  url: http://ignored
";

    #[test]
    fn reads_knative_yaml_into_a_cloud_run_service() {
        let k = service(YAML).unwrap();
        assert_eq!(
            (k.name.as_str(), k.namespace.as_deref(), k.location.as_deref()),
            ("hello", Some("demo"), Some("us-central1"))
        );
        let s = k.service;
        assert_eq!(s.labels.get("team").map(String::as_str), Some("web"));
        assert!(!s.labels.contains_key("cloud.googleapis.com/location"));
        assert_eq!(s.ingress.as_deref(), Some("INGRESS_TRAFFIC_ALL"));
        let t = &s.template;
        assert_eq!(t.scaling, Some(RevisionScaling { min_instance_count: 1, max_instance_count: 5 }));
        assert_eq!((t.max_instance_request_concurrency, t.timeout.as_deref()), (10, Some("60s")));
        assert_eq!(t.execution_environment.as_deref(), Some("EXECUTION_ENVIRONMENT_GEN2"));
        assert!(t.annotations.is_empty(), "{:?}", t.annotations);
        let c = &t.containers[0];
        assert_eq!(c.ports[0].container_port, 9000);
        let r = c.resources.as_ref().unwrap();
        assert!(r.cpu_idle && r.startup_cpu_boost);
        assert_eq!(r.limits.get("memory").map(String::as_str), Some("256Mi"));
        assert_eq!(c.startup_probe.as_ref().unwrap().tcp_socket, Some(TcpSocketAction { port: 9000 }));
        assert_eq!(s.traffic.len(), 2);
        assert_eq!(s.traffic[1].tag, "old");
    }

    #[test]
    fn a_job_export_reads_back_as_the_same_job() {
        let yaml = "apiVersion: run.googleapis.com/v1\nkind: Job\nmetadata:\n  name: crunch\n  labels:\n    cloud.googleapis.com/location: us-central1\nspec:\n  template:\n    spec:\n      parallelism: 2\n      taskCount: 5\n      template:\n        spec:\n          maxRetries: 1\n          timeoutSeconds: '120'\n          containers:\n          - image: r/worker:v1\n            args: [job]\n";
        let first = job(yaml).unwrap();
        assert_eq!((first.name.as_str(), first.location.as_deref()), ("crunch", Some("us-central1")));
        let t = &first.job.template;
        assert_eq!((t.parallelism, t.task_count, t.template.max_retries), (2, 5, Some(1)));
        assert_eq!(t.template.timeout.as_deref(), Some("120s"));
        let mut named = first.job.clone();
        named.name = "projects/p/locations/us-central1/jobs/crunch".into();
        let text = serde_norway::to_string(&super::super::job_export(&named)).unwrap();
        let second = job(&text).unwrap();
        assert_eq!(second.job.template, first.job.template);
        let bad = yaml.replace("taskCount", "taskCont");
        let message = job(&bad).unwrap_err().to_string();
        assert!(message.contains("taskCont") && message.contains("line"), "{message}");
        assert!(
            job(&yaml.replace("kind: Job", "kind: Service")).unwrap_err().to_string().contains("not a Cloud Run job")
        );
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let bad = YAML.replace("        env:\n", "        envv:\n");
        let message = service(&bad).unwrap_err().to_string();
        assert!(message.contains("envv") && message.contains("line 25"), "{message}");
        let bad = YAML.replace("run.googleapis.com/ingress: all", "run.googleapis.com/vpc-access-connector: c");
        let message = service(&bad).unwrap_err().to_string();
        assert!(
            message.contains("run.googleapis.com/vpc-access-connector") && message.contains("not supported"),
            "{message}"
        );
        let bad = YAML.replace("'5'", "'many'");
        assert!(service(&bad).unwrap_err().to_string().contains("maxScale"));
        let bad = YAML.replace("kind: Service", "kind: Job");
        assert!(service(&bad).unwrap_err().to_string().contains("not a Knative service"));
    }
}
