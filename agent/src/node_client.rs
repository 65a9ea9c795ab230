//! The agent's connection to the CA's node API: TLS 1.3, the CA
//! authenticated as `spiffe://<td>/signet/server` against the bundle, and
//! the agent's own SVID as client certificate once it has one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use signet_identity::tls::{provider, Authorizer, BundleHandle, SpiffeServerVerifier};
use signet_identity::{SpiffeId, TrustDomain};
use signet_proto::node::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint, Uri};

use signet_identity::reserved::SERVER_PATH;

/// Why the CA could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TLS configuration could not be built (bad key or certificate).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// TCP, TLS or HTTP/2 failed.
    #[error("cannot connect to the CA at {addr}: {reason}")]
    Connect {
        /// The CA address.
        addr: String,
        /// Innermost cause.
        reason: String,
    },
}

/// How the agent decides the server really is its CA.
#[derive(Clone)]
pub enum ServerTrust {
    /// Verify the CA's SVID against this bundle.
    Bundle(BundleHandle),
    /// Accept any server (first contact in development only).
    InsecureBootstrap,
}

/// The agent's client certificate.
#[derive(Clone)]
pub struct ClientCert {
    /// Agent SVID chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 private key.
    pub key_pkcs8: Vec<u8>,
}

/// Accepts any server certificate but still checks handshake signatures.
#[derive(Debug)]
struct InsecureVerifier(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(
    td: &TrustDomain,
    trust: &ServerTrust,
    cert: Option<&ClientCert>,
) -> Result<rustls::ClientConfig, ConnectError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .dangerous();
    let builder = match trust {
        ServerTrust::Bundle(bundle) => {
            let server_id = td
                .spiffe_id(SERVER_PATH)
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
            let authorize: Authorizer = Arc::new(move |id: &SpiffeId| *id == server_id);
            builder.with_custom_certificate_verifier(SpiffeServerVerifier::new(
                bundle.clone(),
                authorize,
            ))
        }
        ServerTrust::InsecureBootstrap => {
            builder.with_custom_certificate_verifier(Arc::new(InsecureVerifier(provider())))
        }
    };
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                c.chain.clone(),
                PrivateKeyDer::Pkcs8(c.key_pkcs8.clone().into()),
            )
            .map_err(|e| ConnectError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn innermost(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// How long one address gets to accept TCP and finish the TLS handshake
/// before the next is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the node API at the first of `addrs` that answers. Each
/// `host:port` is resolved again on every connection (a DNS name may stand
/// for several replicas, and they move), every address it resolves to is
/// tried, and the address that answered last is tried first next time.
/// The first try starts at a random address, so a fleet spreads over the
/// replicas.
pub async fn connect(
    addrs: &[String],
    td: &TrustDomain,
    trust: &ServerTrust,
    cert: Option<&ClientCert>,
) -> Result<NodeClient<Channel>, ConnectError> {
    let (endpoint, dialer) = endpoint_and_dialer(addrs, td, trust, cert)?;
    let channel =
        endpoint
            .connect_with_connector(dialer)
            .await
            .map_err(|e| ConnectError::Connect {
                addr: addrs.join(", "),
                reason: innermost(&e),
            })?;
    Ok(NodeClient::new(channel))
}

/// Like [`connect`], but the connection is made on first use (and again
/// after it fails): a connection of its own for long-lived streams that
/// must not take the stream budget of the connection SVID renewal uses,
/// costing the CA nothing while unused.
pub fn connect_lazy(
    addrs: &[String],
    td: &TrustDomain,
    trust: &ServerTrust,
    cert: Option<&ClientCert>,
) -> Result<NodeClient<Channel>, ConnectError> {
    let (endpoint, dialer) = endpoint_and_dialer(addrs, td, trust, cert)?;
    Ok(NodeClient::new(
        endpoint.connect_with_connector_lazy(dialer),
    ))
}

/// The channel settings and the dialer of a connection to the CA.
fn endpoint_and_dialer(
    addrs: &[String],
    td: &TrustDomain,
    trust: &ServerTrust,
    cert: Option<&ClientCert>,
) -> Result<
    (
        Endpoint,
        impl tower::Service<
                Uri,
                Response = TokioIo<TlsStream>,
                Error = std::io::Error,
                Future = impl Send,
            > + Clone
            + Send
            + 'static,
    ),
    ConnectError,
> {
    if addrs.is_empty() {
        return Err(ConnectError::Connect {
            addr: String::new(),
            reason: "no CA address configured".into(),
        });
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(td, trust, cert)?));
    let addrs: Arc<[String]> = addrs.into();
    let start = (rand::random::<f64>() * addrs.len() as f64) as usize % addrs.len();
    let preferred = Arc::new(AtomicUsize::new(start));
    let endpoint = Endpoint::from_static("http://signet-ca")
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let dialer = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let targets = addrs.clone();
        let preferred = preferred.clone();
        async move {
            let tls = dial(&targets, &preferred, &connector).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok((endpoint, dialer))
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Tries every address in turn from the preferred one.
async fn dial(
    addrs: &[String],
    preferred: &AtomicUsize,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<TlsStream> {
    let first = preferred.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    for i in 0..addrs.len() {
        let index = (first + i) % addrs.len();
        match dial_one(&addrs[index], connector).await {
            Ok(tls) => {
                preferred.store(index, Ordering::Relaxed);
                tracing::debug!(ca = %addrs[index], "connected to a CA replica");
                return Ok(tls);
            }
            Err(e) => failures.push(format!("{}: {e}", addrs[index])),
        }
    }
    Err(std::io::Error::other(failures.join("; ")))
}

/// Resolves `addr` and tries each address it names.
async fn dial_one(
    addr: &str,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<TlsStream> {
    let mut last = std::io::Error::other("resolves to no address");
    for target in tokio::net::lookup_host(addr).await? {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(target).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("signet-ca").map_err(std::io::Error::other)?;
            connector.connect(name, tcp).await
        };
        match tokio::time::timeout(DIAL_TIMEOUT, attempt).await {
            Ok(Ok(tls)) => return Ok(tls),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        }
    }
    Err(last)
}
