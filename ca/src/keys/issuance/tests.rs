#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use signet_identity::verify_x509_svid;

use super::*;
use crate::config::CaConfig;
use crate::registry::entry::EntryInput;
use crate::test_db::TestDb;
use crate::Ca;

pub(crate) fn csr_for(key: &KeyPair, claimed_uri: Option<&str>) -> Vec<u8> {
    let mut p = CertificateParams::default();
    if let Some(uri) = claimed_uri {
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    }
    p.serialize_request(key).unwrap().der().to_vec()
}

async fn test_ca(db: &TestDb) -> std::sync::Arc<Ca> {
    let config = CaConfig {
        trust_domain: "example.org".into(),
        data_dir: db.dir.path().join("ca"),
        database_url: Some(db.url.clone()),
        ..CaConfig::default()
    };
    Ca::open(config).await.unwrap()
}

fn entry(ca: &Ca, ttl: i64) -> crate::registry::entry::EntrySpec {
    EntryInput {
        spiffe_id: "spiffe://example.org/ns/prod/sa/web".into(),
        parent_id: "spiffe://example.org/signet/agent/n1".into(),
        selectors: vec!["unix:uid:1000".into()],
        x509_svid_ttl: ttl,
        dns_names: vec!["web.prod.svc".into()],
        admin: false,
        hint: String::new(),
        jwt_svid_ttl: 0,
    }
    .validate(
        &ca.trust_domain,
        ca.config().max_ttl(),
        std::time::Duration::from_secs(ca.config().max_jwt_svid_ttl),
    )
    .unwrap()
}

#[tokio::test]
async fn issued_svid_takes_its_identity_from_the_entry_not_the_csr() {
    let db = TestDb::sqlite();
    let ca = test_ca(&db).await;
    let key = KeyPair::generate().unwrap();
    let csr = csr_for(&key, Some("spiffe://example.org/admin"));
    let svid = ca.sign_for_entry(&csr, &entry(&ca, 0)).unwrap();
    let bundle = ca.bundle().await.unwrap();
    let v = verify_x509_svid(&svid.chain, &bundle, SystemTime::now()).unwrap();
    assert_eq!(v.spiffe_id.as_str(), "spiffe://example.org/ns/prod/sa/web");
    let (_, leaf) = x509_parser::parse_x509_certificate(&svid.chain[0]).unwrap();
    assert_eq!(
        signet_identity::x509_svid::dns_sans(&leaf),
        vec!["web.prod.svc".to_string()]
    );
    // The certified key is the CSR's key.
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    // Default TTL applies.
    let ttl = v.not_after - signet_identity::x509_svid::unix_seconds(SystemTime::now());
    assert!((3590..=3600).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn issued_svid_is_accepted_by_the_spiffe_crate() {
    let db = TestDb::sqlite();
    let ca = test_ca(&db).await;
    let key = KeyPair::generate().unwrap();
    let svid = ca
        .sign_for_entry(&csr_for(&key, None), &entry(&ca, 600))
        .unwrap();
    let der: Vec<u8> = svid.chain.iter().flat_map(|c| c.to_vec()).collect();
    let parsed = spiffe::X509Svid::parse_from_der(&der, &key.serialize_der()).unwrap();
    assert_eq!(
        parsed.spiffe_id().to_string(),
        "spiffe://example.org/ns/prod/sa/web"
    );
}

#[tokio::test]
async fn csr_with_a_forged_signature_is_refused() {
    let db = TestDb::sqlite();
    let ca = test_ca(&db).await;
    let key = KeyPair::generate().unwrap();
    let mut csr = csr_for(&key, None);
    let last = csr.len() - 1;
    csr[last] ^= 0x01; // flip a bit of the signature
    let err = ca.sign_for_entry(&csr, &entry(&ca, 0)).unwrap_err();
    assert!(
        matches!(err, crate::CaError::Issue(IssueError::BadCsrSignature)),
        "{err}"
    );
    // A CSR whose key is swapped for another key's also fails its signature.
    let other = KeyPair::generate().unwrap();
    let good = csr_for(&key, None);
    let swapped = swap_bytes(&good, key.public_key_raw(), other.public_key_raw());
    let err = ca.sign_for_entry(&swapped, &entry(&ca, 0)).unwrap_err();
    assert!(
        matches!(err, crate::CaError::Issue(IssueError::BadCsrSignature)),
        "{err}"
    );
}

fn swap_bytes(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let pos = haystack
        .windows(from.len())
        .position(|w| w == from)
        .unwrap();
    let mut out = haystack.to_vec();
    out[pos..pos + from.len()].copy_from_slice(to);
    out
}

#[tokio::test]
async fn garbage_and_weak_keys_are_refused() {
    let db = TestDb::sqlite();
    let ca = test_ca(&db).await;
    let err = ca.sign_for_entry(b"not a csr", &entry(&ca, 0)).unwrap_err();
    assert!(
        matches!(err, crate::CaError::Issue(IssueError::MalformedCsr(_))),
        "{err}"
    );
    let p521 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    // P-384 is accepted.
    ca.sign_for_entry(&csr_for(&p521, None), &entry(&ca, 0))
        .unwrap();
}

#[tokio::test]
async fn serial_numbers_are_random() {
    let db = TestDb::sqlite();
    let ca = test_ca(&db).await;
    let key = KeyPair::generate().unwrap();
    let csr = csr_for(&key, None);
    let a = ca.sign_for_entry(&csr, &entry(&ca, 0)).unwrap();
    let b = ca.sign_for_entry(&csr, &entry(&ca, 0)).unwrap();
    assert_ne!(a.serial, b.serial);
    assert!(a.serial.len() >= 30, "{}", a.serial);
}

#[tokio::test]
async fn ttl_is_capped_by_the_ca_certificate_lifetime() {
    let db = TestDb::sqlite();
    let ca = test_ca(&db).await;
    let authority = ca.authority();
    let key = KeyPair::generate().unwrap();
    // Pretend it is 10 minutes before the CA expires.
    let now = authority.not_after - Duration::from_secs(600);
    let svid = sign_for_entry(
        &authority,
        &csr_for(&key, None),
        &entry(&ca, 3600),
        Duration::from_secs(3600),
        now,
    )
    .unwrap();
    assert_eq!(
        svid.not_after,
        signet_identity::x509_svid::unix_seconds(authority.not_after)
    );
    let after = authority.not_after + Duration::from_secs(1);
    let err = sign_for_entry(
        &authority,
        &csr_for(&key, None),
        &entry(&ca, 3600),
        Duration::from_secs(3600),
        after,
    )
    .unwrap_err();
    assert!(matches!(err, IssueError::CaExpired));
}
