//! End-to-end tests of the sidecar proxy: CA, two agents and two proxies as
//! real processes, an echo app behind the inbound proxy.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signet_test_support::*;

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn an_allowed_identity_gets_through_with_bytes_intact_both_ways() {
    let mesh = Mesh::start(ALLOW_CHECKOUT, PAYMENTS, "1h");
    assert_eq!(mesh.round_trip(b"hello payments"), b"hello payments");
    let big = pseudo_random(16 * 1024 * 1024 + 123);
    let back = mesh.round_trip(&big);
    assert_eq!(back.len(), big.len());
    assert!(back == big, "16 MiB came back altered");
    let m = mesh.server_metrics();
    assert!(
        m.contains(&format!(
            "signet_proxy_connections_total{{direction=\"inbound\",peer=\"{CHECKOUT}\"}} 2"
        )),
        "{m}"
    );
    assert!(m.contains("signet_proxy_authorization_decisions_total{decision=\"allow\",rule=\"payments.toml:2 (allow)\"} 2"), "{m}");
}

#[test]
fn a_denied_identity_is_refused_and_the_app_sees_nothing() {
    let mesh = Mesh::start(ALLOW_WEB_ONLY, PAYMENTS, "1h");
    assert_eq!(mesh.round_trip(b"let me in"), b"");
    assert_eq!(
        mesh.app.connections(),
        0,
        "not a single connection may reach the app"
    );
    let m = mesh.server_metrics();
    assert!(
        m.contains(
            "signet_proxy_authorization_decisions_total{decision=\"deny\",rule=\"default-deny\"} 1"
        ),
        "{m}"
    );
}

#[test]
fn the_outbound_side_refuses_an_upstream_with_the_wrong_identity() {
    let mesh = Mesh::start(
        ALLOW_CHECKOUT,
        "spiffe://example.org/ns/prod/sa/ledger",
        "1h",
    );
    assert_eq!(mesh.round_trip(b"secret"), b"");
    assert_eq!(mesh.app.connections(), 0);
}

/// A rustls client configuration presenting `chain`/`key`, trusting the
/// mesh's bundle, with TLS 1.3 session resumption.
fn direct_client_config(
    mesh: &Mesh,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> Arc<rustls::ClientConfig> {
    let bundle = signet_identity::TrustBundle::from_pem(
        signet_identity::TrustDomain::new("example.org").unwrap(),
        &mesh.ca.run_ok(&["bundle", "show"]),
    )
    .unwrap();
    let verifier = signet_identity::tls::SpiffeServerVerifier::new(
        signet_identity::tls::BundleHandle::new(bundle),
        Arc::new(|_: &signet_identity::SpiffeId| true),
    );
    let config = rustls::ClientConfig::builder_with_provider(signet_identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            chain,
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Arc::new(config)
}

/// Connects straight to the inbound proxy with `config`; returns the kind
/// of handshake (None if it failed) and whether an echo came back.
fn tls_echo(
    mesh: &Mesh,
    config: Arc<rustls::ClientConfig>,
) -> (Option<rustls::HandshakeKind>, bool) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", mesh.server_port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("x").unwrap();
        let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        else {
            return (None, false);
        };
        let kind = tls.get_ref().1.handshake_kind();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if tls.write_all(b"ping").await.is_err() {
            return (kind, false);
        }
        let mut buf = [0u8; 4];
        let echoed = matches!(
            tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await,
            Ok(Ok(_))
        );
        (kind, echoed)
    })
}

