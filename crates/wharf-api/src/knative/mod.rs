//! The Knative `serving.knative.dev/v1` view of a service and a revision: what gcloud prints
//! (its `run` commands speak Cloud Run's v1 API), so `--format 'value(status.url)'` and
//! `--format 'yaml(status.traffic)'` from existing scripts keep working. [`export`] is that
//! view without status and server-set metadata, and [`input`] reads it back (`services
//! replace`), so an exported service replaced unchanged is the same service.

pub mod input;

use serde_json::{Map, Value, json};

use crate::types::{CONDITION_FAILED, CONDITION_SUCCEEDED, Condition, Container, Revision, Service, TRAFFIC_LATEST};

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// `projects/{p}/locations/{l}/...`: the project and location.
fn project_location(name: &str) -> (String, String) {
    let parts: Vec<&str> = name.split('/').collect();
    let get = |key: &str| parts.iter().position(|p| *p == key).and_then(|i| parts.get(i + 1)).map(|s| (*s).to_owned());
    (get("projects").unwrap_or_default(), get("locations").unwrap_or_default())
}

fn condition(c: &Condition) -> Value {
    let status = match c.state.as_str() {
        CONDITION_SUCCEEDED => "True",
        CONDITION_FAILED => "False",
        _ => "Unknown",
    };
    let mut v = json!({"type": c.kind, "status": status});
    if !c.message.is_empty() {
        v["message"] = json!(c.message);
    }
    if let Some(t) = &c.last_transition_time {
        v["lastTransitionTime"] = json!(t);
    }
    v
}

/// A container in the v1 view. A serving container shows Cloud Run's defaults (port 8080,
/// 1 CPU, 512Mi) as gcloud does; a job's shows what was written, so its export reads back the
/// same.
fn container(c: &Container, serving: bool, secrets: &mut SecretNames) -> Value {
    let mut v = json!({"image": c.image});
    if !c.command.is_empty() {
        v["command"] = json!(c.command);
    }
    if !c.args.is_empty() {
        v["args"] = json!(c.args);
    }
    if !c.env.is_empty() {
        v["env"] = Value::Array(
            c.env
                .iter()
                .map(|e| match e.value_source.as_ref().and_then(|s| s.get("secretKeyRef")) {
                    Some(reference) => {
                        let secret = reference["secret"].as_str().unwrap_or_default();
                        let version = reference["version"].as_str().filter(|v| !v.is_empty()).unwrap_or("latest");
                        json!({"name": e.name, "valueFrom": {"secretKeyRef": {"name": secrets.name(secret), "key": version}}})
                    }
                    None => json!({"name": e.name, "value": e.value.clone().unwrap_or_default()}),
                })
                .collect(),
        );
    }
    if !c.volume_mounts.is_empty() {
        v["volumeMounts"] =
            Value::Array(c.volume_mounts.iter().map(|m| json!({"name": m.name, "mountPath": m.mount_path})).collect());
    }
    if serving || !c.ports.is_empty() {
        let (port, protocol) = c.ports.first().map_or((8080, ""), |p| (p.container_port, p.name.as_str()));
        v["ports"] = json!([{"name": if protocol.is_empty() { "http1" } else { protocol }, "containerPort": port}]);
    }
    if !c.working_dir.is_empty() {
        v["workingDir"] = json!(c.working_dir);
    }
    for (key, p) in [("startupProbe", &c.startup_probe), ("livenessProbe", &c.liveness_probe)] {
        if let Some(p) = p {
            v[key] = probe(p);
        }
    }
    let mut limits = Map::new();
    if serving {
        limits.insert("cpu".into(), json!("1000m"));
        limits.insert("memory".into(), json!("512Mi"));
    }
    if let Some(r) = &c.resources {
        for (k, val) in &r.limits {
            limits.insert(k.clone(), json!(val));
        }
    }
    if !limits.is_empty() {
        v["resources"] = json!({"limits": limits});
    }
    v
}

/// The Knative spelling of secret references: a secret of the resource's own project by its
/// short name, any other through an alias of the `run.googleapis.com/secrets` annotation.
struct SecretNames {
    project: String,
    aliases: Vec<(String, String)>,
}

impl SecretNames {
    fn new(project: &str) -> SecretNames {
        SecretNames { project: project.to_owned(), aliases: Vec::new() }
    }

