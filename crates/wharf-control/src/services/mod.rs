//! Services and their revisions. The commands here (create, get, list, update, delete)
//! validate fully before writing anything, write in one transaction, and hand the rest to the
//! reconciler ([`reconcile`]), which proves a new revision ready and routes traffic through
//! the revisions' pools ([`pools`]). [`store`] owns the tables, [`render`] derives the status
//! the API shows.

mod pools;
pub(crate) mod reconcile;
pub mod render;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wharf_api::names::{Parent, validate_parent_id, validate_revision_name};
use wharf_api::{
    ListRevisionsResponse, ListServicesResponse, Operation, REVISION_TYPE, Revision, SERVICE_TYPE, Service,
    TrafficTarget, validate_service_name,
};
use wharf_router::{RevisionPool, RoutingTable};

use crate::operations::OperationBuilder;
use crate::paging::{PageRequest, check_etag};
use crate::validate::validate;
use crate::{ControlError, ControlPlane};
use store::{RevisionRow, RevisionState, ServiceRow};

/// What serving needs while the server runs: the routing table the ingress reads, each
/// revision's pool, one lock per service so reconciles and commands do not interleave, and
/// the tag hosts routed per service.
#[derive(Debug)]
pub(crate) struct Serving {
    pub(crate) table: Arc<RoutingTable>,
    /// Revision pools by `{project}/{location}/{revision}`.
    pub(crate) pools: Mutex<HashMap<String, Arc<RevisionPool>>>,
    pub(crate) locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One lock per service that reconciles take for their whole pass (across starts and
    /// probes), so two reconciles never prove the same revision; commands never take it.
    pub(crate) reconciles: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The tag hosts (`{tag}---{host}`) routed for each service, to remove stale ones.
    pub(crate) tag_hosts: Mutex<HashMap<String, Vec<String>>>,
}

impl Serving {
    pub(crate) fn new(table: Arc<RoutingTable>) -> Serving {
        Serving {
            table,
            pools: Mutex::default(),
            locks: Mutex::default(),
            reconciles: Mutex::default(),
            tag_hosts: Mutex::default(),
        }
    }
}

/// How many times an update is planned again when the service changes while it is planned.
const UPDATE_ATTEMPTS: usize = 5;

fn not_found(parent: &Parent, name: &str) -> ControlError {
    ControlError::NotFound(format!("Resource '{}/services/{name}' was not found", parent.path()))
}

/// Fields of a service the user sets (everything else is status).
fn user_fields(body: &Service) -> Service {
    Service {
        description: body.description.clone(),
        labels: body.labels.clone(),
        annotations: body.annotations.clone(),
        client: body.client.clone(),
        client_version: body.client_version.clone(),
        // The defaults, which every read shows, are stored as absent: a service read and
        // written back unchanged is unchanged.
        ingress: body.ingress.clone().filter(|i| i != "INGRESS_TRAFFIC_ALL" && i != "INGRESS_TRAFFIC_UNSPECIFIED"),
        launch_stage: body.launch_stage.clone().filter(|l| l != "GA" && l != "LAUNCH_STAGE_UNSPECIFIED"),
        template: body.template.clone(),
        traffic: body.traffic.clone(),
        invoker_iam_disabled: body.invoker_iam_disabled,
        // Who created and last changed the service: set by the API from the authenticated
        // caller, never taken from a client's body (the API overwrites both).
        creator: body.creator.clone(),
        last_modifier: body.last_modifier.clone(),
        ..Service::default()
    }
}

/// Two templates describe the same revision when they match ignoring the requested name, or
/// when they validate to the same configuration with the same metadata: a template that spells
/// out Cloud Run's defaults (as an exported Knative YAML does) is the one that left them out.
fn same_template(a: &wharf_api::RevisionTemplate, b: &wharf_api::RevisionTemplate) -> bool {
    let strip = |t: &wharf_api::RevisionTemplate| wharf_api::RevisionTemplate {
        revision: String::new(),
        containers: Vec::new(),
        scaling: None,
        timeout: None,
        max_instance_request_concurrency: 0,
        ..t.clone()
    };
    let whole = |t: &wharf_api::RevisionTemplate| wharf_api::RevisionTemplate { revision: String::new(), ..t.clone() };
    if whole(a) == whole(b) {
        return true;
    }
    let resources = |t: &wharf_api::RevisionTemplate| {
        t.containers
            .first()
            .and_then(|c| c.resources.as_ref())
            .map(|r| (r.cpu_idle.unwrap_or(true), r.startup_cpu_boost))
    };
    strip(a) == strip(b)
        && resources(a).unwrap_or((true, false)) == resources(b).unwrap_or((true, false))
        && matches!((validate(a), validate(b)), (Ok(x), Ok(y)) if x == y)
}

/// Two traffic specs route the same way: no spec is all traffic to the latest revision, and
/// a target without a type is typed by whether it names a revision.
fn same_traffic(a: &[TrafficTarget], b: &[TrafficTarget]) -> bool {
    let normal = |targets: &[TrafficTarget]| -> Vec<TrafficTarget> {
        if targets.is_empty() {
            return vec![TrafficTarget {
                kind: Some(wharf_api::TRAFFIC_LATEST.to_owned()),
                percent: 100,
                ..TrafficTarget::default()
            }];
        }
        targets
            .iter()
            .map(|t| TrafficTarget {
                kind: Some(t.kind.clone().unwrap_or_else(|| {
                    if t.revision.is_empty() { wharf_api::TRAFFIC_LATEST } else { wharf_api::TRAFFIC_REVISION }
                        .to_owned()
                })),
                ..t.clone()
            })
            .collect()
    };
    normal(a) == normal(b)
}

impl ControlPlane {
    pub fn parent(&self, project: &str, location: &str) -> Result<Parent, ControlError> {
        validate_parent_id("project", project).map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        if location != "-" {
            validate_parent_id("location", location).map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        }
        Ok(Parent { project: project.to_owned(), location: location.to_owned() })
    }

