//! `signet endpoints list`: what the mesh knows of where each identity is
//! served.

use serde::Serialize;
use signet_proto::admin as pb;

use crate::admin_client::{AdminSocket, ResponseExt};
use crate::output::{self, Format};

/// Endpoint commands.
#[derive(clap::Subcommand)]
pub(crate) enum EndpointsCommand {
    /// List the endpoints sidecars have registered, with their node, age and
    /// health (whether their agent is connected to the CA).
    ///
    /// Example:
    ///   signet endpoints list --spiffe-id spiffe://example.org/ns/prod/sa/payments
    #[command(verbatim_doc_comment)]
    List {
        /// Only the endpoints of this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        admin: AdminSocket,
    },
}

#[derive(Serialize)]
struct EndpointView {
    spiffe_id: String,
    address: String,
    protocol: String,
    zone: String,
    weight: u32,
    /// The tunnel listener's port (0: none).
    tunnel_port: u32,
    node: String,
    registered_at: i64,
    age_seconds: i64,
    /// `live`, or `agent-lost` while its agent is disconnected (withdrawn
    /// after the CA's grace period).
    health: String,
    agent_lost_at: i64,
}

impl output::Row for EndpointView {
    const HEADERS: &'static [&'static str] = &[
        "SPIFFE ID",
        "ADDRESS",
        "PROTOCOL",
        "TUNNEL",
        "NODE",
        "AGE",
        "HEALTH",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.spiffe_id.clone(),
            self.address.clone(),
            self.protocol.clone(),
            match self.tunnel_port {
                0 => "-".to_string(),
                p => p.to_string(),
            },
            self.node.clone(),
            age(self.age_seconds),
            self.health.clone(),
        ]
    }
}

impl From<signet_proto::mesh::Endpoint> for EndpointView {
    fn from(e: signet_proto::mesh::Endpoint) -> Self {
        let now = signet_identity::x509_svid::unix_seconds(std::time::SystemTime::now());
        Self {
            age_seconds: (now - e.registered_at).max(0),
            health: if e.agent_lost_at == 0 {
                "live".into()
            } else {
                "agent-lost".into()
            },
            spiffe_id: e.spiffe_id,
            address: e.address,
            protocol: e.protocol,
            zone: e.zone,
            weight: e.weight,
            tunnel_port: e.tunnel_port,
            node: e.node,
            registered_at: e.registered_at,
            agent_lost_at: e.agent_lost_at,
        }
    }
}

/// `5s`, `3m`, `2h`, `4d`.
fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

impl EndpointsCommand {
    /// Runs the command.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self {
            EndpointsCommand::List {
                spiffe_id,
                output,
                admin,
            } => {
                let endpoints: Vec<EndpointView> = admin
                    .connect()
                    .await?
                    .list_endpoints(pb::ListEndpointsRequest {
                        spiffe_id: spiffe_id.unwrap_or_default(),
                    })
                    .await
                    .into_result()?
                    .endpoints
                    .into_iter()
                    .map(EndpointView::from)
                    .collect();
                output::list(output, &endpoints)
            }
        }
    }
}
