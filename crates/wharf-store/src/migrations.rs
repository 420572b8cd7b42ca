//! The ordered schema migrations. Each entry moves the schema from version `i` to `i + 1`;
//! `PRAGMA user_version` records how far a database has come. Never edit a released entry:
//! append a new one.

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: images. Blobs live on disk, content-addressed; these tables say which repository
    // holds which blob and manifest, and where each tag points.
    "CREATE TABLE repo_blobs (
         repo TEXT NOT NULL,
         digest TEXT NOT NULL,
         PRIMARY KEY (repo, digest)
     );
     CREATE INDEX repo_blobs_digest ON repo_blobs (digest);
     CREATE TABLE manifests (
         repo TEXT NOT NULL,
         digest TEXT NOT NULL,
         media_type TEXT NOT NULL,
         size INTEGER NOT NULL,
         created_at INTEGER NOT NULL,
         PRIMARY KEY (repo, digest)
     );
     CREATE INDEX manifests_digest ON manifests (digest);
     CREATE TABLE manifest_refs (
         parent TEXT NOT NULL,
         child TEXT NOT NULL,
         PRIMARY KEY (parent, child)
     );
     CREATE TABLE tags (
         repo TEXT NOT NULL,
         tag TEXT NOT NULL,
         digest TEXT NOT NULL,
         updated_at INTEGER NOT NULL,
         PRIMARY KEY (repo, tag)
     );
     CREATE TABLE uploads (
         id TEXT PRIMARY KEY,
         repo TEXT NOT NULL,
         started_at INTEGER NOT NULL
     );",
    // 2: principals. The owner credential created on first start; IAM adds more later.
    "CREATE TABLE principals (
         name TEXT PRIMARY KEY,
         token_sha256 TEXT NOT NULL UNIQUE,
         role TEXT NOT NULL,
         created_at INTEGER NOT NULL
     );",
    // 3: logs. Instance output, one row a line, labelled with who produced it.
    "CREATE TABLE logs (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         ts_us INTEGER NOT NULL,
         stream TEXT NOT NULL,
         severity INTEGER NOT NULL,
         message TEXT NOT NULL,
         payload TEXT,
         service TEXT,
         revision TEXT,
         job TEXT,
         execution TEXT,
         task_index INTEGER,
         task_attempt INTEGER,
         instance TEXT NOT NULL
     );
     CREATE INDEX logs_service ON logs (service, id);
     CREATE INDEX logs_revision ON logs (revision, id);
     CREATE INDEX logs_job ON logs (job, id);
     CREATE INDEX logs_execution ON logs (execution, id);
     CREATE INDEX logs_instance ON logs (instance, id);",
    // 4: services, their revisions, and long-running operations. Specs are stored as the
    // API's JSON; status is derived from revision states when a service is read.
    "CREATE TABLE services (
         project TEXT NOT NULL,
         location TEXT NOT NULL,
         name TEXT NOT NULL,
         uid TEXT NOT NULL,
         generation INTEGER NOT NULL,
         spec TEXT NOT NULL,
         create_time TEXT NOT NULL,
         update_time TEXT NOT NULL,
         observed_generation INTEGER NOT NULL DEFAULT 0,
         next_revision INTEGER NOT NULL DEFAULT 1,
         PRIMARY KEY (project, location, name)
     );
     CREATE TABLE revisions (
         project TEXT NOT NULL,
         location TEXT NOT NULL,
         service TEXT NOT NULL,
         name TEXT NOT NULL,
         uid TEXT NOT NULL,
         seq INTEGER NOT NULL,
         spec TEXT NOT NULL,
         image TEXT NOT NULL,
         state TEXT NOT NULL,
         message TEXT NOT NULL DEFAULT '',
         create_time TEXT NOT NULL,
         PRIMARY KEY (project, location, name)
     );
     CREATE INDEX revisions_service ON revisions (project, location, service, seq);
     CREATE TABLE operations (
         name TEXT PRIMARY KEY,
         done INTEGER NOT NULL,
         metadata TEXT,
         response TEXT,
         error TEXT,
         create_time TEXT NOT NULL
     );",
    // 5: jobs, their executions and tasks.
    "CREATE TABLE jobs (
         project TEXT NOT NULL,
         location TEXT NOT NULL,
         name TEXT NOT NULL,
         uid TEXT NOT NULL,
         generation INTEGER NOT NULL,
         spec TEXT NOT NULL,
         image TEXT NOT NULL,
         create_time TEXT NOT NULL,
         update_time TEXT NOT NULL,
         execution_count INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY (project, location, name)
     );
     CREATE TABLE executions (
         project TEXT NOT NULL,
         location TEXT NOT NULL,
         job TEXT NOT NULL,
         name TEXT NOT NULL,
         uid TEXT NOT NULL,
         spec TEXT NOT NULL,
         state TEXT NOT NULL,
         message TEXT NOT NULL DEFAULT '',
         create_time TEXT NOT NULL,
         start_time TEXT,
         completion_time TEXT,
         PRIMARY KEY (project, location, name)
     );
     CREATE TABLE tasks (
         project TEXT NOT NULL,
         location TEXT NOT NULL,
         execution TEXT NOT NULL,
         idx INTEGER NOT NULL,
         state TEXT NOT NULL,
         attempts INTEGER NOT NULL DEFAULT 0,
         exit_code INTEGER,
         message TEXT NOT NULL DEFAULT '',
         start_time TEXT,
         completion_time TEXT,
         PRIMARY KEY (project, location, execution, idx)
     );",
    // 6: a revision's validated configuration (its instance template and serving settings),
    // stored when the revision is created and used as is by every start. Rows from before
    // this migration have NULL and are validated from their spec when read.
    "ALTER TABLE revisions ADD COLUMN config TEXT;",
    // 7: service hosts became `{service}-{project hash}.{location}.{domain}`; services created
    // before keep answering on their old `{service}-{project}.{domain}` host as well.
    "ALTER TABLE services ADD COLUMN legacy_host INTEGER NOT NULL DEFAULT 0;
     UPDATE services SET legacy_host = 1;",
    // 8: IAM. Policies per resource (validated bindings as JSON, with their etag), and the
    // access tokens Wharf minted (hashes only; expired rows are swept as new ones are minted).
    "CREATE TABLE iam_policies (
         resource TEXT PRIMARY KEY,
         bindings TEXT NOT NULL,
         etag TEXT NOT NULL,
         updated_at INTEGER NOT NULL
     );
     CREATE TABLE access_tokens (
         token_sha256 TEXT PRIMARY KEY,
         principal TEXT NOT NULL,
         expires_at INTEGER NOT NULL
     );
     CREATE INDEX access_tokens_expiry ON access_tokens (expires_at);",
    // 9: Secret Manager. Secrets and their numbered versions; a version's payload is stored
    // only encrypted (AES-256-GCM under its own data key, which the key-encryption key named
    // by kek_id wraps; the key-encryption key itself lives outside the database). A destroyed
    // version keeps its row (state, times) and loses its key and ciphertext.
    "CREATE TABLE secrets (
         project TEXT NOT NULL,
         name TEXT NOT NULL,
         labels TEXT NOT NULL,
         annotations TEXT NOT NULL,
         create_time TEXT NOT NULL,
         etag TEXT NOT NULL,
         next_version INTEGER NOT NULL,
         PRIMARY KEY (project, name)
     );
     CREATE TABLE secret_versions (
         project TEXT NOT NULL,
         secret TEXT NOT NULL,
         version INTEGER NOT NULL,
         state TEXT NOT NULL,
         create_time TEXT NOT NULL,
         destroy_time TEXT,
         etag TEXT NOT NULL,
         crc32c INTEGER,
         client_checksum INTEGER NOT NULL,
         kek_id TEXT,
         wrapped_key BLOB,
         ciphertext BLOB,
         PRIMARY KEY (project, secret, version),
         FOREIGN KEY (project, secret) REFERENCES secrets (project, name) ON DELETE CASCADE
     );",
    // 10: IAM principals beyond the owner: service accounts (users live in `principals` as
    // `user:EMAIL` with their token's hash) and the public halves of service-account keys.
    "CREATE TABLE service_accounts (
         email TEXT PRIMARY KEY,
         project TEXT NOT NULL,
         account_id TEXT NOT NULL,
         display_name TEXT NOT NULL,
         description TEXT NOT NULL,
         unique_id TEXT NOT NULL UNIQUE,
         disabled INTEGER NOT NULL DEFAULT 0,
         created_at INTEGER NOT NULL
     );
     CREATE INDEX service_accounts_project ON service_accounts (project);
     CREATE TABLE service_account_keys (
         key_id TEXT PRIMARY KEY,
         email TEXT NOT NULL,
         public_key_pem TEXT NOT NULL,
         valid_after INTEGER NOT NULL,
         valid_before INTEGER NOT NULL
     );
     CREATE INDEX service_account_keys_email ON service_account_keys (email);",
    // 11: Wharf as an OIDC issuer: the RSA keys ID tokens are signed with (PKCS#8 PEM), newest
    // active; a retired key stays published in the JWKS until the tokens it signed expired.
    "CREATE TABLE signing_keys (
         kid TEXT PRIMARY KEY,
         private_key_pem TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         retired_at INTEGER
     );",
    // 12: domain mappings (Cloud Run's v1 DomainMapping): a custom domain routed to a service.
    // A domain is mapped at most once on the whole server.
    "CREATE TABLE domain_mappings (
         domain TEXT PRIMARY KEY,
         project TEXT NOT NULL,
         location TEXT NOT NULL,
         service TEXT NOT NULL,
         uid TEXT NOT NULL,
         creator TEXT NOT NULL,
         create_time TEXT NOT NULL
     );
     CREATE INDEX domain_mappings_project ON domain_mappings (project);",
    // 13: web console sessions, kept across restarts. The cookie's session id is never
    // stored: rows are found by its SHA-256, and the credential the session stands for is
    // sealed (AES-256-GCM) under another key derived from the id, so the database alone
    // opens no session and reveals no credential. Times are Unix seconds.
    "CREATE TABLE console_sessions (
         id_hash BLOB PRIMARY KEY,
         principal TEXT NOT NULL,
         sealed_credential BLOB NOT NULL,
         csrf_token TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         last_used_at INTEGER NOT NULL
     );
     CREATE INDEX console_sessions_last_used ON console_sessions (last_used_at);",
    // 14: observability. Log lines record their project (reads select by it); lines stored
    // before are given the project of their service or job where that name is in one project
    // only, and stay without one (read by no project) otherwise. Usage meters what Cloud Run
    // would bill, per revision of a service or execution of a job, kept across restarts and
    // after the revision or execution is deleted.
    "ALTER TABLE logs ADD COLUMN project TEXT;
     UPDATE logs SET project =
         (SELECT min(s.project) FROM services s WHERE s.name = logs.service HAVING count(DISTINCT s.project) = 1)
         WHERE service IS NOT NULL;
     UPDATE logs SET project =
         (SELECT min(j.project) FROM jobs j WHERE j.name = logs.job HAVING count(DISTINCT j.project) = 1)
         WHERE job IS NOT NULL;
     CREATE TABLE usage (
         project TEXT NOT NULL,
         location TEXT NOT NULL,
         kind TEXT NOT NULL,
         name TEXT NOT NULL,
         part TEXT NOT NULL,
         vcpu REAL NOT NULL,
         memory_gib REAL NOT NULL,
         requests INTEGER NOT NULL DEFAULT 0,
         busy_seconds REAL NOT NULL DEFAULT 0,
         instance_seconds REAL NOT NULL DEFAULT 0,
         PRIMARY KEY (project, location, kind, name, part)
     );",
    // 15: cheaper log appends. A line belongs to a service or to a job, never both, so the
    // owner indexes cover only the lines that have the column: a request log entry updates
    // three indexes instead of five. Queries select by `column = ?`, which implies NOT NULL,
    // so they still use them.
    "DROP INDEX logs_service;
     DROP INDEX logs_revision;
     DROP INDEX logs_job;
     DROP INDEX logs_execution;
     CREATE INDEX logs_service ON logs (service, id) WHERE service IS NOT NULL;
     CREATE INDEX logs_revision ON logs (revision, id) WHERE revision IS NOT NULL;
     CREATE INDEX logs_job ON logs (job, id) WHERE job IS NOT NULL;
     CREATE INDEX logs_execution ON logs (execution, id) WHERE execution IS NOT NULL;",
];

pub(crate) fn latest_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

pub(crate) fn apply(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    if current > latest_version() {
        return Err(StoreError::SchemaTooNew { path: path.to_owned(), found: current, known: latest_version() });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(current).unwrap_or(0)) {
        let version = i64::try_from(index).unwrap_or(i64::MAX) + 1;
        let fail = |source| StoreError::Migration { version, source };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", version).map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(version, "applied state database migration");
    }
    Ok(())
}
