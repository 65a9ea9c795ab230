//! The node API's endpoint streams. `PublishEndpoints`: an agent's whole set
//! of endpoints on each update, checked and stored, held for the life of the
//! stream and a grace period after it. `WatchEndpoints`: one identity's
//! endpoints from the in-memory registry, sent again only when that
//! identity's set changes.

use std::net::IpAddr;
use std::sync::Arc;

use signet_proto::mesh;
use signet_proto::node as pb;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::api::status::status;
use crate::registry::endpoint_publish::endpoint_to_pb;
use crate::store::PublishSession;
use crate::Ca;

/// Shortest time between two writes of one node's endpoints: a node that
/// floods updates costs the CA (and its database and every replica's feed)
/// at most one write per interval, always of its newest update.
pub(crate) const MIN_UPDATE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Serves one publishing stream of agent `agent_id` until it ends, then
/// starts the grace period of what it published.
///
/// The stream also follows the node's entries: when an entry change alters
/// what the node may advertise (an entry deleted or moved to another node:
/// the store has already withdrawn those endpoints in the change's own
/// transaction), the last update is checked again and acknowledged again
/// under its sequence, so the agent learns which of its registrations are
/// refused now, and an entitlement given back publishes them again.
///
/// Updates faster than [`MIN_UPDATE_INTERVAL`] are coalesced: the newest
/// is written and acknowledged (under its own sequence, the only one an
/// agent waits for), the ones it replaced are counted.
pub(crate) async fn serve_publish(
    ca: Arc<Ca>,
    agent_id: String,
    peer_ip: Option<IpAddr>,
    mut updates: Streaming<pb::EndpointsUpdate>,
    tx: mpsc::Sender<Result<pb::EndpointsAck, Status>>,
) {
    let session = PublishSession {
        id: uuid::Uuid::new_v4().to_string(),
        replica: ca.replica().to_owned(),
    };
    let mut agent = ca.subscribe_agent(&agent_id);
    let mut seen = *agent.borrow_and_update();
    // The last update, and what of it is published.
    let mut last: Option<(pb::EndpointsUpdate, Vec<(String, String)>)> = None;
    // A node sending updates faster than one per MIN_UPDATE_INTERVAL has
    // them coalesced: only the newest is written, when the interval is over.
    let mut waiting: Option<pb::EndpointsUpdate> = None;
    let mut next_write = tokio::time::Instant::now();
    loop {
        let update = tokio::select! {
            m = updates.message() => match m {
                Ok(Some(u)) => {
                    // The newest always replaces one still waiting.
                    if waiting.replace(u).is_some() {
                        ca.metrics().endpoint_updates_coalesced.inc();
                    }
                    if tokio::time::Instant::now() < next_write {
                        continue;
                    }
                    match waiting.take() {
                        Some(u) => u,
                        None => continue,
                    }
                }
                Ok(None) | Err(_) => break,
            },
            _ = tokio::time::sleep_until(next_write), if waiting.is_some() => {
                match waiting.take() {
                    Some(u) => u,
                    None => continue,
                }
            }
            // The agent went away without closing its half.
            _ = tx.closed() => break,
            r = agent.changed() => {
                if r.is_err() {
                    break;
                }
                let now = *agent.borrow_and_update();
                let (standing, entries) = (now.standing != seen.standing, now.entries != seen.entries);
                seen = now;
                // A ban or eviction ends the stream: what it withdrew must
                // not come back through it.
                if standing {
                    if let Err(refused) = ca.agent_in_good_standing(&agent_id).await.map_err(|e| status(&e)) {
                        let _ = tx.send(Err(refused)).await;
                        break;
                    }
                }
                match &last {
                    Some((update, published))
                        if entries
                            && published_keys(&ca.check_endpoints(&agent_id, peer_ip, update.endpoints.clone()).accepted)
                                != *published =>
                    {
                        tracing::info!(agent_id = %agent_id, "the node's entries changed what it may advertise; its endpoints are checked again");
                        update.clone()
                    }
                    _ => continue,
                }
            }
        };
        // A ban or eviction since the stream opened ends it.
        if let Err(refused) = ca
            .agent_in_good_standing(&agent_id)
            .await
            .map_err(|e| status(&e))
        {
            let _ = tx.send(Err(refused)).await;
            break;
        }
        next_write = tokio::time::Instant::now() + MIN_UPDATE_INTERVAL;
        let count = update.endpoints.len();
        let sequence = update.sequence;
        match ca
            .publish_endpoints(&agent_id, peer_ip, &session, update.endpoints.clone())
            .await
        {
            Ok(checked) => {
                ca.metrics()
                    .endpoints_refused
                    .inc_by(checked.refused.len() as u64);
                for (e, reason) in &checked.refused {
                    tracing::warn!(agent_id = %agent_id, spiffe_id = %e.spiffe_id, address = %e.address, reason = %reason, "endpoint refused");
                }
                tracing::debug!(agent_id = %agent_id, sent = count, published = checked.accepted.len(), "endpoints published");
                last = Some((update, published_keys(&checked.accepted)));
                let ack = pb::EndpointsAck {
                    sequence,
                    published: checked.accepted.iter().map(endpoint_to_pb).collect(),
                    refused: checked
                        .refused
                        .into_iter()
                        .map(|(endpoint, reason)| pb::RefusedEndpoint {
                            endpoint: Some(endpoint),
                            reason,
                        })
                        .collect(),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(status(&e))).await;
                break;
            }
        }
    }
    if last.is_some() {
        ca.endpoints_lost(&agent_id, &session.id).await;
    }
}

/// What identifies a published endpoint: its SPIFFE ID and address.
fn published_keys(accepted: &[crate::store::EndpointRecord]) -> Vec<(String, String)> {
    let mut keys: Vec<_> = accepted
        .iter()
        .map(|e| (e.spiffe_id.clone(), e.address.clone()))
        .collect();
    keys.sort_unstable();
    keys
}

/// Serves agent `agent_id`'s watch of `spiffe_id`'s endpoints until the
/// agent goes away, or is banned or evicted.
pub(crate) async fn serve_watch(
    ca: Arc<Ca>,
    agent_id: String,
    spiffe_id: String,
    tx: mpsc::Sender<Result<mesh::EndpointSet, Status>>,
) {
    ca.metrics().endpoint_watches.inc();
    let mut changes = ca.subscribe_endpoints(&spiffe_id);
    let mut standing = ca.subscribe_agent(&agent_id);
    standing.borrow_and_update();
    let mut last: Option<Vec<mesh::Endpoint>> = None;
    loop {
        changes.borrow_and_update();
        let set: Vec<mesh::Endpoint> = ca
            .endpoints(Some(&spiffe_id))
            .iter()
            .map(endpoint_to_pb)
            .collect();
        if last.as_ref() != Some(&set) {
            let msg = mesh::EndpointSet {
                spiffe_id: spiffe_id.clone(),
                endpoints: set.clone(),
            };
            if tx.send(Ok(msg)).await.is_err() {
                break;
            }
            last = Some(set);
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            r = standing.changed() => {
                if r.is_err() {
                    break;
                }
                if let Err(refused) = ca.agent_in_good_standing(&agent_id).await.map_err(|e| status(&e)) {
                    let _ = tx.send(Err(refused)).await;
                    break;
                }
            }
            _ = tx.closed() => break,
        }
    }
    ca.metrics().endpoint_watches.dec();
}
