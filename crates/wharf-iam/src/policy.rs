//! IAM policies: which members hold which roles on a resource, stored per resource with an
//! etag, inherited downwards (a binding on a project applies to everything in it), and the
//! one authorization check every call makes: [`Policies::authorize`].
//!
//! Policies are read on every invocation of a private service, so they are cached in memory;
//! every write goes through [`Policies::set`], which updates the cache after the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use wharf_store::Store;
use wharf_store::rusqlite::{OptionalExtension, params};

use crate::member::{Member, MemberError, Principal};
use crate::roles;

/// Something a policy can be attached to. Every resource but a project has the project as its
/// parent, whose bindings it inherits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Project { project: String },
    Service { project: String, location: String, service: String },
    Job { project: String, location: String, job: String },
    ServiceAccount { project: String, email: String },
    Secret { project: String, secret: String },
}

impl Resource {
    pub fn project(project: &str) -> Resource {
        Resource::Project { project: project.to_owned() }
    }

    pub fn service(project: &str, location: &str, service: &str) -> Resource {
        Resource::Service { project: project.to_owned(), location: location.to_owned(), service: service.to_owned() }
    }

    pub fn job(project: &str, location: &str, job: &str) -> Resource {
        Resource::Job { project: project.to_owned(), location: location.to_owned(), job: job.to_owned() }
    }

    pub fn service_account(project: &str, email: &str) -> Resource {
        Resource::ServiceAccount { project: project.to_owned(), email: email.to_owned() }
    }

    pub fn secret(project: &str, secret: &str) -> Resource {
        Resource::Secret { project: project.to_owned(), secret: secret.to_owned() }
    }

    /// The project the resource lives in.
    pub fn project_id(&self) -> &str {
        match self {
            Resource::Project { project }
            | Resource::Service { project, .. }
            | Resource::Job { project, .. }
            | Resource::ServiceAccount { project, .. }
            | Resource::Secret { project, .. } => project,
        }
    }

    /// The resource whose policy this one inherits, if any.
    pub fn parent(&self) -> Option<Resource> {
        match self {
            Resource::Project { .. } => None,
            other => Some(Resource::project(other.project_id())),
        }
    }
}

/// The resource's full name, as Google's APIs write it.
impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Project { project } => write!(f, "projects/{project}"),
            Resource::Service { project, location, service } => {
                write!(f, "projects/{project}/locations/{location}/services/{service}")
            }
            Resource::Job { project, location, job } => write!(f, "projects/{project}/locations/{location}/jobs/{job}"),
            Resource::ServiceAccount { project, email } => write!(f, "projects/{project}/serviceAccounts/{email}"),
            Resource::Secret { project, secret } => write!(f, "projects/{project}/secrets/{secret}"),
        }
    }
}

/// A policy in Google's JSON form (`google.iam.v1.Policy`). Conditions and audit configs are
/// not supported and refused by name when a policy is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub version: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<Binding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Binding {
    pub role: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<serde_json::Value>,
}

/// Why a policy could not be set.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("role '{0}' is not a role Wharf knows; see `wharf iam roles list` (e.g. roles/run.invoker)")]
    UnknownRole(String),
    #[error("binding for {role}: {source}")]
    Member {
        role: String,
        #[source]
        source: MemberError,
    },
    #[error("binding for {0}: conditional role bindings are not supported by Wharf; remove 'condition'")]
    Condition(String),
    #[error("policy version {0} is not supported: use 1 or 3 (Wharf has no conditions)")]
    Version(i32),
    #[error(
        "there were concurrent policy changes on {resource}: the etag sent is not the current one; read the policy again, re-apply your change and retry"
    )]
    EtagMismatch { resource: String },
    #[error("stored policy of {resource} is unreadable")]
    Corrupt {
        resource: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] wharf_store::StoreError),
}

/// A permission the caller does not hold. Worded as Google words it; the resource may not
/// exist either, and the message does not say which (so it leaks nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Permission '{permission}' denied on resource '{resource}' (or it may not exist).")]
pub struct Denied {
    pub permission: &'static str,
    pub resource: String,
    /// Who was refused (`anonymous` without credentials), for the audit log; not in the message.
    pub principal: String,
}

