//! The predefined roles Wharf knows, with Cloud Run's names and permission sets, and the
//! permissions themselves. A role is a fixed list: Wharf has no custom roles, and a binding
//! naming any other role is refused by name.

/// Every permission Wharf checks. Handlers name one of these; [`ROLES`] grant them.
pub mod perm {
    pub const SERVICES_GET: &str = "run.services.get";
    pub const SERVICES_LIST: &str = "run.services.list";
    pub const SERVICES_CREATE: &str = "run.services.create";
    pub const SERVICES_UPDATE: &str = "run.services.update";
    pub const SERVICES_DELETE: &str = "run.services.delete";
    pub const SERVICES_GET_IAM_POLICY: &str = "run.services.getIamPolicy";
    pub const SERVICES_SET_IAM_POLICY: &str = "run.services.setIamPolicy";
    pub const DOMAIN_MAPPINGS_GET: &str = "run.domainmappings.get";
    pub const DOMAIN_MAPPINGS_LIST: &str = "run.domainmappings.list";
    pub const DOMAIN_MAPPINGS_CREATE: &str = "run.domainmappings.create";
    pub const DOMAIN_MAPPINGS_DELETE: &str = "run.domainmappings.delete";
    pub const REVISIONS_GET: &str = "run.revisions.get";
    pub const REVISIONS_LIST: &str = "run.revisions.list";
    pub const REVISIONS_DELETE: &str = "run.revisions.delete";
    pub const ROUTES_INVOKE: &str = "run.routes.invoke";
    pub const JOBS_GET: &str = "run.jobs.get";
    pub const JOBS_LIST: &str = "run.jobs.list";
    pub const JOBS_CREATE: &str = "run.jobs.create";
    pub const JOBS_UPDATE: &str = "run.jobs.update";
    pub const JOBS_DELETE: &str = "run.jobs.delete";
    pub const JOBS_RUN: &str = "run.jobs.run";
    pub const JOBS_RUN_WITH_OVERRIDES: &str = "run.jobs.runWithOverrides";
    pub const JOBS_GET_IAM_POLICY: &str = "run.jobs.getIamPolicy";
    pub const JOBS_SET_IAM_POLICY: &str = "run.jobs.setIamPolicy";
    pub const EXECUTIONS_GET: &str = "run.executions.get";
    pub const EXECUTIONS_LIST: &str = "run.executions.list";
    pub const EXECUTIONS_DELETE: &str = "run.executions.delete";
    pub const EXECUTIONS_CANCEL: &str = "run.executions.cancel";
    pub const TASKS_GET: &str = "run.tasks.get";
    pub const TASKS_LIST: &str = "run.tasks.list";
    pub const OPERATIONS_GET: &str = "run.operations.get";
    pub const OPERATIONS_LIST: &str = "run.operations.list";
    pub const OPERATIONS_DELETE: &str = "run.operations.delete";
    pub const LOCATIONS_LIST: &str = "run.locations.list";
    /// Source builds (`wharf builds`, `--source`): submitting one, and reading them.
    pub const BUILDS_CREATE: &str = "run.builds.create";
    pub const BUILDS_GET: &str = "run.builds.get";
    pub const BUILDS_LIST: &str = "run.builds.list";

    pub const PROJECTS_GET: &str = "resourcemanager.projects.get";
    pub const PROJECTS_GET_IAM_POLICY: &str = "resourcemanager.projects.getIamPolicy";
    pub const PROJECTS_SET_IAM_POLICY: &str = "resourcemanager.projects.setIamPolicy";

    pub const SERVICE_ACCOUNTS_ACT_AS: &str = "iam.serviceAccounts.actAs";
    pub const SERVICE_ACCOUNTS_GET: &str = "iam.serviceAccounts.get";
    pub const SERVICE_ACCOUNTS_LIST: &str = "iam.serviceAccounts.list";
    pub const SERVICE_ACCOUNTS_CREATE: &str = "iam.serviceAccounts.create";
    pub const SERVICE_ACCOUNTS_DELETE: &str = "iam.serviceAccounts.delete";
    pub const SERVICE_ACCOUNTS_DISABLE: &str = "iam.serviceAccounts.disable";
    pub const SERVICE_ACCOUNTS_GET_IAM_POLICY: &str = "iam.serviceAccounts.getIamPolicy";
    pub const SERVICE_ACCOUNTS_SET_IAM_POLICY: &str = "iam.serviceAccounts.setIamPolicy";
    pub const SERVICE_ACCOUNTS_GET_ACCESS_TOKEN: &str = "iam.serviceAccounts.getAccessToken";
    pub const SERVICE_ACCOUNTS_GET_OPENID_TOKEN: &str = "iam.serviceAccounts.getOpenIdToken";
    pub const SERVICE_ACCOUNTS_SIGN_JWT: &str = "iam.serviceAccounts.signJwt";
    pub const SERVICE_ACCOUNT_KEYS_CREATE: &str = "iam.serviceAccountKeys.create";
    pub const SERVICE_ACCOUNT_KEYS_DELETE: &str = "iam.serviceAccountKeys.delete";
    pub const SERVICE_ACCOUNT_KEYS_LIST: &str = "iam.serviceAccountKeys.list";

