//! Checking JWT-SVIDs: decoding a compact JWS and every rule of the
//! JWT-SVID standard it may break, all reported, none skipped.

use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::{JwtAlgorithm, JwtAuthority, CLOCK_LEEWAY_SECS, MAX_TOKEN_BYTES};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509_svid::unix_seconds;

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

/// No authorities at all: nothing is trusted.
impl<T: JwtAuthorities> JwtAuthorities for Option<T> {
    fn jwt_authorities(&self, td: &TrustDomain) -> Option<&[JwtAuthority]> {
        self.as_ref()?.jwt_authorities(td)
    }
}

impl JwtAuthorities for (TrustDomain, Vec<JwtAuthority>) {
    fn jwt_authorities(&self, td: &TrustDomain) -> Option<&[JwtAuthority]> {
        (&self.0 == td).then_some(self.1.as_slice())
    }
}
