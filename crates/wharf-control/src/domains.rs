//! Domain mappings: a custom domain routed to a service, with a certificate for it.
//!
//! A mapping is a row of `domain_mappings` (a domain is mapped at most once on the server)
//! and, while it exists, an entry in the router's table that routes the domain as its
//! service's own host ([`wharf_router::RoutingTable::map_domain`]) and a domain the
//! [`DomainCertificates`] keep a certificate for. Its status is computed when it is read:
//! `DomainRoutable` from the routing table, `CertificateProvisioned` from the certificates,
//! `Ready` from both, and the DNS records that point the domain at this server.
//!
//! It does not get certificates itself (`wharf_router::acme` does) nor serve HTTPS.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use wharf_api::domains::{
    API_VERSION, Condition, DomainMapping, DomainMappingList, DomainMappingStatus, KIND, LIST_KIND, LOCATION_LABEL,
    ObjectMeta, ResourceRecord, validate_domain,
};
use wharf_api::names::Parent;
use wharf_router::acme::DomainCertificates;
use wharf_store::rusqlite::{self, OptionalExtension, params};

use crate::{ControlError, ControlPlane};

/// What domain mappings are served with, given by the server once its HTTPS ingress is set
/// up ([`ControlPlane::serve_domain_mappings`]).
#[derive(Debug, Clone)]
pub struct DomainSettings {
    pub certificates: Arc<dyn DomainCertificates>,
    /// The addresses DNS records should point mapped domains at.
    pub addresses: Vec<IpAddr>,
    /// The HTTPS ingress's port, when there is one.
    pub https_port: Option<u16>,
}

/// The annotation that names who created a resource (Knative's).
const CREATOR_ANNOTATION: &str = "serving.knative.dev/creator";

#[derive(Debug, Clone)]
struct MappingRow {
    domain: String,
    parent: Parent,
    service: String,
    uid: String,
    creator: String,
    create_time: String,
}

const COLUMNS: &str = "domain, project, location, service, uid, creator, create_time";

fn mapping_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MappingRow> {
    Ok(MappingRow {
        domain: row.get(0)?,
        parent: Parent { project: row.get(1)?, location: row.get(2)? },
        service: row.get(3)?,
        uid: row.get(4)?,
        creator: row.get(5)?,
        create_time: row.get(6)?,
    })
}

/// Set once, when the server serves domain mappings.
pub(crate) type DomainState = OnceLock<DomainSettings>;

