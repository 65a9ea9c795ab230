//! Attested agents: how a node is admitted (attestation), renews its SVID
//! and keeps its standing, and what the operator does to them (list, ban,
//! evict). The node API calls these; it never reaches the store itself.

use signet_identity::x509_svid::unix_seconds;
use signet_identity::{SpiffeId, TrustBundle};

use crate::keys::issuance::{check_csr, sign_x509_svid, CheckedCsr, IssuedSvid};
use crate::node_attestation::{AttestedNode, Evidence, PendingProof, ProofKey};
use crate::registry::join_token;
use crate::store::{AgentRecord, StoreError, TokenUse};
use signet_identity::node_attestation::{JOIN_TOKEN, NONCE_LEN, SSHPOP, X509POP};

use super::{Ca, CaError};

/// Why a node was refused: it proved nothing, or what it proved does not
/// make it an agent in good standing. The node API answers
/// PERMISSION_DENIED (INVALID_ARGUMENT for a bad CSR) with this message.
#[derive(Debug, thiserror::Error)]
pub enum AgentRefused {
    /// Not on record (never attested, or evicted).
    #[error("agent {0} is not attested (evicted?); re-attest with a new join token")]
    NotAttested(String),
    /// Banned by the operator.
    #[error("agent {0} is banned")]
    Banned(String),
    /// The join token's time is up.
    #[error("join token has expired; create a new one")]
    TokenExpired,
    /// No such join token, or it was used already.
    #[error("join token is unknown or already used")]
    TokenUnknown,
    /// The CSR is unusable; checked before the join token is spent.
    #[error("{0}; the join token was not used")]
    BadCsr(crate::keys::issuance::IssueError),
    /// The node named a method this CA is not configured for.
    #[error("node attestation method {0} is not enabled on this CA; configure [node_attestation.{0}] there, or attest with another method")]
    MethodDisabled(&'static str),
    /// The evidence is malformed (nothing was verified yet).
    #[error("{method}: {detail}")]
    BadEvidence {
        /// The method.
        method: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The evidence does not prove the node: untrusted, expired, or the
    /// proof of possession failed.
    #[error("{method}: {detail}")]
    NotProven {
        /// The method.
        method: &'static str,
        /// The metric's reason label, e.g. `x509pop_untrusted`.
        reason: &'static str,
        /// What failed, and what to do.
        detail: String,
    },
    /// The node sent something other than the step the stream is at.
    #[error("node attestation: {0}")]
    OutOfStep(String),
    /// The agent asked for an SVID of an entry parented to another agent
    /// (or to none); nothing was signed.
    #[error("entry {entry_id} is not parented to {agent_id}; nothing was signed")]
    ForeignEntry {
        /// The agent.
        agent_id: String,
        /// The entry it asked for.
        entry_id: String,
    },
    /// The SVID the connection was made with is neither the agent's current
    /// one nor the one it last renewed from.
    #[error("agent {id} presented SVID serial {serial}, neither its current nor its previous one; re-connect with the latest SVID")]
    StaleSvid {
        /// The agent.
        id: String,
        /// The serial it presented (hex).
        serial: String,
    },
}

impl AgentRefused {
    /// The `reason` label of `signet_ca_attestation_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AgentRefused::NotAttested(_) => "not_attested",
            AgentRefused::Banned(_) => "banned",
            AgentRefused::TokenExpired => "expired_token",
            AgentRefused::TokenUnknown => "unknown_token",
            AgentRefused::BadCsr(_) => "bad_csr",
            AgentRefused::StaleSvid { .. } => "stale_svid",
            AgentRefused::ForeignEntry { .. } => "foreign_entry",
            AgentRefused::MethodDisabled(_) => "method_disabled",
            AgentRefused::BadEvidence { .. } => "bad_evidence",
            AgentRefused::NotProven { reason, .. } => reason,
            AgentRefused::OutOfStep(_) => "out_of_step",
        }
    }
}

