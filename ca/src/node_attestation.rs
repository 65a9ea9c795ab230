//! How a node proves itself to the CA: one module per method, behind one
//! flow that [`crate::Ca::begin_attestation`] and
//! [`crate::Ca::finish_attestation`] drive for the node API's `AttestNode`
//! stream.
//!
//! ```text
//!   AttestationStart { csr, evidence } ──▶ cheap checks (sizes, CSR, throttle)
//!        │ join_token: the token is spent ──────────────────────────────▶ AttestedNode
//!        │ x509pop: chain verified against the configured roots
//!        │ sshpop: host certificate checked against the configured SSH CAs
//!        ▼
//!   Challenge { nonce } ──▶ ChallengeResponse { scheme, signature }
//!        │ signature over node_attestation::challenge_message(method, nonce, csr)
//!        ▼
//!   AttestedNode { agent ID, method, node selectors } ──▶ agent SVID
//! ```
//!
//! A method yields the agent's SPIFFE ID (a documented path per method)
//! and its node selectors, stored with the agent.

pub(crate) mod path_template;
pub(crate) mod sshpop;
pub(crate) mod x509pop;

use rustls_pki_types::CertificateDer;
use signet_identity::SpiffeId;

use crate::ca::AgentRefused;

/// What a node presents in the first message: the method and its evidence.
#[derive(Debug, Clone)]
pub enum Evidence {
    /// A single-use join token.
    JoinToken(String),
    /// A certificate chain (DER, leaf first) from a CA trusted for nodes.
    X509Pop(Vec<Vec<u8>>),
    /// An OpenSSH host certificate.
    SshPop(String),
}

impl Evidence {
    /// The method's name.
    pub fn method(&self) -> &'static str {
        use signet_identity::node_attestation as m;
        match self {
            Evidence::JoinToken(_) => m::JOIN_TOKEN,
            Evidence::X509Pop(_) => m::X509POP,
            Evidence::SshPop(_) => m::SSHPOP,
        }
    }
}

/// What a node proved of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedNode {
    /// The agent's SPIFFE ID.
    pub agent_id: SpiffeId,
    /// The method it proved itself with.
    pub method: &'static str,
    /// Its node selectors, e.g. `x509pop:san:dns:web-17.prod.example.com`.
    pub selectors: Vec<String>,
}

/// A proof of possession the CA asked a node for: the node it will be
/// once it signs the challenge with the key its evidence names.
pub struct PendingProof {
    pub(crate) node: AttestedNode,
    pub(crate) nonce: [u8; signet_identity::node_attestation::NONCE_LEN],
    pub(crate) key: ProofKey,
    pub(crate) csr_der: Vec<u8>,
    pub(crate) csr: crate::keys::issuance::CheckedCsr,
}

/// The key a pending proof must be made with.
pub(crate) enum ProofKey {
    /// The x509pop leaf certificate's key.
    X509Leaf(CertificateDer<'static>),
    /// The sshpop host key.
    SshHost(ssh_key::PublicKey),
}

impl PendingProof {
    /// The challenge to send.
    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    /// The method it was asked for.
    pub fn method(&self) -> &'static str {
        self.node.method
    }

    /// Checks the node's answer: a signature with the proven key over the
    /// challenge message for this nonce and CSR.
    pub(crate) fn verify(&self, scheme: u32, signature: &[u8]) -> Result<(), AgentRefused> {
        let message = signet_identity::node_attestation::challenge_message(
            self.node.method,
            &self.nonce,
            &self.csr_der,
        );
        match &self.key {
            ProofKey::X509Leaf(leaf) => x509pop::verify_proof(leaf, scheme, &message, signature),
            ProofKey::SshHost(key) => sshpop::verify_proof(key, &message, signature),
        }
    }
}

#[cfg(test)]
mod sshpop_tests;
#[cfg(test)]
mod tests;
