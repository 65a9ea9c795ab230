//! Third-party X.509-SVID vectors (`../shared/conformance`, from go-spiffe
//! and rust-spiffe) through Signet's reader, rules and verifier, and
//! through `signet x509 inspect`. Each file gets Signet's verdict and
//! reason (printed with `--nocapture`), checked against what the other
//! implementations expect; the one place Signet is deliberately stricter
//! is marked. Validity dates are left out of the verdict, as the other
//! libraries' parsers leave them out (the vectors are years old).
//!
//! Skips loudly when the vectors are not there; `SIGNET_REQUIRE_CONFORMANCE=1`
//! (CI) turns that into a failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use signet_identity::x509_svid::{leaf_violations, signing_violations};
use signet_identity::{
    certificates_from_pem_or_der, verify_x509_svid, TrustBundle, TrustDomain, Violation,
};
use signet_test_support::*;

fn vectors() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("SIGNET_REQUIRE_CONFORMANCE").is_err(),
        "SIGNET_REQUIRE_CONFORMANCE is set but {} is missing",
        dir.display()
    );
    eprintln!("!!! SKIPPING: no conformance vectors at {}", dir.display());
    None
}

/// How a file is meant to be read.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Role {
    /// An X.509-SVID: leaf first, then intermediates.
    Svid,
    /// Trust bundle authorities.
    Bundle,
}

/// What Signet says of one file: `Ok(())` or the first reason it refuses.
fn verdict(path: &Path, role: Role) -> Result<(), String> {
    let bytes = std::fs::read(path).unwrap();
    let chain = certificates_from_pem_or_der(&bytes).map_err(|e| format!("unreadable: {e}"))?;
    if role == Role::Bundle {
        // A bundle is a set of trust anchors: readable, and each usable as
        // one (rust-spiffe's bundle vectors are plain certificates).
        return TrustBundle::new(TrustDomain::new("example.org").unwrap(), chain)
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let timeless = |v: &Violation| !matches!(v, Violation::Expired(_) | Violation::NotYetValid(_));
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {i}: {e}"))?;
        // Judged at the certificate's own notBefore: dates are not the
        // point of these vectors.
        let at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_before.timestamp().max(0) as u64 + 60);
        let broken = if role == Role::Svid && i == 0 {
            leaf_violations(&cert, at)
        } else {
            signing_violations(&cert, at)
        };
        if let Some(v) = broken.into_iter().find(timeless) {
            return Err(format!("certificate {i}: {v}"));
        }
    }
    Ok(())
}

