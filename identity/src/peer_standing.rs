//! Whether a peer authenticated once may still be served as that identity
//! now, on a connection that goes on carrying new work after its handshake.
//!
//! A TLS connection's peer is verified once, at the handshake. That is
//! enough when a connection is one app connection; it is not when one
//! connection carries new streams for hours (the tunnel between sidecars):
//! without a fresh look, a peer whose SVID has expired, or whose signing
//! key the operator has since removed from the bundle (`signet ca revoke`
//! after a compromise), would open new streams as if it had just
//! handshaken. [`PeerStanding`] answers for each new stream or request: the
//! chain's earliest notAfter against the clock, and, whenever the bundle in
//! force is not the one the chain was last verified against, the whole
//! chain verified again against the new one (once per bundle change, not
//! per stream). It costs no verification of its own while the bundle stays
//! the same: the handshake's counts, as long as the bundle it records is
//! the one in force when the handshake began.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::bundle::TrustBundle;
use crate::tls::BundleHandle;
use crate::verify::{verify_x509_svid, SvidError};
use crate::x509_svid::unix_seconds;

/// Why a peer may no longer open anything new on its connection.
#[derive(Debug, thiserror::Error)]
pub enum StandingLost {
    /// A certificate of its chain has passed its notAfter.
    #[error("the peer's SVID has expired")]
    Expired,
    /// The chain no longer verifies against the bundle in force (its
    /// authority was removed from the bundle, typically).
    #[error("the peer's SVID no longer verifies against the trust bundle: {0}")]
    Untrusted(SvidError),
}

impl StandingLost {
    /// A short, stable name for metrics and the refusal sent to the peer.
    pub fn reason(&self) -> &'static str {
        match self {
            StandingLost::Expired => "peer-svid-expired",
            StandingLost::Untrusted(_) => "peer-svid-untrusted",
        }
    }
}

/// The verified chain of a connection's peer, checked again before each
/// new use of the connection.
pub struct PeerStanding {
    chain: Vec<CertificateDer<'static>>,
    /// The earliest notAfter of the chain, Unix seconds.
    not_after: i64,
    /// The bundle the chain was last verified against (or an older one),
    /// and the verdict: kept, so that a refused peer sending on costs one
    /// verification per bundle, not one per request.
    verified_with: Mutex<(Arc<TrustBundle>, Result<(), SvidError>)>,
}

impl std::fmt::Debug for PeerStanding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStanding")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl PeerStanding {
    /// The standing of a peer that presented `chain` in a handshake that
    /// verified it; `bundle_before` is the bundle in force when the
    /// handshake began, taken before it. (Taken after, it could be a newer
    /// bundle the chain was never checked against; taken before, a change
    /// during the handshake only means one more verification later.)
    pub fn after_handshake(chain: &[CertificateDer<'_>], bundle_before: Arc<TrustBundle>) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            chain.iter().map(|c| c.clone().into_owned()).collect();
        Self {
            // An empty or unparsable chain has no standing.
            not_after: earliest_not_after(&chain).unwrap_or(i64::MIN),
            chain,
            verified_with: Mutex::new((bundle_before, Ok(()))),
        }
    }

    /// Whether the peer is still in good standing at `now` under the bundle
    /// `bundle` holds.
    pub fn check(&self, bundle: &BundleHandle, now: SystemTime) -> Result<(), StandingLost> {
        if unix_seconds(now) >= self.not_after {
            return Err(StandingLost::Expired);
        }
        let current = bundle.get();
        let mut verified = self.verified_with.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&current, &verified.0) {
            // Not expired (above): a failure is the bundle's verdict.
            let verdict = verify_x509_svid(&self.chain, &current, now).map(|_| ());
            *verified = (current, verdict);
        }
        verified.1.clone().map_err(StandingLost::Untrusted)
    }
}

