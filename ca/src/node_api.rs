//! The node API: how agents attest, renew their SVID, follow their entries
//! and get workload SVIDs signed. Every call but `AttestAgent` is
//! authenticated by the agent's SVID presented over mTLS, and the agent must
//! be on record, not banned, and presenting its current SVID.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use signet_identity::x509_svid::unix_seconds;
use signet_identity::{SpiffeId, TrustBundle};
use signet_proto::node as pb;
use signet_proto::node::node_server::{Node, NodeServer};
use tokio_stream::Stream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};

use crate::admin::status;
use crate::attest_throttle::AttestThrottle;
use crate::entry::Entry;
use crate::issuance::{check_csr, sign_x509_svid};
use crate::join_token;
use crate::store::{AgentRecord, StoreError, TokenUse};
use crate::{Ca, CaError};

use signet_proto::node::MAX_SIGN_BATCH as MAX_BATCH;

/// The gRPC service implementation.
pub struct NodeService {
    ca: Arc<Ca>,
    throttle: Arc<AttestThrottle>,
}

impl NodeService {
    /// A tonic server for `ca`; servers made with the same `throttle` share
    /// the failed-attestation budget per address.
    pub fn server(ca: Arc<Ca>, throttle: Arc<AttestThrottle>) -> NodeServer<Self> {
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
        let mut agent = self.agent_in_good_standing(&id).await?;
        if agent.svid_serial == serial {
            if agent.previous_svid_serial.is_some() {
                // The renewed SVID reached the agent: the old one is done.
                self.ca
                    .store
                    .forget_previous_serial(id.as_str(), &serial)
                    .await
                    .map_err(|e| status(&e.into()))?;
                agent.previous_svid_serial = None;
            }
            return Ok(agent);
        }
        if agent.previous_svid_serial.as_deref() == Some(serial.as_str()) {
            // The last renewal's answer never reached the agent (or was
            // not stored): it may go on with the SVID it renewed from.
            tracing::info!(agent_id = %id, serial = %serial, "agent presented the SVID it last renewed from; accepted until it uses the new one");
            agent.svid_serial = serial;
            return Ok(agent);
        }
        Err(Status::permission_denied(format!(
            "agent {id} presented SVID serial {serial}, neither its current nor its previous one; re-connect with the latest SVID"
        )))
    }

    async fn agent_in_good_standing(&self, id: &SpiffeId) -> Result<AgentRecord, Status> {
        agent_in_good_standing(&self.ca, id.as_str()).await
    }

    /// Signs an agent SVID and the record that makes it current;
    /// `renewed_from` is the serial presented on renewal (`None` on
    /// attestation).
    fn agent_svid(
        &self,
        id: &SpiffeId,
        csr: &[u8],
        bundle: &TrustBundle,
        renewed_from: Option<String>,
    ) -> Result<(pb::AgentSvid, AgentRecord), CaError> {
        let now = self.ca.clock.now();
        let svid = sign_x509_svid(
            &self.ca.authority(),
            csr,
            id,
            &[],
            self.ca.config.default_ttl(),
            now,
        )
        .inspect_err(|e| self.ca.metrics.issuance_failed(e))?;
        self.ca.metrics.svids_issued.inc();
        let record = AgentRecord {
            spiffe_id: id.to_string(),
            attestation_type: "join_token".into(),
            svid_serial: svid.serial.clone(),
            previous_svid_serial: renewed_from,
            svid_expires_at: svid.not_after,
            banned: false,
            created_at: unix_seconds(now),
            updated_at: unix_seconds(now),
        };
        Ok((
            pb::AgentSvid {
                spiffe_id: id.to_string(),
                cert_chain: svid.chain.iter().map(|c| c.to_vec()).collect(),
                expires_at: svid.not_after,
                bundle: Some(bundle_to_pb(bundle)),
            },
            record,
        ))
    }
}

/// Agent `id`'s record, if it is on record and not banned; the
/// PERMISSION_DENIED status to end its calls and stream with otherwise.
pub(crate) async fn agent_in_good_standing(ca: &Ca, id: &str) -> Result<AgentRecord, Status> {
    let agent = match ca.store.get_agent(id).await {
        Ok(a) => a,
        Err(StoreError::NotFound(_)) => {
            return Err(Status::permission_denied(format!(
                "agent {id} is not attested (evicted?); re-attest with a new join token"
            )))
        }
        Err(e) => return Err(status(&e.into())),
    };
    if agent.banned {
        return Err(Status::permission_denied(format!("agent {id} is banned")));
    }
    Ok(agent)
}

/// Protobuf form of the bundle as entry streams send it: with the tainted
/// keys.
pub fn published_to_pb(p: &crate::PublishedBundle) -> pb::Bundle {
    pb::Bundle {
        tainted_key_ids: p.tainted.clone(),
        tainted_jwt_kids: p.tainted_jwt.clone(),
        ..bundle_to_pb(&p.bundle)
    }
}

/// Protobuf form of a bundle.
pub fn bundle_to_pb(b: &TrustBundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain().to_string(),
        x509_authorities: b.authorities().iter().map(|c| c.to_vec()).collect(),
        sequence: b.sequence,
        jwt_authorities: b
            .jwt_authorities()
            .iter()
            .map(|a| pb::JwtAuthority {
                kid: a.kid().to_owned(),
                public_key: a.spki_der().to_vec(),
            })
            .collect(),
        tainted_key_ids: Vec::new(),
        tainted_jwt_kids: Vec::new(),
    }
}

