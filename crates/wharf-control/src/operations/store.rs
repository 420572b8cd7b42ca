//! The `operations` table.

use wharf_api::Operation;
use wharf_api::names::Parent;
use wharf_store::Store;
use wharf_store::rusqlite::{OptionalExtension, Transaction, params};

use crate::ControlError;
use crate::error::to_json;

fn json<T: serde::de::DeserializeOwned>(text: Option<String>) -> wharf_store::rusqlite::Result<Option<T>> {
    text.map(|t| crate::error::from_json(&t)).transpose()
}

fn text(value: Option<&serde_json::Value>) -> Option<String> {
    value.map(serde_json::Value::to_string)
}

pub(super) fn insert(tx: &Transaction<'_>, op: &Operation, time: &str) -> Result<(), ControlError> {
    tx.execute(
        "INSERT INTO operations (name, done, metadata, response, error, create_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            op.name,
            op.done,
            text(op.metadata.as_ref()),
            text(op.response.as_ref()),
            op.error.as_ref().map(|e| to_json("operation error", e)).transpose()?,
            time
        ],
    )?;
    Ok(())
}

pub(super) fn finish(db: &Store, op: &Operation) -> Result<(), ControlError> {
    let error = op.error.as_ref().map(|e| to_json("operation error", e)).transpose()?;
    db.write(|tx| {
        tx.execute(
            "UPDATE operations SET done = 1, metadata = ?2, response = ?3, error = ?4 WHERE name = ?1",
            params![op.name, text(op.metadata.as_ref()), text(op.response.as_ref()), error],
        )
        .map_err(ControlError::from)
    })?;
    Ok(())
}

pub(super) fn get(db: &Store, name: &str) -> Result<Option<Operation>, ControlError> {
    Ok(db.read(|c| {
        c.query_row("SELECT name, done, metadata, response, error FROM operations WHERE name = ?1", [name], |r| {
            Ok(Operation {
                name: r.get(0)?,
                done: r.get(1)?,
                metadata: json(r.get(2)?)?,
                response: json(r.get(3)?)?,
                error: json(r.get(4)?)?,
            })
        })
        .optional()
    })?)
}

pub(super) fn unfinished(db: &Store) -> Result<Vec<Operation>, ControlError> {
    let names: Vec<String> = db.read(|c| {
        let mut stmt = c.prepare("SELECT name FROM operations WHERE done = 0")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    })?;
    let mut ops = Vec::with_capacity(names.len());
    for name in names {
        ops.extend(get(db, &name)?);
    }
    Ok(ops)
}

/// Names of the operations in `parent` (`location` may be `-`), oldest first; `done` filters.
pub(super) fn names(db: &Store, parent: &Parent, done: Option<bool>) -> Result<Vec<String>, ControlError> {
    let prefix = format!("projects/{}/locations/", parent.project);
    Ok(db.read(|c| {
        let mut stmt = c.prepare(
            "SELECT name FROM operations WHERE substr(name, 1, length(?1)) = ?1 AND (?2 IS NULL OR done = ?2)
             ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![prefix, done], |r| r.get::<_, String>(0))?;
        rows.filter(|name| {
            // `projects/p/locations/l/operations/o`: the location must match unless it is `-`.
            name.as_ref()
                .map_or(true, |n| parent.location == "-" || n.split('/').nth(3) == Some(parent.location.as_str()))
        })
        .collect()
    })?)
}

pub(super) fn delete(db: &Store, name: &str) -> Result<bool, ControlError> {
    db.write(|tx| Ok(tx.execute("DELETE FROM operations WHERE name = ?1", [name])? > 0))
}
