//! Trust bundles: the X.509 authorities of one trust domain, in PEM and in the
//! SPIFFE bundle format (a JWK set with `spiffe_sequence` and
//! `spiffe_refresh_hint`, `standards/SPIFFE_Trust_Domain_and_Bundle.md`).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::TrustAnchor;
use serde::{Deserialize, Serialize};
use x509_parser::public_key::PublicKey;

use crate::jwt_svid::{JwtAuthority, JwtKeyError};
use crate::spiffe_id::TrustDomain;

/// Why bundle or certificate material could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The PEM text is malformed.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The input holds no certificate at all.
    #[error("no certificate found")]
    Empty,
    /// A certificate is not usable as a trust anchor.
    #[error("certificate {index}: {reason}")]
    BadAuthority {
        /// Position in the input, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWKS document is not valid JSON of the expected shape.
    #[error("invalid SPIFFE bundle JSON: {0}")]
    Json(String),
    /// A JWT authority of the bundle cannot be used.
    #[error(transparent)]
    JwtAuthority(#[from] JwtKeyError),
}

/// Parses every `CERTIFICATE` block of a PEM text, in order.
pub fn certificates_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let blocks = pem::parse_many(text).map_err(|e| BundleError::Pem(e.to_string()))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(BundleError::Empty);
    }
    Ok(certs)
}

/// Splits concatenated DER certificates (the Workload API's wire form for
/// chains and bundles).
pub fn certificates_from_der_concat(
    der: &[u8],
) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    use x509_parser::prelude::FromDer;
    let mut rest = der;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (next, _) = x509_parser::certificate::X509Certificate::from_der(rest).map_err(|e| {
            BundleError::BadAuthority {
                index: out.len(),
                reason: e.to_string(),
            }
        })?;
        out.push(CertificateDer::from(
            rest[..rest.len() - next.len()].to_vec(),
        ));
        rest = next;
    }
    if out.is_empty() {
        return Err(BundleError::Empty);
    }
    Ok(out)
}

/// Reads a whole certificate file: PEM (every CERTIFICATE block) or DER
/// (one certificate or several back to back, leaf first). Every byte must
/// belong to a certificate: trailing data is an error, not ignored, so a
/// chain cut short or padded with garbage is never taken for a good one.
pub fn certificates_from_pem_or_der(
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => certificates_from_pem(text),
        _ => certificates_from_der_concat(bytes),
    }
}

/// Encodes certificates as concatenated PEM blocks.
pub fn certificates_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect()
}

/// The X.509 authorities a trust domain's SVIDs chain to, with the bundle
/// metadata the SPIFFE bundle format carries. Trust anchors are parsed once
/// here so that each verification does not redo it.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    authorities: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    jwt_authorities: Vec<JwtAuthority>,
    /// Bumped by the CA whenever the authorities change (`spiffe_sequence`).
    pub sequence: u64,
    /// How often consumers should re-fetch, in seconds (`spiffe_refresh_hint`).
    pub refresh_hint_secs: Option<u64>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("authorities", &self.authorities.len())
            .field("jwt_authorities", &self.jwt_authorities.len())
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain
            && self.authorities == other.authorities
            && self.jwt_authorities == other.jwt_authorities
            && self.sequence == other.sequence
            && self.refresh_hint_secs == other.refresh_hint_secs
    }
}

impl TrustBundle {
    /// A bundle of the given authorities (DER). Each must parse as a trust anchor.
    pub fn new(
        trust_domain: TrustDomain,
        authorities: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if authorities.is_empty() {
            return Err(BundleError::Empty);
        }
        let anchors = authorities
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadAuthority {
                        index,
                        reason: format!("{e:?}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trust_domain,
            authorities,
            anchors,
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint_secs: None,
        })
    }

    /// Reads a PEM bundle (one or more `CERTIFICATE` blocks).
    pub fn from_pem(trust_domain: TrustDomain, text: &str) -> Result<Self, BundleError> {
        Self::new(trust_domain, certificates_from_pem(text)?)
    }

    /// The trust domain these authorities speak for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The authorities, DER encoded.
    pub fn authorities(&self) -> &[CertificateDer<'static>] {
        &self.authorities
    }

    /// The same bundle with these JWT authorities (the keys JWT-SVIDs of
    /// this trust domain are signed with).
    pub fn with_jwt_authorities(mut self, jwt_authorities: Vec<JwtAuthority>) -> Self {
        self.jwt_authorities = jwt_authorities;
        self
    }

    /// The JWT authorities, in the order the CA published them.
    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    /// The JWT authorities alone as a JWKS (`use: jwt-svid`, with `kid`):
    /// the Workload API's `FetchJWTBundles` wire form.
    pub fn jwt_jwks(&self) -> String {
        crate::jwt_svid::jwks_of(&self.jwt_authorities, "jwt-svid").to_string()
    }

    /// The authorities as parsed trust anchors, for chain building.
    pub fn trust_anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The authorities as PEM.
    pub fn to_pem(&self) -> String {
        certificates_to_pem(&self.authorities)
    }

