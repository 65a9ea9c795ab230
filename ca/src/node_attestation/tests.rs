//! x509pop through the CA's door, with node PKIs made here (rcgen); the
//! end-to-end tests use certificates made with openssl.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CaConfig, X509PopConfig};
use crate::keys::issuance::tests::csr_for;
use crate::test_db::{on_both_backends, TestDb};
use crate::{AgentRefused, Attestation, Ca, CaError, Evidence};

on_both_backends!(
    a_node_proves_its_certificate_and_gets_a_stable_agent_id_with_selectors,
    what_does_not_prove_a_node_is_refused_with_its_reason,
    a_banned_x509pop_agent_stays_banned_and_an_evicted_one_comes_back,
);

/// A node PKI: a root that the CA trusts for nodes.
struct NodePki {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl NodePki {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = p.self_signed(&key).unwrap().der().clone();
        Self {
            issuer: Issuer::new(p, key),
            der,
        }
    }

    fn pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.der.to_vec()))
    }

    /// A node certificate: CN, DNS and URI SANs, and `ekus`.
    fn leaf(
        &self,
        cn: &str,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        expired: bool,
    ) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![format!("{cn}.prod.example.com")]).unwrap();
        p.subject_alt_names
            .push(SanType::URI("urn:node:17".try_into().unwrap()));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = ekus;
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let der = p.signed_by(&key, &self.issuer).unwrap().der().clone();
        (der, key)
    }
}

async fn ca_trusting(db: &TestDb, pki: &NodePki, template: Option<&str>) -> Arc<Ca> {
    let bundle = db.dir.path().join("node-roots.pem");
    std::fs::write(&bundle, pki.pem()).unwrap();
    let config = CaConfig {
        trust_domain: "example.org".into(),
        data_dir: db.dir.path().join("ca"),
        database_url: Some(db.url.clone()),
        node_attestation: crate::config::NodeAttestationConfig {
            x509pop: Some(X509PopConfig {
                ca_bundle: bundle,
                agent_path_template: template.map(str::to_owned),
            }),
            ..Default::default()
        },
        ..CaConfig::default()
    };
    Ca::open(config).await.unwrap()
}

/// Signs the challenge message as the agent does.
fn answer(key: &KeyPair, nonce: &[u8], csr: &[u8]) -> (u32, Vec<u8>) {
    let signing = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        key.serialize_der().into(),
    ))
    .unwrap();
    let signer = signing
        .choose_scheme(signet_identity::node_attestation::X509POP_SCHEMES)
        .unwrap();
    let msg = signet_identity::node_attestation::challenge_message("x509pop", nonce, csr);
    (
        u16::from(signer.scheme()) as u32,
        signer.sign(&msg).unwrap(),
    )
}

