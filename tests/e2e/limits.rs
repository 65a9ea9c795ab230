//! Exhaustion without authentication: every listener's limits, each tested
//! on both sides (at the limit: served; past it: refused) with real
//! processes, and a legitimate client beside the flood that must not
//! notice it. Floods come from 127.0.0.2, legitimate clients from
//! 127.0.0.1, so per-address limits can tell them apart.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use signet_proto::node as pb;
use signet_test_support::*;

/// A TCP connection to `to` from 127.0.0.2 that sends nothing.
async fn idle_from_other_address(to: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether the server closed `s` within `wait` (EOF or reset), as opposed
/// to keeping it open.
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_flood_from_one_address_is_capped_and_timed_out_while_peers_get_through() {
    let mesh = Mesh::start_limited(
        ALLOW_CHECKOUT,
        PAYMENTS,
        "1h",
        "tcp",
        "[limits]\nhandshake_timeout = 2\nmax_handshakes_per_source = 4\n",
    );
    let inbound: SocketAddr = format!("127.0.0.1:{}", mesh.server_port).parse().unwrap();
    // At the limit: four silent connections from one address are held...
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(idle_from_other_address(inbound).await);
    }
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(300)).await,
            "a connection within the per-address limit was closed at once"
        );
    }
    // ...past it, the next is closed at accept.
    let mut fifth = idle_from_other_address(inbound).await;
    assert!(closed_within(&mut fifth, Duration::from_secs(1)).await);
    // A real peer from another address is not affected.
    let m = tokio::task::spawn_blocking(move || {
        assert_eq!(mesh.round_trip(b"legit"), b"legit");
        mesh
    })
    .await
    .unwrap();
    // The silent ones are dropped at the handshake timeout.
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(4)).await);
    }
    // (A connection is closed a moment before its timeout is counted.)
    let metrics = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(5), "4 timeouts counted", || {
            let metrics = m.server_metrics();
            metrics
                .contains("signet_proxy_handshake_failures_total{direction=\"inbound\",reason=\"timeout\"} 4")
                .then_some(metrics)
        })
    })
    .await
    .unwrap();
    assert!(
        metrics.contains(
            "signet_proxy_connections_refused_total{direction=\"inbound\",reason=\"max_per_source\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn an_idle_http_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    let mesh = Mesh::start_limited(
        "[[allow]]\nto = \"spiffe://example.org/ns/prod/sa/payments\"\nfrom = [\"spiffe://example.org/ns/prod/sa/checkout\"]\n",
        PAYMENTS,
        "1h",
        "http",
        "[limits]\nhttp_idle_timeout = 2\n",
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // One whole response: the head, then exactly Content-Length bytes (the
    // head and the body may arrive in separate reads).
    let request = |s: &mut std::net::TcpStream| {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: p\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        let head_end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed mid-response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        while got.len() < head_end + length {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed mid-body");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), head_end + length, "more than one response");
    };
    // Busy: a request every second for 4 s (twice the idle timeout).
    for _ in 0..4 {
        request(&mut s);
        std::thread::sleep(Duration::from_secs(1));
    }
    request(&mut s);
    // Idle: closed within the timeout plus the check interval.
    let start = Instant::now();
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(r.is_ok(), "{r:?}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
}

#[test]
fn workload_api_connections_are_capped_per_uid_and_other_users_are_served() {
    if !is_root() {
        eprintln!("!!! SKIPPING: needs root to run a client as another uid");
        return;
    }
    let ca = CaProcess::start(&[]);
    let cfg = ca.dir.path().join("agent.toml");
    std::fs::write(&cfg, "[limits]\nmax_connections_per_uid = 4\n").unwrap();
    let agent = AgentProcess::start(
        &ca,
        &ca.token("node-1"),
        &["--config", cfg.to_str().unwrap()],
    );
    ca.entry(
        "spiffe://example.org/nobody",
        "node-1",
        &["unix:uid:65534"],
        &[],
    );
    // uid 0 (this test) holds four idle connections: at the limit, kept.
    let mut held: Vec<std::os::unix::net::UnixStream> = (0..4)
        .map(|_| std::os::unix::net::UnixStream::connect(&agent.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut held {
        // The server's HTTP/2 preface may be there to read; EOF may not.
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 256];
        let open = loop {
            match s.read(&mut b) {
                Ok(0) => break false,
                Ok(_) => continue,
                Err(e) => break e.kind() == std::io::ErrorKind::WouldBlock,
            }
        };
        assert!(open, "a connection within the per-uid limit was closed");
    }
    // Past it: closed at accept.
    let mut fifth = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(fifth.read(&mut b), Ok(0) | Err(_)),
        "the fifth connection of one uid was kept"
    );
    // Another user's workload is served all the same.
    use std::os::unix::process::CommandExt;
    let out = signet()
        .args(["id", "show", "--socket"])
        .arg(&agent.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/nobody"));
}

/// A node API client connecting from 127.0.0.2 without a client
/// certificate (what anyone on the network can do).
async fn anonymous_node_client(
    ca: &CaProcess,
) -> signet_proto::node::node_client::NodeClient<tonic::transport::Channel> {
    let connector =
        tokio_rustls::TlsConnector::from(anonymous_node_tls(&ca.run_ok(&["bundle", "show"])));
    let target: SocketAddr = ca.node_addr().parse().unwrap();
    let channel = tonic::transport::Endpoint::from_static("http://signet-ca")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = idle_from_other_address(target).await;
                let name = rustls::pki_types::ServerName::try_from("signet-ca").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    signet_proto::node::node_client::NodeClient::new(channel)
}

fn ca_with_limits(limits: &str) -> CaProcess {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ca.toml");
    std::fs::write(&cfg, format!("[limits]\n{limits}")).unwrap();
    CaProcess::start_in(dir, &["--config", cfg.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn bogus_join_tokens_are_throttled_per_address_and_a_real_agent_still_attests() {
    let ca = ca_with_limits("attestation_failures_per_minute = 5\n");
    let mut flood = anonymous_node_client(&ca).await;
    let csr = signet_agent::agent_identity::new_key_and_csr().unwrap().1;
    let mut codes = Vec::new();
    for i in 0..8 {
        let status = flood
            .attest_agent(pb::AttestAgentRequest {
                join_token: format!("bogus-{i}"),
                csr: csr.clone(),
            })
            .await
            .unwrap_err();
        codes.push(status.code());
    }
    // At the budget: each bogus token is looked up and refused; past it,
    // the address is refused before any lookup.
    assert_eq!(codes[..5], [tonic::Code::PermissionDenied; 5]);
    assert_eq!(codes[5..], [tonic::Code::ResourceExhausted; 3]);
    // A real agent from another address attests at once.
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    assert!(agent.socket.exists());
    let (_, m) = ca.http_get("/metrics");
    assert!(
        m.contains("signet_ca_node_refusals_total{reason=\"rate_limited\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("signet_ca_node_refusals_total{reason=\"unknown_token\"} 5"),
        "{m}"
    );
}

/// The same budget holds on the `AttestNode` stream, for every method: at
/// the budget each attempt is judged, past it the address is refused before
/// its evidence is looked at.
#[tokio::test(flavor = "multi_thread")]
async fn the_attestation_budget_covers_every_method_on_the_attest_node_stream() {
    let ca = ca_with_limits("attestation_failures_per_minute = 3\n");
    let mut flood = anonymous_node_client(&ca).await;
    let csr = signet_agent::agent_identity::new_key_and_csr().unwrap().1;
    let mut codes = Vec::new();
    for i in 0..6 {
        let evidence = if i % 2 == 0 {
            pb::attestation_start::Evidence::JoinToken(format!("bogus-{i}"))
        } else {
            pb::attestation_start::Evidence::X509pop(pb::X509PopEvidence {
                cert_chain: vec![b"junk".to_vec()],
            })
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::AttestNodeRequest {
            step: Some(pb::attest_node_request::Step::Start(pb::AttestationStart {
                csr: csr.clone(),
                evidence: Some(evidence),
            })),
        })
        .await
        .unwrap();
        let code = match flood
            .attest_node(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Err(s) => s.code(),
            Ok(r) => r.into_inner().message().await.unwrap_err().code(),
        };
        codes.push(code);
    }
    use tonic::Code;
    // Judged: a bogus token, x509pop on a CA without it, a bogus token.
    assert_eq!(
        codes[..3],
        [
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::PermissionDenied
        ]
    );
    assert_eq!(codes[3..], [Code::ResourceExhausted; 3]);
    let (_, m) = ca.http_get("/metrics");
    assert!(
        m.contains("signet_ca_node_refusals_total{reason=\"rate_limited\"} 3"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_csr_does_not_burn_the_join_token_and_is_counted() {
    let ca = CaProcess::start(&[]);
    let token = ca.token("node-1");
    let mut client = anonymous_node_client(&ca).await;
    let status = client
        .attest_agent(pb::AttestAgentRequest {
            join_token: token.clone(),
            csr: b"not a CSR".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not used"), "{status:?}");
    // The same token still attests a real agent.
    let agent = AgentProcess::start(&ca, &token, &[]);
    assert!(agent.socket.exists());
    let (_, m) = ca.http_get("/metrics");
    assert!(
        m.contains("signet_ca_x509_svid_issuance_failures_total{reason=\"malformed_csr\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_node_api_connections_are_capped_per_address() {
    let ca = ca_with_limits("max_unauthenticated_per_source = 3\n");
    let node: SocketAddr = ca.node_addr().parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(idle_from_other_address(node).await);
    }
    for s in &mut held {
        assert!(!closed_within(s, Duration::from_millis(300)).await);
    }
    let mut fourth = idle_from_other_address(node).await;
    assert!(closed_within(&mut fourth, Duration::from_secs(1)).await);
    // Agents from other addresses attest and are served meanwhile.
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    assert!(agent.socket.exists());
    let (_, m) = ca.http_get("/metrics");
    assert!(
        m.contains("signet_ca_node_refusals_total{reason=\"max_per_source\"} 1"),
        "{m}"
    );
}

/// Sends a line to 127.0.0.1:`port` as uid 65534; returns what came back.
fn call_as_nobody(port: u16) -> String {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket\ns=socket.create_connection(('127.0.0.1',{port}))\nd=b''\ntry:\n  s.sendall(b'borrowed')\n  s.shutdown(socket.SHUT_WR)\n  while True:\n    c=s.recv(100)\n    if not c: break\n    d+=c\nexcept OSError:\n  pass\nprint(d.decode())"
            ),
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn another_local_user_cannot_borrow_a_workloads_identity_through_its_outbound_listener() {
    if !is_root() {
        eprintln!("!!! SKIPPING: needs root to connect as another uid");
        return;
    }
    let mut mesh = Mesh::start(ALLOW_CHECKOUT, PAYMENTS, "1h");
    // The proxy's own user is served...
    assert_eq!(mesh.round_trip(b"mine"), b"mine");
    let before = mesh.app.connections();
    // ...uid 65534 gets nothing, and the app never sees it.
    assert_eq!(call_as_nobody(mesh.client_port), "");
    assert_eq!(mesh.app.connections(), before);
    // Allowed explicitly, it is served.
    mesh.start_client_with(PAYMENTS, "allowed_uids = [65534]\n");
    assert_eq!(call_as_nobody(mesh.client_port), "borrowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_api_streams_are_capped_per_uid_and_a_closed_stream_frees_its_place() {
    use signet_proto::workload::{X509BundlesRequest, X509svidRequest};
    let ca = CaProcess::start(&[]);
    let cfg = ca.dir.path().join("agent.toml");
    std::fs::write(&cfg, "[limits]\nmax_streams_per_uid = 3\n").unwrap();
    let agent = AgentProcess::start(
        &ca,
        &ca.token("node-1"),
        &["--config", cfg.to_str().unwrap()],
    );
    ca.entry(
        "spiffe://example.org/w",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let mut client = workload_api_client(&agent.socket).await;
    // Wait for the SVID, on a stream that is closed at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client
            .fetch_x509svid(with_security_header(X509svidRequest {}))
            .await;
        if let Ok(mut s) = r {
            if s.get_mut().message().await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no SVID");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // At the limit: three open streams, of two kinds, are served...
    let mut svid_streams = Vec::new();
    for _ in 0..2 {
        let mut s = client
            .fetch_x509svid(with_security_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().unwrap();
        svid_streams.push(s);
    }
    let mut held_bundles = client
        .fetch_x509_bundles(with_security_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    held_bundles.message().await.unwrap().unwrap();
    // ...past it, the next is refused.
    let refused = client
        .fetch_x509svid(with_security_header(X509svidRequest {}))
        .await
        .expect_err("a fourth stream");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // A closed stream frees its place (the agent sees the reset), and many
    // short streams in a row never leak one.
    drop(held_bundles);
    for _ in 0..20 {
        let got = eventually_async(Duration::from_secs(5), || {
            let mut c = client.clone();
            async move {
                let mut s = c
                    .fetch_x509svid(with_security_header(X509svidRequest {}))
                    .await
                    .ok()?
                    .into_inner();
                s.message().await.ok().flatten()
            }
        })
        .await;
        assert_eq!(got.svids.len(), 1);
    }
    drop(svid_streams);
}

/// Retries the async `f` every 50 ms until it returns `Some`, or panics.
async fn eventually_async<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_listener_holds_max_connections_and_frees_a_place_when_one_closes() {
    let mesh = Mesh::start_limited(
        ALLOW_CHECKOUT,
        PAYMENTS,
        "1h",
        "tcp",
        "[limits]\nmax_connections = 3\n",
    );
    let inbound: SocketAddr = format!("127.0.0.1:{}", mesh.server_port).parse().unwrap();
    // At the limit: three connections are held open...
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(inbound).await.unwrap());
    }
    for s in &mut held {
        assert!(!closed_within(s, Duration::from_millis(300)).await);
    }
    // ...past it, the next is closed at accept, from any address.
    let mut fourth = tokio::net::TcpStream::connect(inbound).await.unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(1)).await);
    // One closes: its place is free again, for a real peer too.
    drop(held.pop());
    drop(held);
    let mesh = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(5), "a place for the real peer", || {
            let r = std::panic::catch_unwind(|| mesh.round_trip(b"legit"));
            r.ok().filter(|b| b == b"legit")
        });
        mesh
    })
    .await
    .unwrap();
    let m = mesh.server_metrics();
    assert!(
        m.contains(
            "signet_proxy_connections_refused_total{direction=\"inbound\",reason=\"max_connections\"}"
        ),
        "{m}"
    );
}

/// An authenticated connection keeps its place under `max_connections` for
/// as long as it is open, not just through its handshake: peers holding
/// established connections (relayed ones here; a tunnel connection or an
/// idle HTTP/2 connection of a peer that policy denies alike) cannot open
/// more than the cap.
#[test]
fn established_connections_hold_their_place_under_max_connections() {
    let mesh = Mesh::start_limited(
        ALLOW_CHECKOUT,
        PAYMENTS,
        "1h",
        "tcp",
        "[limits]\nmax_connections = 3\n",
    );
    let echo = |s: &mut std::net::TcpStream, msg: &str| {
        s.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg.as_bytes());
    };
    // At the cap: three connections through the pair, each authenticated
    // and relayed, held open.
    let mut held: Vec<std::net::TcpStream> = (0..3)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            echo(&mut s, &format!("held {i}"));
            s
        })
        .collect();
    // Past it: their handshakes are long over, and still a fourth
    // connection is closed at accept.
    let mut fourth = std::net::TcpStream::connect(("127.0.0.1", mesh.server_port)).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    let r = fourth.read(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "a fourth connection was admitted beside three established ones: {r:?}"
    );
    let m = mesh.server_metrics();
    assert!(
        m.contains(
            "signet_proxy_connections_refused_total{direction=\"inbound\",reason=\"max_connections\"}"
        ),
        "{m}"
    );
    // The three held ones are served all along.
    for (i, s) in held.iter_mut().enumerate() {
        echo(s, &format!("still {i}"));
    }
    // They close: their places are free again.
    drop(held);
    eventually(
        Duration::from_secs(5),
        "a place for a new connection",
        || (mesh.round_trip(b"after") == b"after").then_some(()),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_without_an_agent_svid_is_closed_after_unauthenticated_lifetime() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = ca_with_limits("unauthenticated_lifetime = 2\n");
    let connector =
        tokio_rustls::TlsConnector::from(anonymous_node_tls(&ca.run_ok(&["bundle", "show"])));
    let tcp = idle_from_other_address(ca.node_addr().parse().unwrap()).await;
    let name = rustls::pki_types::ServerName::try_from("signet-ca").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // A well-behaved HTTP/2 client that then sends nothing more.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed_after = loop {
        match tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break start.elapsed(),
            Ok(Ok(_)) => continue, // SETTINGS, GOAWAY: keep reading to the close
            Err(_) => panic!("still open after 15 s"),
        }
    };
    // Kept for its lifetime, then closed (lifetime + at most the 5 s grace).
    assert!(
        closed_after >= Duration::from_millis(1800) && closed_after < Duration::from_secs(9),
        "closed after {closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_an_agent_svid_are_capped_at_16_kib() {
    let ca = CaProcess::start(&[]);
    let mut client = anonymous_node_client(&ca).await;
    let attest = |token_len: usize| pb::AttestAgentRequest {
        join_token: "t".repeat(token_len),
        csr: Vec::new(),
    };
    // Under the cap: the request is read and judged (a malformed CSR).
    let under = client.attest_agent(attest(15 * 1024)).await.unwrap_err();
    assert_eq!(under.code(), tonic::Code::InvalidArgument, "{under:?}");
    // Over it: refused before it is decoded.
    let over = client.attest_agent(attest(17 * 1024)).await.unwrap_err();
    assert_ne!(over.code(), tonic::Code::InvalidArgument, "{over:?}");
    assert!(over.message().contains("too large"), "{over:?}");

    // The same cap on each message of the AttestNode stream.
    let csr = signet_agent::agent_identity::new_key_and_csr().unwrap().1;
    for (len, judged) in [(15 * 1024, true), (17 * 1024, false)] {
        let mut client = anonymous_node_client(&ca).await;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::AttestNodeRequest {
            step: Some(pb::attest_node_request::Step::Start(pb::AttestationStart {
                csr: csr.clone(),
                evidence: Some(pb::attestation_start::Evidence::JoinToken("t".repeat(len))),
            })),
        })
        .await
        .unwrap();
        let status = match client
            .attest_node(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Err(s) => s,
            Ok(r) => r.into_inner().message().await.unwrap_err(),
        };
        if judged {
            // Read and judged: an unknown token.
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        } else {
            assert!(status.message().contains("too large"), "{status:?}");
        }
    }
}

/// One HTTP/1.1 request with `extra` header lines through the outbound
/// proxy: the response's status code (0 when the connection closed first).
fn status_with_headers(mesh: &Mesh, extra: &[(String, String)]) -> u16 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = String::from("GET /x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn http_header_count_and_size_limits_hold_on_both_sides() {
    let mesh = Mesh::start_limited(
        ALLOW_CHECKOUT,
        PAYMENTS,
        "1h",
        "http",
        "[limits]\nhttp_max_headers = 20\nhttp_max_header_bytes = 8192\n",
    );
    let headers = |n: usize, len: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("x-h{i}"), "v".repeat(len)))
            .collect()
    };
    // Well under both limits (the proxies add a few headers of their own).
    assert_eq!(status_with_headers(&mesh, &headers(8, 10)), 200);
    // Past the count: refused before the app.
    assert_ne!(status_with_headers(&mesh, &headers(40, 10)), 200);
    // Past the size (few fields, many bytes): refused too.
    assert_ne!(status_with_headers(&mesh, &headers(2, 5000)), 200);
    // Under the size with the same few fields: served.
    assert_eq!(status_with_headers(&mesh, &headers(2, 3000)), 200);
}

/// A TCP connection to `to` from `from` that sends nothing.
async fn idle_from(from: std::net::Ipv4Addr, to: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// Of `conns`, how many the server still holds open (no EOF or reset
/// within a moment).
async fn still_open(conns: &mut [tokio::net::TcpStream]) -> usize {
    let mut open = 0;
    for c in conns.iter_mut() {
        if !closed_within(c, Duration::from_millis(30)).await {
            open += 1;
        }
    }
    open
}

/// How many of `conns` the server holds open once at most `expected` are
/// (waiting up to 10 s: one still in the accept backlog looks open too).
async fn settled(conns: &mut [tokio::net::TcpStream], expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = still_open(conns).await;
        if held <= expected || Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The OIDC discovery listener has limits of its own: a flood of idle
/// connections, from one address or from many, gets at most its per-source
/// and listener caps, is closed after the header timeout, and takes no
/// descriptor from the admin socket, the node API or the metrics listener
/// (the CA runs under an open-file limit the flood alone would exceed).
#[tokio::test(flavor = "multi_thread")]
async fn an_oidc_flood_takes_no_descriptors_from_the_other_listeners() {
    signet_identity::admission::raise_fd_limit();
    let oidc_port = signet_test_support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ca.toml");
    std::fs::write(
        &cfg,
        format!(
            "[limits]\nmax_connections = 200\n[oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\nissuer = \"https://oidc.example.org\"\nmax_connections = 100\nmax_connections_per_source = 8\nheader_timeout = 5\n"
        ),
    )
    .unwrap();
    // 100 (OIDC) + 64 (metrics) + 64 (admin) + 256 reserved + 200 (node).
    let ca = CaProcess::start_with_nofile(700, &["--config", cfg.to_str().unwrap()]);
    let oidc: SocketAddr = format!("127.0.0.1:{oidc_port}").parse().unwrap();
    let discovery = move || http_get(oidc_port, "/.well-known/openid-configuration").0;
    assert_eq!(discovery(), 200);

    // One address: its share and no more; others are still served.
    let mut one = Vec::new();
    for _ in 0..50 {
        one.push(idle_from("127.0.0.2".parse().unwrap(), oidc).await);
    }
    // Until the CA has taken every one from its backlog (one not yet
    // accepted looks open too).
    let held = settled(&mut one, 8).await;
    println!("one address, 50 idle connections: {held} held open");
    assert_eq!(held, 8, "max_connections_per_source");
    assert_eq!(tokio::task::spawn_blocking(discovery).await.unwrap(), 200);

    // Many addresses, 800 connections in all, more than the CA's whole
    // open-file limit: the listener holds its cap, nothing more.
    let mut many = Vec::new();
    for i in 0..800u32 {
        let from = std::net::Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
        many.push(idle_from(from, oidc).await);
    }
    let held = settled(&mut many, 100 - 8).await;
    let held_one = still_open(&mut one).await;
    println!("800 idle connections from 800 addresses: {held} held open (and {held_one} of the first 50)");
    assert!(
        held + held_one <= 100,
        "max_connections: {held} + {held_one}"
    );
    // Meanwhile the admin socket, the node API (a new agent attests and
    // gets its SVID) and the metrics listener all work.
    let ca = tokio::task::spawn_blocking(move || {
        let token = ca.token("node-during-flood");
        let agent = AgentProcess::start(&ca, &token, &[]);
        ca.entry(
            "spiffe://example.org/during-flood",
            "node-during-flood",
            &[&format!("unix:uid:{}", my_uid())],
            &[],
        );
        let (code, metrics) = ca.http_get("/metrics");
        assert_eq!(code, 200);
        for reason in ["max_connections", "max_per_source"] {
            assert!(
                metrics.contains(&format!(
                    "signet_ca_listener_refusals_total{{listener=\"oidc\",reason=\"{reason}\"}}"
                )),
                "{metrics}"
            );
        }
        drop(agent);
        ca
    })
    .await
    .unwrap();
    // After the header timeout the idle connections are gone, and the
    // listener serves again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(settled(&mut one, 0).await, 0);
    assert_eq!(settled(&mut many, 0).await, 0);
    assert_eq!(tokio::task::spawn_blocking(discovery).await.unwrap(), 200);
    let mut ca = ca;
    ca.daemon.stop_and_read_log();
    let refusals = ca.daemon.lines_with(&["connection refused", "oidc"]);
    println!(
        "{} refusal log lines, e.g. {:?}",
        refusals.len(),
        refusals.first()
    );
    let from_one: Vec<_> = refusals
        .iter()
        .filter(|l| l.contains("127.0.0.2") && l.contains("max_per_source"))
        .collect();
    assert_eq!(from_one.len(), 1, "once per client and limit: {from_one:?}");
}

/// An agent whose first attestation meets a limit (here: its address holds
/// its share of unauthenticated node API connections, as a rack behind one
/// NAT starting at once does) waits and tries again with backoff instead of
/// exiting; the join token is still unused, so it attests once the CA has
/// room. The CA logs the refusal once per client and limit, and counts it.
#[test]
fn an_agent_refused_at_a_limit_on_its_first_start_tries_again_and_attests() {
    // The held connections stay until the test drops them.
    let mut ca = ca_with_limits("max_unauthenticated_per_source = 2\nhandshake_timeout = 120\n");
    // Two connections that never handshake: 127.0.0.1's whole share.
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(ca.node_addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let token = ca.token("patient");
    let (_dir, cmd, _socket) = AgentProcess::command(&ca, &token, &[]);
    let mut agent = Daemon::spawn(cmd);
    let line = agent.wait_for("attestation failed", Duration::from_secs(15));
    println!("{line}");
    assert!(line.contains("still unused"), "{line}");
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent gave up"
    );
    // The CA makes room (the held connections end): the agent attests.
    drop(held);
    agent.wait_for("signet agent ready", Duration::from_secs(60));
    let (_, metrics) = ca.http_get("/metrics");
    assert!(
        metric(
            &metrics,
            "signet_ca_node_refusals_total{reason=\"max_per_source\"}"
        ) >= 1,
        "{metrics}"
    );
    ca.daemon.stop_and_read_log();
    let logged = ca
        .daemon
        .lines_with(&["connection refused by a limit", "max_per_source"]);
    println!("{logged:?}");
    assert_eq!(logged.len(), 1, "once per client and limit a minute");
    assert!(logged[0].contains("node_api") && logged[0].contains("127.0.0.1"));
}
