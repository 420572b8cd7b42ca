//! Time-bucketed concurrency history and the windowed averages the scaler decides on.
//!
//! Samples fall into fixed 100 ms buckets, keyed by their offset from the history's origin. A bucket
//! holds the mean of its samples, so the sample rate does not change the result; a bucket with no sample
//! counts as zero, so a gap in sampling reads as no load, never as "last value forever". Buckets older
//! than the longest window are pruned by time, which bounds memory at one entry per 100 ms of window.
//!
//! Not responsible for turning load into instance counts; that is the crate root's job.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Width of one bucket.
pub(crate) const BUCKET: Duration = Duration::from_millis(100);

/// An average is never taken over less than this many buckets (1 s), so one 100 ms spike after an idle
/// spell does not count as a full second of load.
const MIN_SPAN_BUCKETS: u64 = 10;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    index: u64,
    sum: f64,
    samples: u32,
}

impl Bucket {
    fn mean(&self) -> f64 {
        self.sum / f64::from(self.samples)
    }
}

/// Concurrency samples of one revision, in buckets ordered by time.
#[derive(Debug)]
pub(crate) struct History {
    origin: Instant,
    buckets: VecDeque<Bucket>,
}

impl History {
    pub(crate) fn new(origin: Instant) -> History {
        History { origin, buckets: VecDeque::new() }
    }

    /// Adds a sample to the bucket containing `at`. Out-of-order samples land in their own bucket.
    pub(crate) fn record(&mut self, at: Instant, value: f64) {
        let index = self.index(at);
        match self.buckets.back_mut() {
            Some(bucket) if bucket.index == index => {
                bucket.sum += value;
                bucket.samples = bucket.samples.saturating_add(1);
            }
            _ => match self.buckets.binary_search_by_key(&index, |b| b.index) {
                Ok(pos) => {
                    let bucket = &mut self.buckets[pos];
                    bucket.sum += value;
                    bucket.samples = bucket.samples.saturating_add(1);
                }
                Err(pos) => self.buckets.insert(pos, Bucket { index, sum: value, samples: 1 }),
            },
        }
    }

    /// Drops buckets that fall entirely outside a window of length `keep` ending at `now`.
    pub(crate) fn prune(&mut self, now: Instant, keep: Duration) {
        let oldest = self.oldest_in(now, keep);
        while self.buckets.front().is_some_and(|b| b.index < oldest) {
            self.buckets.pop_front();
        }
    }

    /// Mean concurrency over the `window` ending at `now`.
    ///
    /// Idle time before the first non-zero bucket in the window is left out (but the span is at least 1 s,
    /// or the whole window if shorter), so a burst after an idle spell is seen at full strength within a
    /// second. Once load has been seen, every later bucket counts, empty ones as zero.
    pub(crate) fn average(&self, now: Instant, window: Duration) -> f64 {
        let newest = self.index(now);
        let oldest = self.oldest_in(now, window);
        let mut sum = 0.0;
        let mut first_busy = None;
        for bucket in self.buckets.iter().filter(|b| (oldest..=newest).contains(&b.index)) {
            let mean = bucket.mean();
            if mean > 0.0 {
                first_busy.get_or_insert(bucket.index);
            }
            sum += mean;
        }
        let Some(first_busy) = first_busy else { return 0.0 };
        let len = buckets_in(window);
        let span = (newest - first_busy + 1).clamp(MIN_SPAN_BUCKETS.min(len), len);
        sum / span as f64
    }

    fn index(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.origin).as_millis() / BUCKET.as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// Index of the oldest bucket inside a window of length `window` ending at `now`.
    fn oldest_in(&self, now: Instant, window: Duration) -> u64 {
        (self.index(now) + 1).saturating_sub(buckets_in(window))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Number of buckets a window spans; at least one.
pub(crate) fn buckets_in(window: Duration) -> u64 {
    u64::try_from(window.as_millis().div_ceil(BUCKET.as_millis())).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn bucket_holds_the_mean_of_its_samples() {
        let t0 = Instant::now();
        let mut history = History::new(t0);
        for ms in 0..100 {
            history.record(t0 + Duration::from_millis(ms), if ms % 2 == 0 { 10.0 } else { 30.0 });
        }
        // One bucket with mean 20, averaged over the minimum span of 10 buckets.
        assert_eq!(history.len(), 1);
        assert_eq!(history.average(t0, Duration::from_secs(6)), 2.0);
    }

    #[test]
    fn leading_idle_time_is_not_averaged_in_but_later_gaps_are() {
        let t0 = Instant::now();
        let mut history = History::new(t0);
        let start = t0 + 30 * SECOND;
        for tick in 0..10 {
            history.record(start + tick * BUCKET, 20.0);
        }
        assert_eq!(history.average(start + 9 * BUCKET, 60 * SECOND), 20.0);
        // Five seconds after the last sample: 10 buckets of 20 over a 6 s span.
        let later = start + 9 * BUCKET + 5 * SECOND;
        let average = history.average(later, 60 * SECOND);
        assert!((average - 200.0 / 60.0).abs() < 1e-9, "average {average}");
    }

    #[test]
    fn out_of_order_samples_land_in_their_bucket() {
        let t0 = Instant::now();
        let mut history = History::new(t0);
        history.record(t0 + SECOND, 5.0);
        history.record(t0, 5.0);
        history.record(t0 + SECOND, 15.0);
        assert_eq!(history.len(), 2);
        // Buckets 0 (5) and 10 (mean 10) over a span of 11 buckets.
        assert_eq!(history.average(t0 + SECOND, 60 * SECOND), 15.0 / 11.0);
    }

    #[test]
    fn prune_keeps_only_the_window() {
        let t0 = Instant::now();
        let mut history = History::new(t0);
        for tick in 0..100 {
            history.record(t0 + tick * BUCKET, 1.0);
        }
        history.prune(t0 + 99 * BUCKET, 2 * SECOND);
        assert_eq!(history.len(), 20);
    }
}
