//! How this node proves itself to the CA: one module per method behind
//! [`NodeAttestor`], and the `AttestNode` exchange that carries it
//! ([`attest`]). The workload attestor (who a local caller is) is
//! another matter: `workload_attestor`.
//!
//! ```text
//!   AttestationStart { csr, evidence }  ──▶  CA
//!   ◀── Challenge { nonce }                  (x509pop)
//!   ChallengeResponse { scheme, signature over challenge_message(method, nonce, csr) } ──▶
//!   ◀── AgentSvid
//! ```

pub(crate) mod sshpop;
pub(crate) mod x509pop;

use signet_proto::node as pb;
use signet_proto::node::node_client::NodeClient;
use tonic::transport::Channel;

use crate::config::{AgentConfig, NodeAttestationMethod};
use crate::run::AgentError;

/// This node's way of proving itself.
pub(crate) enum NodeAttestor {
    /// A single-use join token.
    JoinToken(String),
    /// A certificate and its key.
    X509Pop(x509pop::X509PopNode),
    /// An SSH host certificate and the host key.
    SshPop(Box<sshpop::SshPopNode>),
}

impl NodeAttestor {
    /// The attestor the configuration names, with its material read and
    /// checked; a missing setting is named with its flag.
    pub(crate) fn from_config(config: &AgentConfig) -> Result<Self, AgentError> {
        match config.node_attestation {
            NodeAttestationMethod::JoinToken => {
                let token = config.join_token.as_deref().ok_or_else(|| {
                    AgentError::Missing(
                        "this agent has no identity yet: pass --join-token (create one with `signet token create` on the CA), or attest by proof with --node-attestation x509pop".into(),
                    )
                })?;
                Ok(Self::JoinToken(token.to_owned()))
            }
            NodeAttestationMethod::X509pop => {
                let (Some(cert), Some(key)) = (&config.x509pop_cert, &config.x509pop_key) else {
                    return Err(AgentError::Missing(
                        "--node-attestation x509pop needs --x509pop-cert and --x509pop-key (the node's certificate and its key)".into(),
                    ));
                };
                Ok(Self::X509Pop(x509pop::X509PopNode::load(cert, key)?))
            }
            NodeAttestationMethod::Sshpop => {
                let (cert, key) = match (&config.sshpop_cert, &config.sshpop_key) {
                    (Some(c), Some(k)) => (c.clone(), k.clone()),
                    (None, None) => sshpop::default_paths().ok_or_else(|| {
                        AgentError::Missing(
                            "--node-attestation sshpop: no /etc/ssh/ssh_host_{ed25519,ecdsa,rsa}_key-cert.pub here; pass --sshpop-cert and --sshpop-key".into(),
                        )
                    })?,
                    (Some(c), None) => (c.clone(), sshpop::key_beside(c)),
                    (None, Some(k)) => (sshpop::cert_beside(k), k.clone()),
                };
                Ok(Self::SshPop(Box::new(sshpop::SshPopNode::load(
                    &cert, &key,
                )?)))
            }
        }
    }

    /// The method's name.
    pub(crate) fn method(&self) -> &'static str {
        use signet_identity::node_attestation as m;
        match self {
            Self::JoinToken(_) => m::JOIN_TOKEN,
            Self::X509Pop(_) => m::X509POP,
            Self::SshPop(_) => m::SSHPOP,
        }
    }

    fn evidence(&self) -> pb::attestation_start::Evidence {
        match self {
            Self::JoinToken(t) => pb::attestation_start::Evidence::JoinToken(t.clone()),
            Self::X509Pop(n) => pb::attestation_start::Evidence::X509pop(pb::X509PopEvidence {
                cert_chain: n.chain_der(),
            }),
            Self::SshPop(n) => pb::attestation_start::Evidence::Sshpop(pb::SshPopEvidence {
                certificate: n.certificate().to_owned(),
            }),
        }
    }

    fn answer(&self, nonce: &[u8], csr: &[u8]) -> Result<pb::ChallengeResponse, AgentError> {
        let message =
            signet_identity::node_attestation::challenge_message(self.method(), nonce, csr);
        match self {
            Self::JoinToken(_) => Err(AgentError::Attestation(
                "the CA challenged a join token; is it a Signet CA?".into(),
            )),
            Self::X509Pop(n) => n.sign(&message),
            Self::SshPop(n) => n.sign(&message),
        }
    }
}

/// Why one `AttestNode` exchange failed.
pub(crate) enum ExchangeError {
    /// The CA answered with this status.
    Status(tonic::Status),
    /// Something on this side.
    Local(AgentError),
}

/// Runs one `AttestNode` exchange: the start, the challenge if the CA
/// sends one, and the agent SVID.
pub(crate) async fn attest(
    client: &mut NodeClient<Channel>,
    attestor: &NodeAttestor,
    csr: Vec<u8>,
) -> Result<pb::AgentSvid, ExchangeError> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let start = pb::AttestNodeRequest {
        step: Some(pb::attest_node_request::Step::Start(pb::AttestationStart {
            csr: csr.clone(),
            evidence: Some(attestor.evidence()),
        })),
    };
    tx.send(start)
        .await
        .map_err(|_| ExchangeError::Local(AgentError::Io("attestation stream closed".into())))?;
    let mut responses = client
        .attest_node(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(ExchangeError::Status)?
        .into_inner();
    loop {
        let step = responses
            .message()
            .await
            .map_err(ExchangeError::Status)?
            .and_then(|m| m.step)
            .ok_or_else(|| {
                ExchangeError::Local(AgentError::Attestation(
                    "the CA ended the attestation stream without an answer".into(),
                ))
            })?;
        match step {
            pb::attest_node_response::Step::Svid(svid) => return Ok(svid),
            pb::attest_node_response::Step::Challenge(c) => {
                let answer = attestor
                    .answer(&c.nonce, &csr)
                    .map_err(ExchangeError::Local)?;
                let msg = pb::AttestNodeRequest {
                    step: Some(pb::attest_node_request::Step::ChallengeResponse(answer)),
                };
                tx.send(msg).await.map_err(|_| {
                    ExchangeError::Local(AgentError::Io("attestation stream closed".into()))
                })?;
            }
        }
    }
}
