//! Resources as the API shows them: the stored spec plus status derived from revision states
//! (conditions, latest created and ready revisions, traffic statuses, URL, etag).

use wharf_api::{
    CONDITION_FAILED, CONDITION_RECONCILING, CONDITION_SUCCEEDED, Condition, Revision, Service, TRAFFIC_LATEST,
    TRAFFIC_REVISION, TrafficTarget, TrafficTargetStatus,
};

use wharf_api::names::Parent;

use super::store::{RevisionRow, RevisionState, ServiceRow};
use crate::Settings;

pub fn service_name(row: &ServiceRow) -> String {
    format!("{}/services/{}", row.parent.path(), row.name)
}

pub fn revision_name(row: &RevisionRow) -> String {
    format!("{}/services/{}/revisions/{}", row.parent.path(), row.service, row.name)
}

/// The host a service answers to: `{service}-{project}.{domain}`.
/// The service's host on the ingress (see [`wharf_api::names::service_host`]).
pub fn host(service: &str, parent: &Parent, settings: &Settings) -> String {
    wharf_api::names::service_host(service, parent, &settings.domain)
}

/// Every host the service answers on: its own, and the pre-hash one it had before the upgrade.
pub fn hosts(row: &ServiceRow, settings: &Settings) -> Vec<String> {
    let mut hosts = vec![host(&row.name, &row.parent, settings)];
    if row.legacy_host {
        hosts.push(format!("{}-{}.{}", row.name, row.parent.project, settings.domain));
    }
    hosts
}

pub fn url(host: &str, settings: &Settings) -> String {
    if settings.ingress_port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{}", settings.ingress_port)
    }
}

/// The traffic the service asks for; no targets means 100% to the latest ready revision.
pub fn traffic_spec(spec: &Service) -> Vec<TrafficTarget> {
    if spec.traffic.is_empty() {
        vec![TrafficTarget { kind: Some(TRAFFIC_LATEST.to_owned()), percent: 100, ..TrafficTarget::default() }]
    } else {
        spec.traffic.clone()
    }
}

/// Resolves traffic targets to revision names: `(revision, percent, tag, is_latest)`.
pub fn resolve_traffic(spec: &Service, revisions: &[RevisionRow]) -> Vec<(Option<String>, i32, String, bool)> {
    let latest_ready = revisions.iter().find(|r| r.state == RevisionState::Ready).map(|r| r.name.clone());
    traffic_spec(spec)
        .into_iter()
        .map(|t| {
            let latest = t.kind.as_deref() == Some(TRAFFIC_LATEST) || (t.kind.is_none() && t.revision.is_empty());
            let revision = if latest { latest_ready.clone() } else { Some(t.revision.clone()) };
            (revision, t.percent, t.tag, latest)
        })
        .collect()
}

pub fn service(row: &ServiceRow, revisions: &[RevisionRow], settings: &Settings) -> Service {
    let mut s = row.spec.clone();
    let host = host(&row.name, &row.parent, settings);
    s.name = service_name(row);
    s.uid = row.uid.clone();
    s.generation = row.generation;
    s.observed_generation = row.observed_generation;
    s.create_time = Some(row.create_time.clone());
    s.update_time = Some(row.update_time.clone());
    s.uri = url(&host, settings);
    s.urls = hosts(row, settings).iter().map(|h| url(h, settings)).collect();
    s.etag = format!("\"{}-{}\"", row.generation, &row.uid[..8.min(row.uid.len())]);
    s.ingress = s.ingress.or_else(|| Some("INGRESS_TRAFFIC_ALL".to_owned()));
    s.launch_stage = s.launch_stage.or_else(|| Some("GA".to_owned()));
    s.traffic = traffic_spec(&row.spec);
    let latest_created = revisions.first();
    let latest_ready = revisions.iter().find(|r| r.state == RevisionState::Ready);
    s.latest_created_revision = latest_created.map(revision_name).unwrap_or_default();
    s.latest_ready_revision = latest_ready.map(revision_name).unwrap_or_default();
    s.traffic_statuses = resolve_traffic(&row.spec, revisions)
        .into_iter()
        .map(|(revision, percent, tag, latest)| TrafficTargetStatus {
            kind: Some(if latest { TRAFFIC_LATEST } else { TRAFFIC_REVISION }.to_owned()),
            revision: revision.unwrap_or_default(),
            percent,
            uri: if tag.is_empty() { String::new() } else { url(&format!("{tag}---{host}"), settings) },
            tag,
        })
        .collect();
    let time = row.update_time.clone();
    let (state, message) = match latest_created {
        None => (CONDITION_RECONCILING, "Waiting for the first revision.".to_owned()),
        Some(r) if r.state == RevisionState::Pending => {
            (CONDITION_RECONCILING, format!("Deploying revision {}.", r.name))
        }
        Some(r) if r.state == RevisionState::Failed => {
            (CONDITION_FAILED, format!("Revision '{}' is not ready and cannot serve traffic. {}", r.name, r.message))
        }
        Some(_) => (CONDITION_SUCCEEDED, String::new()),
    };
    let mut ready = Condition::new("Ready", state, message.clone(), &time);
    if state == CONDITION_FAILED {
        ready.reason = Some("REVISION_FAILED".to_owned());
    }
    let routes_ready = latest_ready.is_some();
    s.conditions = vec![
        Condition::new(
            "RoutesReady",
            if routes_ready { CONDITION_SUCCEEDED } else { state },
            if routes_ready { String::new() } else { message.clone() },
            &time,
        ),
        Condition::new("ConfigurationsReady", state, message, &time),
    ];
    s.terminal_condition = Some(ready);
    s.reconciling = state == CONDITION_RECONCILING || row.observed_generation < row.generation;
    s
}

pub fn revision(row: &RevisionRow, settings: &Settings) -> Revision {
    let _ = settings;
    let mut containers = row.template.containers.clone();
    for c in &mut containers {
        if !c.image.contains('@') {
            c.image = format!("{}@{}", c.image, row.image.digest);
        }
    }
    let (state, message) = match row.state {
        RevisionState::Pending => (CONDITION_RECONCILING, "Starting the first instance.".to_owned()),
        RevisionState::Ready => (CONDITION_SUCCEEDED, String::new()),
        RevisionState::Failed => (CONDITION_FAILED, row.message.clone()),
    };
    let time = &row.create_time;
    Revision {
        name: revision_name(row),
        uid: row.uid.clone(),
        generation: 1,
        labels: row.template.labels.clone(),
        annotations: row.template.annotations.clone(),
        create_time: Some(row.create_time.clone()),
        update_time: Some(row.create_time.clone()),
        launch_stage: Some("GA".to_owned()),
        service: format!("{}/services/{}", row.parent.path(), row.service),
        scaling: row.template.scaling.clone(),
        max_instance_request_concurrency: row
            .template
            .max_instance_request_concurrency
            .max(0)
            .max(if row.template.max_instance_request_concurrency == 0 { 80 } else { 0 }),
        timeout: Some(row.template.timeout.clone().unwrap_or_else(|| "300s".to_owned())),
        service_account: row.template.service_account.clone(),
        containers,
        execution_environment: row.template.execution_environment.clone(),
        session_affinity: row.template.session_affinity,
        reconciling: row.state == RevisionState::Pending,
        conditions: vec![
            Condition::new("Ready", state, message.clone(), time),
            Condition::new("ContainerHealthy", state, message, time),
        ],
        observed_generation: 1,
        log_uri: String::new(),
        etag: format!("\"{}\"", &row.uid[..8.min(row.uid.len())]),
    }
}
