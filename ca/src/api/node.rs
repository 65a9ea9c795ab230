//! The node API: how agents attest, renew their SVID, follow their entries
//! and get workload SVIDs signed. Every call but `AttestNode` (and the
//! older `AttestAgent`) is authenticated by the agent's SVID presented over
//! mTLS, and the agent must be on record, not banned, and presenting its
//! current SVID.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use signet_identity::SpiffeId;
use signet_proto::node as pb;
use signet_proto::node::node_server::{Node, NodeServer};
use tokio_stream::Stream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};

use crate::api::attest_throttle::AttestThrottle;
use crate::api::convert::agent_svid_to_pb;
use crate::api::status::status;
use crate::registry::join_token;
use crate::store::AgentRecord;
use crate::{Ca, CaError};

use signet_proto::node::MAX_SIGN_BATCH as MAX_BATCH;

/// The gRPC service implementation.
pub(crate) struct NodeService {
    ca: Arc<Ca>,
    throttle: Arc<AttestThrottle>,
}

impl NodeService {
    /// A tonic server for `ca`; servers made with the same `throttle` share
    /// the failed-attestation budget per address.
    pub(crate) fn server(ca: Arc<Ca>, throttle: Arc<AttestThrottle>) -> NodeServer<Self> {
        NodeServer::new(Self { ca, throttle })
    }
}

/// The client's IP address, from the connection.
fn peer_address<T>(req: &Request<T>) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .map(|a| a.ip())
}

/// The agent SPIFFE ID and serial (hex) of the client certificate.
fn peer_agent<T>(req: &Request<T>) -> Result<(SpiffeId, String), Status> {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .ok_or_else(|| {
            Status::unauthenticated("this call needs the agent's SVID as TLS client certificate")
        })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| Status::unauthenticated("unparsable client certificate"))?;
    let id = signet_identity::x509_svid::leaf_spiffe_id(&cert)
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
    // The handshake checked the SVID when the connection was made; an
    // HTTP/2 connection can outlive it.
    if !cert.validity().is_valid() {
        return Err(Status::unauthenticated(format!(
            "agent {id}: the SVID this connection was made with has expired; re-attest with a new join token"
        )));
    }
    Ok((id, join_token::hex(cert.raw_serial())))
}

