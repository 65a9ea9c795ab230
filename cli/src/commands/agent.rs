//! `signet agent list|ban|evict`.

use serde::Serialize;
use signet_agent::config::NodeAttestationMethod;
use signet_proto::admin as pb;

use crate::admin_client::{AdminSocket, ResponseExt};
use crate::output::{self, timestamp, Format};

/// Agent commands.
#[derive(clap::Subcommand)]
pub(crate) enum AgentCommand {
    /// Run the node agent: attest to the CA, keep SVIDs fresh, serve the Workload API.
    ///
    /// On first start the agent needs a way to prove its node (a join
    /// token, or --node-attestation x509pop|sshpop) and a way to trust the
    /// CA (--trust-bundle, or --insecure-bootstrap for development). It
    /// keeps its SVID and key in --data-dir, so later starts need neither;
    /// a node attested by proof attests again by itself when its SVID is
    /// gone. It logs one "signet agent ready" line when it serves.
    ///
    /// Examples:
    ///   signet agent run --ca ca.internal:8081 --trust-bundle bundle.pem \
    ///     --join-token $TOKEN --socket /run/signet/agent.sock
    ///   signet agent run --ca ca.internal:8081 --trust-bundle bundle.pem \
    ///     --node-attestation x509pop --x509pop-cert node.pem --x509pop-key node.key
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
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
    /// Show one agent: how it proved its node, its node selectors, its SVID.
    ///
    /// Example:
    ///   signet agent show spiffe://example.org/signet/agent/x509pop/3f1c…
    #[command(verbatim_doc_comment)]
    Show {
        /// The agent's SPIFFE ID.
        spiffe_id: String,
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
    /// Evict an agent: its record is removed; it may attest again (a new
    /// join token, or by proof).
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
    /// How it proved its node: join_token, x509pop, sshpop.
    attestation_type: String,
    /// What it proved of its node (empty for join tokens).
    node_selectors: Vec<String>,
    svid_serial: String,
    svid_expires_at: i64,
    banned: bool,
    created_at: i64,
    updated_at: i64,
}

impl output::Row for AgentView {
    const HEADERS: &'static [&'static str] = &[
        "SPIFFE ID",
        "ATTESTATION",
        "SVID EXPIRES",
        "STATUS",
        "NODE SELECTORS",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.spiffe_id.clone(),
            self.attestation_type.clone(),
            timestamp(self.svid_expires_at),
            if self.banned {
                "banned".into()
            } else {
                "active".into()
            },
            self.node_selectors.join(","),
        ]
    }
}

impl From<pb::Agent> for AgentView {
    fn from(a: pb::Agent) -> Self {
        Self {
            spiffe_id: a.spiffe_id,
            attestation_type: a.attestation_type,
            node_selectors: a.node_selectors,
            svid_serial: a.svid_serial,
            svid_expires_at: a.svid_expires_at,
            banned: a.banned,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// Flags of `signet agent run`; each overrides the config file.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// TOML config file.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The CA's node API address, host:port [default: 127.0.0.1:8081].
    /// Repeat for several replicas; they are tried in turn.
    #[arg(long)]
    ca: Vec<String>,
    /// PEM bundle to authenticate the CA on first contact.
    #[arg(long, conflicts_with = "insecure_bootstrap")]
    trust_bundle: Option<std::path::PathBuf>,
    /// Trust whatever answers at --ca on first contact (development only).
    #[arg(long)]
    insecure_bootstrap: bool,
    /// Single-use join token (first start only). Visible to every local
    /// user in the process list: prefer --join-token-file or the
    /// SIGNET_JOIN_TOKEN environment variable.
    #[arg(long, env = "SIGNET_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// File holding the join token (first start only); not in `ps`.
    #[arg(long, conflicts_with = "join_token")]
    join_token_file: Option<std::path::PathBuf>,
    /// How the node proves itself to the CA [default: join_token; x509pop
    /// with --x509pop-cert and --x509pop-key; sshpop with the host
    /// certificate].
    #[arg(long, value_enum)]
    node_attestation: Option<NodeAttestationArg>,
    /// x509pop: the node's certificate (PEM or DER; intermediates may
    /// follow the leaf).
    #[arg(long)]
    x509pop_cert: Option<std::path::PathBuf>,
    /// x509pop: the certificate's private key (PEM).
    #[arg(long)]
    x509pop_key: Option<std::path::PathBuf>,
    /// sshpop: the OpenSSH host certificate [default: the first
    /// /etc/ssh/ssh_host_{ed25519,ecdsa,rsa}_key-cert.pub].
    #[arg(long)]
    sshpop_cert: Option<std::path::PathBuf>,
    /// sshpop: the host key it certifies [default: beside the certificate].
    #[arg(long)]
    sshpop_key: Option<std::path::PathBuf>,
    /// Trust domain of the CA [default: example.org].
    #[arg(long)]
    trust_domain: Option<String>,
    /// Where the agent keeps its SVID and key [default: /var/lib/signet/agent].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Workload API socket [default: /run/signet/agent.sock].
    #[arg(long)]
    socket: Option<std::path::PathBuf>,
    /// Address for /metrics, /ready and /live [default: 127.0.0.1:9989].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Renew SVIDs after this fraction of their lifetime [default: 0.5].
    #[arg(long)]
    renewal_fraction: Option<f64>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = super::LogFormat::Text)]
    log_format: super::LogFormat,
}

