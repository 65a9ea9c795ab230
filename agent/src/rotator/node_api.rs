//! The rotator's view of the CA: the calls it makes, behind a trait
//! so that its schedule, backoff and recovery are unit-tested against a CA
//! that can fail on demand. [`GrpcNodeApi`] is the real one: the node API
//! over mTLS, with the connection shared with the Workload API (JWT-SVID
//! minting) and a second one for the mesh's streams.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use signet_identity::tls::BundleHandle;
use signet_identity::TrustDomain;
use signet_proto::node as pb;
use signet_proto::node::node_client::NodeClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::node_attestation::{self, ExchangeError, NodeAttestor};
use crate::node_client::{self, ClientCert, ServerTrust};
use crate::rotator::sync::SyncEvent;

/// Why a call to the CA failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection (dropped after a failure or a renewal).
    #[error("not connected")]
    NotConnected,
    /// The connection could not be made.
    #[error("{0}")]
    Connect(String),
    /// The CA answered with an error status.
    #[error("{what}: {code:?}: {message}")]
    Status {
        /// The call.
        what: &'static str,
        /// The status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA did not answer in time.
    #[error("{what}: no answer within {deadline:?}")]
    Timeout {
        /// The call.
        what: &'static str,
        /// How long it was given.
        deadline: Duration,
    },
}

/// The node API calls the rotator makes.
pub(crate) trait NodeApi: Send {
    /// Connects with `agent`'s SVID, the CA's checked against `bundle`, and
    /// opens the entry stream from `known_revision`; later calls use this
    /// connection until [`NodeApi::disconnect`].
    fn connect(
        &mut self,
        agent: &ClientCert,
        bundle: &BundleHandle,
        known_revision: Option<i64>,
        deadline: Duration,
    ) -> impl Future<Output = Result<mpsc::Receiver<SyncEvent>, CallError>> + Send;

    /// Has a new agent SVID signed for `csr`.
    fn renew_agent(
        &mut self,
        csr: Vec<u8>,
        deadline: Duration,
    ) -> impl Future<Output = Result<pb::AgentSvid, CallError>> + Send;

    /// Has workload SVIDs signed (at most [`pb::MAX_SIGN_BATCH`] requests).
    fn sign_svids(
        &mut self,
        requests: Vec<pb::SvidRequest>,
        deadline: Duration,
    ) -> impl Future<Output = Result<Vec<pb::WorkloadSvid>, CallError>> + Send;

    /// Whether the node can attest again by itself once its agent SVID is
    /// gone (a proof-of-possession method; a join token is spent once).
    fn can_reattest(&self) -> bool;

    /// Attests the node again, without a client certificate (the CA
    /// checked against `bundle`): an agent SVID for `csr`.
    fn reattest(
        &mut self,
        bundle: &BundleHandle,
        csr: Vec<u8>,
        deadline: Duration,
    ) -> impl Future<Output = Result<pb::AgentSvid, CallError>> + Send;

    /// Drops the connection (after a failure, or so that the CA sees a new
    /// agent SVID on the next).
    fn disconnect(&mut self);

    /// Whether a connection is up.
    fn is_connected(&self) -> bool;
}

/// Where the rest of the agent finds the CA: the rotator's own connection
/// (JWT-SVID minting shares it: short unary calls), and the mesh's.
pub(crate) struct CaLinks {
    /// The rotator's connection.
    pub ca: watch::Sender<Option<NodeClient<Channel>>>,
    /// The mesh's connection (publisher, watches).
    pub mesh: watch::Sender<Option<NodeClient<Channel>>>,
}

/// The node API over gRPC and mTLS.
pub(crate) struct GrpcNodeApi {
    ca: Vec<String>,
    td: TrustDomain,
    client: Option<NodeClient<Channel>>,
    /// Where the Workload API finds the connection to the CA (to have
    /// JWT-SVIDs signed): the same as `client`, `None` while disconnected.
    /// The mesh's link is another HTTP/2 connection with the same agent
    /// SVID, made on first use, so that however many streams the mesh
    /// holds, SVID renewal and JWT-SVID minting never wait behind them for
    /// the CA's per-connection stream budget.
    links: CaLinks,
    /// How the node attests again when its SVID is gone, if it can.
    reattestor: Option<Arc<NodeAttestor>>,
}

