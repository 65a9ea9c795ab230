//! The X.509-SVID profile (`standards/X509-SVID.md`): what Signet issues and
//! the structural rules every certificate in an SVID chain must follow.
//!
//! The issuing side ([`leaf_params`], [`signing_params`]) and the checking side
//! ([`leaf_violations`], [`signing_violations`]) live together so that Signet
//! issues exactly what it verifies.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::spiffe_id::{IdError, SpiffeId};

/// Number of random bytes in a serial number (RFC 5280 allows up to 20 octets;
/// the top bit is cleared so the DER INTEGER stays positive).
const SERIAL_LEN: usize = 16;

/// One way a certificate breaks the X.509-SVID rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The DER could not be parsed as an X.509 certificate.
    #[error("not a parsable X.509 certificate: {0}")]
    Unparsable(String),
    /// An extension SVIDs rely on is present twice or malformed.
    #[error("malformed or duplicated extension: {0}")]
    BadExtension(String),
    /// A leaf without a URI SAN carries no SPIFFE ID.
    #[error("leaf has no URI SAN (an X.509-SVID carries exactly one SPIFFE ID)")]
    NoUriSan,
    /// More than one URI SAN makes the identity ambiguous.
    #[error("certificate has {0} URI SANs (exactly one is allowed)")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The offending URI.
        uri: String,
        /// What is wrong with it.
        reason: IdError,
    },
    /// A leaf's SPIFFE ID must have a path.
    #[error(
        "leaf SPIFFE ID {0} has no path (only signing certificates may carry a trust domain ID)"
    )]
    LeafIdWithoutPath(String),
    /// A leaf with `cA=true` is a CA, not an identity.
    #[error("leaf has basicConstraints cA=true")]
    LeafIsCa,
    /// Key usage is mandatory on every SVID.
    #[error("key usage extension is missing")]
    KeyUsageMissing,
    /// Key usage must be critical.
    #[error("key usage extension is not marked critical")]
    KeyUsageNotCritical,
    /// Leaves must be able to sign (TLS handshakes).
    #[error("leaf key usage lacks digitalSignature")]
    LeafLacksDigitalSignature,
    /// Leaves must not sign certificates.
    #[error("leaf key usage has keyCertSign")]
    LeafHasKeyCertSign,
    /// Leaves must not sign CRLs.
    #[error("leaf key usage has cRLSign")]
    LeafHasCrlSign,
    /// An EKU extension, when present, must allow server authentication.
    #[error("extended key usage is present without serverAuth")]
    EkuLacksServerAuth,
    /// An EKU extension, when present, must allow client authentication.
    #[error("extended key usage is present without clientAuth")]
    EkuLacksClientAuth,
    /// A certificate that signs others must be a CA.
    #[error("signing certificate does not have basicConstraints cA=true")]
    SigningCertNotCa,
    /// A certificate that signs others must have keyCertSign.
    #[error("signing certificate key usage lacks keyCertSign")]
    SigningCertLacksKeyCertSign,
    /// A signing certificate's SPIFFE ID must not have a path.
    #[error("signing certificate SPIFFE ID {0} has a path")]
    SigningCertIdHasPath(String),
    /// `now` is before notBefore.
    #[error("not valid before {0}")]
    NotYetValid(String),
    /// `now` is after notAfter.
    #[error("expired at {0}")]
    Expired(String),
}

/// Fresh random serial bytes (rcgen's default derives the serial from the key).
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_LEN];
    // SystemRandom fails only when the kernel's RNG is unavailable; a CA that
    // cannot get randomness must never issue, so that is fatal.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("operating system random number generator failed");
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::from_slice(&bytes)
}

