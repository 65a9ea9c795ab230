//! X.509-SVID verification: the one function the CA, the agent and the proxy
//! all use to decide whether a presented chain proves a SPIFFE ID.
//!
//! Order of checks: the leaf's own SVID rules (exactly one valid SPIFFE ID,
//! not a CA, key usage, EKU, validity), the trust domain against the bundle,
//! the SVID rules of every intermediate, then RFC 5280 path validation to a
//! bundle authority (signatures, validity of every certificate, CA
//! constraints) with `rustls-webpki`.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;

use crate::bundle::TrustBundle;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509_svid::{leaf_spiffe_id, leaf_violations, signing_violations, Violation};

/// Why a chain is not a valid X.509-SVID for a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// No certificate was presented.
    #[error("no certificate presented")]
    EmptyChain,
    /// The leaf breaks an X.509-SVID rule.
    #[error("leaf certificate: {0}")]
    Leaf(Violation),
    /// An intermediate breaks an X.509-SVID signing-certificate rule.
    #[error("intermediate certificate {index}: {violation}")]
    Intermediate {
        /// Position in the chain (1 is the first intermediate).
        index: usize,
        /// The rule it breaks.
        violation: Violation,
    },
    /// The SPIFFE ID belongs to a trust domain this bundle does not speak for.
    #[error("SPIFFE ID {id} is not in trust domain {expected}")]
    WrongTrustDomain {
        /// The presented ID.
        id: SpiffeId,
        /// The bundle's trust domain.
        expected: TrustDomain,
    },
    /// Path validation to a bundle authority failed.
    #[error("chain does not verify against the {trust_domain} bundle: {reason}")]
    Untrusted {
        /// The bundle's trust domain.
        trust_domain: TrustDomain,
        /// webpki's reason (unknown issuer, bad signature, expired, ...).
        reason: String,
    },
}

/// A chain that passed [`verify_x509_svid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    /// The SPIFFE ID the chain proves.
    pub spiffe_id: SpiffeId,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, Violation> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| Violation::Unparsable(e.to_string()))
}

/// Verifies that `chain` (leaf first, then intermediates) is a valid
/// X.509-SVID of `bundle`'s trust domain at time `now`.
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<VerifiedSvid, SvidError> {
    let leaf_der = chain.first().ok_or(SvidError::EmptyChain)?;
    let leaf = parse(leaf_der).map_err(SvidError::Leaf)?;
    let spiffe_id = leaf_spiffe_id(&leaf).map_err(SvidError::Leaf)?;
    if let Some(v) = leaf_violations(&leaf, now).into_iter().next() {
        return Err(SvidError::Leaf(v));
    }
    if spiffe_id.trust_domain_name() != bundle.trust_domain().as_str() {
        return Err(SvidError::WrongTrustDomain {
            id: spiffe_id,
            expected: bundle.trust_domain().clone(),
        });
    }
    for (i, der) in chain.iter().enumerate().skip(1) {
        let cert = parse(der).map_err(|violation| SvidError::Intermediate {
            index: i,
            violation,
        })?;
        if let Some(violation) = signing_violations(&cert, now).into_iter().next() {
            return Err(SvidError::Intermediate {
                index: i,
                violation,
            });
        }
    }

    let untrusted = |reason: String| SvidError::Untrusted {
        trust_domain: bundle.trust_domain().clone(),
        reason,
    };
    let end_entity =
        webpki::EndEntityCert::try_from(leaf_der).map_err(|e| untrusted(format!("{e:?}")))?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| untrusted("clock is before 1970".into()))?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            bundle.trust_anchors(),
            &chain[1..],
            UnixTime::since_unix_epoch(since_epoch),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| untrusted(format!("{e:?}")))?;
    Ok(VerifiedSvid {
        spiffe_id,
        not_after: leaf.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
