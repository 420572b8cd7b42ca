//! Secret Manager: secrets, their numbered versions and the payloads, stored encrypted.
//!
//! [`SecretManager`] owns the `secrets` and `secret_versions` tables and the key-encryption
//! key ([`envelope`]). A payload is encrypted before it reaches SQLite and decrypted only by
//! [`SecretManager::access`] (the `:access` RPC, and instance starts that deliver secrets); no
//! other call returns or logs one. Who may call what is the API layer's business (IAM, in
//! `wharf-iam`); this crate knows nothing of HTTP or callers.
//!
//! Semantics follow Google's Secret Manager v1: a version is ENABLED, DISABLED or DESTROYED
//! (destroying drops the ciphertext and its key for good); `latest` names the most recently
//! created version; payloads are at most 64 KiB; a client may send `dataCrc32c` with a payload,
//! which is checked, and every access returns the payload's CRC32C.

pub mod envelope;
pub mod resource;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use wharf_api::Code;
use wharf_store::Store;
use wharf_store::rusqlite::{self, OptionalExtension, params};
use zeroize::Zeroizing;

pub use envelope::{KeyError, KeyFile};
pub use resource::{AccessResponse, Secret, SecretInput, SecretVersion, VersionState};

/// The largest payload a version may hold, as on Google's Secret Manager.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// The key file's name inside the data directory when `--secrets-key-file` is not given.
pub const DEFAULT_KEY_FILE: &str = "secrets.kek";

/// Why a Secret Manager call failed. [`SecretsError::code`] classifies it once.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{message}")]
    InvalidArgument { field: String, message: String },
    #[error("Secret [{0}] not found or has no versions.")]
    SecretNotFound(String),
    #[error("Secret Version [{0}] not found.")]
    VersionNotFound(String),
    #[error("Secret [{0}] already exists.")]
    AlreadyExists(String),
    #[error("Secret Version [{name}] is in {state} state.")]
    NotAccessible { name: String, state: &'static str },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(
        "{resource} was changed since it was read (etag {given} is not the current {current}); read it again and retry"
    )]
    EtagMismatch { resource: String, given: String, current: String },
    #[error("the secrets key-encryption key failed")]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] wharf_store::StoreError),
}

impl From<rusqlite::Error> for SecretsError {
    fn from(e: rusqlite::Error) -> Self {
        SecretsError::Store(e.into())
    }
}

impl SecretsError {
    /// The `google.rpc.Code` the API answers with.
    pub fn code(&self) -> Code {
        match self {
            SecretsError::InvalidArgument { .. } => Code::InvalidArgument,
            SecretsError::SecretNotFound(_) | SecretsError::VersionNotFound(_) => Code::NotFound,
            SecretsError::AlreadyExists(_) => Code::AlreadyExists,
            SecretsError::NotAccessible { .. } | SecretsError::FailedPrecondition(_) => Code::FailedPrecondition,
            SecretsError::EtagMismatch { .. } => Code::Aborted,
            SecretsError::Key(_) | SecretsError::Store(_) => Code::Internal,
        }
    }

    /// The request field the error is about, for `google.rpc.BadRequest`.
    pub fn field(&self) -> Option<&str> {
        match self {
            SecretsError::InvalidArgument { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Which version a request names: a number, or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Latest,
    Number(i64),
}

impl VersionRef {
    pub fn parse(text: &str) -> Result<VersionRef, SecretsError> {
        if text == "latest" {
            return Ok(VersionRef::Latest);
        }
        match text.parse::<i64>() {
            Ok(n) if n > 0 && !text.starts_with('+') => Ok(VersionRef::Number(n)),
            _ => Err(resource::invalid(
                "version",
                &format!("{text:?} is not a version: use a number from 1, or 'latest'"),
            )),
        }
    }
}

impl std::fmt::Display for VersionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionRef::Latest => f.write_str("latest"),
            VersionRef::Number(n) => write!(f, "{n}"),
        }
    }
}