/// An agent's new SVID, with the bundle it chains to.
pub struct AgentSvid {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The signed chain.
    pub svid: IssuedSvid,
    /// The trust bundle in force.
    pub bundle: TrustBundle,
}

impl Ca {
    /// Lists agents.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, CaError> {
        Ok(self.store.list_agents().await?)
    }

    /// Bans an agent.
    pub async fn ban_agent(&self, spiffe_id: &str) -> Result<AgentRecord, CaError> {
        let agent = self.store.ban_agent(spiffe_id, self.now_secs()).await?;
        self.applied().await;
        tracing::warn!(agent_id = spiffe_id, "agent banned");
        Ok(agent)
    }

    /// Evicts an agent.
    pub async fn evict_agent(&self, spiffe_id: &str) -> Result<(), CaError> {
        self.store.delete_agent(spiffe_id, self.now_secs()).await?;
        self.applied().await;
        tracing::warn!(agent_id = spiffe_id, "agent evicted");
        Ok(())
    }

    /// Agent `id`'s record, if it is on record and not banned.
    pub async fn agent_in_good_standing(&self, id: &str) -> Result<AgentRecord, CaError> {
        let agent = match self.store.get_agent(id).await {
            Ok(a) => a,
            Err(StoreError::NotFound(_)) => {
                return Err(AgentRefused::NotAttested(id.to_owned()).into())
            }
            Err(e) => return Err(e.into()),
        };
        if agent.banned {
            return Err(AgentRefused::Banned(id.to_owned()).into());
        }
        Ok(agent)
    }

    /// Entry `entry_id`, if it is parented to `agent` (authorized with
    /// [`Ca::authorize_agent`]): an agent gets SVIDs only for its own
    /// entries. Another agent's is refused, counted and logged; `what` names
    /// the SVID asked for in the log.
    pub async fn agent_entry(
        &self,
        agent: &AgentRecord,
        entry_id: &str,
        what: &str,
    ) -> Result<std::sync::Arc<crate::registry::entry::Entry>, CaError> {
        let entry = self.entry(entry_id).await?;
        if entry.spec.parent_id.as_str() != agent.spiffe_id {
            let refused = AgentRefused::ForeignEntry {
                agent_id: agent.spiffe_id.clone(),
                entry_id: entry_id.to_owned(),
            };
            self.metrics.attestation_failed(refused.reason());
            tracing::warn!(agent_id = %agent.spiffe_id, %entry_id, kind = what, "agent asked for an SVID of an entry that is not its own");
            return Err(refused.into());
        }
        Ok(entry)
    }

    /// The record of the agent that made a connection with the SVID of
    /// serial `serial` (hex), if that SVID may still be used: its current
    /// one, or the one it last renewed from while the renewal's answer is
    /// not known to have reached it.
    pub async fn authorize_agent(
        &self,
        id: &SpiffeId,
        serial: &str,
    ) -> Result<AgentRecord, CaError> {
        let mut agent = self.agent_in_good_standing(id.as_str()).await?;
        if agent.svid_serial == serial {
            if agent.previous_svid_serial.is_some() {
                // The renewed SVID reached the agent: the old one is done.
                self.store
                    .forget_previous_serial(id.as_str(), serial)
                    .await?;
                agent.previous_svid_serial = None;
            }
            return Ok(agent);
        }
        if agent.previous_svid_serial.as_deref() == Some(serial) {
            // The last renewal's answer never reached the agent (or was
            // not stored): it may go on with the SVID it renewed from.
            tracing::info!(agent_id = %id, serial = %serial, "agent presented the SVID it last renewed from; accepted until it uses the new one");
            agent.svid_serial = serial.to_owned();
            return Ok(agent);
        }
        Err(AgentRefused::StaleSvid {
            id: id.to_string(),
            serial: serial.to_owned(),
        }
        .into())
    }

    /// Admits a node that proves itself with `join_token` and signs its
    /// first SVID from `csr` (the node API's older `AttestAgent`: the
    /// join-token case of [`Ca::begin_attestation`]).
    pub async fn attest_agent(&self, join_token: &str, csr: &[u8]) -> Result<AgentSvid, CaError> {
        match self
            .begin_attestation(Evidence::JoinToken(join_token.to_owned()), csr)
            .await?
        {
            Attestation::Attested(svid) => Ok(svid),
            Attestation::Challenge(_) => Err(CaError::InvalidArgument(
                "a join token is never challenged".into(),
            )),
        }
    }

    /// The first step of node attestation: checks the CSR (before anything
    /// is spent on it), then the evidence by its method. A join token is
    /// spent and the node attested at once; a proof-of-possession method
    /// verifies what the node presented and answers with a challenge to
    /// sign ([`Ca::finish_attestation`]). Every refusal is counted by
    /// reason.
    pub async fn begin_attestation(
        &self,
        evidence: Evidence,
        csr_der: &[u8],
    ) -> Result<Attestation, CaError> {
        let csr = match check_csr(csr_der) {
            Ok(csr) => csr,
            Err(e) => {
                self.metrics.issuance_failed(&e);
                return Err(self.refused(AgentRefused::BadCsr(e)));
            }
        };
        match evidence {
            Evidence::JoinToken(token) => {
                let node = self.spend_join_token(&token).await?;
                Ok(Attestation::Attested(self.admit(&node, &csr).await?))
            }
            Evidence::X509Pop(chain) => {
                let attestor = self
                    .x509pop
                    .as_ref()
                    .ok_or_else(|| self.refused(AgentRefused::MethodDisabled(X509POP)))?;
                let (node, leaf) = attestor
                    .verify_chain(&self.trust_domain, &chain, self.clock.now())
                    .map_err(|r| self.refused(r))?;
                Ok(Attestation::Challenge(PendingProof {
                    node,
                    nonce: fresh_nonce()?,
                    key: ProofKey::X509Leaf(leaf),
                    csr_der: csr_der.to_vec(),
                    csr,
                }))
            }
            Evidence::SshPop(certificate) => {
                let attestor = self
                    .sshpop
                    .as_ref()
                    .ok_or_else(|| self.refused(AgentRefused::MethodDisabled(SSHPOP)))?;
                let (node, host_key) = attestor
                    .verify_certificate(&self.trust_domain, &certificate, self.clock.now())
                    .map_err(|r| self.refused(r))?;
                Ok(Attestation::Challenge(PendingProof {
                    node,
                    nonce: fresh_nonce()?,
                    key: ProofKey::SshHost(host_key),
                    csr_der: csr_der.to_vec(),
                    csr,
                }))
            }
        }
    }

    /// The last step of a challenged attestation: the node's signature over
    /// the challenge with the key its evidence named; then the node is
    /// admitted (its agent SVID signed) unless its agent ID is banned.
    pub async fn finish_attestation(
        &self,
        pending: PendingProof,
        scheme: u32,
        signature: &[u8],
    ) -> Result<AgentSvid, CaError> {
        pending
            .verify(scheme, signature)
            .map_err(|r| self.refused(r))?;
        self.admit(&pending.node, &pending.csr).await
    }

    /// Counts a refusal by reason and makes it an error.
    fn refused(&self, r: AgentRefused) -> CaError {
        self.metrics.attestation_failed(r.reason());
        CaError::from(r)
    }

    /// Spends a join token: the node it names.
    async fn spend_join_token(&self, token: &str) -> Result<AttestedNode, CaError> {
        let agent_id = match self
            .store
            .use_join_token(&join_token::hash(token), self.now_secs())
            .await?
        {
            TokenUse::Accepted { agent_id } => agent_id,
            TokenUse::Expired => return Err(self.refused(AgentRefused::TokenExpired)),
            TokenUse::Unknown => return Err(self.refused(AgentRefused::TokenUnknown)),
        };
        let agent_id = SpiffeId::parse(&agent_id)
            .map_err(|e| CaError::InvalidArgument(format!("stored agent ID: {e}")))?;
        Ok(AttestedNode {
            agent_id,
            method: JOIN_TOKEN,
            selectors: Vec::new(),
        })
    }

    /// Admits an attested node: refused if its agent ID is banned (whatever
    /// the method); otherwise its agent SVID is signed and its record
    /// (method, node selectors) written. An evicted agent may come back
    /// this way, by proof, as in SPIRE.
    async fn admit(&self, node: &AttestedNode, csr: &CheckedCsr) -> Result<AgentSvid, CaError> {
        let id = &node.agent_id;
        if let Ok(existing) = self.store.get_agent(id.as_str()).await {
            if existing.banned {
                return Err(self.refused(AgentRefused::Banned(id.to_string())));
            }
        }
        let (svid, record) = self.sign_agent_svid(node, csr, None).await?;
        self.store.upsert_agent(&record).await?;
        tracing::info!(agent_id = %id, method = node.method, selectors = node.selectors.len(), serial = %record.svid_serial, "agent attested");
        Ok(svid)
    }

    /// Signs a new SVID from `csr` for `agent` (authorized with
    /// [`Ca::authorize_agent`]) and makes it current; the one presented
    /// stays usable until the agent uses the new one.
    pub async fn renew_agent(&self, agent: &AgentRecord, csr: &[u8]) -> Result<AgentSvid, CaError> {
        let node = AttestedNode {
            agent_id: SpiffeId::parse(&agent.spiffe_id)
                .map_err(|e| CaError::InvalidArgument(format!("stored agent ID: {e}")))?,
            method: method_name(&agent.attestation_type),
            selectors: agent.node_selectors.clone(),
        };
        let id = &node.agent_id;
        let csr = check_csr(csr).inspect_err(|e| self.metrics.issuance_failed(e))?;
        let (svid, mut record) = self
            .sign_agent_svid(&node, &csr, Some(agent.svid_serial.clone()))
            .await?;
        record.created_at = agent.created_at;
        self.store.upsert_agent(&record).await?;
        tracing::info!(agent_id = %id, serial = %record.svid_serial, "agent SVID renewed");
        Ok(svid)
    }

    /// Signs an agent SVID and the record that makes it current;
    /// `renewed_from` is the serial presented on renewal (`None` on
    /// attestation).
    async fn sign_agent_svid(
        &self,
        node: &AttestedNode,
        csr: &CheckedCsr,
        renewed_from: Option<String>,
    ) -> Result<(AgentSvid, AgentRecord), CaError> {
        let id = &node.agent_id;
        let bundle = self.bundle().await?;
        let now = self.clock.now();
        let svid = sign_x509_svid(
            &self.authority(),
            csr,
            id,
            &[],
            self.config.default_ttl(),
            now,
        )
        .inspect_err(|e| self.metrics.issuance_failed(e))?;
        self.metrics.svids_issued.inc();
        let record = AgentRecord {
            spiffe_id: id.to_string(),
            attestation_type: node.method.into(),
            node_selectors: node.selectors.clone(),
            svid_serial: svid.serial.clone(),
            previous_svid_serial: renewed_from,
            svid_expires_at: svid.not_after,
            banned: false,
            created_at: unix_seconds(now),
            updated_at: unix_seconds(now),
        };
        Ok((
            AgentSvid {
                spiffe_id: id.clone(),
                svid,
                bundle,
            },
            record,
        ))
    }
}

/// The method an agent record names, as the static name the code uses
/// (records written before methods existed say `join_token`).
fn method_name(stored: &str) -> &'static str {
    match stored {
        X509POP => X509POP,
        SSHPOP => SSHPOP,
        _ => JOIN_TOKEN,
    }
}

/// Where a node's attestation stands after its first message.
pub enum Attestation {
    /// Attested: its agent SVID.
    Attested(AgentSvid),
    /// It must prove possession: send the challenge, then
    /// [`Ca::finish_attestation`] with the answer.
    Challenge(PendingProof),
}

/// A challenge's nonce: fresh random bytes for one stream.
fn fresh_nonce() -> Result<[u8; NONCE_LEN], CaError> {
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| CaError::InvalidArgument("no randomness for a nonce".into()))?;
    Ok(nonce)
}
