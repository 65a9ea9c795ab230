//! X.509-SVID issuance: a PKCS#10 CSR in, a signed SVID chain out.
//!
//! Only the CSR's public key is used, and only after its signature proves the
//! requester holds the private key. The SPIFFE ID and DNS names come from the
//! registration entry, never from the CSR. Serial numbers are random, and the
//! SVID never outlives the CA certificate that signs it.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use signet_identity::x509_svid::{leaf_params, unix_seconds};
use signet_identity::SpiffeId;
use x509_parser::prelude::FromDer;

use crate::keys::authority::Authority;
use crate::registry::entry::EntrySpec;
use crate::registry::join_token::hex;

/// How far back notBefore is set, to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(10);

/// Why a CSR was refused or could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Not a DER PKCS#10 request.
    #[error("CSR is not a valid DER-encoded PKCS#10 request: {0}")]
    MalformedCsr(String),
    /// The CSR's signature does not verify with its own public key.
    #[error("CSR signature does not verify (the requester does not hold the key)")]
    BadCsrSignature,
    /// A key type or size Signet does not issue for.
    #[error(
        "CSR key not accepted: {0}; use EC P-256 (recommended), P-384, Ed25519 or RSA >= 2048"
    )]
    UnacceptableKey(String),
    /// The signing certificate has expired (or is about to).
    #[error("the CA signing certificate has expired")]
    CaExpired,
    /// rcgen failed to build or sign the certificate.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A freshly issued SVID.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// Leaf first, then the intermediates up to (not including) a bundle root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
}

/// A CSR that passed [`check_csr`]: what signing needs of it (its public
/// key), so a request checked before a join token is spent is not parsed
/// again to be signed.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// The requester's SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
}

/// The CSR's SubjectPublicKeyInfo (DER), after checking its signature and key.
fn checked_csr_public_key(csr_der: &[u8]) -> Result<Vec<u8>, IssueError> {
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
            .map_err(|e| IssueError::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IssueError::MalformedCsr(
            "trailing bytes after the request".into(),
        ));
    }
    csr.verify_signature()
        .map_err(|_| IssueError::BadCsrSignature)?;
    let spki = &csr.certification_request_info.subject_pki;
    let key_type = signet_identity::spki_key_type(spki);
    let acceptable = match key_type.as_str() {
        "EC P-256" | "EC P-384" | "Ed25519" => true,
        rsa if rsa.starts_with("RSA ") => rsa[4..].parse::<usize>().is_ok_and(|bits| bits >= 2048),
        _ => false,
    };
    if !acceptable {
        return Err(IssueError::UnacceptableKey(key_type));
    }
    Ok(spki.raw.to_vec())
}

/// Checks a CSR (well-formed, whole, self-signed, acceptable key) without
/// signing anything: done before a join token is spent on it.
pub fn check_csr(csr_der: &[u8]) -> Result<CheckedCsr, IssueError> {
    checked_csr_public_key(csr_der).map(|spki| CheckedCsr { spki })
}

/// Signs an X.509-SVID for `id` with the public key of `csr`.
/// `ttl` is capped by the signing certificate's remaining lifetime.
pub(crate) fn sign_x509_svid(
    authority: &Authority,
    csr: &CheckedCsr,
    id: &SpiffeId,
    dns_names: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<IssuedSvid, IssueError> {
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki)
        .map_err(|e| IssueError::UnacceptableKey(e.to_string()))?;
    let not_after = (now + ttl).min(authority.not_after);
    if not_after <= now {
        return Err(IssueError::CaExpired);
    }
    let params = leaf_params(id, dns_names, now - BACKDATE, not_after)?;
    let serial = params
        .serial_number
        .as_ref()
        .map(|s| hex(&s.to_bytes()))
        .unwrap_or_default();
    let leaf = params.signed_by(&public_key, authority.issuer())?;
    let mut chain = Vec::with_capacity(1 + authority.chain_tail().len());
    chain.push(leaf.der().clone());
    chain.extend(authority.chain_tail().iter().cloned());
    Ok(IssuedSvid {
        chain,
        serial,
        not_after: unix_seconds(not_after),
    })
}

/// Signs the SVID a registration entry describes: its SPIFFE ID, its DNS
/// names, its TTL (or `default_ttl` when the entry has none).
pub(crate) fn sign_for_entry(
    authority: &Authority,
    csr_der: &[u8],
    entry: &EntrySpec,
    default_ttl: Duration,
    now: SystemTime,
) -> Result<IssuedSvid, IssueError> {
    let ttl = match entry.x509_svid_ttl {
        0 => default_ttl,
        secs => Duration::from_secs(secs),
    };
    sign_x509_svid(
        authority,
        &check_csr(csr_der)?,
        &entry.spiffe_id,
        &entry.dns_names,
        ttl,
        now,
    )
}

#[cfg(test)]
pub(crate) mod tests;
