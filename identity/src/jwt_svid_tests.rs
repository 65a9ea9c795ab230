//! One test per JWT-SVID rule: each forges a token that breaks exactly that
//! rule and checks it is refused for that reason, with a valid control.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::*;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509_svid::unix_seconds;

const SUB: &str = "spiffe://example.org/ns/prod/sa/web";

struct Issuer {
    kid: &'static str,
    key: JwtSigningKey,
}

impl Issuer {
    fn es256(kid: &'static str) -> Self {
        Self {
            kid,
            key: JwtSigningKey::generate_es256().unwrap().0,
        }
    }

    fn authority(&self) -> JwtAuthority {
        JwtAuthority::from_spki_der(self.kid, &self.key.public_spki_der()).unwrap()
    }

    fn token(&self, claims: &Map<String, Value>) -> String {
        self.key.sign(self.kid, claims).unwrap()
    }
}

fn rsa_issuer() -> &'static Issuer {
    static RSA: OnceLock<Issuer> = OnceLock::new();
    RSA.get_or_init(|| Issuer {
        kid: "rsa-1",
        key: JwtSigningKey::generate_rs256(2048).unwrap().0,
    })
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn claims(now: SystemTime) -> Map<String, Value> {
    jwt_svid_claims(
        &SpiffeId::parse(SUB).unwrap(),
        &["api".to_owned(), "db".to_owned()],
        now,
        now + Duration::from_secs(300),
        None,
    )
}

/// A token with an arbitrary header, signed (or not) by whatever `sign` does.
fn hand_made(
    header: Value,
    claims: &Map<String, Value>,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn problems(token: &str, keys: &(TrustDomain, Vec<JwtAuthority>), aud: &str) -> Vec<JwtProblem> {
    match validate_jwt_svid(token, keys, aud, SystemTime::now()) {
        Ok(v) => panic!("expected refusal, got {v:?}"),
        Err(p) => p,
    }
}

#[test]
fn a_valid_es256_token_validates_with_its_subject_and_claims() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let token = issuer.token(&claims(SystemTime::now()));
    let v = validate_jwt_svid(&token, &keys, "db", SystemTime::now()).unwrap();
    assert_eq!(v.spiffe_id.as_str(), SUB);
    assert_eq!(v.claims["aud"], json!(["api", "db"]));
    let header = decode_jwt(&token).unwrap().header;
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "k1");
    assert_eq!(header["typ"], "JWT");
}

#[test]
fn a_valid_rs256_token_validates() {
    let issuer = rsa_issuer();
    let keys = (td(), vec![issuer.authority()]);
    let token = issuer.token(&claims(SystemTime::now()));
    validate_jwt_svid(&token, &keys, "api", SystemTime::now()).unwrap();
}

#[test]
fn alg_none_is_refused() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let token = hand_made(
        json!({"alg": "none", "kid": "k1"}),
        &claims(SystemTime::now()),
        |_| Vec::new(),
    );
    assert!(problems(&token, &keys, "api").contains(&JwtProblem::AlgNone));
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    let issuer = Issuer::es256("k1");
    let authority = issuer.authority();
    let keys = (td(), vec![authority.clone()]);
    // The classic confusion: the verifier's public key used as an HMAC secret.
    for secret in [
        authority.spki_der().to_vec(),
        authority.to_jwk("jwt-svid").to_string().into_bytes(),
    ] {
        let token = hand_made(
            json!({"alg": "HS256", "kid": "k1", "typ": "JWT"}),
            &claims(SystemTime::now()),
            |input| {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
                ring::hmac::sign(&key, input).as_ref().to_vec()
            },
        );
        assert_eq!(
            problems(&token, &keys, "api"),
            vec![JwtProblem::AlgSymmetric("HS256".into())]
        );
    }
}

