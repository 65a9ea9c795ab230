//! JWT-SVIDs (`standards/JWT-SVID.md`): the JWT authorities a trust domain
//! publishes, signing a token with one of them, and checking a token against
//! them, rule by rule.
//!
//! Checking never stops at the first broken rule: [`check_jwt_svid`] returns
//! every one it finds, so `signet jwt inspect` can say all that is wrong with
//! a token at once, and [`validate_jwt_svid`] is that list being empty.
//! What is refused, and why:
//!
//! - `alg: none` and `HS*` (a public key used as an HMAC secret is the classic
//!   forgery), and any algorithm the standard does not list or whose key type
//!   is not the authority's;
//! - a token without `kid`, or whose `kid` is not in the bundle of the
//!   trust domain its `sub` names; a `sub` that is not a SPIFFE ID, or whose
//!   trust domain is not trusted here;
//! - a bad signature; `exp` missing or past, `nbf` ahead (both with
//!   [`CLOCK_LEEWAY_SECS`]); `aud` missing or without the audience asked for;
//!   a `crit` header (no extension is understood); tokens over
//!   [`MAX_TOKEN_BYTES`].

use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509_svid::unix_seconds;

/// Largest token accepted (bytes of the compact form). Real JWT-SVIDs are a
/// few hundred bytes; the cap keeps a caller from making a validator decode
/// and hash megabytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How far `exp` and `nbf` may be off to allow for clocks that disagree.
pub const CLOCK_LEEWAY_SECS: i64 = 30;

/// Most audiences one JWT-SVID may name.
pub const MAX_AUDIENCES: usize = 32;

/// Longest audience accepted, bytes.
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// What is wrong with the audience list of a JWT-SVID request, if anything:
/// at least one, at most [`MAX_AUDIENCES`], each 1 to [`MAX_AUDIENCE_LEN`]
/// bytes of printable text. The agent and the CA apply the same rule.
pub fn audience_problem(audience: &[String]) -> Option<String> {
    if audience.is_empty() {
        return Some("at least one audience is required".into());
    }
    if audience.len() > MAX_AUDIENCES {
        return Some(format!(
            "at most {MAX_AUDIENCES} audiences per JWT-SVID, not {}",
            audience.len()
        ));
    }
    audience
        .iter()
        .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN || a.chars().any(char::is_control))
        .then(|| format!("each audience must be 1 to {MAX_AUDIENCE_LEN} bytes of printable text"))
}

/// The signature algorithms the JWT-SVID standard allows and this crate can
/// verify (ring has no P-521, so no ES512).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// ECDSA P-256 with SHA-256: what Signet's CA signs with by default.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-256: Signet's CA on request.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
}

impl JwtAlgorithm {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }

    /// Reads an `alg` header value; `None` for anything not listed above.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            _ => return None,
        })
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Self::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Self::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        }
    }
}

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
    kid: String,
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

    fn verify(&self, alg: JwtAlgorithm, message: &[u8], sig: &[u8]) -> bool {
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
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
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

fn der_oid(arcs: &[u64]) -> Vec<u8> {
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

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], bytes].concat())
}

