//! The mesh API on the Workload API socket: local sidecars register the
//! endpoints of identities they hold and watch the endpoints of identities
//! they call. Callers are attested exactly as for SVIDs: a workload may
//! advertise only a SPIFFE ID it could get an SVID for, and only while it
//! could; discovery is open to any workload with an identity on this node,
//! one CA watch per identity shared by every local watcher
//! ([`crate::endpoint_watches`]).

use std::pin::Pin;
use std::sync::Arc;

use signet_identity::endpoint::{
    check_tunnel_port, check_weight, check_zone, EndpointAddress, EndpointProtocol,
};
use signet_identity::selector::Selector;
use signet_identity::SpiffeId;
use signet_proto::mesh::mesh_server::{Mesh, MeshServer};
use signet_proto::mesh::{self as pb, MAX_ENDPOINTS_PER_AGENT};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::endpoint_watches::{EndpointWatches, Watched};
use crate::local_endpoints::{LocalEndpoints, RegState};
use crate::workload_api::WorkloadApi;
use crate::workload_svids::Snapshot;

/// The mesh service.
pub(crate) struct MeshApi {
    api: Arc<WorkloadApi>,
    local: Arc<LocalEndpoints>,
    watches: Arc<EndpointWatches>,
}

impl MeshApi {
    /// A tonic server sharing `api`'s attestation and limits.
    pub(crate) fn server(
        api: Arc<WorkloadApi>,
        local: Arc<LocalEndpoints>,
        watches: Arc<EndpointWatches>,
    ) -> MeshServer<Self> {
        MeshServer::new(Self {
            api,
            local,
            watches,
        })
    }
}

/// Whether a caller with `selectors` may hold SPIFFE ID `id`.
fn entitled(snapshot: &Snapshot, selectors: &[Selector], id: &str) -> bool {
    snapshot
        .matching_entries(selectors)
        .any(|e| e.spiffe_id.as_str() == id)
}

/// The endpoint as the agent holds it (fields checked and normalized), or
/// INVALID_ARGUMENT naming what is wrong.
fn checked(e: pb::Endpoint) -> Result<pb::Endpoint, Status> {
    let bad = |m: String| Status::invalid_argument(m);
    let id = SpiffeId::parse(&e.spiffe_id).map_err(|err| bad(format!("spiffe_id: {err}")))?;
    let address = EndpointAddress::parse(&e.address).map_err(|err| bad(err.to_string()))?;
    let protocol = EndpointProtocol::parse(&e.protocol).map_err(bad)?;
    let weight = check_weight(e.weight).map_err(bad)?;
    check_zone(&e.zone).map_err(bad)?;
    let tunnel_port = check_tunnel_port(e.tunnel_port).map_err(bad)?;
    Ok(pb::Endpoint {
        spiffe_id: id.to_string(),
        address: address.to_string(),
        protocol: protocol.as_str().into(),
        zone: e.zone,
        weight,
        node: String::new(),
        registered_at: 0,
        agent_lost_at: 0,
        tunnel_port: u32::from(tunnel_port),
    })
}

