//! CA key incidents end to end: `signet ca prepare`, `activate`, `taint`
//! and `revoke` through the CLI, with a real agent and a workload watching
//! its SVIDs being replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use signet_identity::{TrustBundle, TrustDomain};
use signet_proto::workload as wl;
use signet_test_support::*;

/// The key IDs (authority key identifiers) of the CA keys that signed the
/// workload's SVIDs.
fn signers(m: &wl::X509svidResponse) -> Vec<Vec<u8>> {
    m.svids
        .iter()
        .map(|s| signet_identity::x509_svid::authority_key_id(&s.x509_svid).expect("an AKI"))
        .collect()
}

fn bundle(ca: &CaProcess) -> TrustBundle {
    let td = TrustDomain::new("example.org").unwrap();
    TrustBundle::from_pem(td, &ca.run_ok(&["bundle", "show"])).unwrap()
}

/// `signet ca show --output json`: the state of key `id`.
fn state(ca: &CaProcess, id: &str) -> String {
    let keys: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["ca", "show", "--output", "json"])).unwrap();
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("no key {id}: {keys}"))["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tainted_keys_svids_are_replaced_at_the_workloads_and_revocation_waits_for_them() {
    let ca = CaProcess::start(&[]);
    let mut agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry("spiffe://example.org/a", "node-1", &[&uid], &[]);
    ca.entry("spiffe://example.org/b", "node-1", &[&uid], &[]);
    let (mut svids, _) = svid_stream(&agent, 2).await;
    let old_ski =
        signet_identity::x509_svid::subject_key_id(&bundle(&ca).authorities()[0]).unwrap();
    let old_id = ca.run_ok(&["ca", "show", "--output", "json"]);
    let old_id = serde_json::from_str::<serde_json::Value>(&old_id)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "x509")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(state(&ca, &old_id), "ACTIVE");

    // The active key can be neither tainted nor revoked; nothing is
    // prepared, so nothing can be activated.
    assert!(ca.run_err(&["ca", "taint", &old_id]).contains("active"));
    assert!(ca
        .run_err(&["ca", "revoke", &old_id, "--force"])
        .contains("active"));
    assert!(ca
        .run_err(&["ca", "activate"])
        .contains("signet ca prepare"));
    // Prepared: in the bundle before it signs; activation waits for the
    // grace period.
    let new_id = ca.run_ok(&["ca", "prepare"]).trim().to_owned();
    assert_eq!(state(&ca, &new_id), "PREPARED");
    assert_eq!(bundle(&ca).authorities().len(), 2);
    let e = ca.run_err(&["ca", "activate"]);
    assert!(
        e.contains("wait"),
        "activation before the grace period: {e}"
    );
    let activated = eventually(
        Duration::from_secs(15),
        "activation after the grace period",
        || {
            let out = run(&["ca", "activate"], &ca.admin_socket);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        },
    );
    assert_eq!(activated, new_id);
    assert_eq!(state(&ca, &new_id), "ACTIVE");
    assert_eq!(state(&ca, &old_id), "OLD");

    // Taint the old key: every SVID it signed is replaced at the workload.
    let tainted_at = Instant::now();
    ca.run_ok(&["ca", "taint", &old_id]);
    loop {
        let Ok(m) = tokio::time::timeout(Duration::from_secs(20), svids.message()).await else {
            agent.daemon.terminate();
            panic!(
                "the SVIDs of the tainted key were not replaced within 20 s; agent log:\n{}",
                agent.daemon.log.join("\n")
            );
        };
        let m = m.expect("the workload's stream goes on").unwrap();
        if m.svids.len() == 2 && signers(&m).iter().all(|k| *k != old_ski) {
            break;
        }
    }
    eprintln!(
        "every SVID of the tainted key replaced at the workload {:?} after `signet ca taint`",
        tainted_at.elapsed()
    );
    assert!(ca.run_ok(&["ca", "show"]).contains("OLD TAINTED"));

    // Revocation: refused while SVIDs it signed may live, unless forced.
    assert!(ca.run_err(&["ca", "revoke", &old_id]).contains("--force"));
    ca.run_ok(&["ca", "revoke", &old_id, "--force"]);
    assert_eq!(state(&ca, &old_id), "REVOKED");
    let after = bundle(&ca);
    assert_eq!(after.authorities().len(), 1);
    // The workload's SVIDs (all from the new key) verify against the
    // bundle without the revoked key, and the agent still works.
    let (_, m) = svid_stream(&agent, 2).await;
    for s in &m.svids {
        let chain = signet_identity::certificates_from_der_concat(&s.x509_svid).unwrap();
        signet_identity::verify_x509_svid(&chain, &after, SystemTime::now()).unwrap();
    }
}

