//! The fault test: a CA that never goes down. Real processes on loopback:
//! two CA replicas on a PostgreSQL server of the test's own, keys on
//! shortened lifetimes (a key every two minutes), two agents that know both
//! replicas, and a proxy pair carrying a steady request loop. During the
//! run keys rotate (prepared, activated, old ones leave the bundle), one
//! replica is killed with SIGKILL and restarted, PostgreSQL is killed and
//! restarted, and entries are created through alternating replicas.
//! Printed: requests sent and failed, failed handshakes, entries
//! acknowledged vs present and delivered, key transitions seen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signet_test_support::postgres::TestPostgres;
use signet_test_support::*;

/// How long the request loop runs: past a whole key lifetime (120 s).
const RUN: Duration = Duration::from_secs(130);

fn agent_metric(port: u16, name: &str) -> Option<i64> {
    let (_, body) = http_get(port, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Every key's state as `signet ca show` prints it, by ID.
fn key_states(ca: &CaProcess) -> Option<BTreeMap<String, String>> {
    let out = run(&["ca", "show", "--output", "json"], &ca.admin_socket);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter(|k| k["kind"] == "x509")
            .map(|k| {
                (
                    k["id"].as_str().unwrap_or("").to_owned(),
                    k["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
    )
}

#[test]
fn requests_survive_key_rotation_a_killed_replica_and_a_database_restart() {
    let _alone = crate::alone();
    let Some(pg) = TestPostgres::own() else {
        return;
    };
    let url = pg.fresh_database();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("ca.toml");
    // A key every two minutes: prepared with 60 s left, active with 20 s
    // left; SVIDs of 20 s, renewed every ~10 s.
    std::fs::write(
        &cfg,
        "ca_ttl = 120\nmax_x509_svid_ttl = 20\ndefault_x509_svid_ttl = 20\n",
    )
    .unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "--database-url", &url];
    let a = CaProcess::start(&args);
    let mut b = CaProcess::start(&args);
    eventually(
        Duration::from_secs(10),
        "both replicas' keys in the bundle",
        || {
            (a.run_ok(&["bundle", "show"])
                .matches("BEGIN CERTIFICATE")
                .count()
                >= 2)
                .then_some(())
        },
    );
    let b_addr = b.node_addr();
    let mut mesh = Mesh::start_on(
        a,
        &["--ca", &b_addr],
        "[[allow]]\nto = \"spiffe://example.org/ns/prod/sa/payments\"\nfrom = [\"spiffe://example.org/ns/prod/sa/checkout\"]\n",
        PAYMENTS,
        "20s",
        "tcp",
        "",
    );
    assert_eq!(mesh.round_trip(b"hello"), b"hello");

    // The request loop: 50 requests/s, each on a new connection.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let port = mesh.client_port;
    let looper = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                next += Duration::from_millis(20);
                let ok = round_trip_on(port, b"ping") == b"ping";
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };

    // Key states seen, polled every second from the replica up at the time.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut acknowledged = 0usize;
    let start = Instant::now();
    let mut killed_replica = false;
    let mut restarted_db = false;
    let mut n = 0;
    while start.elapsed() < RUN {
        std::thread::sleep(Duration::from_secs(1));
        n += 1;
        // Entries for node-b's agent, through alternating replicas.
        let through = if n % 2 == 0 { &mesh.ca } else { &b };
        let out = run(
            &[
                "entry",
                "create",
                "--spiffe-id",
                &format!("spiffe://example.org/fault/{n}"),
                "--parent-id",
                "spiffe://example.org/signet/agent/node-b",
                "--selector",
                "unix:uid:4000777",
            ],
            &through.admin_socket,
        );
        if out.status.success() {
            acknowledged += 1;
        }
        for ca in [&mesh.ca, &b] {
            if let Some(states) = key_states(ca) {
                for (id, state) in states {
                    seen.entry(id).or_default().insert(state);
                }
            }
        }
        if !killed_replica && start.elapsed() > Duration::from_secs(20) {
            killed_replica = true;
            eprintln!(
                "[{:?}] SIGKILL replica B, restart it 2 s later",
                start.elapsed()
            );
            b.kill_and_restart(&args, Duration::from_secs(2));
        }
        if !restarted_db && start.elapsed() > Duration::from_secs(70) {
            restarted_db = true;
            eprintln!(
                "[{:?}] PostgreSQL killed, started again 3 s later",
                start.elapsed()
            );
            pg.kill();
            std::thread::sleep(Duration::from_secs(3));
            pg.start_again();
        }
    }
    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap();

    // Every acknowledged entry is in the database and reached the agent.
    let deadline = Instant::now() + Duration::from_secs(20);
    let present = loop {
        let out = run(
            &["entry", "list", "--output", "json"],
            &mesh.ca.admin_socket,
        );
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    e["spiffe_id"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("spiffe://example.org/fault/")
                })
                .count();
        }
        if Instant::now() > deadline {
            mesh.ca.daemon.terminate();
            let log = &mesh.ca.daemon.log;
            panic!(
                "replica A cannot list entries: {}\nits log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                log[log.len().saturating_sub(30)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let agent_port = mesh.agent_b.metrics_port();
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let held = agent_metric(agent_port, "signet_agent_entries");
        // node-b's entries: the fault ones and payments.
        if held == Some(present as i64 + 1) {
            break present;
        }
        if Instant::now() > deadline {
            mesh.agent_b.daemon.terminate();
            mesh.ca.daemon.terminate();
            b.daemon.terminate();
            let tail = |log: &Vec<String>| log[log.len().saturating_sub(25)..].join("\n");
            panic!(
                "agent node-b holds {held:?} entries, {} present\nagent log:\n{}\nreplica A log:\n{}\nreplica B log:\n{}",
                present + 1,
                tail(&mesh.agent_b.daemon.log),
                tail(&mesh.ca.daemon.log),
                tail(&b.daemon.log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let failure_lines: Vec<String> = mesh
        .server_metrics()
        .lines()
        .filter(|l| l.starts_with("signet_proxy_handshake_failures_total{"))
        .map(str::to_owned)
        .collect();
    let handshake_failures = failure_lines
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    let transitions: Vec<String> = seen
        .iter()
        .map(|(id, states)| {
            format!(
                "{}: {}",
                &id[..8],
                states.iter().cloned().collect::<Vec<_>>().join("/")
            )
        })
        .collect();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "fault run over {RUN:?}: {sent} requests, {failed} failed, {handshake_failures} failed handshakes; entries acknowledged {acknowledged}, present {present}, at the agent {delivered}; keys: {}",
        transitions.join(", ")
    );
    assert_eq!(failed, 0, "requests failed during the faults");
    if handshake_failures > 0 {
        mesh.server.terminate();
        mesh.agent_a.daemon.terminate();
        let grep = |log: &Vec<String>, what: &[&str]| {
            log.iter()
                .filter(|l| what.iter().any(|w| l.contains(w)))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "{failure_lines:?}\ninbound proxy:\n{}\nagent node-a:\n{}",
            grep(&mesh.server.log, &["handshake", "expired", "WARN", "ERROR"]),
            grep(
                &mesh.agent_a.daemon.log,
                &["WARN", "ERROR", "connected", "renewed"]
            )
        );
    }
    assert_eq!(present, acknowledged, "an acknowledged entry was lost");
    assert_eq!(delivered, present);
    // Rotation happened: some key was prepared, then active; some active
    // key went old.
    assert!(
        seen.values()
            .any(|s| s.contains("PREPARED") && s.contains("ACTIVE")),
        "{transitions:?}"
    );
    assert!(
        seen.values()
            .any(|s| s.contains("ACTIVE") && s.contains("OLD")),
        "{transitions:?}"
    );
    // Keys past their lifetime are gone: `signet ca show` lists unexpired
    // keys, and the bundle holds no more certificates than that.
    let listed = key_states(&mesh.ca).unwrap();
    assert!(
        seen.keys().any(|id| !listed.contains_key(id)),
        "no key expired out of the bundle: {transitions:?}"
    );
    let in_bundle = mesh
        .ca
        .run_ok(&["bundle", "show"])
        .matches("BEGIN CERTIFICATE")
        .count();
    assert!(
        in_bundle <= listed.len(),
        "{in_bundle} certificates for {listed:?}"
    );
}

/// One request through the proxy pair on `port`: send, half-close, read to
/// EOF.
fn round_trip_on(port: u16, data: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(data).is_err() || s.shutdown(std::net::Shutdown::Write).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}