    fn name(&mut self, secret: &str) -> String {
        let Some((project, short)) = secret.strip_prefix("projects/").and_then(|rest| rest.split_once("/secrets/"))
        else {
            return secret.to_owned();
        };
        if project == self.project {
            return short.to_owned();
        }
        if let Some((alias, _)) = self.aliases.iter().find(|(_, full)| full == secret) {
            return alias.clone();
        }
        let alias = if self.aliases.iter().any(|(a, _)| a == short) {
            format!("{short}-{}", self.aliases.len())
        } else {
            short.to_owned()
        };
        self.aliases.push((alias.clone(), secret.to_owned()));
        alias
    }

    /// The annotation's value, if any secret needed an alias.
    fn annotation(&self) -> Option<String> {
        (!self.aliases.is_empty())
            .then(|| self.aliases.iter().map(|(a, s)| format!("{a}:{s}")).collect::<Vec<_>>().join(","))
    }
}

/// The v2 volumes in Cloud Run's v1 shape.
fn volumes(list: &[crate::types::Volume], secrets: &mut SecretNames) -> Value {
    Value::Array(
        list.iter()
            .map(|v| {
                let mut out = json!({"name": v.name});
                if let Some(source) = &v.secret {
                    let mut secret = json!({"secretName": secrets.name(&source.secret)});
                    if !source.items.is_empty() {
                        secret["items"] = Value::Array(
                            source
                                .items
                                .iter()
                                .map(|item| {
                                    let key = if item.version.is_empty() { "latest" } else { &item.version };
                                    let mut i = json!({"key": key, "path": item.path});
                                    if let Some(mode) = item.mode {
                                        i["mode"] = json!(mode);
                                    }
                                    i
                                })
                                .collect(),
                        );
                    }
                    if let Some(mode) = source.default_mode {
                        secret["defaultMode"] = json!(mode);
                    }
                    out["secret"] = secret;
                }
                if let Some(empty_dir) = &v.empty_dir {
                    out["emptyDir"] = json!({"medium": "Memory"});
                    if !empty_dir.size_limit.is_empty() {
                        out["emptyDir"]["sizeLimit"] = json!(empty_dir.size_limit);
                    }
                }
                out
            })
            .collect(),
    )
}

/// The annotation that maps aliases to other projects' secrets.
pub(crate) const SECRETS_ANNOTATION: &str = "run.googleapis.com/secrets";

fn probe(p: &crate::types::Probe) -> Value {
    let mut v = json!({});
    for (key, n) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("failureThreshold", p.failure_threshold),
    ] {
        if n != 0 {
            v[key] = json!(n);
        }
    }
    if let Some(h) = &p.http_get {
        v["httpGet"] = json!({"path": if h.path.is_empty() { "/" } else { &h.path }});
        if h.port != 0 {
            v["httpGet"]["port"] = json!(h.port);
        }
    }
    if let Some(t) = &p.tcp_socket {
        v["tcpSocket"] = if t.port != 0 { json!({"port": t.port}) } else { json!({}) };
    }
    if let Some(g) = &p.grpc {
        v["grpc"] = json!({});
        if g.port != 0 {
            v["grpc"]["port"] = json!(g.port);
        }
        if !g.service.is_empty() {
            v["grpc"]["service"] = json!(g.service);
        }
    }
    v
}

/// Whole seconds of a `"300s"` duration (fractions dropped), 300 when absent.
fn seconds(duration: Option<&str>) -> u64 {
    duration
        .and_then(|d| d.strip_suffix('s'))
        .and_then(|d| d.split('.').next())
        .and_then(|d| d.parse::<u64>().ok())
        .unwrap_or(300)
}