/// Certificate parameters for a leaf X.509-SVID: the one profile Signet issues.
///
/// Subject `O=Signet` (plus `CN=<first DNS name>` when there is one), one URI
/// SAN, the DNS SANs, basicConstraints `cA=false`, critical key usage
/// `digitalSignature`, EKU `serverAuth` + `clientAuth`, random serial.
pub fn leaf_params(
    id: &SpiffeId,
    dns_names: &[String],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Signet");
    if let Some(first) = dns_names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.subject_alt_names = std::iter::once(Ok(SanType::URI(id.as_str().try_into()?)))
        .chain(
            dns_names
                .iter()
                .map(|d| Ok(SanType::DnsName(d.as_str().try_into()?))),
        )
        .collect::<Result<_, rcgen::Error>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Certificate parameters for a signing certificate (root or intermediate):
/// `cA=true`, critical key usage `keyCertSign` + `cRLSign`, and the trust
/// domain's own SPIFFE ID (no path) as its one URI SAN.
pub fn signing_params(
    trust_domain_id: &SpiffeId,
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    let serial = random_serial();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Signet");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    // Each signing certificate gets a subject of its own (the serial as
    // serialNumber, 2.5.4.5): chain builders that look issuers up by name
    // break when many CA certificates share one (spiffe/spire#4415).
    let serial_hex: String = serial.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    params.distinguished_name.push(
        DnType::CustomDnType(vec![2, 5, 4, 5]),
        rcgen::DnValue::PrintableString(rcgen::string::PrintableString::try_from(serial_hex)?),
    );
    params.subject_alt_names = vec![SanType::URI(trust_domain_id.as_str().try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The URI SANs of a certificate.
pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, Violation> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Violation::BadExtension(format!("subjectAltName: {e}")))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The DNS SANs of a certificate (for display).
pub fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The one SPIFFE ID of a leaf, checking the URI SAN rules.
pub fn leaf_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, Violation> {
    let uris = uri_sans(cert)?;
    match uris.as_slice() {
        [] => Err(Violation::NoUriSan),
        [uri] => {
            let id = SpiffeId::parse(uri).map_err(|reason| Violation::InvalidSpiffeId {
                uri: (*uri).to_owned(),
                reason,
            })?;
            if id.is_root() {
                return Err(Violation::LeafIdWithoutPath(id.to_string()));
            }
            Ok(id)
        }
        many => Err(Violation::MultipleUriSans(many.len())),
    }
}

fn validity_violations(cert: &X509Certificate<'_>, now: SystemTime) -> Vec<Violation> {
    let now = unix_seconds(now);
    let validity = cert.validity();
    let mut out = Vec::new();
    if now < validity.not_before.timestamp() {
        out.push(Violation::NotYetValid(validity.not_before.to_string()));
    }
    if now > validity.not_after.timestamp() {
        out.push(Violation::Expired(validity.not_after.to_string()));
    }
    out
}

/// Extensions whose content does not parse. x509-parser keeps such an
/// extension as a parse error rather than failing the certificate, and its
/// helpers (`basic_constraints()`, `key_usage()`) then answer as if the
/// extension were absent: a broken keyUsage would read as "no keyUsage", a
/// broken basicConstraints as "not a CA". A broken extension breaks the
/// profile, whatever it is.
fn malformed_extensions(cert: &X509Certificate<'_>) -> Vec<Violation> {
    cert.extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::ParseError { error } => Some(
                Violation::BadExtension(format!("{}: {error}", extension_name(&ext.oid))),
            ),
            _ => None,
        })
        .collect()
}

fn extension_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    match oid.to_id_string().as_str() {
        "2.5.29.19" => "basicConstraints".into(),
        "2.5.29.15" => "keyUsage".into(),
        "2.5.29.37" => "extendedKeyUsage".into(),
        "2.5.29.17" => "subjectAltName".into(),
        other => other.into(),
    }
}

/// Every rule a leaf X.509-SVID breaks at time `now` (empty: it is a valid
/// leaf, chain and trust not yet considered).
pub fn leaf_violations(cert: &X509Certificate<'_>, now: SystemTime) -> Vec<Violation> {
    let mut out = malformed_extensions(cert);
    if let Err(v) = leaf_spiffe_id(cert) {
        out.push(v);
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => out.push(Violation::LeafIsCa),
        Ok(_) => {}
        Err(e) => out.push(Violation::BadExtension(format!("basicConstraints: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.critical {
                out.push(Violation::KeyUsageNotCritical);
            }
            if !ku.value.digital_signature() {
                out.push(Violation::LeafLacksDigitalSignature);
            }
            if ku.value.key_cert_sign() {
                out.push(Violation::LeafHasKeyCertSign);
            }
            if ku.value.crl_sign() {
                out.push(Violation::LeafHasCrlSign);
            }
        }
        Ok(None) => out.push(Violation::KeyUsageMissing),
        Err(e) => out.push(Violation::BadExtension(format!("keyUsage: {e}"))),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            if !eku.value.server_auth {
                out.push(Violation::EkuLacksServerAuth);
            }
            if !eku.value.client_auth {
                out.push(Violation::EkuLacksClientAuth);
            }
        }
        Ok(None) => {}
        Err(e) => out.push(Violation::BadExtension(format!("extendedKeyUsage: {e}"))),
    }
    out.extend(validity_violations(cert, now));
    out
}

/// Every rule a signing certificate (intermediate or root) breaks at `now`.
pub fn signing_violations(cert: &X509Certificate<'_>, now: SystemTime) -> Vec<Violation> {
    let mut out = malformed_extensions(cert);
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => out.push(Violation::SigningCertNotCa),
        Err(e) => out.push(Violation::BadExtension(format!("basicConstraints: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.critical {
                out.push(Violation::KeyUsageNotCritical);
            }
            if !ku.value.key_cert_sign() {
                out.push(Violation::SigningCertLacksKeyCertSign);
            }
        }
        Ok(None) => out.push(Violation::KeyUsageMissing),
        Err(e) => out.push(Violation::BadExtension(format!("keyUsage: {e}"))),
    }
    match uri_sans(cert) {
        Ok(uris) => {
            if uris.len() > 1 {
                out.push(Violation::MultipleUriSans(uris.len()));
            }
            for uri in uris {
                // A signing certificate "SHOULD" be an SVID; a non-SPIFFE URI
                // is tolerated, a SPIFFE ID with a path is not.
                if let Ok(id) = SpiffeId::parse(uri) {
                    if !id.is_root() {
                        out.push(Violation::SigningCertIdHasPath(id.to_string()));
                    }
                } else if uri.starts_with("spiffe:") {
                    out.push(Violation::InvalidSpiffeId {
                        uri: uri.to_owned(),
                        reason: SpiffeId::parse(uri).err().unwrap_or(IdError::Empty),
                    });
                }
            }
        }
        Err(v) => out.push(v),
    }
    out.extend(validity_violations(cert, now));
    out
}

/// Seconds since the Unix epoch (negative before it), for comparisons with
/// X.509 validity times.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The inverse of [`unix_seconds`].
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A certificate's subject key identifier: the ID a CA key is known by in
/// the authority key identifier of what it signs. `None` when absent or
/// unparsable.
pub fn subject_key_id(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(id.0.to_vec())
            }
            _ => None,
        })
}

/// The key identifier in a certificate's authority key identifier: which
/// CA key signed it (see [`subject_key_id`]).
pub fn authority_key_id(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}