#[test]
fn third_party_x509_svid_vectors_get_the_verdicts_their_projects_expect() {
    let Some(dir) = vectors() else { return };
    use Role::*;
    // (file, role, accepted?) — what go-spiffe / rust-spiffe expect.
    let expected: &[(&str, Role, bool)] = &[
        ("go-spiffe/good-leaf-only.pem", Svid, true),
        ("go-spiffe/good-leaf-and-intermediate.pem", Svid, true),
        ("go-spiffe/good-cert-and-key.pem", Svid, true),
        ("go-spiffe/good-key-and-cert.pem", Svid, true),
        ("go-spiffe/corrupt-cert.pem", Svid, false),
        ("go-spiffe/corrupt-key.pem", Svid, false),
        ("go-spiffe/key-pkcs8-ecdsa.pem", Svid, false),
        ("go-spiffe/key-pkcs8-rsa.pem", Svid, false),
        ("go-spiffe/not-pem", Svid, false),
        ("go-spiffe/wrong-intermediate-no-ca.pem", Svid, false),
        (
            "go-spiffe/wrong-intermediate-no-key-cert-sign.pem",
            Svid,
            false,
        ),
        ("go-spiffe/wrong-leaf-ca-true.pem", Svid, false),
        ("go-spiffe/wrong-leaf-cert-sign.pem", Svid, false),
        ("go-spiffe/wrong-leaf-crl-sign.pem", Svid, false),
        ("go-spiffe/wrong-leaf-empty-id.pem", Svid, false),
        ("go-spiffe/wrong-leaf-no-digital-signature.pem", Svid, false),
        ("rust-spiffe/svid_x509/1-svid-chain.der", Svid, true),
        ("rust-spiffe/svid_x509/svid-with-dns.der", Svid, true),
        ("rust-spiffe/svid_x509/expired-svid-chain.der", Svid, true),
        ("rust-spiffe/svid_x509/1-key.der", Svid, false),
        ("rust-spiffe/svid_x509/corrupted", Svid, false),
        (
            "rust-spiffe/svid_x509/wrong-intermediate-no-ca.der",
            Svid,
            false,
        ),
        (
            "rust-spiffe/svid_x509/wrong-intermediate-no-key-cert-sign.der",
            Svid,
            false,
        ),
        ("rust-spiffe/svid_x509/wrong-leaf-ca-true.der", Svid, false),
        (
            "rust-spiffe/svid_x509/wrong-leaf-cert-sign.der",
            Svid,
            false,
        ),
        ("rust-spiffe/svid_x509/wrong-leaf-crl-sign.der", Svid, false),
        ("rust-spiffe/svid_x509/wrong-leaf-empty-id.der", Svid, false),
        (
            "rust-spiffe/svid_x509/wrong-leaf-no-digital-signature.der",
            Svid,
            false,
        ),
        // Accepted by rust-spiffe; refused by Signet on purpose: its keyUsage
        // is not critical, which the X509-SVID standard requires.
        ("rust-spiffe/svid_x509/empty-subject-name.der", Svid, false),
        ("rust-spiffe/bundle_x509/bundle.der", Bundle, true),
        ("rust-spiffe/bundle_x509/cert1.der", Bundle, true),
        ("rust-spiffe/bundle_x509/cert2.der", Bundle, true),
        ("rust-spiffe/bundle_x509/corrupted", Bundle, false),
        ("rust-spiffe-rustls/spiffe_leaf.der", Svid, true),
        ("rust-spiffe-rustls/spiffe_leaf_uri_only.der", Svid, true),
        (
            "rust-spiffe-rustls/spiffe_leaf_no_digital_signature.der",
            Svid,
            false,
        ),
        (
            "rust-spiffe-rustls/spiffe_leaf_no_key_usage.der",
            Svid,
            false,
        ),
        ("rust-spiffe-rustls/no_spiffe_leaf.der", Svid, false),
        ("rust-spiffe-rustls/ca.der", Svid, false), // a CA presented as a leaf
        ("rust-spiffe-rustls/ca.der", Bundle, true),
        ("rust-spiffe-rustls/leaf.key.pkcs8", Svid, false),
    ];
    let mut wrong = Vec::new();
    for (file, role, accepted) in expected {
        let v = verdict(&dir.join(file), *role);
        println!(
            "{file:<62} {role:?}: {}",
            match &v {
                Ok(()) => "accepted".to_owned(),
                Err(e) => format!("refused: {e}"),
            }
        );
        if v.is_ok() != *accepted {
            wrong.push(format!(
                "{file} ({role:?}): expected accepted={accepted}, got {v:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Every vector file is covered by the table.
    let covered: Vec<&str> = expected.iter().map(|(f, _, _)| *f).collect();
    for entry in walk(&dir) {
        let rel = entry
            .strip_prefix(&dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let skip = rel.ends_with(".md")
            || rel.ends_with("-key.der")
            || rel.ends_with(".pkcs8")
            || rel.starts_with("rust-spiffe-rustls/ca_");
        assert!(
            skip || covered.contains(&rel.as_str()),
            "no expectation for {rel}"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn good_vectors_verify_against_their_own_authority_and_inspect_reads_chains_whole() {
    let Some(dir) = vectors() else { return };
    // rust-spiffe-rustls: the leaves under ca.der, verified (at their own
    // notBefore) by the same function every Signet component uses.
    let td = TrustDomain::new("example.org").unwrap();
    let read = |f: &str| {
        certificates_from_pem_or_der(
            &std::fs::read(dir.join("rust-spiffe-rustls").join(f)).unwrap(),
        )
        .unwrap()
    };
    let mut roots = read("ca.der");
    roots.extend(read("ca_uri_only.der")); // the issuer of spiffe_leaf_uri_only.der
    let bundle = TrustBundle::new(td, roots).unwrap();
    for (leaf, ok) in [
        ("spiffe_leaf.der", true),
        ("spiffe_leaf_uri_only.der", true),
        ("spiffe_leaf_no_digital_signature.der", false),
        ("spiffe_leaf_no_key_usage.der", false),
        ("no_spiffe_leaf.der", false),
    ] {
        let chain = certificates_from_pem_or_der(
            &std::fs::read(dir.join("rust-spiffe-rustls").join(leaf)).unwrap(),
        )
        .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_before.timestamp() as u64 + 60);
        let r = verify_x509_svid(&chain, &bundle, at);
        assert_eq!(r.is_ok(), ok, "{leaf}: {r:?}");
    }
    // `signet x509 inspect` reads a DER file whole: the two-certificate
    // chain is shown as a chain, and trailing bytes are an error.
    let chain_file = dir.join("rust-spiffe/svid_x509/1-svid-chain.der");
    let out = signet()
        .args(["x509", "inspect", "--output", "json"])
        .arg(&chain_file)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chain"].as_array().unwrap().len(), 2, "{v}");
    let tmp = tempfile::tempdir().unwrap();
    let padded = tmp.path().join("padded.der");
    let mut bytes = std::fs::read(&chain_file).unwrap();
    bytes.extend_from_slice(b"\x30\x03\x02\x01\x00trailing");
    std::fs::write(&padded, bytes).unwrap();
    let out = signet()
        .args(["x509", "inspect"])
        .arg(&padded)
        .output()
        .unwrap();
    assert!(!out.status.success(), "trailing bytes accepted");
    // --bundle takes DER too.
    let out = signet()
        .args(["x509", "inspect"])
        .arg(dir.join("rust-spiffe-rustls/no_spiffe_leaf.der"))
        .arg("--bundle")
        .arg(dir.join("rust-spiffe-rustls/ca.der"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("not a PEM file"), "{err}");
}