/// A state change of a version (`:enable`, `:disable`, `:destroy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionAction {
    Enable,
    Disable,
    Destroy,
}

/// One page of a list.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
    pub total_size: i64,
}

/// A payload read from a version: its bytes (wiped when dropped) and their CRC32C.
pub struct Payload {
    pub version: String,
    pub data: Zeroizing<Vec<u8>>,
    pub crc32c: u32,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload").field("version", &self.version).field("bytes", &self.data.len()).finish()
    }
}

impl Payload {
    /// The `:access` answer (the payload in base64).
    pub fn to_response(&self) -> AccessResponse {
        AccessResponse {
            name: self.version.clone(),
            payload: resource::PayloadJson {
                data: base64::engine::general_purpose::STANDARD.encode(self.data.as_slice()),
                data_crc32c: self.crc32c.to_string(),
            },
        }
    }
}

/// How many data keys a rotation re-wrapped.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateReport {
    pub old_key_id: String,
    pub new_key_id: String,
    pub rewrapped: usize,
}

/// Secrets, versions and the key that protects them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SecretManager {
    db: Store,
    keys: Arc<Mutex<KeyFile>>,
}

/// The most items one page of a list holds.
const MAX_PAGE_SIZE: usize = 25_000;
const DEFAULT_PAGE_SIZE: usize = 1_000;

impl SecretManager {
    /// Opens the store with the key file at `key_file` (created when `create_key` is set and it
    /// is missing). A rotation interrupted by a crash is finished or abandoned here, by which
    /// key the database's rows name.
    pub fn open(db: Store, key_file: &Path, create_key: bool) -> Result<SecretManager, SecretsError> {
        let mut keys = KeyFile::open(key_file, create_key)?;
        let used: Vec<String> = db.read(|c| {
            let mut stmt = c.prepare("SELECT DISTINCT kek_id FROM secret_versions WHERE kek_id IS NOT NULL")?;
            stmt.query_map([], |r| r.get(0))?.collect()
        })?;
        if let Some(staged) = &keys.staged {
            if used.iter().any(|id| id == staged.id()) {
                keys.finish_rotation()?;
            } else {
                keys.abandon_rotation()?;
            }
        }
        for id in &used {
            keys.key(id)?;
        }
        Ok(SecretManager { db, keys: Arc::new(Mutex::new(keys)) })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, KeyFile> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates secret `id` in `project` with no versions.
    #[tracing::instrument(skip(self, input), fields(secret = %id))]
    pub fn create_secret(&self, project: &str, id: &str, input: &SecretInput) -> Result<Secret, SecretsError> {
        validate_secret_id(id)?;
        let name = secret_name(project, id);
        let create_time = now();
        let etag = new_etag();
        self.db.write(|tx| {
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM secrets WHERE project = ?1 AND name = ?2", params![project, id], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return Err(SecretsError::AlreadyExists(name.clone()));
            }
            tx.execute(
                "INSERT INTO secrets (project, name, labels, annotations, create_time, etag, next_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
                params![project, id, json(&input.labels), json(&input.annotations), create_time, etag],
            )?;
            Ok(())
        })?;
        self.get_secret(project, id)
    }

    pub fn get_secret(&self, project: &str, id: &str) -> Result<Secret, SecretsError> {
        self.db
            .read(|c| {
                c.query_row(
                    "SELECT name, labels, annotations, create_time, etag FROM secrets WHERE project = ?1 AND name = ?2",
                    params![project, id],
                    |r| secret_row(project, r),
                )
                .optional()
            })?
            .ok_or_else(|| SecretsError::SecretNotFound(secret_name(project, id)))
    }