/// The validated bindings of one resource: role -> members.
type Bindings = BTreeMap<String, BTreeSet<Member>>;

#[derive(Debug, Clone)]
pub struct Policies {
    db: Store,
    cache: Arc<RwLock<HashMap<String, Arc<Bindings>>>>,
}

/// The etag of a policy with no bindings (the same value Google returns for one).
const EMPTY_ETAG: &str = "ACAB";

impl Policies {
    pub fn new(db: Store) -> Policies {
        Policies { db, cache: Arc::default() }
    }

    /// The policy set on `resource` itself (not what it inherits), with its etag.
    pub fn get(&self, resource: &Resource) -> Result<Policy, PolicyError> {
        let bindings = self.bindings(resource)?;
        Ok(to_policy(&bindings))
    }

    /// Replaces the policy on `resource`. When `policy.etag` is set it must be the current
    /// one (read-modify-write without lost updates). Returns the stored policy.
    pub fn set(&self, resource: &Resource, policy: &Policy) -> Result<Policy, PolicyError> {
        let bindings = validate(policy)?;
        let key = resource.to_string();
        let stored = to_policy(&bindings);
        let json = serde_json::to_string(&bindings)
            .map_err(|source| PolicyError::Corrupt { resource: key.clone(), source })?;
        self.db.write(|tx| {
            let current: Option<String> = tx
                .query_row("SELECT etag FROM iam_policies WHERE resource = ?1", [&key], |r| r.get(0))
                .optional()
                .map_err(wharf_store::StoreError::Query)?;
            let current = current.unwrap_or_else(|| EMPTY_ETAG.to_owned());
            if policy.etag.as_deref().is_some_and(|sent| sent != current) {
                return Err(PolicyError::EtagMismatch { resource: key.clone() });
            }
            if bindings.is_empty() {
                tx.execute("DELETE FROM iam_policies WHERE resource = ?1", [&key])
            } else {
                tx.execute(
                    "INSERT INTO iam_policies (resource, bindings, etag, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (resource) DO UPDATE SET bindings = excluded.bindings, etag = excluded.etag,
                     updated_at = excluded.updated_at",
                    params![key, json, stored.etag, wharf_store::unix_now()],
                )
            }
            .map_err(wharf_store::StoreError::Query)?;
            Ok(())
        })?;
        self.cache.write().unwrap_or_else(|e| e.into_inner()).insert(key, Arc::new(bindings));
        Ok(stored)
    }

    /// Removes the policy of a resource that is being deleted, so a new resource with the same
    /// name starts with none.
    pub fn forget(&self, resource: &Resource) -> Result<(), PolicyError> {
        let key = resource.to_string();
        self.db.write(|tx| {
            tx.execute("DELETE FROM iam_policies WHERE resource = ?1", [&key]).map_err(wharf_store::StoreError::Query)
        })?;
        self.cache.write().unwrap_or_else(|e| e.into_inner()).remove(&key);
        Ok(())
    }

    /// Whether `caller` (None: no credentials) holds `permission` on `resource`, through a
    /// binding on the resource or on one of its ancestors. The owner holds every permission.
    pub fn authorize(
        &self,
        caller: Option<&Principal>,
        permission: &'static str,
        resource: &Resource,
    ) -> Result<(), AuthorizeError> {
        if caller == Some(&Principal::Owner) {
            return Ok(());
        }
        let member = caller.and_then(Principal::member);
        let mut at = Some(resource.clone());
        while let Some(resource) = at {
            let bindings = self.bindings(&resource)?;
            for (role, members) in bindings.iter() {
                if !roles::role(role).is_some_and(|r| r.grants(permission)) {
                    continue;
                }
                let admitted = members.contains(&Member::AllUsers)
                    || (caller.is_some() && members.contains(&Member::AllAuthenticatedUsers))
                    || member.as_ref().is_some_and(|m| members.contains(m));
                if admitted {
                    return Ok(());
                }
            }
            at = resource.parent();
        }
        Err(AuthorizeError::Denied(Denied {
            permission,
            resource: resource.to_string(),
            principal: caller.map_or_else(|| "anonymous".to_owned(), Principal::name),
        }))
    }