/// Protobuf form of an entry, as agents get it.
pub(crate) fn entry_to_pb(e: &Entry) -> pb::WorkloadEntry {
    pb::WorkloadEntry {
        id: e.id.clone(),
        spiffe_id: e.spec.spiffe_id.to_string(),
        selectors: e.spec.selectors.iter().map(|s| s.to_string()).collect(),
        x509_svid_ttl_seconds: e.spec.x509_svid_ttl as i64,
        dns_names: e.spec.dns_names.clone(),
        revision: e.revision,
        hint: e.spec.hint.clone(),
        jwt_svid_ttl_seconds: e.spec.jwt_svid_ttl as i64,
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::EntrySnapshot, Status>> + Send>>;
type AckStream = Pin<Box<dyn Stream<Item = Result<pb::EndpointsAck, Status>> + Send>>;
type EndpointSetStream =
    Pin<Box<dyn Stream<Item = Result<signet_proto::mesh::EndpointSet, Status>> + Send>>;

impl NodeService {
    /// Entry `entry_id`, if it is parented to `agent`; PERMISSION_DENIED
    /// (counted and logged) when it is another agent's.
    async fn own_entry(
        &self,
        agent: &AgentRecord,
        entry_id: &str,
        what: &str,
    ) -> Result<Arc<Entry>, Status> {
        let entry = self.ca.entry(entry_id).await.map_err(|e| status(&e))?;
        if entry.spec.parent_id.as_str() != agent.spiffe_id {
            self.ca.metrics.attestation_failed("foreign_entry");
            tracing::warn!(agent_id = %agent.spiffe_id, %entry_id, kind = what, "agent asked for an SVID of an entry that is not its own");
            return Err(Status::permission_denied(format!(
                "entry {entry_id} is not parented to {}; nothing was signed",
                agent.spiffe_id
            )));
        }
        Ok(entry)
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn attest_agent(
        &self,
        req: Request<pb::AttestAgentRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let source = peer_address(&req);
        if let Some(addr) = source {
            if !self.throttle.allows(addr, Instant::now()) {
                self.ca.metrics.attestation_failed("rate_limited");
                return Err(Status::resource_exhausted(
                    "too many failed attestations from this address; wait a minute",
                ));
            }
        }
        let failed = |reason: &str| {
            self.ca.metrics.attestation_failed(reason);
            if let Some(addr) = source {
                self.throttle.failed(addr, Instant::now());
            }
        };
        let req = req.into_inner();
        // Check the CSR before spending the token on it.
        if let Err(e) = check_csr(&req.csr) {
            self.ca.metrics.issuance_failed(&e);
            failed("bad_csr");
            return Err(Status::invalid_argument(format!(
                "{e}; the join token was not used"
            )));
        }
        let now = unix_seconds(self.ca.clock.now());
        let agent_id = match self
            .ca
            .store
            .use_join_token(&join_token::hash(&req.join_token), now)
            .await
            .map_err(|e| status(&e.into()))?
        {
            TokenUse::Accepted { agent_id } => agent_id,
            TokenUse::Expired => {
                failed("expired_token");
                return Err(Status::permission_denied(
                    "join token has expired; create a new one",
                ));
            }
            TokenUse::Unknown => {
                failed("unknown_token");
                return Err(Status::permission_denied(
                    "join token is unknown or already used",
                ));
            }
        };
        let id = SpiffeId::parse(&agent_id)
            .map_err(|e| Status::internal(format!("stored agent ID: {e}")))?;
        if let Ok(existing) = self.ca.store.get_agent(id.as_str()).await {
            if existing.banned {
                failed("banned");
                return Err(Status::permission_denied(format!("agent {id} is banned")));
            }
        }
        let bundle = self.ca.bundle().await.map_err(|e| status(&e))?;
        let (svid, record) = self
            .agent_svid(&id, &req.csr, &bundle, None)
            .map_err(|e| status(&e))?;
        self.ca
            .store
            .upsert_agent(&record)
            .await
            .map_err(|e| status(&e.into()))?;
        tracing::info!(agent_id = %id, serial = %record.svid_serial, "agent attested");
        Ok(Response::new(svid))
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let agent = self.authorized_agent(&req).await?;
        let id = SpiffeId::parse(&agent.spiffe_id).map_err(|e| Status::internal(e.to_string()))?;
        let bundle = self.ca.bundle().await.map_err(|e| status(&e))?;
        let (svid, mut record) = self
            .agent_svid(&id, &req.into_inner().csr, &bundle, Some(agent.svid_serial))
            .map_err(|e| status(&e))?;
        record.created_at = agent.created_at;
        self.ca
            .store
            .upsert_agent(&record)
            .await
            .map_err(|e| status(&e.into()))?;
        tracing::info!(agent_id = %id, serial = %record.svid_serial, "agent SVID renewed");
        Ok(Response::new(svid))
    }

    type SyncEntriesStream = SnapshotStream;

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let agent = self.authorized_agent(&req).await?;
        let known = req.into_inner().known_revision;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(crate::entry_stream::serve(
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
        tokio::spawn(crate::endpoint_streams::serve_publish(
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
        tokio::spawn(crate::endpoint_streams::serve_watch(
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
            entries.push(self.own_entry(&agent, &r.entry_id, "X.509-SVID").await?);
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
        let entry = self.own_entry(&agent, &r.entry_id, "JWT-SVID").await?;
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
