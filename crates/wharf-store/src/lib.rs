//! Wharf's state store: one embedded SQLite database in the data directory.
//!
//! This crate owns the database file, its pragmas and the ordered list of schema migrations
//! (`migrations.rs`). It knows nothing about images, services or HTTP: the crates that own a
//! resource write their own queries through [`Store::read`] and [`Store::write`], which hand out
//! a connection or a transaction under one lock. SQLite calls here are short (sub-millisecond
//! on this machine), so callers on the async runtime may use them directly.

mod migrations;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, Transaction};

pub use rusqlite;

/// Failure to open, migrate or query the state database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path} has schema version {found}, newer than this wharf ({known}); upgrade wharf")]
    SchemaTooNew { path: PathBuf, found: i64, known: i64 },
    #[error("migration to schema version {version} failed")]
    Migration {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database query failed")]
    Query(#[from] rusqlite::Error),
}

/// A handle to the state database; cheap to clone, shared by every component.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )
        .map_err(open_err)?;
        let mut conn = conn;
        migrations::apply(&mut conn, path)?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)), path: path.to_owned() })
    }

    /// Where the database lives on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
    }

    /// Runs read-only queries on the shared connection.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        Ok(f(&self.lock())?)
    }

    /// Runs `f` inside one transaction: it commits when `f` returns `Ok` and rolls back
    /// otherwise, so a failed mutation leaves nothing half-written.
    pub fn write<T, E>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(StoreError::Query)?;
        let value = f(&tx)?;
        tx.commit().map_err(StoreError::Query)?;
        Ok(value)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (the transaction
        // rolls back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Seconds since the Unix epoch, the time format stored in every table.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        let version = store.schema_version().unwrap();
        assert_eq!(version, migrations::latest_version());
        store
            .write(|tx| {
                tx.execute("INSERT INTO tags (repo, tag, digest, updated_at) VALUES ('a', 'b', 'c', 0)", [])
                    .map_err(StoreError::Query)
            })
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), version);
        let n: i64 = store.read(|c| c.query_row("SELECT count(*) FROM tags", [], |r| r.get(0))).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn failed_write_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let result: Result<(), StoreError> = store.write(|tx| {
            tx.execute("INSERT INTO tags (repo, tag, digest, updated_at) VALUES ('a', 'b', 'c', 0)", [])?;
            Err(StoreError::Query(rusqlite::Error::InvalidQuery))
        });
        assert!(matches!(result, Err(StoreError::Query(_))), "{result:?}");
        let n: i64 = store.read(|c| c.query_row("SELECT count(*) FROM tags", [], |r| r.get(0))).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Store::open(&path).unwrap();
        Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 9999").unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 9999, .. }), "{err}");
    }
}
