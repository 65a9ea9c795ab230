//! The endpoints local sidecars have registered, while their registration
//! calls are open: the set the agent publishes to the CA, and each
//! registration's state as the CA last answered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use signet_identity::endpoint::EndpointAddress;
use signet_proto::mesh::{self as pb, registration_state::State};
use tokio::sync::watch;

/// One registration's state, as its caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegState {
    /// Pending, published or refused.
    pub state: State,
    /// The address as published.
    pub address: String,
    /// Why the CA refused it.
    pub reason: String,
}

struct Held {
    endpoint: pb::Endpoint,
    state: watch::Sender<RegState>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    held: BTreeMap<u64, Held>,
}

/// The registrations of this node.
pub(crate) struct LocalEndpoints {
    inner: Mutex<Inner>,
    /// Counts changes of the set (the publisher sends it again on each).
    changed: watch::Sender<u64>,
}

/// A registration, withdrawn when dropped (its call closed).
pub(crate) struct Registration {
    id: u64,
    owner: Arc<LocalEndpoints>,
    /// The state its caller follows.
    pub state: watch::Receiver<RegState>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.owner.remove(self.id);
    }
}

impl LocalEndpoints {
    /// No registrations.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `endpoint` until the returned registration is dropped; `None`
    /// when `max` are held already.
    pub(crate) fn register(
        self: &Arc<Self>,
        endpoint: pb::Endpoint,
        max: usize,
    ) -> Option<Registration> {
        let mut inner = self.lock();
        if inner.held.len() >= max {
            return None;
        }
        let id = inner.next;
        inner.next += 1;
        let (state, rx) = watch::channel(RegState {
            state: State::Pending,
            address: endpoint.address.clone(),
            reason: String::new(),
        });
        inner.held.insert(id, Held { endpoint, state });
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        Some(Registration {
            id,
            owner: self.clone(),
            state: rx,
        })
    }

    fn remove(&self, id: u64) {
        if self.lock().held.remove(&id).is_some() {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// How many are held.
    pub(crate) fn len(&self) -> usize {
        self.lock().held.len()
    }

    /// Whether none are.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The set to publish (the same endpoint registered twice counts once).
    pub(crate) fn set(&self) -> Vec<pb::Endpoint> {
        let mut out: Vec<pb::Endpoint> = Vec::new();
        for h in self.lock().held.values() {
            if !out
                .iter()
                .any(|e| e.spiffe_id == h.endpoint.spiffe_id && e.address == h.endpoint.address)
            {
                out.push(h.endpoint.clone());
            }
        }
        out
    }

    /// A receiver that changes whenever the set does.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Applies the CA's answer to an update: each registration is
    /// published, refused, or still pending.
    pub(crate) fn acknowledged(
        &self,
        published: &[pb::Endpoint],
        refused: &[(pb::Endpoint, String)],
    ) {
        for h in self.lock().held.values() {
            let e = &h.endpoint;
            let next = if let Some(p) = published
                .iter()
                .find(|p| p.spiffe_id == e.spiffe_id && same_address(&e.address, &p.address))
            {
                RegState {
                    state: State::Published,
                    address: p.address.clone(),
                    reason: String::new(),
                }
            } else if let Some((_, why)) = refused
                .iter()
                .find(|(r, _)| r.spiffe_id == e.spiffe_id && r.address == e.address)
            {
                RegState {
                    state: State::Refused,
                    address: e.address.clone(),
                    reason: why.clone(),
                }
            } else {
                RegState {
                    state: State::Pending,
                    address: e.address.clone(),
                    reason: String::new(),
                }
            };
            h.state.send_if_modified(|s| {
                let differs = *s != next;
                *s = next;
                differs
            });
        }
    }

    /// The CA connection is gone: every registration is pending again.
    pub(crate) fn unconfirmed(&self) {
        self.acknowledged(&[], &[]);
    }
}

/// Whether `published` is what registering `registered` gave (the CA fills
/// in an empty host).
fn same_address(registered: &str, published: &str) -> bool {
    if registered == published {
        return true;
    }
    match (
        EndpointAddress::parse(registered),
        EndpointAddress::parse(published),
    ) {
        (Ok(r), Ok(p)) => r.host.is_none() && r.port == p.port,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(id: &str, address: &str) -> pb::Endpoint {
        pb::Endpoint {
            spiffe_id: id.into(),
            address: address.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_registration_lives_while_it_is_held() {
        let local = LocalEndpoints::new();
        let mut changes = local.subscribe();
        let a = local.register(ep("spiffe://td/web", ":8443"), 10).unwrap();
        let b = local.register(ep("spiffe://td/web", ":8443"), 10).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        assert_eq!(local.set().len(), 1, "the same endpoint twice is one");
        drop(a);
        assert!(changes.has_changed().unwrap());
        assert_eq!(local.set().len(), 1, "still held by the other");
        drop(b);
        assert!(local.set().is_empty());
    }

    #[test]
    fn the_cap_holds_on_both_sides() {
        let local = LocalEndpoints::new();
        let held: Vec<_> = (0..3)
            .map(|i| local.register(ep("spiffe://td/web", &format!(":{}", i + 1)), 3))
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert!(local.register(ep("spiffe://td/web", ":9"), 3).is_none());
        drop(held);
        assert!(local.register(ep("spiffe://td/web", ":9"), 3).is_some());
    }

    #[test]
    fn the_ca_answer_sets_each_state() {
        let local = LocalEndpoints::new();
        let web = local.register(ep("spiffe://td/web", ":8443"), 10).unwrap();
        let db = local
            .register(ep("spiffe://td/db", "10.0.0.1:5432"), 10)
            .unwrap();
        assert_eq!(web.state.borrow().state, State::Pending);
        local.acknowledged(
            &[ep("spiffe://td/web", "192.0.2.1:8443")],
            &[(ep("spiffe://td/db", "10.0.0.1:5432"), "no entry".into())],
        );
        assert_eq!(web.state.borrow().state, State::Published);
        assert_eq!(web.state.borrow().address, "192.0.2.1:8443");
        assert_eq!(db.state.borrow().state, State::Refused);
        assert_eq!(db.state.borrow().reason, "no entry");
        local.unconfirmed();
        assert_eq!(web.state.borrow().state, State::Pending);
    }
}
