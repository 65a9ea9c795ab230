#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::HandshakeKind;
use signet_identity::testing::{LeafSpec, TestCa};
use signet_identity::tls::{provider, BundleHandle};
use signet_identity::x509_svid::unix_seconds;
use signet_identity::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::client::TlsStream;

use super::*;

/// A fresh SVID for `id` from `ca` expiring `later` seconds after the
/// usual test SVID, and its leaf certificate.
fn svid(
    ca: &TestCa,
    bundle: &BundleHandle,
    id: &str,
    later: u64,
) -> (Arc<Identity>, CertificateDer<'static>) {
    let mut spec = LeafSpec::valid(id);
    spec.not_after += std::time::Duration::from_secs(later);
    let (chain, key) = ca.leaf(&spec);
    let leaf = chain[0].clone();
    let signing = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let identity = Identity {
        spiffe_id: SpiffeId::parse(id).unwrap(),
        key: Arc::new(CertifiedKey::new(chain, signing)),
        not_after: unix_seconds(spec.not_after),
        bundle: bundle.clone(),
    };
    (Arc::new(identity), leaf)
}

/// An inbound-side TLS server on loopback that echoes four bytes per
/// connection and reports how each handshake went and which client
/// certificate it saw.
async fn echo_server(
    identity: Arc<Identity>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(HandshakeKind, CertificateDer<'static>)>,
) {
    let (_keep, watch) = watch::channel(Some(identity));
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(watch, Vec::new()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _keep = _keep;
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let conn = tls.get_ref().1;
            let seen = (
                conn.handshake_kind().unwrap(),
                conn.peer_certificates().unwrap()[0].clone(),
            );
            tx.send(seen).unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
        }
    });
    (addr, rx)
}

/// Opens a connection through `tls` and sends four bytes, without reading
/// the answer yet (so no ticket has been taken in).
async fn open(tls: &OutboundTls, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("signet-peer").unwrap();
    let mut stream = tls.connector().unwrap().connect(name, tcp).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream
}

/// Reads the echo, which also takes in the session ticket sent after the
/// handshake.
async fn finish(mut stream: TlsStream<TcpStream>) {
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_ticket_taken_in_after_a_rotation_never_brings_back_the_old_svid() {
    let ca = TestCa::new("example.org");
    let bundle = BundleHandle::new(ca.bundle());
    let (server, _) = svid(&ca, &bundle, "spiffe://example.org/server", 0);
    let (addr, mut seen) = echo_server(server).await;
    let (old, old_leaf) = svid(&ca, &bundle, "spiffe://example.org/client", 0);
    let (new, new_leaf) = svid(&ca, &bundle, "spiffe://example.org/client", 60);
    let (rotate, watch) = watch::channel(Some(old));
    let tls = OutboundTls::new(watch, Arc::new(|_: &SpiffeId| true), Vec::new());

    finish(open(&tls, addr).await).await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (HandshakeKind::Full, old_leaf.clone())
    );
    // Control: the test needs resumption to work.
    let before_rotation = open(&tls, addr).await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (HandshakeKind::Resumed, old_leaf.clone()),
        "the test needs sessions to resume"
    );
    // The SVID rotates while a connection made with the old one is open;
    // that connection takes in its ticket (which names the old SVID) only
    // afterwards.
    rotate.send_replace(Some(new));
    finish(before_rotation).await;

    // New connections present the new SVID, not the old one by resumption.
    finish(open(&tls, addr).await).await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (HandshakeKind::Full, new_leaf.clone())
    );
    finish(open(&tls, addr).await).await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (HandshakeKind::Resumed, new_leaf)
    );
}

#[tokio::test]
async fn flush_forgets_the_tickets() {
    let ca = TestCa::new("example.org");
    let bundle = BundleHandle::new(ca.bundle());
    let (server, _) = svid(&ca, &bundle, "spiffe://example.org/server", 0);
    let (addr, mut seen) = echo_server(server).await;
    let (client, _) = svid(&ca, &bundle, "spiffe://example.org/client", 0);
    let (_keep, watch) = watch::channel(Some(client));
    let tls = OutboundTls::new(watch, Arc::new(|_: &SpiffeId| true), Vec::new());
    finish(open(&tls, addr).await).await;
    finish(open(&tls, addr).await).await;
    assert_eq!(seen.recv().await.unwrap().0, HandshakeKind::Full);
    assert_eq!(seen.recv().await.unwrap().0, HandshakeKind::Resumed);
    tls.flush();
    finish(open(&tls, addr).await).await;
    assert_eq!(seen.recv().await.unwrap().0, HandshakeKind::Full);
}

#[tokio::test]
async fn the_server_picks_aes_128_even_when_the_client_prefers_aes_256() {
    let ca = TestCa::new("example.org");
    let bundle = BundleHandle::new(ca.bundle());
    let (server, _) = svid(&ca, &bundle, "spiffe://example.org/server", 0);
    let (addr, _seen) = echo_server(server).await;
    let (client, _) = svid(&ca, &bundle, "spiffe://example.org/client", 0);
    // A client that puts AES-256 first, as OpenSSL does.
    let mut aes256_first = rustls::crypto::ring::default_provider();
    aes256_first.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(aes256_first))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(signet_identity::tls::SpiffeServerVerifier::new(
            bundle.clone(),
            Arc::new(|_: &SpiffeId| true),
        ))
        .with_client_cert_resolver(Arc::new(PinnedSvid {
            identity: client,
            warned: AtomicI64::new(i64::MIN),
        }));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("signet-peer").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}
