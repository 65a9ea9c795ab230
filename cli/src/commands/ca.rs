//! `signet ca serve|show`.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use signet_ca::CaConfig;
use signet_proto::admin as pb;

use super::{init_logging, shutdown_signal, LogFormat};
use crate::admin_client::{AdminSocket, ResponseExt};
use crate::output::{self, timestamp, Format};

/// CA commands.
#[derive(clap::Subcommand)]
pub enum CaCommand {
    /// Run the Signet certificate authority for one trust domain.
    ///
    /// Settings come from the TOML file given with --config (every key is
    /// optional), then from the flags, which win. On first start the CA
    /// creates its signing key (a self-signed EC P-256 root, or an
    /// intermediate under upstream_cert/upstream_key) and its database;
    /// both survive restarts. It logs one "signet CA ready" line when it
    /// serves, and shuts down gracefully on SIGTERM or Ctrl-C.
    ///
    /// Example:
    ///   signet ca serve --trust-domain example.org --data-dir /var/lib/signet/ca
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Show the CA's signing keys, X.509 and JWT: state, validity, owner.
    ///
    /// X.509 keys are `active` (or `lost`); JWT keys go `prepared` (published,
    /// not signing yet) -> `active` -> `old` (published until no token it
    /// signed can still be valid). IN USE marks the keys the answering
    /// replica signs with.
    ///
    /// Example:
    ///   signet ca show --output json
    #[command(verbatim_doc_comment)]
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        admin: AdminSocket,
    },
}

/// A signing key as printed (`--output json` too).
#[derive(Serialize)]
struct KeyView {
    kind: String,
    id: String,
    status: String,
    detail: String,
    not_before: i64,
    not_after: i64,
    replica: String,
    in_use: bool,
}

/// Flags of `signet ca serve`; each overrides the config file.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for keys and the SQLite database [default: /var/lib/signet/ca].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Trust domain, e.g. example.org [default: example.org].
    #[arg(long)]
    trust_domain: Option<String>,
    /// Node API address agents connect to [default: 0.0.0.0:8081].
    #[arg(long)]
    listen: Option<String>,
    /// Admin API Unix socket [default: <data-dir>/admin.sock].
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// sqlite://PATH or postgres://USER@HOST/DB [default: SQLite in <data-dir>].
    #[arg(long)]
    database_url: Option<String>,
    /// Address for /metrics, /ready and /live [default: 127.0.0.1:9988].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Recovery: this replica's active signing key file is gone for good;
    /// mark it lost and make a new key (agents need the new bundle).
    #[arg(long)]
    replace_lost_key: bool,
}

impl CaCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            CaCommand::Serve(args) => serve(args).await,
            CaCommand::Show { output, admin } => {
                let resp = admin
                    .connect()
                    .await?
                    .list_signing_keys(pb::ListSigningKeysRequest {})
                    .await
                    .into_result()?;
                let keys: Vec<KeyView> = resp
                    .keys
                    .into_iter()
                    .map(|k| KeyView {
                        kind: k.kind,
                        id: k.id,
                        status: k.status,
                        detail: k.detail,
                        not_before: k.not_before,
                        not_after: k.not_after,
                        replica: k.replica,
                        in_use: k.in_use,
                    })
                    .collect();
                match output {
                    Format::Json => output::json(&keys),
                    Format::Table => {
                        let rows: Vec<Vec<String>> = keys
                            .iter()
                            .map(|k| {
                                vec![
                                    k.kind.clone(),
                                    k.id.clone(),
                                    k.status.clone(),
                                    k.detail.clone(),
                                    timestamp(k.not_after),
                                    if k.in_use {
                                        "yes".into()
                                    } else {
                                        String::new()
                                    },
                                    k.replica.clone(),
                                ]
                            })
                            .collect();
                        output::table(
                            &[
                                "KIND",
                                "ID",
                                "STATUS",
                                "TYPE",
                                "NOT AFTER",
                                "IN USE",
                                "REPLICA",
                            ],
                            &rows,
                        );
                        eprintln!("answered by replica {}", resp.replica);
                        Ok(())
                    }
                }
            }
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => CaConfig::from_file(path)?,
        None => CaConfig::default(),
    };
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.trust_domain {
        config.trust_domain = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.admin_socket {
        config.admin_socket = Some(v);
    }
    if let Some(v) = args.database_url {
        config.database_url = Some(v);
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = v;
    }
    config.replace_lost_key |= args.replace_lost_key;
    config.validate()?;
    init_logging(args.log_format);
    signet_ca::run(config, shutdown_signal())
        .await
        .context("the CA stopped")
}
