//! Policy at scale: a 10,000-rule directory loaded, indexed and evaluated.
//! Before the index, loading 10,000 rules took 6.8 s (line numbers were
//! counted from the top of the file for every rule) and evaluation fell to
//! ~1,000 decisions/s through a proxy.
//!
//! Run: `cargo bench -p signet-proxy --bench policy`
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use signet_identity::SpiffeId;
use signet_proxy::policy::{load_dir, CompiledPolicy, Request};

const RULES: usize = 10_000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..RULES {
        // Mostly exact callers, some prefixes, a few HTTP conditions, and a
        // deny every 50 rules: the shape of a large real policy.
        let effect = if i % 50 == 0 { "deny" } else { "allow" };
        let from = if i % 10 == 0 {
            format!("spiffe://example.org/team{}/*", i % 97)
        } else {
            format!("spiffe://example.org/ns/prod/sa/caller{i}")
        };
        let http = if i % 7 == 0 {
            "methods = [\"GET\"]\npaths = [\"/v1/*\"]\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "[[{effect}]]\nto = \"spiffe://example.org/ns/prod/sa/svc{}\"\nfrom = [\"{from}\"]\n{http}\n",
            i % 20
        ));
    }
    std::fs::write(dir.path().join("big.toml"), &text).unwrap();

    let t = Instant::now();
    let policy = load_dir(dir.path()).unwrap();
    let load = t.elapsed();
    let t = Instant::now();
    let compiled = CompiledPolicy::for_destination(&policy, None);
    let index = t.elapsed();
    assert_eq!(compiled.len(), RULES);

    let to = SpiffeId::parse("spiffe://example.org/ns/prod/sa/svc3").unwrap();
    let callers: Vec<SpiffeId> = (0..1000)
        .map(|i| {
            SpiffeId::parse(&format!(
                "spiffe://example.org/ns/prod/sa/caller{}",
                i * 7 + 3
            ))
            .unwrap()
        })
        .collect();
    let n = 200_000;
    let mut allowed = 0;
    let t = Instant::now();
    for k in 0..n {
        let d = compiled.evaluate(&Request {
            from: &callers[k % callers.len()],
            to: &to,
            method: Some("GET"),
            path: Some("/v1/pay"),
        });
        allowed += d.allowed as usize;
    }
    let eval = t.elapsed();
    println!("policy: {RULES} rules, {} KiB of TOML", text.len() / 1024);
    println!(
        "  load (read + parse + check)   {:>8.1} ms",
        load.as_secs_f64() * 1e3
    );
    println!(
        "  index                          {:>8.1} ms",
        index.as_secs_f64() * 1e3
    );
    println!(
        "  evaluate                       {:>8.0} decisions/s ({:.2} µs each, {allowed} allowed of {n})",
        n as f64 / eval.as_secs_f64(),
        eval.as_secs_f64() * 1e6 / n as f64
    );
}
