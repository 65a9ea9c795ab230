#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

const PAYMENTS: &str = r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout", "spiffe://example.org/ns/ops/*"]

[[deny]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/ops/sandbox"]
"#;

fn compiled(text: &str) -> CompiledPolicy {
    let rules = parse_file(Path::new("payments.toml"), text).unwrap();
    CompiledPolicy::for_destination(
        &Policy { rules },
        Some(&id("spiffe://example.org/ns/prod/sa/payments")),
    )
}

fn ask(p: &CompiledPolicy, from: &str) -> Decision {
    p.evaluate(&Request {
        from: &id(from),
        to: &id("spiffe://example.org/ns/prod/sa/payments"),
        method: None,
        path: None,
    })
}

#[test]
fn allow_matches_exact_ids_and_prefixes() {
    let p = compiled(PAYMENTS);
    let d = ask(&p, "spiffe://example.org/ns/prod/sa/checkout");
    assert!(d.allowed);
    assert_eq!(d.rule_name(), "payments.toml:2 (allow)");
    assert!(ask(&p, "spiffe://example.org/ns/ops/oncall").allowed);
    assert!(ask(&p, "spiffe://example.org/ns/ops/team/a").allowed);
}

#[test]
fn deny_wins_over_allow() {
    let p = compiled(PAYMENTS);
    let d = ask(&p, "spiffe://example.org/ns/ops/sandbox");
    assert!(!d.allowed);
    assert_eq!(d.rule_name(), "payments.toml:6 (deny)");
}

#[test]
fn nothing_matched_means_deny() {
    let p = compiled(PAYMENTS);
    for from in [
        "spiffe://example.org/ns/prod/sa/web",
        "spiffe://example.org/ns/opsx/a",
        "spiffe://example.org/ns/ops",
        "spiffe://other.org/ns/prod/sa/checkout",
    ] {
        let d = ask(&p, from);
        assert!(!d.allowed, "{from}");
        assert!(d.rule.is_none(), "{from}");
    }
    assert!(
        !CompiledPolicy::default()
            .evaluate(&Request {
                from: &id("spiffe://example.org/a"),
                to: &id("spiffe://example.org/b"),
                method: None,
                path: None
            })
            .allowed
    );
}

#[test]
fn rules_for_other_destinations_do_not_apply() {
    let rules = parse_file(Path::new("p.toml"), PAYMENTS).unwrap();
    let other = CompiledPolicy::for_destination(
        &Policy { rules },
        Some(&id("spiffe://example.org/ns/prod/sa/web")),
    );
    assert!(other.is_empty());
}

#[test]
fn trust_domain_patterns_match_the_whole_domain_only() {
    let p = IdPattern::parse("spiffe://example.org").unwrap();
    assert!(p.matches(&id("spiffe://example.org/anything/at/all")));
    assert!(!p.matches(&id("spiffe://example.org.evil/x")));
    assert_eq!(IdPattern::parse("spiffe://example.org/*").unwrap(), p);
}

#[test]
fn http_conditions_match_methods_and_paths() {
    let p = compiled(
        r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
methods = ["get", "POST"]
paths = ["/v1/*", "/health"]
"#,
    );
    let ask = |m: &str, path: &str| {
        p.evaluate(&Request {
            from: &id("spiffe://example.org/ns/prod/sa/checkout"),
            to: &id("spiffe://example.org/ns/prod/sa/payments"),
            method: Some(m),
            path: Some(path),
        })
        .allowed
    };
    assert!(ask("GET", "/v1/pay"));
    assert!(ask("POST", "/health"));
    assert!(!ask("DELETE", "/v1/pay"));
    assert!(!ask("GET", "/v2/pay"));
    assert!(!ask("GET", "/healthz"));
    assert_eq!(p.http_only_rules().count(), 1);
}

#[test]
fn bad_files_are_refused_with_file_line_and_reason() {
    let cases = [
        ("[[allow]]\nto = \"spiffe://example.org/a\"\nfrom = [\"not-an-id\"]\n", 3, "`from`"),
        ("[[allow]]\nto = \"spiffe://Example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\n", 2, "`to`"),
        ("[[allow]]\nto = \"spiffe://example.org/a\"\nfrom = []\n", 3, "`from` is empty"),
        ("[[allow]]\nto = \"spiffe://example.org/a\"\n", 1, "missing field `from`"),
        ("[[allow]]\nto = \"spiffe://example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\nmethod = [\"GET\"]\n", 4, "unknown field"),
        ("[[allow]]\nto = \"spiffe://example.org/a/*/b\"\nfrom = [\"spiffe://example.org/b\"]\n", 2, "'*'"),
        ("[[allow]\nto = 1\n", 1, ""),
        ("[[allow]]\nto = \"spiffe://example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\npaths = [\"v1\"]\n", 4, "must start with '/'"),
        ("[[deny]]\nto = \"spiffe://example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\npaths = [\"//admin*\"]\n", 4, "write \"/admin*\""),
        ("[[deny]]\nto = \"spiffe://example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\npaths = [\"/%61dmin\"]\n", 4, "not in canonical form"),
        ("[[deny]]\nto = \"spiffe://example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\npaths = [\"/a/../admin\"]\n", 4, "not in canonical form"),
        ("[[deny]]\nto = \"spiffe://example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\npaths = [\"/a%2Fb\"]\n", 4, "escaped"),
        ("[[deny]]\nto = \"spiffe://example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\nmethods = [\"DE LETE\"]\n", 4, "not an HTTP method"),
    ];
    for (text, line, reason) in cases {
        let e = parse_file(Path::new("bad.toml"), text).unwrap_err();
        assert_eq!(e.line, line, "{text}: {e}");
        assert!(e.reason.contains(reason), "{text}: {e}");
        assert!(
            e.to_string().starts_with(&format!("bad.toml:{line}: ")),
            "{e}"
        );
    }
}

#[test]
fn a_directory_is_loaded_in_name_order_and_any_bad_file_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.toml"), PAYMENTS).unwrap();
    std::fs::write(dir.path().join("a.toml"), "").unwrap();
    std::fs::write(dir.path().join("README.md"), "not policy").unwrap();
    let p = load_dir(dir.path()).unwrap();
    assert_eq!(p.rules.len(), 2);
    std::fs::write(dir.path().join("c.toml"), "[[deny]]\nto = 3\n").unwrap();
    let e = load_dir(dir.path()).unwrap_err();
    assert!(e.file.ends_with("c.toml"), "{e}");
    assert!(load_dir(&dir.path().join("missing")).is_err());
}

#[test]
fn methods_in_files_are_upper_cased_so_requests_in_any_case_match() {
    let rules = parse_file(
        Path::new("m.toml"),
        "[[deny]]\nto = \"spiffe://example.org/a\"\nfrom = [\"spiffe://example.org/b\"]\nmethods = [\"delete\"]\n",
    )
    .unwrap();
    assert_eq!(rules[0].methods, vec!["DELETE".to_owned()]);
}
