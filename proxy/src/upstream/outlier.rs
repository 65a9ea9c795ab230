//! Outlier ejection for an outbound upstream's endpoints: an endpoint with
//! `consecutive_failures` failures in a row (connect or handshake failures,
//! 5xx from its proxy) is left out for `base_ejection`, doubled on each
//! ejection that follows its return (up to `max_ejection`), and comes back
//! on its own when the time is up (its next result decides again). Never
//! more than `max_ejected_percent` of the endpoints are out at once: a
//! failure that would pass it does not eject. Plain data; the caller passes
//! the time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// When to eject, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EjectionPolicy {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// Most endpoints out at once, percent (rounded down; 50: one of two
    /// or three, none of one).
    pub max_ejected_percent: u32,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// One endpoint's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Record {
    consecutive_failures: u32,
    /// Ejections since it last succeeded after coming back.
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// The records of an upstream's endpoints, by key (their address).
#[derive(Debug)]
pub(crate) struct Outliers<K> {
    policy: EjectionPolicy,
    records: HashMap<K, Record>,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still in.
    Kept,
    /// Left out for this long.
    Ejected(Duration),
    /// Would have been ejected, but too many endpoints are out already.
    KeptAtTheLimit,
}

impl<K: Eq + Hash + Clone> Outliers<K> {
    /// Records for `endpoints`, all in.
    pub(crate) fn new(policy: EjectionPolicy, endpoints: impl IntoIterator<Item = K>) -> Self {
        Self {
            policy,
            records: endpoints
                .into_iter()
                .map(|k| (k, Record::default()))
                .collect(),
        }
    }

    /// The endpoint set changed: records of endpoints still there are
    /// kept (an ejected endpoint stays out), new ones start in.
    pub(crate) fn set_endpoints(&mut self, endpoints: impl IntoIterator<Item = K>) {
        let mut old = std::mem::take(&mut self.records);
        self.records = endpoints
            .into_iter()
            .map(|k| {
                let r = old.remove(&k).unwrap_or_default();
                (k, r)
            })
            .collect();
    }

    /// Whether endpoint `k` may be chosen at `now`.
    pub(crate) fn is_available(&self, k: &K, now: Instant) -> bool {
        self.records
            .get(k)
            .is_some_and(|r| r.ejected_until.is_none_or(|until| now >= until))
    }

    /// How many endpoints are out at `now`.
    pub(crate) fn ejected_now(&self, now: Instant) -> usize {
        self.records
            .values()
            .filter(|r| r.ejected_until.is_some_and(|until| now < until))
            .count()
    }

    /// Endpoint `k` answered well: its failure count starts over, and an
    /// endpoint back from ejection is trusted again.
    pub(crate) fn success(&mut self, k: &K) {
        if let Some(r) = self.records.get_mut(k) {
            r.consecutive_failures = 0;
            r.ejections = 0;
            r.ejected_until = None;
        }
    }

    /// Endpoint `k` failed at `now`.
    pub(crate) fn failure(&mut self, k: &K, now: Instant) -> Verdict {
        let limit = self.records.len() * self.policy.max_ejected_percent as usize / 100;
        let ejected = self.ejected_now(now);
        let Some(r) = self.records.get_mut(k) else {
            return Verdict::Kept;
        };
        let back = r.ejected_until.is_some_and(|until| now >= until);
        r.consecutive_failures += 1;
        // An endpoint just back from ejection gets one try.
        if !back && r.consecutive_failures < self.policy.consecutive_failures {
            return Verdict::Kept;
        }
        if ejected >= limit {
            return Verdict::KeptAtTheLimit;
        }
        let factor = 1u32.checked_shl(r.ejections).unwrap_or(u32::MAX);
        let length = self
            .policy
            .base_ejection
            .saturating_mul(factor)
            .min(self.policy.max_ejection);
        r.ejections = r.ejections.saturating_add(1);
        r.consecutive_failures = 0;
        r.ejected_until = Some(now + length);
        Verdict::Ejected(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EjectionPolicy {
        EjectionPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn the_nth_failure_in_a_row_ejects_and_a_success_starts_over() {
        let t = Instant::now();
        let mut o = Outliers::new(policy(), 0..3);
        assert_eq!(o.failure(&0, t), Verdict::Kept);
        assert_eq!(o.failure(&0, t), Verdict::Kept);
        o.success(&0);
        assert_eq!(o.failure(&0, t), Verdict::Kept);
        assert_eq!(o.failure(&0, t), Verdict::Kept);
        assert_eq!(o.failure(&0, t), Verdict::Ejected(Duration::from_secs(10)));
        assert!(!o.is_available(&0, t));
        assert!(o.is_available(&1, t));
    }

    #[test]
    fn an_ejection_ends_at_its_length_and_doubles_on_repeat_up_to_the_max() {
        let t = Instant::now();
        let mut o = Outliers::new(policy(), 0..2);
        for _ in 0..3 {
            o.failure(&0, t);
        }
        assert!(!o.is_available(&0, t + Duration::from_millis(9_999)));
        let back = t + Duration::from_secs(10);
        assert!(o.is_available(&0, back));
        // Back, and failing at once: out again, for twice as long.
        assert_eq!(
            o.failure(&0, back),
            Verdict::Ejected(Duration::from_secs(20))
        );
        let back = back + Duration::from_secs(20);
        // Then the maximum caps it (40 s would be next).
        assert_eq!(
            o.failure(&0, back),
            Verdict::Ejected(Duration::from_secs(35))
        );
        // A success after coming back resets the doubling.
        let back = back + Duration::from_secs(35);
        o.success(&0);
        for _ in 0..2 {
            assert_eq!(o.failure(&0, back), Verdict::Kept);
        }
        assert_eq!(
            o.failure(&0, back),
            Verdict::Ejected(Duration::from_secs(10))
        );
    }

    #[test]
    fn never_more_than_half_the_endpoints_are_out() {
        let t = Instant::now();
        // Three endpoints: one may be out, not two.
        let mut o = Outliers::new(policy(), 0..3);
        for _ in 0..3 {
            o.failure(&0, t);
        }
        for _ in 0..2 {
            o.failure(&1, t);
        }
        assert_eq!(o.failure(&1, t), Verdict::KeptAtTheLimit);
        assert!(o.is_available(&1, t));
        // A single endpoint is never ejected: there would be nothing left.
        let mut one = Outliers::new(policy(), 0..1);
        for _ in 0..2 {
            one.failure(&0, t);
        }
        assert_eq!(one.failure(&0, t), Verdict::KeptAtTheLimit);
        // Once the first is back, the second may go.
        let later = t + Duration::from_secs(10);
        assert_eq!(
            o.failure(&1, later),
            Verdict::Ejected(Duration::from_secs(10))
        );
    }
}

#[cfg(test)]
mod keyed_tests {
    use super::*;

    #[test]
    fn a_changed_endpoint_set_keeps_the_records_of_those_still_there() {
        let t = Instant::now();
        let policy = EjectionPolicy {
            consecutive_failures: 1,
            ..Default::default()
        };
        let mut o = Outliers::new(policy, ["a", "b", "c"]);
        assert!(matches!(o.failure(&"a", t), Verdict::Ejected(_)));
        o.set_endpoints(["a", "c", "d", "e"]);
        assert!(!o.is_available(&"a", t), "still out after the update");
        assert!(o.is_available(&"d", t));
        assert!(!o.is_available(&"b", t), "gone");
        assert_eq!(o.ejected_now(t), 1);
    }
}
