//! End-to-end tests of `signet ca serve` and the admin CLI, with the real
//! binary as separate processes.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use signet_test_support::*;

const AGENT: &str = "spiffe://example.org/signet/agent/node-1";

fn create_web_entry(ca: &CaProcess) -> String {
    ca.run_ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        AGENT,
        "--selector",
        "unix:uid:1000",
        "--x509-ttl",
        "30m",
        "--dns-name",
        "web.local",
    ])
}

#[test]
fn token_and_entry_create_print_only_the_value_on_stdout() {
    let ca = CaProcess::start(&[]);
    let token = ca.run_ok(&["token", "create", "--ttl", "5m", "--node-name", "node-1"]);
    let token = token.strip_suffix('\n').unwrap();
    assert_eq!(token.len(), 64, "{token:?}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let id = create_web_entry(&ca);
    let id = id.strip_suffix('\n').unwrap();
    assert!(!id.contains(char::is_whitespace));
    let shown: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["entry", "show", id, "--output", "json"])).unwrap();
    assert_eq!(shown["spiffe_id"], "spiffe://example.org/web");
    assert_eq!(shown["x509_svid_ttl"], 1800);
    assert_eq!(shown["selectors"][0], "unix:uid:1000");
}

#[test]
fn entry_lifecycle_through_the_cli() {
    let ca = CaProcess::start(&[]);
    let id = create_web_entry(&ca).trim().to_owned();
    let list: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["entry", "list", "--output", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let created_revision = list[0]["revision"].as_i64().unwrap();
    let table = ca.run_ok(&["entry", "list"]);
    assert!(table.starts_with("ENTRY ID"), "{table}");
    assert!(table.contains("spiffe://example.org/web"));
    ca.run_ok(&[
        "entry",
        "update",
        &id,
        "--x509-ttl",
        "2h",
        "--selector",
        "unix:uid:1001",
    ]);
    let shown: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["entry", "show", &id, "--output", "json"])).unwrap();
    assert_eq!(shown["x509_svid_ttl"], 7200);
    assert_eq!(shown["selectors"][0], "unix:uid:1001");
    assert_eq!(
        shown["dns_names"][0], "web.local",
        "update keeps fields not given"
    );
    // The fleet-wide revision of the update: past the creation's.
    assert!(
        shown["revision"].as_i64().unwrap() > created_revision,
        "{shown}"
    );
    let filtered = ca.run_ok(&[
        "entry",
        "list",
        "--parent-id",
        "spiffe://example.org/signet/agent/other",
        "--output",
        "json",
    ]);
    assert_eq!(filtered.trim(), "[]");
    ca.run_ok(&["entry", "delete", &id]);
    assert!(ca.run_err(&["entry", "show", &id]).contains("not found"));
}

#[test]
fn bad_admin_input_gets_one_line_that_says_what_to_fix_and_stores_nothing() {
    let ca = CaProcess::start(&[]);
    create_web_entry(&ca);
    let dup = ca.run_err(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        AGENT,
        "--selector",
        "unix:uid:1000",
    ]);
    assert!(dup.contains("already exists"), "{dup}");
    let e = ca.run_err(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/Web Server",
        "--parent-id",
        AGENT,
        "--selector",
        "unix:uid:1",
    ]);
    assert!(e.contains("--spiffe-id"), "{e}");
    let e = ca.run_err(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/a",
        "--parent-id",
        AGENT,
        "--selector",
        "docker:label:x",
    ]);
    assert!(e.contains("unknown selector type"), "{e}");
    let e = ca.run_err(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/a",
        "--parent-id",
        AGENT,
        "--selector",
        "unix:uid:1",
        "--x509-ttl",
        "30d",
    ]);
    assert!(e.contains("exceeds the CA's maximum"), "{e}");
    let e = ca.run_err(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/signet/agent/x",
        "--parent-id",
        AGENT,
        "--selector",
        "unix:uid:1",
    ]);
    assert!(e.contains("reserved for Signet"), "{e}");
    let e = ca.run_err(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://other.org/a",
        "--parent-id",
        AGENT,
        "--selector",
        "unix:uid:1",
    ]);
    assert!(e.contains("trust domain"), "{e}");
    let list: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["entry", "list", "--output", "json"])).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "refused entries were not stored"
    );
    let e = run_err(&["entry", "list"], &ca.dir.path().join("nope.sock"));
    assert!(e.contains("is `signet ca serve` running?"), "{e}");
    let e = ca.run_err(&["agent", "ban", AGENT]);
    assert!(e.contains("not found"), "{e}");
    assert_eq!(
        ca.run_ok(&["agent", "list", "--output", "json"]).trim(),
        "[]"
    );
}

