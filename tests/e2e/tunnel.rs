//! End-to-end tests of the tunnel: app connections as HTTP/2 CONNECT
//! streams over pooled mTLS connections between two real proxies (CA, two
//! agents, proxies and an echo app as real processes), and an HBONE client
//! on Go's HTTP/2 stack against the tunnel listener.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use signet_test_support::*;

/// A mesh whose inbound proxy has a tunnel listener, and whose caller
/// sends every connection through it (`client_extra`: more
/// `[[outbound]]` keys). Returns the mesh and the tunnel port.
fn tunnel_mesh(policy: &str, ttl: &str, client_extra: &str) -> (Mesh, u16) {
    tunnel_mesh_with(policy, ttl, "", client_extra)
}

/// Like [`tunnel_mesh`], with `server_extra` (TOML tables such as
/// `[limits]`) in the inbound proxy's configuration.
fn tunnel_mesh_with(
    policy: &str,
    ttl: &str,
    server_extra: &str,
    client_extra: &str,
) -> (Mesh, u16) {
    let tunnel_port = signet_test_support::free_port();
    let mut mesh = Mesh::start_limited(
        policy,
        PAYMENTS,
        ttl,
        "tcp",
        &format!("tunnel_listen = \"127.0.0.1:{tunnel_port}\"\n{server_extra}"),
    );
    mesh.start_client_with(
        PAYMENTS,
        &format!("tunnel = true\ntunnel_port = {tunnel_port}\n{client_extra}"),
    );
    (mesh, tunnel_port)
}

/// A connection through the caller's proxy that has carried one byte
/// there and back (so its stream is open), kept open.
fn open_connection(mesh: &Mesh, byte: u8) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[byte]).unwrap();
    let mut b = [0u8; 1];
    // A stream queued behind a limit would time out here.
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, [byte]);
    s
}

const OUT_OPENED: &str = "signet_proxy_tunnel_connections_opened_total{direction=\"outbound\"}";
const IN_STREAMS_OPENED: &str =
    "signet_proxy_tunnel_streams_total{direction=\"inbound\",result=\"opened\"}";

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|n| ((n * 31) ^ (seed * 7)) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_share_one_tunnel_connection_with_half_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Two descriptors per connection here (the caller's and the echo's).
    signet_identity::admission::raise_fd_limit();
    let (mesh, _) = tunnel_mesh(ALLOW_CHECKOUT, "1h", "tunnel_streams_per_connection = 1000");
    let port = mesh.client_port;
    // All open at once before any is finished: each holds its stream until
    // everyone has sent.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for i in 0..1000usize {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            // Some streams carry more than a stream window.
            let len = if i % 100 == 0 { 3_000_000 } else { 2_000 + i };
            let data = pattern(i, len);
            s.write_all(&data[..10]).await.unwrap();
            let mut first = [0u8; 10];
            s.read_exact(&mut first).await.unwrap();
            barrier.wait().await;
            let (mut r, mut w) = s.into_split();
            let rest = data[10..].to_vec();
            let writer = tokio::spawn(async move {
                w.write_all(&rest).await.unwrap();
                // Half-close: the echo keeps coming after it.
                w.shutdown().await.unwrap();
            });
            let mut back = first.to_vec();
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            assert!(
                back == data,
                "connection {i}: {} of {len} bytes back intact",
                back.len()
            );
        }));
    }
    let deadline = tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    deadline.await.expect("all 1,000 connections finished");
    let client = mesh.client_metrics();
    assert_eq!(
        metric(&client, OUT_OPENED),
        1,
        "one tunnel connection: {client}"
    );
    let server = mesh.server_metrics();
    assert_eq!(metric(&server, IN_STREAMS_OPENED), 1000, "{server}");
    assert_eq!(mesh.app.connections(), 1000);
}

#[test]
fn past_the_stream_cap_another_tunnel_connection_is_opened() {
    let (mesh, _) = tunnel_mesh(ALLOW_CHECKOUT, "1h", "tunnel_streams_per_connection = 2");
    // Three held open at once: two on the first connection, one on a second.
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(open_connection(&mesh, i));
    }
    assert_eq!(metric(&mesh.client_metrics(), OUT_OPENED), 2);
    // Two at once fit one connection: still two.
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(mesh.round_trip(b"x"), b"x");
    assert_eq!(metric(&mesh.client_metrics(), OUT_OPENED), 2);
}