/// A rustls client presenting `chain`/`key` straight to the inbound proxy;
/// returns whether any echo came back.
fn direct_tls(
    mesh: &Mesh,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> bool {
    tls_echo(mesh, direct_client_config(mesh, chain, key)).1
}

/// An issuer holding the mesh CA's real signing key, to mint SVIDs with
/// properties the CA would never issue.
fn real_issuer(mesh: &Mesh) -> signet_identity::testing::TestIssuer {
    let key_dir = mesh.ca.dir.path().join("data/keys");
    // The X.509 signing key (JWT keys are jwt-*.pk8 beside it).
    let key_file = std::fs::read_dir(&key_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pem"))
        .unwrap();
    let root_pem = mesh.ca.run_ok(&["bundle", "show"]);
    signet_identity::testing::TestIssuer {
        der: signet_identity::certificates_from_pem(&root_pem).unwrap()[0].clone(),
        key: rcgen::KeyPair::from_pem(&std::fs::read_to_string(key_file).unwrap()).unwrap(),
        chain: Vec::new(),
    }
}

#[test]
fn foreign_trust_domain_expired_and_plaintext_peers_are_refused() {
    use signet_identity::testing::{LeafSpec, TestCa as MintCa};
    let mesh = Mesh::start(
        r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org", "spiffe://other.org"]
"#,
        PAYMENTS,
        "1h",
    );
    // Control: a valid SVID minted with the real CA key is let through.
    let real = real_issuer(&mesh);
    let (chain, key) = real.leaf(&LeafSpec::valid("spiffe://example.org/ns/prod/sa/any"));
    assert!(
        direct_tls(&mesh, chain, &key),
        "control: a valid SVID must pass"
    );
    let before = mesh.app.connections();

    // Expired, signed by the real CA.
    let mut spec = LeafSpec::valid("spiffe://example.org/ns/prod/sa/any");
    spec.not_before = std::time::SystemTime::now() - Duration::from_secs(7200);
    spec.not_after = std::time::SystemTime::now() - Duration::from_secs(60);
    let (chain, key) = real.leaf(&spec);
    assert!(!direct_tls(&mesh, chain, &key), "expired SVID accepted");
    // CA-flagged leaf, signed by the real CA.
    let mut spec = LeafSpec::valid("spiffe://example.org/ns/prod/sa/any");
    spec.is_ca = true;
    let (chain, key) = real.leaf(&spec);
    assert!(!direct_tls(&mesh, chain, &key), "CA-flagged leaf accepted");
    // Another trust domain's CA, even for an ID policy would allow.
    let foreign = MintCa::new("other.org");
    let (chain, key) = foreign.leaf(&LeafSpec::valid("spiffe://other.org/ns/prod/sa/any"));
    assert!(
        !direct_tls(&mesh, chain, &key),
        "foreign trust domain accepted"
    );
    // A foreign CA minting an ID in our trust domain.
    let (chain, key) = foreign.leaf(&LeafSpec::valid("spiffe://example.org/ns/prod/sa/checkout"));
    assert!(!direct_tls(&mesh, chain, &key), "foreign CA accepted");
    // Plaintext.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mesh.server_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        !out.windows(3).any(|w| w == b"GET"),
        "plaintext must not be echoed"
    );
    assert_eq!(
        mesh.app.connections(),
        before,
        "refused peers never reach the app"
    );
    let m = mesh.server_metrics();
    assert!(m.contains("reason=\"peer_svid_expired\""), "{m}");
    assert!(m.contains("reason=\"not_tls\""), "{m}");
}

#[test]
fn an_expired_svid_cannot_come_back_through_tls_session_resumption() {
    use signet_identity::testing::LeafSpec;
    let mesh = Mesh::start(
        r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org"]
"#,
        PAYMENTS,
        "1h",
    );
    // An SVID from the real CA key that expires in a few seconds.
    let mut spec = LeafSpec::valid("spiffe://example.org/ns/prod/sa/short");
    let expiry = std::time::SystemTime::now() + Duration::from_secs(4);
    spec.not_after = expiry;
    let (chain, key) = real_issuer(&mesh).leaf(&spec);
    let config = direct_client_config(&mesh, chain, &key);
    assert_eq!(
        tls_echo(&mesh, config.clone()),
        (Some(rustls::HandshakeKind::Full), true)
    );
    // Control: while the SVID is valid, resumption works and is served.
    assert_eq!(
        tls_echo(&mesh, config.clone()),
        (Some(rustls::HandshakeKind::Resumed), true),
        "the test needs the proxy to resume sessions"
    );
    let before = mesh.app.connections();
    while std::time::SystemTime::now() < expiry + Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Expired: the resumed session (no certificate sent) must be refused.
    let (kind, echoed) = tls_echo(&mesh, config);
    assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
    assert!(!echoed, "an expired SVID was served through resumption");
    assert_eq!(
        mesh.app.connections(),
        before,
        "the app saw the expired peer"
    );
    let m = mesh.server_metrics();
    assert!(
        m.contains("signet_proxy_handshake_failures_total{direction=\"inbound\",reason=\"peer_svid_expired\"} 1"),
        "{m}"
    );
}

#[test]
fn a_policy_change_applies_without_restart_and_a_broken_file_keeps_the_last_good_policy() {
    let mesh = Mesh::start(ALLOW_WEB_ONLY, PAYMENTS, "1h");
    assert_eq!(mesh.round_trip(b"x"), b"");
    std::fs::write(mesh.policy_dir.join("payments.toml"), ALLOW_CHECKOUT).unwrap();
    eventually(
        Duration::from_secs(10),
        "the new policy to allow checkout",
        || (mesh.round_trip(b"now?") == b"now?").then_some(()),
    );
    // A broken file: rejected, and checkout is still allowed.
    std::fs::write(
        mesh.policy_dir.join("zz-broken.toml"),
        "[[deny]]\nto = \"spiffe://example.org/ns/prod/sa/payments\"\nfrom = [\"not an id\"]\n",
    )
    .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            mesh.round_trip(b"still"),
            b"still",
            "a broken file must not change the policy in force"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = mesh.server_metrics();
    assert!(
        m.contains("signet_proxy_policy_reloads_total{result=\"failure\"}"),
        "{m}"
    );
    // `signet policy check` names the file and line.
    let out = signet()
        .args(["policy", "check"])
        .arg(&mesh.policy_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("zz-broken.toml:3"),
        "{err}"
    );
}

#[test]
fn a_policy_change_closes_the_open_connections_of_a_revoked_peer() {
    let mesh = Mesh::start(ALLOW_CHECKOUT, PAYMENTS, "1h");
    // A second connection whose peer stays allowed under the next policy
    // is not a concern here: only checkout calls payments in this mesh.
    mesh.revoke_checkout_and_expect_closed();
}

#[test]
fn a_dry_run_rule_is_counted_and_logged_but_not_enforced() {
    let mesh = Mesh::start(
        &format!(
            "{ALLOW_CHECKOUT}\n[[deny]]\nmode = \"audit\"\nto = \"{PAYMENTS}\"\nfrom = [\"{CHECKOUT}\"]\n"
        ),
        PAYMENTS,
        "1h",
    );
    assert_eq!(
        mesh.round_trip(b"dry"),
        b"dry",
        "audit rules decide nothing"
    );
    let m = mesh.server_metrics();
    assert!(
        m.contains("signet_proxy_authorization_decisions_total{decision=\"would_deny\",rule=\"payments.toml:6 (audit deny)\"} 1"),
        "{m}"
    );
}

#[test]
fn an_svid_rotation_during_a_long_lived_connection_does_not_break_it() {
    let mesh = Mesh::start(ALLOW_CHECKOUT, PAYMENTS, "3");
    // ~8 s with 3 s SVIDs: both proxies rotate several times meanwhile. New
    // connections keep working across rotations too, although their
    // session tickets were made with SVIDs since replaced.
    mesh.talk_through_rotations(8, 4);
    // New connections use the new SVIDs.
    assert_eq!(mesh.round_trip(b"fresh"), b"fresh");
    // And a rotation did happen in the inbound proxy meanwhile.
    let mut mesh = mesh;
    mesh.server.wait_for("first=false", Duration::from_secs(1));
}

#[test]
fn session_tickets_older_than_the_upstreams_svid_fall_back_to_a_full_handshake() {
    // The upstream rotates every ~1.5 s (3 s SVIDs); the caller's own SVID
    // is a static one-hour SVID, so its tickets are never dropped because
    // its own SVID changed: only the upstream's expiry makes them stale.
    let mut mesh = Mesh::start(ALLOW_CHECKOUT, PAYMENTS, "3");
    let issuer = real_issuer(&mesh);
    let dir = mesh.ca.dir.path().to_owned();
    let (chain, key) = issuer.leaf(&signet_identity::testing::LeafSpec::valid(CHECKOUT));
    std::fs::write(
        dir.join("static.pem"),
        signet_identity::certificates_to_pem(&chain),
    )
    .unwrap();
    std::fs::write(dir.join("static.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("bundle.pem"), mesh.ca.run_ok(&["bundle", "show"])).unwrap();
    let port = signet_test_support::free_port();
    let cfg = dir.join("static-client.toml");
    std::fs::write(
        &cfg,
        format!(
            "svid_file = \"{0}/static.pem\"\nsvid_key_file = \"{0}/static.key\"\nbundle_file = \"{0}/bundle.pem\"\nadmin_listen = \"127.0.0.1:0\"\n[[outbound]]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{1}\"\nserver_id = \"{PAYMENTS}\"\n",
            dir.display(),
            mesh.server_port
        ),
    )
    .unwrap();
    let mut cmd = signet();
    cmd.args(["proxy", "run", "--config"]).arg(&cfg);
    let mut client = Daemon::spawn(cmd);
    client.wait_for("signet proxy ready", Duration::from_secs(20));
    mesh.client = Some(client);
    mesh.client_port = port;
    // Every new connection succeeds for ~7 s, across several upstream
    // rotations, although most offer a ticket whose server SVID expired.
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(7) {
        assert_eq!(mesh.round_trip(b"again"), b"again", "connection {n}");
        n += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let client_log = {
        let c = mesh.client.as_mut().unwrap();
        c.terminate();
        c.log.join("\n")
    };
    assert!(
        !client_log
            .lines()
            .any(|l| l.contains("WARN") && l.contains("resumed session refused")),
        "no connection failed for a stale ticket:\n{client_log}"
    );
}

#[test]
fn a_proxy_whose_entry_is_deleted_stops_using_the_identity_at_once() {
    let mesh = Mesh::start(ALLOW_CHECKOUT, PAYMENTS, "1h");
    assert_eq!(mesh.round_trip(b"before"), b"before");
    assert_eq!(http_get(mesh.server_admin, "/ready").0, 200);
    let listed: serde_json::Value = serde_json::from_str(&mesh.ca.run_ok(&[
        "entry",
        "list",
        "--spiffe-id",
        PAYMENTS,
        "--output",
        "json",
    ]))
    .unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    mesh.ca.run_ok(&["entry", "delete", &id]);
    // Within moments, not at the SVID's expiry an hour from now.
    eventually(
        Duration::from_secs(10),
        "the proxy to drop its identity",
        || (http_get(mesh.server_admin, "/ready").0 == 503).then_some(()),
    );
    assert!(
        mesh.round_trip(b"after").is_empty(),
        "a withdrawn identity was used"
    );
}

#[test]
fn before_the_first_svid_the_proxy_is_not_ready_and_accepts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    let (port, admin) = (
        signet_test_support::free_port(),
        signet_test_support::free_port(),
    );
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "workload_api_socket = \"unix://{}/no-agent.sock\"\npolicy_dir = \"{}/policies\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[inbound]\nlisten = \"127.0.0.1:{port}\"\nforward_to = \"127.0.0.1:9\"\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut cmd = signet();
    cmd.args(["proxy", "run", "--config"]).arg(&cfg);
    let mut d = Daemon::spawn(cmd);
    d.wait_for(
        "waiting for an SVID from the agent",
        Duration::from_secs(10),
    );
    let (code, body) = eventually(Duration::from_secs(5), "the admin port", || {
        std::net::TcpStream::connect(("127.0.0.1", admin))
            .ok()
            .map(|_| http_get(admin, "/ready"))
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("waiting for an SVID"), "{body}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no listener before the first SVID"
    );
}

#[test]
fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let mut mesh = Mesh::start(ALLOW_CHECKOUT, PAYMENTS, "1h");
    let mut open = std::net::TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    open.write_all(b"before\n").unwrap();
    let mut buf = [0u8; 7];
    open.read_exact(&mut buf).unwrap();
    let pid = mesh.server.child.id();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    // The proxy's own drain line, logged once every accept loop has
    // stopped (the registration's "withdrawn (draining)" can come first).
    mesh.server
        .wait_for("draining open_connections", Duration::from_secs(5));
    // New connections are refused by the inbound proxy...
    assert_eq!(mesh.round_trip(b"new"), b"");
    // ...while the open one still works until it is closed.
    open.write_all(b"during\n").unwrap();
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during\n");
    drop(open);
    mesh.server
        .wait_for("signet proxy stopped", Duration::from_secs(10));
}

/// Sends one raw HTTP/1.1 request through the outbound proxy; returns the
/// status code and body.
fn http_request(mesh: &Mesh, method: &str, path: &str, extra_headers: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mesh.client_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: payments\r\nContent-Length: 0\r\nConnection: close\r\n{extra_headers}\r\n").unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn http_listeners_authorize_each_request_and_pass_the_verified_peer_id() {
    let mesh = Mesh::start_with(
        r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
methods = ["GET"]
paths = ["/v1/*"]
"#,
        PAYMENTS,
        "1h",
        "http",
    );
    // Allowed, with a forged identity header that must be replaced.
    let (code, body) = http_request(
        &mesh,
        "GET",
        "/v1/pay?x=1",
        "x-signet-peer-id: spiffe://example.org/admin\r\nX-Signet-Peer-Id: forged\r\nx.signet.peer.id: forged\r\nx_signet_peer_id: forged\r\nx-signet-answer-token: guessed\r\nx-signet-not-forwarded: 1\r\n",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        format!("{CHECKOUT}|GET /v1/pay?x=1"),
        "the app sees exactly the verified peer ID"
    );
    let hits = mesh.app.connections();
    // Wrong method, wrong path: 403, and the app sees nothing.
    assert_eq!(http_request(&mesh, "POST", "/v1/pay", "").0, 403);
    assert_eq!(http_request(&mesh, "GET", "/v2/pay", "").0, 403);
    assert_eq!(
        mesh.app.connections(),
        hits,
        "denied requests never reach the app"
    );
    let m = mesh.server_metrics();
    assert!(
        m.contains(
            "signet_proxy_authorization_decisions_total{decision=\"deny\",rule=\"default-deny\"} 2"
        ),
        "{m}"
    );
}

/// Sends `requests` one after another on one HTTP/2 connection to the
/// outbound proxy at `port`; returns each status and body.
fn http2_exchange(
    port: u16,
    requests: Vec<hyper::Request<http_body_util::Empty<hyper::body::Bytes>>>,
) -> Vec<(u16, String)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        for req in requests {
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            out.push((status, String::from_utf8_lossy(&body).into_owned()));
        }
        out
    })
}

