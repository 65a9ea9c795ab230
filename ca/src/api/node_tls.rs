//! TLS for the node API: the CA serves it with its own X.509-SVID
//! (`spiffe://<td>/signet/server`, re-issued at half-life) and asks clients
//! for an agent SVID. A client without a certificate is let through the
//! handshake (only `AttestAgent` accepts that); a client certificate that is
//! not a valid agent SVID of this trust domain fails the handshake.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use signet_identity::admission::Admission;
use signet_identity::tls::{provider, Authorizer, BundleHandle, SpiffeClientVerifier};
use signet_identity::SpiffeId;
use std::net::IpAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

use crate::config::NodeApiLimits;

use crate::keys::issuance::check_csr;
use crate::registry::entry::{AGENT_PATH_PREFIX, SERVER_PATH};
use crate::{Ca, CaError};

/// Serves the CA's current server SVID to every handshake.
#[derive(Debug)]
pub(crate) struct ServerCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }
}

impl ServerCertResolver {
    fn set(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(p) => *p.into_inner() = key,
        }
    }
}

/// The CA's node API server SVID: key generated here, signed by the CA's
/// own authority like any other SVID.
fn issue_server_svid(ca: &Ca) -> Result<(Arc<CertifiedKey>, Duration), CaError> {
    let id = ca
        .trust_domain
        .spiffe_id(SERVER_PATH)
        .map_err(|e| CaError::InvalidArgument(e.to_string()))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(crate::keys::issuance::IssueError::Sign)?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(crate::keys::issuance::IssueError::Sign)?;
    let svid = ca.sign_server_svid(&id, &check_csr(csr.der())?)?;
    let now = ca.clock.now();
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|e| CaError::InvalidArgument(format!("server key: {e}")))?;
    let lifetime = Duration::from_secs(
        (svid.not_after - signet_identity::x509_svid::unix_seconds(now)).max(2) as u64,
    );
    Ok((
        Arc::new(CertifiedKey::new(svid.chain, signing_key)),
        lifetime,
    ))
}

/// The rustls server configuration of the node API, and the resolver whose
/// certificate [`rotate_server_svid`] keeps fresh.
pub(crate) fn server_config(
    ca: &Ca,
    bundle: BundleHandle,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ServerCertResolver>, Duration), CaError> {
    let (key, lifetime) = issue_server_svid(ca)?;
    let resolver = Arc::new(ServerCertResolver {
        current: RwLock::new(key),
    });
    let agent_prefix = ca
        .trust_domain
        .spiffe_id(AGENT_PATH_PREFIX)
        .map_err(|e| CaError::InvalidArgument(e.to_string()))?;
    let authorize: Authorizer =
        Arc::new(move |id: &SpiffeId| id.is_under(&agent_prefix) && *id != agent_prefix);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::InvalidArgument(format!("TLS: {e}")))?
        .with_client_cert_verifier(SpiffeClientVerifier::new(bundle, authorize, false))
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed TLS 1.3 session runs no certificate
    // verifier, so an agent whose SVID has expired could resume its way
    // back in. Agents hold one long-lived connection, so full handshakes
    // cost nothing that matters.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok((Arc::new(config), resolver, lifetime))
}

/// Re-issues the server SVID at half of its lifetime until `stop`.
pub(crate) async fn rotate_server_svid(
    ca: Arc<Ca>,
    resolver: Arc<ServerCertResolver>,
    mut lifetime: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut active_key = ca.subscribe_active_key();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lifetime / 2) => {}
            // A new signing key: re-sign now, so the server SVID never
            // depends on a key an operator may taint or revoke next.
            r = active_key.changed() => if r.is_err() { return },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        }
        match issue_server_svid(&ca) {
            Ok((key, l)) => {
                resolver.set(key);
                lifetime = l;
                tracing::debug!("node API server SVID renewed");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the node API server SVID; retrying in 30s");
                lifetime = Duration::from_secs(60);
            }
        }
    }
}

/// Established node API connections, sorted by whether the client proved
/// itself with an agent SVID in the handshake. The two kinds are served by
/// differently limited servers: a client without a certificate can only
/// attest, so it gets small messages, few streams and a short life.
pub(crate) struct NodeIncoming {
    /// Connections with an agent SVID.
    pub agents: mpsc::Receiver<Result<Admitted, std::io::Error>>,
    /// Connections without a client certificate (attestation only).
    pub unauthenticated: mpsc::Receiver<Result<Admitted, std::io::Error>>,
}

/// A TLS connection that holds its place under the node API's limits for
/// as long as it is open.
pub(crate) type Admitted = signet_identity::admission::Admitted<TlsStream<TcpStream>, IpAddr>;

/// Accepts TCP connections under `limits`, completes TLS handshakes off the
/// accept loop, and hands established streams to the two servers.
pub(crate) fn accept_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: &NodeApiLimits,
    ca: Arc<Ca>,
    mut stop: watch::Receiver<bool>,
) -> NodeIncoming {
    let (agents_tx, agents) = mpsc::channel(64);
    let (unauth_tx, unauthenticated) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let admission = Admission::new(
        limits.max_connections,
        limits.max_unauthenticated_per_source,
    );
    let handshake_timeout = Duration::from_secs(limits.handshake_timeout);
    let refusals = signet_identity::admission::RefusalLog::new(Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "node API accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let mut ticket = match admission.admit(peer.ip()) {
                Ok(t) => t,
                Err(refused) => {
                    ca.metrics().attestation_failed(refused.reason());
                    if refusals.first_in_interval(
                        peer.ip(),
                        refused.reason(),
                        std::time::Instant::now(),
                    ) {
                        tracing::info!(listener = "node_api", client = %peer.ip(), limit = refused.reason(), "connection refused by a limit (logged once a minute per client and limit); an agent refused here retries with backoff");
                    }
                    continue;
                }
            };
            // Small gRPC frames must not wait for delayed ACKs (Nagle).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let (agents_tx, unauth_tx) = (agents_tx.clone(), unauth_tx.clone());
            let ca = ca.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let has_cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .is_some_and(|c| !c.is_empty());
                        let tx = if has_cert {
                            // An agent: no longer counted against its address.
                            ticket.established();
                            agents_tx
                        } else {
                            unauth_tx
                        };
                        let _ = tx.send(Ok(Admitted::new(tls, ticket))).await;
                    }
                    Ok(Err(e)) => {
                        ca.metrics().attestation_failed("handshake_failed");
                        tracing::info!(peer = %peer, error = %e, "node API handshake refused")
                    }
                    Err(_) => {
                        ca.metrics().attestation_failed("handshake_timeout");
                        tracing::debug!(peer = %peer, "node API handshake timed out")
                    }
                }
            });
        }
    });
    NodeIncoming {
        agents,
        unauthenticated,
    }
}
