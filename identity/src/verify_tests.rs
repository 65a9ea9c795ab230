//! One test per X.509-SVID rule: each builds a certificate that breaks exactly
//! that rule and checks that verification refuses it for that reason.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};

use super::*;
use crate::testing::{LeafSpec, SigningSpec, TestCa};
use crate::x509_svid::Violation;

const ID: &str = "spiffe://example.org/ns/prod/sa/web";

fn verify_leaf(spec: &LeafSpec) -> Result<VerifiedSvid, SvidError> {
    let ca = TestCa::new("example.org");
    let (chain, _) = ca.leaf(spec);
    verify_x509_svid(&chain, &ca.bundle(), SystemTime::now())
}

fn leaf_violation(spec: LeafSpec) -> Violation {
    match verify_leaf(&spec) {
        Err(SvidError::Leaf(v)) => v,
        other => panic!("expected a leaf violation, got {other:?}"),
    }
}

#[test]
fn valid_leaf_verifies_and_reports_its_id() {
    let v = verify_leaf(&LeafSpec::valid(ID)).unwrap();
    assert_eq!(v.spiffe_id.as_str(), ID);
}

#[test]
fn valid_leaf_is_accepted_by_the_spiffe_crate() {
    let ca = TestCa::new("example.org");
    let (chain, key) = ca.leaf(&LeafSpec::valid(ID));
    let chain_der: Vec<u8> = chain.iter().flat_map(|c| c.to_vec()).collect();
    let svid = spiffe::X509Svid::parse_from_der(&chain_der, &key.serialize_der()).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), ID);
}

#[test]
fn leaf_without_uri_san_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.uris.clear();
    spec.dns_names = vec!["web.example.org".into()];
    assert_eq!(leaf_violation(spec), Violation::NoUriSan);
}

#[test]
fn leaf_with_two_uri_sans_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.uris.push("spiffe://example.org/other".into());
    assert_eq!(leaf_violation(spec), Violation::MultipleUriSans(2));
}

#[test]
fn leaf_with_non_spiffe_uri_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.uris = vec!["https://example.org/web".into()];
    assert!(matches!(
        leaf_violation(spec),
        Violation::InvalidSpiffeId { .. }
    ));
}

#[test]
fn leaf_with_trust_domain_id_only_is_refused() {
    let spec = LeafSpec::valid("spiffe://example.org");
    assert!(matches!(
        leaf_violation(spec),
        Violation::LeafIdWithoutPath(_)
    ));
}

#[test]
fn ca_flagged_leaf_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.is_ca = true;
    assert_eq!(leaf_violation(spec), Violation::LeafIsCa);
}

#[test]
fn leaf_without_key_usage_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.key_usages = None;
    assert_eq!(leaf_violation(spec), Violation::KeyUsageMissing);
}

#[test]
fn leaf_with_non_critical_key_usage_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.key_usage_critical = false;
    assert_eq!(leaf_violation(spec), Violation::KeyUsageNotCritical);
}

#[test]
fn leaf_without_digital_signature_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.key_usages = Some(vec![Ku::KeyEncipherment]);
    assert_eq!(leaf_violation(spec), Violation::LeafLacksDigitalSignature);
}

#[test]
fn leaf_with_key_cert_sign_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.key_usages = Some(vec![Ku::DigitalSignature, Ku::KeyCertSign]);
    assert_eq!(leaf_violation(spec), Violation::LeafHasKeyCertSign);
}

#[test]
fn leaf_with_crl_sign_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.key_usages = Some(vec![Ku::DigitalSignature, Ku::CrlSign]);
    assert_eq!(leaf_violation(spec), Violation::LeafHasCrlSign);
}

#[test]
fn leaf_eku_without_client_auth_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.ekus = vec![Eku::ServerAuth];
    assert_eq!(leaf_violation(spec), Violation::EkuLacksClientAuth);
}

#[test]
fn leaf_eku_without_server_auth_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.ekus = vec![Eku::ClientAuth];
    assert_eq!(leaf_violation(spec), Violation::EkuLacksServerAuth);
}

#[test]
fn leaf_without_eku_is_accepted() {
    let mut spec = LeafSpec::valid(ID);
    spec.ekus.clear();
    verify_leaf(&spec).unwrap();
}

#[test]
fn expired_leaf_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    let now = SystemTime::now();
    spec.not_before = now - Duration::from_secs(7200);
    spec.not_after = now - Duration::from_secs(60);
    assert!(matches!(leaf_violation(spec), Violation::Expired(_)));
}

#[test]
fn not_yet_valid_leaf_is_refused() {
    let mut spec = LeafSpec::valid(ID);
    spec.not_before = SystemTime::now() + Duration::from_secs(600);
    assert!(matches!(leaf_violation(spec), Violation::NotYetValid(_)));
}