#[test]
fn the_inbound_stream_limit_makes_the_caller_open_another_connection() {
    // The caller's own cap (100) is above the inbound side's (2).
    let (mesh, _) = tunnel_mesh_with(
        ALLOW_CHECKOUT,
        "1h",
        "[limits]\ntunnel_max_streams = 2\n",
        "",
    );
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(open_connection(&mesh, i));
        if i == 1 {
            assert_eq!(
                metric(&mesh.client_metrics(), OUT_OPENED),
                1,
                "two fit one connection"
            );
        }
    }
    assert_eq!(metric(&mesh.client_metrics(), OUT_OPENED), 2);
}

#[test]
fn by_default_a_closed_tunnel_port_falls_back_to_a_direct_connection_but_not_with_tunnel_true() {
    // The inbound proxy has no tunnel listener where the caller looks.
    let closed = signet_test_support::free_port();
    let mut mesh = Mesh::start_limited(
        ALLOW_CHECKOUT,
        PAYMENTS,
        "1h",
        "tcp",
        "tunnel_listen = \"off\"\n",
    );
    mesh.start_client_with(PAYMENTS, &format!("tunnel_port = {closed}\n"));
    assert_eq!(mesh.round_trip(b"direct"), b"direct");
    assert_eq!(
        metric(
            &mesh.client_metrics(),
            "signet_proxy_tunnel_streams_total{direction=\"outbound\",result=\"fallback\"}"
        ),
        1
    );
    // tunnel = true: the tunnel or nothing.
    mesh.start_client_with(
        PAYMENTS,
        &format!("tunnel = true\ntunnel_port = {closed}\n"),
    );
    assert_eq!(mesh.round_trip(b"direct"), b"");
    assert_eq!(mesh.app.connections(), 1);
}

#[test]
fn a_denied_identity_gets_no_stream_and_the_app_sees_nothing() {
    let (mesh, _) = tunnel_mesh(ALLOW_WEB_ONLY, "1h", "");
    assert_eq!(mesh.round_trip(b"let me in"), b"");
    assert_eq!(mesh.app.connections(), 0, "nothing reached the app");
    let server = mesh.server_metrics();
    assert_eq!(
        metric(
            &server,
            "signet_proxy_tunnel_streams_total{direction=\"inbound\",result=\"denied\"}"
        ),
        1,
        "{server}"
    );
    assert_eq!(metric(&server, IN_STREAMS_OPENED), 0, "{server}");
}

#[test]
fn a_policy_change_resets_the_open_streams_of_a_revoked_peer() {
    let (mesh, _) = tunnel_mesh(ALLOW_CHECKOUT, "1h", "");
    mesh.revoke_checkout_and_expect_closed();
}

#[test]
fn svid_rotation_keeps_open_streams_and_new_tunnel_connections_use_the_new_svid() {
    let (mesh, _) = tunnel_mesh(ALLOW_CHECKOUT, "3", "");
    // ~8 s with 3 s SVIDs: both proxies rotate several times meanwhile, and
    // the stream opened on the first tunnel connection carries on.
    mesh.talk_through_rotations(8, 10);
    // New streams went to new tunnel connections, made with the new SVIDs
    // (a connection made with an expired SVID would be refused by the
    // inbound proxy, which checks the chain on every handshake).
    let opened = metric(&mesh.client_metrics(), OUT_OPENED);
    assert!(
        opened >= 2,
        "a new tunnel connection per rotation: {opened}"
    );
    assert_eq!(mesh.round_trip(b"fresh"), b"fresh");
}

#[test]
fn killing_the_upstream_proxy_fails_its_streams_at_once_and_the_pool_reconnects() {
    let (mut mesh, _) = tunnel_mesh(ALLOW_CHECKOUT, "1h", "");
    let mut open = Vec::new();
    for i in 0..20u8 {
        open.push(open_connection(&mesh, i));
    }
    assert_eq!(metric(&mesh.client_metrics(), OUT_OPENED), 1);
    mesh.server.child.kill().unwrap();
    mesh.server.child.wait().unwrap();
    let killed = Instant::now();
    for mut s in open {
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest);
        assert!(matches!(r, Ok(0)) || r.is_err(), "ended: {r:?}");
    }
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "streams must fail with their tunnel connection, took {took:?}"
    );
    // The same proxy again, on the same ports.
    let mut cmd = signet();
    cmd.args(["proxy", "run", "--config"])
        .arg(mesh.ca.dir.path().join("server.toml"));
    mesh.server = Daemon::spawn(cmd);
    mesh.server
        .wait_for("signet proxy ready", Duration::from_secs(20));
    let back = eventually(Duration::from_secs(10), "the pool reconnects", || {
        let b = mesh.round_trip(b"again");
        (b == b"again").then_some(b)
    });
    assert_eq!(back, b"again");
    assert_eq!(metric(&mesh.client_metrics(), OUT_OPENED), 2);
}

