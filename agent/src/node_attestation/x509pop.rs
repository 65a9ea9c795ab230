//! x509pop on the node: the certificate (and any intermediates) from
//! `x509pop_cert`, its key from `x509pop_key`, and the signature over the
//! CA's challenge with a scheme the key allows.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::SigningKey;
use signet_identity::node_attestation::X509POP_SCHEMES;
use signet_proto::node as pb;

use crate::run::AgentError;

/// The node's certificate chain and key.
pub(crate) struct X509PopNode {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
}

impl X509PopNode {
    /// Reads the chain (PEM or DER, every certificate in the file) and the
    /// key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, AgentError> {
        let cert_err =
            |e: String| AgentError::Io(format!("--x509pop-cert {}: {e}", cert.display()));
        let bytes = std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
        let chain = signet_identity::certificates_from_pem_or_der(&bytes)
            .map_err(|e| cert_err(e.to_string()))?;
        if chain.is_empty() {
            return Err(cert_err("no certificate in it".into()));
        }
        let key_err = |e: String| AgentError::Io(format!("--x509pop-key {}: {e}", key.display()));
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| key_err(format!("{e}; expected a PEM private key")))?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| key_err(format!("unsupported key: {e}")))?;
        Ok(Self { chain, key })
    }

    /// The chain as sent: DER, leaf first.
    pub(crate) fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.iter().map(|c| c.to_vec()).collect()
    }

    /// Signs `message` with the key, in the first scheme it supports.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<pb::ChallengeResponse, AgentError> {
        let signer = self.key.choose_scheme(X509POP_SCHEMES).ok_or_else(|| {
            AgentError::Attestation(
                "the x509pop key supports none of the accepted signature schemes (ECDSA P-256/P-384, Ed25519, RSA)".into(),
            )
        })?;
        let signature = signer
            .sign(message)
            .map_err(|e| AgentError::Attestation(format!("signing the challenge: {e}")))?;
        Ok(pb::ChallengeResponse {
            signature,
            scheme: u16::from(signer.scheme()) as u32,
        })
    }
}