    fn render(&self, row: &ServiceRow) -> Result<Service, ControlError> {
        let revisions = store::list_revisions(&self.inner.db, &row.parent, &row.name)?;
        Ok(render::service(row, &revisions, &self.inner.settings))
    }

    /// Validates a template and resolves its image; builds the revision row to insert.
    async fn new_revision(
        &self,
        row: &ServiceRow,
        template: &wharf_api::RevisionTemplate,
    ) -> Result<RevisionRow, ControlError> {
        let config = validate(template)?;
        self.check_vpc_network("template.vpcAccess", &config.instance)?;
        let name = if template.revision.is_empty() {
            format!("{}-{:05}-{}", row.name, row.next_revision, crate::random_suffix(3))
        } else {
            validate_revision_name(&row.name, &template.revision)
                .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
            if store::get_revision(&self.inner.db, &row.parent, &template.revision)?.is_some() {
                return Err(ControlError::AlreadyExists(format!(
                    "Revision named '{}' already exists; choose another --revision-suffix",
                    template.revision
                )));
            }
            template.revision.clone()
        };
        let image = self.inner.resolver.resolve(&config.image).await.map_err(|e| {
            ControlError::InvalidArgument(format!("Image '{}' could not be resolved: {e}", config.image))
        })?;
        Ok(RevisionRow {
            parent: row.parent.clone(),
            service: row.name.clone(),
            name,
            uid: uuid::Uuid::new_v4().to_string(),
            seq: row.next_revision,
            template: template.clone(),
            config,
            image,
            state: RevisionState::Pending,
            message: String::new(),
            create_time: crate::time::now(),
        })
    }

