//! Peak-EWMA latency of one endpoint (Finagle's and Linkerd's balancer
//! load): the estimate jumps to any slower observation at once and decays
//! toward faster ones, and toward zero while nothing is observed (so an
//! endpoint that was slow is tried again later). The load of an endpoint is
//! its estimate times the requests it has in flight plus one. Plain data:
//! the caller passes the time.

use std::time::{Duration, Instant};

/// How fast the estimate forgets: after `DECAY` without observations it is
/// down to 1/e.
pub(crate) const DECAY: Duration = Duration::from_secs(10);

/// One endpoint's latency estimate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeakEwma {
    /// Nanoseconds.
    estimate: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// The estimate of an endpoint never observed: zero, so it is tried
    /// at once (its first answer, a peak, sets the estimate). Starting at a
    /// default such as 30 ms would keep a new instance idle for tens of
    /// seconds beside endpoints answering in 1 ms.
    #[cfg(test)]
    pub(crate) fn new(now: Instant) -> Self {
        Self::starting_at(now, 0.0)
    }

    /// An estimate of `nanos` at `now`: a new endpoint joining others
    /// starts at their mean, so it takes its share at once without drawing
    /// every request in flight before its first answer.
    pub(crate) fn starting_at(now: Instant, nanos: f64) -> Self {
        Self {
            estimate: nanos.max(0.0),
            stamp: now,
        }
    }

    /// Decays the estimate to `now`.
    fn decay(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        let factor = (-elapsed / DECAY.as_nanos() as f64).exp();
        self.estimate *= factor;
        self.stamp = now;
        factor
    }

    /// Takes in a response time observed at `now`.
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let before = self.estimate;
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        self.stamp = now;
        if rtt > before {
            // A peak: taken at once.
            self.estimate = rtt;
        } else {
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            self.estimate = before * w + rtt * (1.0 - w);
        }
    }

    /// The estimate at `now` (decayed), nanoseconds.
    pub(crate) fn estimate(&mut self, now: Instant) -> f64 {
        self.decay(now);
        self.estimate
    }

    /// The load at `now` with `pending` requests in flight and `weight`.
    pub(crate) fn load(&mut self, now: Instant, pending: usize, weight: u32) -> f64 {
        self.estimate(now) * (pending as f64 + 1.0) / f64::from(weight.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1_000_000.0;

    #[test]
    fn a_slow_response_is_taken_at_once_and_fast_ones_pull_it_down_over_time() {
        let t = Instant::now();
        let mut e = PeakEwma::new(t);
        e.observe(Duration::from_millis(50), t);
        assert!((e.estimate(t) - 50.0 * MS).abs() < 1.0);
        // Fast responses right after barely move it...
        e.observe(Duration::from_millis(1), t + Duration::from_millis(10));
        let soon = e.estimate(t + Duration::from_millis(10));
        assert!(soon > 49.0 * MS, "{soon}");
        // ...but a steady stream of them does, within a few DECAYs.
        let mut now = t;
        for _ in 0..600 {
            now += Duration::from_millis(100);
            e.observe(Duration::from_millis(1), now);
        }
        let later = e.estimate(now);
        assert!(later < 1.5 * MS, "{later}");
        // A new peak is taken at once again.
        e.observe(Duration::from_millis(80), now);
        assert!((e.estimate(now) - 80.0 * MS).abs() < 1.0);
    }

    #[test]
    fn an_unobserved_estimate_decays_toward_zero() {
        let t = Instant::now();
        let mut e = PeakEwma::new(t);
        e.observe(Duration::from_millis(50), t);
        let after = e.estimate(t + DECAY);
        assert!(
            (after - 50.0 * MS / std::f64::consts::E).abs() < 0.01 * MS,
            "{after}"
        );
    }

    #[test]
    fn load_grows_with_pending_requests_and_shrinks_with_weight() {
        let t = Instant::now();
        let mut e = PeakEwma::new(t);
        assert_eq!(e.load(t, 3, 100), 0.0, "never observed: tried first");
        e.observe(Duration::from_millis(5), t);
        let idle = e.load(t, 0, 100);
        assert!((e.load(t, 1, 100) - 2.0 * idle).abs() < 1.0);
        assert!((e.load(t, 0, 200) - idle / 2.0).abs() < 1.0);
    }
}
