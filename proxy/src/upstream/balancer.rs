//! Which endpoint of an upstream a new connection (TCP) or request (HTTP)
//! goes to: power of two choices, among the endpoints not ejected as
//! outliers and not already tried, on fewest active connections (TCP) or
//! on peak-EWMA latency times requests in flight (HTTP), both per unit of
//! weight. Two random candidates compared beat both "least loaded of all"
//! (every proxy herds onto the same endpoint) and round-robin (blind to a
//! slow or busy one). Plain data: the caller passes the time and the
//! random numbers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use std::sync::Mutex;
use std::time::Duration;

use crate::upstream::outlier::{EjectionPolicy, Outliers, Verdict};
use crate::upstream::peak_ewma::PeakEwma;

/// What "least loaded" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadMetric {
    /// Active connections (TCP listeners).
    Connections,
    /// Peak-EWMA latency × (requests in flight + 1) (HTTP listeners).
    PeakEwma,
    /// No load at all: the next endpoint in turn (`balancer =
    /// "round-robin"`, for comparison).
    RoundRobin,
}

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host:port` to dial.
    pub address: String,
    /// Relative share of traffic (1-1000).
    pub weight: u32,
    /// Its tunnel listener's port on `address`'s host (0: none).
    pub tunnel_port: u16,
}

struct Slot {
    endpoint: Endpoint,
    active: Arc<AtomicUsize>,
    latency: Arc<Mutex<PeakEwma>>,
}

/// An upstream's endpoints, their load and their outlier records.
pub(crate) struct Balancer {
    metric: LoadMetric,
    slots: Vec<Slot>,
    outliers: Outliers<String>,
    /// Round-robin position.
    turn: AtomicUsize,
}

/// A chosen endpoint; counted as active until dropped.
#[derive(Debug)]
pub(crate) struct Pick {
    /// Where to connect.
    pub address: String,
    /// Its tunnel port (0: none).
    pub tunnel_port: u16,
    active: Arc<AtomicUsize>,
    latency: Arc<Mutex<PeakEwma>>,
}

impl Pick {
    /// The endpoint answered in `rtt` (at `now`): its latency estimate
    /// takes it in.
    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(rtt, now);
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// No endpoints yet; load measured by `metric`.
    pub(crate) fn new(policy: EjectionPolicy, metric: LoadMetric) -> Self {
        Self {
            metric,
            slots: Vec::new(),
            outliers: Outliers::new(policy, []),
            turn: AtomicUsize::new(0),
        }
    }

    /// Takes the current endpoint set: the load and the outlier record of
    /// an endpoint still there are kept.
    pub(crate) fn set_endpoints(&mut self, endpoints: Vec<Endpoint>) {
        let now = Instant::now();
        // New endpoints start at the mean estimate of those known.
        let estimates: Vec<f64> = self
            .slots
            .iter()
            .map(|s| {
                s.latency
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .estimate(now)
            })
            .collect();
        let mean = if estimates.is_empty() {
            0.0
        } else {
            estimates.iter().sum::<f64>() / estimates.len() as f64
        };
        let mut old = std::mem::take(&mut self.slots);
        self.slots = endpoints
            .into_iter()
            .map(|endpoint| {
                match old
                    .iter()
                    .position(|s| s.endpoint.address == endpoint.address)
                {
                    Some(i) => Slot {
                        endpoint,
                        ..old.swap_remove(i)
                    },
                    None => Slot {
                        endpoint,
                        active: Arc::default(),
                        latency: Arc::new(Mutex::new(PeakEwma::starting_at(now, mean))),
                    },
                }
            })
            .collect();
        self.outliers
            .set_endpoints(self.slots.iter().map(|s| s.endpoint.address.clone()));
    }

    /// The endpoints known, with whether each is available at `now`.
    #[cfg(test)]
    pub(crate) fn endpoints(&self, now: Instant) -> Vec<(Endpoint, bool)> {
        self.slots
            .iter()
            .map(|s| {
                let available = self.outliers.is_available(&s.endpoint.address, now);
                (s.endpoint.clone(), available)
            })
            .collect()
    }

    /// How many endpoints are ejected at `now`.
    pub(crate) fn ejected(&self, now: Instant) -> usize {
        self.outliers.ejected_now(now)
    }

    /// Chooses an endpoint for a new connection at `now`, not one of
    /// `tried`; `random` is two uniform random numbers. `None` when no
    /// endpoint is left.
    pub(crate) fn pick(&self, now: Instant, tried: &[String], random: (u64, u64)) -> Option<Pick> {
        let candidates: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| {
                !tried.contains(&s.endpoint.address)
                    && self.outliers.is_available(&s.endpoint.address, now)
            })
            .collect();
        let chosen = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            n if self.metric == LoadMetric::RoundRobin => {
                candidates[self.turn.fetch_add(1, Ordering::Relaxed) % n]
            }
            n => {
                let a = (random.0 % n as u64) as usize;
                // A second, different candidate.
                let b = (a + 1 + (random.1 % (n as u64 - 1)) as usize) % n;
                let (x, y) = (candidates[a], candidates[b]);
                if self.load(y, now) < self.load(x, now) {
                    y
                } else {
                    x
                }
            }
        };
        chosen.active.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            address: chosen.endpoint.address.clone(),
            tunnel_port: chosen.endpoint.tunnel_port,
            active: chosen.active.clone(),
            latency: chosen.latency.clone(),
        })
    }

    /// A connection to `address` succeeded.
    pub(crate) fn success(&mut self, address: &str) {
        self.outliers.success(&address.to_owned());
    }

    /// A connection to `address` failed (connect or handshake) at `now`.
    pub(crate) fn failure(&mut self, address: &str, now: Instant) -> Verdict {
        self.outliers.failure(&address.to_owned(), now)
    }
}

impl Balancer {
    /// A slot's load at `now`, per unit of weight.
    fn load(&self, s: &Slot, now: Instant) -> f64 {
        let active = s.active.load(Ordering::Relaxed);
        match self.metric {
            LoadMetric::Connections | LoadMetric::RoundRobin => {
                active as f64 / f64::from(s.endpoint.weight.max(1))
            }
            LoadMetric::PeakEwma => s.latency.lock().unwrap_or_else(|p| p.into_inner()).load(
                now,
                active,
                s.endpoint.weight,
            ),
        }
    }
}

/// Two random numbers for [`Balancer::pick`], from `rand`'s per-thread
/// generator (seeded once from the system; choosing between two endpoints
/// needs no fresh entropy per connection).
pub(crate) fn random_pair() -> (u64, u64) {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (rng.gen(), rng.gen())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn ep(address: &str, weight: u32) -> Endpoint {
        Endpoint {
            address: address.into(),
            weight,
            tunnel_port: 0,
        }
    }

    fn balancer(addresses: &[&str]) -> Balancer {
        let mut b = Balancer::new(
            EjectionPolicy {
                consecutive_failures: 2,
                base_ejection: Duration::from_secs(10),
                ..Default::default()
            },
            LoadMetric::Connections,
        );
        b.set_endpoints(addresses.iter().map(|a| ep(a, 100)).collect());
        b
    }

    /// A deterministic stream of random pairs.
    fn randoms() -> impl FnMut() -> (u64, u64) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        move || (rng.gen(), rng.gen())
    }

    #[test]
    fn peak_ewma_keeps_requests_off_a_slow_endpoint() {
        let mut b = Balancer::new(EjectionPolicy::default(), LoadMetric::PeakEwma);
        b.set_endpoints(vec![ep("a:1", 100), ep("b:1", 100), ep("slow:1", 100)]);
        let mut now = Instant::now();
        let mut rng = randoms();
        let mut served = std::collections::HashMap::<String, usize>::new();
        for _ in 0..3000 {
            now += Duration::from_millis(2);
            let p = b.pick(now, &[], rng()).unwrap();
            let rtt = if p.address == "slow:1" {
                Duration::from_millis(51)
            } else {
                Duration::from_millis(1)
            };
            p.observe(rtt, now);
            *served.entry(p.address.clone()).or_default() += 1;
        }
        let slow = served.get("slow:1").copied().unwrap_or(0);
        // Tried now and then as its estimate decays, never more than 2%.
        assert!(slow > 0 && slow < 60, "{served:?}");
        // Round-robin, for contrast, sends it a third.
        let mut rr = Balancer::new(EjectionPolicy::default(), LoadMetric::RoundRobin);
        rr.set_endpoints(vec![ep("a:1", 100), ep("b:1", 100), ep("slow:1", 100)]);
        let to_slow = (0..300)
            .filter(|_| rr.pick(now, &[], rng()).unwrap().address == "slow:1")
            .count();
        assert_eq!(to_slow, 100);
    }

    #[test]
    fn a_new_endpoint_takes_its_share_at_once_but_not_every_request_in_flight() {
        let mut b = Balancer::new(EjectionPolicy::default(), LoadMetric::PeakEwma);
        b.set_endpoints(vec![ep("a:1", 100), ep("b:1", 100)]);
        let now = Instant::now();
        let mut rng = randoms();
        for _ in 0..50 {
            let p = b.pick(now, &[], rng()).unwrap();
            p.observe(Duration::from_millis(2), now);
        }
        b.set_endpoints(vec![ep("a:1", 100), ep("b:1", 100), ep("new:1", 100)]);
        // 30 requests in flight at once, before any answer.
        let held: Vec<Pick> = (0..30).map(|_| b.pick(now, &[], rng()).unwrap()).collect();
        let to_new = held.iter().filter(|p| p.address == "new:1").count();
        assert!(
            (5..=15).contains(&to_new),
            "{to_new} of 30 went to the new endpoint"
        );
    }

    #[test]
    fn of_two_candidates_the_one_with_fewer_connections_wins() {
        let b = balancer(&["a:1", "b:1"]);
        let t = Instant::now();
        let first = b.pick(t, &[], (0, 0)).unwrap();
        // With two endpoints both are always the candidates: the idle one
        // wins whatever the random numbers.
        for r in [(0, 0), (1, 0), (7, 3)] {
            let next = b.pick(t, &[], r).unwrap();
            assert_ne!(next.address, first.address);
        }
    }

    #[test]
    fn connections_spread_over_every_endpoint_and_load_follows_weight() {
        let mut b = balancer(&[]);
        b.set_endpoints(vec![ep("a:1", 100), ep("b:1", 100), ep("c:1", 200)]);
        let t = Instant::now();
        let mut rng = randoms();
        let held: Vec<Pick> = (0..400).map(|_| b.pick(t, &[], rng()).unwrap()).collect();
        let count = |a: &str| held.iter().filter(|p| p.address == a).count();
        let (a, bb, c) = (count("a:1"), count("b:1"), count("c:1"));
        assert_eq!(a + bb + c, 400);
        // Weighted least-connections: c holds about twice a's share.
        assert!((90..=110).contains(&a), "a {a} b {bb} c {c}");
        assert!((90..=110).contains(&bb), "a {a} b {bb} c {c}");
        assert!((180..=220).contains(&c), "a {a} b {bb} c {c}");
        drop(held);
        // Dropped picks are no longer counted.
        assert!(b
            .slots
            .iter()
            .all(|s| s.active.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn tried_and_ejected_endpoints_are_not_chosen() {
        let mut b = balancer(&["a:1", "b:1", "c:1"]);
        let t = Instant::now();
        let mut rng = randoms();
        let tried = vec!["a:1".to_string()];
        for _ in 0..50 {
            assert_ne!(b.pick(t, &tried, rng()).unwrap().address, "a:1");
        }
        assert_eq!(b.failure("b:1", t), Verdict::Kept);
        assert!(matches!(b.failure("b:1", t), Verdict::Ejected(_)));
        for _ in 0..50 {
            assert_eq!(b.pick(t, &tried, rng()).unwrap().address, "c:1");
        }
        let all = vec!["a:1".to_string(), "c:1".to_string()];
        assert!(b.pick(t, &all, rng()).is_none(), "nothing left");
        // Back after the ejection.
        let later = t + Duration::from_secs(10);
        assert_eq!(b.pick(later, &all, rng()).unwrap().address, "b:1");
        assert_eq!(b.ejected(t), 1);
        assert_eq!(b.ejected(later), 0);
    }

    #[test]
    fn a_new_endpoint_set_keeps_load_and_ejections_of_those_still_there() {
        let mut b = balancer(&["a:1", "b:1", "c:1"]);
        let t = Instant::now();
        let held = b.pick(t, &["b:1".into(), "c:1".into()], (0, 0)).unwrap();
        assert_eq!(held.address, "a:1");
        b.failure("c:1", t);
        b.failure("c:1", t);
        b.set_endpoints(vec![ep("a:1", 100), ep("c:1", 100), ep("d:1", 100)]);
        let status = b.endpoints(t);
        assert_eq!(
            status
                .iter()
                .map(|(e, up)| (e.address.as_str(), *up))
                .collect::<Vec<_>>(),
            vec![("a:1", true), ("c:1", false), ("d:1", true)]
        );
        // a still holds one connection: d, idle, wins against it.
        assert_eq!(b.pick(t, &["c:1".into()], (0, 0)).unwrap().address, "d:1");
        drop(held);
        assert!(b.slots[0].active.load(Ordering::Relaxed) == 0);
    }
}
