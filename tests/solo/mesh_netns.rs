//! The mesh across three hosts: network namespaces joined by a bridge play
//! host A (the CA, the caller's agent and proxy, the client), host B (two
//! instances) and host C (one instance, then two). Every instance is an app
//! behind its own Signet inbound proxy; the caller has two outbound
//! listeners that name only a SPIFFE ID: `payments` over HTTP, `ledger`
//! over TCP. A steady, bounded request loop (three workers per service)
//! runs through both while:
//!
//! 1. a new instance of each service starts on host C (time to first
//!    request printed);
//! 2. the app of one instance of each service is killed on host B, its
//!    proxy staying up, and later started again;
//! 3. host C is cut off (its veth set down) for 12 s.
//!
//! Printed: requests per instance, failures per phase, and for TCP the
//! connections the caller sent to each dead endpoint after it was ejected
//! (from the caller's own log). Asserted: 0 failed HTTP requests (all
//! idempotent); no TCP connection to an endpoint during its ejection.
//!
//! Needs root and `ip`; skips loudly otherwise, fails under
//! SIGNET_REQUIRE_NETNS=1 (CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signet_test_support::*;

const LEDGER: &str = "spiffe://example.org/ns/prod/sa/ledger";
const HOSTS: [(&str, &str); 3] = [
    ("sgm-a", "10.77.0.1"),
    ("sgm-b", "10.77.0.2"),
    ("sgm-c", "10.77.0.3"),
];
const SWITCH: &str = "sgm-sw";

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ip_ok(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three hosts and the switch; removed (with whatever runs in them)
/// when dropped.
struct Net;

impl Net {
    fn remove() {
        for ns in [SWITCH, HOSTS[0].0, HOSTS[1].0, HOSTS[2].0] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            ip(&["netns", "del", ns]);
        }
    }

    /// Creates them, or says why it cannot.
    fn create() -> Result<Net, String> {
        if !is_root() {
            return Err("needs root to create network namespaces".into());
        }
        if !ip(&["netns", "add", "sgm-probe"]) {
            return Err("cannot create network namespaces here (or `ip` is missing)".into());
        }
        ip(&["netns", "del", "sgm-probe"]);
        Self::remove();
        ip_ok(&["netns", "add", SWITCH]);
        ip_ok(&["-n", SWITCH, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", SWITCH, "link", "set", "br0", "up"]);
        for (i, (ns, addr)) in HOSTS.iter().enumerate() {
            let port = format!("sw{i}");
            ip_ok(&["netns", "add", ns]);
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            ip_ok(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                SWITCH,
            ]);
            ip_ok(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip_ok(&["-n", ns, "link", "set", "eth0", "up"]);
            ip_ok(&["-n", SWITCH, "link", "set", &port, "master", "br0"]);
            ip_ok(&["-n", SWITCH, "link", "set", &port, "up"]);
        }
        Ok(Net)
    }

    /// Cuts host `ns` off the network.
    fn cut(&self, ns: &str) {
        ip_ok(&["-n", ns, "link", "set", "eth0", "down"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it makes
/// live there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// `signet ARGS` inside namespace `ns`.
fn signet_in(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(signet_bin());
    c
}

/// `signet ARGS` inside namespace `ns` with group `gid` (a workload of
/// another group: its selectors differ).
fn signet_in_as(ns: &str, gid: u32) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "setpriv",
        "--regid",
        &gid.to_string(),
        "--clear-groups",
    ])
    .arg(signet_bin());
    c
}

/// Ledger's proxies run with this group, payments' with the test's own.
const LEDGER_GID: u32 = 65534;

/// One instance: an HTTP app in `ns` behind an inbound proxy for `id`.
struct Instance {
    name: String,
    app: SlowApp,
    /// Stopped (SIGTERM) when the instance is dropped.
    _proxy: Daemon,
}

fn start_instance(
    name: &str,
    ns: &'static str,
    id: &str,
    protocol: &str,
    agent_socket: &std::path::Path,
    policy_dir: &std::path::Path,
    dir: &std::path::Path,
) -> Instance {
    let tag: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let app = in_ns(ns, move || SlowApp::start(tag, 0));
    let port = signet_test_support::free_port();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "workload_api_socket = \"unix://{}\"\npolicy_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout = 2\n[inbound]\nlisten = \"0.0.0.0:{port}\"\nforward_to = \"127.0.0.1:{}\"\nprotocol = \"{protocol}\"\n",
            agent_socket.display(),
            policy_dir.display(),
            app.port
        ),
    )
    .unwrap();
    let mut cmd = if id == LEDGER {
        signet_in_as(ns, LEDGER_GID)
    } else {
        signet_in(ns)
    };
    cmd.args(["proxy", "run", "--config"]).arg(&cfg);
    let mut proxy = Daemon::spawn(cmd);
    proxy.wait_for("endpoint published", Duration::from_secs(20));
    Instance {
        name: name.to_owned(),
        app,
        _proxy: proxy,
    }
}

/// What the request loop saw: (time since start, service, ok, served by).
type Seen = Arc<Mutex<Vec<(Duration, &'static str, bool, String)>>>;

#[test]
fn three_hosts_find_balance_and_survive_a_dead_app_and_a_cut_host() {
    let _alone = crate::alone();
    let net = match Net::create() {
        Ok(n) => n,
        Err(why) => {
            assert!(
                std::env::var("SIGNET_REQUIRE_NETNS").is_err(),
                "SIGNET_REQUIRE_NETNS is set but {why}"
            );
            eprintln!("!!!!!! SKIPPED three-host mesh test: {why} !!!!!!");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let d = dir.path();
    let (ns_a, ns_b, ns_c) = (HOSTS[0].0, HOSTS[1].0, HOSTS[2].0);

    // Host A: the CA.
    std::fs::write(d.join("ca.toml"), "endpoint_grace = 5\n").unwrap();
    let admin = d.join("admin.sock");
    let mut cmd = signet_in(ns_a);
    cmd.args(["ca", "serve", "--trust-domain", "example.org", "--config"])
        .arg(d.join("ca.toml"))
        .arg("--data-dir")
        .arg(d.join("ca"))
        .arg("--admin-socket")
        .arg(&admin)
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--listen",
            "0.0.0.0:8081",
        ]);
    let mut ca = Daemon::spawn(cmd);
    ca.wait_for("signet CA ready", Duration::from_secs(30));
    let bundle = d.join("bundle.pem");
    std::fs::write(&bundle, run_ok(&["bundle", "show"], &admin)).unwrap();
    let uid = format!("unix:uid:{}", my_uid());
    let own_gid = format!("unix:gid:{}", rustix::process::getegid().as_raw());
    let ledger_gid = format!("unix:gid:{LEDGER_GID}");
    let mut agents = Vec::new();
    let mut sockets = BTreeMap::new();
    for (ns, _) in HOSTS {
        let node = &ns[4..];
        let token = run_ok(&["token", "create", "--node-name", node], &admin)
            .trim()
            .to_owned();
        let socket = d.join(format!("{node}.sock"));
        let mut cmd = signet_in(ns);
        cmd.args([
            "agent",
            "run",
            "--ca",
            &format!("{}:8081", HOSTS[0].1),
            "--trust-bundle",
        ])
        .arg(&bundle)
        .args(["--join-token", &token, "--data-dir"])
        .arg(d.join(format!("agent-{node}")))
        .arg("--socket")
        .arg(&socket)
        .args(["--metrics-listen", "127.0.0.1:0"]);
        let mut agent = Daemon::spawn(cmd);
        agent.wait_for("signet agent ready", Duration::from_secs(30));
        agents.push(agent);
        sockets.insert(ns, socket);
    }
    let parent = |ns: &str| format!("spiffe://example.org/signet/agent/{}", &ns[4..]);
    let entry = |id: &str, ns: &str, gid: &str| {
        run_ok(
            &[
                "entry",
                "create",
                "--spiffe-id",
                id,
                "--parent-id",
                &parent(ns),
                "--selector",
                &uid,
                "--selector",
                gid,
            ],
            &admin,
        );
    };
    entry(CHECKOUT, ns_a, &own_gid);
    for ns in [ns_b, ns_c] {
        entry(PAYMENTS, ns, &own_gid);
        entry(LEDGER, ns, &ledger_gid);
    }
    let policy_dir = d.join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(
        policy_dir.join("p.toml"),
        format!("[[allow]]\nto = \"{PAYMENTS}\"\nfrom = [\"{CHECKOUT}\"]\n[[allow]]\nto = \"{LEDGER}\"\nfrom = [\"{CHECKOUT}\"]\n"),
    )
    .unwrap();

    // Three instances of each service: two on B, one on C.
    let mut instances: Vec<Instance> = Vec::new();
    for (name, ns) in [("b1", ns_b), ("b2", ns_b), ("c1", ns_c)] {
        instances.push(start_instance(
            &format!("pay-{name}"),
            ns,
            PAYMENTS,
            "http",
            &sockets[ns],
            &policy_dir,
            d,
        ));
        instances.push(start_instance(
            &format!("led-{name}"),
            ns,
            LEDGER,
            "tcp",
            &sockets[ns],
            &policy_dir,
            d,
        ));
    }

    // The caller on A.
    let (http_port, tcp_port) = (18001u16, 18002u16);
    std::fs::write(
        d.join("caller.toml"),
        format!(
            "workload_api_socket = \"unix://{}\"\nadmin_listen = \"127.0.0.1:0\"\n[[outbound]]\nlisten = \"127.0.0.1:{http_port}\"\nserver_id = \"{PAYMENTS}\"\nprotocol = \"http\"\n[[outbound]]\nlisten = \"127.0.0.1:{tcp_port}\"\nserver_id = \"{LEDGER}\"\n",
            sockets[ns_a].display()
        ),
    )
    .unwrap();
    let mut cmd = signet_in(ns_a);
    cmd.args(["proxy", "run", "--config"])
        .arg(d.join("caller.toml"));
    let mut caller = Daemon::spawn(cmd);
    caller.wait_for("signet proxy ready", Duration::from_secs(20));

    // The request loop on A: for each service three workers, each making
    // one call per ~10 ms on a new connection (bounded: at most six calls
    // in flight), so a call stuck on the cut host holds up only its worker.
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // The same instant as seconds of the day (UTC), to match log lines.
    let start_sod = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 86_400.0;
    let mut workers = Vec::new();
    for (service, port) in [("http", http_port), ("tcp", tcp_port)] {
        for w in 0..3 {
            let (seen, stop) = (seen.clone(), stop.clone());
            workers.push(std::thread::spawn(move || {
                in_ns(ns_a, move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let (status, _, body) = http_call(port, "GET", &format!("/w{w}/r{n}"), "");
                        let by = body.split_whitespace().next().unwrap_or("").to_owned();
                        seen.lock()
                            .unwrap()
                            .push((start.elapsed(), service, status == 200, by));
                        n += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            }));
        }
    }
    let phase = |label: &str, from: Duration, to: Duration| {
        let s = seen.lock().unwrap();
        for service in ["http", "tcp"] {
            let mut by: BTreeMap<String, usize> = BTreeMap::new();
            let mut failed = 0;
            for (t, svc, ok, who) in s.iter() {
                if *svc == service && *t >= from && *t < to {
                    if *ok {
                        *by.entry(who.clone()).or_default() += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
            println!(
                "[{:>4.1}-{:>4.1} s] {label:<28} {service:<4}: {failed} failed, served {by:?}",
                from.as_secs_f64(),
                to.as_secs_f64()
            );
        }
    };
    let at = |secs: f64| {
        let t = Duration::from_secs_f64(secs);
        if let Some(left) = t.checked_sub(start.elapsed()) {
            std::thread::sleep(left);
        }
        t
    };

    // Phase 1: steady load over the three instances.
    let t_new = at(4.0);
    phase("three instances", Duration::ZERO, t_new);
    // Phase 2: a new instance of each on C.
    for (name, id, protocol) in [("pay-c2", PAYMENTS, "http"), ("led-c2", LEDGER, "tcp")] {
        instances.push(start_instance(
            name,
            ns_c,
            id,
            protocol,
            &sockets[ns_c],
            &policy_dir,
            d,
        ));
    }
    let registered = start.elapsed();
    let t_kill = at(registered.as_secs_f64() + 3.0);
    for tag in ["pay-c2", "led-c2"] {
        let first = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _, ok, by)| *ok && by == tag && *t >= registered)
            .map(|(t, ..)| *t - registered);
        println!("{tag} served its first request {first:?} after it registered");
        let first = first.expect("the new instance got no traffic");
        assert!(first < Duration::from_secs(1));
    }
    phase("new instances on C", registered, t_kill);
    // Phase 3: the apps of the b1 instances die; their proxies stay up.
    let mut b1_ports = Vec::new();
    for i in instances.iter().filter(|i| i.name.ends_with("b1")) {
        let app_port = i.app.port;
        b1_ports.push((i.name.clone(), app_port));
        let app = i.app.clone();
        in_ns(ns_b, move || app.stop());
    }
    let t_back = at(t_kill.as_secs_f64() + 3.0);
    phase("b1 apps dead", t_kill, t_back);
    // ...and come back on their ports.
    let mut revived = Vec::new();
    for (name, port) in b1_ports {
        let tag: &'static str = Box::leak(name.into_boxed_str());
        revived.push(in_ns(ns_b, move || SlowApp::start(tag, port)));
    }
    let t_cut = at(t_back.as_secs_f64() + 3.0);
    phase("b1 apps back", t_back, t_cut);
    // Phase 4: host C is cut off.
    net.cut(ns_c);
    let t_end = at(t_cut.as_secs_f64() + 12.0);
    phase("host C cut", t_cut, t_end);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }

    // The caller's log: when each endpoint was ejected, and the attempts
    // on it that began after that (an attempt's start is its failure line's
    // time less its `attempt_ms`).
    caller.stop_and_read_log();
    let secs = |line: &str| -> f64 {
        // 2026-11-26T01:21:32.942696Z
        let t = line.get(11..26).unwrap_or("0:0:0");
        let mut parts = t.split(':');
        let h: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let m: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let s: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        h * 3600.0 + m * 60.0 + s
    };
    let field = |line: &str, name: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    let mut ejected_at: BTreeMap<String, f64> = BTreeMap::new();
    let mut after_ejection: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed_attempts = 0;
    for line in &caller.log {
        let Some(endpoint) = field(line, "endpoint") else {
            continue;
        };
        if line.contains("endpoint ejected after failing") {
            ejected_at.insert(endpoint, secs(line));
        } else if line.contains("trying another") {
            failed_attempts += 1;
            let began = secs(line)
                - field(line, "attempt_ms")
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    / 1000.0;
            if ejected_at.get(&endpoint).is_some_and(|&at| began > at) {
                *after_ejection.entry(endpoint).or_default() += 1;
            }
        }
    }
    println!("failed attempts the caller moved to another endpoint: {failed_attempts}");
    println!("ejected (seconds of the day): {ejected_at:?}");
    println!("attempts on an endpoint after its ejection: {after_ejection:?}");
    println!("endpoints now: {}", run_ok(&["endpoints", "list"], &admin));
    let s = seen.lock().unwrap();
    let http_failed = s
        .iter()
        .filter(|(_, svc, ok, _)| *svc == "http" && !ok)
        .count();
    let tcp_failed = s
        .iter()
        .filter(|(_, svc, ok, _)| *svc == "tcp" && !ok)
        .count();
    println!(
        "total: {} requests, HTTP failed {http_failed}, TCP failed {tcp_failed}",
        s.len()
    );
    let tcp_failed_at: Vec<String> = s
        .iter()
        .filter(|(_, svc, ok, _)| *svc == "tcp" && !ok)
        .map(|(t, ..)| format!("{:.2}s", t.as_secs_f64()))
        .collect();
    println!(
        "TCP failures at {tcp_failed_at:?} (b1's apps died at {:.2}s, host C was cut at {:.2}s)",
        t_kill.as_secs_f64(),
        t_cut.as_secs_f64()
    );
    assert_eq!(http_failed, 0, "idempotent HTTP requests must all succeed");
    // Within the phases, a TCP connection fails only when it reached b1's
    // proxy in the moment between its app's death and the withdrawal that
    // followed. (Calls still running when the loop was told to stop are
    // outside the phases.)
    let stray: Vec<f64> = s
        .iter()
        .filter(|(t, svc, ok, _)| {
            *svc == "tcp"
                && !ok
                && *t < t_end
                && !(*t >= t_kill && *t < t_kill + Duration::from_secs(1))
        })
        .map(|(t, ..)| t.as_secs_f64())
        .collect();
    for t in &stray {
        let at = start_sod + t;
        println!("caller log around the TCP failure at {t:.2}s:");
        for line in caller.log.iter().filter(|l| {
            let when = secs(l);
            when > at - 4.0 && when < at + 0.5 && l.contains("WARN")
        }) {
            println!("  {line}");
        }
    }
    assert!(
        stray.is_empty(),
        "TCP failures outside the app's death: {stray:?}"
    );
    assert!(
        after_ejection.is_empty(),
        "no connection to an ejected endpoint"
    );
    assert!(
        !ejected_at.is_empty(),
        "the cut host's endpoints were ejected"
    );
    drop(revived);
    drop(instances);
    drop(agents);
    drop(ca);
}