    pub async fn create_service(
        &self,
        parent: &Parent,
        service_id: &str,
        body: Service,
        validate_only: bool,
    ) -> Result<Operation, ControlError> {
        validate_service_name("service", service_id).map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        crate::validate::service_fields(&body)?;
        self.check_traffic(&body, &[])?;
        let already_exists = || {
            ControlError::AlreadyExists(format!("Resource '{}/services/{service_id}' already exists", parent.path()))
        };
        if store::get_service(&self.inner.db, parent, service_id)?.is_some() {
            return Err(already_exists());
        }
        let now = crate::time::now();
        let mut row = ServiceRow {
            parent: parent.clone(),
            name: service_id.to_owned(),
            uid: uuid::Uuid::new_v4().to_string(),
            generation: 1,
            spec: user_fields(&body),
            create_time: now.clone(),
            update_time: now,
            observed_generation: 0,
            next_revision: 1,
            legacy_host: false,
        };
        self.check_host_is_free(&row)?;
        // Validating and resolving the image (a pull, maybe) happen before the lock.
        let revision = self.new_revision(&row, &body.template).await?;
        if validate_only {
            let service = render::service(&row, &[revision], &self.inner.settings);
            return Ok(OperationBuilder::new(parent, SERVICE_TYPE, &service).dry_run());
        }
        let lock = self.service_lock(parent, service_id);
        let _guard = lock.lock().await;
        if store::get_service(&self.inner.db, parent, service_id)?.is_some() {
            return Err(already_exists());
        }
        if store::get_revision(&self.inner.db, parent, &revision.name)?.is_some() {
            return Err(ControlError::AlreadyExists(format!(
                "Revision named '{}' already exists; choose another --revision-suffix",
                revision.name
            )));
        }
        row.next_revision += 1;
        let service = render::service(&row, std::slice::from_ref(&revision), &self.inner.settings);
        let op = OperationBuilder::new(parent, SERVICE_TYPE, &service).running();
        self.inner.db.write(|tx| {
            store::insert_service(tx, &row)?;
            store::insert_revision(tx, &revision)?;
            self.inner.operations.insert(tx, &op)
        })?;
        self.spawn_reconcile(parent.clone(), service_id.to_owned(), vec![op.name.clone()]);
        Ok(op)
    }

    pub fn get_service(&self, parent: &Parent, name: &str) -> Result<Service, ControlError> {
        let row = store::get_service(&self.inner.db, parent, name)?.ok_or_else(|| not_found(parent, name))?;
        self.render(&row)
    }

