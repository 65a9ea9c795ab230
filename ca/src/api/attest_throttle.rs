//! Failed attestations per source address: a token bucket per address,
//! drained by each failed `AttestAgent` and refilled over a minute. An
//! address whose bucket is empty is refused at once, before the database
//! is touched, so a flood of bogus join tokens costs the CA almost nothing
//! and cannot slow the agents attesting beside it. Successful attestations
//! cost nothing. Time is a parameter, so the buckets are unit-tested
//! without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before full (idle) ones are dropped.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-address failure budget.
#[derive(Debug)]
pub(crate) struct AttestThrottle {
    per_minute: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AttestThrottle {
    /// A budget of `failures_per_minute` per address.
    pub(crate) fn new(failures_per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(failures_per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            tokens: (b.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute),
            at: now,
        }
    }

    /// Whether `addr` may attempt an attestation now.
    pub(crate) fn allows(&self, addr: IpAddr, now: Instant) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .get(&addr)
            .is_none_or(|b| self.refilled(*b, now).tokens >= 1.0)
    }

    /// Records a failed attestation from `addr`.
    pub(crate) fn failed(&self, addr: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED {
            let per_minute = self.per_minute;
            buckets.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + elapsed * per_minute / 60.0 < per_minute
            });
        }
        let b = buckets.get(&addr).copied().unwrap_or(Bucket {
            tokens: self.per_minute,
            at: now,
        });
        let mut b = self.refilled(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
        buckets.insert(addr, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_address_is_refused_after_its_budget_and_recovers_over_time() {
        let t = AttestThrottle::new(10);
        let bad: IpAddr = [127, 0, 0, 2].into();
        let good: IpAddr = [127, 0, 0, 1].into();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(t.allows(bad, t0), "attempt {i} is within the budget");
            t.failed(bad, t0);
        }
        assert!(
            !t.allows(bad, t0),
            "the 11th failure in a minute is refused"
        );
        assert!(t.allows(good, t0), "other addresses are not affected");
        // One token comes back every 6 s.
        assert!(!t.allows(bad, t0 + Duration::from_secs(5)));
        assert!(t.allows(bad, t0 + Duration::from_secs(6)));
        assert!(t.allows(bad, t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = AttestThrottle::new(10);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        // A minute later every bucket is full again and can be dropped.
        t.failed([10, 0, 0, 1].into(), t0 + Duration::from_secs(61));
        assert!(t.buckets.lock().unwrap_or_else(|p| p.into_inner()).len() < 10);
    }
}