#[test]
fn an_alg_that_does_not_match_the_key_type_is_refused() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let rsa = rsa_issuer();
    // Signed with RSA but naming the EC authority's kid.
    let token = rsa.key.sign("k1", &claims(SystemTime::now())).unwrap();
    assert_eq!(
        problems(&token, &keys, "api"),
        vec![JwtProblem::AlgKeyMismatch {
            alg: "RS256".into(),
            kid: "k1".into()
        }]
    );
}

#[test]
fn an_unlisted_alg_is_refused() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let token = hand_made(
        json!({"alg": "EdDSA", "kid": "k1"}),
        &claims(SystemTime::now()),
        |_| vec![0; 64],
    );
    assert!(problems(&token, &keys, "api").contains(&JwtProblem::AlgUnsupported("EdDSA".into())));
}

#[test]
fn an_expired_token_is_refused_past_the_leeway_only() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let issued = SystemTime::now() - Duration::from_secs(600);
    let token = issuer.token(&claims(issued)); // exp = now - 300
    let exp = unix_seconds(issued) + 300;
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs((exp + secs) as u64);
    // Within the leeway: fine. At the leeway's end: expired.
    validate_jwt_svid(&token, &keys, "api", at(CLOCK_LEEWAY_SECS - 1)).unwrap();
    assert_eq!(
        validate_jwt_svid(&token, &keys, "api", at(CLOCK_LEEWAY_SECS)).unwrap_err(),
        vec![JwtProblem::Expired {
            exp,
            now: exp + CLOCK_LEEWAY_SECS
        }]
    );
}

#[test]
fn a_token_not_yet_valid_is_refused_past_the_leeway_only() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let now = SystemTime::now();
    let mut c = claims(now);
    let nbf = unix_seconds(now) + 100;
    c.insert("nbf".into(), nbf.into());
    let token = issuer.token(&c);
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs((nbf + secs) as u64);
    validate_jwt_svid(&token, &keys, "api", at(-CLOCK_LEEWAY_SECS)).unwrap();
    assert!(matches!(
        validate_jwt_svid(&token, &keys, "api", at(-CLOCK_LEEWAY_SECS - 1))
            .unwrap_err()
            .as_slice(),
        [JwtProblem::NotYetValid { .. }]
    ));
}

#[test]
fn a_wrong_audience_is_refused() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let token = issuer.token(&claims(SystemTime::now()));
    assert_eq!(
        problems(&token, &keys, "billing"),
        vec![JwtProblem::WrongAudience {
            expected: "billing".into(),
            found: vec!["api".into(), "db".into()]
        }]
    );
    // A lone-string aud is read as one audience, not as characters.
    let mut c = claims(SystemTime::now());
    c.insert("aud".into(), "a".into());
    let token = issuer.token(&c);
    validate_jwt_svid(&token, &keys, "a", SystemTime::now()).unwrap();
    c.insert("aud".into(), json!([]));
    assert_eq!(
        problems(&issuer.token(&c), &keys, "a"),
        vec![JwtProblem::NoAudience]
    );
}

#[test]
fn an_unknown_kid_and_a_missing_kid_are_refused() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let other = Issuer::es256("k2");
    assert_eq!(
        problems(&other.token(&claims(SystemTime::now())), &keys, "api"),
        vec![JwtProblem::UnknownKid {
            kid: "k2".into(),
            trust_domain: "example.org".into()
        }]
    );
    let token = hand_made(
        json!({"alg": "ES256"}),
        &claims(SystemTime::now()),
        |input| {
            let JwtSigningKey::Es256(k) = &issuer.key else {
                unreachable!()
            };
            k.sign(&ring::rand::SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec()
        },
    );
    assert_eq!(problems(&token, &keys, "api"), vec![JwtProblem::NoKid]);
}

#[test]
fn a_signature_of_another_key_under_a_known_kid_is_refused() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let impostor = Issuer::es256("k1");
    assert_eq!(
        problems(&impostor.token(&claims(SystemTime::now())), &keys, "api"),
        vec![JwtProblem::BadSignature("k1".into())]
    );
}

