//! End-to-end tests of the node agent: real `signet` CA and agent processes,
//! the independent `spiffe` crate as the Workload API client.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use signet_identity::TrustDomain;
use signet_proto::node as pb;
use signet_test_support::*;
use tokio_stream::StreamExt;

const TD: &str = "example.org";

fn uid_selector() -> String {
    format!("unix:uid:{}", my_uid())
}

async fn spiffe_client(agent: &AgentProcess) -> spiffe::WorkloadApiClient {
    spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap()
}

/// Fetches through the spiffe crate until an SVID arrives.
async fn fetch_svid(agent: &AgentProcess, timeout: Duration) -> spiffe::X509Svid {
    let client = spiffe_client(agent).await;
    let deadline = Instant::now() + timeout;
    loop {
        match client.fetch_x509_svid().await {
            Ok(svid) => return svid,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no SVID within {timeout:?}: {e}"),
        }
    }
}

fn leaf_serial(svid: &spiffe::X509Svid) -> Vec<u8> {
    let der = svid.cert_chain()[0].as_ref();
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_gets_its_svid_through_the_spiffe_crate() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/ns/test/sa/me",
        "node-1",
        &[&uid_selector()],
        &[],
    );
    let svid = fetch_svid(&agent, Duration::from_secs(10)).await;
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/ns/test/sa/me"
    );
    // The bundle served next to it verifies the SVID with Signet's own verifier.
    let ctx = spiffe_client(&agent)
        .await
        .fetch_x509_context()
        .await
        .unwrap();
    let td = spiffe::TrustDomain::new(TD).unwrap();
    let bundle = ctx.bundle_set().get(&td).expect("bundle for example.org");
    let roots: Vec<_> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec().into())
        .collect();
    let ours = signet_identity::TrustBundle::new(TrustDomain::new(TD).unwrap(), roots).unwrap();
    let chain: Vec<_> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_ref().to_vec().into())
        .collect();
    signet_identity::verify_x509_svid(&chain, &ours, std::time::SystemTime::now()).unwrap();
    // `signet id show` agrees.
    let out = signet()
        .args(["id", "show", "--output", "json"])
        .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["spiffe_id"], "spiffe://example.org/ns/test/sa/me");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_is_pushed_on_the_open_stream() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/rotating",
        "node-1",
        &[&uid_selector()],
        &["--x509-ttl", "3"],
    );
    fetch_svid(&agent, Duration::from_secs(10)).await;
    let client = spiffe_client(&agent).await;
    let mut stream = client.stream_x509_svids().await.unwrap();
    let mut serials = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while serials.len() < 3 && Instant::now() < deadline {
        let svid = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let serial = leaf_serial(&svid);
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    assert_eq!(
        serials.len(),
        3,
        "expected two rotations pushed on one stream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_entry_reaches_an_open_stream_within_a_second() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/first",
        "node-1",
        &[&uid_selector()],
        &[],
    );
    fetch_svid(&agent, Duration::from_secs(10)).await;
    let client = spiffe_client(&agent).await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids().len(), 1);
    let start = Instant::now();
    ca.entry(
        "spiffe://example.org/second",
        "node-1",
        &[&uid_selector()],
        &[],
    );
    loop {
        let ctx = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ctx.svids().len() == 2 {
            break;
        }
    }
    let took = start.elapsed();
    eprintln!("entry create (CLI process) -> SVID on the open stream: {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_caller_with_another_uid_is_refused_and_gets_no_key() {
    if !is_root() {
        eprintln!("!!! SKIPPING: needs root to run a child as another uid");
        return;
    }
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/root-only",
        "node-1",
        &[&uid_selector()],
        &[],
    );
    // Our uid gets the identity...
    let out = signet()
        .args(["id", "show", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...uid 65534, on the same (world-open) socket, does not.
    use std::os::unix::process::CommandExt;
    let out = signet()
        .args(["id", "fetch", "--timeout", "3", "--write"])
        .arg(agent.dir.path().join("nobody-out"))
        .arg("--socket")
        .arg(&agent.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no identity issued"), "{err}");
    assert!(!agent.dir.path().join("nobody-out/svid.key").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_the_security_header_are_rejected() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry("spiffe://example.org/me", "node-1", &[&uid_selector()], &[]);
    fetch_svid(&agent, Duration::from_secs(10)).await;
    let mut client = workload_api_client(&agent.socket).await;
    let status = client
        .fetch_x509svid(signet_proto::workload::X509svidRequest {})
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");
    let status = client
        .fetch_x509_bundles(signet_proto::workload::X509BundlesRequest {})
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[test]
fn a_used_or_expired_join_token_is_refused() {
    let ca = CaProcess::start(&[]);
    let token = ca.token("node-1");
    let _first = AgentProcess::start(&ca, &token, &[]);
    let (_dir, mut cmd, _) = AgentProcess::command(&ca, &token, &[]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown or already used"), "{err}");

    let short = ca
        .run_ok(&["token", "create", "--ttl", "1", "--node-name", "node-2"])
        .trim()
        .to_owned();
    std::thread::sleep(Duration::from_millis(2100));
    let (_dir, mut cmd, _) = AgentProcess::command(&ca, &short, &[]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("expired"), "{err}");
}

fn csr() -> Vec<u8> {
    signet_agent::agent_identity::new_key_and_csr().unwrap().1
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cannot_get_an_svid_for_another_agents_entry() {
    let ca = CaProcess::start(&[]);
    let a1 = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let _a2 = AgentProcess::start(&ca, &ca.token("node-2"), &[]);
    let mine = ca.entry("spiffe://example.org/mine", "node-1", &["unix:uid:1"], &[]);
    let theirs = ca.entry(
        "spiffe://example.org/theirs",
        "node-2",
        &["unix:uid:1"],
        &[],
    );
    let mut client = node_client_as(&a1, &ca.node_addr()).await;
    let status = client
        .sign_svids(pb::SignSvidsRequest {
            requests: vec![
                pb::SvidRequest {
                    entry_id: mine.clone(),
                    csr: csr(),
                },
                pb::SvidRequest {
                    entry_id: theirs,
                    csr: csr(),
                },
            ],
        })
        .await
        .expect_err("a batch with a foreign entry must fail");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // Its own entry alone is fine.
    let ok = client
        .sign_svids(pb::SignSvidsRequest {
            requests: vec![pb::SvidRequest {
                entry_id: mine,
                csr: csr(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.svids[0].spiffe_id, "spiffe://example.org/mine");
    // And its sync stream only ever shows its own entries.
    let mut sync = client
        .sync_entries(pb::SyncEntriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let snap = sync.message().await.unwrap().unwrap();
    let ids: Vec<_> = snap.entries.iter().map(|e| e.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec!["spiffe://example.org/mine"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_can_mint_jwt_svids_only_for_its_own_entries_within_the_audience_limits() {
    let ca = CaProcess::start(&[]);
    let a1 = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let _a2 = AgentProcess::start(&ca, &ca.token("node-2"), &[]);
    let mine = ca.entry("spiffe://example.org/mine", "node-1", &["unix:uid:1"], &[]);
    let theirs = ca.entry(
        "spiffe://example.org/theirs",
        "node-2",
        &["unix:uid:1"],
        &[],
    );
    let mut client = node_client_as(&a1, &ca.node_addr()).await;
    let mint = |entry_id: &str, audience: Vec<String>| pb::MintJwtSvidRequest {
        entry_id: entry_id.to_owned(),
        audience,
    };
    let status = client
        .mint_jwt_svid(mint(&theirs, vec!["api".into()]))
        .await
        .expect_err("another agent's entry");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let token = client
        .mint_jwt_svid(mint(&mine, vec!["api".into()]))
        .await
        .unwrap()
        .into_inner();
    let claims = signet_identity::jwt_svid::decode_jwt(&token.token)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "spiffe://example.org/mine");
    assert_eq!(claims["exp"].as_i64(), Some(token.expires_at));
    // The audience limits, both sides of each.
    let n = |count: usize| (0..count).map(|i| format!("a{i}")).collect::<Vec<_>>();
    let max = signet_identity::jwt_svid::MAX_AUDIENCES;
    client.mint_jwt_svid(mint(&mine, n(max))).await.unwrap();
    for bad in [
        n(max + 1),
        Vec::new(),
        vec!["x".repeat(signet_identity::jwt_svid::MAX_AUDIENCE_LEN + 1)],
    ] {
        let status = client
            .mint_jwt_svid(mint(&mine, bad))
            .await
            .expect_err("audience rules");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    client
        .mint_jwt_svid(mint(
            &mine,
            vec!["x".repeat(signet_identity::jwt_svid::MAX_AUDIENCE_LEN)],
        ))
        .await
        .unwrap();
    // A banned agent mints nothing.
    ca.run_ok(&["agent", "ban", "spiffe://example.org/signet/agent/node-1"]);
    let status = client
        .mint_jwt_svid(mint(&mine, vec!["api".into()]))
        .await
        .expect_err("banned");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_banned_agent_can_neither_renew_nor_sign_nor_reattest() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let entry = ca.entry("spiffe://example.org/w", "node-1", &["unix:uid:1"], &[]);
    let mut client = node_client_as(&agent, &ca.node_addr()).await;
    ca.run_ok(&["agent", "ban", "spiffe://example.org/signet/agent/node-1"]);
    let s = client
        .renew_agent(pb::RenewAgentRequest { csr: csr() })
        .await
        .err()
        .unwrap();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    let s = client
        .sign_svids(pb::SignSvidsRequest {
            requests: vec![pb::SvidRequest {
                entry_id: entry,
                csr: csr(),
            }],
        })
        .await
        .err()
        .unwrap();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    let (_dir, mut cmd, _) = AgentProcess::command(&ca, &ca.token("node-1"), &[]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("banned"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_evicted_agent_is_refused_until_it_reattests_with_a_new_token() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let entry = ca.entry("spiffe://example.org/w", "node-1", &["unix:uid:1"], &[]);
    let mut client = node_client_as(&agent, &ca.node_addr()).await;
    ca.run_ok(&["agent", "evict", "spiffe://example.org/signet/agent/node-1"]);
    let s = client
        .sign_svids(pb::SignSvidsRequest {
            requests: vec![pb::SvidRequest {
                entry_id: entry.clone(),
                csr: csr(),
            }],
        })
        .await
        .err()
        .unwrap();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    let again = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let mut client = node_client_as(&again, &ca.node_addr()).await;
    client
        .sign_svids(pb::SignSvidsRequest {
            requests: vec![pb::SvidRequest {
                entry_id: entry,
                csr: csr(),
            }],
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_keep_cached_svids_while_the_ca_is_down_and_rotation_resumes_after() {
    let ca = CaProcess::start(&[]);
    let node_port = ca.node_port;
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/durable",
        "node-1",
        &[&uid_selector()],
        &["--x509-ttl", "8"],
    );
    let before = fetch_svid(&agent, Duration::from_secs(10)).await;

    // Kill the CA hard.
    let dir = {
        let mut ca = ca;
        ca.daemon.child.kill().unwrap();
        ca.daemon.child.wait().unwrap();
        let CaProcess { dir, .. } = ca;
        dir
    };
    // The workload still gets an SVID from the agent's cache.
    for _ in 0..5 {
        let svid = fetch_svid(&agent, Duration::from_secs(2)).await;
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/durable");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // CA back on the same address: the same agent process resumes rotation.
    let _ca = CaProcess::start_with_port(dir, node_port, &[]);
    let client = spiffe_client(&agent).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let svid = client.fetch_x509_svid().await.unwrap();
        if leaf_serial(&svid) != leaf_serial(&before)
            && svid_not_after(&svid) > svid_not_after(&before) + 4
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation after the CA came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.daemon.child.id() > 0);
}

fn svid_not_after(svid: &spiffe::X509Svid) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(svid.cert_chain()[0].as_ref()).unwrap();
    cert.validity().not_after.timestamp()
}

#[test]
fn agent_restart_reuses_its_stored_identity_without_a_token() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let data = agent.dir.path().join("data");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("agent_key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let socket_mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        socket_mode, 0o777,
        "the Workload API socket is open to every local user"
    );
    let AgentProcess {
        dir,
        mut daemon,
        socket,
    } = agent;
    assert!(daemon.terminate());
    let mut cmd = signet();
    cmd.args(["agent", "run", "--ca", &ca.node_addr(), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let mut d = Daemon::spawn(cmd);
    d.wait_for("using the stored agent SVID", Duration::from_secs(10));
    d.wait_for("connected to the CA", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_renews_its_own_svid_and_keeps_serving() {
    // A 4 s default TTL: the agent SVID and the CA's server SVID both turn
    // over every ~2 s, so renewal and reconnection run several times.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ca.toml");
    std::fs::write(&cfg, "default_x509_svid_ttl = 4\n").unwrap();
    let ca = CaProcess::start_in(dir, &["--config", cfg.to_str().unwrap()]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry("spiffe://example.org/w", "node-1", &[&uid_selector()], &[]);
    let serial = || -> String {
        let v: serde_json::Value =
            serde_json::from_str(&ca.run_ok(&["agent", "list", "--output", "json"])).unwrap();
        v[0]["svid_serial"].as_str().unwrap().to_owned()
    };
    let first = serial();
    let mut seen = vec![first];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "agent SVID renewed only {} times",
            seen.len() - 1
        );
        let s = serial();
        if !seen.contains(&s) {
            seen.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still serving fresh workload SVIDs after renewals.
    let svid = fetch_svid(&agent, Duration::from_secs(5)).await;
    assert!(
        svid_not_after(&svid)
            > signet_identity::x509_svid::unix_seconds(std::time::SystemTime::now())
    );
}

/// A node API channel whose TLS client configuration (and so its session
/// ticket store) the caller keeps, as an attacker resuming sessions would.
async fn node_channel_with(
    ca: &CaProcess,
    config: Arc<rustls::ClientConfig>,
) -> Result<signet_proto::node::node_client::NodeClient<tonic::transport::Channel>, String> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let target = ca.node_addr();
    let channel = tonic::transport::Endpoint::from_static("http://signet-ca")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                let name = rustls::pki_types::ServerName::try_from("signet-ca").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(signet_proto::node::node_client::NodeClient::new(channel))
}

/// One TLS connection to the node API that reads the server's first bytes
/// (which also takes in any session ticket); returns its handshake kind.
async fn raw_handshake_kind(
    ca: &CaProcess,
    config: Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(ca.node_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("signet-ca").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .ok()?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 9];
    let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_exact(&mut buf)).await;
    tls.get_ref().1.handshake_kind()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_agent_svid_cannot_renew_through_resumption_or_an_old_connection() {
    // Agent SVIDs live 4 s; the agent is stopped after attesting, so its
    // serial stays the CA's current one and only expiry stands in the way.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ca.toml");
    std::fs::write(&cfg, "default_x509_svid_ttl = 4\n").unwrap();
    let ca = CaProcess::start_in(dir, &["--config", cfg.to_str().unwrap()]);
    let mut agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    agent.daemon.terminate();
    let td = TrustDomain::new(TD).unwrap();
    let (svid, bundle) = signet_agent::agent_identity::load(&agent.dir.path().join("data"), &td)
        .unwrap()
        .unwrap();
    let server_id = td.spiffe_id("/signet/server").unwrap();
    let verifier = signet_identity::tls::SpiffeServerVerifier::new(
        signet_identity::tls::BundleHandle::new(bundle),
        Arc::new(move |id: &signet_identity::SpiffeId| *id == server_id),
    );
    let mut config = rustls::ClientConfig::builder_with_provider(signet_identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            svid.cert.chain.clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(svid.cert.key_pkcs8.clone().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let config = Arc::new(config);

    // Control: while the SVID is valid, calls succeed.
    let mut old = node_channel_with(&ca, config.clone()).await.unwrap();
    old.sync_entries(pb::SyncEntriesRequest::default())
        .await
        .unwrap();
    // The node API hands out no session tickets: with the same client
    // configuration, a later connection is a full handshake again.
    for _ in 0..2 {
        let kind = raw_handshake_kind(&ca, config.clone()).await;
        assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    }
    let not_after = std::time::UNIX_EPOCH + Duration::from_secs(svid.not_after as u64);
    while std::time::SystemTime::now() < not_after + Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection made while it was valid does not carry it past expiry.
    let status = old
        .renew_agent(pb::RenewAgentRequest { csr: csr() })
        .await
        .expect_err("an expired agent renewed on its old connection");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // A new connection cannot resume the session (no certificate sent) to
    // get past the expiry check of the handshake.
    let renewed = match node_channel_with(&ca, config).await {
        Ok(mut c) => c
            .renew_agent(pb::RenewAgentRequest { csr: csr() })
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(
        !renewed,
        "an expired agent renewed itself through resumption"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_lost_on_the_way_does_not_lock_the_agent_out() {
    let ca = CaProcess::start(&[]);
    let AgentProcess {
        dir,
        mut daemon,
        socket,
    } = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    assert!(daemon.terminate());
    let agent = AgentProcess {
        dir,
        daemon,
        socket,
    };
    // The CA signs a renewal whose answer is lost before the agent stores
    // it (full disk, connection reset): the agent still has only S1.
    let mut s1 = node_client_as(&agent, &ca.node_addr()).await;
    let lost = s1
        .renew_agent(pb::RenewAgentRequest { csr: csr() })
        .await
        .unwrap()
        .into_inner();
    assert!(!lost.cert_chain.is_empty());
    s1.sync_entries(pb::SyncEntriesRequest::default())
        .await
        .expect("the SVID renewed from stays usable until the new one is used");

    // The real agent, restarted on its stored (old) SVID, gets back in.
    let mut cmd = signet();
    cmd.args(["agent", "run", "--ca", &ca.node_addr(), "--data-dir"])
        .arg(agent.dir.path().join("data"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let mut restarted = Daemon::spawn(cmd);
    restarted.wait_for("connected to the CA", Duration::from_secs(15));
    assert!(restarted.terminate());

    // Renewing again from S1 works; once S3 is used, S1 is done.
    let (key, csr3) = signet_agent::agent_identity::new_key_and_csr().unwrap();
    let resp = s1
        .renew_agent(pb::RenewAgentRequest { csr: csr3 })
        .await
        .unwrap()
        .into_inner();
    let (s3_svid, bundle) =
        signet_agent::agent_identity::from_response(&resp, &key, std::time::SystemTime::now())
            .unwrap();
    let td = TrustDomain::new(TD).unwrap();
    let trust = signet_agent::node_client::ServerTrust::Bundle(
        signet_identity::tls::BundleHandle::new(bundle),
    );
    let mut s3 =
        signet_agent::node_client::connect(&[ca.node_addr()], &td, &trust, Some(&s3_svid.cert))
            .await
            .unwrap();
    s3.sync_entries(pb::SyncEntriesRequest::default())
        .await
        .unwrap();
    let status = s1
        .sync_entries(pb::SyncEntriesRequest::default())
        .await
        .expect_err("the old SVID must be refused once the new one is in use");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // The lost S2 was never used and is not accepted either: only the
    // current serial and the one it was renewed from count.
    let v: serde_json::Value =
        serde_json::from_str(&ca.run_ok(&["agent", "list", "--output", "json"])).unwrap();
    assert!(v[0]["previous_svid_serial"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sign_batch_cap_holds_at_1000_and_an_agent_with_1001_entries_gets_every_svid() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let mut admin = admin_client(&ca).await;
    let mut ids = Vec::new();
    for i in 0..1001 {
        let e = admin
            .create_entry(signet_proto::admin::CreateEntryRequest {
                spec: Some(signet_proto::admin::EntrySpec {
                    spiffe_id: format!("spiffe://example.org/bulk/{i}"),
                    parent_id: "spiffe://example.org/signet/agent/node-1".into(),
                    selectors: vec!["unix:uid:4000000".into()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(e.id);
    }
    // The cap, on both sides: 1,001 CSRs are refused, 1,000 are signed.
    let mut node = node_client_as(&agent, &ca.node_addr()).await;
    let requests = |n: usize| pb::SignSvidsRequest {
        requests: ids[..n]
            .iter()
            .map(|id| pb::SvidRequest {
                entry_id: id.clone(),
                csr: csr(),
            })
            .collect(),
    };
    let over = node.sign_svids(requests(1001)).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::InvalidArgument, "{over:?}");
    let at = node.sign_svids(requests(1000)).await.unwrap().into_inner();
    assert_eq!(at.svids.len(), 1000);
    // The agent splits its 1,001 due entries into calls the CA accepts.
    let metrics_port = agent_metrics_port(&agent);
    eventually(Duration::from_secs(120), "1,001 workload SVIDs", || {
        let (_, m) = http_get(metrics_port, "/metrics");
        m.contains("signet_agent_x509_svids 1001").then_some(())
    });
}

/// The agent's metrics port, from its ready line.
fn agent_metrics_port(agent: &AgentProcess) -> u16 {
    let line = agent
        .daemon
        .log
        .iter()
        .find(|l| l.contains("signet agent ready"))
        .expect("ready line");
    let addr = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("metrics="))
        .expect("metrics= in the ready line");
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn an_agent_restarted_while_the_ca_is_down_is_not_ready_until_it_has_svids() {
    let ca = CaProcess::start(&[]);
    let node_port = ca.node_port;
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry("spiffe://example.org/w", "node-1", &[&uid_selector()], &[]);
    let port = agent_metrics_port(&agent);
    eventually(Duration::from_secs(10), "the agent to be ready", || {
        (http_get(port, "/ready").0 == 200).then_some(())
    });
    let AgentProcess {
        dir,
        mut daemon,
        socket,
    } = agent;
    assert!(daemon.terminate());
    let ca_dir = ca.stop();
    // Restarted with the CA down: it serves nothing and says so.
    let metrics_port = signet_test_support::free_port();
    let mut cmd = signet();
    cmd.args([
        "agent",
        "run",
        "--ca",
        &format!("127.0.0.1:{node_port}"),
        "--data-dir",
    ])
    .arg(dir.path().join("data"))
    .arg("--socket")
    .arg(&socket)
    .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    let mut restarted = Daemon::spawn(cmd);
    restarted.wait_for("signet agent ready", Duration::from_secs(10));
    // The rotator may say so before or after the ready line.
    let line = match restarted.log.iter().find(|l| l.contains("CA unreachable")) {
        Some(l) => l.clone(),
        None => restarted.wait_for("CA unreachable", Duration::from_secs(10)),
    };
    assert!(line.contains("no SVIDs to serve"), "{line}");
    assert_eq!(http_get(metrics_port, "/ready").0, 503);
    // The CA is back: SVIDs, then ready.
    let _ca = CaProcess::start_with_port(ca_dir, node_port, &[]);
    eventually(Duration::from_secs(40), "ready once the CA answers", || {
        (http_get(metrics_port, "/ready").0 == 200).then_some(())
    });
}

#[test]
fn the_join_token_can_come_from_a_file_or_the_environment_and_stay_out_of_ps() {
    let ca = CaProcess::start(&[]);
    // From a file.
    let (dir, _, socket) = AgentProcess::command(&ca, "unused", &[]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", ca.token("node-file"))).unwrap();
    let mut cmd = signet();
    cmd.args(["agent", "run", "--ca", &ca.node_addr(), "--trust-bundle"])
        .arg(ca.bundle_file())
        .arg("--join-token-file")
        .arg(&token_file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let mut d = Daemon::spawn(cmd);
    d.wait_for("signet agent ready", Duration::from_secs(20));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.child.id())).unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(token.trim()),
        "the token is in the command line"
    );
    // From the environment.
    let (dir, _, socket) = AgentProcess::command(&ca, "unused", &[]);
    let mut cmd = signet();
    cmd.args(["agent", "run", "--ca", &ca.node_addr(), "--trust-bundle"])
        .arg(ca.bundle_file())
        .env("SIGNET_JOIN_TOKEN", ca.token("node-env"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let mut d2 = Daemon::spawn(cmd);
    d2.wait_for("signet agent ready", Duration::from_secs(20));
    let agents = ca.run_ok(&["agent", "list"]);
    assert!(
        agents.contains("node-file") && agents.contains("node-env"),
        "{agents}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn open_streams_end_with_permission_denied_when_the_last_entry_is_deleted() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let keep = ca.entry("spiffe://example.org/a", "node-1", &[&uid_selector()], &[]);
    let drop_first = ca.entry("spiffe://example.org/b", "node-1", &[&uid_selector()], &[]);
    fetch_svid(&agent, Duration::from_secs(10)).await;
    let mut client = workload_api_client(&agent.socket).await;
    let mut svids = client
        .fetch_x509svid(with_security_header(
            signet_proto::workload::X509svidRequest {},
        ))
        .await
        .unwrap()
        .into_inner();
    let mut bundles = client
        .fetch_x509_bundles(with_security_header(
            signet_proto::workload::X509BundlesRequest {},
        ))
        .await
        .unwrap()
        .into_inner();
    bundles.message().await.unwrap().unwrap();
    let ids = |m: &signet_proto::workload::X509svidResponse| {
        let mut v: Vec<String> = m.svids.iter().map(|s| s.spiffe_id.clone()).collect();
        v.sort();
        v
    };
    // Wait for both identities on the stream.
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), svids.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ids(&m).len() == 2 {
            break;
        }
    }
    // One entry deleted: an update without it.
    ca.run_ok(&["entry", "delete", drop_first.trim()]);
    let m = tokio::time::timeout(Duration::from_secs(10), svids.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ids(&m), vec!["spiffe://example.org/a".to_owned()]);
    // The last one deleted: both streams end with PERMISSION_DENIED.
    ca.run_ok(&["entry", "delete", keep.trim()]);
    let end = tokio::time::timeout(Duration::from_secs(10), svids.message())
        .await
        .expect("the SVID stream ended");
    assert_eq!(end.unwrap_err().code(), tonic::Code::PermissionDenied);
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match bundles.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the bundle stream ended instead of hanging");
    assert_eq!(end.unwrap_err().code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn hints_travel_from_the_entry_to_the_workload_and_name_one_svid_each() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    let me = uid_selector();
    ca.entry(
        "spiffe://example.org/in",
        "node-1",
        &[&me],
        &["--hint", "internal"],
    );
    ca.entry(
        "spiffe://example.org/out",
        "node-1",
        &[&me],
        &["--hint", "external"],
    );
    ca.entry(
        "spiffe://example.org/in2",
        "node-1",
        &[&me],
        &["--hint", "internal"],
    );
    ca.entry("spiffe://example.org/plain", "node-1", &[&me], &[]);
    let shown = ca.run_ok(&[
        "entry",
        "list",
        "--spiffe-id",
        "spiffe://example.org/out",
        "--output",
        "json",
    ]);
    assert!(shown.contains("\"hint\": \"external\""), "{shown}");
    let mut client = workload_api_client(&agent.socket).await;
    let mut stream = client
        .fetch_x509svid(with_security_header(
            signet_proto::workload::X509svidRequest {},
        ))
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        assert!(Instant::now() < deadline, "all SVIDs did not arrive");
        let m = stream.message().await.unwrap().unwrap();
        let mut v: Vec<(String, String)> = m
            .svids
            .iter()
            .map(|s| (s.spiffe_id.clone(), s.hint.clone()))
            .collect();
        v.sort();
        if v.len() == 3 {
            break v;
        }
    };
    // "internal" names one SVID: the second entry with it is not sent.
    let internal: Vec<_> = got.iter().filter(|(_, h)| h == "internal").collect();
    assert_eq!(internal.len(), 1, "{got:?}");
    assert!(got.contains(&("spiffe://example.org/out".into(), "external".into())));
    assert!(got.contains(&("spiffe://example.org/plain".into(), String::new())));
}

/// Sidecars' discovery watches cannot starve the agent's own link to the
/// CA. One user opens 60 watches of distinct identities (within its
/// Workload API stream cap, past the CA's 32 streams per connection) and 40
/// more of one identity: the node watches each identity at the CA once,
/// at most 16 for this user (RESOURCE_EXHAUSTED past it), on a connection
/// of its own; meanwhile JWT-SVIDs the CA must sign (new audiences) are
/// served and short-lived SVIDs keep rotating.
#[tokio::test(flavor = "multi_thread")]
async fn discovery_watches_cannot_starve_svid_renewal_or_jwt_minting() {
    use signet_proto::mesh::{mesh_client::MeshClient, WatchRequest};
    use signet_proto::workload::JwtsvidRequest;
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/web",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &["--x509-ttl", "4s"],
    );
    let (mut svids, first) = svid_stream(&agent, 1).await;
    // Ten watches per connection to the agent, as sidecars each with
    // their own connection would hold them.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(MeshClient::new(
            signet_identity::workload_api::connect(&agent.socket)
                .await
                .unwrap(),
        ));
    }
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for i in 0..100 {
        // 60 distinct identities, then 40 watches more of the first.
        let id = if i < 60 { i } else { 0 };
        let req = with_security_header(WatchRequest {
            spiffe_id: format!("spiffe://example.org/svc-{id}"),
        });
        match clients[i / 10].watch(req).await {
            Ok(stream) => held.push(stream.into_inner()),
            Err(s) => refused.push(s),
        }
    }
    println!(
        "{} watches held, {} refused: {:?}",
        held.len(),
        refused.len(),
        refused.first()
    );
    assert_eq!((held.len(), refused.len()), (16 + 40, 44));
    assert!(refused
        .iter()
        .all(|s| s.code() == tonic::Code::ResourceExhausted
            && s.message().contains("max_watched_identities_per_uid")));
    // Each held watch has its first answer from the CA (an empty set).
    for w in held.iter_mut() {
        let set = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("a watch answer within 10 s")
            .unwrap()
            .unwrap();
        assert!(set.endpoints.is_empty());
    }
    let (_, metrics) = ca.http_get("/metrics");
    assert_eq!(
        metric(&metrics, "signet_ca_endpoint_watches "),
        16,
        "one CA watch per identity: {metrics}"
    );
    // JWT-SVIDs the CA must sign, one new audience after another.
    let mut client = workload_api_client(&agent.socket).await;
    for i in 0..20 {
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.fetch_jwtsvid(with_security_header(JwtsvidRequest {
                audience: vec![format!("aud-{i}")],
                spiffe_id: String::new(),
            })),
        )
        .await
        .expect("a JWT-SVID within 10 s")
        .unwrap();
        assert_eq!(r.into_inner().svids.len(), 1);
        if i == 0 {
            println!(
                "first JWT-SVID minted beside the watches in {:?}",
                t.elapsed()
            );
        }
    }
    // And the 4 s SVID rotates (twice) while the watches stay open.
    let mut serial = first.svids[0].x509_svid.clone();
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(10), svids.message())
            .await
            .expect("a rotated SVID within 10 s")
            .unwrap()
            .unwrap();
        assert_ne!(next.svids[0].x509_svid, serial);
        serial = next.svids[0].x509_svid.clone();
    }
    drop(held);
}
