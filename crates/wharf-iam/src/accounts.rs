//! The principals an admin creates: users (`user:EMAIL`, who authenticate with a token Wharf
//! prints once and keeps only the hash of, in the `principals` table) and service accounts
//! (`NAME@PROJECT.iam.gserviceaccount.com`, in `service_accounts`, with keys in [`crate::keys`]).
//!
//! Each project also has a default service account ([`crate::default_service_account`]) that
//! exists implicitly: it is listed and described, it can run revisions, and it cannot be
//! deleted or disabled. A disabled or deleted account's credentials stop working at once:
//! [`crate::Iam::authenticate`] asks [`Iam::account_usable`] on every call.

use serde::Serialize;
use wharf_store::rusqlite::{self, OptionalExtension, params};

use crate::{Iam, Member, Principal, Resource, random_bytes, token_hash};

/// The domain of the service accounts users create.
pub const SERVICE_ACCOUNT_DOMAIN: &str = "iam.gserviceaccount.com";

/// Why a user or service account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{what} {name} already exists")]
    AlreadyExists { what: &'static str, name: String },
    #[error("{what} {name} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error(
        "{email} is the project's default service account: it exists implicitly and cannot be deleted, disabled or given keys in Wharf; create your own with `wharf iam service-accounts create NAME`"
    )]
    DefaultAccount { email: String },
    #[error("cannot generate a key for {email}: {reason}")]
    KeyGeneration { email: String, reason: String },
    #[error(transparent)]
    Store(#[from] wharf_store::StoreError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("the system random source failed")]
    Random(#[source] std::io::Error),
}

impl From<rusqlite::Error> for AccountError {
    fn from(e: rusqlite::Error) -> Self {
        AccountError::Store(wharf_store::StoreError::Query(e))
    }
}

/// A user, as `wharf iam users list` shows it (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub email: String,
    pub create_time: String,
}