/// `signet id jwt` through `agent`: the token, once the agent has an
/// identity for the caller.
fn fetch_jwt(agent: &AgentProcess, audience: &str) -> String {
    eventually(Duration::from_secs(20), "a JWT-SVID", || {
        let out = signet()
            .args(["id", "jwt", "--audience", audience, "--socket"])
            .arg(&agent.socket)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })
}

fn kid_of(token: &str) -> String {
    signet_identity::jwt_svid::decode_jwt(token).unwrap().header["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_tainted_jwt_keys_tokens_stop_being_handed_out_and_revocation_unpublishes_it() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/a",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let first = fetch_jwt(&agent, "svc");
    let old_kid = kid_of(&first);
    assert_eq!(fetch_jwt(&agent, "svc"), first, "served from the cache");
    let new_kid = ca
        .run_ok(&["ca", "prepare", "--kind", "jwt"])
        .trim()
        .to_owned();
    assert_eq!(state(&ca, &new_kid), "PREPARED");
    eventually(
        Duration::from_secs(15),
        "JWT key activation after the grace period",
        || {
            run(&["ca", "activate", "--kind", "jwt"], &ca.admin_socket)
                .status
                .success()
                .then_some(())
        },
    );
    assert_eq!(state(&ca, &old_kid), "OLD");
    // Still trusted and untainted: the cached token is still handed out.
    assert_eq!(fetch_jwt(&agent, "svc"), first);
    ca.run_ok(&["ca", "taint", &old_kid]);
    let replaced = eventually(Duration::from_secs(10), "a token from the new key", || {
        let t = fetch_jwt(&agent, "svc");
        (t != first).then_some(t)
    });
    assert_eq!(kid_of(&replaced), new_kid);
    assert!(ca.run_err(&["ca", "revoke", &old_kid]).contains("--force"));
    ca.run_ok(&["ca", "revoke", &old_kid, "--force"]);
    let jwks = ca.run_ok(&["bundle", "show", "--format", "jwks"]);
    assert!(
        !jwks.contains(&old_kid) && jwks.contains(&new_kid),
        "{jwks}"
    );
}

/// Operators (or scripts) running `signet ca prepare` at the same moment:
/// one key is prepared, every other call gets a one-line refusal that
/// names the fix, for X.509 and JWT keys alike.
#[test]
fn parallel_prepares_through_the_cli_prepare_one_key() {
    let ca = CaProcess::start(&[]);
    for kind in ["x509", "jwt"] {
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let mut cmd = signet();
                cmd.args(["ca", "prepare", "--kind", kind])
                    .env("SIGNET_ADMIN_SOCKET", &ca.admin_socket)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                cmd.spawn().unwrap()
            })
            .collect();
        let outputs: Vec<_> = calls
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let ok = outputs.iter().filter(|o| o.status.success()).count();
        assert_eq!(ok, 1, "{kind}: {outputs:?}");
        for o in outputs.iter().filter(|o| !o.status.success()) {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(err.contains("signet ca activate"), "{err}");
        }
        let keys: serde_json::Value =
            serde_json::from_str(&ca.run_ok(&["ca", "show", "--output", "json"])).unwrap();
        let prepared = keys
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kind"] == kind && k["state"] == "PREPARED")
            .count();
        assert_eq!(prepared, 1, "{kind}: {keys}");
    }
}
