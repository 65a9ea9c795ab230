//! What a pooled connection to an upstream proxy (an HTTP/2 connection or
//! a tunnel connection) was made with, and the one rule for whether it may
//! carry something new: it must have been made with the SVID we hold now
//! (after a rotation new work goes to new connections, which present the
//! new SVID), and its server must still be in standing (its SVID unexpired
//! and verifying against the bundle in force: [`PeerStanding`]). Otherwise
//! it leaves the pool, finishing what it carries. And nothing new goes out
//! on an SVID of ours that has expired ([`not_expired`]).

use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use signet_identity::peer_standing::{PeerStanding, StandingLost};
use signet_identity::tls::BundleHandle;

use crate::workload_identity::Identity;

/// The SVID a pooled connection was made with and its server's chain.
pub(crate) struct PooledCredentials {
    key: Arc<CertifiedKey>,
    server: PeerStanding,
}

/// Whether `identity` may still make or use a pooled connection: not once
/// it has expired and the agent has not renewed it (a new connection would
/// fail its handshake; a pooled one must not stretch its life). On refusal,
/// the metric reason and the error.
pub(crate) fn not_expired(identity: &Identity) -> Result<(), (&'static str, String)> {
    if identity.is_valid() {
        Ok(())
    } else {
        Err((
            "svid_expired",
            "our SVID has expired and the agent has not renewed it".into(),
        ))
    }
}

/// Why a pooled connection may carry nothing new.
#[derive(Debug)]
pub(crate) enum Retired {
    /// It was made with an SVID we no longer hold.
    Rotated,
    /// Its server's SVID has expired or lost its authority.
    ServerLost(StandingLost),
}

impl PooledCredentials {
    /// A connection made with `key` to a server in `server` standing.
    pub(crate) fn new(key: Arc<CertifiedKey>, server: PeerStanding) -> Self {
        Self { key, server }
    }

    /// Whether the connection may carry new work for a caller holding
    /// `key`, under `bundle`, at `now`.
    pub(crate) fn usable(
        &self,
        key: &Arc<CertifiedKey>,
        bundle: &BundleHandle,
        now: SystemTime,
    ) -> Result<(), Retired> {
        if !Arc::ptr_eq(&self.key, key) {
            return Err(Retired::Rotated);
        }
        self.server.check(bundle, now).map_err(Retired::ServerLost)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tunnel::test_pools::certified_key;
    use signet_identity::testing::TestCa;
    use signet_identity::x509_svid::unix_seconds;

    #[test]
    fn an_expired_svid_of_ours_makes_and_uses_no_pooled_connection() {
        let ca = TestCa::new("example.org");
        let id = "spiffe://example.org/client";
        let identity = |not_after: i64| Identity {
            spiffe_id: signet_identity::SpiffeId::parse(id).unwrap(),
            key: certified_key(&ca, id),
            not_after,
            bundle: BundleHandle::new(ca.bundle()),
        };
        let now = unix_seconds(SystemTime::now());
        assert!(not_expired(&identity(now + 60)).is_ok());
        let (reason, _) = not_expired(&identity(now)).unwrap_err();
        assert_eq!(reason, "svid_expired");
    }

    #[test]
    fn a_rotated_svid_retires_the_connection_before_its_server_is_looked_at() {
        let ca = TestCa::new("example.org");
        let bundle = BundleHandle::new(ca.bundle());
        let key = certified_key(&ca, "spiffe://example.org/client");
        let (server, _) = ca.leaf(&signet_identity::testing::LeafSpec::valid(
            "spiffe://example.org/server",
        ));
        let made = PooledCredentials::new(
            key.clone(),
            PeerStanding::after_handshake(&server, bundle.get()),
        );
        let now = SystemTime::now();
        assert!(made.usable(&key, &bundle, now).is_ok());
        let rotated = certified_key(&ca, "spiffe://example.org/client");
        assert!(matches!(
            made.usable(&rotated, &bundle, now),
            Err(Retired::Rotated)
        ));
    }
}