#[test]
fn http2_requests_are_authorized_one_by_one_on_one_connection() {
    let mesh = Mesh::start_with(
        r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
paths = ["/v1/*"]
"#,
        PAYMENTS,
        "1h",
        "http",
    );
    let results = http2_exchange(
        mesh.client_port,
        ["/v1/a", "/v2/b", "/v1/c"]
            .iter()
            .map(|path| {
                hyper::Request::get(format!("http://payments{path}"))
                    .header("x-signet-peer-id", "spiffe://example.org/forged")
                    .body(http_body_util::Empty::new())
                    .unwrap()
            })
            .collect(),
    );
    assert_eq!(results[0], (200, format!("{CHECKOUT}|GET /v1/a")));
    assert_eq!(results[1].0, 403);
    assert_eq!(results[2], (200, format!("{CHECKOUT}|GET /v1/c")));
}

const PUBLIC_ONLY_NO_ADMIN_NO_DELETE: &str = r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
paths = ["/public/*"]

[[deny]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
paths = ["/admin*"]

[[deny]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
methods = ["DELETE"]
"#;

/// Spellings that once reached `/admin.txt` (or ran `DELETE`) past a policy
/// that allows only `/public/*` and denies `/admin*` and `DELETE`, with the
/// status each must get now: 403 where the canonical form is denied, 400
/// where no single meaning exists.
const BYPASS_ATTEMPTS: &[(&str, &str, u16)] = &[
    ("GET", "/public/../admin.txt", 403),
    ("GET", "//admin", 403),
    ("GET", "/./admin.txt", 403),
    ("GET", "/%61dmin", 403),
    ("GET", "/public/%2e%2e/admin.txt", 403),
    ("GET", "/public/%2E%2E/%2E%2E/admin.txt", 403),
    ("delete", "/public/x", 403),
    ("Delete", "/public/x", 403),
    ("GET", "/public%2F..%2Fadmin.txt", 400),
    ("GET", "/public/..%2Fadmin.txt", 400),
    ("GET", "/public/..%5Cadmin.txt", 400),
    ("GET", "/public/..;/admin.txt", 400),
];

#[test]
fn http_policy_cannot_be_bypassed_by_another_spelling_of_the_path_or_method() {
    let mesh = Mesh::start_with(PUBLIC_ONLY_NO_ADMIN_NO_DELETE, PAYMENTS, "1h", "http");
    // Control: the allowed resource, written non-canonically, reaches the
    // app in canonical form (what policy saw is what the app gets), the
    // query untouched, and the identity header in every spelling replaced.
    let (code, body) = http_request(
        &mesh,
        "get",
        "/public/./a//b/%7Ex?q=/../admin",
        "x_signet_peer_id: spiffe://example.org/forged\r\nX_Signet_Peer_Id: forged\r\n",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, format!("{CHECKOUT}|GET /public/a/b/~x?q=/../admin"));
    let hits = mesh.app.connections();
    for (method, path, want) in BYPASS_ATTEMPTS {
        let (code, body) = http_request(&mesh, method, path, "");
        assert_eq!(code, *want, "HTTP/1.1 {method} {path}: {body}");
    }
    // A raw backslash: refused (by the parser or by canonicalisation).
    let (code, _) = http_request(&mesh, "GET", "/public/..\\admin.txt", "");
    assert_eq!(code, 400, "raw backslash");

    // The same over HTTP/2, one connection.
    let results = http2_exchange(
        mesh.client_port,
        BYPASS_ATTEMPTS
            .iter()
            .map(|(method, path, _)| {
                hyper::Request::builder()
                    .method(hyper::Method::from_bytes(method.as_bytes()).unwrap())
                    .uri(format!("http://payments{path}"))
                    .body(http_body_util::Empty::new())
                    .unwrap()
            })
            .collect(),
    );
    for ((method, path, want), (code, body)) in BYPASS_ATTEMPTS.iter().zip(&results) {
        assert_eq!(code, want, "HTTP/2 {method} {path}: {body}");
    }
    assert_eq!(
        mesh.app.connections(),
        hits,
        "no spelling of a denied request reaches the app"
    );
    let m = mesh.server_metrics();
    assert!(
        m.contains("rule=\"invalid-request-target\""),
        "ambiguous requests are counted: {m}"
    );
}

#[test]
fn an_expired_svid_that_is_not_renewed_makes_new_connections_fail_closed() {
    use signet_identity::testing::{LeafSpec, TestCa as MintCa};
    let dir = tempfile::tempdir().unwrap();
    let ca = MintCa::new("example.org");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.bundle().to_pem()).unwrap();
    let write_identity = |name: &str, id: &str, lifetime: Duration| {
        let mut spec = LeafSpec::valid(id);
        spec.not_after = std::time::SystemTime::now() + lifetime;
        let (chain, key) = ca.leaf(&spec);
        let (crt, k) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&crt, signet_identity::certificates_to_pem(&chain)).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (crt, k)
    };
    // The server's SVID lives 3 s and nobody renews it.
    let (server_crt, server_key) = write_identity("server", PAYMENTS, Duration::from_secs(3));
    let (client_crt, client_key) = write_identity("client", CHECKOUT, Duration::from_secs(3600));
    let app = EchoApp::start();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.toml"), ALLOW_CHECKOUT).unwrap();
    let (server_port, client_port) = (
        signet_test_support::free_port(),
        signet_test_support::free_port(),
    );
    let server_cfg = dir.path().join("server.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "svid_file = \"{}\"\nsvid_key_file = \"{}\"\nbundle_file = \"{}\"\npolicy_dir = \"{}/policies\"\nadmin_listen = \"127.0.0.1:0\"\n[inbound]\nlisten = \"127.0.0.1:{server_port}\"\nforward_to = \"127.0.0.1:{}\"\n",
            server_crt.display(), server_key.display(), bundle.display(), dir.path().display(), app.port
        ),
    )
    .unwrap();
    let client_cfg = dir.path().join("client.toml");
    std::fs::write(
        &client_cfg,
        format!(
            "svid_file = \"{}\"\nsvid_key_file = \"{}\"\nbundle_file = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n[[outbound]]\nlisten = \"127.0.0.1:{client_port}\"\nupstream = \"127.0.0.1:{server_port}\"\nserver_id = \"{PAYMENTS}\"\n",
            client_crt.display(), client_key.display(), bundle.display()
        ),
    )
    .unwrap();
    let mut server = Daemon::spawn({
        let mut c = signet();
        c.args(["proxy", "run", "--config"]).arg(&server_cfg);
        c
    });
    server.wait_for("signet proxy ready", Duration::from_secs(10));
    let mut client = Daemon::spawn({
        let mut c = signet();
        c.args(["proxy", "run", "--config"]).arg(&client_cfg);
        c
    });
    client.wait_for("signet proxy ready", Duration::from_secs(10));
    let round_trip = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", client_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"ping");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    assert_eq!(round_trip(), b"ping", "works while the SVID is valid");
    std::thread::sleep(Duration::from_millis(4200));
    let before = app.connections();
    assert_eq!(round_trip(), b"", "an expired SVID must not be presented");
    assert_eq!(app.connections(), before);
    server.wait_for("our SVID has expired", Duration::from_secs(5));
}

