//! Human-facing description of a certificate chain: what `signet x509 inspect`
//! and `signet id show` print. Offline: no bundle needed, but every
//! X.509-SVID rule each certificate breaks is listed.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use x509_parser::public_key::PublicKey;

use crate::x509_svid::{dns_sans, leaf_violations, signing_violations, uri_sans, Violation};

/// What one certificate of a chain says, for display.
#[derive(Debug, Clone, Serialize)]
pub struct CertSummary {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// notBefore, RFC 2822-ish text as x509-parser prints it.
    pub not_before: String,
    /// notAfter.
    pub not_after: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// `EC P-256`, `RSA 2048`, `Ed25519`, ...
    pub key_type: String,
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// Whether subject == issuer.
    pub self_issued: bool,
    /// X.509-SVID rules this certificate breaks, in its role in the chain.
    pub violations: Vec<String>,
}

/// Describes each certificate of `chain` (leaf first). The first certificate
/// is judged as a leaf SVID and the rest as signing certificates, except
/// that a lone self-issued CA certificate (a bundle root) is judged as a
/// signing certificate.
pub fn inspect_chain(chain: &[CertificateDer<'_>], now: SystemTime) -> Vec<CertSummary> {
    chain
        .iter()
        .enumerate()
        .map(|(i, der)| match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                let lone_root = chain.len() == 1 && cert.is_ca() && cert.subject() == cert.issuer();
                let violations = if i == 0 && !lone_root {
                    leaf_violations(&cert, now)
                } else {
                    signing_violations(&cert, now)
                };
                CertSummary {
                    subject: cert.subject().to_string(),
                    issuer: cert.issuer().to_string(),
                    serial: cert.raw_serial_as_string(),
                    not_before: cert.validity().not_before.to_string(),
                    not_after: cert.validity().not_after.to_string(),
                    not_after_unix: cert.validity().not_after.timestamp(),
                    key_type: key_type(&cert),
                    uris: uri_sans(&cert)
                        .unwrap_or_default()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    dns_names: dns_sans(&cert),
                    is_ca: cert.is_ca(),
                    self_issued: cert.subject() == cert.issuer(),
                    violations: violations.iter().map(Violation::to_string).collect(),
                }
            }
            Err(e) => CertSummary {
                subject: String::new(),
                issuer: String::new(),
                serial: String::new(),
                not_before: String::new(),
                not_after: String::new(),
                not_after_unix: 0,
                key_type: String::new(),
                uris: Vec::new(),
                dns_names: Vec::new(),
                is_ca: false,
                self_issued: false,
                violations: vec![Violation::Unparsable(e.to_string()).to_string()],
            },
        })
        .collect()
}

/// A short name for a certificate's public key type.
pub fn key_type(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    spki_key_type(cert.public_key())
}

/// The named curve of an EC public key (its OID, dotted), if it names one.
pub(crate) fn ec_curve_oid(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<String> {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string())
}

/// A short name for a public key type: `EC P-256`, `EC P-384`, `RSA 2048`,
/// `Ed25519`, ...
pub fn spki_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    match spki.parsed() {
        Ok(PublicKey::EC(_)) => match ec_curve_oid(spki).as_deref() {
            Some("1.2.840.10045.3.1.7") => "EC P-256".into(),
            Some("1.3.132.0.34") => "EC P-384".into(),
            Some("1.3.132.0.35") => "EC P-521".into(),
            Some(other) => format!("EC {other}"),
            None => "EC".into(),
        },
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => "Ed25519".into(),
        _ => format!("unknown ({})", spki.algorithm.algorithm.to_id_string()),
    }
}
