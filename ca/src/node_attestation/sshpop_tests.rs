//! sshpop through the CA's door, with SSH certificates made by ssh-keygen.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use rcgen::KeyPair;
use signet_identity::node_attestation::{challenge_message, SSHPOP, SSHPOP_NAMESPACE};
use ssh_key::{HashAlg, LineEnding, PrivateKey};

use crate::config::{CaConfig, NodeAttestationConfig, SshPopConfig};
use crate::keys::issuance::tests::csr_for;
use crate::test_db::TestDb;
use crate::{AgentRefused, Attestation, Ca, CaError, Evidence, PendingProof};

fn keygen(dir: &Path, args: &[&str]) {
    signet_test_support::process::run_tool(dir, "ssh-keygen", "openssh-client", args);
}

/// A CA trusting a fresh SSH CA, and a host certificate it signed with
/// `sign` (the certificate text and the host key).
async fn setup(db: &TestDb, sign: &[&str]) -> (std::sync::Arc<Ca>, String, PrivateKey) {
    let d = db.dir.path();
    keygen(d, &["-q", "-t", "ed25519", "-N", "", "-f", "ssh_ca"]);
    keygen(d, &["-q", "-t", "ed25519", "-N", "", "-f", "host"]);
    let mut args = vec!["-q", "-s", "ssh_ca", "-I", "host"];
    args.extend_from_slice(sign);
    args.push("host.pub");
    keygen(d, &args);
    let ca_key = std::fs::read_to_string(d.join("ssh_ca.pub")).unwrap();
    let ca = Ca::open(CaConfig {
        trust_domain: "example.org".into(),
        data_dir: d.join("ca"),
        database_url: Some(db.url.clone()),
        node_attestation: NodeAttestationConfig {
            sshpop: Some(SshPopConfig {
                cert_authorities: vec![ca_key.trim().to_owned()],
                cert_authorities_file: None,
            }),
            ..Default::default()
        },
        ..CaConfig::default()
    })
    .await
    .unwrap();
    let cert = std::fs::read_to_string(d.join("host-cert.pub")).unwrap();
    let key = PrivateKey::read_openssh_file(d.join("host")).unwrap();
    (ca, cert, key)
}

async fn challenged(ca: &Ca, cert: &str, csr: &[u8]) -> PendingProof {
    match ca
        .begin_attestation(Evidence::SshPop(cert.to_owned()), csr)
        .await
        .unwrap()
    {
        Attestation::Challenge(p) => p,
        Attestation::Attested(_) => panic!("sshpop must be challenged"),
    }
}

fn answer(key: &PrivateKey, nonce: &[u8], csr: &[u8]) -> Vec<u8> {
    key.sign(
        SSHPOP_NAMESPACE,
        HashAlg::Sha512,
        &challenge_message(SSHPOP, nonce, csr),
    )
    .unwrap()
    .to_pem(LineEnding::LF)
    .unwrap()
    .into_bytes()
}

fn reason(r: Result<crate::AgentSvid, CaError>) -> &'static str {
    match r {
        Err(CaError::AgentRefused(refused)) => refused.reason(),
        Err(e) => panic!("{e:?}"),
        Ok(s) => panic!("attested {}", s.spiffe_id),
    }
}

#[tokio::test]
async fn an_ssh_host_certificate_proves_its_node_once_per_stream() {
    let db = TestDb::sqlite();
    // No -V: ssh-keygen's default, valid forever.
    let (ca, cert, key) = setup(&db, &["-h", "-n", "web-17.prod.example.com"]).await;
    let csr = csr_for(&KeyPair::generate().unwrap(), None);
    let pending = challenged(&ca, &cert, &csr).await;
    let recorded = answer(&key, pending.nonce(), &csr);
    let svid = ca.finish_attestation(pending, 0, &recorded).await.unwrap();
    let host_fp =
        crate::registry::join_token::hex(key.public_key().fingerprint(HashAlg::Sha256).as_bytes());
    assert_eq!(
        svid.spiffe_id.as_str(),
        format!("spiffe://example.org/signet/agent/sshpop/{host_fp}")
    );
    let agent = ca
        .agent_in_good_standing(svid.spiffe_id.as_str())
        .await
        .unwrap();
    assert_eq!(agent.attestation_type, "sshpop");
    assert!(agent
        .node_selectors
        .contains(&"sshpop:principal:web-17.prod.example.com".to_owned()));
    assert!(agent
        .node_selectors
        .iter()
        .any(|s| s.starts_with("sshpop:ca:fingerprint:")));

    // The answer recorded above, replayed on a new stream.
    let again = challenged(&ca, &cert, &csr).await;
    assert_eq!(
        reason(ca.finish_attestation(again, 0, &recorded).await),
        "sshpop_bad_signature"
    );
    // An answer for another CSR.
    let third = challenged(&ca, &cert, &csr).await;
    let other_csr = csr_for(&KeyPair::generate().unwrap(), None);
    let for_other = answer(&key, third.nonce(), &other_csr);
    assert_eq!(
        reason(ca.finish_attestation(third, 0, &for_other).await),
        "sshpop_bad_signature"
    );
    // A signature by another key.
    keygen(
        db.dir.path(),
        &["-q", "-t", "ed25519", "-N", "", "-f", "stranger"],
    );
    let stranger = PrivateKey::read_openssh_file(db.dir.path().join("stranger")).unwrap();
    let fourth = challenged(&ca, &cert, &csr).await;
    let forged = answer(&stranger, fourth.nonce(), &csr);
    assert_eq!(
        reason(ca.finish_attestation(fourth, 0, &forged).await),
        "sshpop_bad_signature"
    );
    // Garbage for a signature.
    let fifth = challenged(&ca, &cert, &csr).await;
    assert_eq!(
        reason(ca.finish_attestation(fifth, 0, b"junk").await),
        "sshpop_bad_signature"
    );
}

#[tokio::test]
async fn a_host_certificate_not_valid_yet_or_garbage_is_refused() {
    let db = TestDb::sqlite();
    let (ca, cert, _) = setup(&db, &["-h", "-n", "web", "-V", "+1d:+2d"]).await;
    let csr = csr_for(&KeyPair::generate().unwrap(), None);
    match ca.begin_attestation(Evidence::SshPop(cert), &csr).await {
        Err(CaError::AgentRefused(r)) => assert_eq!(r.reason(), "sshpop_not_yet_valid"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("accepted"),
    }
    for junk in [
        "",
        "ssh-ed25519-cert-v01@openssh.com AAAA",
        &"x".repeat(9000),
    ] {
        match ca
            .begin_attestation(Evidence::SshPop(junk.into()), &csr)
            .await
        {
            Err(CaError::AgentRefused(AgentRefused::BadEvidence { .. })) => {}
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("accepted"),
        }
    }
}