#[test]
fn a_tampered_claim_breaks_the_signature() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let token = issuer.token(&claims(SystemTime::now()));
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims(SystemTime::now());
    c.insert("sub".into(), "spiffe://example.org/admin".into());
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(Value::Object(c).to_string()),
        parts[2]
    );
    assert_eq!(
        problems(&forged, &keys, "api"),
        vec![JwtProblem::BadSignature("k1".into())]
    );
}

#[test]
fn a_foreign_trust_domain_is_refused_even_with_a_valid_signature() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let mut c = claims(SystemTime::now());
    c.insert("sub".into(), "spiffe://evil.example/web".into());
    assert_eq!(
        problems(&issuer.token(&c), &keys, "api"),
        vec![JwtProblem::ForeignTrustDomain("evil.example".into())]
    );
}

#[test]
fn a_sub_that_is_not_a_spiffe_id_is_refused() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    for sub in [
        "web",
        "https://example.org/web",
        "spiffe://example.org/a/../b",
    ] {
        let mut c = claims(SystemTime::now());
        c.insert("sub".into(), sub.into());
        assert!(matches!(
            problems(&issuer.token(&c), &keys, "api").as_slice(),
            [JwtProblem::SubjectNotSpiffeId { .. }]
        ));
    }
    let mut c = claims(SystemTime::now());
    c.remove("sub");
    assert_eq!(
        problems(&issuer.token(&c), &keys, "api"),
        vec![JwtProblem::NoSubject]
    );
}

#[test]
fn typ_crit_and_missing_exp_are_refused() {
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    let JwtSigningKey::Es256(k) = &issuer.key else {
        unreachable!()
    };
    let sign = |input: &[u8]| {
        k.sign(&ring::rand::SystemRandom::new(), input)
            .unwrap()
            .as_ref()
            .to_vec()
    };
    let now = SystemTime::now();
    let t = hand_made(
        json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}),
        &claims(now),
        sign,
    );
    assert_eq!(
        problems(&t, &keys, "api"),
        vec![JwtProblem::BadType("\"at+jwt\"".into())]
    );
    let t = hand_made(
        json!({"alg": "ES256", "kid": "k1", "crit": ["b64"]}),
        &claims(now),
        sign,
    );
    assert_eq!(problems(&t, &keys, "api"), vec![JwtProblem::Critical]);
    let t = hand_made(
        json!({"alg": "ES256", "kid": "k1", "typ": "JOSE"}),
        &claims(now),
        sign,
    );
    validate_jwt_svid(&t, &keys, "api", now).unwrap();
    let mut c = claims(now);
    c.remove("exp");
    assert_eq!(
        problems(&issuer.token(&c), &keys, "api"),
        vec![JwtProblem::NoExpiry]
    );
}

#[test]
fn every_broken_rule_is_reported_not_just_the_first() {
    let keys = (td(), vec![Issuer::es256("k1").authority()]);
    let mut c = Map::new();
    c.insert("sub".into(), "not-an-id".into());
    let token = hand_made(json!({"alg": "none"}), &c, |_| Vec::new());
    let found = problems(&token, &keys, "api");
    for expected in [
        JwtProblem::AlgNone,
        JwtProblem::NoKid,
        JwtProblem::NoExpiry,
        JwtProblem::NoAudience,
    ] {
        assert!(
            found.contains(&expected),
            "{expected:?} missing from {found:?}"
        );
    }
}