    pub const SECRETS_CREATE: &str = "secretmanager.secrets.create";
    pub const SECRETS_GET: &str = "secretmanager.secrets.get";
    pub const SECRETS_LIST: &str = "secretmanager.secrets.list";
    pub const SECRETS_UPDATE: &str = "secretmanager.secrets.update";
    pub const SECRETS_DELETE: &str = "secretmanager.secrets.delete";
    pub const SECRETS_GET_IAM_POLICY: &str = "secretmanager.secrets.getIamPolicy";
    pub const SECRETS_SET_IAM_POLICY: &str = "secretmanager.secrets.setIamPolicy";
    pub const VERSIONS_ADD: &str = "secretmanager.versions.add";
    pub const VERSIONS_GET: &str = "secretmanager.versions.get";
    pub const VERSIONS_LIST: &str = "secretmanager.versions.list";
    pub const VERSIONS_ACCESS: &str = "secretmanager.versions.access";
    pub const VERSIONS_ENABLE: &str = "secretmanager.versions.enable";
    pub const VERSIONS_DISABLE: &str = "secretmanager.versions.disable";
    pub const VERSIONS_DESTROY: &str = "secretmanager.versions.destroy";

    /// Wharf's own image store and registry (Artifact Registry's names).
    pub const IMAGES_DOWNLOAD: &str = "artifactregistry.repositories.downloadArtifacts";
    pub const IMAGES_UPLOAD: &str = "artifactregistry.repositories.uploadArtifacts";
    pub const IMAGES_DELETE: &str = "artifactregistry.repositories.deleteArtifacts";
    pub const LOGS_LIST: &str = "logging.logEntries.list";
}

use perm::*;

const RUN_READ: &[&str] = &[
    SERVICES_GET,
    SERVICES_LIST,
    SERVICES_GET_IAM_POLICY,
    DOMAIN_MAPPINGS_GET,
    DOMAIN_MAPPINGS_LIST,
    REVISIONS_GET,
    REVISIONS_LIST,
    JOBS_GET,
    JOBS_LIST,
    JOBS_GET_IAM_POLICY,
    EXECUTIONS_GET,
    EXECUTIONS_LIST,
    TASKS_GET,
    TASKS_LIST,
    OPERATIONS_GET,
    OPERATIONS_LIST,
    LOCATIONS_LIST,
    PROJECTS_GET,
    BUILDS_GET,
    BUILDS_LIST,
];
const RUN_WRITE: &[&str] = &[
    SERVICES_CREATE,
    SERVICES_UPDATE,
    SERVICES_DELETE,
    DOMAIN_MAPPINGS_CREATE,
    DOMAIN_MAPPINGS_DELETE,
    REVISIONS_DELETE,
    JOBS_CREATE,
    JOBS_UPDATE,
    JOBS_DELETE,
    JOBS_RUN,
    JOBS_RUN_WITH_OVERRIDES,
    EXECUTIONS_DELETE,
    EXECUTIONS_CANCEL,
    OPERATIONS_DELETE,
    BUILDS_CREATE,
];
const RUN_IAM: &[&str] = &[SERVICES_SET_IAM_POLICY, JOBS_SET_IAM_POLICY];
const INVOKE: &[&str] = &[ROUTES_INVOKE, JOBS_RUN, JOBS_RUN_WITH_OVERRIDES];
const SA_USE: &[&str] = &[SERVICE_ACCOUNTS_ACT_AS, SERVICE_ACCOUNTS_GET, SERVICE_ACCOUNTS_LIST];
const SA_TOKENS: &[&str] =
    &[SERVICE_ACCOUNTS_GET_ACCESS_TOKEN, SERVICE_ACCOUNTS_GET_OPENID_TOKEN, SERVICE_ACCOUNTS_SIGN_JWT];
const SA_ADMIN: &[&str] = &[
    SERVICE_ACCOUNTS_CREATE,
    SERVICE_ACCOUNTS_DELETE,
    SERVICE_ACCOUNTS_DISABLE,
    SERVICE_ACCOUNTS_GET_IAM_POLICY,
    SERVICE_ACCOUNT_KEYS_CREATE,
    SERVICE_ACCOUNT_KEYS_DELETE,
    SERVICE_ACCOUNT_KEYS_LIST,
];
const SECRETS_READ: &[&str] = &[SECRETS_GET, SECRETS_LIST, SECRETS_GET_IAM_POLICY, VERSIONS_GET, VERSIONS_LIST];
const SECRETS_WRITE: &[&str] = &[
    SECRETS_CREATE,
    SECRETS_UPDATE,
    SECRETS_DELETE,
    VERSIONS_ADD,
    VERSIONS_ENABLE,
    VERSIONS_DISABLE,
    VERSIONS_DESTROY,
];
const IMAGES_READ: &[&str] = &[IMAGES_DOWNLOAD, LOGS_LIST];
const IMAGES_WRITE: &[&str] = &[IMAGES_UPLOAD, IMAGES_DELETE];