#[test]
fn leaf_of_another_trust_domain_is_refused_even_when_signed_by_our_authority() {
    let r = verify_leaf(&LeafSpec::valid("spiffe://evil.org/ns/prod/sa/web"));
    assert!(
        matches!(r, Err(SvidError::WrongTrustDomain { .. })),
        "{r:?}"
    );
}

#[test]
fn leaf_signed_by_an_unknown_authority_is_refused() {
    let ours = TestCa::new("example.org");
    let theirs = TestCa::new("example.org");
    let (chain, _) = theirs.leaf(&LeafSpec::valid(ID));
    let r = verify_x509_svid(&chain, &ours.bundle(), SystemTime::now());
    assert!(matches!(r, Err(SvidError::Untrusted { .. })), "{r:?}");
}

#[test]
fn empty_chain_is_refused() {
    let ca = TestCa::new("example.org");
    assert_eq!(
        verify_x509_svid(&[], &ca.bundle(), SystemTime::now()),
        Err(SvidError::EmptyChain)
    );
}

#[test]
fn leaf_under_a_valid_intermediate_verifies() {
    let ca = TestCa::new("example.org");
    let inter = ca.root.intermediate(&SigningSpec::valid("example.org"));
    let (chain, _) = inter.leaf(&LeafSpec::valid(ID));
    assert_eq!(chain.len(), 2);
    verify_x509_svid(&chain, &ca.bundle(), SystemTime::now()).unwrap();
}

fn intermediate_violation(spec: SigningSpec) -> SvidError {
    let ca = TestCa::new("example.org");
    let inter = ca.root.intermediate(&spec);
    let (chain, _) = inter.leaf(&LeafSpec::valid(ID));
    verify_x509_svid(&chain, &ca.bundle(), SystemTime::now()).unwrap_err()
}

#[test]
fn intermediate_that_is_not_a_ca_is_refused() {
    let mut spec = SigningSpec::valid("example.org");
    spec.is_ca = false;
    assert_eq!(
        intermediate_violation(spec),
        SvidError::Intermediate {
            index: 1,
            violation: Violation::SigningCertNotCa
        }
    );
}

#[test]
fn intermediate_without_key_cert_sign_is_refused() {
    let mut spec = SigningSpec::valid("example.org");
    spec.key_usages = Some(vec![Ku::CrlSign]);
    assert_eq!(
        intermediate_violation(spec),
        SvidError::Intermediate {
            index: 1,
            violation: Violation::SigningCertLacksKeyCertSign
        }
    );
}

#[test]
fn intermediate_with_spiffe_id_path_is_refused() {
    let mut spec = SigningSpec::valid("example.org");
    spec.uri = Some("spiffe://example.org/ca".into());
    assert!(matches!(
        intermediate_violation(spec),
        SvidError::Intermediate {
            index: 1,
            violation: Violation::SigningCertIdHasPath(_)
        }
    ));
}

#[test]
fn expired_intermediate_is_refused() {
    let mut spec = SigningSpec::valid("example.org");
    spec.not_before = SystemTime::now() - Duration::from_secs(7200);
    spec.not_after = SystemTime::now() - Duration::from_secs(10);
    assert!(matches!(
        intermediate_violation(spec),
        SvidError::Intermediate {
            index: 1,
            violation: Violation::Expired(_)
        }
    ));
}

#[test]
fn bundle_round_trips_through_pem_and_jwks() {
    let ca = TestCa::new("example.org");
    let mut bundle = ca.bundle();
    bundle.sequence = 7;
    bundle.refresh_hint_secs = Some(300);
    let pem = bundle.to_pem();
    let from_pem = crate::TrustBundle::from_pem(ca.trust_domain.clone(), &pem).unwrap();
    assert_eq!(from_pem.authorities(), bundle.authorities());
    let jwks = bundle.to_jwks().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(doc["spiffe_sequence"], 7);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    assert_eq!(doc["keys"][0]["use"], "x509-svid");
    assert_eq!(doc["keys"][0]["kty"], "EC");
    assert_eq!(doc["keys"][0]["crv"], "P-256");
    assert!(doc["keys"][0].get("kid").is_none());
    let back = crate::TrustBundle::from_jwks(ca.trust_domain.clone(), &jwks).unwrap();
    assert_eq!(back, bundle);
}

