//! The retry budget of an outbound upstream: retries may add at most
//! `ratio` of the requests of the last `window`, plus `min_per_sec` per
//! second (Linkerd's default: 20% plus 10/s), so retries cannot multiply
//! the load on a failing service. Plain data; the caller passes the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits of a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BudgetLimits {
    /// Retries allowed per original request over the window.
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub min_per_sec: u32,
    /// How far back requests and retries count.
    pub window: Duration,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// Requests and retries per second of the window.
#[derive(Debug, Clone, Copy)]
struct Second {
    at: Instant,
    requests: u64,
    retries: u64,
}

/// One upstream's budget.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    limits: BudgetLimits,
    seconds: VecDeque<Second>,
}

impl RetryBudget {
    /// An empty budget.
    pub(crate) fn new(limits: BudgetLimits) -> Self {
        Self {
            limits,
            seconds: VecDeque::new(),
        }
    }

    /// The current second's counters, after dropping those out of the
    /// window.
    fn now(&mut self, now: Instant) -> &mut Second {
        let window = self.limits.window;
        while self
            .seconds
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) >= window)
        {
            self.seconds.pop_front();
        }
        let fresh = self
            .seconds
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.at) >= Duration::from_secs(1));
        if fresh {
            self.seconds.push_back(Second {
                at: now,
                requests: 0,
                retries: 0,
            });
        }
        // Just pushed or already there.
        let last = self.seconds.len() - 1;
        &mut self.seconds[last]
    }

    /// Counts an original request (not a retry).
    pub(crate) fn request(&mut self, now: Instant) {
        self.now(now).requests += 1;
    }

    /// Whether one more retry fits, and if so, counts it.
    pub(crate) fn try_retry(&mut self, now: Instant) -> bool {
        self.now(now);
        let (requests, retries) = self
            .seconds
            .iter()
            .fold((0u64, 0u64), |(q, r), s| (q + s.requests, r + s.retries));
        let allowed = self.limits.ratio * requests as f64
            + f64::from(self.limits.min_per_sec) * self.limits.window.as_secs_f64();
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.now(now).retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(min_per_sec: u32) -> BudgetLimits {
        BudgetLimits {
            ratio: 0.2,
            min_per_sec,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn retries_are_at_most_a_fifth_of_the_requests_both_sides() {
        let t = Instant::now();
        let mut b = RetryBudget::new(limits(0));
        for _ in 0..100 {
            b.request(t);
        }
        // 20% of 100: the 20th retry fits, the 21st does not.
        for n in 0..20 {
            assert!(b.try_retry(t), "retry {n}");
        }
        assert!(!b.try_retry(t));
        // Five more requests make room for one more retry.
        for _ in 0..5 {
            b.request(t);
        }
        assert!(b.try_retry(t));
        assert!(!b.try_retry(t));
    }

    #[test]
    fn a_floor_per_second_allows_retries_without_traffic() {
        let t = Instant::now();
        let mut b = RetryBudget::new(limits(10));
        // 10/s over a 10 s window: 100 retries with no requests at all.
        for n in 0..100 {
            assert!(b.try_retry(t), "retry {n}");
        }
        assert!(!b.try_retry(t));
    }

    #[test]
    fn the_window_slides_at_its_length_both_sides() {
        let t = Instant::now();
        let mut b = RetryBudget::new(limits(0));
        for _ in 0..10 {
            b.request(t);
        }
        assert!(b.try_retry(t) && b.try_retry(t));
        assert!(!b.try_retry(t + Duration::from_millis(9_999)));
        // At 10 s the first second (its requests and retries) is gone.
        for _ in 0..10 {
            b.request(t + Duration::from_secs(10));
        }
        assert!(b.try_retry(t + Duration::from_secs(10)));
        assert!(b.try_retry(t + Duration::from_secs(10)));
        assert!(!b.try_retry(t + Duration::from_secs(10)));
    }
}
