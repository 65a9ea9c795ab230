#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use signet_identity::verify_x509_svid;

use super::*;
use crate::keys::issuance::tests::csr_for;
use crate::registry::entry::EntryInput;
use crate::store::{EntryFilter, KeyStatus};
use crate::test_db::{on_both_backends, TestDb};
use signet_identity::SpiffeId;

on_both_backends!(
    entries_ca_key_and_bundle_survive_a_restart,
    entry_validation_errors_store_nothing,
    upstream_mode_issues_svids_that_chain_to_the_upstream_root,
    svids_verify_with_openssl_against_the_exported_bundle,
    database_of_another_trust_domain_is_refused,
    jwt_keys_rotate_with_no_token_failing_validation,
    x509_keys_rotate_with_no_svid_failing_verification,
    intermediates_under_an_upstream_rotate_the_same_way,
    incident_operations_on_x509_keys_refuse_what_would_break_svids,
    a_replica_catches_up_on_more_changes_than_one_feed_page,
    incident_operations_on_jwt_keys,
    concurrent_prepares_make_one_prepared_key_per_replica,
    an_agent_gets_svids_only_for_its_own_entries,
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
        ca.close().await;
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
    ca.close().await;
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
        ca.close().await;
    }
}

async fn database_of_another_trust_domain_is_refused(db: TestDb) {
    let ca = Ca::open(config(&db, "example.org")).await.unwrap();
    ca.close().await;
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
    ca.close().await;
    let ca = Ca::open_with_clock(cfg, clock.clone()).await.unwrap();
    assert_eq!(ca.jwt_signer().kid, first);

    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let aud = ["api".to_owned()];
    let mut tokens: Vec<(String, i64)> = Vec::new();
    let mut signers = vec![first];
    for step in 0..=180u64 {
        let t = start + Duration::from_secs(step * 10);
        clock.set(t);
        ca.rotate_keys(KeyKind::Jwt).await.unwrap();
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

fn short_lived(db: &TestDb) -> CaConfig {
    let mut cfg = config(db, "example.org");
    cfg.ca_ttl = 600; // prepare at 300 s left, activate at 100 s left
    cfg.max_x509_svid_ttl = 100;
    cfg.default_x509_svid_ttl = 100;
    cfg
}

async fn x509_keys_rotate_with_no_svid_failing_verification(db: TestDb) {
    rotate_and_verify_every_svid(short_lived(&db)).await;
}

async fn intermediates_under_an_upstream_rotate_the_same_way(db: TestDb) {
    let (cert, key, root) = write_upstream(&db.dir.path().join("upstream"));
    let mut cfg = short_lived(&db);
    cfg.upstream_cert = Some(cert);
    cfg.upstream_key = Some(key);
    let ca = rotate_and_verify_every_svid(cfg).await;
    // The bundle is the upstream root throughout; each key is an
    // intermediate it signed.
    let bundle = ca.bundle().await.unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(bundle.authorities()[0].as_ref(), root.as_slice());
    assert!(!ca.authority().self_signed);
}

/// Runs rotation over three key lifetimes in steps of 10 s, signing an SVID
/// at each step and checking every SVID still alive against the bundle;
/// returns the CA, restarted once at the end.
async fn rotate_and_verify_every_svid(cfg: CaConfig) -> Arc<Ca> {
    let start = SystemTime::now();
    let clock = signet_identity::clock::Clock::manual(start);
    let ca = Ca::open_with_clock(cfg.clone(), clock.clone())
        .await
        .unwrap();
    let entry = ca.create_entry(&web_entry()).await.unwrap();
    let mut svids: Vec<(Vec<rustls_pki_types::CertificateDer<'static>>, i64)> = Vec::new();
    let mut signers = vec![ca.authority().id.clone()];
    let mut published_before_signing = std::collections::HashMap::new();
    for step in 0..=180u64 {
        let t = start + Duration::from_secs(step * 10);
        clock.set(t);
        ca.rotate_keys(KeyKind::X509).await.unwrap();
        let bundle = ca.bundle().await.unwrap();
        let keys = ca.store.ca_keys(unix_seconds(t)).await.unwrap();
        let active: Vec<_> = keys
            .iter()
            .filter(|k| k.journal.status == KeyStatus::Active)
            .collect();
        assert_eq!(active.len(), 1, "step {step}: {keys:?}");
        assert_eq!(active[0].id, ca.authority().id);
        for k in &keys {
            if k.journal.status == KeyStatus::Prepared {
                published_before_signing.entry(k.id.clone()).or_insert(step);
            }
        }
        let signer = ca.authority().id.clone();
        if signers.last() != Some(&signer) {
            // The new key was in the bundle at least one step before it signed.
            let first_seen = published_before_signing.get(&signer).copied();
            assert!(
                first_seen.is_some_and(|s| s < step),
                "{signer} signed at step {step} unpublished"
            );
            signers.push(signer);
        }
        let key = KeyPair::generate().unwrap();
        let svid = ca
            .sign_for_entry(&csr_for(&key, None), &entry.spec)
            .unwrap();
        assert_eq!(
            svid.not_after - unix_seconds(t),
            100,
            "SVID cut short at step {step}"
        );
        svids.push((svid.chain, svid.not_after));
        // Every SVID not yet expired still verifies, whichever key signed it.
        for (chain, exp) in &svids {
            if *exp > unix_seconds(t) {
                verify_x509_svid(chain, &bundle, t).unwrap_or_else(|e| panic!("step {step}: {e}"));
            }
        }
        // Expired keys leave the bundle.
        assert!(bundle.authorities().len() <= 3, "step {step}");
    }
    assert!(signers.len() >= 5, "{signers:?}");
    // The active key survives a restart.
    let active = ca.authority().id.clone();
    ca.close().await;
    let ca = Ca::open_with_clock(cfg, clock).await.unwrap();
    assert_eq!(ca.authority().id, active);
    ca
}

async fn incident_operations_on_x509_keys_refuse_what_would_break_svids(db: TestDb) {
    let start = SystemTime::now();
    let clock = signet_identity::clock::Clock::manual(start);
    let ca = Ca::open_with_clock(short_lived(&db), clock.clone())
        .await
        .unwrap();
    let refused = |r: Result<crate::store::CaKeyRecord, CaError>| match r {
        Err(e @ CaError::Authority(AuthorityError::Refused(_))) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let first = ca.authority().id.clone();
    let entry = ca.create_entry(&web_entry()).await.unwrap();
    let key = KeyPair::generate().unwrap();
    let old_svid = ca
        .sign_for_entry(&csr_for(&key, None), &entry.spec)
        .unwrap();
    // Nothing prepared: nothing to activate; the active key can be
    // neither tainted nor revoked.
    assert!(refused(x509(ca.activate_key(KeyKind::X509).await)).contains("signet ca prepare"));
    assert!(refused(x509(ca.taint_key(&first).await)).contains("active"));
    assert!(refused(x509(ca.revoke_key(&first, true).await)).contains("active"));
    // Prepared: in the bundle at once, but not signing.
    let next = x509(ca.prepare_key(KeyKind::X509).await).unwrap();
    assert_eq!(next.journal.status, KeyStatus::Prepared);
    assert!(refused(x509(ca.prepare_key(KeyKind::X509).await)).contains(&next.id));
    assert_eq!(ca.bundle().await.unwrap().authorities().len(), 2);
    assert_eq!(ca.authority().id, first);
    // Activated only once published for the grace period (here 10 s).
    assert!(refused(x509(ca.activate_key(KeyKind::X509).await)).contains("wait"));
    clock.advance(Duration::from_secs(10));
    let active = x509(ca.activate_key(KeyKind::X509).await).unwrap();
    assert_eq!(active.id, next.id);
    assert_eq!(ca.authority().id, next.id);
    let old = ca.store.ca_key(&first).await.unwrap();
    assert_eq!(old.journal.status, KeyStatus::Old);
    assert!(old.journal.retired_at > 0);
    // The old key's SVIDs still verify; tainting it tells agents (through
    // the published bundle) to replace them.
    let bundle = ca.bundle().await.unwrap();
    verify_x509_svid(&old_svid.chain, &bundle, clock.now()).unwrap();
    let tainted = x509(ca.taint_key(&first).await).unwrap();
    assert!(tainted.journal.tainted);
    assert!(refused(x509(ca.taint_key(&first).await)).contains("already"));
    let published = ca.subscribe_bundle().borrow().clone();
    let signer_id = signet_identity::x509_svid::authority_key_id(&old_svid.chain[0]).unwrap();
    assert_eq!(published.tainted, vec![signer_id]);
    // Revoking it while its SVIDs may live is refused without --force...
    assert!(refused(x509(ca.revoke_key(&first, false).await)).contains("--force"));
    // ...and allowed once they cannot (max_x509_svid_ttl after it retired).
    clock.advance(Duration::from_secs(100));
    let revoked = x509(ca.revoke_key(&first, false).await).unwrap();
    assert_eq!(revoked.journal.status, KeyStatus::Revoked);
    let bundle = ca.bundle().await.unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    assert!(verify_x509_svid(&old_svid.chain, &bundle, clock.now()).is_err());
    assert!(refused(x509(ca.revoke_key(&first, true).await)).contains("already"));
    // Unknown keys are NOT_FOUND.
    match x509(ca.taint_key("nope").await) {
        Err(e) => assert_eq!(crate::api::status::status(&e).code(), tonic::Code::NotFound),
        Ok(k) => panic!("{k:?}"),
    }
}

/// Another replica (here: the store directly) writes more changes than one
/// read of the feed returns: catching up reads them all.
async fn a_replica_catches_up_on_more_changes_than_one_feed_page(db: TestDb) {
    let ca = Ca::open(config(&db, "example.org")).await.unwrap();
    let before = ca.revision();
    let n = super::FEED_PAGE as usize + 1;
    for i in 0..n {
        let mut input = web_entry();
        input.spiffe_id = format!("spiffe://example.org/w{i}");
        let spec = input
            .validate(
                &ca.trust_domain,
                ca.config.max_ttl(),
                Duration::from_secs(300),
            )
            .unwrap();
        ca.store.create_entry(&spec, 1).await.unwrap();
    }
    assert_eq!(ca.revision(), before, "not applied before the feed is read");
    ca.catch_up().await.unwrap();
    assert_eq!(ca.revision(), ca.store.latest_revision().await.unwrap());
    match ca
        .entry_catchup("spiffe://example.org/signet/agent/n1", None)
        .0
    {
        crate::registry::entry_cache::Catchup::Snapshot(all) => assert_eq!(all.len(), n),
        other => panic!("{other:?}"),
    }
}

async fn incident_operations_on_jwt_keys(db: TestDb) {
    use signet_identity::jwt_svid::validate_jwt_svid;
    let start = SystemTime::now();
    let clock = signet_identity::clock::Clock::manual(start);
    let ca = Ca::open_with_clock(config(&db, "example.org"), clock.clone())
        .await
        .unwrap();
    let refused = |r: Result<AnyKey, CaError>| match r {
        Err(e @ CaError::Authority(AuthorityError::Refused(_))) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let first = ca.jwt_signer().kid.clone();
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let aud = ["api".to_owned()];
    let old_token = ca.mint_jwt_svid(&id, &aud, 0).unwrap().token;
    assert!(refused(ca.taint_key(&first).await).contains("active"));
    assert!(refused(ca.revoke_key(&first, true).await).contains("active"));
    let next = jwt(ca.prepare_key(KeyKind::Jwt).await).unwrap();
    assert!(matches!(
        jwt(ca.prepare_key(KeyKind::Jwt).await),
        Err(CaError::Authority(AuthorityError::Refused(_)))
    ));
    assert!(ca
        .bundle()
        .await
        .unwrap()
        .jwt_authorities()
        .iter()
        .any(|a| a.kid() == next.kid));
    assert!(matches!(
        jwt(ca.activate_key(KeyKind::Jwt).await),
        Err(CaError::Authority(AuthorityError::Refused(_)))
    ));
    clock.advance(Duration::from_secs(10));
    jwt(ca.activate_key(KeyKind::Jwt).await).unwrap();
    assert_eq!(ca.jwt_signer().kid, next.kid);
    // Taint the old key: agents learn its kid with the bundle.
    ca.taint_key(&first).await.unwrap();
    let published = ca.subscribe_bundle().borrow().clone();
    assert_eq!(published.tainted_jwt, vec![first.clone()]);
    // Revocation waits for the old tokens unless forced; then they fail.
    let bundle = ca.bundle().await.unwrap();
    validate_jwt_svid(&old_token, &bundle, "api", clock.now()).unwrap();
    assert!(refused(ca.revoke_key(&first, false).await).contains("--force"));
    ca.revoke_key(&first, true).await.unwrap();
    let bundle = ca.bundle().await.unwrap();
    assert!(bundle.jwt_authorities().iter().all(|a| a.kid() != first));
    assert!(validate_jwt_svid(&old_token, &bundle, "api", clock.now()).is_err());
    // Rotation does not bring it back, and new tokens validate.
    ca.rotate_keys(KeyKind::Jwt).await.unwrap();
    let bundle = ca.bundle().await.unwrap();
    assert!(bundle.jwt_authorities().iter().all(|a| a.kid() != first));
    let fresh = ca.mint_jwt_svid(&id, &aud, 0).unwrap().token;
    validate_jwt_svid(&fresh, &bundle, "api", clock.now()).unwrap();
}

/// `signet ca prepare` run many times at once, on two replicas sharing the
/// database: each replica ends with exactly one prepared key of each kind
/// (the rest are refused with a message naming the fix), one active key,
/// and no private key file without its record.
async fn concurrent_prepares_make_one_prepared_key_per_replica(db: TestDb) {
    let mut second = config(&db, "example.org");
    second.data_dir = db.dir.path().join("ca-2");
    let replicas = [
        Arc::new(Ca::open(config(&db, "example.org")).await.unwrap()),
        Arc::new(Ca::open(second).await.unwrap()),
    ];
    let mut calls = tokio::task::JoinSet::new();
    for ca in &replicas {
        for i in 0..6 {
            let ca = ca.clone();
            calls.spawn(async move {
                let r = if i % 2 == 0 {
                    x509(ca.prepare_key(KeyKind::X509).await).map(|_| ())
                } else {
                    jwt(ca.prepare_key(KeyKind::Jwt).await).map(|_| ())
                };
                (ca.replica().to_owned(), i % 2 == 0, r)
            });
        }
    }
    let mut made = std::collections::HashMap::new();
    while let Some(r) = calls.join_next().await {
        let (replica, x509, r) = r.unwrap();
        match r {
            Ok(()) => *made.entry((replica, x509)).or_insert(0) += 1,
            Err(e @ CaError::Authority(AuthorityError::Refused(_))) => {
                assert!(e.to_string().contains("signet ca activate"), "{e}");
            }
            Err(e) => panic!("not a refusal: {e:?}"),
        }
    }
    assert_eq!(made.len(), 4, "{made:?}");
    assert!(made.values().all(|&n| n == 1), "{made:?}");
    let now = signet_identity::x509_svid::unix_seconds(SystemTime::now());
    let x509 = replicas[0].store.ca_keys(now).await.unwrap();
    let jwt = replicas[0].store.jwt_keys(now).await.unwrap();
    for ca in &replicas {
        let mine = |s: KeyStatus| {
            x509.iter()
                .filter(|k| k.replica.as_deref() == Some(ca.replica()) && k.journal.status == s)
                .count()
        };
        assert_eq!((mine(KeyStatus::Prepared), mine(KeyStatus::Active)), (1, 1));
        let mine = |s: KeyStatus| {
            jwt.iter()
                .filter(|k| k.replica == ca.replica() && k.journal.status == s)
                .count()
        };
        assert_eq!((mine(KeyStatus::Prepared), mine(KeyStatus::Active)), (1, 1));
        // Every key file of this replica has its record.
        let files: Vec<String> = std::fs::read_dir(ca.config.keys_dir())
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let recorded = x509
            .iter()
            .map(|k| k.id.clone())
            .chain(jwt.iter().map(|k| k.kid.clone()))
            .collect::<Vec<_>>();
        for f in &files {
            assert!(
                recorded.iter().any(|id| f.contains(id.as_str())),
                "key file {f} has no record"
            );
        }
    }
}

/// The X.509 key an operation on keys returned.
fn x509(r: Result<AnyKey, CaError>) -> Result<crate::store::CaKeyRecord, CaError> {
    r.map(|k| match k {
        AnyKey::X509(k) => k,
        other => panic!("expected an X.509 key, got {other:?}"),
    })
}

/// The JWT key an operation on keys returned.
fn jwt(r: Result<AnyKey, CaError>) -> Result<crate::store::JwtKeyRecord, CaError> {
    r.map(|k| match k {
        AnyKey::Jwt(k) => k,
        other => panic!("expected a JWT key, got {other:?}"),
    })
}

/// The node API signs only for entries parented to the asking agent:
/// another agent's entry is refused (PERMISSION_DENIED, counted), and
/// nothing is signed.
async fn an_agent_gets_svids_only_for_its_own_entries(db: TestDb) {
    let ca = Ca::open(config(&db, "example.org")).await.unwrap();
    let mut agents = Vec::new();
    for node in ["n1", "n2"] {
        let token = ca.create_join_token(0, Some(node)).await.unwrap();
        let key = KeyPair::generate().unwrap();
        ca.attest_agent(&token.token, &csr_for(&key, None))
            .await
            .unwrap();
        let record = ca
            .list_agents()
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.spiffe_id == token.agent_id.as_str())
            .unwrap();
        agents.push(record);
    }
    let entry = ca.create_entry(&web_entry()).await.unwrap(); // parented to n1
    let own = ca
        .agent_entry(&agents[0], &entry.id, "X.509-SVID")
        .await
        .unwrap();
    assert_eq!(own.id, entry.id);
    let refused = ca
        .agent_entry(&agents[1], &entry.id, "X.509-SVID")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            CaError::AgentRefused(AgentRefused::ForeignEntry { entry_id, .. }) if *entry_id == entry.id
        ),
        "{refused:?}"
    );
    let status = crate::api::status::status(&refused);
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status
        .message()
        .contains("not parented to spiffe://example.org/signet/agent/n2"));
    assert!(ca
        .metrics()
        .encode()
        .contains("node_refusals_total{reason=\"foreign_entry\"} 1"));
}