pub fn service(s: &Service) -> Value {
    let (project, location) = project_location(&s.name);
    let name = last_segment(&s.name);
    let mut template_annotations = s.template.annotations.clone();
    if let Some(scaling) = &s.template.scaling {
        if scaling.min_instance_count > 0 {
            template_annotations
                .insert("autoscaling.knative.dev/minScale".into(), scaling.min_instance_count.to_string());
        }
        if scaling.max_instance_count > 0 {
            template_annotations
                .insert("autoscaling.knative.dev/maxScale".into(), scaling.max_instance_count.to_string());
        }
    }
    let resources = s.template.containers.first().and_then(|c| c.resources.clone()).unwrap_or_default();
    for (key, on) in [
        ("run.googleapis.com/cpu-throttling", resources.cpu_idle),
        ("run.googleapis.com/startup-cpu-boost", resources.startup_cpu_boost),
        ("run.googleapis.com/sessionAffinity", s.template.session_affinity),
    ] {
        if on {
            template_annotations.insert(key.into(), "true".into());
        }
    }
    let environment = match s.template.execution_environment.as_deref() {
        Some("EXECUTION_ENVIRONMENT_GEN1") => Some("gen1"),
        Some("EXECUTION_ENVIRONMENT_GEN2") => Some("gen2"),
        _ => None,
    };
    if let Some(e) = environment {
        template_annotations.insert("run.googleapis.com/execution-environment".into(), e.into());
    }
    template_annotations.extend(vpc_annotations(s.template.vpc_access.as_ref()));
    let mut annotations = s.annotations.clone();
    let ingress = match s.ingress.as_deref() {
        Some("INGRESS_TRAFFIC_ALL") => Some("all"),
        Some("INGRESS_TRAFFIC_INTERNAL_ONLY") => Some("internal"),
        Some("INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER") => Some("internal-and-cloud-load-balancing"),
        _ => None,
    };
    if let Some(i) = ingress {
        annotations.insert("run.googleapis.com/ingress".into(), i.into());
    }
    if let Some(stage) = &s.launch_stage {
        annotations.insert("run.googleapis.com/launch-stage".into(), stage.clone());
    }
    let mut labels = s.labels.clone();
    labels.insert("cloud.googleapis.com/location".into(), location.clone());
    let traffic = |with_status: bool| -> Vec<Value> {
        let source: Vec<(Option<String>, String, i32, String, String)> = if with_status {
            s.traffic_statuses
                .iter()
                .map(|t| (t.kind.clone(), t.revision.clone(), t.percent, t.tag.clone(), t.uri.clone()))
                .collect()
        } else {
            s.traffic
                .iter()
                .map(|t| (t.kind.clone(), t.revision.clone(), t.percent, t.tag.clone(), String::new()))
                .collect()
        };
        source
            .into_iter()
            .map(|(kind, revision, percent, tag, url)| {
                let latest = kind.as_deref() == Some(TRAFFIC_LATEST);
                let mut v = json!({"percent": percent});
                if latest {
                    v["latestRevision"] = json!(true);
                }
                if !revision.is_empty() {
                    v["revisionName"] = json!(revision);
                }
                if !tag.is_empty() {
                    v["tag"] = json!(tag);
                }
                if !url.is_empty() {
                    v["url"] = json!(url);
                }
                v
            })
            .collect()
    };
    let mut secrets = SecretNames::new(&project);
    let mut template_spec = json!({
        "containerConcurrency": if s.template.max_instance_request_concurrency > 0 { s.template.max_instance_request_concurrency } else { 80 },
        "timeoutSeconds": seconds(s.template.timeout.as_deref()),
        "containers": s.template.containers.iter().map(|c| container(c, true, &mut secrets)).collect::<Vec<_>>(),
    });
    if !s.template.volumes.is_empty() {
        template_spec["volumes"] = volumes(&s.template.volumes, &mut secrets);
    }
    if let Some(aliases) = secrets.annotation() {
        template_annotations.insert(SECRETS_ANNOTATION.into(), aliases);
    }
    if !s.template.service_account.is_empty() {
        template_spec["serviceAccountName"] = json!(s.template.service_account);
    }
    let mut template_metadata = json!({"annotations": template_annotations});
    if !s.template.revision.is_empty() {
        template_metadata["name"] = json!(s.template.revision);
    }
    let mut conditions: Vec<Value> = s.terminal_condition.iter().map(condition).collect();
    conditions.extend(s.conditions.iter().map(condition));
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": project,
            "uid": s.uid,
            "generation": s.generation,
            "creationTimestamp": s.create_time,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "template": {"metadata": template_metadata, "spec": template_spec},
            "traffic": traffic(false),
        },
        "status": {
            "observedGeneration": s.observed_generation,
            "conditions": conditions,
            "latestReadyRevisionName": last_segment(&s.latest_ready_revision),
            "latestCreatedRevisionName": last_segment(&s.latest_created_revision),
            "url": s.uri,
            "address": {"url": s.uri},
            "traffic": traffic(true),
        },
    })
}

