//! `signet token create`.

use crate::admin_client::{AdminSocket, ResponseExt};
use crate::duration::{human, parse_seconds};
use crate::output::timestamp;

/// Join token commands.
#[derive(clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a single-use join token for a new agent.
    ///
    /// Prints the token alone on stdout (for scripts); the agent ID it grants
    /// and its expiry go to stderr.
    ///
    /// Example:
    ///   TOKEN=$(signet token create --ttl 10m --node-name node-1)
    #[command(verbatim_doc_comment)]
    Create {
        /// Lifetime: 600, 10m, 1h... [default: the CA's join_token_ttl, 10m]
        #[arg(long, value_parser = parse_seconds)]
        ttl: Option<i64>,
        /// Name the node; the agent becomes spiffe://<td>/signet/agent/<name>.
        #[arg(long)]
        node_name: Option<String>,
        #[command(flatten)]
        admin: AdminSocket,
    },
}

impl TokenCommand {
    /// Runs the command.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self {
            TokenCommand::Create {
                ttl,
                node_name,
                admin,
            } => {
                let mut client = admin.connect().await?;
                let t = client
                    .create_join_token(signet_proto::admin::CreateJoinTokenRequest {
                        ttl_seconds: ttl.unwrap_or(0),
                        node_name: node_name.unwrap_or_default(),
                    })
                    .await
                    .into_result()?;
                println!("{}", t.token);
                eprintln!(
                    "agent ID: {}  expires: {} (in {})",
                    t.agent_id,
                    timestamp(t.expires_at),
                    human(crate::output::seconds_until(t.expires_at))
                );
                Ok(())
            }
        }
    }
}
