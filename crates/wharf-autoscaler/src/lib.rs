//! The scaling algorithm for one revision: concurrency samples in, desired instance count out.
//!
//! Responsible for: turning observed concurrency (requests in flight plus requests queued for an instance)
//! into how many instances the revision should have now. It is pure and deterministic: the caller records a
//! sample about every 100 ms (and right when a request reaches a revision with no instances) and asks for
//! a [`Decision`] whenever it likes, passing the time in. Not responsible for: sampling, timers, or starting
//! and stopping instances; the control plane does those and reconciles towards [`Decision::desired`].
//!
//! The algorithm follows Knative's KPA, tuned to react within about a second:
//!
//! - Samples go into 100 ms buckets (mean per bucket, empty buckets count as zero) pruned by time, so memory
//!   is bounded by the longest window, whatever the sample rate.
//! - Two windowed averages are kept: `stable_window` (default 60 s) and `panic_window` (default 6 s).
//!   Idle time before the first load in a window is left out of its average (down to a 1 s floor), so a
//!   burst after a quiet spell counts at full strength after one second instead of being diluted.
//! - An average becomes instances as `ceil(average / (container_concurrency * target_utilization))`.
//! - Panic: when the panic-window load reaches `panic_threshold` times the current instances (at least 1),
//!   the scaler panics: it follows the panic-window count upwards and never scales down, until
//!   `stable_window` has passed without the threshold being reached again.
//! - Otherwise the stable-window count is used, so after load stops the count decays as that average does.
//! - While any load was seen within `idle_timeout` at least one instance is kept; after `idle_timeout` with
//!   zero concurrency the revision goes to `min_instances` (possibly zero), ending any panic.
//! - The result is clamped to `[min_instances, max_instances]`; if the two conflict, `max_instances` wins.

mod window;

use std::time::Duration;

use tokio::time::Instant;

use window::History;

/// How one revision scales. Set from the revision's spec; values are assumed validated by the API layer
/// (out-of-range values do not panic, but the decisions they give are not meaningful).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    /// Hard per-instance concurrency limit (Cloud Run `containerConcurrency`, 1..=1000).
    pub container_concurrency: u32,
    /// Fraction of container_concurrency the scaler aims for per instance (Knative: 0.7).
    pub target_utilization: f64,
    pub min_instances: u32,
    pub max_instances: u32,
    /// Averaging window for normal (stable) decisions. Knative uses 60 s; Wharf defaults to 60 s too but
    /// scale-UP reacts via the panic window.
    pub stable_window: Duration,
    /// Short window; if its desired count >= panic_threshold x current ready instances, enter panic mode:
    /// scale up immediately on the panic-window average and never scale down while panicking
    /// (panic mode lasts until stable_window has passed without re-triggering).
    pub panic_window: Duration,
    pub panic_threshold: f64,
    /// After the last request finished and no concurrency was observed for this long, the revision may go to
    /// min_instances (possibly zero). Scale-down below the current count otherwise follows the stable window.
    pub idle_timeout: Duration,
}