/// A service account, in IAM v1's JSON shape (`google.iam.admin.v1.ServiceAccount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    pub name: String,
    pub project_id: String,
    pub unique_id: String,
    pub email: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub oauth2_client_id: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl Iam {
    /// Creates a user and returns the token it authenticates with. Only the token's hash is
    /// kept: this is the one time anyone sees it.
    pub fn create_user(&self, email: &str) -> Result<String, AccountError> {
        let Ok(Member::User(email)) = Member::parse(&format!("user:{email}")) else {
            return Err(AccountError::InvalidArgument(format!(
                "{email:?} is not an email address (NAME@DOMAIN, letters, digits and . _ + -)"
            )));
        };
        let token = format!("wharf_u_{}", hex::encode(random_bytes::<24>().map_err(AccountError::Random)?));
        let name = Principal::User(email.clone()).name();
        self.db.write(|tx| {
            let exists = tx.query_row("SELECT 1 FROM principals WHERE name = ?1", [&name], |_| Ok(())).optional()?;
            if exists.is_some() {
                return Err(AccountError::AlreadyExists { what: "user", name: email.clone() });
            }
            tx.execute(
                "INSERT INTO principals (name, token_sha256, role, created_at) VALUES (?1, ?2, 'user', ?3)",
                params![name, token_hash(&token), wharf_store::unix_now()],
            )?;
            Ok(())
        })?;
        tracing::info!(user = %email, "user created");
        Ok(token)
    }

    pub fn list_users(&self) -> Result<Vec<User>, AccountError> {
        Ok(self.db.read(|c| {
            let mut stmt =
                c.prepare("SELECT name, created_at FROM principals WHERE name LIKE 'user:%' ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            rows.map(|row| {
                row.map(|(name, at)| User {
                    email: name.trim_start_matches("user:").to_owned(),
                    create_time: rfc3339(at),
                })
            })
            .collect()
        })?)
    }

    /// Deletes a user: its token and every access token minted for it stop working.
    /// Bindings naming it stay (as in Google's IAM) and admit nobody.
    pub fn delete_user(&self, email: &str) -> Result<(), AccountError> {
        let name = format!("user:{}", email.to_ascii_lowercase());
        self.db.write(|tx| {
            if tx.execute("DELETE FROM principals WHERE name = ?1", [&name])? == 0 {
                return Err(AccountError::NotFound { what: "user", name: email.to_owned() });
            }
            tx.execute("DELETE FROM access_tokens WHERE principal = ?1", [&name])?;
            Ok(())
        })?;
        self.forget_known_tokens();
        tracing::info!(user = %email, "user deleted");
        Ok(())
    }

    /// Creates `ACCOUNT_ID@PROJECT.iam.gserviceaccount.com`. The id follows Google's rule:
    /// 6-30 characters, lower-case letters, digits and hyphens, starting with a letter.
    pub fn create_service_account(
        &self,
        project: &str,
        account_id: &str,
        display_name: &str,
        description: &str,
    ) -> Result<ServiceAccount, AccountError> {
        let valid = (6..=30).contains(&account_id.len())
            && account_id.starts_with(|c: char| c.is_ascii_lowercase())
            && !account_id.ends_with('-')
            && account_id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(AccountError::InvalidArgument(format!(
                "service account id {account_id:?} is not valid: use 6-30 lower-case letters, digits and hyphens, starting with a letter and not ending with a hyphen"
            )));
        }
        if display_name.len() > 100 || description.len() > 256 {
            return Err(AccountError::InvalidArgument(
                "displayName is limited to 100 bytes and description to 256".to_owned(),
            ));
        }
        let email = format!("{account_id}@{project}.{SERVICE_ACCOUNT_DOMAIN}");
        // 21 digits, like Google's unique ids (and OAuth2 client ids).
        let random = u128::from_be_bytes(random_bytes::<16>().map_err(AccountError::Random)?);
        let unique_id = format!("1{:020}", random % 100_000_000_000_000_000_000);
        self.db.write(|tx| {
            let exists =
                tx.query_row("SELECT 1 FROM service_accounts WHERE email = ?1", [&email], |_| Ok(())).optional()?;
            if exists.is_some() {
                return Err(AccountError::AlreadyExists { what: "service account", name: email.clone() });
            }
            tx.execute(
                "INSERT INTO service_accounts (email, project, account_id, display_name, description, unique_id, disabled, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
                params![email, project, account_id, display_name, description, unique_id, wharf_store::unix_now()],
            )?;
            Ok(())
        })?;
        tracing::info!(account = %email, "service account created");
        self.service_account(project, &email)
    }

    /// The project's service accounts, its default one first.
    pub fn list_service_accounts(&self, project: &str) -> Result<Vec<ServiceAccount>, AccountError> {
        let mut accounts = vec![default_account(project)];
        let stored = self.db.read(|c| {
            let mut stmt = c.prepare(&format!("{SELECT_ACCOUNT} WHERE project = ?1 ORDER BY email"))?;
            let rows = stmt.query_map([project], account_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        accounts.extend(stored);
        Ok(accounts)
    }

    /// The service account `email` of `project` (`-` for "the project in the email").
    pub fn service_account(&self, project: &str, email: &str) -> Result<ServiceAccount, AccountError> {
        let email = email.to_ascii_lowercase();
        if project != "-" && email == crate::default_service_account(project) {
            return Ok(default_account(project));
        }
        let found = self
            .db
            .read(|c| c.query_row(&format!("{SELECT_ACCOUNT} WHERE email = ?1"), [&email], account_row).optional())?;
        match found {
            Some(account) if project == "-" || account.project_id == project => Ok(account),
            _ => Err(AccountError::NotFound {
                what: "service account",
                name: format!("projects/{project}/serviceAccounts/{email}"),
            }),
        }
    }

    /// The project a service account lives in, from its email (user-created accounts only).
    pub fn service_account_project(email: &str) -> Option<&str> {
        email.split_once('@')?.1.strip_suffix(SERVICE_ACCOUNT_DOMAIN)?.strip_suffix('.')
    }

    /// Deletes a service account: its keys, the tokens minted for it and its own policy go
    /// with it, so its credentials stop working at once.
    pub fn delete_service_account(&self, project: &str, email: &str) -> Result<(), AccountError> {
        let account = self.service_account(project, email)?;
        if account.unique_id.is_empty() {
            return Err(AccountError::DefaultAccount { email: account.email });
        }
        let principal = Principal::ServiceAccount(account.email.clone()).name();
        self.db.write(|tx| {
            tx.execute("DELETE FROM service_accounts WHERE email = ?1", [&account.email])?;
            tx.execute("DELETE FROM service_account_keys WHERE email = ?1", [&account.email])?;
            tx.execute("DELETE FROM access_tokens WHERE principal = ?1", [&principal])?;
            Ok::<_, AccountError>(())
        })?;
        self.policies.forget(&Resource::service_account(&account.project_id, &account.email))?;
        self.forget_known_tokens();
        tracing::info!(account = %account.email, "service account deleted");
        Ok(())
    }

    /// Disables (or enables again) a service account. While disabled, none of its
    /// credentials authenticate: keys, signed JWTs and access tokens minted before.
    pub fn set_service_account_disabled(&self, project: &str, email: &str, disabled: bool) -> Result<(), AccountError> {
        let account = self.service_account(project, email)?;
        if account.unique_id.is_empty() {
            return Err(AccountError::DefaultAccount { email: account.email });
        }
        self.db.write(|tx| {
            tx.execute("UPDATE service_accounts SET disabled = ?2 WHERE email = ?1", params![account.email, disabled])?;
            Ok::<_, AccountError>(())
        })?;
        self.forget_known_tokens();
        tracing::info!(account = %account.email, disabled, "service account state changed");
        Ok(())
    }

    /// Whether a principal's credentials may be used now: the owner and existing users
    /// always; a service account only if it is a project's default one or exists and is
    /// enabled.
    pub fn account_usable(&self, principal: &Principal) -> Result<bool, wharf_store::StoreError> {
        let Principal::ServiceAccount(email) = principal else { return Ok(true) };
        if email.ends_with("-compute@developer.gserviceaccount.com") {
            return Ok(true);
        }
        let disabled: Option<bool> = self.db.read(|c| {
            c.query_row("SELECT disabled FROM service_accounts WHERE email = ?1", [email], |r| r.get(0)).optional()
        })?;
        Ok(disabled == Some(false))
    }
}

const SELECT_ACCOUNT: &str =
    "SELECT email, project, display_name, description, unique_id, disabled FROM service_accounts";

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ServiceAccount> {
    let email: String = r.get(0)?;
    let project: String = r.get(1)?;
    let unique_id: String = r.get(4)?;
    Ok(ServiceAccount {
        name: format!("projects/{project}/serviceAccounts/{email}"),
        project_id: project,
        oauth2_client_id: unique_id.clone(),
        unique_id,
        email,
        display_name: r.get(2)?,
        description: r.get(3)?,
        disabled: r.get(5)?,
    })
}

/// The implicit default account. Its empty `unique_id` marks it as not stored.
fn default_account(project: &str) -> ServiceAccount {
    let email = crate::default_service_account(project);
    ServiceAccount {
        name: format!("projects/{project}/serviceAccounts/{email}"),
        project_id: project.to_owned(),
        unique_id: String::new(),
        email,
        display_name: "Default compute service account".to_owned(),
        description: String::new(),
        oauth2_client_id: String::new(),
        disabled: false,
    }
}

/// Unix seconds as RFC 3339 (`createTime`, `validAfterTime`).
pub(crate) fn rfc3339(secs: i64) -> String {
    let at = jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{at:.0}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuthError;

    #[test]
    fn users_authenticate_with_their_token_until_deleted() {
        let (_dir, iam, _) = crate::tests::setup();
        let token = iam.create_user("Ann@Example.com").unwrap();
        let ann = Principal::User("ann@example.com".into());
        assert_eq!(iam.authenticate(Some(&format!("Bearer {token}"))).unwrap(), ann);
        assert!(matches!(iam.create_user("ann@example.com"), Err(AccountError::AlreadyExists { .. })));
        assert!(matches!(iam.create_user("not-an-email"), Err(AccountError::InvalidArgument(_))));
        let minted = iam.mint_access_token(&ann, 3600).unwrap();
        assert_eq!(iam.list_users().unwrap()[0].email, "ann@example.com");
        iam.delete_user("ann@example.com").unwrap();
        for t in [token, minted.token] {
            assert!(matches!(iam.authenticate(Some(&format!("Bearer {t}"))), Err(AuthError::Invalid(_))));
        }
        assert!(matches!(iam.delete_user("ann@example.com"), Err(AccountError::NotFound { .. })));
    }

    #[test]
    fn service_accounts_are_googles_shape_and_their_tokens_die_with_them() {
        let (_dir, iam, _) = crate::tests::setup();
        let sa = iam.create_service_account("proj", "my-api-sa", "My API", "").unwrap();
        assert_eq!(sa.email, "my-api-sa@proj.iam.gserviceaccount.com");
        assert_eq!(sa.unique_id.len(), 21);
        assert_eq!(Iam::service_account_project(&sa.email), Some("proj"));
        let listed: Vec<String> = iam.list_service_accounts("proj").unwrap().into_iter().map(|a| a.email).collect();
        assert_eq!(listed, [crate::default_service_account("proj"), sa.email.clone()]);
        assert!(matches!(iam.create_service_account("proj", "bad_id", "", ""), Err(AccountError::InvalidArgument(_))));
        assert!(matches!(iam.service_account("other", &sa.email), Err(AccountError::NotFound { .. })));
        let default = crate::default_service_account("proj");
        assert!(matches!(iam.delete_service_account("proj", &default), Err(AccountError::DefaultAccount { .. })));

        let principal = Principal::ServiceAccount(sa.email.clone());
        let token = iam.mint_access_token(&principal, 3600).unwrap().token;
        iam.set_service_account_disabled("proj", &sa.email, true).unwrap();
        assert!(matches!(iam.authenticate(Some(&format!("Bearer {token}"))), Err(AuthError::AccountDisabled(_))));
        iam.set_service_account_disabled("proj", &sa.email, false).unwrap();
        assert_eq!(iam.authenticate(Some(&format!("Bearer {token}"))).unwrap(), principal);
        iam.delete_service_account("proj", &sa.email).unwrap();
        assert!(iam.authenticate(Some(&format!("Bearer {token}"))).is_err_and(|e| matches!(e, AuthError::Invalid(_))));
    }
}
