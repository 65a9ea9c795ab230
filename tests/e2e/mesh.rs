//! The mesh on loopback, real binaries: a service (`payments`) runs as
//! several instances, each app behind its own inbound proxy on two nodes
//! (agents b and c); a caller (`checkout`, agent a) has an outbound listener
//! that names only the service's SPIFFE ID. Checked: the endpoints are
//! registered and listed, connections spread over every instance, a new
//! instance gets traffic within a second, a stopped instance is withdrawn
//! at once and costs no failed connection, and a workload cannot register
//! an identity it does not hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use signet_test_support::*;

/// One instance of payments: an echo app behind an inbound proxy.
struct Instance {
    app: EchoApp,
    proxy: Daemon,
    port: u16,
}

fn start_instance(ca: &CaProcess, agent: &AgentProcess, policy_dir: &std::path::Path) -> Instance {
    let app = EchoApp::start();
    let (proxy, port) = start_inbound(ca.dir.path(), &agent.socket, policy_dir, app.port, "");
    Instance { app, proxy, port }
}

/// `signet endpoints list --output json`: (address, node) pairs of payments.
fn listed(ca: &CaProcess) -> Vec<(String, String)> {
    let out = ca.run_ok(&[
        "endpoints",
        "list",
        "--spiffe-id",
        PAYMENTS,
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut found: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["spiffe_id"], PAYMENTS);
            assert_eq!(e["health"], "live");
            (
                e["address"].as_str().unwrap().to_owned(),
                e["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

/// One connection through the caller's outbound listener; whether the
/// echo came back whole.
fn echo_through(port: u16, payload: &[u8]) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(payload).is_err() {
        return false;
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out == payload
}

#[test]
fn a_caller_finds_balances_over_and_survives_the_instances_of_a_service() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("ca.toml");
    std::fs::write(&cfg, "endpoint_grace = 3\n").unwrap();
    let ca = CaProcess::start(&["--config", cfg.to_str().unwrap()]);
    let agent_a = AgentProcess::start(&ca, &ca.token("node-a"), &[]);
    let agent_b = AgentProcess::start(&ca, &ca.token("node-b"), &[]);
    let agent_c = AgentProcess::start(&ca, &ca.token("node-c"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry(CHECKOUT, "node-a", &[&uid], &[]);
    ca.entry(PAYMENTS, "node-b", &[&uid], &[]);
    ca.entry(PAYMENTS, "node-c", &[&uid], &[]);
    let policy_dir = ca.dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("payments.toml"), ALLOW_CHECKOUT).unwrap();

    let mut instances = vec![
        start_instance(&ca, &agent_b, &policy_dir),
        start_instance(&ca, &agent_b, &policy_dir),
        start_instance(&ca, &agent_c, &policy_dir),
    ];
    let mut expected: Vec<(String, String)> = instances
        .iter()
        .zip(["node-b", "node-b", "node-c"])
        .map(|(i, node)| {
            (
                format!("127.0.0.1:{}", i.port),
                format!("spiffe://example.org/signet/agent/{node}"),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(
        listed(&ca),
        expected,
        "the registry lists every instance with its node"
    );

    // The caller names only the identity.
    let caller_port = signet_test_support::free_port();
    let caller_admin = signet_test_support::free_port();
    let caller = start_caller(
        ca.dir.path(),
        &agent_a.socket,
        caller_port,
        caller_admin,
        PAYMENTS,
        "",
    );
    eventually(
        Duration::from_secs(5),
        "the caller to learn the endpoints",
        || echo_through(caller_port, b"hello").then_some(()),
    );

    // Load spreads over all three.
    let before: Vec<usize> = instances.iter().map(|i| i.app.connections()).collect();
    let mut failed = 0;
    for n in 0..90 {
        if !echo_through(caller_port, format!("request {n}").as_bytes()) {
            failed += 1;
        }
    }
    let served: Vec<usize> = instances
        .iter()
        .zip(&before)
        .map(|(i, b)| i.app.connections() - b)
        .collect();
    println!("90 connections over 3 instances: {served:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert!(
        served.iter().all(|&n| n >= 10),
        "every instance serves: {served:?}"
    );

    // A new instance gets traffic within a second of registering.
    let added = start_instance(&ca, &agent_c, &policy_dir);
    let registered = Instant::now();
    let first_traffic = loop {
        assert!(echo_through(caller_port, b"x"));
        if added.app.connections() > 0 {
            break registered.elapsed();
        }
        assert!(
            registered.elapsed() < Duration::from_secs(5),
            "the new instance got no traffic"
        );
    };
    println!("new instance served its first connection {first_traffic:?} after registering");
    assert!(first_traffic < Duration::from_secs(1));
    instances.push(added);

    let instances_b_port = instances[1].port;
    // An instance stops (SIGTERM: it withdraws its endpoint, then drains):
    // gone from the registry within a second, and no connection fails.
    let mut stopped = instances.remove(0);
    let stopped_addr = format!("127.0.0.1:{}", stopped.port);
    let t = Instant::now();
    assert!(stopped.proxy.terminate());
    eventually(
        Duration::from_secs(2),
        "the stopped instance to leave the registry",
        || (!listed(&ca).iter().any(|(a, _)| *a == stopped_addr)).then_some(()),
    );
    println!("stopped instance withdrawn after {:?}", t.elapsed());
    let mut failed = 0;
    for _ in 0..60 {
        if !echo_through(caller_port, b"after") {
            failed += 1;
        }
    }
    println!("60 connections after the stop: {failed} failed");
    assert_eq!(failed, 0);

    // Node c goes down whole (agent and both its proxies killed): its
    // endpoints stay registered for the CA's grace period (3 s here), so
    // connections land on dead endpoints; each fails over to another before
    // any app byte is sent, and none fails. Then they are withdrawn.
    let mut agent_c = agent_c;
    agent_c.daemon.child.kill().unwrap();
    for i in instances.iter_mut().filter(|i| i.port != instances_b_port) {
        i.proxy.child.kill().unwrap();
    }
    let crash = Instant::now();
    let mut failed = 0;
    let mut sent = 0;
    while crash.elapsed() < Duration::from_secs(5) {
        sent += 1;
        if !echo_through(caller_port, b"crash") {
            failed += 1;
        }
    }
    let (_, metrics) = http_get(caller_admin, "/metrics");
    let attempts: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("signet_proxy_endpoint_attempts_total")
                || l.starts_with("signet_proxy_ejections_total")
        })
        .collect();
    println!(
        "{sent} connections in the 5 s after node c went down: {failed} failed; attempts:\n{}",
        attempts.join("\n")
    );
    assert_eq!(failed, 0);
    eventually(
        Duration::from_secs(5),
        "node c's endpoints to be withdrawn",
        || (listed(&ca).len() == 1).then_some(()),
    );

    // A workload may not advertise an identity it cannot get an SVID for:
    // on node a this process is checkout, not payments.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let channel = signet_identity::workload_api::connect(&agent_a.socket)
            .await
            .unwrap();
        let mut client = signet_proto::mesh::mesh_client::MeshClient::new(channel);
        let req = with_security_header(signet_proto::mesh::RegisterRequest {
            endpoint: Some(signet_proto::mesh::Endpoint {
                spiffe_id: PAYMENTS.into(),
                address: "127.0.0.1:9".into(),
                ..Default::default()
            }),
        });
        client.register(req).await.map(|_| ()).unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(!listed(&ca).iter().any(|(a, _)| a == "127.0.0.1:9"));
    drop(caller);
}

fn http_instance(
    ca: &CaProcess,
    agent: &AgentProcess,
    policy_dir: &std::path::Path,
    app_port: u16,
) -> (Daemon, u16) {
    start_inbound(
        ca.dir.path(),
        &agent.socket,
        policy_dir,
        app_port,
        "protocol = \"http\"",
    )
}

/// A CA, node a with checkout, node b with payments (both as this
/// process's uid), and a policy directory letting checkout call payments.
fn checkout_on_a_payments_on_b() -> (CaProcess, AgentProcess, AgentProcess, std::path::PathBuf) {
    let ca = CaProcess::start(&[]);
    let agent_a = AgentProcess::start(&ca, &ca.token("node-a"), &[]);
    let agent_b = AgentProcess::start(&ca, &ca.token("node-b"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry(CHECKOUT, "node-a", &[&uid], &[]);
    ca.entry(PAYMENTS, "node-b", &[&uid], &[]);
    let policy_dir = ca.dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("payments.toml"), ALLOW_CHECKOUT).unwrap();
    (ca, agent_a, agent_b, policy_dir)
}

#[test]
fn http_requests_are_balanced_retried_timed_out_and_capped() {
    let (ca, agent_a, agent_b, policy_dir) = checkout_on_a_payments_on_b();
    let apps = [
        SlowApp::start("one", 0),
        SlowApp::start("two", 0),
        SlowApp::start("three", 0),
    ];
    let _one = http_instance(&ca, &agent_b, &policy_dir, apps[0].port);
    let _two = http_instance(&ca, &agent_b, &policy_dir, apps[1].port);
    let (_three, three_proxy_port) = http_instance(&ca, &agent_b, &policy_dir, apps[2].port);
    let three = format!("127.0.0.1:{three_proxy_port}");

    let caller_port = signet_test_support::free_port();
    let caller_admin = signet_test_support::free_port();
    let _caller = start_caller(
        ca.dir.path(),
        &agent_a.socket,
        caller_port,
        caller_admin,
        PAYMENTS,
        "protocol = \"http\"\nmax_pending_requests = 4\n[[outbound.routes]]\npath_prefix = \"/sleep/\"\ntimeout_ms = 400",
    );

    let run = |label: &str, n: usize| {
        let before: Vec<usize> = apps.iter().map(SlowApp::served).collect();
        let mut failed = Vec::new();
        for i in 0..n {
            let (method, body) = if i % 2 == 0 {
                ("GET", "")
            } else {
                ("POST", "data")
            };
            let (status, error, reply) = http_call(caller_port, method, &format!("/r{i}"), body);
            if status != 200 || !reply.ends_with(&format!("/r{i} {body}")) {
                failed.push((i, status, error, reply));
            }
        }
        let served: Vec<usize> = apps
            .iter()
            .zip(&before)
            .map(|(a, b)| a.served() - b)
            .collect();
        println!(
            "{label}: {n} requests (half POST), {} failed, served by the apps {served:?}",
            failed.len()
        );
        assert!(failed.is_empty(), "{failed:?}");
        served
    };
    let served = run("three instances", 60);
    // Peak-EWMA favours whichever answers faster: all are used, not
    // necessarily evenly.
    assert!(served.iter().all(|&n| n >= 1), "{served:?}");

    // App three dies, its proxy stays up: requests that reach that proxy
    // are answered "not forwarded" and go to another instance, POSTs
    // included (their small bodies are replayed); the proxy withdraws its
    // endpoint at the first refusal.
    apps[2].stop();
    let served = run("app three down", 60);
    assert_eq!(served[2], 0);
    // Withdrawn as soon as a request reaches its proxy (peak-EWMA may keep
    // requests off it for a while: the others answered faster).
    eventually(
        Duration::from_secs(15),
        "instance three to be withdrawn",
        || {
            assert_eq!(http_call(caller_port, "GET", "/probe", "").0, 200);
            (!listed(&ca).iter().any(|(a, _)| *a == three)).then_some(())
        },
    );
    let (_, metrics) = http_get(caller_admin, "/metrics");
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("signet_proxy_retries_total")
                || l.starts_with("signet_proxy_http_requests_total")
                || (l.starts_with("signet_proxy_endpoint_attempts_total") && l.contains(&three))
        })
        .collect();
    println!("{}", lines.join("\n"));

    // It comes back on the same port: registered again, served again.
    let _back = SlowApp::start("three", apps[2].port);
    eventually(
        Duration::from_secs(5),
        "instance three to be registered again",
        || listed(&ca).iter().any(|(a, _)| *a == three).then_some(()),
    );
    let three_again = &_back;
    eventually(
        Duration::from_secs(15),
        "instance three to be served again",
        || {
            assert_eq!(http_call(caller_port, "GET", "/again", "").0, 200);
            (three_again.served() > 0).then_some(())
        },
    );

    // A route timeout: answered 504 by the proxy, on time.
    let t = Instant::now();
    let (status, error, _) = http_call(caller_port, "GET", "/sleep/3000", "");
    let took = t.elapsed();
    println!("a 3 s request on a 400 ms route: {status} {error} after {took:?}");
    assert_eq!((status, error.as_str()), (504, "timeout"));
    assert!(took < Duration::from_secs(2));
    // Within the route's timeout it succeeds.
    assert_eq!(http_call(caller_port, "GET", "/sleep/50", "").0, 200);

    // The circuit breaker: 4 in flight are served, the 5th is answered
    // 503 at once.
    let holders: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || http_call(caller_port, "GET", "/hold/sleep/2000", "")))
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let t = Instant::now();
    let (status, error, _) = http_call(caller_port, "GET", "/r", "");
    println!(
        "a 5th request with 4 in flight: {status} {error} after {:?}",
        t.elapsed()
    );
    assert_eq!((status, error.as_str()), (503, "max-pending-requests"));
    for h in holders {
        let r = h.join().unwrap();
        assert_eq!(r.0, 200, "the 4 within the cap are served: {r:?}");
    }
    assert_eq!(http_call(caller_port, "GET", "/after", "").0, 200);
}

/// `signet endpoints list` of payments through `ca`, as addresses.
fn addresses(ca: &CaProcess) -> Vec<String> {
    listed(ca).into_iter().map(|(a, _)| a).collect()
}

/// Incident response moves a service off a node: `entry update --parent-id`
/// to another node, or `entry delete`. A compromised node that keeps its
/// publishing stream open and sends nothing more still loses the endpoints
/// of that identity at once, on every replica (callers watching it are
/// told), and its stream is told they are refused; the entry given back
/// publishes them again. Two replicas on one PostgreSQL: the node publishes
/// through A, the operator acts through B, a caller's node watches on B.
#[test]
fn an_entitlement_change_withdraws_the_endpoints_of_a_silent_node() {
    let Some(pg) = signet_test_support::postgres::TestPostgres::get() else {
        return;
    };
    let url = pg.fresh_database();
    let a = CaProcess::start(&["--database-url", &url]);
    let b = CaProcess::start(&["--database-url", &url]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rogue = rt.block_on(attested_node_client(&a, "rogue"));
    let mut watcher = rt.block_on(attested_node_client(&b, "watcher"));
    let payments = b.entry(PAYMENTS, "rogue", &["unix:uid:1"], &[]);
    // The node publishes payments once, then holds its stream silent.
    let (updates, mut acks) = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(signet_proto::node::EndpointsUpdate {
            sequence: 1,
            endpoints: vec![signet_proto::mesh::Endpoint {
                spiffe_id: PAYMENTS.into(),
                address: ":7".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
        let acks = rogue
            .publish_endpoints(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, acks)
    });
    let mut next_ack = || {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), acks.message())
                .await
                .expect("an answer on the publishing stream within 10 s")
                .unwrap()
                .unwrap()
        })
    };
    let ack = next_ack();
    assert_eq!((ack.sequence, ack.published.len()), (1, 1), "{ack:?}");
    let mut watch = rt.block_on(async {
        watcher
            .watch_endpoints(signet_proto::mesh::WatchRequest {
                spiffe_id: PAYMENTS.into(),
            })
            .await
            .unwrap()
            .into_inner()
    });
    let mut watched = || {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), watch.message())
                .await
                .expect("a watch message within 10 s")
                .unwrap()
                .unwrap()
                .endpoints
                .len()
        })
    };
    assert_eq!(watched(), 1);
    for ca in [&a, &b] {
        assert_eq!(addresses(ca), ["127.0.0.1:7"]);
    }

    let withdrawn_everywhere = |what: &str| {
        let start = Instant::now();
        for ca in [&a, &b] {
            eventually(Duration::from_secs(5), what, || {
                addresses(ca).is_empty().then_some(())
            });
        }
        println!(
            "{what}: withdrawn on both replicas after {:?}",
            start.elapsed()
        );
    };

    // The service moves to another node.
    b.run_ok(&[
        "entry",
        "update",
        &payments,
        "--parent-id",
        "spiffe://example.org/signet/agent/node-c",
    ]);
    withdrawn_everywhere("entry update --parent-id");
    assert_eq!(watched(), 0, "the caller's node is told");
    let ack = next_ack();
    assert_eq!(ack.sequence, 1, "the last update, checked again: {ack:?}");
    assert!(ack.published.is_empty(), "{ack:?}");
    assert!(
        ack.refused[0]
            .reason
            .contains("not the SPIFFE ID of an entry"),
        "{ack:?}"
    );

    // Given back: published again, the node sending nothing.
    b.run_ok(&[
        "entry",
        "update",
        &payments,
        "--parent-id",
        "spiffe://example.org/signet/agent/rogue",
    ]);
    let ack = next_ack();
    assert_eq!((ack.sequence, ack.published.len()), (1, 1), "{ack:?}");
    assert_eq!(watched(), 1);
    for ca in [&a, &b] {
        eventually(Duration::from_secs(5), "published again", || {
            (addresses(ca) == ["127.0.0.1:7"]).then_some(())
        });
    }

    // The entry is deleted.
    b.run_ok(&["entry", "delete", &payments]);
    withdrawn_everywhere("entry delete");
    assert_eq!(watched(), 0);
    drop(updates);
}