impl NodeService {
    /// The calling agent's record, if it may use the API.
    async fn authorized_agent<T>(&self, req: &Request<T>) -> Result<AgentRecord, Status> {
        let (id, serial) = peer_agent(req)?;
        self.ca
            .authorize_agent(&id, &serial)
            .await
            .map_err(|e| status(&e))
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::EntrySnapshot, Status>> + Send>>;
type AttestStream = Pin<Box<dyn Stream<Item = Result<pb::AttestNodeResponse, Status>> + Send>>;
type AckStream = Pin<Box<dyn Stream<Item = Result<pb::EndpointsAck, Status>> + Send>>;
type EndpointSetStream =
    Pin<Box<dyn Stream<Item = Result<signet_proto::mesh::EndpointSet, Status>> + Send>>;

impl NodeService {
    /// The source address of an attestation, if it has failed attestations
    /// left this minute (every method spends the same budget); refused
    /// before anything of the request is looked at otherwise.
    fn within_attestation_budget<T>(&self, req: &Request<T>) -> Result<Option<IpAddr>, Status> {
        let source = peer_address(req);
        if let Some(addr) = source {
            if !self.throttle.allows(addr, Instant::now()) {
                self.ca.metrics().attestation_failed("rate_limited");
                return Err(Status::resource_exhausted(
                    "too many failed attestations from this address; wait a minute",
                ));
            }
        }
        Ok(source)
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    type AttestNodeStream = AttestStream;

    async fn attest_node(
        &self,
        req: Request<tonic::Streaming<pb::AttestNodeRequest>>,
    ) -> Result<Response<AttestStream>, Status> {
        let source = self.within_attestation_budget(&req)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(crate::api::attest_stream::serve(
            self.ca.clone(),
            self.throttle.clone(),
            source,
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn attest_agent(
        &self,
        req: Request<pb::AttestAgentRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let source = self.within_attestation_budget(&req)?;
        let req = req.into_inner();
        match self.ca.attest_agent(&req.join_token, &req.csr).await {
            Ok(svid) => Ok(Response::new(agent_svid_to_pb(&svid))),
            Err(e) => {
                if let (CaError::AgentRefused(_), Some(addr)) = (&e, source) {
                    self.throttle.failed(addr, Instant::now());
                }
                Err(status(&e))
            }
        }
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let agent = self.authorized_agent(&req).await?;
        let svid = self
            .ca
            .renew_agent(&agent, &req.into_inner().csr)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(agent_svid_to_pb(&svid)))
    }

    type SyncEntriesStream = SnapshotStream;

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let agent = self.authorized_agent(&req).await?;
        let known = req.into_inner().known_revision;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(crate::api::entry_stream::serve(
            self.ca.clone(),
            agent.spiffe_id,
            known,
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type PublishEndpointsStream = AckStream;

    async fn publish_endpoints(
        &self,
        req: Request<tonic::Streaming<pb::EndpointsUpdate>>,
    ) -> Result<Response<AckStream>, Status> {
        let agent = self.authorized_agent(&req).await?;
        let peer_ip = peer_address(&req);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(crate::api::endpoint_streams::serve_publish(
            self.ca.clone(),
            agent.spiffe_id,
            peer_ip,
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type WatchEndpointsStream = EndpointSetStream;

    async fn watch_endpoints(
        &self,
        req: Request<signet_proto::mesh::WatchRequest>,
    ) -> Result<Response<EndpointSetStream>, Status> {
        let agent = self.authorized_agent(&req).await?;
        let id = SpiffeId::parse(&req.get_ref().spiffe_id)
            .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
        if id.trust_domain() != self.ca.trust_domain {
            return Err(Status::invalid_argument(format!(
                "{id} is not in trust domain {}",
                self.ca.trust_domain.as_str()
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(crate::api::endpoint_streams::serve_watch(
            self.ca.clone(),
            agent.spiffe_id,
            id.to_string(),
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn sign_svids(
        &self,
        req: Request<pb::SignSvidsRequest>,
    ) -> Result<Response<pb::SignSvidsResponse>, Status> {
        let agent = self.authorized_agent(&req).await?;
        let requests = req.into_inner().requests;
        if requests.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} CSRs per call"
            )));
        }
        // Check every request before signing anything: all or nothing.
        let mut entries = Vec::with_capacity(requests.len());
        for r in &requests {
            entries.push(
                self.ca
                    .agent_entry(&agent, &r.entry_id, "X.509-SVID")
                    .await
                    .map_err(|e| status(&e))?,
            );
        }
        let mut svids = Vec::with_capacity(requests.len());
        for (r, entry) in requests.iter().zip(&entries) {
            let svid = self
                .ca
                .sign_for_entry(&r.csr, &entry.spec)
                .map_err(|e| status(&e))?;
            svids.push(pb::WorkloadSvid {
                entry_id: entry.id.clone(),
                spiffe_id: entry.spec.spiffe_id.to_string(),
                cert_chain: svid.chain.iter().map(|c| c.to_vec()).collect(),
                expires_at: svid.not_after,
            });
        }
        Ok(Response::new(pb::SignSvidsResponse { svids }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let agent = self.authorized_agent(&req).await?;
        let r = req.into_inner();
        if let Some(problem) = signet_identity::jwt_svid::audience_problem(&r.audience) {
            return Err(Status::invalid_argument(problem));
        }
        let entry = self
            .ca
            .agent_entry(&agent, &r.entry_id, "JWT-SVID")
            .await
            .map_err(|e| status(&e))?;
        let minted = self
            .ca
            .mint_jwt_svid(&entry.spec.spiffe_id, &r.audience, entry.spec.jwt_svid_ttl)
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::MintJwtSvidResponse {
            token: minted.token,
            expires_at: minted.expires_at,
            issued_at: minted.issued_at,
        }))
    }
}