/// A predefined role: its name and the permission groups it grants.
#[derive(Debug)]
pub struct Role {
    pub name: &'static str,
    pub title: &'static str,
    grants: &'static [&'static [&'static str]],
}

impl Role {
    pub fn grants(&self, permission: &str) -> bool {
        self.grants.iter().any(|group| group.contains(&permission))
    }

    pub fn permissions(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.grants.iter().flat_map(|group| group.iter().copied())
    }
}

/// Every role a binding may name.
pub const ROLES: &[Role] = &[
    Role {
        name: "roles/owner",
        title: "Owner",
        grants: &[
            RUN_READ,
            RUN_WRITE,
            RUN_IAM,
            INVOKE,
            SA_USE,
            SA_TOKENS,
            SA_ADMIN,
            SECRETS_READ,
            SECRETS_WRITE,
            &[VERSIONS_ACCESS, SECRETS_SET_IAM_POLICY, PROJECTS_GET_IAM_POLICY, PROJECTS_SET_IAM_POLICY],
            &[SERVICE_ACCOUNTS_SET_IAM_POLICY],
            IMAGES_READ,
            IMAGES_WRITE,
        ],
    },
    Role {
        name: "roles/editor",
        title: "Editor",
        grants: &[
            RUN_READ,
            RUN_WRITE,
            INVOKE,
            SA_USE,
            SA_ADMIN,
            SECRETS_READ,
            SECRETS_WRITE,
            &[VERSIONS_ACCESS, PROJECTS_GET_IAM_POLICY],
            IMAGES_READ,
            IMAGES_WRITE,
        ],
    },
    Role {
        name: "roles/viewer",
        title: "Viewer",
        grants: &[
            RUN_READ,
            SECRETS_READ,
            &[PROJECTS_GET_IAM_POLICY, SERVICE_ACCOUNTS_GET, SERVICE_ACCOUNTS_LIST],
            IMAGES_READ,
        ],
    },
    Role {
        name: "roles/run.admin",
        title: "Cloud Run Admin",
        grants: &[RUN_READ, RUN_WRITE, RUN_IAM, INVOKE, IMAGES_READ, IMAGES_WRITE],
    },
    Role {
        name: "roles/run.developer",
        title: "Cloud Run Developer",
        grants: &[RUN_READ, RUN_WRITE, IMAGES_READ, IMAGES_WRITE],
    },
    Role { name: "roles/run.viewer", title: "Cloud Run Viewer", grants: &[RUN_READ, IMAGES_READ] },
    Role { name: "roles/run.invoker", title: "Cloud Run Invoker", grants: &[INVOKE] },
    Role { name: "roles/run.servicesInvoker", title: "Cloud Run Service Invoker", grants: &[&[ROUTES_INVOKE]] },
    Role { name: "roles/iam.serviceAccountUser", title: "Service Account User", grants: &[SA_USE] },
    Role {
        name: "roles/iam.serviceAccountTokenCreator",
        title: "Service Account Token Creator",
        grants: &[SA_TOKENS, &[SERVICE_ACCOUNTS_GET]],
    },
    Role {
        name: "roles/secretmanager.secretAccessor",
        title: "Secret Manager Secret Accessor",
        grants: &[&[VERSIONS_ACCESS]],
    },
    Role {
        name: "roles/secretmanager.admin",
        title: "Secret Manager Admin",
        grants: &[SECRETS_READ, SECRETS_WRITE, &[VERSIONS_ACCESS, SECRETS_SET_IAM_POLICY]],
    },
];

/// The role with this name, if Wharf knows it.
pub fn role(name: &str) -> Option<&'static Role> {
    ROLES.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boundaries_cloud_run_users_rely_on() {
        let r = |n| role(n).unwrap();
        assert!(r("roles/run.invoker").grants(ROUTES_INVOKE));
        assert!(!r("roles/run.invoker").grants(SERVICES_GET));
        assert!(!r("roles/run.servicesInvoker").grants(JOBS_RUN));
        assert!(r("roles/run.viewer").grants(SERVICES_GET) && !r("roles/run.viewer").grants(SERVICES_UPDATE));
        assert!(r("roles/run.developer").grants(SERVICES_UPDATE));
        assert!(r("roles/run.developer").grants(BUILDS_CREATE) && !r("roles/run.viewer").grants(BUILDS_CREATE));
        assert!(!r("roles/run.developer").grants(SERVICES_SET_IAM_POLICY));
        assert!(!r("roles/run.developer").grants(ROUTES_INVOKE));
        assert!(r("roles/run.admin").grants(SERVICES_SET_IAM_POLICY));
        assert!(!r("roles/run.admin").grants(SERVICE_ACCOUNTS_ACT_AS));
        assert!(r("roles/iam.serviceAccountUser").grants(SERVICE_ACCOUNTS_ACT_AS));
        assert!(!r("roles/editor").grants(PROJECTS_SET_IAM_POLICY));
        assert!(r("roles/secretmanager.secretAccessor").grants(VERSIONS_ACCESS));
        assert!(!r("roles/viewer").grants(VERSIONS_ACCESS));
        assert!(role("roles/run.sourceDeveloper").is_none());
    }
}
