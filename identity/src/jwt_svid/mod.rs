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
//!
//! In three parts:
//! - `authority`: the public keys (JWK and SubjectPublicKeyInfo forms);
//! - `sign`: a private key signing a token (the CA's, or a test's);
//! - `check`: decoding a token and every rule it may break.

mod authority;
mod check;
mod sign;

pub use authority::{jwks_of, jwt_authorities_from_jwks, JwtAuthority, JwtKeyError};
pub use check::{
    audiences, check_jwt_svid, decode_jwt, validate_jwt_svid, DecodedJwt, JwtAuthorities,
    JwtProblem, ValidatedJwt,
};
pub use sign::{jwt_svid_claims, JwtSignError, JwtSigningKey};

use ring::signature;

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

    pub(super) fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
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

#[cfg(test)]
#[path = "../jwt_svid_tests.rs"]
mod tests;
