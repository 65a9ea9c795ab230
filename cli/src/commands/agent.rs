//! `signet agent list|ban|evict`.

use serde::Serialize;
use signet_proto::admin as pb;

use crate::admin_client::{AdminSocket, ResponseExt};
use crate::output::{self, timestamp, Format};

/// Agent commands.
#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// List attested agents.
    ///
    /// Example:
    ///   signet agent list --output json
    #[command(verbatim_doc_comment)]
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Ban an agent: it can no longer renew, sign or re-attest.
    ///
    /// Example:
    ///   signet agent ban spiffe://example.org/signet/agent/node-1
    #[command(verbatim_doc_comment)]
    Ban {
        /// The agent's SPIFFE ID.
        spiffe_id: String,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Evict an agent: its record is removed; it may re-attest with a new token.
    ///
    /// Example:
    ///   signet agent evict spiffe://example.org/signet/agent/node-1
    #[command(verbatim_doc_comment)]
    Evict {
        /// The agent's SPIFFE ID.
        spiffe_id: String,
        #[command(flatten)]
        admin: AdminSocket,
    },
}

#[derive(Serialize)]
struct AgentView {
    spiffe_id: String,
    attestation_type: String,
    svid_serial: String,
    svid_expires_at: i64,
    banned: bool,
    created_at: i64,
    updated_at: i64,
}

impl From<pb::Agent> for AgentView {
    fn from(a: pb::Agent) -> Self {
        Self {
            spiffe_id: a.spiffe_id,
            attestation_type: a.attestation_type,
            svid_serial: a.svid_serial,
            svid_expires_at: a.svid_expires_at,
            banned: a.banned,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

impl AgentCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            AgentCommand::List { output, admin } => {
                let agents: Vec<AgentView> = admin
                    .connect()
                    .await?
                    .list_agents(pb::ListAgentsRequest {})
                    .await
                    .into_result()?
                    .agents
                    .into_iter()
                    .map(AgentView::from)
                    .collect();
                match output {
                    Format::Json => output::json(&agents),
                    Format::Table => {
                        let rows: Vec<Vec<String>> = agents
                            .iter()
                            .map(|a| {
                                vec![
                                    a.spiffe_id.clone(),
                                    a.attestation_type.clone(),
                                    timestamp(a.svid_expires_at),
                                    if a.banned {
                                        "banned".into()
                                    } else {
                                        "active".into()
                                    },
                                ]
                            })
                            .collect();
                        output::table(
                            &["SPIFFE ID", "ATTESTATION", "SVID EXPIRES", "STATUS"],
                            &rows,
                        );
                        Ok(())
                    }
                }
            }
            AgentCommand::Ban { spiffe_id, admin } => {
                admin
                    .connect()
                    .await?
                    .ban_agent(pb::AgentRequest {
                        spiffe_id: spiffe_id.clone(),
                    })
                    .await
                    .into_result()?;
                eprintln!("banned {spiffe_id}");
                Ok(())
            }
            AgentCommand::Evict { spiffe_id, admin } => {
                admin
                    .connect()
                    .await?
                    .evict_agent(pb::AgentRequest {
                        spiffe_id: spiffe_id.clone(),
                    })
                    .await
                    .into_result()?;
                eprintln!("evicted {spiffe_id}; it may re-attest with a new join token");
                Ok(())
            }
        }
    }
}