fn state_to_pb(s: &RegState) -> pb::RegistrationState {
    pb::RegistrationState {
        state: s.state as i32,
        address: s.address.clone(),
        reason: s.reason.clone(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Mesh for MeshApi {
    type RegisterStream = BoxStream<pb::RegistrationState>;
    type WatchStream = BoxStream<pb::EndpointSet>;

    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        let caller = self.api.admit(&req, "Register").await?;
        let endpoint = req
            .into_inner()
            .endpoint
            .ok_or_else(|| Status::invalid_argument("endpoint missing"))?;
        let endpoint = checked(endpoint)?;
        let id = endpoint.spiffe_id.clone();
        if !entitled(&self.api.state().borrow(), &caller.selectors, &id) {
            tracing::warn!(uid = caller.uid, spiffe_id = %id, "endpoint registration refused: the caller cannot get an SVID for it");
            return Err(Status::permission_denied(format!(
                "this workload cannot get an SVID for {id}, so it may not advertise it"
            )));
        }
        let slot = self.api.stream_slot(caller.uid)?;
        let address = endpoint.address.clone();
        let registration = self
            .local
            .register(endpoint, MAX_ENDPOINTS_PER_AGENT)
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "this node already holds {MAX_ENDPOINTS_PER_AGENT} endpoint registrations"
                ))
            })?;
        tracing::info!(uid = caller.uid, spiffe_id = %id, address = %address, "endpoint registered");
        struct Held {
            registration: crate::local_endpoints::Registration,
            snapshot: watch::Receiver<Arc<Snapshot>>,
            selectors: Vec<Selector>,
            id: String,
            last: Option<RegState>,
            ended: bool,
            _slot: signet_identity::admission::Ticket<u32>,
        }
        let start = Held {
            registration,
            snapshot: self.api.state().clone(),
            selectors: caller.selectors,
            id,
            last: None,
            ended: false,
            _slot: slot,
        };
        // Lives as long as the caller's call: dropping it (the caller went
        // away) drops the registration, which withdraws the endpoint.
        let stream = futures_util::stream::unfold(start, |mut h| async move {
            if h.ended {
                return None;
            }
            loop {
                let now = h.registration.state.borrow_and_update().clone();
                if h.last.as_ref() != Some(&now) {
                    h.last = Some(now.clone());
                    return Some((Ok(state_to_pb(&now)), h));
                }
                tokio::select! {
                    r = h.registration.state.changed() => if r.is_err() { return None },
                    r = h.snapshot.changed() => {
                        if r.is_err() {
                            return None;
                        }
                        let still = entitled(&h.snapshot.borrow_and_update(), &h.selectors, &h.id);
                        if !still {
                            tracing::warn!(spiffe_id = %h.id, "endpoint withdrawn: the workload no longer has this identity");
                            h.ended = true;
                            return Some((
                                Err(Status::permission_denied(format!(
                                    "this workload no longer has identity {}; its endpoint is withdrawn",
                                    h.id
                                ))),
                                h,
                            ));
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.api.admit(&req, "Watch").await?;
        if self
            .api
            .state()
            .borrow()
            .matching_entries(&caller.selectors)
            .next()
            .is_none()
        {
            return Err(Status::permission_denied(
                "no identity for this workload: only workloads with one may discover endpoints",
            ));
        }
        let id = SpiffeId::parse(&req.get_ref().spiffe_id)
            .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
        let slot = self.api.stream_slot(caller.uid)?;
        let subscription = self.watches.subscribe(id.as_str(), caller.uid)?;
        struct Held {
            subscription: crate::endpoint_watches::Subscription,
            last: Option<pb::EndpointSet>,
            ended: bool,
            _slot: signet_identity::admission::Ticket<u32>,
        }
        let start = Held {
            subscription,
            last: None,
            ended: false,
            _slot: slot,
        };
        // The current set at once (when the node watches the identity
        // already), then each change; ends with the caller's call.
        let stream = futures_util::stream::unfold(start, |mut h| async move {
            if h.ended {
                return None;
            }
            loop {
                let now = h.subscription.set.borrow_and_update().clone();
                match now {
                    Watched::Set(set) if h.last.as_ref() != Some(&set) => {
                        h.last = Some(set.clone());
                        return Some((Ok(set), h));
                    }
                    Watched::Refused(code, message) => {
                        h.ended = true;
                        return Some((Err(Status::new(code, message)), h));
                    }
                    Watched::Set(_) | Watched::Pending => {}
                }
                if h.subscription.set.changed().await.is_err() {
                    return None;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn registrations_are_checked_and_normalized() {
        let e = checked(pb::Endpoint {
            spiffe_id: "spiffe://example.org/web".into(),
            address: "Web.Example:8443".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(e.address, "web.example:8443");
        assert_eq!(e.protocol, "tcp");
        assert_eq!(e.weight, 100);
        for bad in [
            pb::Endpoint {
                spiffe_id: "web".into(),
                address: ":1".into(),
                ..Default::default()
            },
            pb::Endpoint {
                spiffe_id: "spiffe://example.org/web".into(),
                address: "nowhere".into(),
                ..Default::default()
            },
            pb::Endpoint {
                spiffe_id: "spiffe://example.org/web".into(),
                address: ":1".into(),
                weight: 5000,
                ..Default::default()
            },
        ] {
            assert_eq!(
                checked(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
