//! Relays this node's endpoint registrations to the CA: one long-lived
//! `PublishEndpoints` stream carrying the whole set whenever it changes,
//! opened again (to whichever replica the agent is connected to) after a
//! failure. The CA keeps what it was sent for a grace period after the
//! stream ends, so a reconnect within it goes unnoticed by callers.

use std::sync::Arc;
use std::time::Duration;

use signet_proto::node as pb;
use signet_proto::node::node_client::NodeClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::local_endpoints::LocalEndpoints;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long the CA gets to accept the stream.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// Publishes until `stop`.
pub(crate) async fn run(
    local: Arc<LocalEndpoints>,
    mut ca_link: watch::Receiver<Option<NodeClient<Channel>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = local.subscribe();
    // Nothing is sent until a sidecar registers: an agent without any costs
    // the CA no write. Once something was published, an empty set is sent
    // too (it withdraws).
    let mut published_once = false;
    let mut backoff = MIN_BACKOFF;
    let mut last_error: Option<String> = None;
    loop {
        if !published_once && local.is_empty() {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        let client = ca_link.borrow_and_update().clone();
        let Some(client) = client else {
            tokio::select! {
                r = ca_link.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        };
        published_once = true;
        let result = tokio::select! {
            r = publish(&local, client, &mut backoff) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        local.unconfirmed();
        if last_error.as_ref() != Some(&result) {
            tracing::warn!(error = %result, "endpoint publishing to the CA interrupted; registrations are held and sent again on reconnect");
            last_error = Some(result);
        }
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>());
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One stream: sends the set now and on every change, applies the CA's
/// answers; returns why it ended.
async fn publish(
    local: &LocalEndpoints,
    mut client: NodeClient<Channel>,
    backoff: &mut Duration,
) -> String {
    let mut changes = local.subscribe();
    changes.borrow_and_update();
    let (tx, rx) = mpsc::channel(4);
    let mut sequence = 1u64;
    let first = pb::EndpointsUpdate {
        sequence,
        endpoints: local.set(),
    };
    if tx.send(first).await.is_err() {
        return "update channel closed".into();
    }
    let opened = tokio::time::timeout(
        OPEN_DEADLINE,
        client.publish_endpoints(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    let mut acks = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return format!("PublishEndpoints: {:?}: {}", s.code(), s.message()),
        Err(_) => return "PublishEndpoints: no answer within 10 s".into(),
    };
    loop {
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return "registrations closed".into();
                }
                changes.borrow_and_update();
                sequence += 1;
                let update = pb::EndpointsUpdate { sequence, endpoints: local.set() };
                if tx.send(update).await.is_err() {
                    return "the CA closed the stream".into();
                }
            }
            m = acks.message() => match m {
                Ok(Some(ack)) => {
                    *backoff = MIN_BACKOFF;
                    // An answer to an older update says nothing of the
                    // current set.
                    if ack.sequence == sequence {
                        let refused: Vec<_> = ack
                            .refused
                            .into_iter()
                            .filter_map(|r| Some((r.endpoint?, r.reason)))
                            .collect();
                        for (e, why) in &refused {
                            tracing::warn!(spiffe_id = %e.spiffe_id, address = %e.address, reason = %why, "the CA refused an endpoint");
                        }
                        local.acknowledged(&ack.published, &refused);
                    }
                }
                Ok(None) => return "the CA ended the stream".into(),
                Err(s) => return format!("PublishEndpoints: {:?}: {}", s.code(), s.message()),
            }
        }
    }
}
