//! The Knative `serving.knative.dev/v1` view of a service and a revision: what gcloud prints
//! (its `run` commands speak Cloud Run's v1 API), so `--format 'value(status.url)'` and
//! `--format 'yaml(status.traffic)'` from existing scripts keep working.

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

fn container(c: &Container) -> Value {
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
    let port = c.ports.first().map_or(8080, |p| p.container_port);
    v["ports"] = json!([{"name": "http1", "containerPort": port}]);
    let mut limits = Map::new();
    limits.insert("cpu".into(), json!("1000m"));
    limits.insert("memory".into(), json!("512Mi"));
    if let Some(r) = &c.resources {
        for (k, val) in &r.limits {
            limits.insert(k.clone(), json!(val));
        }
    }
    v["resources"] = json!({"limits": limits});
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
        "containers": s.template.containers.iter().map(container).collect::<Vec<_>>(),
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
            "annotations": s.annotations,
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
            "containers": r.containers.iter().map(container).collect::<Vec<_>>(),
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
