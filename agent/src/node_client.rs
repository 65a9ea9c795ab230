//! The agent's connection to the CA's node API: TLS 1.3, the CA
//! authenticated as `spiffe://<td>/signet/server` against the bundle, and
//! the agent's own SVID as client certificate once it has one.

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

/// Connects to the node API at `addr`.
pub async fn connect(
    addr: &str,
    td: &TrustDomain,
    trust: &ServerTrust,
    cert: Option<&ClientCert>,
) -> Result<NodeClient<Channel>, ConnectError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(td, trust, cert)?));
    let target = addr.to_owned();
    let channel = Endpoint::from_static("http://signet-ca")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("signet-ca").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| ConnectError::Connect {
            addr: addr.to_owned(),
            reason: innermost(&e),
        })?;
    Ok(NodeClient::new(channel))
}
