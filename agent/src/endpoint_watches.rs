//! The node's discovery watches at the CA: one `WatchEndpoints` stream per
//! watched identity, however many local sidecars watch it, relayed to each
//! of them. The streams ride the mesh's own connection to the CA, and their
//! number is capped per node (below the CA's streams per connection) and per
//! caller uid (below the node's), so no workload can make the node queue
//! its streams at the CA, nor take every watch from the other users.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signet_proto::mesh as pb;
use signet_proto::node::node_client::NodeClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Status;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What local watchers of one identity see: nothing yet, the current set,
/// or the final error (the CA refused the watch for good).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Watched {
    /// No answer from the CA yet.
    Pending,
    /// The identity's endpoints as the CA last sent them.
    Set(pb::EndpointSet),
    /// The watch ended for good, with the CA's code and message.
    Refused(tonic::Code, String),
}

/// One identity's shared watch.
struct Shared {
    set: watch::Sender<Watched>,
    /// Local watchers by uid.
    by_uid: HashMap<u32, usize>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Shared>,
}

/// The node's watches.
pub(crate) struct EndpointWatches {
    mesh_link: watch::Receiver<Option<NodeClient<Channel>>>,
    inner: Mutex<Inner>,
    max_identities: usize,
    max_per_uid: usize,
}

/// A local watcher's hold on a shared watch; released when dropped (the
/// caller went away), and the CA stream ends with the last one.
pub(crate) struct Subscription {
    /// The identity's endpoints, as they change.
    pub set: watch::Receiver<Watched>,
    owner: Arc<EndpointWatches>,
    id: String,
    uid: u32,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.owner.lock();
        let Some(shared) = inner.by_id.get_mut(&self.id) else {
            return;
        };
        if let Some(n) = shared.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                shared.by_uid.remove(&self.uid);
            }
        }
        if shared.by_uid.is_empty() {
            // The relay sees its sender's receivers gone and ends.
            inner.by_id.remove(&self.id);
        }
    }
}

impl EndpointWatches {
    /// Watches over `mesh_link`, at most `max_identities` identities at once
    /// and `max_per_uid` of them per caller uid.
    pub(crate) fn new(
        mesh_link: watch::Receiver<Option<NodeClient<Channel>>>,
        max_identities: usize,
        max_per_uid: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            mesh_link,
            inner: Mutex::default(),
            max_identities,
            max_per_uid,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Identities watched at the CA now.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.lock().by_id.len()
    }

    /// `uid`'s watch of `id`: the shared one if the node watches `id`
    /// already, else a new CA watch, if the caps allow; RESOURCE_EXHAUSTED
    /// naming the cap otherwise.
    pub(crate) fn subscribe(self: &Arc<Self>, id: &str, uid: u32) -> Result<Subscription, Status> {
        let mut inner = self.lock();
        let of_uid = inner
            .by_id
            .values()
            .filter(|s| s.by_uid.contains_key(&uid))
            .count();
        let shared = inner.by_id.get(id);
        let new_for_uid = shared.is_none_or(|s| !s.by_uid.contains_key(&uid));
        if new_for_uid && of_uid >= self.max_per_uid {
            return Err(Status::resource_exhausted(format!(
                "this user already watches {} identities through this node ([limits] max_watched_identities_per_uid); close a watch first",
                self.max_per_uid
            )));
        }
        if shared.is_none() && inner.by_id.len() >= self.max_identities {
            return Err(Status::resource_exhausted(format!(
                "this node already watches {} identities at the CA ([limits] max_watched_identities)",
                self.max_identities
            )));
        }
        let rx = match inner.by_id.get_mut(id) {
            Some(shared) => {
                *shared.by_uid.entry(uid).or_insert(0) += 1;
                shared.set.subscribe()
            }
            None => {
                // The receiver exists before the relay runs, so the relay
                // never sees a watch without watchers at its start.
                let (set, rx) = watch::channel(Watched::Pending);
                tokio::spawn(relay(self.mesh_link.clone(), id.to_owned(), set.clone()));
                inner.by_id.insert(
                    id.to_owned(),
                    Shared {
                        set,
                        by_uid: HashMap::from([(uid, 1)]),
                    },
                );
                rx
            }
        };
        Ok(Subscription {
            set: rx,
            owner: self.clone(),
            id: id.to_owned(),
            uid,
        })
    }
}

/// Relays the CA's watch of `id` into `set` until no local watcher is left;
/// re-opens it (with backoff) after a failure, so the watchers keep the last
/// set meanwhile and get the current one after.
async fn relay(
    mut mesh_link: watch::Receiver<Option<NodeClient<Channel>>>,
    id: String,
    set: watch::Sender<Watched>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let client = mesh_link.borrow_and_update().clone();
        if let Some(mut client) = client {
            let request = pb::WatchRequest {
                spiffe_id: id.clone(),
            };
            let opened = tokio::select! {
                r = client.watch_endpoints(request) => r,
                _ = set.closed() => return,
            };
            match opened {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        let msg = tokio::select! {
                            m = stream.message() => m,
                            _ = set.closed() => return,
                        };
                        match msg {
                            Ok(Some(s)) => {
                                backoff = MIN_BACKOFF;
                                set.send_replace(Watched::Set(s));
                            }
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    set.send_replace(Watched::Refused(s.code(), s.message().to_owned()));
                    return;
                }
                Err(s) => {
                    tracing::debug!(spiffe_id = %id, code = ?s.code(), message = %s.message(), "endpoint watch at the CA failed; retrying");
                }
            }
        } else {
            tokio::select! {
                r = mesh_link.changed() => if r.is_err() { return },
                _ = set.closed() => return,
            }
            continue;
        }
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>());
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = set.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn watchers_share_one_watch_per_identity_within_the_caps() {
        let (_link, rx) = watch::channel(None);
        let watches = EndpointWatches::new(rx, 3, 2);
        let a1 = watches.subscribe("spiffe://example.org/a", 1000).unwrap();
        let a2 = watches.subscribe("spiffe://example.org/a", 1000).unwrap();
        let a3 = watches.subscribe("spiffe://example.org/a", 1001).unwrap();
        assert_eq!(watches.watched(), 1, "one CA watch for three watchers");
        // Per uid: 1000 may watch a second identity, not a third.
        let b = watches.subscribe("spiffe://example.org/b", 1000).unwrap();
        let e = watches
            .subscribe("spiffe://example.org/c", 1000)
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("max_watched_identities_per_uid"));
        // ...but may join one it already watches.
        let _b2 = watches.subscribe("spiffe://example.org/b", 1000).unwrap();
        // Per node: a third identity fits, a fourth does not.
        let c = watches.subscribe("spiffe://example.org/c", 1001).unwrap();
        let e = watches
            .subscribe("spiffe://example.org/d", 1002)
            .err()
            .unwrap();
        assert!(e.message().contains("max_watched_identities"), "{e:?}");
        // The watch ends with its last watcher, and makes room.
        drop(c);
        assert_eq!(watches.watched(), 2);
        let _d = watches.subscribe("spiffe://example.org/d", 1002).unwrap();
        drop((a1, a2));
        assert_eq!(watches.watched(), 3, "1001 still watches a");
        drop(a3);
        assert_eq!(watches.watched(), 2);
        drop(b);
    }
}