/// An app cannot speak for its proxy. Its answer carrying Signet's control
/// headers (`x-signet-not-forwarded`, `x-signet-error`, a guessed answer
/// token), as a gateway relaying an answer from behind it would, is the
/// app's answer: a POST it executed is not run again on another instance,
/// a GET is not retried, no endpoint is counted failed, the headers do not
/// reach the calling app as Signet's, and no metric label takes the app's
/// value. The proxy's own "not forwarded" still moves a POST on.
#[test]
fn an_app_cannot_forge_the_control_headers_of_its_proxy() {
    let (ca, agent_a, agent_b, policy_dir) = checkout_on_a_payments_on_b();
    let apps = [SlowApp::start("one", 0), SlowApp::start("two", 0)];
    let _one = http_instance(&ca, &agent_b, &policy_dir, apps[0].port);
    let _two = http_instance(&ca, &agent_b, &policy_dir, apps[1].port);
    let caller_port = signet_test_support::free_port();
    let caller_admin = signet_test_support::free_port();
    let _caller = start_caller(
        ca.dir.path(),
        &agent_a.socket,
        caller_port,
        caller_admin,
        PAYMENTS,
        "protocol = \"http\"",
    );
    eventually(Duration::from_secs(10), "both instances known", || {
        (listed(&ca).len() == 2).then_some(())
    });
    let total = || apps.iter().map(SlowApp::served).sum::<usize>();
    for (method, body) in [("POST", "pay 10"), ("GET", "")] {
        for i in 0..10 {
            let before = total();
            let path = format!("/forge/zz-forged-{method}-{i}");
            let (status, error, reply) = http_call(caller_port, method, &path, body);
            let ran = total() - before;
            println!("{method} {path}: {status}, run {ran} time(s)");
            assert_eq!(ran, 1, "{method} {path} ran {ran} times");
            assert_eq!(status, 502, "the app's own answer: {reply}");
            assert!(reply.ends_with(&format!("{path} {body}")), "{reply}");
            assert_eq!(
                error, "",
                "the app's x-signet-error reached the caller as Signet's"
            );
        }
    }
    let (_, metrics) = http_get(caller_admin, "/metrics");
    let relevant: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("signet_proxy_http_requests_total")
                || l.starts_with("signet_proxy_endpoint_attempts_total")
                || l.starts_with("signet_proxy_retries_total")
        })
        .collect();
    println!("{}", relevant.join("\n"));
    assert!(!metrics.contains("zz"), "a label took the app's value");
    for forged_verdict in ["app_unreachable", "proxy_error", "retries_total{"] {
        assert!(
            !relevant.iter().any(|l| l.contains(forged_verdict)),
            "{forged_verdict}: {relevant:?}"
        );
    }
    assert!(
        relevant
            .iter()
            .any(|l| l.contains("outcome=\"response\"") && l.ends_with(" 20")),
        "{relevant:?}"
    );

    // The proxy's own "not forwarded" (its app gone) still sends a POST to
    // the other instance.
    apps[1].stop();
    for i in 0..10 {
        let (status, _, reply) = http_call(caller_port, "POST", &format!("/p{i}"), "pay");
        assert_eq!(
            (status, reply.as_str()),
            (200, format!("one /p{i} pay").as_str())
        );
    }
}