#[test]
fn restart_keeps_entries_ca_key_and_bundle() {
    let ca = CaProcess::start(&[]);
    let id = create_web_entry(&ca).trim().to_owned();
    let bundle = ca.run_ok(&["bundle", "show"]);
    let socket = ca.admin_socket.clone();
    let dir = ca.stop();
    assert!(!socket.exists(), "admin socket removed on shutdown");
    let ca = CaProcess::start_in(dir, &[]);
    assert_eq!(ca.run_ok(&["bundle", "show"]), bundle);
    let shown: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["entry", "show", &id, "--output", "json"])).unwrap();
    assert_eq!(shown["spiffe_id"], "spiffe://example.org/web");
}

#[test]
fn bundle_is_published_as_pem_and_spiffe_jwks() {
    let ca = CaProcess::start(&[]);
    let pem = ca.run_ok(&["bundle", "show", "--format", "pem"]);
    let path = ca.dir.path().join("bundle.pem");
    std::fs::write(&path, &pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("URI:spiffe://example.org"), "{text}");
    assert!(text.contains("CA:TRUE"));
    let jwks: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["bundle", "show", "--format", "jwks"])).unwrap();
    assert_eq!(jwks["keys"][0]["use"], "x509-svid");
    // The JWT authority beside it, named by its kid.
    assert_eq!(jwks["keys"][1]["use"], "jwt-svid");
    assert_eq!(jwks["keys"][1]["kty"], "EC");
    assert!(jwks["keys"][1]["kid"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    // One bump for the X.509 root, one for the first JWT key.
    assert_eq!(jwks["spiffe_sequence"], 2);
    assert_eq!(jwks["spiffe_refresh_hint"], 300);
    // The bundle root is a valid SVID signing certificate.
    let inspect = run_ok(
        &["x509", "inspect", path.to_str().unwrap()],
        &ca.admin_socket,
    );
    assert!(inspect.contains("rules:     ok"), "{inspect}");
}

#[test]
fn health_and_metrics_endpoints_answer() {
    let ca = CaProcess::start(&[]);
    assert_eq!(ca.http_get("/live").0, 200);
    assert_eq!(ca.http_get("/ready"), (200, "ready\n".to_string()));
    ca.run_ok(&["token", "create"]);
    let (code, body) = ca.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("signet_ca_join_tokens_created_total 1"),
        "{body}"
    );
    assert!(
        body.contains("signet_ca_admin_calls_total{method=\"CreateJoinToken\",code=\"Ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("signet_ca_signing_cert_expiry_timestamp_seconds"),
        "{body}"
    );
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ca.toml");
    std::fs::write(
        &cfg,
        "trust_domain = \"from-file.org\"\ndefault_x509_svid_ttl = 600\n",
    )
    .unwrap();
    let socket = dir.path().join("a.sock");
    let mut cmd = signet();
    cmd.args(["ca", "serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .arg("--admin-socket")
        .arg(&socket)
        .args(["--metrics-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"]);
    let mut d = Daemon::spawn(cmd);
    let ready = d.wait_for("signet CA ready", Duration::from_secs(30));
    assert!(ready.contains("from-file.org"), "{ready}");
    drop(d);
    let mut cmd = signet();
    cmd.args(["ca", "serve", "--config"])
        .arg(&cfg)
        .args(["--trust-domain", "from-flag.org", "--data-dir"])
        .arg(dir.path().join("d2"))
        .arg("--admin-socket")
        .arg(&socket)
        .args(["--metrics-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"]);
    let mut d = Daemon::spawn(cmd);
    let ready = d.wait_for("signet CA ready", Duration::from_secs(30));
    assert!(ready.contains("from-flag.org"), "{ready}");
    drop(d);
    std::fs::write(&cfg, "trust_domian = \"typo.org\"\n").unwrap();
    let out = signet()
        .args(["ca", "serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trust_domian") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn admin_socket_is_owner_only_and_other_users_are_refused_even_if_its_mode_is_loosened() {
    use std::os::unix::fs::PermissionsExt;
    let ca = CaProcess::start(&[]);
    let mode = std::fs::metadata(&ca.admin_socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    if !is_root() {
        eprintln!("!!! SKIPPING the other-uid half of this test: it needs root to run a child as another user");
        return;
    }
    // Loosen the socket and its directories as a careless operator might.
    std::fs::set_permissions(&ca.admin_socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(ca.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = signet()
        .args(["entry", "list"])
        .env("SIGNET_ADMIN_SOCKET", &ca.admin_socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a non-owner uid must not use the admin API"
    );
    // The owner still can.
    ca.run_ok(&["entry", "list"]);
}

#[test]
fn a_missing_signing_key_file_stops_the_ca_instead_of_making_a_new_root() {
    let ca = CaProcess::start(&[]);
    let bundle = ca.run_ok(&["bundle", "show"]);
    let dir = ca.stop();
    let keys = dir.path().join("data/keys");
    let x509_key_files = || {
        std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect::<Vec<_>>()
    };
    let key_file = x509_key_files()[0].clone();
    let aside = dir.path().join("moved-away.pem");
    std::fs::rename(&key_file, &aside).unwrap();

    // Refused, with one error that says how to recover; nothing new made.
    let mut cmd = signet();
    cmd.args(["ca", "serve", "--trust-domain", "example.org", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .args(["--metrics-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"]);
    let mut daemon = Daemon::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the CA started without its key");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let err = daemon.wait_for("no key file at", Duration::from_secs(5));
    assert!(err.contains("no key file at"), "{err}");
    assert!(err.contains("restore the file"), "{err}");
    assert!(err.contains("--replace-lost-key"), "{err}");
    assert_eq!(x509_key_files().len(), 0, "no new key was made");

    // Restored: the same CA, the same bundle.
    std::fs::rename(&aside, &key_file).unwrap();
    let ca = CaProcess::start_in(dir, &[]);
    assert_eq!(ca.run_ok(&["bundle", "show"]), bundle);
    let dir = ca.stop();

    // Lost for good: the operator asks for a new key; the old root stays
    // in the bundle so SVIDs it signed keep verifying until they expire.
    std::fs::remove_file(&key_file).unwrap();
    let ca = CaProcess::start_in(dir, &["--replace-lost-key"]);
    let after = ca.run_ok(&["bundle", "show"]);
    assert!(after.contains(bundle.trim()), "old root kept");
    assert_eq!(after.matches("BEGIN CERTIFICATE").count(), 2, "{after}");
}

#[test]
fn ready_turns_false_when_the_entries_table_cannot_be_read() {
    let ca = CaProcess::start(&[]);
    create_web_entry(&ca);
    assert_eq!(ca.http_get("/ready").0, 200);
    let db = ca.dir.path().join("data/signet.db");
    let sql = |stmt: &str| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import sqlite3; c=sqlite3.connect({:?}); c.execute({stmt:?}); c.commit()",
                    db.display().to_string()
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sql("ALTER TABLE entries RENAME TO entries_damaged");
    eventually(
        Duration::from_secs(5),
        "/ready to report the damage",
        || (ca.http_get("/ready").0 == 503).then_some(()),
    );
    sql("ALTER TABLE entries_damaged RENAME TO entries");
    eventually(Duration::from_secs(5), "/ready to recover", || {
        (ca.http_get("/ready").0 == 200).then_some(())
    });
}

#[test]
fn every_admin_call_is_audited_with_who_what_and_result_but_no_secret() {
    let mut ca = CaProcess::start(&[]);
    create_web_entry(&ca);
    let token = ca.token("node-1");
    ca.run_err(&["agent", "ban", "spiffe://example.org/signet/agent/nope"]);
    assert!(ca.daemon.terminate());
    let audit: Vec<&String> = ca
        .daemon
        .log
        .iter()
        .filter(|l| l.contains("audit: admin call"))
        .collect();
    let uid = my_uid();
    let find = |method: &str| {
        audit
            .iter()
            .find(|l| l.contains(method))
            .unwrap_or_else(|| panic!("no audit line for {method}: {audit:#?}"))
    };
    let created = find("CreateEntry");
    assert!(created.contains(&format!("uid={uid}")), "{created}");
    assert!(created.contains("spiffe://example.org/web"), "{created}");
    assert!(created.contains("Ok"), "{created}");
    let token_line = find("CreateJoinToken");
    assert!(token_line.contains("node-1"), "{token_line}");
    let ban = find("BanAgent");
    assert!(
        ban.contains("NotFound") && ban.contains("agent/nope"),
        "{ban}"
    );
    let all = ca.daemon.log.join("\n");
    assert!(
        !all.contains(token.trim()),
        "the join token reached the log"
    );
}

#[test]
fn ca_show_lists_the_x509_and_jwt_signing_keys_with_their_states() {
    let ca = CaProcess::start(&[]);
    let keys: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["ca", "show", "--output", "json"])).unwrap();
    let keys = keys.as_array().unwrap();
    let replica = std::fs::read_to_string(ca.dir.path().join("data/replica_id")).unwrap();
    let find = |kind: &str| {
        let found: Vec<_> = keys.iter().filter(|k| k["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "{keys:?}");
        found[0].clone()
    };
    let x509 = find("x509");
    assert_eq!(x509["status"], "active");
    assert_eq!(x509["detail"], "self-signed root");
    assert_eq!(x509["in_use"], true);
    assert_eq!(x509["replica"], replica.trim());
    // Its ID names the key file, and the JWT key's kid is the one tokens carry.
    assert!(ca
        .dir
        .path()
        .join(format!("data/keys/{}.pem", x509["id"].as_str().unwrap()))
        .exists());
    let jwt = find("jwt");
    assert_eq!(jwt["status"], "active");
    assert_eq!(jwt["detail"], "ES256");
    assert_eq!(jwt["in_use"], true);
    let jwks: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["bundle", "show", "--format", "jwks"])).unwrap();
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == jwt["id"]));
    // The table names the columns.
    let table = ca.run_ok(&["ca", "show"]);
    assert!(table.starts_with("KIND"), "{table}");
    assert!(table.contains("x509") && table.contains("jwt") && table.contains("ES256"));
}

/// Nonsense an operator can type is refused in one line that names the
/// bound: a join token living for centuries (30 days is the most; both
/// sides of it), a device or an oversized file as a configuration, for
/// every daemon.
#[test]
fn absurd_lifetimes_and_configuration_files_are_refused_in_one_line() {
    let ca = CaProcess::start(&[]);
    let e = ca.run_err(&["token", "create", "--ttl", "99999999999d"]);
    assert!(e.contains("at most 30 days"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = ca.run_err(&["token", "create", "--ttl", "2592001"]);
    assert!(e.contains("at most 30 days"), "{e}");
    assert!(!ca
        .run_ok(&["token", "create", "--ttl", "30d"])
        .trim()
        .is_empty());
    // A 100 KB ID is refused as such (it used to come back as an error
    // message too large for the client to receive: 'h2 protocol error').
    let huge = "a".repeat(100_000);
    for cmd in [&["ca", "taint"][..], &["entry", "show"], &["agent", "ban"]] {
        let mut args = cmd.to_vec();
        args.push(&huge);
        let e = ca.run_err(&args);
        assert!(
            e.contains("at most 4096 bytes"),
            "{cmd:?}: {}",
            &e[..e.len().min(300)]
        );
        assert!(
            e.len() < 400,
            "{cmd:?}: the message does not echo the input"
        );
    }
    // At the bound, an ID is looked up (and not found).
    let at = "a".repeat(4096);
    assert!(ca.run_err(&["entry", "show", &at]).contains("not found"));
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 5 << 20]).unwrap();
    for daemon in [&["ca", "serve"][..], &["agent", "run"], &["proxy", "run"]] {
        for cfg in [std::path::Path::new("/dev/zero"), big.as_path()] {
            let out = signet()
                .args(daemon)
                .arg("--config")
                .arg(cfg)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{daemon:?} {cfg:?}");
            assert!(
                err.contains("not a regular file") || err.contains("larger than 4 MiB"),
                "{daemon:?} {cfg:?}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{daemon:?} {cfg:?}: {err}");
        }
    }
}
