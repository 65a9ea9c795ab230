//! When the rotator acts, as pure functions of the time: when an SVID is
//! due for renewal, how long to wait after a failure, and how long a call
//! to the CA may take. Times are milliseconds since the epoch, read from
//! the rotator's injected clock.

use std::time::Duration;

/// The first wait after a failure.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between tries.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// When an SVID received at `issued_at` and expiring at `not_after` (Unix
/// seconds) is due, in ms since the epoch: at `renewal_fraction` of its
/// lifetime, less up to a tenth of that fraction as jitter. The jitter is
/// derived from the expiry, so the due time stays put across passes and
/// SVIDs issued together still spread out.
pub(crate) fn renew_at_ms(renewal_fraction: f64, issued_at: i64, not_after: i64) -> i64 {
    let lifetime = Duration::from_secs((not_after - issued_at).max(1) as u64);
    let jitter = ((not_after as u64).wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
    let fraction = renewal_fraction * (1.0 - 0.1 * jitter);
    issued_at * 1000 + lifetime.mul_f64(fraction).as_millis() as i64
}

/// Exponential backoff between failed passes: doubled per failure up to
/// [`MAX_BACKOFF`], back to [`MIN_BACKOFF`] on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            current: MIN_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait before the next try after a failure (see [`retry_wait`]),
    /// and the backoff grown for the one after.
    pub(crate) fn failed(&mut self, jitter: f64, first_expiry_in: Duration) -> Duration {
        let wait = retry_wait(self.current, jitter, first_expiry_in);
        self.current = (self.current * 2).min(MAX_BACKOFF);
        wait
    }

    /// A pass succeeded.
    pub(crate) fn reset(&mut self) {
        self.current = MIN_BACKOFF;
    }

    /// The backoff the next failure starts from.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Duration {
        self.current
    }
}

/// How long to wait before the next try after a failure: the backoff with
/// ±20% jitter, but never more than a quarter of the time left before the
/// first SVID expires (at least `MIN_BACKOFF / 2`), so an outage that ends
/// in time does not leave workloads with expired SVIDs while the agent
/// sleeps.
pub(crate) fn retry_wait(backoff: Duration, jitter: f64, first_expiry_in: Duration) -> Duration {
    backoff
        .mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
        .min(first_expiry_in / 4)
        .max(MIN_BACKOFF / 2)
}

/// How long a call to the CA may take: a CA replica stuck (on its
/// database, say) must not hold the agent past the point where it could
/// still renew from another try. A quarter of the time left before the
/// first SVID expires, between 1 and 15 s.
pub(crate) fn call_deadline(first_expiry_in: Duration) -> Duration {
    (first_expiry_in / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// How long a re-attestation may take. Nothing is left to save by
/// hurrying (the agent SVID is gone), and it does more than a renewal (a
/// handshake without a client certificate, a challenge, a proof), so it
/// gets the longest call deadline rather than a quarter of no time left.
pub(crate) const REATTEST_DEADLINE: Duration = Duration::from_secs(15);

/// The time from `now_ms` until the earliest of `not_afters` (Unix
/// seconds); zero once it has passed.
pub(crate) fn first_expiry_in(not_afters: impl Iterator<Item = i64>, now_ms: i64) -> Duration {
    let first = not_afters.min().unwrap_or(i64::MAX / 1000);
    Duration::from_millis((first.saturating_mul(1000) - now_ms).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_at_the_fraction_less_at_most_a_tenth_of_it() {
        let issued = 1_000_000;
        for lifetime in [60, 3600, 86_400] {
            let mut seen = std::collections::HashSet::new();
            for k in 0..200 {
                let not_after = issued + lifetime + k;
                let at = renew_at_ms(0.5, issued, not_after);
                let life_ms = (not_after - issued) as f64 * 1000.0;
                let earliest = issued * 1000 + (life_ms * 0.45) as i64;
                let latest = issued * 1000 + (life_ms * 0.5) as i64;
                assert!(
                    (earliest..=latest).contains(&at),
                    "lifetime {lifetime}: {at} outside [{earliest}, {latest}]"
                );
                seen.insert((at - issued * 1000) * 1000 / life_ms as i64);
            }
            assert!(seen.len() > 10, "the jitter spreads due times: {seen:?}");
        }
        // The same SVID is due at the same time on every pass.
        assert_eq!(
            renew_at_ms(0.5, issued, issued + 3600),
            renew_at_ms(0.5, issued, issued + 3600)
        );
    }

    #[test]
    fn retries_come_sooner_as_the_first_svid_nears_expiry() {
        let long = Duration::from_secs(3600);
        // Far from expiry: the backoff, with its jitter.
        assert_eq!(retry_wait(MAX_BACKOFF, 0.5, long), MAX_BACKOFF);
        assert_eq!(
            retry_wait(Duration::from_secs(10), 0.0, long),
            Duration::from_secs(8)
        );
        // 8 s left: at most 2 s, whatever the backoff.
        assert_eq!(
            retry_wait(MAX_BACKOFF, 1.0, Duration::from_secs(8)),
            Duration::from_secs(2)
        );
        // Expired or about to: the floor, not a busy loop.
        assert_eq!(
            retry_wait(MAX_BACKOFF, 1.0, Duration::ZERO),
            MIN_BACKOFF / 2
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets_on_success() {
        let long = Duration::from_secs(3600);
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..9).map(|_| b.failed(0.5, long)).collect();
        assert_eq!(
            waits,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
                .map(Duration::from_secs_f64)
                .to_vec()
        );
        // Jitter stays within ±20%.
        let mut low = Backoff::default();
        let mut high = Backoff::default();
        for _ in 0..4 {
            low.failed(0.0, long);
            high.failed(1.0, long);
        }
        assert_eq!(low.failed(0.0, long), Duration::from_secs_f64(6.4));
        assert_eq!(high.failed(1.0, long), Duration::from_secs_f64(9.6));
        b.reset();
        assert_eq!(b.current(), MIN_BACKOFF);
    }

    #[test]
    fn calls_get_a_quarter_of_the_time_left_within_bounds() {
        assert_eq!(
            call_deadline(Duration::from_secs(3600)),
            Duration::from_secs(15)
        );
        assert_eq!(
            call_deadline(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
        assert_eq!(call_deadline(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            first_expiry_in([100, 50, 70].into_iter(), 40_000),
            Duration::from_secs(10)
        );
        assert_eq!(first_expiry_in([10].into_iter(), 40_000), Duration::ZERO);
    }
}
