#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use signet_identity::verify_x509_svid;

use super::*;
use crate::issuance::tests::csr_for;
use crate::test_db::{on_both_backends, TestDb};

on_both_backends!(
    entries_ca_key_and_bundle_survive_a_restart,
    entry_validation_errors_store_nothing,
    upstream_mode_issues_svids_that_chain_to_the_upstream_root,
    svids_verify_with_openssl_against_the_exported_bundle,
    database_of_another_trust_domain_is_refused,
    jwt_keys_rotate_with_no_token_failing_validation,
);

fn config(db: &TestDb, td: &str) -> CaConfig {
    CaConfig {
        trust_domain: td.into(),
        data_dir: db.dir.path().join("ca"),
        database_url: Some(db.url.clone()),
        ..CaConfig::default()
    }
}

fn web_entry() -> EntryInput {
    EntryInput {
        spiffe_id: "spiffe://example.org/web".into(),
        parent_id: "spiffe://example.org/signet/agent/n1".into(),
        selectors: vec!["unix:uid:1000".into()],
        ..Default::default()
    }
}

async fn entries_ca_key_and_bundle_survive_a_restart(db: TestDb) {
    let (entry, bundle_pem, key_id) = {
        let ca = Ca::open(config(&db, "example.org")).await.unwrap();
        let entry = ca.create_entry(&web_entry()).await.unwrap();
        let b = ca.bundle().await.unwrap();
        let key_id = ca.authority().id.clone();
        ca.store.close().await;
        (entry, b.to_pem(), key_id)
    };
    // The private key file is owner-only.
    use std::os::unix::fs::PermissionsExt;
    let key_file = db.dir.path().join("ca/keys").join(format!("{key_id}.pem"));
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let ca = Ca::open(config(&db, "example.org")).await.unwrap();
    assert_eq!(ca.authority().id, key_id);
    assert_eq!(ca.bundle().await.unwrap().to_pem(), bundle_pem);
    assert_eq!(
        ca.list_entries(&EntryFilter::default()).await.unwrap(),
        vec![entry]
    );
    // An SVID signed after the restart verifies against the bundle from before.
    let key = KeyPair::generate().unwrap();
    let spec = web_entry()
        .validate(
            &ca.trust_domain,
            ca.config.max_ttl(),
            std::time::Duration::from_secs(ca.config.max_jwt_svid_ttl),
        )
        .unwrap();
    let svid = ca.sign_for_entry(&csr_for(&key, None), &spec).unwrap();
    let old_bundle = TrustBundle::from_pem(ca.trust_domain.clone(), &bundle_pem).unwrap();
    verify_x509_svid(&svid.chain, &old_bundle, SystemTime::now()).unwrap();
}