    /// Where the project's services and jobs live: `("service" | "job", name) -> location`.
    /// Log lines name their service or job only; this places them (`resource.labels.location`).
    pub fn locations(&self, project: &str) -> Result<HashMap<(&'static str, String), String>, ControlError> {
        Ok(self.inner.db.read(|c| {
            let mut found = HashMap::new();
            for (kind, table) in [("service", "services"), ("job", "jobs")] {
                let mut stmt = c.prepare(&format!("SELECT name, location FROM {table} WHERE project = ?1"))?;
                let rows = stmt.query_map([project], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                for row in rows {
                    let (name, location) = row?;
                    found.insert((kind, name), location);
                }
            }
            Ok(found)
        })?)
    }

    pub fn list_services(&self, parent: &Parent, page: &PageRequest) -> Result<ListServicesResponse, ControlError> {
        let size = page.limit();
        let rows = store::list_services(&self.inner.db, parent, &page.token, size + 1)?;
        let more = rows.len() > size;
        let services: Vec<Service> = rows.iter().take(size).map(|r| self.render(r)).collect::<Result<_, _>>()?;
        let next_page_token = if more { rows[size - 1].name.clone() } else { String::new() };
        Ok(ListServicesResponse { services, next_page_token })
    }

    /// Replaces the service's user fields (all, or those `update_mask` names). A changed
    /// template makes a new revision; a changed traffic spec re-routes.
    pub async fn update_service(
        &self,
        parent: &Parent,
        name: &str,
        body: Service,
        update_mask: Option<Vec<String>>,
        allow_missing: bool,
        validate_only: bool,
    ) -> Result<Operation, ControlError> {
        // Planned without the service's lock (a new revision's image may need a pull), then
        // written under it if the service did not change meanwhile; planned again if it did.
        for _ in 0..UPDATE_ATTEMPTS {
            let existing = store::get_service(&self.inner.db, parent, name)?;
            let Some(current) = existing else {
                if allow_missing {
                    return Box::pin(self.create_service(parent, name, body, validate_only)).await;
                }
                return Err(not_found(parent, name));
            };
            let planned = self.plan_update(&current, &body, update_mask.as_deref()).await?;
            let Some((mut row, revision)) = planned else {
                let service = self.render(&current)?;
                return Ok(OperationBuilder::new(parent, SERVICE_TYPE, &service).dry_run());
            };
            if validate_only {
                let mut preview = store::list_revisions(&self.inner.db, parent, name)?;
                preview.splice(0..0, revision.iter().cloned());
                let service = render::service(&row, &preview, &self.inner.settings);
                return Ok(OperationBuilder::new(parent, SERVICE_TYPE, &service).dry_run());
            }
            let lock = self.service_lock(parent, name);
            let guard = lock.lock().await;
            let now = store::get_service(&self.inner.db, parent, name)?;
            if now.as_ref().map(|r| r.generation) != Some(current.generation) {
                drop(guard);
                tracing::debug!(service = %name, "the service changed while the update was planned; planning again");
                continue;
            }
            let revisions = store::list_revisions(&self.inner.db, parent, name)?;
            let mut known: Vec<(String, RevisionState)> = revisions.iter().map(|r| (r.name.clone(), r.state)).collect();
            known.extend(revision.iter().map(|r| (r.name.clone(), r.state)));
            self.check_traffic(&row.spec, &known)?;
            row.generation += 1;
            row.update_time = crate::time::now();
            if revision.is_some() {
                row.next_revision += 1;
            }
            let mut preview = revisions;
            preview.splice(0..0, revision.iter().cloned());
            let service = render::service(&row, &preview, &self.inner.settings);
            let op = OperationBuilder::new(parent, SERVICE_TYPE, &service).running();
            self.inner.db.write(|tx| {
                store::update_service(tx, &row)?;
                if let Some(r) = &revision {
                    store::insert_revision(tx, r)?;
                }
                self.inner.operations.insert(tx, &op)
            })?;
            drop(guard);
            self.spawn_reconcile(parent.clone(), name.to_owned(), vec![op.name.clone()]);
            return Ok(op);
        }
        Err(ControlError::Aborted(format!(
            "The service '{name}' kept changing while this update was prepared; read it again and retry"
        )))
    }

    /// What an update of `current` with `body` would write: the new row (generation not yet
    /// bumped) and the new revision if the template changed, or `None` if nothing changes.
    /// Validates everything and resolves a new revision's image; takes no lock.
    async fn plan_update(
        &self,
        current: &ServiceRow,
        body: &Service,
        update_mask: Option<&[String]>,
    ) -> Result<Option<(ServiceRow, Option<RevisionRow>)>, ControlError> {
        let (parent, name) = (&current.parent, current.name.as_str());
        let rendered = self.render(current)?;
        check_etag(&body.etag, &rendered.etag, &format!("Service '{name}'"))?;
        crate::validate::service_fields(body)?;
        let mut spec = current.spec.clone();
        let incoming = user_fields(body);
        match update_mask {
            None => spec = incoming,
            Some(paths) => {
                for path in paths {
                    match path.split('.').next().unwrap_or("") {
                        "template" => spec.template = incoming.template.clone(),
                        "traffic" => spec.traffic = incoming.traffic.clone(),
                        "labels" => spec.labels = incoming.labels.clone(),
                        "annotations" => spec.annotations = incoming.annotations.clone(),
                        "description" => spec.description = incoming.description.clone(),
                        "ingress" => spec.ingress = incoming.ingress.clone(),
                        "client" | "clientVersion" | "client_version" => {
                            spec.client = incoming.client.clone();
                            spec.client_version = incoming.client_version.clone();
                        }
                        other => {
                            return Err(ControlError::InvalidArgument(format!(
                                "updateMask path {other:?} is not supported; use template, traffic, labels, \
                                 annotations, description or ingress"
                            )));
                        }
                    }
                }
            }
        }
        let revisions = store::list_revisions(&self.inner.db, parent, name)?;
        let names: Vec<String> = revisions.iter().map(|r| r.name.clone()).collect();
        let latest_template = revisions.first().map(|r| &r.template);
        let template_changed = latest_template.is_none_or(|t| !same_template(t, &spec.template))
            || (!spec.template.revision.is_empty() && !names.contains(&spec.template.revision));
        if !template_changed {
            // The same revision, however it was spelled: keep it as stored.
            spec.template = current.spec.template.clone();
        }
        if same_traffic(&spec.traffic, &current.spec.traffic) {
            spec.traffic = current.spec.traffic.clone();
        }
        // The creator never changes; the last modifier changes only with the service.
        spec.creator = current.spec.creator.clone();
        spec.last_modifier = current.spec.last_modifier.clone();
        let mut row = current.clone();
        row.spec = spec;
        crate::validate::service_fields(&row.spec)?;
        let revision = if template_changed { Some(self.new_revision(&row, &row.spec.template).await?) } else { None };
        let mut known: Vec<(String, RevisionState)> = revisions.iter().map(|r| (r.name.clone(), r.state)).collect();
        if let Some(r) = &revision {
            known.push((r.name.clone(), r.state));
        }
        self.check_traffic(&row.spec, &known)?;
        let changed = revision.is_some() || row.spec != current.spec;
        if changed && !body.last_modifier.is_empty() {
            row.spec.last_modifier = body.last_modifier.clone();
        }
        Ok(changed.then_some((row, revision)))
    }

    /// A new service's host must not be any other service's: the project hash makes that a
    /// one-in-2^50 chance, and this makes it never.
    fn check_host_is_free(&self, row: &ServiceRow) -> Result<(), ControlError> {
        let host = render::host(&row.name, &row.parent, &self.inner.settings);
        for other in store::all_services(&self.inner.db)? {
            if render::hosts(&other, &self.inner.settings).contains(&host) {
                return Err(ControlError::AlreadyExists(format!(
                    "the host {host} is already service '{}/services/{}'s; choose another service name",
                    other.parent.path(),
                    other.name
                )));
            }
        }
        Ok(())
    }

    /// Traffic must name known revisions (or LATEST), send traffic only to ready ones, give
    /// each tag once as a DNS label, and have percents summing to 100.
    fn check_traffic(&self, spec: &Service, revisions: &[(String, RevisionState)]) -> Result<(), ControlError> {
        if spec.traffic.is_empty() {
            return Ok(());
        }
        let mut total = 0;
        let mut tags: Vec<&str> = Vec::new();
        for t in &spec.traffic {
            if t.percent < 0 || t.percent > 100 {
                return Err(ControlError::InvalidArgument(format!("traffic percent {} is out of range", t.percent)));
            }
            total += t.percent;
            let latest = t.kind.as_deref() == Some(wharf_api::TRAFFIC_LATEST);
            if !latest {
                let Some((_, state)) = revisions.iter().find(|(name, _)| *name == t.revision) else {
                    return Err(ControlError::InvalidArgument(format!(
                        "traffic names revision {:?}, which this service does not have",
                        t.revision
                    )));
                };
                if t.percent > 0 && *state != RevisionState::Ready {
                    return Err(ControlError::FailedPrecondition(format!(
                        "revision {:?} is not ready, so it cannot receive traffic yet",
                        t.revision
                    )));
                }
            }
            if !t.tag.is_empty() {
                let label = t.tag.as_str();
                let valid = label.len() <= 46
                    && label.starts_with(|c: char| c.is_ascii_lowercase())
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !valid {
                    return Err(ControlError::InvalidArgument(format!(
                        "tag {label:?} is invalid: a tag is a DNS label of lowercase letters, digits and hyphens, \
                         starting with a letter, at most 46 characters"
                    )));
                }
                if tags.contains(&label) {
                    return Err(ControlError::InvalidArgument(format!("tag {label:?} is given more than once")));
                }
                tags.push(label);
            }
        }
        if total != 100 {
            return Err(ControlError::InvalidArgument(format!(
                "traffic percents sum to {total}; they must sum to 100"
            )));
        }
        Ok(())
    }

    /// Deletes a service and its revisions; a dry run (`validate_only`) checks the etag and
    /// answers with the service as it is, deleting nothing.
    pub async fn delete_service(
        &self,
        parent: &Parent,
        name: &str,
        etag: &str,
        validate_only: bool,
    ) -> Result<Operation, ControlError> {
        let lock = self.service_lock(parent, name);
        let guard = lock.lock().await;
        let row = store::get_service(&self.inner.db, parent, name)?.ok_or_else(|| not_found(parent, name))?;
        let service = self.render(&row)?;
        check_etag(etag, &service.etag, &format!("Service '{name}'"))?;
        if validate_only {
            return Ok(OperationBuilder::new(parent, SERVICE_TYPE, &service).dry_run());
        }
        let revisions = store::list_revisions(&self.inner.db, parent, name)?;
        let op = OperationBuilder::new(parent, SERVICE_TYPE, &service).running();
        // One transaction: a crash leaves the service with no operation, or neither (the next
        // start completes the operation; the runtime's sweep stops the instances).
        self.inner.db.write(|tx| {
            self.inner.operations.insert(tx, &op)?;
            store::delete_service(tx, parent, name)
        })?;
        let hosts = render::hosts(&row, &self.inner.settings);
        for host in &hosts {
            self.inner.serving.table.remove(host);
        }
        self.route_tags(&parent.path(), name, Vec::new(), &Arc::new(reconcile::access(&row, &hosts)));
        drop(guard);
        let control = self.clone();
        let (parent, op_name) = (parent.clone(), op.name.clone());
        tokio::spawn(async move {
            for r in &revisions {
                control.close_pool(&parent, &r.name).await;
            }
            let op = OperationBuilder::new(&parent, SERVICE_TYPE, &service).finish(&op_name, None);
            if let Err(e) = control.inner.operations.complete(&op) {
                tracing::error!(error = %e, "cannot complete the delete operation");
            }
        });
        Ok(op)
    }

    pub fn list_revisions(
        &self,
        parent: &Parent,
        service: &str,
        page: &PageRequest,
    ) -> Result<ListRevisionsResponse, ControlError> {
        if service != "-" && store::get_service(&self.inner.db, parent, service)?.is_none() {
            return Err(not_found(parent, service));
        }
        let rows = store::list_revisions(&self.inner.db, parent, service)?;
        let (rows, next_page_token) = page.page(rows, |r| &r.name)?;
        Ok(ListRevisionsResponse {
            revisions: rows.iter().map(|r| render::revision(r, &self.inner.settings)).collect(),
            next_page_token,
        })
    }

    pub fn get_revision(&self, parent: &Parent, service: &str, name: &str) -> Result<Revision, ControlError> {
        store::get_revision(&self.inner.db, parent, name)?
            .filter(|r| r.service == service || service == "-")
            .map(|r| render::revision(&r, &self.inner.settings))
            .ok_or_else(|| ControlError::NotFound(format!("Revision '{name}' was not found")))
    }

    /// Deletes a revision that serves no traffic and carries no tag (a dry run only checks).
    pub async fn delete_revision(
        &self,
        parent: &Parent,
        service: &str,
        name: &str,
        etag: &str,
        validate_only: bool,
    ) -> Result<Operation, ControlError> {
        let lock = self.service_lock(parent, service);
        let guard = lock.lock().await;
        let row = store::get_service(&self.inner.db, parent, service)?.ok_or_else(|| not_found(parent, service))?;
        let revisions = store::list_revisions(&self.inner.db, parent, service)?;
        let revision = revisions
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("Revision '{name}' was not found")))?;
        for (target, percent, tag, _) in render::resolve_traffic(&row.spec, &revisions) {
            if target.as_deref() == Some(name) && (percent > 0 || !tag.is_empty()) {
                let why = if percent > 0 {
                    format!("it serves {percent}% of traffic")
                } else {
                    format!("it carries tag {tag:?}")
                };
                return Err(ControlError::FailedPrecondition(format!(
                    "Revision '{name}' cannot be deleted because {why}; move traffic or tags off it first \
                     (wharf run services update-traffic)"
                )));
            }
        }
        let rendered = render::revision(revision, &self.inner.settings);
        check_etag(etag, &rendered.etag, &format!("Revision '{name}'"))?;
        if validate_only {
            return Ok(OperationBuilder::new(parent, REVISION_TYPE, &rendered).dry_run());
        }
        store::delete_revision(&self.inner.db, parent, name)?;
        drop(guard);
        self.close_pool(parent, name).await;
        self.inner.operations.record(OperationBuilder::new(parent, REVISION_TYPE, &rendered).done())
    }
}