fn spki_der_ec(curve: &[u64], point: &[u8]) -> Vec<u8> {
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

/// A private key that signs JWT-SVIDs: the CA's, or a test's.
pub enum JwtSigningKey {
    /// ECDSA P-256 (ES256).
    Es256(signature::EcdsaKeyPair),
    /// RSA (RS256).
    Rs256(signature::RsaKeyPair),
}

/// Why a JWT signing key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("JWT signing key: {0}")]
pub struct JwtSignError(String);

impl JwtSigningKey {
    /// Reads a PKCS#8 (DER) private key of the given algorithm.
    pub fn from_pkcs8(alg: JwtAlgorithm, pkcs8: &[u8]) -> Result<Self, JwtSignError> {
        match alg {
            JwtAlgorithm::Es256 => signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8,
                &ring::rand::SystemRandom::new(),
            )
            .map(Self::Es256)
            .map_err(|e| JwtSignError(e.to_string())),
            JwtAlgorithm::Rs256 => signature::RsaKeyPair::from_pkcs8(pkcs8)
                .map(Self::Rs256)
                .map_err(|e| JwtSignError(e.to_string())),
            other => Err(JwtSignError(format!(
                "signing with {} is not supported",
                other.name()
            ))),
        }
    }

    /// Makes a new ES256 key; returns it and its PKCS#8 DER (to be stored).
    pub fn generate_es256() -> Result<(Self, Vec<u8>), JwtSignError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(|e| JwtSignError(e.to_string()))?;
        let key = Self::from_pkcs8(JwtAlgorithm::Es256, pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Makes a new RSA key (RS256) of `bits` bits; returns it and its
    /// PKCS#8 DER. Slow (hundreds of milliseconds): done once per rotation.
    pub fn generate_rs256(bits: usize) -> Result<(Self, Vec<u8>), JwtSignError> {
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
            .map_err(|e| JwtSignError(e.to_string()))?;
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| JwtSignError(e.to_string()))?
            .as_bytes()
            .to_vec();
        Ok((Self::from_pkcs8(JwtAlgorithm::Rs256, &pkcs8)?, pkcs8))
    }

    /// The algorithm of the tokens this key signs.
    pub fn algorithm(&self) -> JwtAlgorithm {
        match self {
            Self::Es256(_) => JwtAlgorithm::Es256,
            Self::Rs256(_) => JwtAlgorithm::Rs256,
        }
    }

    /// The public half as SubjectPublicKeyInfo DER.
    pub fn public_spki_der(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        match self {
            Self::Es256(k) => spki_der_ec(&[1, 2, 840, 10045, 3, 1, 7], k.public_key().as_ref()),
            Self::Rs256(k) => {
                // ring gives the RSAPublicKey DER; wrap it in an SPKI.
                let alg = der(
                    0x30,
                    &[der_oid(&[1, 2, 840, 113549, 1, 1, 1]), vec![0x05, 0x00]].concat(),
                );
                der(0x30, &[alg, bit_string(k.public_key().as_ref())].concat())
            }
        }
    }

    /// Signs `claims` into a compact JWS with header `{alg, kid, typ: JWT}`.
    pub fn sign(&self, kid: &str, claims: &Map<String, Value>) -> Result<String, JwtSignError> {
        let header =
            serde_json::json!({ "alg": self.algorithm().name(), "kid": kid, "typ": "JWT" });
        let signing_input = format!("{}.{}", base64_json(&header)?, base64_json(claims)?);
        let rng = ring::rand::SystemRandom::new();
        let sig = match self {
            Self::Es256(k) => k
                .sign(&rng, signing_input.as_bytes())
                .map_err(|e| JwtSignError(e.to_string()))?
                .as_ref()
                .to_vec(),
            Self::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| JwtSignError(e.to_string()))?;
                sig
            }
        };
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

