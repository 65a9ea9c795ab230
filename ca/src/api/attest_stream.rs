//! The node API's `AttestNode` stream: start (evidence + CSR), an optional
//! challenge and its answer, then the agent SVID or a status saying why
//! not. The CA decides (`Ca::begin_attestation`, `Ca::finish_attestation`);
//! this module carries the messages, bounds each step in time, and counts
//! failures against the source address's attestation budget.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signet_proto::node as pb;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::api::attest_throttle::AttestThrottle;
use crate::api::convert::agent_svid_to_pb;
use crate::api::status::status;
use crate::ca::AgentRefused;
use crate::node_attestation::Evidence;
use crate::{Attestation, Ca, CaError};

/// How long the node has for each of its messages (the first one, the
/// answer to a challenge). Whatever is left of the connection's
/// unauthenticated lifetime bounds it too.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the stream sends.
pub(crate) type Sender = mpsc::Sender<Result<pb::AttestNodeResponse, Status>>;

/// Runs one attestation stream to its end.
pub(crate) async fn serve(
    ca: Arc<Ca>,
    throttle: Arc<AttestThrottle>,
    source: Option<IpAddr>,
    mut requests: Streaming<pb::AttestNodeRequest>,
    tx: Sender,
) {
    let result = attest(&ca, &mut requests, &tx).await;
    let message = match result {
        Ok(svid) => Ok(pb::AttestNodeResponse {
            step: Some(pb::attest_node_response::Step::Svid(agent_svid_to_pb(
                &svid,
            ))),
        }),
        Err(e) => {
            if let (CaError::AgentRefused(_), Some(addr)) = (&e, source) {
                throttle.failed(addr, Instant::now());
            }
            Err(status(&e))
        }
    };
    let _ = tx.send(message).await;
}

async fn attest(
    ca: &Ca,
    requests: &mut Streaming<pb::AttestNodeRequest>,
    tx: &Sender,
) -> Result<crate::AgentSvid, CaError> {
    let start = match next(requests, "the first message (start)").await? {
        pb::attest_node_request::Step::Start(s) => s,
        pb::attest_node_request::Step::ChallengeResponse(_) => {
            return Err(out_of_step(
                "the first message must be start, not a challenge response",
            ))
        }
    };
    let evidence = match start.evidence {
        Some(pb::attestation_start::Evidence::JoinToken(t)) => Evidence::JoinToken(t),
        Some(pb::attestation_start::Evidence::X509pop(x)) => Evidence::X509Pop(x.cert_chain),
        Some(pb::attestation_start::Evidence::Sshpop(s)) => Evidence::SshPop(s.certificate),
        None => {
            return Err(out_of_step(
                "start names no method: set join_token, x509pop or sshpop",
            ))
        }
    };
    let pending = match ca.begin_attestation(evidence, &start.csr).await? {
        Attestation::Attested(svid) => return Ok(svid),
        Attestation::Challenge(p) => p,
    };
    let challenge = pb::AttestNodeResponse {
        step: Some(pb::attest_node_response::Step::Challenge(pb::Challenge {
            nonce: pending.nonce().to_vec(),
        })),
    };
    if tx.send(Ok(challenge)).await.is_err() {
        return Err(out_of_step("the node went away before its challenge"));
    }
    let answer = match next(requests, "the answer to the challenge").await? {
        pb::attest_node_request::Step::ChallengeResponse(r) => r,
        pb::attest_node_request::Step::Start(_) => {
            return Err(out_of_step("a second start: answer the challenge"))
        }
    };
    ca.finish_attestation(pending, answer.scheme, &answer.signature)
        .await
}

/// The node's next message, within [`STEP_TIMEOUT`].
async fn next(
    requests: &mut Streaming<pb::AttestNodeRequest>,
    what: &str,
) -> Result<pb::attest_node_request::Step, CaError> {
    match tokio::time::timeout(STEP_TIMEOUT, requests.message()).await {
        Err(_) => Err(out_of_step(&format!(
            "{what} did not come within {}s",
            STEP_TIMEOUT.as_secs()
        ))),
        Ok(Err(s)) => Err(out_of_step(&format!("{what}: {}", s.message()))),
        Ok(Ok(None)) => Err(out_of_step(&format!("the stream ended before {what}"))),
        Ok(Ok(Some(m))) => m
            .step
            .ok_or_else(|| out_of_step(&format!("{what} is empty"))),
    }
}

fn out_of_step(detail: &str) -> CaError {
    AgentRefused::OutOfStep(detail.to_owned()).into()
}