#[test]
fn an_http_connection_serves_no_request_once_its_callers_ca_key_is_revoked() {
    let Some(go) = signet_test_support::go::go_client() else {
        return;
    };
    // HTTP mode decides each request, and one HTTP/2 connection carries
    // requests for as long as the caller keeps it: once the key that
    // signed the caller's SVID is revoked, the connection it made before
    // must serve nothing more. The Go client keeps its connection (and its
    // first SVID, signed by the old key) across the incident. (An idle
    // HTTP/1.1 connection does not live that long: the proxy's header
    // timeout closes it.)
    let mesh = Mesh::start_with(ALLOW_CHECKOUT, PAYMENTS, "1h", "http");
    let (go, first) = signet_test_support::go::GoTwoStep::start(
        &go,
        &[
            "get-wait",
            &mesh.agent_a.endpoint(),
            &format!("https://127.0.0.1:{}/hello", mesh.server_port),
            PAYMENTS,
        ],
    );
    assert!(first.starts_with("first: status=200 error= "), "{first}");
    let served = mesh.app.connections();
    mesh.revoke_the_signing_key();
    let after = go.again();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after[0].starts_with("later: status=403 error=peer-svid-untrusted "),
        "{after:?}"
    );
    // The refusal came with a GOAWAY: the next GET needs a new connection,
    // whose handshake refuses the revoked key's SVID.
    assert!(after[1].starts_with("then: transport-error="), "{after:?}");
    assert_eq!(
        mesh.app.connections(),
        served,
        "nothing more reached the app"
    );
    // The mesh itself carries on, on SVIDs of the new key.
    let (code, body) = http_request(&mesh, "GET", "/after", "");
    assert_eq!(code, 200, "{body}");
}