/// `--node-attestation` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum NodeAttestationArg {
    /// A single-use join token (--join-token).
    #[value(name = "join_token", alias = "join-token")]
    JoinToken,
    /// A certificate from a CA the Signet CA trusts for nodes.
    X509pop,
    /// An SSH host certificate from an SSH CA the Signet CA trusts.
    Sshpop,
}

async fn run_agent(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => signet_agent::config::AgentConfig::from_file(path)?,
        None => signet_agent::AgentConfig::default(),
    };
    if !args.ca.is_empty() {
        config.ca = args.ca;
    }
    if let Some(v) = args.trust_bundle {
        config.trust_bundle = Some(v);
    }
    if args.insecure_bootstrap {
        config.insecure_bootstrap = true;
    }
    if let Some(v) = args.join_token {
        config.join_token = Some(v);
    }
    if let Some(path) = &args.join_token_file {
        let token = anyhow::Context::with_context(std::fs::read_to_string(path), || {
            format!(
                "--join-token-file {}: cannot read it; write the token from `signet token create` there",
                path.display()
            )
        })?;
        config.join_token = Some(token.trim().to_owned());
    }
    if let Some(m) = args.node_attestation {
        config.node_attestation = match m {
            NodeAttestationArg::JoinToken => NodeAttestationMethod::JoinToken,
            NodeAttestationArg::X509pop => NodeAttestationMethod::X509pop,
            NodeAttestationArg::Sshpop => NodeAttestationMethod::Sshpop,
        };
    }
    if let Some(v) = args.x509pop_cert {
        config.x509pop_cert = Some(v);
    }
    if let Some(v) = args.x509pop_key {
        config.x509pop_key = Some(v);
    }
    if let Some(v) = args.sshpop_cert {
        config.sshpop_cert = Some(v);
    }
    if let Some(v) = args.sshpop_key {
        config.sshpop_key = Some(v);
    }
    if let Some(v) = args.trust_domain {
        config.trust_domain = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.socket {
        config.socket = v;
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = v;
    }
    if let Some(v) = args.renewal_fraction {
        config.renewal_fraction = v;
    }
    config.validate()?;
    super::init_logging(args.log_format);
    signet_agent::run(config, super::shutdown_signal()).await?;
    Ok(())
}

impl AgentCommand {
    /// Runs the command.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self {
            AgentCommand::Run(args) => run_agent(*args).await,
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
                output::list(output, &agents)
            }
            AgentCommand::Show {
                spiffe_id,
                output,
                admin,
            } => {
                let agent = admin
                    .connect()
                    .await?
                    .list_agents(pb::ListAgentsRequest {})
                    .await
                    .into_result()?
                    .agents
                    .into_iter()
                    .find(|a| a.spiffe_id == spiffe_id)
                    .map(AgentView::from)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "agent {spiffe_id} is not on record; `signet agent list` shows the attested agents"
                        )
                    })?;
                match output {
                    Format::Json => output::json(&agent),
                    Format::Table => {
                        println!("SPIFFE ID:     {}", agent.spiffe_id);
                        println!("Attestation:   {}", agent.attestation_type);
                        for s in &agent.node_selectors {
                            println!("Node selector: {s}");
                        }
                        println!("SVID serial:   {}", agent.svid_serial);
                        println!("SVID expires:  {}", timestamp(agent.svid_expires_at));
                        println!(
                            "Status:        {}",
                            if agent.banned { "banned" } else { "active" }
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