impl ControlPlane {
    /// Starts serving the stored domain mappings with `settings`: routes each domain and asks
    /// for its certificate. Called once, at start-up; later calls are ignored.
    pub fn serve_domain_mappings(&self, settings: DomainSettings) -> Result<(), ControlError> {
        if self.inner.domains.set(settings).is_err() {
            return Ok(());
        }
        let rows = self.inner.db.read(|c| {
            let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM domain_mappings ORDER BY domain"))?;
            stmt.query_map([], mapping_row)?.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        for row in &rows {
            self.activate(row);
        }
        tracing::info!(mappings = rows.len(), "serving domain mappings");
        Ok(())
    }

    fn domain_settings(&self) -> Result<&DomainSettings, ControlError> {
        self.inner.domains.get().ok_or_else(|| {
            ControlError::FailedPrecondition("this server does not serve domain mappings yet; retry shortly".into())
        })
    }

    fn activate(&self, row: &MappingRow) {
        let host = wharf_api::names::service_host(&row.service, &row.parent, &self.inner.settings.domain);
        self.inner.serving.table.map_domain(&row.domain, &host);
        if let Some(settings) = self.inner.domains.get() {
            settings.certificates.manage(&row.domain);
        }
    }

    /// Maps `mapping.metadata.name` to the service `mapping.spec.routeName` of `project`: in
    /// the region its location label names, else the one region where the project has a
    /// service of that name.
    pub fn create_domain_mapping(
        &self,
        project: &str,
        mapping: DomainMapping,
        creator: &str,
        validate_only: bool,
    ) -> Result<DomainMapping, ControlError> {
        self.parent(project, "-")?;
        self.domain_settings()?;
        let domain = mapping.metadata.name.clone();
        validate_domain(&domain).map_err(|e| ControlError::InvalidArgument(format!("metadata.name: {e}")))?;
        let own = &self.inner.settings.domain;
        if domain == *own || domain.ends_with(&format!(".{own}")) {
            return Err(ControlError::InvalidArgument(format!(
                "metadata.name: the domain {domain:?} is under this server's own domain {own:?}, where service hosts \
                 live; map a domain outside it"
            )));
        }
        if !mapping.metadata.namespace.is_empty() && mapping.metadata.namespace != project {
            return Err(ControlError::InvalidArgument(format!(
                "metadata.namespace is {:?} but the URL names the project {project:?}",
                mapping.metadata.namespace
            )));
        }
        if !matches!(mapping.spec.certificate_mode.as_str(), "" | "AUTOMATIC") {
            return Err(ControlError::InvalidArgument(format!(
                "spec.certificateMode {:?} is not supported; Wharf manages the certificate (AUTOMATIC)",
                mapping.spec.certificate_mode
            )));
        }
        let service = mapping.spec.route_name.clone();
        if service.is_empty() {
            return Err(ControlError::InvalidArgument(
                "spec.routeName is required: the name of the service to map the domain to (--service)".into(),
            ));
        }
        let location = match mapping.metadata.labels.get(LOCATION_LABEL) {
            Some(location) => {
                self.parent(project, location)?;
                location.clone()
            }
            None => self.service_location(project, &service)?,
        };
        let parent = self.parent(project, &location)?;
        if crate::services::store::get_service(&self.inner.db, &parent, &service)?.is_none() {
            return Err(ControlError::NotFound(format!(
                "spec.routeName: service {service:?} not found in project {project:?}, region {location:?}; create \
                 the service first"
            )));
        }
        let row = MappingRow {
            domain: domain.clone(),
            parent,
            service,
            uid: uuid::Uuid::new_v4().to_string(),
            creator: creator.to_owned(),
            create_time: crate::time::now(),
        };
        let exists = |other: Option<MappingRow>| match other {
            Some(other) if other.parent.project == project => Err(ControlError::AlreadyExists(format!(
                "the domain {domain} is already mapped to service {:?} in region {:?}; delete that mapping first",
                other.service, other.parent.location
            ))),
            Some(_) => {
                Err(ControlError::AlreadyExists(format!("the domain {domain} is already mapped in another project")))
            }
            None => Ok(()),
        };
        if validate_only {
            exists(self.mapping_row(&domain)?)?;
            return Ok(self.render_mapping(&row));
        }
        self.inner.db.write(|tx| {
            let other = tx
                .query_row(&format!("SELECT {COLUMNS} FROM domain_mappings WHERE domain = ?1"), [&domain], mapping_row)
                .optional()
                .map_err(wharf_store::StoreError::Query)?;
            exists(other)?;
            tx.execute(
                &format!("INSERT INTO domain_mappings ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    row.domain,
                    row.parent.project,
                    row.parent.location,
                    row.service,
                    row.uid,
                    row.creator,
                    row.create_time
                ],
            )
            .map_err(wharf_store::StoreError::Query)?;
            Ok::<_, ControlError>(())
        })?;
        tracing::info!(%domain, service = %row.service, project, "mapped a domain");
        self.activate(&row);
        Ok(self.render_mapping(&row))
    }

    /// The one region where `project` has a service named `service`.
    fn service_location(&self, project: &str, service: &str) -> Result<String, ControlError> {
        let locations: Vec<String> = self.inner.db.read(|c| {
            let mut stmt =
                c.prepare("SELECT location FROM services WHERE project = ?1 AND name = ?2 ORDER BY location")?;
            stmt.query_map(params![project, service], |r| r.get(0))?.collect()
        })?;
        match locations.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ControlError::NotFound(format!(
                "spec.routeName: service {service:?} not found in project {project:?}; create the service first"
            ))),
            several => Err(ControlError::InvalidArgument(format!(
                "spec.routeName: project {project:?} has a service {service:?} in several regions ({}); name one with \
                 the label {LOCATION_LABEL} (--region)",
                several.join(", ")
            ))),
        }
    }

    fn mapping_row(&self, domain: &str) -> Result<Option<MappingRow>, ControlError> {
        Ok(self.inner.db.read(|c| {
            c.query_row(&format!("SELECT {COLUMNS} FROM domain_mappings WHERE domain = ?1"), [domain], mapping_row)
                .optional()
        })?)
    }

    fn project_mapping(&self, project: &str, domain: &str) -> Result<MappingRow, ControlError> {
        self.parent(project, "-")?;
        match self.mapping_row(domain)? {
            Some(row) if row.parent.project == project => Ok(row),
            _ => Err(ControlError::NotFound(format!("domain mapping {domain:?} not found in project {project:?}"))),
        }
    }

    pub fn get_domain_mapping(&self, project: &str, domain: &str) -> Result<DomainMapping, ControlError> {
        let row = self.project_mapping(project, domain)?;
        Ok(self.render_mapping(&row))
    }

