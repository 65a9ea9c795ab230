//! The inbound connections open right now, by peer, so that a policy change
//! reaches them: when a reload leaves a peer nothing it may do, its open
//! connections are closed (TCP) or dropped with all their streams (HTTP),
//! as ztunnel does, instead of running on under the policy they were
//! admitted by. Requests on HTTP connections are decided one by one anyway,
//! so a narrower policy applies to the next request without this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use signet_identity::SpiffeId;
use tokio::sync::Notify;

use crate::policy::CompiledPolicy;

struct Open {
    peer: SpiffeId,
    own: SpiffeId,
    revoked: Arc<Notify>,
}

/// Every open inbound connection, shared by the listener and the policy
/// watcher.
#[derive(Default)]
pub struct OpenConnections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

/// One connection's place in [`OpenConnections`], removed when dropped.
pub struct Registration {
    id: u64,
    set: Arc<OpenConnections>,
    revoked: Arc<Notify>,
}

impl Registration {
    /// Completes when policy no longer lets this connection's peer in.
    pub async fn revoked(&self) {
        self.revoked.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a connection from `peer` to `own` until the registration is
    /// dropped.
    pub fn register(self: &Arc<Self>, peer: &SpiffeId, own: &SpiffeId) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Open {
                peer: peer.clone(),
                own: own.clone(),
                revoked: revoked.clone(),
            },
        );
        Registration {
            id,
            set: self.clone(),
            revoked,
        }
    }

    /// Signals every connection whose peer `policy` no longer allows;
    /// returns how many.
    pub fn revoke_denied(&self, policy: &CompiledPolicy) -> usize {
        let open = self.lock();
        let mut n = 0;
        for o in open.values() {
            if !policy.may_allow(&o.peer, &o.own) {
                // A stored permit: the connection sees it even if it is not
                // waiting at this instant.
                o.revoked.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::{parse_file, CompiledPolicy};

    #[tokio::test]
    async fn only_connections_of_revoked_peers_are_signalled() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let own = id("spiffe://example.org/api");
        let set = Arc::new(OpenConnections::default());
        let web = set.register(&id("spiffe://example.org/web"), &own);
        let batch = set.register(&id("spiffe://example.org/batch"), &own);
        let policy = parse_file(
            std::path::Path::new("p.toml"),
            "[[allow]]\nto = \"spiffe://example.org/api\"\nfrom = [\"spiffe://example.org/batch\"]\n",
        )
        .unwrap();
        let n = set.revoke_denied(&CompiledPolicy::for_destination(&policy, None));
        assert_eq!(n, 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), web.revoked())
            .await
            .expect("web was revoked");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), batch.revoked())
                .await
                .is_err(),
            "batch is still allowed"
        );
        drop(web);
        assert_eq!(set.len(), 1);
    }
}