fn base64_json<T: serde::Serialize>(value: &T) -> Result<String, JwtSignError> {
    let bytes = serde_json::to_vec(value).map_err(|e| JwtSignError(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The claims Signet puts in a JWT-SVID it issues.
pub fn jwt_svid_claims(
    subject: &SpiffeId,
    audience: &[String],
    issued_at: SystemTime,
    expires_at: SystemTime,
    issuer: Option<&str>,
) -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("sub".into(), subject.as_str().into());
    // Always a list: some validators read a lone string as a set of characters.
    claims.insert("aud".into(), audience.to_vec().into());
    claims.insert("exp".into(), unix_seconds(expires_at).into());
    claims.insert("iat".into(), unix_seconds(issued_at).into());
    if let Some(iss) = issuer {
        claims.insert("iss".into(), iss.into());
    }
    claims
}

/// A token split and decoded, not yet checked.
#[derive(Debug, Clone)]
pub struct DecodedJwt {
    /// The JOSE header.
    pub header: Map<String, Value>,
    /// The claims.
    pub claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

/// A token whose every rule held.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// Every claim of the token, as the Workload API returns them.
    pub claims: Map<String, Value>,
    /// The `exp` claim, Unix seconds.
    pub expires_at: i64,
}

/// One broken rule of a JWT-SVID. A token may break several.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtProblem {
    /// Not three base64url parts of JSON objects, or too long.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg: none`.
    #[error("alg none: unsigned tokens are refused")]
    AlgNone,
    /// `HS256` and friends.
    #[error("alg {0}: symmetric (HMAC) algorithms are refused; JWT-SVIDs are signed with the trust domain's public-key authorities")]
    AlgSymmetric(String),
    /// An `alg` the JWT-SVID standard does not allow, or none at all.
    #[error("alg {0:?} is not one the JWT-SVID standard allows (RS*, ES*, PS*)")]
    AlgUnsupported(String),
    /// The authority's key cannot verify the token's `alg`.
    #[error("alg {alg} does not match the key type of authority {kid:?}")]
    AlgKeyMismatch {
        /// The token's alg.
        alg: String,
        /// The authority.
        kid: String,
    },
    /// `typ` is present but not `JWT`/`JOSE`.
    #[error("typ {0:?} is neither JWT nor JOSE")]
    BadType(String),
    /// A `crit` header asks for an extension.
    #[error("crit header present: no JWS extension is understood here")]
    Critical,
    /// No `kid` header.
    #[error("no kid header: the signing authority cannot be identified")]
    NoKid,
    /// `kid` names no authority of the subject's trust domain.
    #[error("kid {kid:?} is not an authority of trust domain {trust_domain}")]
    UnknownKid {
        /// The token's kid.
        kid: String,
        /// The trust domain whose bundle was searched.
        trust_domain: String,
    },
    /// The signature does not verify with the named key.
    #[error("signature does not verify with authority {0:?}")]
    BadSignature(String),
    /// `sub` is absent.
    #[error("no sub claim")]
    NoSubject,
    /// `sub` is not a valid SPIFFE ID.
    #[error("sub {sub:?} is not a SPIFFE ID: {reason}")]
    SubjectNotSpiffeId {
        /// The claim.
        sub: String,
        /// Why.
        reason: String,
    },
    /// `sub`'s trust domain has no bundle here.
    #[error("sub is in trust domain {0}, which is not trusted here")]
    ForeignTrustDomain(String),
    /// `exp` absent or not a number.
    #[error("no numeric exp claim")]
    NoExpiry,
    /// `exp` is past.
    #[error("expired at {exp} (now {now})")]
    Expired {
        /// The claim.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `nbf` is ahead.
    #[error("not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The claim.
        nbf: i64,
        /// The time of the check.
        now: i64,
    },
    /// `aud` absent or empty.
    #[error("no aud claim")]
    NoAudience,
    /// `aud` does not hold the expected audience.
    #[error("aud {found:?} does not contain {expected:?}")]
    WrongAudience {
        /// What the validator expected.
        expected: String,
        /// The claim.
        found: Vec<String>,
    },
}

/// Splits and decodes a compact JWS without checking anything else.
pub fn decode_jwt(token: &str) -> Result<DecodedJwt, JwtProblem> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtProblem::Malformed(format!(
            "{} bytes, more than the {MAX_TOKEN_BYTES} accepted",
            token.len()
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, sig] = parts.as_slice() else {
        return Err(JwtProblem::Malformed(format!(
            "{} dot-separated parts, a compact JWS has 3",
            parts.len()
        )));
    };
    let object = |part: &str, what: &str| -> Result<Map<String, Value>, JwtProblem> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| JwtProblem::Malformed(format!("{what} is not base64url: {e}")))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(JwtProblem::Malformed(format!(
                "{what} is not a JSON object"
            ))),
            Err(e) => Err(JwtProblem::Malformed(format!("{what} is not JSON: {e}"))),
        }
    };
    Ok(DecodedJwt {
        header: object(header, "header")?,
        claims: object(claims, "claims")?,
        signing_input: format!("{header}.{claims}"),
        signature: URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|e| JwtProblem::Malformed(format!("signature is not base64url: {e}")))?,
    })
}

/// Where a checker finds the JWT authorities of a trust domain.
pub trait JwtAuthorities {
    /// The authorities of `td`, or `None` when `td` is not trusted at all.
    fn jwt_authorities(&self, td: &TrustDomain) -> Option<&[JwtAuthority]>;
}