/// An agent that skips its own checks (a compromised node) still cannot
/// publish an endpoint for an identity none of its entries has: the CA
/// refuses it, says why, and nobody sees it. What it may publish, it may
/// also withdraw, and a ban takes its endpoints away at once.
#[test]
fn the_ca_refuses_endpoints_for_identities_the_agent_does_not_hold() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("ca.toml");
    std::fs::write(&cfg, "endpoint_grace = 1\n").unwrap();
    let ca = CaProcess::start(&["--config", cfg.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rogue = rt.block_on(attested_node_client(&ca, "rogue"));
    ca.entry(CHECKOUT, "rogue", &["unix:uid:1"], &[]);
    let publish =
        |client: &mut signet_proto::node::node_client::NodeClient<tonic::transport::Channel>,
         endpoints: Vec<signet_proto::mesh::Endpoint>| {
            rt.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(signet_proto::node::EndpointsUpdate {
                    sequence: 1,
                    endpoints,
                })
                .await
                .unwrap();
                let mut acks = client
                    .publish_endpoints(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .unwrap()
                    .into_inner();
                let ack = acks.message().await.unwrap().unwrap();
                (ack, tx, acks)
            })
        };
    let ep = |id: &str, address: &str| signet_proto::mesh::Endpoint {
        spiffe_id: id.into(),
        address: address.into(),
        ..Default::default()
    };
    // Refused: payments is not the rogue node's; accepted: checkout is.
    let (ack, tx, acks) = publish(
        &mut rogue,
        vec![ep(PAYMENTS, "127.0.0.1:9"), ep(CHECKOUT, ":7")],
    );
    assert_eq!(ack.refused.len(), 1, "{ack:?}");
    assert!(
        ack.refused[0]
            .reason
            .contains("not the SPIFFE ID of an entry"),
        "{ack:?}"
    );
    assert_eq!(ack.published.len(), 1);
    assert_eq!(ack.published[0].address, "127.0.0.1:7", "host filled in");
    let listed = ca.run_ok(&["endpoints", "list", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let all: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["spiffe_id"].as_str().unwrap())
        .collect();
    assert_eq!(all, vec![CHECKOUT]);
    // The stream ends: marked lost, then withdrawn after the grace (1 s).
    drop((tx, acks));
    eventually(Duration::from_secs(3), "the lost endpoint marked", || {
        ca.run_ok(&["endpoints", "list"])
            .contains("agent-lost")
            .then_some(())
    });
    eventually(
        Duration::from_secs(5),
        "the lost endpoint withdrawn",
        || (ca.run_ok(&["endpoints", "list", "--output", "json"]).trim() == "[]").then_some(()),
    );
    // Published again, and watched, then the agent is banned: its
    // endpoints are gone at once, its open streams end, and nothing comes
    // back through the publishing stream it still holds.
    let (_ack, tx, mut acks) = publish(&mut rogue, vec![ep(CHECKOUT, ":7")]);
    assert!(ca.run_ok(&["endpoints", "list"]).contains("127.0.0.1:7"));
    let mut watch = rt.block_on(async {
        let mut w = rogue
            .watch_endpoints(signet_proto::mesh::WatchRequest {
                spiffe_id: CHECKOUT.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = w.message().await.unwrap().unwrap();
        assert_eq!(first.endpoints.len(), 1);
        w
    });
    ca.run_ok(&["agent", "ban", "spiffe://example.org/signet/agent/rogue"]);
    eventually(
        Duration::from_secs(2),
        "a ban to withdraw the endpoints",
        || (ca.run_ok(&["endpoints", "list", "--output", "json"]).trim() == "[]").then_some(()),
    );
    rt.block_on(async {
        // The watch may first see the set emptied; then it ends.
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(5), watch.message())
                .await
                .unwrap()
            {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert_eq!(ended.unwrap_err().code(), tonic::Code::PermissionDenied);
        // The publishing stream ends at the ban, refused, without waiting
        // for the node's next update; one sent now goes nowhere.
        let refused = tokio::time::timeout(Duration::from_secs(5), acks.message())
            .await
            .unwrap();
        assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
        let _ = tx
            .send(signet_proto::node::EndpointsUpdate {
                sequence: 2,
                endpoints: vec![ep(CHECKOUT, ":7")],
            })
            .await;
    });
    assert_eq!(
        ca.run_ok(&["endpoints", "list", "--output", "json"]).trim(),
        "[]",
        "a banned agent's open stream cannot publish again"
    );
}

/// A node flooding endpoint updates (here: 500 back to back) costs the CA
/// at most one write per 200 ms: the updates are coalesced, the newest is
/// the one published and acknowledged, and an entry created meanwhile
/// still reaches its agent's workload promptly.
#[test]
fn a_node_flooding_endpoint_updates_is_coalesced() {
    let ca = CaProcess::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rogue = rt.block_on(attested_node_client(&ca, "rogue"));
    ca.entry(CHECKOUT, "rogue", &["unix:uid:1"], &[]);
    let honest = AgentProcess::start(&ca, &ca.token("honest"), &[]);
    const UPDATES: u64 = 500;
    let (acks, last) = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(UPDATES as usize);
        for sequence in 1..=UPDATES {
            tx.send(signet_proto::node::EndpointsUpdate {
                sequence,
                endpoints: vec![signet_proto::mesh::Endpoint {
                    spiffe_id: CHECKOUT.into(),
                    address: format!(":{}", 1000 + sequence),
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
        }
        let mut acks = rogue
            .publish_endpoints(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        loop {
            let ack = tokio::time::timeout(Duration::from_secs(10), acks.message())
                .await
                .expect("an ack within 10 s")
                .unwrap()
                .unwrap();
            n += 1;
            if ack.sequence == UPDATES {
                drop(tx);
                return (n, ack);
            }
        }
    });
    println!("{UPDATES} updates back to back: {acks} written and acknowledged");
    assert!(acks < 20, "{acks} writes for {UPDATES} updates");
    assert_eq!(last.published.len(), 1);
    assert_eq!(
        last.published[0].address,
        format!("127.0.0.1:{}", 1000 + UPDATES)
    );
    let listed = ca.run_ok(&["endpoints", "list", "--output", "json"]);
    assert!(
        listed.contains(&format!("127.0.0.1:{}", 1000 + UPDATES)),
        "{listed}"
    );
    let (_, metrics) = ca.http_get("/metrics");
    assert!(
        metric(&metrics, "signet_ca_endpoint_updates_coalesced_total") >= UPDATES - 20,
        "{metrics}"
    );
    // The honest node's workload still gets a new entry's SVID.
    ca.entry(
        "spiffe://example.org/after-flood",
        "honest",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    rt.block_on(svid_stream(&honest, 1));
}