/// One HTTP/2 frame, by hand: what a hostile peer can send that no client
/// library would.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block of literal fields (never indexed, no Huffman).
fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x10);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// Floods the HTTP/2 listener at `port` over mTLS for `for_how_long`, from
/// connections that never read: each opens with a zero initial window and
/// one stream (`request`: its pseudo-headers) it cannot be sent a byte on,
/// then sends SETTINGS and PING frames, 128 a millisecond (paced, so that
/// the tests running beside this one keep their share of the cores); a
/// connection the proxy closes is opened again. Returns frames sent.
async fn h2_flood(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    request: Vec<(&'static str, String)>,
    for_how_long: Duration,
) -> usize {
    use tokio::io::AsyncWriteExt;
    let deadline = Instant::now() + for_how_long;
    let mut frames = 0;
    while Instant::now() < deadline {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        let name = rustls::pki_types::ServerName::try_from("x").unwrap();
        let Ok(mut tls) = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
        else {
            continue;
        };
        let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE = 0: nothing may be sent on streams.
        opening.extend(h2_frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]));
        let fields: Vec<(&str, &str)> = request.iter().map(|(k, v)| (*k, v.as_str())).collect();
        opening.extend(h2_frame(0x1, 0x4, 1, &hpack_literals(&fields)));
        if tls.write_all(&opening).await.is_err() {
            continue;
        }
        let mut burst = Vec::new();
        for i in 0u64..64 {
            burst.extend(h2_frame(0x4, 0, 0, &[]));
            burst.extend(h2_frame(0x6, 0, 0, &i.to_be_bytes()));
        }
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), tls.write_all(&burst)).await {
                Ok(Ok(())) => {
                    frames += 128;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // Closed by the proxy: open another.
                Ok(Err(_)) => break,
                // The proxy stopped reading (its answers are not read):
                // the connection holds, the flood goes on beside it.
                Err(_) => break,
            }
        }
    }
    frames
}