    pub fn list_domain_mappings(&self, project: &str) -> Result<DomainMappingList, ControlError> {
        self.parent(project, "-")?;
        let rows = self.inner.db.read(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {COLUMNS} FROM domain_mappings WHERE project = ?1 ORDER BY domain"))?;
            stmt.query_map([project], mapping_row)?.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(DomainMappingList {
            api_version: API_VERSION.to_owned(),
            kind: LIST_KIND.to_owned(),
            metadata: Default::default(),
            items: rows.iter().map(|row| self.render_mapping(row)).collect(),
        })
    }

    /// Unmaps the domain: it stops routing at once, and its certificate is dropped.
    pub fn delete_domain_mapping(&self, project: &str, domain: &str) -> Result<DomainMapping, ControlError> {
        let row = self.project_mapping(project, domain)?;
        let mapping = self.render_mapping(&row);
        self.inner.db.write(|tx| {
            tx.execute("DELETE FROM domain_mappings WHERE domain = ?1", [domain])
                .map_err(wharf_store::StoreError::Query)
        })?;
        self.inner.serving.table.unmap_domain(domain);
        if let Some(settings) = self.inner.domains.get() {
            settings.certificates.release(domain);
        }
        tracing::info!(%domain, project, "unmapped a domain");
        Ok(mapping)
    }

    fn render_mapping(&self, row: &MappingRow) -> DomainMapping {
        let settings = self.inner.domains.get();
        let project = &row.parent.project;
        let service_exists =
            matches!(crate::services::store::get_service(&self.inner.db, &row.parent, &row.service), Ok(Some(_)));
        let routed = self.inner.serving.table.lookup(&row.domain).is_some();
        let routable = if routed {
            condition("DomainRoutable", Some(true), "", String::new())
        } else if !service_exists {
            condition(
                "DomainRoutable",
                Some(false),
                "RouteNotFound",
                format!("The service {:?} no longer exists; the domain serves nothing.", row.service),
            )
        } else {
            condition(
                "DomainRoutable",
                None,
                "RouteNotReady",
                format!("The service {:?} has no revision serving traffic yet.", row.service),
            )
        };
        let certificate = match settings {
            Some(settings) => {
                let status = settings.certificates.status(&row.domain);
                condition("CertificateProvisioned", status.provisioned, status.reason, status.message)
            }
            None => condition("CertificateProvisioned", None, "NotStarted", "The server is starting.".into()),
        };
        let parts = [&routable, &certificate];
        let ready = if parts.iter().all(|c| c.status == "True") {
            condition("Ready", Some(true), "", String::new())
        } else {
            let worst =
                parts.iter().find(|c| c.status == "False").or_else(|| parts.iter().find(|c| c.status != "True"));
            let worst = worst.expect("a condition is not True");
            let state = if worst.status == "False" { Some(false) } else { None };
            condition("Ready", state, &worst.reason, worst.message.clone())
        };
        let https_port = settings.and_then(|s| s.https_port);
        let url = match https_port {
            Some(443) => format!("https://{}", row.domain),
            Some(port) => format!("https://{}:{port}", row.domain),
            None if self.inner.settings.ingress_port == 80 => format!("http://{}", row.domain),
            None => format!("http://{}:{}", row.domain, self.inner.settings.ingress_port),
        };
        let records = settings
            .map(|s| {
                s.addresses
                    .iter()
                    .map(|ip| ResourceRecord {
                        name: row.domain.clone(),
                        rrdata: ip.to_string(),
                        r#type: if ip.is_ipv4() { "A" } else { "AAAA" }.to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(LOCATION_LABEL.to_owned(), row.parent.location.clone());
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(CREATOR_ANNOTATION.to_owned(), row.creator.clone());
        DomainMapping {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta {
                name: row.domain.clone(),
                namespace: project.clone(),
                uid: row.uid.clone(),
                self_link: format!("/apis/domains.cloudrun.com/v1/namespaces/{project}/domainmappings/{}", row.domain),
                resource_version: row.uid.clone(),
                generation: 1,
                creation_timestamp: row.create_time.clone(),
                labels,
                annotations,
            },
            spec: wharf_api::domains::DomainMappingSpec {
                route_name: row.service.clone(),
                certificate_mode: "AUTOMATIC".to_owned(),
                force_override: false,
            },
            status: Some(DomainMappingStatus {
                conditions: vec![ready, certificate, routable],
                observed_generation: 1,
                resource_records: records,
                mapped_route_name: row.service.clone(),
                url,
            }),
        }
    }
}

fn condition(kind: &str, state: Option<bool>, reason: &str, message: String) -> Condition {
    Condition {
        r#type: kind.to_owned(),
        status: match state {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: String::new(),
    }
}