/// When the first certificate of `chain` expires (Unix seconds); `None`
/// for an empty chain or one with a certificate that does not parse.
fn earliest_not_after(chain: &[CertificateDer<'_>]) -> Option<i64> {
    chain
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp())
        })
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .min()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::{LeafSpec, TestCa};
    use std::time::Duration;

    fn peer(ca: &TestCa) -> Vec<CertificateDer<'static>> {
        ca.leaf(&LeafSpec::valid("spiffe://example.org/peer")).0
    }

    #[test]
    fn a_peer_stands_until_its_chain_expires() {
        let ca = TestCa::new("example.org");
        let chain = peer(&ca);
        let bundle = BundleHandle::new(ca.bundle());
        let now = SystemTime::now();
        let standing = PeerStanding::after_handshake(&chain, bundle.get());
        standing.check(&bundle, now).unwrap();
        let expiry = SystemTime::UNIX_EPOCH
            + Duration::from_secs(earliest_not_after(&chain).unwrap().try_into().unwrap());
        standing
            .check(&bundle, expiry - Duration::from_secs(1))
            .unwrap();
        assert!(matches!(
            standing.check(&bundle, expiry),
            Err(StandingLost::Expired)
        ));
    }

    #[test]
    fn a_peer_whose_authority_leaves_the_bundle_loses_its_standing() {
        let ca = TestCa::new("example.org");
        let other = TestCa::new("example.org");
        let chain = peer(&ca);
        let bundle = BundleHandle::new(ca.bundle());
        let now = SystemTime::now();
        let standing = PeerStanding::after_handshake(&chain, bundle.get());
        // A new bundle that still holds the peer's authority (a key being
        // added): still in standing.
        bundle.set(
            TrustBundle::new(
                ca.trust_domain.clone(),
                vec![ca.root.der.clone(), other.root.der.clone()],
            )
            .unwrap(),
        );
        standing.check(&bundle, now).unwrap();
        // The peer's authority removed: refused, and for every later stream.
        bundle.set(other.bundle());
        let e = standing.check(&bundle, now).unwrap_err();
        assert!(matches!(e, StandingLost::Untrusted(_)), "{e:?}");
        assert_eq!(e.reason(), "peer-svid-untrusted");
        assert!(standing.check(&bundle, now).is_err());
        // The verdict belongs to that bundle: one holding the authority
        // again (the revocation undone) restores the standing.
        bundle.set(ca.bundle());
        standing.check(&bundle, now).unwrap();
    }

    #[test]
    fn a_bundle_changed_during_the_handshake_is_checked_at_the_first_use() {
        let ca = TestCa::new("example.org");
        let other = TestCa::new("example.org");
        let bundle = BundleHandle::new(ca.bundle());
        let before = bundle.get();
        // The bundle changed while the peer was handshaking.
        bundle.set(other.bundle());
        let standing = PeerStanding::after_handshake(&peer(&ca), before);
        assert!(matches!(
            standing.check(&bundle, SystemTime::now()),
            Err(StandingLost::Untrusted(_))
        ));
    }

    #[test]
    fn a_chain_that_does_not_parse_has_no_standing() {
        let ca = TestCa::new("example.org");
        let bundle = BundleHandle::new(ca.bundle());
        let now = SystemTime::now();
        assert!(PeerStanding::after_handshake(&[], bundle.get())
            .check(&bundle, now)
            .is_err());
        let garbage = [peer(&ca)[0].clone(), CertificateDer::from(vec![1u8, 2, 3])];
        assert_eq!(earliest_not_after(&garbage), None);
        assert!(PeerStanding::after_handshake(&garbage, bundle.get())
            .check(&bundle, now)
            .is_err());
        let other = BundleHandle::new(TestCa::new("example.org").bundle());
        assert!(matches!(
            PeerStanding::after_handshake(&peer(&ca), bundle.get()).check(&other, now),
            Err(StandingLost::Untrusted(_))
        ));
    }
}
