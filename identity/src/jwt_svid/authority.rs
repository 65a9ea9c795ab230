//! JWT authorities: the public keys a trust domain's JWT-SVIDs are signed
//! with, read from and written to JWKs and SubjectPublicKeyInfo DER.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::JwtAlgorithm;

/// The kind of public key a JWT authority holds, which fixes the algorithms
/// it may verify.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Uncompressed point (0x04 ‖ x ‖ y).
    EcP256(Vec<u8>),
    EcP384(Vec<u8>),
    /// Big-endian modulus and exponent, no leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// One public key that JWT-SVIDs of a trust domain may be signed with, named
/// by the `kid` the tokens carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    pub(super) kid: String,
    /// SubjectPublicKeyInfo DER: how the node API and the database carry it.
    spki_der: Vec<u8>,
    key: KeyMaterial,
}

/// Why a JWT authority or JWKS could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtKeyError {
    /// The key ID is empty.
    #[error("a JWT authority needs a non-empty kid")]
    NoKid,
    /// The key is not one a JWT-SVID can be verified with.
    #[error("JWT authority {kid:?}: {reason}")]
    BadKey {
        /// The authority's kid.
        kid: String,
        /// What is wrong.
        reason: String,
    },
    /// The JWKS is not JSON of the expected shape.
    #[error("invalid JWKS: {0}")]
    Json(String),
}

impl JwtAuthority {
    /// An authority from its `kid` and SubjectPublicKeyInfo (DER): P-256,
    /// P-384 or RSA of at least 2048 bits.
    pub fn from_spki_der(kid: &str, spki_der: &[u8]) -> Result<Self, JwtKeyError> {
        if kid.is_empty() {
            return Err(JwtKeyError::NoKid);
        }
        let bad = |reason: String| JwtKeyError::BadKey {
            kid: kid.to_owned(),
            reason,
        };
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the public key".into()));
        }
        let key = match spki.parsed().map_err(|e| bad(e.to_string()))? {
            PublicKey::EC(point) => {
                let curve = crate::inspect::ec_curve_oid(&spki);
                let data = point.data().to_vec();
                match curve.as_deref() {
                    Some("1.2.840.10045.3.1.7") if data.len() == 65 && data[0] == 4 => {
                        KeyMaterial::EcP256(data)
                    }
                    Some("1.3.132.0.34") if data.len() == 97 && data[0] == 4 => {
                        KeyMaterial::EcP384(data)
                    }
                    other => return Err(bad(format!("unsupported EC key (curve {other:?})"))),
                }
            }
            PublicKey::RSA(rsa) => {
                let n = strip_leading_zeros(rsa.modulus).to_vec();
                if n.len() < 256 {
                    return Err(bad(format!(
                        "RSA key of {} bits; at least 2048 are required",
                        n.len() * 8
                    )));
                }
                KeyMaterial::Rsa {
                    n,
                    e: strip_leading_zeros(rsa.exponent).to_vec(),
                }
            }
            _ => return Err(bad("unsupported public key type".into())),
        };
        Ok(Self {
            kid: kid.to_owned(),
            spki_der: spki_der.to_vec(),
            key,
        })
    }

    /// The key ID tokens name in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Whether this key can verify `alg` (an EC key only its own curve's
    /// ECDSA, an RSA key only RS*/PS*).
    pub fn accepts(&self, alg: JwtAlgorithm) -> bool {
        use JwtAlgorithm::*;
        matches!(
            (&self.key, alg),
            (KeyMaterial::EcP256(_), Es256)
                | (KeyMaterial::EcP384(_), Es384)
                | (
                    KeyMaterial::Rsa { .. },
                    Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512
                )
        )
    }

    /// The algorithm this CA signs with for this key (what OIDC JWKS `alg`
    /// and discovery documents announce).
    pub fn signing_algorithm(&self) -> JwtAlgorithm {
        match self.key {
            KeyMaterial::EcP256(_) => JwtAlgorithm::Es256,
            KeyMaterial::EcP384(_) => JwtAlgorithm::Es384,
            KeyMaterial::Rsa { .. } => JwtAlgorithm::Rs256,
        }
    }

    pub(super) fn verify(&self, alg: JwtAlgorithm, message: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            KeyMaterial::EcP256(point) | KeyMaterial::EcP384(point) => {
                UnparsedPublicKey::new(alg.verification(), point)
                    .verify(message, sig)
                    .is_ok()
            }
            KeyMaterial::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(
                    match alg {
                        JwtAlgorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                        JwtAlgorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                        JwtAlgorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                        JwtAlgorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                        JwtAlgorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                        JwtAlgorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                        JwtAlgorithm::Es256 | JwtAlgorithm::Es384 => return false,
                    },
                    message,
                    sig,
                )
                .is_ok(),
        }
    }

    /// The JWK (RFC 7517) of this key with the given `use`: `jwt-svid` in a
    /// SPIFFE bundle, `sig` in an OIDC JWKS (with `alg`, which OIDC relying
    /// parties read).
    pub fn to_jwk(&self, use_: &str) -> Value {
        let mut jwk = Map::new();
        jwk.insert("use".into(), use_.into());
        jwk.insert("kid".into(), self.kid.clone().into());
        let b64 = |b: &[u8]| Value::from(URL_SAFE_NO_PAD.encode(b));
        match &self.key {
            KeyMaterial::EcP256(p) | KeyMaterial::EcP384(p) => {
                let (crv, len) = match self.key {
                    KeyMaterial::EcP256(_) => ("P-256", 32),
                    _ => ("P-384", 48),
                };
                jwk.insert("kty".into(), "EC".into());
                jwk.insert("crv".into(), crv.into());
                jwk.insert("x".into(), b64(&p[1..1 + len]));
                jwk.insert("y".into(), b64(&p[1 + len..]));
            }
            KeyMaterial::Rsa { n, e } => {
                jwk.insert("kty".into(), "RSA".into());
                jwk.insert("n".into(), b64(n));
                jwk.insert("e".into(), b64(e));
            }
        }
        if use_ == "sig" {
            jwk.insert("alg".into(), self.signing_algorithm().name().into());
        }
        Value::Object(jwk)
    }

    /// Reads a JWK (`kty` EC with `crv` P-256/P-384, or RSA).
    pub fn from_jwk(jwk: &Value) -> Result<Self, JwtKeyError> {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let kid = field("kid").unwrap_or_default();
        if kid.is_empty() {
            return Err(JwtKeyError::NoKid);
        }
        let bad = |reason: String| JwtKeyError::BadKey {
            kid: kid.to_owned(),
            reason,
        };
        let bytes = |name: &str| -> Result<Vec<u8>, JwtKeyError> {
            let text = field(name).ok_or_else(|| bad(format!("no {name}")))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|e| bad(format!("{name} is not base64url: {e}")))
        };
        let spki = match field("kty") {
            Some("EC") => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                let (curve_oid, len): (&[u64], usize) = match field("crv") {
                    Some("P-256") => (&[1, 2, 840, 10045, 3, 1, 7], 32),
                    Some("P-384") => (&[1, 3, 132, 0, 34], 48),
                    other => return Err(bad(format!("unsupported crv {other:?}"))),
                };
                if x.len() != len || y.len() != len {
                    return Err(bad("x or y has the wrong length for the curve".into()));
                }
                let point: Vec<u8> = [&[4u8][..], &x, &y].concat();
                spki_der_ec(curve_oid, &point)
            }
            Some("RSA") => spki_der_rsa(&bytes("n")?, &bytes("e")?),
            other => return Err(bad(format!("unsupported kty {other:?}"))),
        };
        Self::from_spki_der(kid, &spki)
    }
}