/// Every rule `token` breaks when presented to a validator for `audience`
/// at `now` (empty: valid). `audience: None` skips the audience rule (for
/// inspection only; validators always name theirs).
pub fn check_jwt_svid(
    token: &DecodedJwt,
    authorities: &dyn JwtAuthorities,
    audience: Option<&str>,
    now: SystemTime,
) -> Vec<JwtProblem> {
    let mut problems = Vec::new();
    let now = unix_seconds(now);
    let header_str = |name: &str| token.header.get(name).and_then(Value::as_str);

    // Header.
    let alg_name = header_str("alg").unwrap_or_default();
    let alg = JwtAlgorithm::from_name(alg_name);
    match alg_name {
        "none" => problems.push(JwtProblem::AlgNone),
        name if name.starts_with("HS") => problems.push(JwtProblem::AlgSymmetric(name.into())),
        name if alg.is_none() => problems.push(JwtProblem::AlgUnsupported(name.into())),
        _ => {}
    }
    if let Some(typ) = token.header.get("typ") {
        if !matches!(typ.as_str(), Some("JWT" | "JOSE")) {
            problems.push(JwtProblem::BadType(typ.to_string()));
        }
    }
    if token.header.contains_key("crit") {
        problems.push(JwtProblem::Critical);
    }

    // Subject, and through it the trust domain whose keys must have signed.
    let subject = match token.claims.get("sub").and_then(Value::as_str) {
        None => {
            problems.push(JwtProblem::NoSubject);
            None
        }
        Some(sub) => match SpiffeId::parse(sub) {
            Ok(id) => Some(id),
            Err(e) => {
                problems.push(JwtProblem::SubjectNotSpiffeId {
                    sub: sub.into(),
                    reason: e.to_string(),
                });
                None
            }
        },
    };
    let keys = subject.as_ref().and_then(|id| {
        let td = id.trust_domain();
        let keys = authorities.jwt_authorities(&td);
        if keys.is_none() {
            problems.push(JwtProblem::ForeignTrustDomain(td.to_string()));
        }
        keys.map(|k| (td, k))
    });

    // Signature.
    match header_str("kid") {
        None | Some("") => problems.push(JwtProblem::NoKid),
        Some(kid) => {
            if let Some((td, keys)) = keys {
                match keys.iter().find(|k| k.kid == kid) {
                    None => problems.push(JwtProblem::UnknownKid {
                        kid: kid.into(),
                        trust_domain: td.to_string(),
                    }),
                    Some(key) => {
                        if let Some(alg) = alg {
                            if !key.accepts(alg) {
                                problems.push(JwtProblem::AlgKeyMismatch {
                                    alg: alg.name().into(),
                                    kid: kid.into(),
                                });
                            } else if !key.verify(
                                alg,
                                token.signing_input.as_bytes(),
                                &token.signature,
                            ) {
                                problems.push(JwtProblem::BadSignature(kid.into()));
                            }
                        }
                    }
                }
            }
        }
    }

    // Time.
    match token.claims.get("exp").and_then(Value::as_i64) {
        None => problems.push(JwtProblem::NoExpiry),
        Some(exp) if exp + CLOCK_LEEWAY_SECS <= now => {
            problems.push(JwtProblem::Expired { exp, now })
        }
        Some(_) => {}
    }
    if let Some(nbf) = token.claims.get("nbf").and_then(Value::as_i64) {
        if nbf - CLOCK_LEEWAY_SECS > now {
            problems.push(JwtProblem::NotYetValid { nbf, now });
        }
    }

    // Audience.
    let found = audiences(&token.claims);
    if found.is_empty() {
        problems.push(JwtProblem::NoAudience);
    } else if let Some(expected) = audience {
        if !found.iter().any(|a| a == expected) {
            problems.push(JwtProblem::WrongAudience {
                expected: expected.into(),
                found,
            });
        }
    }
    problems
}

/// The `aud` claim as a list (it may be one string or an array of them).
pub fn audiences(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(a)) if !a.is_empty() => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Validates a JWT-SVID for `audience` at `now`: the token's SPIFFE ID and
/// claims when every rule holds, else every broken rule.
pub fn validate_jwt_svid(
    token: &str,
    authorities: &dyn JwtAuthorities,
    audience: &str,
    now: SystemTime,
) -> Result<ValidatedJwt, Vec<JwtProblem>> {
    let decoded = decode_jwt(token).map_err(|p| vec![p])?;
    let problems = check_jwt_svid(&decoded, authorities, Some(audience), now);
    if !problems.is_empty() {
        return Err(problems);
    }
    let sub = decoded.claims.get("sub").and_then(Value::as_str);
    let exp = decoded.claims.get("exp").and_then(Value::as_i64);
    match (sub.map(SpiffeId::parse), exp) {
        (Some(Ok(spiffe_id)), Some(expires_at)) => Ok(ValidatedJwt {
            spiffe_id,
            claims: decoded.claims,
            expires_at,
        }),
        // check_jwt_svid reports both; this is unreachable with an empty list.
        _ => Err(vec![JwtProblem::NoSubject]),
    }
}

impl JwtAuthorities for [crate::TrustBundle] {
    fn jwt_authorities(&self, td: &TrustDomain) -> Option<&[JwtAuthority]> {
        self.iter()
            .find(|b| b.trust_domain() == td)
            .map(|b| b.jwt_authorities())
    }
}

impl JwtAuthorities for crate::TrustBundle {
    fn jwt_authorities(&self, td: &TrustDomain) -> Option<&[JwtAuthority]> {
        (self.trust_domain() == td).then_some(self.jwt_authorities())
    }
}

impl JwtAuthorities for (TrustDomain, Vec<JwtAuthority>) {
    fn jwt_authorities(&self, td: &TrustDomain) -> Option<&[JwtAuthority]> {
        (&self.0 == td).then_some(self.1.as_slice())
    }
}

#[cfg(test)]
#[path = "jwt_svid_tests.rs"]
mod tests;