#[test]
fn jwks_entries_for_other_uses_or_without_x5c_are_ignored_but_a_broken_jwt_key_is_not() {
    let ca = TestCa::new("example.org");
    let good = ca.bundle().to_jwks().unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.push(serde_json::json!({"use": "other", "kty": "EC", "kid": "k0"}));
    keys.push(serde_json::json!({"use": "x509-svid", "kty": "EC"}));
    let back = crate::TrustBundle::from_jwks(ca.trust_domain.clone(), &doc.to_string()).unwrap();
    assert_eq!(back.authorities().len(), 1);
    assert!(back.jwt_authorities().is_empty());
    // A JWT authority that cannot verify anything is an error, not skipped.
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.push(serde_json::json!({"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "AA", "y": "AA"}));
    assert!(matches!(
        crate::TrustBundle::from_jwks(ca.trust_domain.clone(), &doc.to_string()),
        Err(crate::BundleError::JwtAuthority(_))
    ));
}

#[test]
fn inspect_lists_every_broken_rule() {
    let ca = TestCa::new("example.org");
    let mut spec = LeafSpec::valid(ID);
    spec.is_ca = true;
    spec.ekus = vec![Eku::ServerAuth];
    let (chain, _) = ca.leaf(&spec);
    let report = crate::inspect_chain(&chain, SystemTime::now());
    assert_eq!(report[0].uris, vec![ID.to_string()]);
    assert_eq!(report[0].key_type, "EC P-256");
    assert_eq!(report[0].violations.len(), 2, "{:?}", report[0].violations);
}

#[test]
fn inspect_judges_a_lone_root_as_a_signing_certificate() {
    let ca = TestCa::new("example.org");
    let report = crate::inspect_chain(std::slice::from_ref(&ca.root.der), SystemTime::now());
    assert!(
        report[0].violations.is_empty(),
        "{:?}",
        report[0].violations
    );
}

#[test]
fn a_jwks_bundle_that_could_not_be_written_back_is_refused() {
    // Found by fuzzing (fuzz/regressions/bundle_jwks): the x5c certificate
    // parses but its key is of a type no JWK describes; it used to be
    // accepted, and `to_jwks` then failed on the bundle.
    let td = TrustDomain::new("example.org").unwrap();
    let found = include_str!("../../fuzz/regressions/bundle_jwks/unsupported-key-in-x5c.json");
    assert!(matches!(
        TrustBundle::from_jwks(td.clone(), found),
        Err(crate::BundleError::BadAuthority { index: 0, .. })
    ));
    // The kty must match the certificate's key, and x5c hold one certificate.
    let good = TestCa::new("example.org").bundle().to_jwks().unwrap();
    assert!(TrustBundle::from_jwks(td.clone(), &good).is_ok());
    let wrong_kty = good.replace("\"kty\": \"EC\"", "\"kty\": \"RSA\"");
    assert!(TrustBundle::from_jwks(td.clone(), &wrong_kty).is_err());
    let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
    let cert = doc["keys"][0]["x5c"][0].clone();
    doc["keys"][0]["x5c"] = serde_json::json!([cert.clone(), cert]);
    assert!(TrustBundle::from_jwks(td, &doc.to_string()).is_err());
}

#[test]
fn a_malformed_extension_is_broken_not_absent() {
    let ca = TestCa::new("example.org");
    let bundle = ca.bundle();
    let now = SystemTime::now();
    // basicConstraints whose content is not a SEQUENCE: read as absent, it
    // would pass for "not a CA".
    let mut spec = LeafSpec::valid("spiffe://example.org/w");
    spec.raw_extensions = vec![(vec![2, 5, 29, 19], vec![0x01, 0x01, 0xff], true)];
    let (chain, _) = ca.leaf(&spec);
    let err = verify_x509_svid(&chain, &bundle, now).unwrap_err();
    assert!(
        matches!(&err, SvidError::Leaf(Violation::BadExtension(m)) if m.starts_with("basicConstraints")),
        "{err:?}"
    );
    // keyUsage truncated: broken, not merely "missing".
    let mut spec = LeafSpec::valid("spiffe://example.org/w");
    spec.key_usages = None;
    spec.raw_extensions = vec![(vec![2, 5, 29, 15], vec![0x03, 0x05, 0x07], true)];
    let (chain, _) = ca.leaf(&spec);
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let v = crate::x509_svid::leaf_violations(&cert, now);
    assert!(
        v.iter()
            .any(|v| matches!(v, Violation::BadExtension(m) if m.starts_with("keyUsage"))),
        "{v:?}"
    );
}

#[test]
fn every_signing_certificate_has_a_subject_of_its_own() {
    // spiffe/spire#4415: chain building breaks when many CA certificates
    // share one subject; the serial goes into the subject as serialNumber.
    let id = crate::TrustDomain::new("example.org").unwrap().id();
    let now = SystemTime::now();
    let subject = |_: u8| {
        let params = crate::x509_svid::signing_params(
            &id,
            "Signet root CA example.org",
            now,
            now + Duration::from_secs(3600),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let serial_attr = cert
            .subject()
            .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
            .next()
            .map(|a| a.as_str().unwrap().to_owned())
            .unwrap();
        assert_eq!(serial_attr, cert.raw_serial_as_string().replace(':', ""));
        cert.subject().to_string()
    };
    assert_ne!(subject(1), subject(2));
}