async fn entry_validation_errors_store_nothing(db: TestDb) {
    let ca = Ca::open(config(&db, "example.org")).await.unwrap();
    let mut bad = web_entry();
    bad.x509_svid_ttl = 10 * 86400;
    assert!(matches!(
        ca.create_entry(&bad).await,
        Err(CaError::Entry(EntryError::TtlTooLong { .. }))
    ));
    let mut bad = web_entry();
    bad.selectors = vec!["k8s:ns:x".into()];
    assert!(matches!(
        ca.create_entry(&bad).await,
        Err(CaError::Entry(_))
    ));
    ca.create_entry(&web_entry()).await.unwrap();
    let dup = ca.create_entry(&web_entry()).await.unwrap_err();
    assert!(matches!(dup, CaError::Store(StoreError::AlreadyExists(_))));
    assert_eq!(
        ca.list_entries(&EntryFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Writes an upstream root CA (cert + PKCS#8 key) like an existing PKI would have.
fn write_upstream(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Corp Root CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.not_after = (SystemTime::now() + Duration::from_secs(86400 * 400)).into();
    let cert = p.self_signed(&key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (c, k) = (dir.join("upstream.pem"), dir.join("upstream.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, cert.der().to_vec())
}

async fn upstream_mode_issues_svids_that_chain_to_the_upstream_root(db: TestDb) {
    let (c, k, root_der) = write_upstream(&db.dir.path().join("upstream"));
    let mut cfg = config(&db, "example.org");
    cfg.upstream_cert = Some(c);
    cfg.upstream_key = Some(k);
    let ca = Ca::open(cfg.clone()).await.unwrap();
    let bundle = ca.bundle().await.unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(bundle.authorities()[0].to_vec(), root_der);
    assert!(!ca.authority().self_signed);
    let key = KeyPair::generate().unwrap();
    let spec = web_entry()
        .validate(
            &ca.trust_domain,
            ca.config.max_ttl(),
            std::time::Duration::from_secs(ca.config.max_jwt_svid_ttl),
        )
        .unwrap();
    let svid = ca.sign_for_entry(&csr_for(&key, None), &spec).unwrap();
    assert_eq!(svid.chain.len(), 2, "leaf + Signet intermediate");
    verify_x509_svid(&svid.chain, &bundle, SystemTime::now()).unwrap();
    let id = ca.authority().id.clone();
    ca.store.close().await;
    drop(ca);
    let again = Ca::open(cfg).await.unwrap();
    assert_eq!(
        again.authority().id,
        id,
        "intermediate reused after restart"
    );
}

async fn svids_verify_with_openssl_against_the_exported_bundle(db: TestDb) {
    if Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl CLI not installed: it is the independent verifier for this test");
    }
    for upstream in [false, true] {
        let sub = tempfile::tempdir().unwrap();
        let mut cfg = config(&db, "example.org");
        cfg.data_dir = sub.path().join("ca");
        if upstream {
            let (c, k, _) = write_upstream(&sub.path().join("up"));
            cfg.upstream_cert = Some(c);
            cfg.upstream_key = Some(k);
            cfg.database_url = Some(format!(
                "sqlite://{}?mode=rwc",
                sub.path().join("db.sqlite").display()
            ));
        } else {
            cfg.database_url = Some(db.url.clone());
        }
        let ca = Ca::open(cfg).await.unwrap();
        let key = KeyPair::generate().unwrap();
        let spec = web_entry()
            .validate(
                &ca.trust_domain,
                ca.config.max_ttl(),
                std::time::Duration::from_secs(ca.config.max_jwt_svid_ttl),
            )
            .unwrap();
        let svid = ca.sign_for_entry(&csr_for(&key, None), &spec).unwrap();
        let bundle = sub.path().join("bundle.pem");
        let leaf = sub.path().join("leaf.pem");
        let chain = sub.path().join("chain.pem");
        std::fs::write(&bundle, ca.bundle().await.unwrap().to_pem()).unwrap();
        std::fs::write(
            &leaf,
            signet_identity::certificates_to_pem(&svid.chain[..1]),
        )
        .unwrap();
        let mut cmd = Command::new("openssl");
        cmd.args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(&bundle);
        if svid.chain.len() > 1 {
            std::fs::write(
                &chain,
                signet_identity::certificates_to_pem(&svid.chain[1..]),
            )
            .unwrap();
            cmd.arg("-untrusted").arg(&chain);
        }
        let out = cmd.arg(&leaf).output().unwrap();
        assert!(
            out.status.success(),
            "openssl verify (upstream={upstream}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ca.store.close().await;
    }
}

async fn database_of_another_trust_domain_is_refused(db: TestDb) {
    let ca = Ca::open(config(&db, "example.org")).await.unwrap();
    ca.store.close().await;
    drop(ca);
    let err = Ca::open(config(&db, "other.org")).await.err().unwrap();
    assert!(err.to_string().contains("belongs to trust domain"), "{err}");
}

async fn jwt_keys_rotate_with_no_token_failing_validation(db: TestDb) {
    use signet_identity::jwt_svid::{decode_jwt, validate_jwt_svid};
    let mut cfg = config(&db, "example.org");
    cfg.jwt_key_ttl = 600;
    cfg.max_jwt_svid_ttl = 100;
    cfg.default_jwt_svid_ttl = 100;
    let start = SystemTime::now();
    let clock = signet_identity::clock::Clock::manual(start);
    let ca = Ca::open_with_clock(cfg.clone(), clock.clone())
        .await
        .unwrap();
    let first = ca.jwt_signer().kid.clone();
    // The key survives a restart.
    ca.store.close().await;
    let ca = Ca::open_with_clock(cfg, clock.clone()).await.unwrap();
    assert_eq!(ca.jwt_signer().kid, first);

    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let aud = ["api".to_owned()];
    let mut tokens: Vec<(String, i64)> = Vec::new();
    let mut signers = vec![first];
    for step in 0..=180u64 {
        let t = start + Duration::from_secs(step * 10);
        clock.set(t);
        ca.rotate_jwt_keys().await.unwrap();
        let signer = ca.jwt_signer().kid.clone();
        let bundle = ca.bundle().await.unwrap();
        let published: Vec<&str> = bundle.jwt_authorities().iter().map(|a| a.kid()).collect();
        assert!(published.contains(&signer.as_str()));
        if signers.last() != Some(&signer) {
            signers.push(signer);
        }
        let minted = ca.mint_jwt_svid(&id, &aud, 0).unwrap();
        assert!(
            minted.expires_at - minted.issued_at == 100,
            "token cut short at step {step}"
        );
        tokens.push((minted.token, minted.expires_at));
        // Every token not yet expired still validates, whichever key signed it.
        for (token, exp) in &tokens {
            if *exp > signet_identity::x509_svid::unix_seconds(t) {
                validate_jwt_svid(token, &bundle, "api", t)
                    .unwrap_or_else(|p| panic!("step {step}: {p:?}"));
            }
        }
        // Expired keys leave the bundle: at most the active, the prepared
        // and the previous one.
        assert!(published.len() <= 3, "{published:?}");
    }
    assert!(signers.len() >= 5, "{signers:?}");
    let header = decode_jwt(&tokens[0].0).unwrap().header;
    assert_eq!(header["alg"], "ES256");
}
