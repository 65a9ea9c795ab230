//! Issuance throughput: PKCS#10 CSR (DER) in → signed X.509-SVID chain out,
//! on one thread: CSR parse + signature check + key check + leaf build +
//! ECDSA P-256 sign + DER encode. Target: >= 5,000 SVIDs/s per core.
//! And JWT-SVIDs: claims + ES256 signature + encoding, as `MintJwtSvid`
//! does it (`Ca::mint_jwt_svid`). Target: >= 20,000 JWT-SVIDs/s per core.
//!
//! Run: `cargo bench -p signet-ca --bench issuance`
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair};
use signet_ca::registry::entry::EntryInput;
use signet_ca::{Ca, CaConfig};

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = rt
        .block_on(Ca::open(CaConfig {
            trust_domain: "example.org".into(),
            data_dir: dir.path().join("ca"),
            ..CaConfig::default()
        }))
        .unwrap();
    let entry = EntryInput {
        spiffe_id: "spiffe://example.org/ns/prod/sa/web".into(),
        parent_id: "spiffe://example.org/signet/agent/node-1".into(),
        selectors: vec!["unix:uid:1000".into()],
        dns_names: vec!["web.prod.svc".into()],
        ..Default::default()
    }
    .validate(
        &ca.trust_domain,
        ca.config().max_ttl(),
        std::time::Duration::from_secs(ca.config().max_jwt_svid_ttl),
    )
    .unwrap();
    // Distinct keys, as from a fleet of workloads; generating them is not measured.
    let csrs: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let key = KeyPair::generate().unwrap();
            CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .der()
                .to_vec()
        })
        .collect();

    // Warm up, then five timed rounds of ~1 s; report the median.
    for csr in &csrs {
        ca.sign_for_entry(csr, &entry).unwrap();
    }
    let mut next = 0;
    report(
        "issuance (P-256, CSR check + sign + encode, 1 thread)",
        "SVIDs",
        5000.0,
        || {
            let csr = &csrs[next % csrs.len()];
            next += 1;
            std::hint::black_box(
                ca.sign_for_entry(std::hint::black_box(csr), &entry)
                    .unwrap(),
            );
        },
    );

    let id = signet_identity::SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
    let audience = ["https://api.example.org".to_owned()];
    report(
        "JWT-SVID minting (ES256, claims + sign + encode, 1 thread)",
        "JWT-SVIDs",
        20000.0,
        || {
            std::hint::black_box(ca.mint_jwt_svid(&id, &audience, 0).unwrap());
        },
    );
}

/// Runs `one` in five timed rounds of ~1 s on this thread and prints the
/// median rate against `target` per second.
fn report(what: &str, unit: &str, target: f64, mut one: impl FnMut()) {
    let mut rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            for _ in 0..64 {
                one();
            }
            n += 64;
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    let median = rates[rates.len() / 2];
    println!(
        "{what}: median {median:.0} {unit}/s per core ({:.1} us each); rounds: {}",
        1e6 / median,
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "target: >= {target:.0} {unit}/s per core -> {}",
        if median >= target { "MET" } else { "NOT MET" }
    );
}