/// `describe --format export`: the service as a document to keep and `replace` later, without
/// status or what the server sets (uid, generation, timestamps).
pub fn export(s: &Service) -> Value {
    let mut v = service(s);
    if let Value::Object(map) = &mut v {
        map.remove("status");
    }
    if let Value::Object(metadata) = &mut v["metadata"] {
        for key in ["uid", "generation", "creationTimestamp"] {
            metadata.remove(key);
        }
    }
    v
}

/// A job as `run.googleapis.com/v1` Job YAML (what `gcloud run jobs describe --format export`
/// prints): a document to keep and `jobs replace` later, without status or server-set metadata.
pub fn job_export(j: &crate::jobs::Job) -> Value {
    let (project, location) = project_location(&j.name);
    let mut labels = j.labels.clone();
    labels.insert("cloud.googleapis.com/location".into(), location);
    let task = &j.template.template;
    let mut secrets = SecretNames::new(&project);
    let mut task_spec = json!({
        "containers": task.containers.iter().map(|c| container(c, false, &mut secrets)).collect::<Vec<_>>(),
    });
    if !task.volumes.is_empty() {
        task_spec["volumes"] = volumes(&task.volumes, &mut secrets);
    }
    if let Some(n) = task.max_retries {
        task_spec["maxRetries"] = json!(n);
    }
    if let Some(t) = &task.timeout {
        task_spec["timeoutSeconds"] = json!(seconds(Some(t)).to_string());
    }
    if !task.service_account.is_empty() {
        task_spec["serviceAccountName"] = json!(task.service_account);
    }
    let mut execution_spec = json!({"template": {"spec": task_spec}});
    if j.template.task_count > 0 {
        execution_spec["taskCount"] = json!(j.template.task_count);
    }
    if j.template.parallelism > 0 {
        execution_spec["parallelism"] = json!(j.template.parallelism);
    }
    let mut execution_metadata = json!({});
    if !j.template.labels.is_empty() {
        execution_metadata["labels"] = json!(j.template.labels);
    }
    let mut execution_annotations: std::collections::BTreeMap<String, String> =
        vpc_annotations(task.vpc_access.as_ref()).into_iter().collect();
    if let Some(aliases) = secrets.annotation() {
        execution_annotations.insert(SECRETS_ANNOTATION.into(), aliases);
    }
    if !execution_annotations.is_empty() {
        execution_metadata["annotations"] = json!(execution_annotations);
    }
    json!({
        "apiVersion": "run.googleapis.com/v1",
        "kind": "Job",
        "metadata": {"name": last_segment(&j.name), "namespace": project, "labels": labels},
        "spec": {"template": {"metadata": execution_metadata, "spec": execution_spec}},
    })
}

/// `vpcAccess` as Cloud Run's v1 annotations: `vpc-access-connector` or `network-interfaces`
/// (JSON), and `vpc-access-egress` (`all-traffic`, `private-ranges-only`).
pub(crate) fn vpc_annotations(vpc: Option<&crate::VpcAccess>) -> Vec<(String, String)> {
    let Some(vpc) = vpc else { return Vec::new() };
    let mut out = Vec::new();
    if !vpc.connector.is_empty() {
        out.push((VPC_CONNECTOR.to_owned(), vpc.connector.clone()));
    }
    if !vpc.network_interfaces.is_empty() {
        out.push((VPC_NETWORK_INTERFACES.to_owned(), json!(vpc.network_interfaces).to_string()));
    }
    match vpc.egress.as_deref() {
        Some(crate::VPC_EGRESS_ALL_TRAFFIC) => out.push((VPC_EGRESS.to_owned(), "all-traffic".to_owned())),
        Some(crate::VPC_EGRESS_PRIVATE_RANGES_ONLY) => {
            out.push((VPC_EGRESS.to_owned(), "private-ranges-only".to_owned()));
        }
        _ => {}
    }
    out
}

pub(crate) const VPC_CONNECTOR: &str = "run.googleapis.com/vpc-access-connector";
pub(crate) const VPC_EGRESS: &str = "run.googleapis.com/vpc-access-egress";
pub(crate) const VPC_NETWORK_INTERFACES: &str = "run.googleapis.com/network-interfaces";