    /// The authorities concatenated as DER, the Workload API's wire form.
    pub fn to_concatenated_der(&self) -> Vec<u8> {
        self.authorities
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect()
    }

    /// The SPIFFE bundle (JWKS) document, pretty-printed.
    pub fn to_jwks(&self) -> Result<String, BundleError> {
        let mut keys = self
            .authorities
            .iter()
            .enumerate()
            .map(|(index, der)| {
                let jwk =
                    jwk_for(der).map_err(|reason| BundleError::BadAuthority { index, reason })?;
                serde_json::to_value(jwk).map_err(|e| BundleError::Json(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        keys.extend(self.jwt_authorities.iter().map(|a| a.to_jwk("jwt-svid")));
        let doc = JwksDocument {
            keys,
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint_secs,
        };
        serde_json::to_string_pretty(&doc).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Reads a SPIFFE bundle (JWKS) document: `x509-svid` entries with
    /// their `x5c` and `jwt-svid` entries with their `kid`. Entries of any
    /// other `use` are ignored as the spec says.
    pub fn from_jwks(trust_domain: TrustDomain, json: &str) -> Result<Self, BundleError> {
        let doc: JwksDocument<serde_json::Value> =
            serde_json::from_str(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut authorities = Vec::new();
        let mut jwt_authorities = Vec::new();
        for value in doc.keys {
            match value.get("use").and_then(serde_json::Value::as_str) {
                Some("x509-svid") => {}
                Some("jwt-svid") => {
                    jwt_authorities.push(JwtAuthority::from_jwk(&value)?);
                    continue;
                }
                _ => continue,
            }
            let key: Jwk =
                serde_json::from_value(value).map_err(|e| BundleError::Json(e.to_string()))?;
            let Some(x5c) = key.x5c.as_ref() else {
                continue;
            };
            let index = authorities.len();
            let bad = |reason: String| BundleError::BadAuthority { index, reason };
            let [first] = x5c.as_slice() else {
                return Err(bad(format!(
                    "x5c must hold exactly one certificate, not {}",
                    x5c.len()
                )));
            };
            let der = STANDARD
                .decode(first)
                .map_err(|e| BundleError::Json(format!("x5c is not base64: {e}")))?;
            let der = CertificateDer::from(der);
            // The key must be one a JWK can describe, and the one described:
            // a bundle read here can always be written back out.
            let described = jwk_for(&der).map_err(bad)?;
            if described.kty != key.kty || (key.crv.is_some() && described.crv != key.crv) {
                return Err(bad(format!(
                    "the JWK says kty {:?} crv {:?}, the x5c certificate's key is {:?} {:?}",
                    key.kty, key.crv, described.kty, described.crv
                )));
            }
            authorities.push(der);
        }
        let mut bundle =
            Self::new(trust_domain, authorities)?.with_jwt_authorities(jwt_authorities);
        bundle.sequence = doc.spiffe_sequence.unwrap_or(0);
        bundle.refresh_hint_secs = doc.spiffe_refresh_hint;
        Ok(bundle)
    }
}

#[derive(Serialize, Deserialize)]
struct JwksDocument<K> {
    keys: Vec<K>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct Jwk {
    #[serde(rename = "use", skip_serializing_if = "Option::is_none", default)]
    use_: Option<String>,
    #[serde(default)]
    kty: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    x5c: Option<Vec<String>>,
}

/// The JWK (RFC 7517/7518) for a CA certificate's public key, with `x5c`.
fn jwk_for(der: &CertificateDer<'_>) -> Result<Jwk, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let spki = cert.public_key();
    let mut jwk = Jwk {
        use_: Some("x509-svid".into()),
        x5c: Some(vec![STANDARD.encode(der)]),
        ..Jwk::default()
    };
    match spki.parsed().map_err(|e| e.to_string())? {
        PublicKey::EC(point) => {
            let (crv, len) = match crate::inspect::ec_curve_oid(spki).as_deref() {
                Some("1.2.840.10045.3.1.7") => ("P-256", 32),
                Some("1.3.132.0.34") => ("P-384", 48),
                Some("1.3.132.0.35") => ("P-521", 66),
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let data = point.data();
            if data.len() != 1 + 2 * len || data[0] != 4 {
                return Err("EC point is not uncompressed".into());
            }
            jwk.kty = "EC".into();
            jwk.crv = Some(crv.into());
            jwk.x = Some(URL_SAFE_NO_PAD.encode(&data[1..1 + len]));
            jwk.y = Some(URL_SAFE_NO_PAD.encode(&data[1 + len..]));
        }
        PublicKey::RSA(rsa) => {
            jwk.kty = "RSA".into();
            jwk.n = Some(URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.modulus)));
            jwk.e = Some(URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.exponent)));
        }
        PublicKey::Unknown(_) if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            jwk.kty = "OKP".into();
            jwk.crv = Some("Ed25519".into());
            jwk.x = Some(URL_SAFE_NO_PAD.encode(spki.subject_public_key.data.as_ref()));
        }
        _ => return Err("unsupported public key type".into()),
    }
    Ok(jwk)
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}