    /// Of `permissions`, those `caller` holds on `resource` (`testIamPermissions`).
    pub fn held(
        &self,
        caller: Option<&Principal>,
        permissions: &[String],
        resource: &Resource,
    ) -> Result<Vec<String>, PolicyError> {
        let mut held = Vec::new();
        for asked in permissions {
            let Some(known) = roles::ROLES.iter().flat_map(|r| r.permissions()).find(|p| p == asked) else { continue };
            match self.authorize(caller, known, resource) {
                Ok(()) => held.push(asked.clone()),
                Err(AuthorizeError::Denied(_)) => {}
                Err(AuthorizeError::Policy(e)) => return Err(e),
            }
        }
        Ok(held)
    }

    fn bindings(&self, resource: &Resource) -> Result<Arc<Bindings>, PolicyError> {
        let key = resource.to_string();
        if let Some(found) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let json: Option<String> = self.db.read(|c| {
            c.query_row("SELECT bindings FROM iam_policies WHERE resource = ?1", [&key], |r| r.get(0)).optional()
        })?;
        let bindings: Bindings = match json {
            Some(json) => {
                serde_json::from_str(&json).map_err(|source| PolicyError::Corrupt { resource: key.clone(), source })?
            }
            None => Bindings::new(),
        };
        let bindings = Arc::new(bindings);
        self.cache.write().unwrap_or_else(|e| e.into_inner()).insert(key, bindings.clone());
        Ok(bindings)
    }
}

/// An authorization that failed: refused, or the policy could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl From<wharf_store::StoreError> for AuthorizeError {
    fn from(e: wharf_store::StoreError) -> Self {
        AuthorizeError::Policy(e.into())
    }
}

fn validate(policy: &Policy) -> Result<Bindings, PolicyError> {
    if !matches!(policy.version, 0 | 1 | 3) {
        return Err(PolicyError::Version(policy.version));
    }
    let mut bindings = Bindings::new();
    for binding in &policy.bindings {
        if roles::role(&binding.role).is_none() {
            return Err(PolicyError::UnknownRole(binding.role.clone()));
        }
        if binding.condition.is_some() {
            return Err(PolicyError::Condition(binding.role.clone()));
        }
        let members = bindings.entry(binding.role.clone()).or_default();
        for member in &binding.members {
            let member =
                Member::parse(member).map_err(|source| PolicyError::Member { role: binding.role.clone(), source })?;
            members.insert(member);
        }
    }
    bindings.retain(|_, members| !members.is_empty());
    Ok(bindings)
}

