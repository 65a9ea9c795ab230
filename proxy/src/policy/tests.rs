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
    let policy = parse_file(Path::new("payments.toml"), text).unwrap();
    CompiledPolicy::for_destination(
        &policy,
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
    let policy = parse_file(Path::new("p.toml"), PAYMENTS).unwrap();
    let other =
        CompiledPolicy::for_destination(&policy, Some(&id("spiffe://example.org/ns/prod/sa/web")));
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
    .unwrap()
    .rules;
    assert_eq!(rules[0].methods, vec!["DELETE".to_owned()]);
}

const TO: &str = "spiffe://example.org/ns/prod/sa/payments";

fn ask_http(p: &CompiledPolicy, from: &str, method: &str, path: &str) -> Decision {
    p.evaluate(&Request {
        from: &id(from),
        to: &id(TO),
        method: Some(method),
        path: Some(path),
    })
}

#[test]
fn audit_rules_are_reported_but_never_decide() {
    let p = compiled(
        r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout", "spiffe://example.org/ns/prod/sa/web"]

[[deny]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/web"]
mode = "audit"

[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/batch"]
mode = "audit"
"#,
    );
    // web: still allowed, but the audit deny would refuse it.
    let d = ask(&p, "spiffe://example.org/ns/prod/sa/web");
    assert!(d.allowed);
    assert_eq!(d.rule_name(), "payments.toml:2 (allow)");
    let audit = d.audit.expect("the audit deny differs");
    assert_eq!(audit.label(), "would_deny");
    assert_eq!(audit.rule_name(), "payments.toml:6 (audit deny)");
    // batch: still denied (default), but the audit allow would let it in.
    let d = ask(&p, "spiffe://example.org/ns/prod/sa/batch");
    assert!(!d.allowed);
    assert_eq!(d.audit.unwrap().label(), "would_allow");
    // checkout: audit rules agree with the enforced decision: no report.
    let d = ask(&p, "spiffe://example.org/ns/prod/sa/checkout");
    assert!(d.allowed && d.audit.is_none());
}

#[test]
fn a_whole_file_can_be_a_dry_run_and_a_rule_can_opt_back_in() {
    let p = compiled(
        r#"
mode = "audit"

[[deny]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/web"]

[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/web"]
mode = "enforce"
"#,
    );
    let d = ask(&p, "spiffe://example.org/ns/prod/sa/web");
    assert!(d.allowed);
    assert_eq!(d.audit.unwrap().label(), "would_deny");
    let e = parse_file(Path::new("bad.toml"), "mode = \"dry\"\n").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.reason.contains("\"audit\""), "{e}");
}

/// The rule a plain scan of every rule in file order would pick.
fn naive(policy: &Policy, req: &Request<'_>) -> (bool, Option<usize>) {
    let matching = |effect: Effect| {
        policy
            .rules
            .iter()
            .find(|r| r.effect == effect && r.mode == Mode::Enforce && r.matches(req))
            .map(|r| r.line)
    };
    match (matching(Effect::Deny), matching(Effect::Allow)) {
        (Some(d), _) => (false, Some(d)),
        (None, Some(a)) => (true, Some(a)),
        (None, None) => (false, None),
    }
}

#[test]
fn the_index_decides_exactly_as_a_scan_of_every_rule() {
    // Rules of every index bucket: exact callers, caller patterns with an
    // exact destination, patterns on both sides, mixed caller lists.
    let mut text = String::new();
    let callers = ["a", "b", "c", "ns/x", "ns/y"];
    let dests = ["payments", "ledger"];
    let mut n = 0;
    for (i, c) in callers.iter().enumerate() {
        for (j, d) in dests.iter().enumerate() {
            let effect = if (i + j) % 3 == 0 { "deny" } else { "allow" };
            let from = match (i + n) % 4 {
                0 => format!("\"spiffe://example.org/{c}\""),
                1 => "\"spiffe://example.org/ns/*\"".to_owned(),
                2 => format!("\"spiffe://example.org/{c}\", \"spiffe://example.org/ns/*\""),
                _ => "\"spiffe://example.org\"".to_owned(),
            };
            let to = if n % 5 == 4 {
                "spiffe://example.org/*".to_owned()
            } else {
                format!("spiffe://example.org/{d}")
            };
            let paths = if n % 3 == 1 {
                "paths = [\"/v1/*\"]\n"
            } else {
                ""
            };
            text.push_str(&format!(
                "[[{effect}]]\nto = \"{to}\"\nfrom = [{from}]\n{paths}\n"
            ));
            n += 1;
        }
    }
    let policy = parse_file(Path::new("p.toml"), &text).unwrap();
    let compiled = CompiledPolicy::for_destination(&policy, None);
    for c in callers.iter().chain(&["zzz", "ns/x/deeper"]) {
        for d in dests.iter().chain(&["other"]) {
            for path in [None, Some("/v1/a"), Some("/v2")] {
                let (from, to) = (
                    id(&format!("spiffe://example.org/{c}")),
                    id(&format!("spiffe://example.org/{d}")),
                );
                let req = Request {
                    from: &from,
                    to: &to,
                    method: path.map(|_| "GET"),
                    path,
                };
                let got = compiled.evaluate(&req);
                let want = naive(&policy, &req);
                assert_eq!(
                    (got.allowed, got.rule.as_ref().map(|r| r.line)),
                    want,
                    "{from} -> {to} {path:?}"
                );
            }
        }
    }
}

#[test]
fn may_allow_says_whether_a_peer_can_still_get_anything() {
    let p = compiled(
        r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout", "spiffe://example.org/ns/prod/sa/web"]

[[deny]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/web"]
paths = ["/admin*"]

[[deny]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
mode = "audit"
"#,
    );
    let to = id(TO);
    // A deny on some paths leaves the rest allowed.
    assert!(p.may_allow(&id("spiffe://example.org/ns/prod/sa/web"), &to));
    assert!(!ask_http(&p, "spiffe://example.org/ns/prod/sa/web", "GET", "/admin").allowed);
    // Audit rules do not revoke anything.
    assert!(p.may_allow(&id("spiffe://example.org/ns/prod/sa/checkout"), &to));
    assert!(!p.may_allow(&id("spiffe://example.org/ns/prod/sa/batch"), &to));
}

#[test]
fn test_cases_beside_the_rules_are_parsed_and_run() {
    let policy = parse_file(
        Path::new("payments.toml"),
        r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
paths = ["/v1/*"]

[[test]]
from = "spiffe://example.org/ns/prod/sa/checkout"
to = "spiffe://example.org/ns/prod/sa/payments"
method = "get"
path = "/v1/../v1/pay"
expect = "allow"

[[test]]
from = "spiffe://example.org/ns/prod/sa/checkout"
to = "spiffe://example.org/ns/prod/sa/payments"
path = "/admin"
expect = "allow"
"#,
    )
    .unwrap();
    assert_eq!(policy.tests.len(), 2);
    assert_eq!(policy.tests[0].method.as_deref(), Some("GET"));
    assert_eq!(policy.tests[0].path.as_deref(), Some("/v1/pay"));
    let outcomes = cases::run(&policy);
    assert!(outcomes[0].passed());
    assert!(!outcomes[1].passed(), "/admin is denied by default");
    assert_eq!(outcomes[1].case.line, 14);
    let e = parse_file(
        Path::new("t.toml"),
        "[[test]]\nfrom = \"spiffe://example.org/a\"\nto = \"spiffe://example.org/b\"\nexpect = \"maybe\"\n",
    )
    .unwrap_err();
    assert_eq!(e.line, 4);
}