#[test]
fn malformed_and_oversized_tokens_are_refused_before_any_parsing() {
    let keys = (td(), vec![Issuer::es256("k1").authority()]);
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.e30.",
        "e30.bm90IGpzb24.",
        "W10.e30.",
    ] {
        assert!(
            matches!(
                problems(bad, &keys, "api").as_slice(),
                [JwtProblem::Malformed(_)]
            ),
            "{bad}"
        );
    }
    let issuer = Issuer::es256("k1");
    let keys = (td(), vec![issuer.authority()]);
    // Just under the cap passes; just over is refused.
    let mut c = claims(SystemTime::now());
    let base = issuer.token(&c).len();
    let pad = |n: usize| "x".repeat(n);
    c.insert(
        "pad".into(),
        pad((MAX_TOKEN_BYTES - base - 20) * 3 / 4).into(),
    );
    let under = issuer.token(&c);
    assert!(under.len() <= MAX_TOKEN_BYTES, "{}", under.len());
    validate_jwt_svid(&under, &keys, "api", SystemTime::now()).unwrap();
    c.insert("pad".into(), pad(MAX_TOKEN_BYTES).into());
    assert!(matches!(
        problems(&issuer.token(&c), &keys, "api").as_slice(),
        [JwtProblem::Malformed(_)]
    ));
}

#[test]
fn jwks_round_trip_keeps_each_authority() {
    let es = Issuer::es256("k1").authority();
    let rsa = rsa_issuer().authority();
    for use_ in ["jwt-svid", "sig"] {
        let doc = jwks_of(&[es.clone(), rsa.clone()], use_).to_string();
        assert_eq!(
            jwt_authorities_from_jwks(&doc).unwrap(),
            vec![es.clone(), rsa.clone()]
        );
    }
    // x509-svid keys of a SPIFFE bundle are not JWT authorities.
    let mixed = json!({"keys": [{"use": "x509-svid", "kty": "EC"}, es.to_jwk("jwt-svid")]});
    assert_eq!(
        jwt_authorities_from_jwks(&mixed.to_string()).unwrap(),
        vec![es.clone()]
    );
    // A key without kid cannot be named by a token.
    let mut no_kid = es.to_jwk("jwt-svid");
    no_kid.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        jwt_authorities_from_jwks(&json!({ "keys": [no_kid] }).to_string()),
        Err(JwtKeyError::NoKid)
    );
}

#[test]
fn a_spiffe_bundle_carries_jwt_authorities_beside_x509_ones() {
    let ca = crate::testing::TestCa::new("example.org");
    let es = Issuer::es256("k1").authority();
    let bundle = ca.bundle().with_jwt_authorities(vec![es.clone()]);
    let doc = bundle.to_jwks().unwrap();
    let parsed: Value = serde_json::from_str(&doc).unwrap();
    let uses: Vec<&str> = parsed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["use"].as_str().unwrap())
        .collect();
    assert_eq!(uses, ["x509-svid", "jwt-svid"]);
    assert_eq!(parsed["keys"][1]["kid"], "k1");
    let back = crate::TrustBundle::from_jwks(td(), &doc).unwrap();
    assert_eq!(back, bundle);
    // The Workload API's JWT bundle: only the JWT keys.
    assert_eq!(
        jwt_authorities_from_jwks(&bundle.jwt_jwks()).unwrap(),
        vec![es]
    );
    assert!(!bundle.jwt_jwks().contains("x5c"));
}

#[test]
fn audience_limits_hold_on_both_sides() {
    let n = |count: usize| (0..count).map(|i| format!("a{i}")).collect::<Vec<_>>();
    assert_eq!(audience_problem(&n(1)), None);
    assert_eq!(audience_problem(&n(MAX_AUDIENCES)), None);
    assert!(audience_problem(&n(MAX_AUDIENCES + 1)).is_some());
    assert!(audience_problem(&[]).is_some());
    assert_eq!(audience_problem(&["x".repeat(MAX_AUDIENCE_LEN)]), None);
    assert!(audience_problem(&["x".repeat(MAX_AUDIENCE_LEN + 1)]).is_some());
    assert!(audience_problem(&[String::new()]).is_some());
    assert!(audience_problem(&["a\nb".into()]).is_some());
}