/// Reads the JWT authorities of a JWKS: a SPIFFE bundle (keys with `use`
/// `jwt-svid`; `x509-svid` keys are skipped) or a plain JWKS such as an OIDC
/// provider publishes (`use` `sig` or absent).
pub fn jwt_authorities_from_jwks(json: &str) -> Result<Vec<JwtAuthority>, JwtKeyError> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_str(json).map_err(|e| JwtKeyError::Json(e.to_string()))?;
    doc.keys
        .iter()
        .filter(|k| {
            matches!(
                k.get("use").and_then(Value::as_str),
                None | Some("jwt-svid") | Some("sig")
            )
        })
        .map(JwtAuthority::from_jwk)
        .collect()
}

/// A JWKS document of JWT authorities, each with the given `use`.
pub fn jwks_of(authorities: &[JwtAuthority], use_: &str) -> Value {
    serde_json::json!({ "keys": authorities.iter().map(|a| a.to_jwk(use_)).collect::<Vec<_>>() })
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

// Minimal DER writers for the two SubjectPublicKeyInfo shapes a JWK maps to.
pub(super) fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
}

pub(super) fn der_oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &arc in &arcs[2..] {
        let mut chunk = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            chunk.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        chunk.reverse();
        body.extend(chunk);
    }
    der(0x06, &body)
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed = strip_leading_zeros(bytes);
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(trimmed);
    der(0x02, &body)
}

pub(super) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], bytes].concat())
}

pub(super) fn spki_der_ec(curve: &[u64], point: &[u8]) -> Vec<u8> {
    let alg = der(
        0x30,
        &[der_oid(&[1, 2, 840, 10045, 2, 1]), der_oid(curve)].concat(),
    );
    der(0x30, &[alg, bit_string(point)].concat())
}

fn spki_der_rsa(n: &[u8], e: &[u8]) -> Vec<u8> {
    let alg = der(
        0x30,
        &[der_oid(&[1, 2, 840, 113549, 1, 1, 1]), vec![0x05, 0x00]].concat(),
    );
    let key = der(0x30, &[der_uint(n), der_uint(e)].concat());
    der(0x30, &[alg, bit_string(&key)].concat())
}