    /// Secrets of `project` in name order, `page_size` (0: the default) after `page_token`.
    pub fn list_secrets(
        &self,
        project: &str,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page<Secret>, SecretsError> {
        let after = decode_token(page_token)?;
        let limit = page_limit(page_size);
        let (mut items, total_size) = self.db.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, labels, annotations, create_time, etag FROM secrets
                 WHERE project = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
            )?;
            let items = stmt
                .query_map(params![project, after, limit_sql(limit)], |r| secret_row(project, r))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let total: i64 = c.query_row("SELECT COUNT(*) FROM secrets WHERE project = ?1", [project], |r| r.get(0))?;
            Ok((items, total))
        })?;
        let next_page_token = next_token(&mut items, limit, |s: &Secret| last_segment(&s.name).to_owned());
        Ok(Page { items, next_page_token, total_size })
    }

    /// Replaces the fields `mask` names (`labels`, `annotations`).
    #[tracing::instrument(skip(self, input), fields(secret = %id))]
    pub fn update_secret(
        &self,
        project: &str,
        id: &str,
        input: &SecretInput,
        mask: &[String],
    ) -> Result<Secret, SecretsError> {
        if mask.is_empty() {
            return Err(resource::invalid(
                "updateMask",
                "is required: name the fields to change, e.g. ?updateMask=labels,annotations",
            ));
        }
        for field in mask {
            if !matches!(field.as_str(), "labels" | "annotations") {
                return Err(resource::invalid(
                    "updateMask",
                    &format!("names {field:?}: Wharf updates only labels and annotations of a secret"),
                ));
            }
        }
        let current = self.get_secret(project, id)?;
        check_etag(input.etag.as_deref(), &current.etag, &current.name)?;
        let labels = if mask.iter().any(|f| f == "labels") { &input.labels } else { &current.labels };
        let annotations =
            if mask.iter().any(|f| f == "annotations") { &input.annotations } else { &current.annotations };
        self.db.write(|tx| {
            let changed = tx.execute(
                "UPDATE secrets SET labels = ?3, annotations = ?4, etag = ?5 WHERE project = ?1 AND name = ?2 AND etag = ?6",
                params![project, id, json(labels), json(annotations), new_etag(), current.etag],
            )?;
            if changed == 0 {
                return Err(SecretsError::EtagMismatch {
                    resource: current.name.clone(),
                    given: current.etag.clone(),
                    current: "a newer one".into(),
                });
            }
            Ok(())
        })?;
        self.get_secret(project, id)
    }

    /// Deletes a secret and all its versions (ciphertexts included).
    #[tracing::instrument(skip(self))]
    pub fn delete_secret(&self, project: &str, id: &str, etag: Option<&str>) -> Result<(), SecretsError> {
        let current = self.get_secret(project, id)?;
        check_etag(etag, &current.etag, &current.name)?;
        self.db.write(|tx| {
            tx.execute("DELETE FROM secret_versions WHERE project = ?1 AND secret = ?2", params![project, id])?;
            tx.execute("DELETE FROM secrets WHERE project = ?1 AND name = ?2", params![project, id])?;
            Ok(())
        })
    }

    /// Adds a version holding `data`. When `crc32c` is given it must be the payload's.
    #[tracing::instrument(skip(self, data, crc32c), fields(bytes = data.len()))]
    pub fn add_version(
        &self,
        project: &str,
        id: &str,
        data: &[u8],
        crc32c: Option<u32>,
    ) -> Result<SecretVersion, SecretsError> {
        if data.len() > MAX_PAYLOAD_BYTES {
            return Err(resource::invalid(
                "payload.data",
                &format!("is {} bytes; a secret version holds at most {MAX_PAYLOAD_BYTES} bytes (64 KiB)", data.len()),
            ));
        }
        let actual = crc32c::crc32c(data);
        if let Some(sent) = crc32c
            && sent != actual
        {
            return Err(resource::invalid(
                "payload.dataCrc32c",
                "does not match the CRC32C of payload.data: the payload was corrupted on the way; send it again",
            ));
        }
        let keys = self.keys();
        let number = self.db.write(|tx| {
            let next: Option<i64> = tx
                .query_row(
                    "SELECT next_version FROM secrets WHERE project = ?1 AND name = ?2",
                    params![project, id],
                    |r| r.get(0),
                )
                .optional()?;
            let number = next.ok_or_else(|| SecretsError::SecretNotFound(secret_name(project, id)))?;
            let name = version_name(project, id, number);
            let sealed = envelope::seal_payload(&keys.current, data, &name)?;
            tx.execute(
                "INSERT INTO secret_versions (project, secret, version, state, create_time, etag, crc32c,
                     client_checksum, kek_id, wrapped_key, ciphertext)
                 VALUES (?1, ?2, ?3, 'ENABLED', ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    project,
                    id,
                    number,
                    now(),
                    new_etag(),
                    i64::from(actual),
                    crc32c.is_some(),
                    sealed.kek_id,
                    sealed.wrapped_key,
                    sealed.ciphertext
                ],
            )?;
            tx.execute(
                "UPDATE secrets SET next_version = ?3 WHERE project = ?1 AND name = ?2",
                params![project, id, number + 1],
            )?;
            Ok::<_, SecretsError>(number)
        })?;
        drop(keys);
        self.get_version(project, id, VersionRef::Number(number))
    }

    /// The version `version` names; `latest` is the most recently created one.
    pub fn get_version(&self, project: &str, id: &str, version: VersionRef) -> Result<SecretVersion, SecretsError> {
        let number = self.resolve(project, id, version)?;
        self.db
            .read(|c| {
                c.query_row(
                    &format!("{VERSION_COLUMNS} WHERE project = ?1 AND secret = ?2 AND version = ?3"),
                    params![project, id, number],
                    |r| version_row(project, id, r),
                )
                .optional()
            })?
            .ok_or_else(|| SecretsError::VersionNotFound(version_name(project, id, number)))
    }

    /// Versions of a secret, newest first.
    pub fn list_versions(
        &self,
        project: &str,
        id: &str,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page<SecretVersion>, SecretsError> {
        self.get_secret(project, id)?;
        let before = if page_token.is_empty() {
            i64::MAX
        } else {
            decode_token(page_token)?.parse::<i64>().map_err(|_| bad_token())?
        };
        let limit = page_limit(page_size);
        let (mut items, total_size) = self.db.read(|c| {
            let mut stmt = c.prepare(&format!(
                "{VERSION_COLUMNS} WHERE project = ?1 AND secret = ?2 AND version < ?3 ORDER BY version DESC LIMIT ?4"
            ))?;
            let items = stmt
                .query_map(params![project, id, before, limit_sql(limit)], |r| version_row(project, id, r))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let total: i64 = c.query_row(
                "SELECT COUNT(*) FROM secret_versions WHERE project = ?1 AND secret = ?2",
                params![project, id],
                |r| r.get(0),
            )?;
            Ok((items, total))
        })?;
        let next_page_token = next_token(&mut items, limit, |v: &SecretVersion| last_segment(&v.name).to_owned());
        Ok(Page { items, next_page_token, total_size })
    }

    /// The payload of an ENABLED version. A DISABLED or DESTROYED one is refused with
    /// FAILED_PRECONDITION naming it.
    #[tracing::instrument(skip(self), fields(version = %version))]
    pub fn access(&self, project: &str, id: &str, version: VersionRef) -> Result<Payload, SecretsError> {
        let number = self.resolve(project, id, version)?;
        let name = version_name(project, id, number);
        type Row = (String, Option<i64>, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
        let row: Option<Row> = self.db.read(|c| {
            c.query_row(
                "SELECT state, crc32c, kek_id, wrapped_key, ciphertext FROM secret_versions
                 WHERE project = ?1 AND secret = ?2 AND version = ?3",
                params![project, id, number],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
        })?;
        let (state, crc, kek_id, wrapped_key, ciphertext) =
            row.ok_or_else(|| SecretsError::VersionNotFound(name.clone()))?;
        match VersionState::parse(&state) {
            Some(VersionState::Enabled) => {}
            Some(other) => return Err(SecretsError::NotAccessible { name, state: other.as_str() }),
            None => return Err(SecretsError::FailedPrecondition(format!("{name} has an unknown state {state:?}"))),
        }
        let (Some(kek_id), Some(wrapped_key), Some(ciphertext)) = (kek_id, wrapped_key, ciphertext) else {
            return Err(SecretsError::NotAccessible { name, state: VersionState::Destroyed.as_str() });
        };
        let sealed = envelope::Sealed { ciphertext, wrapped_key, kek_id };
        let data = {
            let keys = self.keys();
            envelope::open_payload(keys.key(&sealed.kek_id)?, &sealed, &name)?
        };
        let crc32c = crc.and_then(|c| u32::try_from(c).ok()).unwrap_or_else(|| crc32c::crc32c(&data));
        Ok(Payload { version: name, data, crc32c })
    }

    /// Enables, disables or destroys a version. Destroying drops its ciphertext and data key.
    #[tracing::instrument(skip(self))]
    pub fn change_state(
        &self,
        project: &str,
        id: &str,
        version: VersionRef,
        action: VersionAction,
        etag: Option<&str>,
    ) -> Result<SecretVersion, SecretsError> {
        let current = self.get_version(project, id, version)?;
        let number = last_segment(&current.name).parse::<i64>().unwrap_or_default();
        check_etag(etag, &current.etag, &current.name)?;
        if current.state == VersionState::Destroyed {
            return Err(SecretsError::NotAccessible { name: current.name, state: VersionState::Destroyed.as_str() });
        }
        self.db.write(|tx| {
            match action {
                VersionAction::Enable | VersionAction::Disable => {
                    let state = if action == VersionAction::Enable { "ENABLED" } else { "DISABLED" };
                    tx.execute(
                        "UPDATE secret_versions SET state = ?4, etag = ?5 WHERE project = ?1 AND secret = ?2 AND version = ?3",
                        params![project, id, number, state, new_etag()],
                    )?;
                }
                VersionAction::Destroy => {
                    tx.execute(
                        "UPDATE secret_versions SET state = 'DESTROYED', etag = ?4, destroy_time = ?5,
                             kek_id = NULL, wrapped_key = NULL, ciphertext = NULL
                         WHERE project = ?1 AND secret = ?2 AND version = ?3",
                        params![project, id, number, new_etag(), now()],
                    )?;
                }
            }
            Ok::<_, SecretsError>(())
        })?;
        self.get_version(project, id, VersionRef::Number(number))
    }

    /// Replaces the key-encryption key with a new random one and re-wraps every data key
    /// under it, in one transaction; the new key replaces the key file after the commit.
    #[tracing::instrument(skip(self))]
    pub fn rotate_key(&self) -> Result<RotateReport, SecretsError> {
        let mut keys = self.keys();
        let old_key_id = keys.current.id().to_owned();
        let new_key_id = keys.stage_rotation()?.id().to_owned();
        let rewrapped = self.db.write(|tx| {
            type Row = (String, String, i64, String, Vec<u8>);
            let rows: Vec<Row> = {
                let mut stmt = tx.prepare(
                    "SELECT project, secret, version, kek_id, wrapped_key FROM secret_versions WHERE wrapped_key IS NOT NULL",
                )?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let to = keys.key(&new_key_id)?;
            for (project, secret, version, kek_id, wrapped) in &rows {
                let name = version_name(project, secret, *version);
                let rewrapped = envelope::rewrap(keys.key(kek_id)?, to, wrapped, &name)?;
                tx.execute(
                    "UPDATE secret_versions SET kek_id = ?4, wrapped_key = ?5 WHERE project = ?1 AND secret = ?2 AND version = ?3",
                    params![project, secret, version, new_key_id, rewrapped],
                )?;
            }
            Ok::<_, SecretsError>(rows.len())
        });
        match rewrapped {
            Ok(rewrapped) => {
                keys.finish_rotation()?;
                Ok(RotateReport { old_key_id, new_key_id, rewrapped })
            }
            Err(e) => {
                keys.abandon_rotation()?;
                Err(e)
            }
        }
    }

    /// The number `version` names, checking the secret exists.
    fn resolve(&self, project: &str, id: &str, version: VersionRef) -> Result<i64, SecretsError> {
        let found: Option<(i64, Option<i64>)> = self.db.read(|c| {
            c.query_row(
                "SELECT s.next_version, (SELECT MAX(version) FROM secret_versions v WHERE v.project = s.project AND v.secret = s.name)
                 FROM secrets s WHERE s.project = ?1 AND s.name = ?2",
                params![project, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?;
        let (_, newest) = found.ok_or_else(|| SecretsError::SecretNotFound(secret_name(project, id)))?;
        match version {
            VersionRef::Number(n) => Ok(n),
            VersionRef::Latest => newest.ok_or_else(|| SecretsError::SecretNotFound(secret_name(project, id))),
        }
    }
}

const VERSION_COLUMNS: &str =
    "SELECT version, create_time, destroy_time, state, etag, client_checksum FROM secret_versions";

fn version_row(project: &str, id: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretVersion> {
    let number: i64 = r.get(0)?;
    let state: String = r.get(3)?;
    Ok(SecretVersion {
        name: version_name(project, id, number),
        create_time: r.get(1)?,
        destroy_time: r.get(2)?,
        state: VersionState::parse(&state).unwrap_or(VersionState::Disabled),
        etag: r.get(4)?,
        client_specified_payload_checksum: r.get(5)?,
        replication_status: serde_json::json!({"automatic": {}}),
    })
}

fn secret_row(project: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<Secret> {
    let id: String = r.get(0)?;
    let labels: String = r.get(1)?;
    let annotations: String = r.get(2)?;
    Ok(Secret {
        name: secret_name(project, &id),
        replication: serde_json::json!({"automatic": {}}),
        create_time: r.get(3)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        annotations: serde_json::from_str(&annotations).unwrap_or_default(),
        etag: r.get(4)?,
    })
}

pub fn secret_name(project: &str, id: &str) -> String {
    format!("projects/{project}/secrets/{id}")
}

pub fn version_name(project: &str, id: &str, version: i64) -> String {
    format!("projects/{project}/secrets/{id}/versions/{version}")
}

/// Google's rule for secret ids: 1-255 letters, digits, `_` and `-`.
pub fn validate_secret_id(id: &str) -> Result<(), SecretsError> {
    if id.is_empty() || id.len() > 255 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(resource::invalid(
            "secretId",
            &format!("{id:?} is not a valid secret id: use 1-255 letters, digits, '_' or '-'"),
        ));
    }
    Ok(())
}

fn check_etag(given: Option<&str>, current: &str, resource: &str) -> Result<(), SecretsError> {
    match given {
        Some(given) if !given.is_empty() && given != current => Err(SecretsError::EtagMismatch {
            resource: resource.to_owned(),
            given: given.to_owned(),
            current: current.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

fn now() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

/// A fresh etag, quoted as Google's Secret Manager writes them.
fn new_etag() -> String {
    let micros = jiff::Timestamp::now().as_microsecond();
    let mut random = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random));
    format!("\"{micros:x}{}\"", hex::encode(random))
}

fn page_limit(page_size: usize) -> usize {
    if page_size == 0 { DEFAULT_PAGE_SIZE } else { page_size.min(MAX_PAGE_SIZE) }
}

/// `limit` plus the one extra row that tells whether another page follows, for SQL.
fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)
}

fn bad_token() -> SecretsError {
    resource::invalid("pageToken", "does not belong to this list; list again without pageToken")
}

fn decode_token(token: &str) -> Result<String, SecretsError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad_token())?;
    String::from_utf8(bytes).map_err(|_| bad_token())
}

/// Trims `items` (fetched with one extra) to `limit` and returns the next page's token.
fn next_token<T>(items: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> String {
    if items.len() <= limit {
        return String::new();
    }
    items.truncate(limit);
    items.last().map(|last| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key(last))).unwrap_or_default()
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests;