#[test]
fn an_hbone_client_on_gos_http2_stack_reaches_the_app_and_nothing_else() {
    let Some(go) = signet_test_support::go::go_client() else {
        return;
    };
    let (mesh, tunnel_port) = tunnel_mesh(ALLOW_CHECKOUT, "1h", "");
    // The Go client runs as this user on host a: it gets checkout's SVID.
    let socket = mesh.agent_a.endpoint();
    let tunnel = format!("127.0.0.1:{tunnel_port}");
    let run = |authority: &str| {
        signet_test_support::go::run(&go, &["hbone", &socket, &tunnel, authority, PAYMENTS])
    };
    let app = format!("127.0.0.1:{}", mesh.app.port);
    assert_eq!(run(&app), "status=200 echo_intact=true bytes=140000");
    // The address a caller dials without the tunnel names the app too.
    let service = format!("127.0.0.1:{}", mesh.server_port);
    assert_eq!(run(&service), "status=200 echo_intact=true bytes=140000");
    // Anything else is refused: never a relay.
    for other in [
        "127.0.0.1:22",
        &format!("127.0.0.1:{}", mesh.server_admin),
        "10.0.0.1:80",
    ] {
        assert_eq!(
            run(other),
            "status=400 error=target-not-allowed",
            "CONNECT {other}"
        );
    }
    assert_eq!(mesh.app.connections(), 2);
}

#[test]
fn a_tunnel_connection_carries_no_new_stream_once_the_peers_svid_has_expired() {
    let Some(go) = signet_test_support::go::go_client() else {
        return;
    };
    // 3-second SVIDs: the Go client keeps the connection it made with the
    // first SVID it fetched and opens a second stream on it 5 s later.
    let (mesh, tunnel_port) = tunnel_mesh(ALLOW_CHECKOUT, "3", "");
    let outcome = signet_test_support::go::run(
        &go,
        &[
            "hbone-later",
            &mesh.agent_a.endpoint(),
            &format!("127.0.0.1:{tunnel_port}"),
            &format!("127.0.0.1:{}", mesh.app.port),
            PAYMENTS,
            "5",
        ],
    );
    assert_eq!(
        outcome,
        "first: status=200 echo_intact=true bytes=140000; later: status=403 error=peer-svid-expired"
    );
    assert_eq!(
        mesh.app.connections(),
        1,
        "the late stream never reached the app"
    );
}

#[test]
fn a_tunnel_connection_carries_no_new_stream_once_its_peers_ca_key_is_revoked() {
    let Some(go) = signet_test_support::go::go_client() else {
        return;
    };
    // An SVID whose signing key is revoked after a compromise must stop
    // working at once, though it has not expired: a new connection would
    // fail its handshake, and a tunnel connection made with it before must
    // not go on opening streams. The Go HBONE client keeps the connection
    // it made with its first SVID (signed by the old key) across the
    // incident.
    let (mesh, tunnel_port) = tunnel_mesh(ALLOW_CHECKOUT, "1h", "");
    let (go, first) = signet_test_support::go::GoTwoStep::start(
        &go,
        &[
            "hbone-wait",
            &mesh.agent_a.endpoint(),
            &format!("127.0.0.1:{tunnel_port}"),
            &format!("127.0.0.1:{}", mesh.app.port),
            PAYMENTS,
        ],
    );
    assert_eq!(first, "first: status=200 echo_intact=true bytes=140000");
    mesh.revoke_the_signing_key();
    assert_eq!(go.again(), ["later: status=403 error=peer-svid-untrusted"]);
    assert_eq!(
        mesh.app.connections(),
        1,
        "the late stream never reached the app"
    );
    let server = mesh.server_metrics();
    assert_eq!(
        metric(
            &server,
            "signet_proxy_tunnel_streams_total{direction=\"inbound\",result=\"peer_svid_untrusted\"}"
        ),
        1,
        "{server}"
    );
    // The mesh itself carries on, on SVIDs of the new key.
    assert_eq!(
        mesh.round_trip(b"after the incident"),
        b"after the incident"
    );
}