impl GrpcNodeApi {
    /// The node API of the CA at `ca` (addresses tried in turn);
    /// `reattestor` proves the node again when its SVID is gone.
    pub(crate) fn new(
        ca: Vec<String>,
        td: TrustDomain,
        links: CaLinks,
        reattestor: Option<Arc<NodeAttestor>>,
    ) -> Self {
        Self {
            ca,
            td,
            client: None,
            links,
            reattestor,
        }
    }

    fn set_client(&mut self, client: Option<(NodeClient<Channel>, NodeClient<Channel>)>) {
        let (client, mesh) = client.unzip();
        self.links.ca.send_replace(client.clone());
        self.links.mesh.send_replace(mesh);
        self.client = client;
    }
}

impl NodeApi for GrpcNodeApi {
    async fn connect(
        &mut self,
        agent: &ClientCert,
        bundle: &BundleHandle,
        known_revision: Option<i64>,
        deadline: Duration,
    ) -> Result<mpsc::Receiver<SyncEvent>, CallError> {
        let trust = ServerTrust::Bundle(bundle.clone());
        let mut client = node_client::connect(&self.ca, &self.td, &trust, Some(agent))
            .await
            .map_err(|e| CallError::Connect(e.to_string()))?;
        let stream = within(
            deadline,
            "entry stream",
            client.sync_entries(pb::SyncEntriesRequest { known_revision }),
        )
        .await?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(forward_sync(stream, tx));
        let mesh = node_client::connect_lazy(&self.ca, &self.td, &trust, Some(agent))
            .map_err(|e| CallError::Connect(e.to_string()))?;
        self.set_client(Some((client, mesh)));
        Ok(rx)
    }

    async fn renew_agent(
        &mut self,
        csr: Vec<u8>,
        deadline: Duration,
    ) -> Result<pb::AgentSvid, CallError> {
        let client = self.client.as_mut().ok_or(CallError::NotConnected)?;
        within(
            deadline,
            "renew agent SVID",
            client.renew_agent(pb::RenewAgentRequest { csr }),
        )
        .await
    }

    async fn sign_svids(
        &mut self,
        requests: Vec<pb::SvidRequest>,
        deadline: Duration,
    ) -> Result<Vec<pb::WorkloadSvid>, CallError> {
        let client = self.client.as_mut().ok_or(CallError::NotConnected)?;
        let resp = within(
            deadline,
            "sign SVIDs",
            client.sign_svids(pb::SignSvidsRequest { requests }),
        )
        .await?;
        Ok(resp.svids)
    }

    fn can_reattest(&self) -> bool {
        self.reattestor.is_some()
    }

    async fn reattest(
        &mut self,
        bundle: &BundleHandle,
        csr: Vec<u8>,
        deadline: Duration,
    ) -> Result<pb::AgentSvid, CallError> {
        const WHAT: &str = "re-attest";
        let attestor = self.reattestor.clone().ok_or(CallError::NotConnected)?;
        let trust = ServerTrust::Bundle(bundle.clone());
        let exchange = async {
            let mut client = node_client::connect(&self.ca, &self.td, &trust, None)
                .await
                .map_err(|e| CallError::Connect(e.to_string()))?;
            node_attestation::attest(&mut client, &attestor, csr)
                .await
                .map_err(|e| match e {
                    ExchangeError::Status(s) => CallError::Status {
                        what: WHAT,
                        code: s.code(),
                        message: s.message().to_owned(),
                    },
                    ExchangeError::Local(e) => CallError::Connect(e.to_string()),
                })
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout {
                what: WHAT,
                deadline,
            }),
        }
    }

    fn disconnect(&mut self) {
        self.set_client(None);
    }

    fn is_connected(&self) -> bool {
        self.client.is_some()
    }
}

/// Moves the entry stream's messages to the rotator.
async fn forward_sync(
    mut stream: tonic::Streaming<pb::EntrySnapshot>,
    tx: mpsc::Sender<SyncEvent>,
) {
    loop {
        let ev = match stream.message().await {
            Ok(Some(p)) => SyncEvent::Page(p),
            Ok(None) => SyncEvent::Ended("the CA closed the entry stream".into()),
            Err(s) => SyncEvent::Ended(format!("entry stream: {:?}: {}", s.code(), s.message())),
        };
        let end = matches!(ev, SyncEvent::Ended(_));
        if tx.send(ev).await.is_err() || end {
            return;
        }
    }
}

/// Runs one node API call for at most `deadline`.
async fn within<T>(
    deadline: Duration,
    what: &'static str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(CallError::Status {
            what,
            code: s.code(),
            message: s.message().to_owned(),
        }),
        Err(_) => Err(CallError::Timeout { what, deadline }),
    }
}