fn to_policy(bindings: &Bindings) -> Policy {
    let bindings: Vec<Binding> = bindings
        .iter()
        .map(|(role, members)| Binding {
            role: role.clone(),
            members: members.iter().map(ToString::to_string).collect(),
            condition: None,
        })
        .collect();
    let etag = if bindings.is_empty() {
        EMPTY_ETAG.to_owned()
    } else {
        let canonical = serde_json::to_vec(&bindings).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(&Sha256::digest(&canonical)[..8])
    };
    Policy { version: 1, bindings, etag: Some(etag) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::perm;

    fn policies() -> (tempfile::TempDir, Policies) {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, Policies::new(db))
    }

    fn bind(role: &str, members: &[&str]) -> Binding {
        Binding { role: role.into(), members: members.iter().map(|m| (*m).to_owned()).collect(), condition: None }
    }

    #[test]
    fn project_bindings_are_inherited_and_service_bindings_stay_put() {
        let (_dir, p) = policies();
        let project = Resource::project("p");
        let api = Resource::service("p", "us-central1", "api");
        let web = Resource::service("p", "us-central1", "web");
        let ann = Principal::User("ann@example.com".into());
        let sa = Principal::ServiceAccount("caller@p.iam.gserviceaccount.com".into());
        p.set(
            &project,
            &Policy { bindings: vec![bind("roles/run.viewer", &["user:ann@example.com"])], ..Policy::default() },
        )
        .unwrap();
        p.set(&api, &Policy { bindings: vec![bind("roles/run.invoker", &[&sa.name()])], ..Policy::default() }).unwrap();
        p.authorize(Some(&ann), perm::SERVICES_GET, &api).unwrap();
        assert!(p.authorize(Some(&ann), perm::SERVICES_UPDATE, &api).is_err());
        p.authorize(Some(&sa), perm::ROUTES_INVOKE, &api).unwrap();
        assert!(p.authorize(Some(&sa), perm::ROUTES_INVOKE, &web).is_err());
        assert!(p.authorize(None, perm::ROUTES_INVOKE, &api).is_err());
        p.authorize(Some(&Principal::Owner), perm::PROJECTS_SET_IAM_POLICY, &project).unwrap();
        let denied = p.authorize(Some(&sa), perm::ROUTES_INVOKE, &web).unwrap_err().to_string();
        assert_eq!(
            denied,
            "Permission 'run.routes.invoke' denied on resource 'projects/p/locations/us-central1/services/web' (or it may not exist)."
        );
    }

    #[test]
    fn all_users_admits_anyone_and_all_authenticated_users_needs_credentials() {
        let (_dir, p) = policies();
        let open = Resource::service("p", "l", "open");
        let members = Resource::service("p", "l", "members");
        p.set(&open, &Policy { bindings: vec![bind("roles/run.invoker", &["allUsers"])], ..Policy::default() })
            .unwrap();
        p.set(
            &members,
            &Policy { bindings: vec![bind("roles/run.invoker", &["allAuthenticatedUsers"])], ..Policy::default() },
        )
        .unwrap();
        p.authorize(None, perm::ROUTES_INVOKE, &open).unwrap();
        assert!(p.authorize(None, perm::ROUTES_INVOKE, &members).is_err());
        p.authorize(Some(&Principal::User("x@e.com".into())), perm::ROUTES_INVOKE, &members).unwrap();
    }

    #[test]
    fn etags_stop_lost_updates_and_bad_policies_say_what_is_wrong() {
        let (dir, p) = policies();
        let svc = Resource::service("p", "l", "s");
        let first = p.get(&svc).unwrap();
        assert_eq!(first.etag.as_deref(), Some("ACAB"));
        let set =
            p.set(&svc, &Policy { bindings: vec![bind("roles/run.invoker", &["allUsers"])], ..first.clone() }).unwrap();
        assert_ne!(set.etag, first.etag);
        let stale = p.set(&svc, &Policy { bindings: vec![], ..first });
        assert!(matches!(stale, Err(PolicyError::EtagMismatch { .. })));
        assert_eq!(p.get(&svc).unwrap(), set);
        // A fresh cache reads what the database holds.
        let again = Policies::new(Store::open(&dir.path().join("state.db")).unwrap());
        assert_eq!(again.get(&svc).unwrap(), set);

        let bad = |b: Binding| p.set(&svc, &Policy { bindings: vec![b], ..Policy::default() }).unwrap_err().to_string();
        assert!(bad(bind("roles/run.sourceDeveloper", &["allUsers"])).contains("not a role Wharf knows"));
        assert!(bad(bind("roles/run.invoker", &["group:g@example.com"])).contains("not supported"));
        let conditional = Binding {
            condition: Some(serde_json::json!({"expression": "true"})),
            ..bind("roles/run.invoker", &["allUsers"])
        };
        assert!(bad(conditional).contains("conditional"));
        assert_eq!(p.get(&svc).unwrap(), set, "a refused policy changes nothing");
    }

    #[test]
    fn test_iam_permissions_returns_the_held_subset() {
        let (_dir, p) = policies();
        let svc = Resource::service("p", "l", "s");
        p.set(&svc, &Policy { bindings: vec![bind("roles/run.invoker", &["allUsers"])], ..Policy::default() }).unwrap();
        let asked = vec!["run.routes.invoke".to_owned(), "run.services.delete".to_owned(), "no.such.perm".to_owned()];
        assert_eq!(p.held(None, &asked, &svc).unwrap(), vec!["run.routes.invoke".to_owned()]);
    }
}
