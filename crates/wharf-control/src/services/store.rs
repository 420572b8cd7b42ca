//! The `services` and `revisions` tables: typed rows, typed revision states, and every query
//! the services domain makes.

use wharf_api::names::Parent;
use wharf_store::Store;
use wharf_store::rusqlite::{self, OptionalExtension, Row, params};

use crate::ControlError;
use crate::error::{from_json, to_json};
use crate::validate::RevisionConfig;

#[derive(Debug, Clone)]
pub struct ServiceRow {
    pub parent: Parent,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// The user's part of the resource (template, traffic, labels, ...), as API JSON.
    pub spec: wharf_api::Service,
    pub create_time: String,
    pub update_time: String,
    pub observed_generation: i64,
    pub next_revision: i64,
    /// Created before hosts carried a project hash: also answers on `{service}-{project}.{domain}`.
    pub legacy_host: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionState {
    Pending,
    Ready,
    Failed,
}

impl RevisionState {
    fn as_str(self) -> &'static str {
        match self {
            RevisionState::Pending => "PENDING",
            RevisionState::Ready => "READY",
            RevisionState::Failed => "FAILED",
        }
    }

    fn parse(s: &str) -> Option<RevisionState> {
        match s {
            "PENDING" => Some(RevisionState::Pending),
            "READY" => Some(RevisionState::Ready),
            "FAILED" => Some(RevisionState::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RevisionRow {
    pub parent: Parent,
    pub service: String,
    pub name: String,
    pub uid: String,
    pub seq: i64,
    pub template: wharf_api::RevisionTemplate,
    /// The template as validated when the revision was created.
    pub config: RevisionConfig,
    pub image: wharf_image::ResolvedImage,
    pub state: RevisionState,
    pub message: String,
    pub create_time: String,
}

fn service_row(r: &Row<'_>) -> rusqlite::Result<ServiceRow> {
    Ok(ServiceRow {
        parent: Parent { project: r.get(0)?, location: r.get(1)? },
        name: r.get(2)?,
        uid: r.get(3)?,
        generation: r.get(4)?,
        spec: from_json(&r.get::<_, String>(5)?)?,
        create_time: r.get(6)?,
        update_time: r.get(7)?,
        observed_generation: r.get(8)?,
        next_revision: r.get(9)?,
        legacy_host: r.get(10)?,
    })
}

const SERVICE_COLUMNS: &str = "project, location, name, uid, generation, spec, create_time, update_time, observed_generation, next_revision, \
     legacy_host";
const REVISION_COLUMNS: &str =
    "project, location, service, name, uid, seq, spec, image, state, message, create_time, config";

fn revision_row(r: &Row<'_>) -> rusqlite::Result<RevisionRow> {
    let state: String = r.get(8)?;
    let template: wharf_api::RevisionTemplate = from_json(&r.get::<_, String>(6)?)?;
    let config: Option<String> = r.get(11)?;
    let config = match config {
        Some(text) => from_json(&text)?,
        // Stored before configs were: validate the spec as it was validated then.
        None => crate::validate::validate(&template)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e)))?,
    };
    let state = RevisionState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            8,
            rusqlite::types::Type::Text,
            format!("unknown revision state {state:?}").into(),
        )
    })?;
    Ok(RevisionRow {
        parent: Parent { project: r.get(0)?, location: r.get(1)? },
        service: r.get(2)?,
        name: r.get(3)?,
        uid: r.get(4)?,
        seq: r.get(5)?,
        template,
        config,
        image: from_json(&r.get::<_, String>(7)?)?,
        state,
        message: r.get(9)?,
        create_time: r.get(10)?,
    })
}

pub fn get_service(db: &Store, parent: &Parent, name: &str) -> Result<Option<ServiceRow>, ControlError> {
    Ok(db.read(|c| {
        c.query_row(
            &format!("SELECT {SERVICE_COLUMNS} FROM services WHERE project = ?1 AND location = ?2 AND name = ?3"),
            params![parent.project, parent.location, name],
            service_row,
        )
        .optional()
    })?)
}

/// Services of `parent` after `after` (by name), at most `limit`.
pub fn list_services(db: &Store, parent: &Parent, after: &str, limit: usize) -> Result<Vec<ServiceRow>, ControlError> {
    Ok(db.read(|c| {
        let mut stmt = c.prepare(&format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE project = ?1 AND (location = ?2 OR ?2 = '-') AND name > ?3
             ORDER BY name LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![parent.project, parent.location, after, i64::try_from(limit).unwrap_or(i64::MAX)],
            service_row,
        )?;
        rows.collect()
    })?)
}

pub fn all_services(db: &Store) -> Result<Vec<ServiceRow>, ControlError> {
    Ok(db.read(|c| {
        let mut stmt = c.prepare(&format!("SELECT {SERVICE_COLUMNS} FROM services"))?;
        let rows = stmt.query_map([], service_row)?;
        rows.collect()
    })?)
}