pub fn revision(r: &Revision) -> Value {
    let (project, location) = project_location(&r.name);
    let mut labels = r.labels.clone();
    labels.insert("serving.knative.dev/service".into(), last_segment(&r.service).to_owned());
    labels.insert("cloud.googleapis.com/location".into(), location);
    let mut secrets = SecretNames::new(&project);
    let containers: Vec<Value> = r.containers.iter().map(|c| container(c, true, &mut secrets)).collect();
    let mut annotations = r.annotations.clone();
    if let Some(aliases) = secrets.annotation() {
        annotations.insert(SECRETS_ANNOTATION.into(), aliases);
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": last_segment(&r.name),
            "namespace": project,
            "uid": r.uid,
            "creationTimestamp": r.create_time,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "containerConcurrency": r.max_instance_request_concurrency,
            "timeoutSeconds": seconds(r.timeout.as_deref()),
            "containers": containers,
        },
        "status": {
            "observedGeneration": r.observed_generation,
            "conditions": r.conditions.iter().map(condition).collect::<Vec<_>>(),
            "imageDigest": r.containers.first().map(|c| c.image.clone()).unwrap_or_default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TrafficTargetStatus;

    #[test]
    fn an_export_reads_back_as_the_same_service() {
        let yaml_in = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  annotations:\n    run.googleapis.com/ingress: all\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/maxScale: '3'\n        run.googleapis.com/cpu-throttling: 'true'\n    spec:\n      containers:\n      - image: r/hello:v1\n        workingDir: /srv\n        livenessProbe:\n          httpGet:\n            path: /healthz\n";
        let mut first = input::service(yaml_in).unwrap().service;
        first.name = "projects/p/locations/l/services/hello".into();
        first.uid = "u".into();
        let exported = export(&first);
        assert!(exported.get("status").is_none() && exported["metadata"].get("uid").is_none());
        let text = serde_norway::to_string(&exported).unwrap();
        let second = input::service(&text).unwrap();
        assert_eq!(second.location.as_deref(), Some("l"));
        let (a, b) = (&first.template, &second.service.template);
        assert_eq!(a.scaling, b.scaling);
        assert_eq!(a.containers[0].working_dir, b.containers[0].working_dir);
        assert_eq!(a.containers[0].liveness_probe, b.containers[0].liveness_probe);
        assert_eq!(a.containers[0].resources.as_ref().map(|r| r.cpu_idle), Some(true));
        assert_eq!(b.containers[0].resources.as_ref().map(|r| r.cpu_idle), Some(true));
        assert_eq!(first.ingress, second.service.ingress);
    }

    #[test]
    fn secrets_and_in_memory_volumes_round_trip_in_cloud_runs_v1_shape() {
        use crate::types::{EmptyDirVolumeSource, EnvVar, SecretVolumeSource, VersionToPath, Volume, VolumeMount};
        let secret_env = |name: &str, secret: &str, version: &str| EnvVar {
            name: name.into(),
            value: None,
            value_source: Some(json!({"secretKeyRef": {"secret": secret, "version": version}})),
        };
        let mut service = Service { name: "projects/p/locations/l/services/hello".into(), ..Service::default() };
        service.template.containers.push(Container {
            image: "r/hello:v1".into(),
            env: vec![secret_env("DB", "db-password", "latest"), secret_env("OTHER", "projects/q/secrets/token", "2")],
            volume_mounts: vec![
                VolumeMount { name: "keys".into(), mount_path: "/secrets".into() },
                VolumeMount { name: "cache".into(), mount_path: "/cache".into() },
            ],
            ..Container::default()
        });
        service.template.volumes = vec![
            Volume {
                name: "keys".into(),
                secret: Some(SecretVolumeSource {
                    secret: "projects/p/secrets/api-key".into(),
                    items: vec![VersionToPath { path: "key.txt".into(), version: "1".into(), mode: Some(0o400) }],
                    default_mode: None,
                }),
                empty_dir: None,
            },
            Volume {
                name: "cache".into(),
                secret: None,
                empty_dir: Some(EmptyDirVolumeSource { medium: "MEMORY".into(), size_limit: "64Mi".into() }),
            },
        ];
        let text = serde_norway::to_string(&export(&service)).unwrap();
        assert!(text.contains("run.googleapis.com/secrets: token:projects/q/secrets/token"), "{text}");
        assert!(text.contains("secretKeyRef:") && text.contains("secretName: api-key"), "{text}");
        assert!(text.contains("medium: Memory"), "{text}");
        let back = input::service(&text).unwrap().service.template;
        assert_eq!(back.containers[0].env[0], secret_env("DB", "db-password", "latest"));
        assert_eq!(back.containers[0].env[1], secret_env("OTHER", "projects/q/secrets/token", "2"));
        assert_eq!(back.containers[0].volume_mounts, service.template.containers[0].volume_mounts);
        assert_eq!(back.volumes[0].secret.as_ref().unwrap().secret, "api-key", "same project: the short name");
        assert_eq!(
            back.volumes[0].secret.as_ref().unwrap().items,
            service.template.volumes[0].secret.as_ref().unwrap().items
        );
        assert_eq!(back.volumes[1], service.template.volumes[1]);
        assert!(!back.annotations.contains_key(SECRETS_ANNOTATION), "the aliases are resolved, not kept");

        // What Cloud Run's v1 shape has and Wharf does not is refused by name.
        let with = |from: &str, to: &str| text.replacen(from, to, 1);
        let refused = input::service(&with("secretKeyRef:", "configMapKeyRef:")).unwrap_err().to_string();
        assert!(refused.contains("configMapKeyRef"), "{refused}");
        let refused = input::service(&with("medium: Memory", "medium: Disk")).unwrap_err().to_string();
        assert!(refused.contains("emptyDir.medium") && refused.contains("Disk"), "{refused}");
        let refused = input::service(&with("token:projects", "token:nowhere")).unwrap_err().to_string();
        assert!(refused.contains("run.googleapis.com/secrets"), "{refused}");
        let refused = input::service(&with("mountPath: /cache", "mountPath: /cache\n          readOnly: true"))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("readOnly"), "{refused}");
    }

    #[test]
    fn vpc_access_round_trips_through_the_annotations_of_services_and_jobs() {
        let vpc = crate::VpcAccess {
            connector: String::new(),
            egress: Some(crate::VPC_EGRESS_ALL_TRAFFIC.into()),
            network_interfaces: vec![crate::NetworkInterface {
                network: "office".into(),
                subnetwork: "office-a".into(),
                tags: vec!["web".into()],
            }],
        };
        let mut service = Service { name: "projects/p/locations/l/services/hello".into(), ..Service::default() };
        service.template.containers.push(Container { image: "r/hello:v1".into(), ..Container::default() });
        service.template.vpc_access = Some(vpc.clone());
        let text = serde_norway::to_string(&export(&service)).unwrap();
        assert!(text.contains("run.googleapis.com/vpc-access-egress: all-traffic"), "{text}");
        assert_eq!(input::service(&text).unwrap().service.template.vpc_access, Some(vpc));

        let connector =
            crate::VpcAccess { connector: "projects/p/locations/l/connectors/c".into(), ..Default::default() };
        let mut job = crate::jobs::Job { name: "projects/p/locations/l/jobs/j".into(), ..Default::default() };
        job.template.template.containers.push(Container { image: "r/hello:v1".into(), ..Container::default() });
        job.template.template.vpc_access = Some(connector.clone());
        let text = serde_norway::to_string(&job_export(&job)).unwrap();
        assert!(text.contains("run.googleapis.com/vpc-access-connector"), "{text}");
        assert_eq!(input::job(&text).unwrap().job.template.template.vpc_access, Some(connector));

        let bad = text.replace("vpc-access-connector: projects/p/locations/l/connectors/c", "vpc-access-egress: some");
        let message = input::job(&bad).unwrap_err().to_string();
        assert!(message.contains("vpc-access-egress") && message.contains("all-traffic"), "{message}");
    }

    #[test]
    fn service_view_has_gcloud_paths() {
        let s = Service {
            name: "projects/p/locations/us-central1/services/hello".into(),
            uri: "http://hello-p.localhost:8080".into(),
            latest_ready_revision: "projects/p/locations/us-central1/services/hello/revisions/hello-00001-abc".into(),
            traffic_statuses: vec![TrafficTargetStatus {
                kind: Some(TRAFFIC_LATEST.into()),
                revision: "hello-00001-abc".into(),
                percent: 100,
                ..TrafficTargetStatus::default()
            }],
            ..Service::default()
        };
        let k = service(&s);
        assert_eq!(k["status"]["url"], "http://hello-p.localhost:8080");
        assert_eq!(k["metadata"]["name"], "hello");
        assert_eq!(k["status"]["latestReadyRevisionName"], "hello-00001-abc");
        assert_eq!(
            k["status"]["traffic"][0],
            json!({"percent": 100, "latestRevision": true, "revisionName": "hello-00001-abc"})
        );
    }
}