impl Default for ScalingConfig {
    fn default() -> ScalingConfig {
        ScalingConfig {
            container_concurrency: 80,
            target_utilization: 0.7,
            min_instances: 0,
            max_instances: 100,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl ScalingConfig {
    /// Concurrency one instance is expected to carry: `container_concurrency * target_utilization`.
    pub fn target_per_instance(&self) -> f64 {
        f64::from(self.container_concurrency) * self.target_utilization
    }

    /// Instances needed to carry `load` at the target utilization, before clamping to min/max.
    pub fn instances_for(&self, load: f64) -> u32 {
        ceil_to_u32(load / self.target_per_instance())
    }
}

/// What the revision should look like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Instances the revision should have now (clamped to [min_instances, max_instances]).
    pub desired: u32,
    pub panic: bool,
}

/// Panic mode: entered at a burst, held until `stable_window` passes without another.
#[derive(Debug, Clone, Copy)]
struct Panic {
    /// When the panic threshold was last reached.
    since: Instant,
    /// Highest count decided while panicking; panic never goes below it.
    peak: u32,
}

/// The scaler of one revision. Feed it samples with [`Autoscaler::record`], ask with [`Autoscaler::decide`].
#[derive(Debug)]
pub struct Autoscaler {
    config: ScalingConfig,
    history: History,
    /// Time of the last sample with non-zero concurrency.
    last_active: Option<Instant>,
    panic: Option<Panic>,
}

impl Autoscaler {
    /// A scaler with no history: until load is recorded, it decides `min_instances`.
    pub fn new(config: ScalingConfig, now: Instant) -> Autoscaler {
        Autoscaler { config, history: History::new(now), last_active: None, panic: None }
    }

    pub fn config(&self) -> &ScalingConfig {
        &self.config
    }

    /// Replace the config (e.g. the revision was updated); keeps history.
    pub fn set_config(&mut self, config: ScalingConfig) {
        self.config = config;
    }

    /// Record one sample of observed concurrency: requests in flight plus requests queued waiting for an
    /// instance, at `now`. The caller samples about every 100 ms, and also right when a request arrives at a
    /// revision with zero instances.
    ///
    /// Samples in the same 100 ms are averaged; negative or NaN values count as zero. `now` should not go
    /// backwards by more than the stable window, or the sample is pruned unused.
    pub fn record(&mut self, now: Instant, concurrency: f64) {
        let concurrency = concurrency.max(0.0);
        if concurrency > 0.0 && self.last_active.is_none_or(|t| t < now) {
            self.last_active = Some(now);
        }
        self.history.record(now, concurrency);
        self.history.prune(now, self.longest_window());
    }

    /// The decision at `now`, given how many instances are currently ready or starting (`current`).
    ///
    /// Updates panic state, so call it with non-decreasing `now`; calling it often is fine and cheap.
    pub fn decide(&mut self, now: Instant, current: u32) -> Decision {
        let config = &self.config;
        let idle = self.last_active.is_none_or(|t| now.saturating_duration_since(t) >= config.idle_timeout);
        if idle {
            self.panic = None;
            return Decision { desired: clamp(config, 0), panic: false };
        }

        self.history.prune(now, self.longest_window());
        let config = &self.config;
        let stable = config.instances_for(self.history.average(now, config.stable_window));
        let panic_load = self.history.average(now, config.panic_window);
        let over_threshold =
            panic_load / config.target_per_instance() >= config.panic_threshold * f64::from(current.max(1));
        if over_threshold {
            let peak = self.panic.map_or(current, |p| p.peak);
            self.panic = Some(Panic { since: now, peak });
        } else if self.panic.is_some_and(|p| now.saturating_duration_since(p.since) >= config.stable_window) {
            self.panic = None;
        }

        let desired = match &mut self.panic {
            Some(panic) => {
                panic.peak = panic.peak.max(config.instances_for(panic_load)).max(current);
                panic.peak
            }
            None => stable,
        };
        // Load was seen within idle_timeout: keep at least one instance.
        Decision { desired: clamp(config, desired.max(1)), panic: self.panic.is_some() }
    }

    fn longest_window(&self) -> Duration {
        self.config.stable_window.max(self.config.panic_window)
    }
}

fn clamp(config: &ScalingConfig, desired: u32) -> u32 {
    desired.max(config.min_instances).min(config.max_instances)
}

/// `ceil(x)` as a count, saturating; a hair of tolerance keeps float noise (10.000000001) from adding an
/// instance.
#[expect(clippy::cast_possible_truncation, reason = "value is clamped to the u32 range first")]
fn ceil_to_u32(x: f64) -> u32 {
    let ceiled = (x - 1e-9).ceil();
    if ceiled.is_nan() || ceiled <= 0.0 { 0 } else { ceiled.min(f64::from(u32::MAX)) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::time::advance;

    const TICK: Duration = window::BUCKET;

    fn config(container_concurrency: u32, target_utilization: f64, max_instances: u32) -> ScalingConfig {
        ScalingConfig { container_concurrency, target_utilization, max_instances, ..ScalingConfig::default() }
    }

    /// Plays the caller for `ticks` x 100 ms: record `load`, decide, act on the decision (`current` follows
    /// `desired` at once), advance time. Returns every decision.
    async fn drive(scaler: &mut Autoscaler, current: &mut u32, load: f64, ticks: u32) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for _ in 0..ticks {
            let now = Instant::now();
            scaler.record(now, load);
            let decision = scaler.decide(now, *current);
            *current = decision.desired;
            decisions.push(decision);
            advance(TICK).await;
        }
        decisions
    }

    #[tokio::test(start_paused = true)]
    async fn scales_from_zero_on_first_sample() {
        let now = Instant::now();
        let mut scaler = Autoscaler::new(ScalingConfig::default(), now);
        assert_eq!(scaler.decide(now, 0), Decision { desired: 0, panic: false });
        scaler.record(now, 1.0);
        assert_eq!(scaler.decide(now, 0), Decision { desired: 1, panic: false });
    }

    #[tokio::test(start_paused = true)]
    async fn burst_reaches_its_count_within_a_second_in_panic() {
        let mut scaler = Autoscaler::new(config(1, 1.0, 100), Instant::now());
        let mut current = 0;
        let decisions = drive(&mut scaler, &mut current, 20.0, 10).await;
        assert_eq!(decisions.last(), Some(&Decision { desired: 20, panic: true }));

        let mut capped = Autoscaler::new(config(1, 0.7, 5), Instant::now());
        let mut current = 0;
        let decisions = drive(&mut capped, &mut current, 20.0, 10).await;
        assert_eq!(decisions.last(), Some(&Decision { desired: 5, panic: true }));
    }

    #[tokio::test(start_paused = true)]
    async fn steady_load_gives_load_over_target() {
        let mut scaler = Autoscaler::new(config(10, 0.7, 100), Instant::now());
        let mut current = 0;
        drive(&mut scaler, &mut current, 70.0, 10).await;
        assert_eq!(current, 10);
        // Two minutes later the ramp-up panic is over and the stable window says the same.
        let decisions = drive(&mut scaler, &mut current, 70.0, 1200).await;
        assert_eq!(decisions.last(), Some(&Decision { desired: 10, panic: false }));
        assert!(decisions.iter().all(|d| d.desired == 10), "count moved under steady load");
    }

    #[tokio::test(start_paused = true)]
    async fn holds_through_dips_and_scales_to_zero_only_after_idle_timeout() {
        let mut scaler = Autoscaler::new(config(1, 1.0, 100), Instant::now());
        let mut current = 0;
        drive(&mut scaler, &mut current, 10.0, 20).await;
        assert_eq!(current, 10);

        let dip = drive(&mut scaler, &mut current, 0.0, 5).await;
        assert!(dip.iter().all(|d| *d == Decision { desired: 10, panic: true }), "{dip:?}");
        drive(&mut scaler, &mut current, 10.0, 20).await;
        let last_load = Instant::now() - TICK;

        // Load stops: the count never rises, holds while panicking, and stays >= 1 until idle_timeout.
        let after = drive(&mut scaler, &mut current, 0.0, 599).await;
        assert!(after.windows(2).all(|w| w[1].desired <= w[0].desired), "count rose after load stopped");
        assert_eq!(after[250].desired, 10);
        assert!(after.iter().all(|d| d.desired >= 1), "went to zero before idle_timeout");
        assert_eq!(Instant::now() - last_load, Duration::from_secs(60));
        assert_eq!(scaler.decide(Instant::now(), current), Decision { desired: 0, panic: false });
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_longer_than_stable_window_holds_one_instance() {
        let config = ScalingConfig {
            stable_window: Duration::from_secs(10),
            panic_window: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            ..config(1, 1.0, 100)
        };
        let mut scaler = Autoscaler::new(config, Instant::now());
        let mut current = 0;
        drive(&mut scaler, &mut current, 1.0, 1).await;
        advance(Duration::from_secs(20)).await;
        assert_eq!(scaler.decide(Instant::now(), 1), Decision { desired: 1, panic: false });
        advance(Duration::from_secs(10)).await;
        assert_eq!(scaler.decide(Instant::now(), 1), Decision { desired: 0, panic: false });
    }

    #[tokio::test(start_paused = true)]
    async fn min_instances_are_always_kept() {
        let config = ScalingConfig { min_instances: 2, ..config(10, 0.7, 100) };
        let mut scaler = Autoscaler::new(config, Instant::now());
        assert_eq!(scaler.decide(Instant::now(), 0).desired, 2);
        let mut current = 2;
        drive(&mut scaler, &mut current, 3.0, 10).await;
        assert_eq!(current, 2);
        advance(Duration::from_secs(120)).await;
        assert_eq!(scaler.decide(Instant::now(), current), Decision { desired: 2, panic: false });
    }

    #[tokio::test(start_paused = true)]
    async fn sampling_gaps_count_as_zero() {
        let mut scaler = Autoscaler::new(config(10, 0.7, 100), Instant::now());
        let mut current = 0;
        drive(&mut scaler, &mut current, 70.0, 600).await;
        assert_eq!(current, 10);
        // No samples for 30 s: half the stable window is load 70, half nothing -> 35 -> 5 instances.
        // "Last value forever" would keep 10.
        advance(Duration::from_secs(30) - TICK).await;
        assert_eq!(scaler.decide(Instant::now(), current), Decision { desired: 5, panic: false });
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_and_sample_rate_does_not_matter() {
        let start = Instant::now();
        let mut scaler = Autoscaler::new(config(10, 0.7, 100), start);
        let mut now = start;
        // 1 kHz sampling for two minutes.
        for _ in 0..120_000 {
            scaler.record(now, 70.0);
            now += Duration::from_millis(1);
        }
        let stable_buckets = window::buckets_in(scaler.config().stable_window);
        assert!(scaler.history.len() as u64 <= stable_buckets, "{} buckets kept", scaler.history.len());
        assert_eq!(scaler.decide(now - Duration::from_millis(1), 10), Decision { desired: 10, panic: false });
    }

    #[tokio::test(start_paused = true)]
    async fn set_config_keeps_history() {
        let mut scaler = Autoscaler::new(config(10, 0.7, 100), Instant::now());
        let mut current = 0;
        drive(&mut scaler, &mut current, 70.0, 1200).await;
        assert_eq!(current, 10);
        scaler.set_config(config(10, 0.7, 4));
        assert_eq!(scaler.config().max_instances, 4);
        assert_eq!(scaler.decide(Instant::now(), current), Decision { desired: 4, panic: false });
        scaler.set_config(config(35, 1.0, 100));
        assert_eq!(scaler.decide(Instant::now(), current), Decision { desired: 2, panic: false });
    }
}
