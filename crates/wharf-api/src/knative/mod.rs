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
fn container(c: &Container, serving: bool) -> Value {
    let mut v = json!({"image": c.image});
    if !c.command.is_empty() {
        v["command"] = json!(c.command);
    }
    if !c.args.is_empty() {
        v["args"] = json!(c.args);
    }
    if !c.env.is_empty() {
        v["env"] = Value::Array(
            c.env.iter().map(|e| json!({"name": e.name, "value": e.value.clone().unwrap_or_default()})).collect(),
        );
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
    if let Some(throttling) = resources.cpu_idle {
        template_annotations.insert("run.googleapis.com/cpu-throttling".into(), throttling.to_string());
    }
    for (key, on) in [
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
    let mut template_spec = json!({
        "containerConcurrency": if s.template.max_instance_request_concurrency > 0 { s.template.max_instance_request_concurrency } else { 80 },
        "timeoutSeconds": seconds(s.template.timeout.as_deref()),
        "containers": s.template.containers.iter().map(|c| container(c, true)).collect::<Vec<_>>(),
    });
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
    let mut task_spec = json!({
        "containers": task.containers.iter().map(|c| container(c, false)).collect::<Vec<_>>(),
    });
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
    let vpc = vpc_annotations(task.vpc_access.as_ref());
    if !vpc.is_empty() {
        execution_metadata["annotations"] = json!(vpc.into_iter().collect::<std::collections::BTreeMap<_, _>>());
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
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": last_segment(&r.name),
            "namespace": project,
            "uid": r.uid,
            "creationTimestamp": r.create_time,
            "labels": labels,
            "annotations": r.annotations,
        },
        "spec": {
            "containerConcurrency": r.max_instance_request_concurrency,
            "timeoutSeconds": seconds(r.timeout.as_deref()),
            "containers": r.containers.iter().map(|c| container(c, true)).collect::<Vec<_>>(),
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
        assert_eq!(a.containers[0].resources.as_ref().and_then(|r| r.cpu_idle), Some(true));
        assert_eq!(b.containers[0].resources.as_ref().and_then(|r| r.cpu_idle), Some(true));
        assert_eq!(first.ingress, second.service.ingress);
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
