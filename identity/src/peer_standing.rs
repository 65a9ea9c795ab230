//! Whether a peer authenticated once may still be served as that identity
//! now, on a connection that goes on carrying new work after its handshake.
//!
//! A TLS connection's peer is verified once, at the handshake. That is
//! enough when a connection is one app connection; it is not when one
//! connection carries new streams for hours (the tunnel between sidecars):
//! without a fresh look, a peer whose SVID has expired, or whose signing
//! key the operator has since removed from the bundle (`signet ca revoke`
//! after a compromise), would open new streams as if it had just
//! handshaken. [`PeerStanding`] answers for each new stream: the chain's
//! earliest notAfter against the clock, and, whenever the bundle in force
//! is not the one the chain was last verified against, the whole chain
//! verified again against the new one (once per bundle change, not per
//! stream).

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
    /// The bundle the chain was last verified against.
    verified_with: Mutex<Arc<TrustBundle>>,
}

impl PeerStanding {
    /// The standing of a peer that presented `chain`, verified now against
    /// the bundle in force.
    pub fn new(
        chain: &[CertificateDer<'_>],
        bundle: &BundleHandle,
        now: SystemTime,
    ) -> Result<Self, StandingLost> {
        let chain: Vec<CertificateDer<'static>> =
            chain.iter().map(|c| c.clone().into_owned()).collect();
        let current = bundle.get();
        verify_x509_svid(&chain, &current, now).map_err(|e| lost(e, now, &chain))?;
        Ok(Self {
            // Verified, so every certificate parsed.
            not_after: earliest_not_after(&chain).unwrap_or(i64::MIN),
            chain,
            verified_with: Mutex::new(current),
        })
    }

    /// Whether the peer is still in good standing at `now` under the bundle
    /// `bundle` holds.
    pub fn check(&self, bundle: &BundleHandle, now: SystemTime) -> Result<(), StandingLost> {
        if unix_seconds(now) >= self.not_after {
            return Err(StandingLost::Expired);
        }
        let current = bundle.get();
        let mut verified_with = self.verified_with.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&current, &verified_with) {
            return Ok(());
        }
        verify_x509_svid(&self.chain, &current, now).map_err(|e| lost(e, now, &self.chain))?;
        *verified_with = current;
        Ok(())
    }
}

/// A failed verification as a lost standing: expiry is named as such.
fn lost(e: SvidError, now: SystemTime, chain: &[CertificateDer<'_>]) -> StandingLost {
    match earliest_not_after(chain) {
        Some(t) if unix_seconds(now) >= t => StandingLost::Expired,
        _ => StandingLost::Untrusted(e),
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
        let standing = PeerStanding::new(&chain, &bundle, now).unwrap();
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
        let standing = PeerStanding::new(&chain, &bundle, now).unwrap();
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
    }

    #[test]
    fn a_chain_that_does_not_verify_has_no_standing() {
        let ca = TestCa::new("example.org");
        let other = TestCa::new("example.org");
        let bundle = BundleHandle::new(other.bundle());
        let now = SystemTime::now();
        assert!(matches!(
            PeerStanding::new(&peer(&ca), &bundle, now),
            Err(StandingLost::Untrusted(_))
        ));
        assert!(matches!(
            PeerStanding::new(&[], &bundle, now),
            Err(StandingLost::Untrusted(SvidError::EmptyChain))
        ));
        let garbage = [peer(&ca)[0].clone(), CertificateDer::from(vec![1u8, 2, 3])];
        assert_eq!(earliest_not_after(&garbage), None);
        assert!(matches!(
            PeerStanding::new(&garbage, &BundleHandle::new(ca.bundle()), now),
            Err(StandingLost::Untrusted(_))
        ));
        // An expired chain is named as such.
        let late = now + Duration::from_secs(86400 * 365);
        assert!(matches!(
            PeerStanding::new(&peer(&ca), &BundleHandle::new(ca.bundle()), late),
            Err(StandingLost::Expired)
        ));
    }
}