/// SETTINGS and PING floods and zero-window stalls (connections that
/// never read), on an HTTP-mode listener and on the tunnel listener, from
/// a peer with a valid SVID: the legitimate traffic beside them sees no
/// error.
#[test]
fn h2_floods_and_zero_window_stalls_do_not_hurt_legitimate_traffic() {
    use signet_identity::testing::LeafSpec;
    let tunnel_port = signet_test_support::free_port();
    for (protocol, extra) in [
        ("http", String::new()),
        (
            "tcp",
            format!("tunnel_listen = \"127.0.0.1:{tunnel_port}\"\n"),
        ),
    ] {
        let mesh = Mesh::start_limited(ALLOW_CHECKOUT, PAYMENTS, "1h", protocol, &extra);
        let (chain, key) =
            real_issuer(&mesh).leaf(&LeafSpec::valid("spiffe://example.org/ns/prod/sa/flooder"));
        let mut config = (*direct_client_config(&mesh, chain, &key)).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        let (port, request) = if protocol == "http" {
            (
                mesh.server_port,
                vec![
                    (":method", "GET".to_owned()),
                    (":scheme", "https".to_owned()),
                    (":path", "/v1/pay".to_owned()),
                    (":authority", "payments".to_owned()),
                ],
            )
        } else {
            (
                tunnel_port,
                vec![
                    (":method", "CONNECT".to_owned()),
                    (":authority", format!("127.0.0.1:{}", mesh.app.port)),
                ],
            )
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let floods: Vec<_> = (0..2)
            .map(|_| {
                rt.spawn(h2_flood(
                    port,
                    config.clone(),
                    request.clone(),
                    Duration::from_secs(4),
                ))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let mut failed = Vec::new();
        let mut served = 0;
        while started.elapsed() < Duration::from_secs(3) {
            let ok = if protocol == "http" {
                let (code, body) = http_request(&mesh, "GET", "/v1/pay", "");
                code == 200 && body.starts_with(CHECKOUT)
            } else {
                mesh.round_trip(b"legit") == b"legit"
            };
            if ok {
                served += 1;
            } else {
                failed.push(served);
            }
        }
        let sent: usize = floods.into_iter().map(|f| rt.block_on(f).unwrap()).sum();
        println!(
            "{protocol}: {sent} flood frames; {served} legitimate requests served, {} failed",
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "{protocol}: legitimate requests failed: {failed:?}"
        );
        assert!(
            served >= 3,
            "{protocol}: the legitimate loop ran only {served} times"
        );
        assert!(
            sent > 10_000,
            "{protocol}: the flood sent only {sent} frames"
        );
    }
}
