//! Long-running operations: every mutation answers with one. [`OperationBuilder`] is the one
//! way an operation resource is made (running, done, failed, or a dry run's preview);
//! [`Operations`] stores them, completes them and lets callers wait for completion.

mod store;

use std::time::Duration;

use tokio::sync::Notify;
use wharf_api::names::Parent;
use wharf_api::{Operation, Status, to_any};
use wharf_store::Store;
use wharf_store::rusqlite::Transaction;

use crate::ControlError;

/// An operation about one resource (rendered as `metadata`, and as `response` when done).
#[derive(Debug)]
pub(crate) struct OperationBuilder {
    name: String,
    resource: serde_json::Value,
}

impl OperationBuilder {
    /// An operation in `parent` about `resource` of type `type_url`.
    pub(crate) fn new(parent: &Parent, type_url: &str, resource: &impl serde::Serialize) -> OperationBuilder {
        OperationBuilder {
            name: format!("{}/operations/{}", parent.path(), uuid::Uuid::new_v4()),
            resource: to_any(type_url, resource),
        }
    }

    /// An operation about a resource already rendered as an `Any` (an operation's metadata).
    pub(crate) fn from_any(parent: &Parent, resource: serde_json::Value) -> OperationBuilder {
        OperationBuilder { name: format!("{}/operations/{}", parent.path(), uuid::Uuid::new_v4()), resource }
    }

    /// Still running: a reconciler or runner completes it.
    pub(crate) fn running(self) -> Operation {
        Operation { name: self.name, metadata: Some(self.resource), done: false, error: None, response: None }
    }

    /// Done, with the resource as its response.
    pub(crate) fn done(self) -> Operation {
        Operation {
            name: self.name,
            metadata: Some(self.resource.clone()),
            done: true,
            error: None,
            response: Some(self.resource),
        }
    }

    /// Done, with `error`.
    pub(crate) fn failed(self, error: Status) -> Operation {
        Operation { name: self.name, metadata: Some(self.resource), done: true, error: Some(error), response: None }
    }

    /// Completes the operation `name` (created earlier) with this resource, or `error`.
    pub(crate) fn finish(self, name: &str, error: Option<Status>) -> Operation {
        let op = OperationBuilder { name: name.to_owned(), ..self };
        match error {
            None => op.done(),
            Some(error) => op.failed(error),
        }
    }

    /// What a dry run (`validateOnly`) answers: the resource as it would be, under no
    /// operation name, and nothing stored.
    pub(crate) fn dry_run(self) -> Operation {
        Operation { name: String::new(), ..self.done() }
    }
}

/// The operations table and completion notices.
#[derive(Debug)]
pub(crate) struct Operations {
    db: Store,
    /// Signalled whenever an operation completes.
    completed: Notify,
}

impl Operations {
    pub(crate) fn new(db: Store) -> Operations {
        Operations { db, completed: Notify::new() }
    }

    /// Stores a new operation inside the mutation's transaction.
    pub(crate) fn insert(&self, tx: &Transaction<'_>, op: &Operation) -> Result<(), ControlError> {
        store::insert(tx, op, &crate::time::now())
    }

    /// Stores an operation that is already done, in a transaction of its own.
    pub(crate) fn record(&self, op: Operation) -> Result<Operation, ControlError> {
        self.db.write(|tx| self.insert(tx, &op))?;
        Ok(op)
    }

    /// Stores the final state of an operation and wakes its waiters.
    pub(crate) fn complete(&self, op: &Operation) -> Result<(), ControlError> {
        store::finish(&self.db, op)?;
        self.completed.notify_waiters();
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Result<Operation, ControlError> {
        store::get(&self.db, name)?.ok_or_else(|| ControlError::NotFound(format!("Operation {name} was not found.")))
    }

    /// A page of the operations in `parent`, oldest first; `filter` is empty, `done=true` or
    /// `done=false`.
    pub(crate) fn list(
        &self,
        parent: &Parent,
        filter: &str,
        page: &crate::paging::PageRequest,
    ) -> Result<wharf_api::ListOperationsResponse, ControlError> {
        let done = match filter.replace(' ', "").as_str() {
            "" => None,
            "done=true" => Some(true),
            "done=false" => Some(false),
            other => {
                return Err(ControlError::InvalidArgument(format!(
                    "filter {other:?} is not supported: use done=true or done=false, or no filter"
                )));
            }
        };
        let (names, next_page_token) = page.page(store::names(&self.db, parent, done)?, |n| n)?;
        let mut operations = Vec::with_capacity(names.len());
        for name in names {
            operations.extend(store::get(&self.db, &name)?);
        }
        Ok(wharf_api::ListOperationsResponse { operations, next_page_token })
    }

    /// Forgets an operation (what it was about goes on): `DeleteOperation`.
    pub(crate) fn delete(&self, name: &str) -> Result<(), ControlError> {
        if store::delete(&self.db, name)? {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!("Operation {name} was not found.")))
        }
    }

    /// Operations not finished when the server last stopped.
    pub(crate) fn unfinished(&self) -> Result<Vec<Operation>, ControlError> {
        store::unfinished(&self.db)
    }

    /// Waits until the operation is done or `timeout` passes, then returns it as it is.
    pub(crate) async fn wait(&self, name: &str, timeout: Duration) -> Result<Operation, ControlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.completed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let op = self.get(name)?;
            if op.done {
                return Ok(op);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.get(name),
            }
        }
    }
}
