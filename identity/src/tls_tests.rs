//! Real TLS 1.3 handshakes over loopback TCP between the two verifiers.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::testing::{LeafSpec, TestCa};

type Cred = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn cred(ca: &TestCa, id: &str) -> Cred {
    let (chain, key) = ca.leaf(&LeafSpec::valid(id));
    (chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
}

fn allow(prefix: &'static str) -> Authorizer {
    Arc::new(move |id: &SpiffeId| id.as_str().starts_with(prefix))
}

/// Runs one handshake + echo; Ok(()) when both sides succeed.
async fn handshake(
    server: Cred,
    client: Cred,
    bundle: TrustBundle,
    server_ok: Authorizer,
    client_ok: Authorizer,
) -> Result<(), String> {
    let handle = BundleHandle::new(bundle);
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(SpiffeClientVerifier::new(handle.clone(), client_ok, true))
        .with_single_cert(server.0, server.1)
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(SpiffeServerVerifier::new(handle, server_ok))
        .with_client_auth_cert(client.0, client.1)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&buf)
            .await
            .map_err(|e| format!("server write: {e}"))?;
        tls.shutdown().await.ok();
        Ok::<_, String>(())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client_result = async {
        let mut tls = connector
            .connect(ServerName::try_from("signet").unwrap(), tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>(())
    }
    .await;
    let server_result = server_task.await.unwrap();
    match (client_result, server_result) {
        (Ok(()), Ok(())) => Ok(()),
        (c, s) => Err(format!("{c:?} / {s:?}")),
    }
}

#[tokio::test]
async fn mutual_spiffe_handshake_succeeds() {
    let ca = TestCa::new("example.org");
    handshake(
        cred(&ca, "spiffe://example.org/server"),
        cred(&ca, "spiffe://example.org/client"),
        ca.bundle(),
        allow("spiffe://example.org/server"),
        allow("spiffe://example.org/client"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused_in_the_handshake() {
    let ca = TestCa::new("example.org");
    let other = TestCa::new("other.org");
    let r = handshake(
        cred(&ca, "spiffe://example.org/server"),
        cred(&other, "spiffe://other.org/client"),
        ca.bundle(),
        allow("spiffe://example.org/"),
        allow("spiffe://"),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn unauthorized_client_id_is_refused_in_the_handshake() {
    let ca = TestCa::new("example.org");
    let r = handshake(
        cred(&ca, "spiffe://example.org/server"),
        cred(&ca, "spiffe://example.org/intruder"),
        ca.bundle(),
        allow("spiffe://example.org/server"),
        allow("spiffe://example.org/client"),
    )
    .await;
    let e = r.unwrap_err();
    assert!(e.contains("server: ") && e.contains("NotAuthorized"), "{e}");
}

#[tokio::test]
async fn client_refuses_a_server_with_the_wrong_id() {
    let ca = TestCa::new("example.org");
    let r = handshake(
        cred(&ca, "spiffe://example.org/impostor"),
        cred(&ca, "spiffe://example.org/client"),
        ca.bundle(),
        allow("spiffe://example.org/server"),
        allow("spiffe://example.org/client"),
    )
    .await;
    let e = r.unwrap_err();
    assert!(
        e.contains("client: ") && e.contains("NotAuthorized"),
        "the client side refuses: {e}"
    );
}

/// Two handshakes between the same configs (the second resumes) over
/// in-memory pipes; returns the established peer, as the server sees it
/// with `check`, for each.
async fn full_then_resumed(
    ca: &TestCa,
    check: impl Fn(&rustls::CommonState) -> Result<SpiffeId, PeerRefused>,
) -> Vec<(Option<rustls::HandshakeKind>, Result<SpiffeId, PeerRefused>)> {
    let handle = BundleHandle::new(ca.bundle());
    let server = cred(ca, "spiffe://example.org/server");
    let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(SpiffeClientVerifier::new(
            handle.clone(),
            allow("spiffe://example.org/"),
            true,
        ))
        .with_single_cert(server.0, server.1)
        .unwrap();
    server_cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16);
    let client = cred(ca, "spiffe://example.org/client");
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(SpiffeServerVerifier::new(handle, allow("spiffe://")))
        .with_client_auth_cert(client.0, client.1)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let mut out = Vec::new();
    for _ in 0..2 {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client = tokio::spawn({
            let connector = connector.clone();
            async move {
                let mut tls = connector
                    .connect(ServerName::try_from("signet").unwrap(), a)
                    .await
                    .unwrap();
                tls.write_all(b"ping").await.unwrap();
                // Reading also takes in the session ticket.
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.unwrap();
            }
        });
        let mut tls = acceptor.accept(b).await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        let conn = tls.get_ref().1;
        out.push((conn.handshake_kind(), check(conn)));
        client.await.unwrap();
    }
    out
}

#[tokio::test]
async fn a_resumed_session_is_verified_again_now() {
    let ca = TestCa::new("example.org");
    let any = allow("spiffe://example.org/");
    let handle = BundleHandle::new(ca.bundle());
    let now = SystemTime::now();
    let runs = full_then_resumed(&ca, |c| established_peer(c, &handle, &any, now)).await;
    assert_eq!(runs[0].0, Some(rustls::HandshakeKind::Full));
    assert_eq!(
        runs[1].0,
        Some(rustls::HandshakeKind::Resumed),
        "the test needs a resumed session"
    );
    for (_, peer) in &runs {
        assert_eq!(
            peer.as_ref().unwrap().as_str(),
            "spiffe://example.org/client"
        );
    }

    // Two hours on, the client's SVID has expired: resumption must not
    // bring it back to life.
    let later = now + Duration::from_secs(7200);
    let runs = full_then_resumed(&ca, |c| established_peer(c, &handle, &any, later)).await;
    assert!(runs[0].1.is_ok(), "a full handshake was verified by rustls");
    assert!(
        matches!(&runs[1].1, Err(PeerRefused::Svid(SvidError::Leaf(_)))),
        "{:?}",
        runs[1].1
    );

    // The authority left the bundle since the ticket was issued.
    let other = BundleHandle::new(TestCa::new("example.org").bundle());
    let runs = full_then_resumed(&ca, |c| established_peer(c, &other, &any, now)).await;
    assert!(
        matches!(
            &runs[1].1,
            Err(PeerRefused::Svid(SvidError::Untrusted { .. }))
        ),
        "{:?}",
        runs[1].1
    );

    // The ID is no longer authorized.
    let none: Authorizer = Arc::new(|_: &SpiffeId| false);
    let runs = full_then_resumed(&ca, |c| established_peer(c, &handle, &none, now)).await;
    assert!(
        matches!(&runs[1].1, Err(PeerRefused::NotAuthorized(_))),
        "{:?}",
        runs[1].1
    );
}
