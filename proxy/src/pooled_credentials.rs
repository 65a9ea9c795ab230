//! What a pooled connection to an upstream proxy (an HTTP/2 connection or
//! a tunnel connection) was made with, and the one rule for whether it may
//! carry something new: it must have been made with the SVID we hold now
//! (after a rotation new work goes to new connections, which present the
//! new SVID), and its server must still be in standing (its SVID unexpired
//! and verifying against the bundle in force: [`PeerStanding`]). Otherwise
//! it leaves the pool, finishing what it carries.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use signet_identity::peer_standing::{PeerStanding, StandingLost};
use signet_identity::tls::BundleHandle;

/// The SVID a pooled connection was made with and its server's chain.
pub struct PooledCredentials {
    key: Arc<CertifiedKey>,
    server: PeerStanding,
}

/// Why a pooled connection may carry nothing new.
#[derive(Debug)]
pub enum Retired {
    /// It was made with an SVID we no longer hold.
    Rotated,
    /// Its server's SVID has expired or lost its authority.
    ServerLost(StandingLost),
}

impl PooledCredentials {
    /// A connection made with `key` to a server in `server` standing.
    pub fn new(key: Arc<CertifiedKey>, server: PeerStanding) -> Self {
        Self { key, server }
    }

    /// Whether the connection may carry new work for a caller holding
    /// `key`, under `bundle`, at `now`.
    pub fn usable(
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