pub fn insert_service(tx: &rusqlite::Transaction<'_>, row: &ServiceRow) -> Result<(), ControlError> {
    tx.execute(
        &format!("INSERT INTO services ({SERVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            row.parent.project,
            row.parent.location,
            row.name,
            row.uid,
            row.generation,
            to_json("service spec", &row.spec)?,
            row.create_time,
            row.update_time,
            row.observed_generation,
            row.next_revision,
            row.legacy_host
        ],
    )
    .map_err(ControlError::from)?;
    Ok(())
}

pub fn update_service(tx: &rusqlite::Transaction<'_>, row: &ServiceRow) -> Result<(), ControlError> {
    tx.execute(
        "UPDATE services SET generation = ?4, spec = ?5, update_time = ?6, observed_generation = ?7, next_revision = ?8
         WHERE project = ?1 AND location = ?2 AND name = ?3",
        params![
            row.parent.project,
            row.parent.location,
            row.name,
            row.generation,
            to_json("service spec", &row.spec)?,
            row.update_time,
            row.observed_generation,
            row.next_revision
        ],
    )
    .map_err(ControlError::from)?;
    Ok(())
}

pub fn set_observed_generation(db: &Store, parent: &Parent, name: &str, generation: i64) -> Result<(), ControlError> {
    db.write(|tx| {
        tx.execute(
            "UPDATE services SET observed_generation = max(observed_generation, ?4)
             WHERE project = ?1 AND location = ?2 AND name = ?3",
            params![parent.project, parent.location, name, generation],
        )
        .map_err(ControlError::from)
    })?;
    Ok(())
}

/// Deletes a service and its revisions inside the caller's transaction (the delete command
/// stores its operation in the same one, so a crash leaves either everything or nothing).
pub fn delete_service(tx: &rusqlite::Transaction<'_>, parent: &Parent, name: &str) -> Result<(), ControlError> {
    tx.execute(
        "DELETE FROM revisions WHERE project = ?1 AND location = ?2 AND service = ?3",
        params![parent.project, parent.location, name],
    )?;
    tx.execute(
        "DELETE FROM services WHERE project = ?1 AND location = ?2 AND name = ?3",
        params![parent.project, parent.location, name],
    )?;
    Ok(())
}

pub fn insert_revision(tx: &rusqlite::Transaction<'_>, row: &RevisionRow) -> Result<(), ControlError> {
    tx.execute(
        &format!(
            "INSERT INTO revisions ({REVISION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            row.parent.project,
            row.parent.location,
            row.service,
            row.name,
            row.uid,
            row.seq,
            to_json("revision template", &row.template)?,
            to_json("revision image", &row.image)?,
            row.state.as_str(),
            row.message,
            row.create_time,
            to_json("revision config", &row.config)?
        ],
    )
    .map_err(ControlError::from)?;
    Ok(())
}

pub fn set_revision_state(
    db: &Store,
    parent: &Parent,
    name: &str,
    state: RevisionState,
    message: &str,
) -> Result<(), ControlError> {
    db.write(|tx| {
        tx.execute(
            "UPDATE revisions SET state = ?4, message = ?5 WHERE project = ?1 AND location = ?2 AND name = ?3",
            params![parent.project, parent.location, name, state.as_str(), message],
        )
        .map_err(ControlError::from)
    })?;
    Ok(())
}

pub fn get_revision(db: &Store, parent: &Parent, name: &str) -> Result<Option<RevisionRow>, ControlError> {
    Ok(db.read(|c| {
        c.query_row(
            &format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE project = ?1 AND location = ?2 AND name = ?3"),
            params![parent.project, parent.location, name],
            revision_row,
        )
        .optional()
    })?)
}

/// A service's revisions, newest first.
pub fn list_revisions(db: &Store, parent: &Parent, service: &str) -> Result<Vec<RevisionRow>, ControlError> {
    Ok(db.read(|c| {
        let mut stmt = c.prepare(&format!(
            "SELECT {REVISION_COLUMNS} FROM revisions WHERE project = ?1 AND location = ?2 AND (service = ?3 OR ?3 = '-')
             ORDER BY service, seq DESC"
        ))?;
        let rows = stmt.query_map(params![parent.project, parent.location, service], revision_row)?;
        rows.collect()
    })?)
}

pub fn delete_revision(db: &Store, parent: &Parent, name: &str) -> Result<(), ControlError> {
    db.write(|tx| {
        tx.execute(
            "DELETE FROM revisions WHERE project = ?1 AND location = ?2 AND name = ?3",
            params![parent.project, parent.location, name],
        )
        .map_err(ControlError::from)
    })?;
    Ok(())
}
