//! Long-running operations: every mutation answers with one, completed by a reconciler.

use std::time::Duration;

use wharf_api::{Operation, SERVICE_TYPE, Service, Status, to_any};

use crate::store;
use crate::{ControlError, ControlPlane};

impl ControlPlane {
    /// Records a new operation about `service`; `done` when there is nothing left to do.
    pub(crate) fn new_operation(
        &self,
        tx: &wharf_store::rusqlite::Transaction<'_>,
        project: &str,
        location: &str,
        service: &Service,
        done: bool,
    ) -> Result<Operation, ControlError> {
        let op = Operation {
            name: format!("projects/{project}/locations/{location}/operations/{}", uuid::Uuid::new_v4()),
            metadata: Some(to_any(SERVICE_TYPE, service)),
            done,
            error: None,
            response: done.then(|| to_any(SERVICE_TYPE, service)),
        };
        store::insert_operation(tx, &op, &crate::time::now())?;
        Ok(op)
    }

    pub(crate) fn finish_operation(
        &self,
        name: &str,
        service: &Service,
        error: Option<Status>,
    ) -> Result<(), ControlError> {
        let op = Operation {
            name: name.to_owned(),
            metadata: Some(to_any(SERVICE_TYPE, service)),
            done: true,
            response: error.is_none().then(|| to_any(SERVICE_TYPE, service)),
            error,
        };
        store::finish_operation(&self.inner.db, &op)?;
        self.inner.operation_done.notify_waiters();
        Ok(())
    }

    pub fn get_operation(&self, name: &str) -> Result<Operation, ControlError> {
        store::get_operation(&self.inner.db, name)?
            .ok_or_else(|| ControlError::NotFound(format!("Operation {name} was not found.")))
    }

    /// Waits until the operation is done or `timeout` passes, then returns it as it is.
    pub async fn wait_operation(&self, name: &str, timeout: Duration) -> Result<Operation, ControlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.operation_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let op = self.get_operation(name)?;
            if op.done {
                return Ok(op);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.get_operation(name),
            }
        }
    }
}