/// Attests with `chain`, answering with `key`.
async fn attest(
    ca: &Ca,
    chain: &[&CertificateDer<'_>],
    key: &KeyPair,
) -> Result<crate::AgentSvid, CaError> {
    let agent_key = KeyPair::generate().unwrap();
    let csr = csr_for(&agent_key, None);
    let evidence = Evidence::X509Pop(chain.iter().map(|c| c.to_vec()).collect());
    match ca.begin_attestation(evidence, &csr).await? {
        Attestation::Attested(_) => panic!("x509pop must be challenged"),
        Attestation::Challenge(pending) => {
            let (scheme, sig) = answer(key, pending.nonce(), &csr);
            ca.finish_attestation(pending, scheme, &sig).await
        }
    }
}

fn sha1_hex(der: &[u8]) -> String {
    crate::registry::join_token::hex(
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref(),
    )
}

fn refusal(r: Result<crate::AgentSvid, CaError>) -> (&'static str, String, tonic::Code) {
    match r {
        Err(e @ CaError::AgentRefused(_)) => {
            let status = crate::api::status::status(&e);
            let CaError::AgentRefused(refused) = e else {
                unreachable!()
            };
            (refused.reason(), refused.to_string(), status.code())
        }
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(svid) => panic!("expected a refusal, got {}", svid.spiffe_id),
    }
}

async fn a_node_proves_its_certificate_and_gets_a_stable_agent_id_with_selectors(db: TestDb) {
    let pki = NodePki::new("Node Root");
    let ca = ca_trusting(&db, &pki, None).await;
    let (leaf, key) = pki.leaf("web-17", vec![ExtendedKeyUsagePurpose::ClientAuth], false);
    let svid = attest(&ca, &[&leaf], &key).await.unwrap();
    let expected = format!(
        "spiffe://example.org/signet/agent/x509pop/{}",
        sha1_hex(&leaf)
    );
    assert_eq!(svid.spiffe_id.as_str(), expected);
    let agents = ca.list_agents().await.unwrap();
    let agent = agents.iter().find(|a| a.spiffe_id == expected).unwrap();
    assert_eq!(agent.attestation_type, "x509pop");
    for s in [
        "x509pop:subject:cn:web-17".to_owned(),
        "x509pop:san:dns:web-17.prod.example.com".to_owned(),
        "x509pop:san:uri:urn:node:17".to_owned(),
        format!("x509pop:ca:fingerprint:{}", sha1_hex(&pki.der)),
    ] {
        assert!(
            agent.node_selectors.contains(&s),
            "{s} in {:?}",
            agent.node_selectors
        );
    }
    assert!(agent
        .node_selectors
        .iter()
        .any(|s| s.starts_with("x509pop:serialnumber:")));
    // Attesting again (SVID lost) gives the same ID, by itself.
    let again = attest(&ca, &[&leaf], &key).await.unwrap();
    assert_eq!(again.spiffe_id, svid.spiffe_id);
    // A renewal keeps the method and the selectors.
    let record = ca.agent_in_good_standing(&expected).await.unwrap();
    let renewed_key = KeyPair::generate().unwrap();
    ca.renew_agent(&record, &csr_for(&renewed_key, None))
        .await
        .unwrap();
    let after = ca.agent_in_good_standing(&expected).await.unwrap();
    assert_eq!(after.attestation_type, "x509pop");
    assert_eq!(after.node_selectors, agent.node_selectors);

    // A template shapes the path from the certificate's facts.
    let db2 = TestDb::sqlite();
    let shaped = ca_trusting(
        &db2,
        &pki,
        Some("{{ .PluginName }}/{{ .Subject.CommonName }}"),
    )
    .await;
    let svid = attest(&shaped, &[&leaf], &key).await.unwrap();
    assert_eq!(
        svid.spiffe_id.as_str(),
        "spiffe://example.org/signet/agent/x509pop/web-17"
    );
}

async fn what_does_not_prove_a_node_is_refused_with_its_reason(db: TestDb) {
    use tonic::Code;
    let pki = NodePki::new("Node Root");
    let ca = ca_trusting(&db, &pki, None).await;
    let client_auth = || vec![ExtendedKeyUsagePurpose::ClientAuth];

    // A certificate from another CA.
    let other = NodePki::new("Other Root");
    let (leaf, key) = other.leaf("web-17", client_auth(), false);
    let (reason, msg, code) = refusal(attest(&ca, &[&leaf], &key).await);
    assert_eq!(
        (reason, code),
        ("x509pop_untrusted", Code::PermissionDenied),
        "{msg}"
    );
    assert!(msg.contains("ca_bundle"), "{msg}");

    // An expired one.
    let (leaf, key) = pki.leaf("web-17", client_auth(), true);
    let (reason, msg, _) = refusal(attest(&ca, &[&leaf], &key).await);
    assert_eq!(reason, "x509pop_expired", "{msg}");

    // One whose EKU is for servers only.
    let (leaf, key) = pki.leaf("web-17", vec![ExtendedKeyUsagePurpose::ServerAuth], false);
    let (reason, msg, _) = refusal(attest(&ca, &[&leaf], &key).await);
    assert_eq!(reason, "x509pop_wrong_eku", "{msg}");

    // No EKU at all is accepted (client auth is required only if present).
    let (leaf, key) = pki.leaf("web-17", vec![], false);
    attest(&ca, &[&leaf], &key).await.unwrap();

    // A key that does not match the certificate.
    let (leaf, _) = pki.leaf("web-17", client_auth(), false);
    let stranger = KeyPair::generate().unwrap();
    let (reason, msg, _) = refusal(attest(&ca, &[&leaf], &stranger).await);
    assert_eq!(reason, "x509pop_bad_signature", "{msg}");

    // An answer recorded from an earlier stream (another nonce) does not
    // verify on a new one, even with the same CSR.
    let (leaf, key) = pki.leaf("web-17", client_auth(), false);
    let agent_key = KeyPair::generate().unwrap();
    let csr = csr_for(&agent_key, None);
    let first = match ca
        .begin_attestation(Evidence::X509Pop(vec![leaf.to_vec()]), &csr)
        .await
        .unwrap()
    {
        Attestation::Challenge(p) => p,
        Attestation::Attested(_) => unreachable!(),
    };
    let recorded = answer(&key, first.nonce(), &csr);
    let second = match ca
        .begin_attestation(Evidence::X509Pop(vec![leaf.to_vec()]), &csr)
        .await
        .unwrap()
    {
        Attestation::Challenge(p) => p,
        Attestation::Attested(_) => unreachable!(),
    };
    assert_ne!(
        first.nonce(),
        second.nonce(),
        "every stream gets a fresh nonce"
    );
    let (reason, _, _) = refusal(ca.finish_attestation(second, recorded.0, &recorded.1).await);
    assert_eq!(reason, "x509pop_bad_signature");
    // ...nor does an answer made for another CSR.
    let third = match ca
        .begin_attestation(Evidence::X509Pop(vec![leaf.to_vec()]), &csr)
        .await
        .unwrap()
    {
        Attestation::Challenge(p) => p,
        Attestation::Attested(_) => unreachable!(),
    };
    let other_csr = csr_for(&KeyPair::generate().unwrap(), None);
    let (scheme, sig) = answer(&key, third.nonce(), &other_csr);
    let (reason, _, _) = refusal(ca.finish_attestation(third, scheme, &sig).await);
    assert_eq!(reason, "x509pop_bad_signature");

    // An unaccepted signature scheme.
    let fourth = match ca
        .begin_attestation(Evidence::X509Pop(vec![leaf.to_vec()]), &csr)
        .await
        .unwrap()
    {
        Attestation::Challenge(p) => p,
        Attestation::Attested(_) => unreachable!(),
    };
    let (_, sig) = answer(&key, fourth.nonce(), &csr);
    let (reason, _, _) = refusal(ca.finish_attestation(fourth, 0x0201, &sig).await);
    assert_eq!(reason, "x509pop_bad_scheme");

    // Malformed evidence: nothing, garbage, too long a chain (at the cap,
    // 8 certificates, the chain is still judged).
    let agent_csr = csr_for(&KeyPair::generate().unwrap(), None);
    let mut at_cap = vec![leaf.to_vec()];
    at_cap.extend(std::iter::repeat_n(pki.der.to_vec(), 7));
    assert!(matches!(
        ca.begin_attestation(Evidence::X509Pop(at_cap), &agent_csr)
            .await
            .unwrap(),
        Attestation::Challenge(_)
    ));
    for chain in [vec![], vec![b"junk".to_vec()], vec![leaf.to_vec(); 9]] {
        match ca
            .begin_attestation(Evidence::X509Pop(chain), &agent_csr)
            .await
        {
            Err(e @ CaError::AgentRefused(AgentRefused::BadEvidence { .. })) => {
                assert_eq!(crate::api::status::status(&e).code(), Code::InvalidArgument)
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    // A method this CA is not configured for.
    let plain = Ca::open(CaConfig {
        trust_domain: "example.org".into(),
        data_dir: db.dir.path().join("ca-2"),
        database_url: Some(TestDb::sqlite().url),
        ..CaConfig::default()
    })
    .await
    .unwrap();
    match plain
        .begin_attestation(Evidence::X509Pop(vec![leaf.to_vec()]), &agent_csr)
        .await
    {
        Err(e @ CaError::AgentRefused(AgentRefused::MethodDisabled("x509pop"))) => {
            let s = crate::api::status::status(&e);
            assert_eq!(s.code(), Code::FailedPrecondition);
            assert!(
                s.message().contains("[node_attestation.x509pop]"),
                "{}",
                s.message()
            );
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("accepted"),
    }
    // Each refusal is counted by reason.
    let metrics = ca.metrics().encode();
    for reason in [
        "x509pop_untrusted",
        "x509pop_expired",
        "x509pop_wrong_eku",
        "x509pop_bad_signature",
        "bad_evidence",
    ] {
        assert!(
            metrics.contains(&format!("node_refusals_total{{reason=\"{reason}\"}}")),
            "{reason}"
        );
    }
}

async fn a_banned_x509pop_agent_stays_banned_and_an_evicted_one_comes_back(db: TestDb) {
    let pki = NodePki::new("Node Root");
    let ca = ca_trusting(&db, &pki, None).await;
    let (leaf, key) = pki.leaf("web-17", vec![ExtendedKeyUsagePurpose::ClientAuth], false);
    let svid = attest(&ca, &[&leaf], &key).await.unwrap();
    ca.evict_agent(svid.spiffe_id.as_str()).await.unwrap();
    let back = attest(&ca, &[&leaf], &key).await.unwrap();
    assert_eq!(
        back.spiffe_id, svid.spiffe_id,
        "evicted: may come back by proof"
    );
    ca.ban_agent(svid.spiffe_id.as_str()).await.unwrap();
    let (reason, msg, code) = refusal(attest(&ca, &[&leaf], &key).await);
    assert_eq!(
        (reason, code),
        ("banned", tonic::Code::PermissionDenied),
        "{msg}"
    );
}
