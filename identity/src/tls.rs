//! SPIFFE authentication for rustls: certificate verifiers that accept a peer
//! only when its chain is a valid X.509-SVID of the current bundle
//! ([`verify_x509_svid`]) *and* its SPIFFE ID is one the caller authorizes.
//! Hostnames play no part. TLS 1.3 only, ring provider, AES-128-GCM first
//! (cheaper than AES-256-GCM/SHA-384 with ring on common server CPUs).
//!
//! The bundle sits behind a [`BundleHandle`] so it can be swapped while
//! connections run: new handshakes see the new bundle at once.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::TrustBundle;
use crate::spiffe_id::SpiffeId;
use crate::verify::{verify_x509_svid, SvidError};

/// A shared, swappable trust bundle.
#[derive(Clone)]
pub struct BundleHandle(Arc<RwLock<Arc<TrustBundle>>>);

impl BundleHandle {
    /// A handle holding `bundle`.
    pub fn new(bundle: TrustBundle) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(bundle))))
    }

    /// The bundle in force now.
    pub fn get(&self) -> Arc<TrustBundle> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the bundle for every later handshake.
    pub fn set(&self, bundle: TrustBundle) {
        let new = Arc::new(bundle);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }
}

/// Decides whether an authenticated SPIFFE ID may be the peer.
pub type Authorizer = Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>;

/// Why a peer was refused, carried inside the rustls error.
#[derive(Debug)]
pub enum PeerRefused {
    /// The chain is not a valid SVID of the bundle.
    Svid(SvidError),
    /// The SVID is valid but its ID is not authorized here.
    NotAuthorized(SpiffeId),
}

impl fmt::Display for PeerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRefused::Svid(e) => write!(f, "{e}"),
            PeerRefused::NotAuthorized(id) => write!(f, "peer {id} is not authorized"),
        }
    }
}

impl std::error::Error for PeerRefused {}

fn refuse(r: PeerRefused) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

/// The crypto provider Signet uses everywhere: ring, TLS 1.3 suites with
/// AES-128-GCM first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn system_time(now: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

fn check_peer(
    bundle: &BundleHandle,
    authorize: &Authorizer,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<SpiffeId, rustls::Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    let verified = verify_x509_svid(&chain, &bundle.get(), system_time(now))
        .map_err(|e| refuse(PeerRefused::Svid(e)))?;
    if !authorize(&verified.spiffe_id) {
        return Err(refuse(PeerRefused::NotAuthorized(verified.spiffe_id)));
    }
    Ok(verified.spiffe_id)
}

/// Client side: accepts a server whose SVID verifies and whose ID passes
/// `authorize`.
pub struct SpiffeServerVerifier {
    bundle: BundleHandle,
    authorize: Authorizer,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// A verifier over `bundle` that accepts IDs for which `authorize` is true.
    pub fn new(bundle: BundleHandle, authorize: Authorizer) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            authorize,
            provider: provider(),
        })
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeServerVerifier")
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_peer(
            &self.bundle,
            &self.authorize,
            end_entity,
            intermediates,
            now,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side: accepts a client whose SVID verifies and whose ID passes
/// `authorize`. With `mandatory == false`, a client without a certificate
/// may connect (the application must then treat it as anonymous).
pub struct SpiffeClientVerifier {
    bundle: BundleHandle,
    authorize: Authorizer,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    /// A verifier over `bundle`.
    pub fn new(bundle: BundleHandle, authorize: Authorizer, mandatory: bool) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            authorize,
            mandatory,
            provider: provider(),
        })
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeClientVerifier")
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_peer(
            &self.bundle,
            &self.authorize,
            end_entity,
            intermediates,
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SPIFFE ID of a peer's leaf certificate as presented on a connection
/// (after a verifier above accepted it).
pub fn peer_spiffe_id(leaf: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    crate::x509_svid::leaf_spiffe_id(&cert).ok()
}

/// The authenticated peer of an established TLS connection, safe against
/// session resumption.
///
/// After a full handshake the verifiers above have checked the peer's chain,
/// so only its ID is read. A resumed TLS 1.3 handshake runs no verifier: the
/// peer sends no certificate and rustls restores the chain stored in the
/// session ticket, however long ago it was checked. Without a fresh check a
/// peer whose SVID has since expired, whose authority left the bundle, or
/// whose ID is no longer authorized would be served as its old identity, for
/// as long as it keeps resuming (every resumption yields a new ticket). So
/// for a resumed session the stored chain is verified again, now, against
/// the current bundle and `authorize`.
pub fn established_peer(
    conn: &rustls::CommonState,
    bundle: &BundleHandle,
    authorize: &Authorizer,
    now: SystemTime,
) -> Result<SpiffeId, PeerRefused> {
    let chain = conn
        .peer_certificates()
        .filter(|c| !c.is_empty())
        .ok_or(PeerRefused::Svid(SvidError::EmptyChain))?;
    if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        let leaf = &chain[0];
        return peer_spiffe_id(leaf).ok_or(PeerRefused::Svid(SvidError::EmptyChain));
    }
    let verified = verify_x509_svid(chain, &bundle.get(), now).map_err(PeerRefused::Svid)?;
    if !authorize(&verified.spiffe_id) {
        return Err(PeerRefused::NotAuthorized(verified.spiffe_id));
    }
    Ok(verified.spiffe_id)
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
