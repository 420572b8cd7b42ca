//! Admission against the server-wide memory limit: the sum of the memory limits of the
//! instances that run (or are starting) must fit in the total the parent cgroup has
//! (`--instance-memory-limit`). An instance that does not fit is not started: its start fails
//! with [`NoCapacity`], which the router answers with a 429 and a job's task records as its
//! failure. The kernel limit on the parent cgroup is the backstop; admission is what turns
//! "too many instances" into a clear refusal rather than OOM kills of running ones.

use std::sync::{Arc, Mutex};

use crate::resources::HumanBytes;

/// An instance does not fit in what is left of the server-wide memory limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "wharf: no capacity: instances use {} of {} (--instance-memory-limit); this instance needs {}",
    HumanBytes(*used), HumanBytes(*total), HumanBytes(*needed)
)]
pub struct NoCapacity {
    pub used: u64,
    pub total: u64,
    pub needed: u64,
}

/// Tracks the memory reserved by instances against the total.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: u64,
    used: Mutex<u64>,
}

impl Admission {
    pub fn new(total_bytes: u64) -> Admission {
        Admission { inner: Arc::new(Inner { total: total_bytes, used: Mutex::new(0) }) }
    }

    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// Memory reserved by instances now.
    pub fn used(&self) -> u64 {
        *self.inner.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes` for an instance, or says why it does not fit. The reservation is
    /// returned when the [`Reservation`] is dropped.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, NoCapacity> {
        let mut used = self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
        match used.checked_add(bytes) {
            Some(after) if after <= self.inner.total => {
                *used = after;
                Ok(Reservation { inner: self.inner.clone(), bytes })
            }
            _ => Err(NoCapacity { used: *used, total: self.inner.total, needed: bytes }),
        }
    }
}

/// Memory held for one instance until it is released.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_until_the_total_and_return_on_drop() {
        let mib = 1u64 << 20;
        let admission = Admission::new(256 * mib);
        let first = admission.reserve(128 * mib).unwrap();
        let second = admission.reserve(128 * mib).unwrap();
        let refused = admission.reserve(128 * mib).unwrap_err();
        assert_eq!(refused, NoCapacity { used: 256 * mib, total: 256 * mib, needed: 128 * mib });
        assert_eq!(
            refused.to_string(),
            "wharf: no capacity: instances use 256 MiB of 256 MiB (--instance-memory-limit); this instance needs 128 MiB"
        );
        drop(first);
        assert_eq!(admission.used(), 128 * mib);
        let third = admission.reserve(128 * mib).unwrap();
        drop((second, third));
        assert_eq!(admission.used(), 0);
        let overflow = admission.reserve(u64::MAX).unwrap_err();
        assert_eq!(overflow.needed, u64::MAX);
    }
}
