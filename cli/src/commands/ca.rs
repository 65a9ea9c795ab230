//! `signet ca serve|show|prepare|activate|taint|revoke`.

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
pub(crate) enum CaCommand {
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
    /// Keys go PREPARED (in the bundle, not signing yet) -> ACTIVE -> OLD
    /// (in the bundle until nothing it signed can still be valid); LOST
    /// keys lost their file, REVOKED ones left the bundle. IN USE marks the
    /// keys the answering replica signs with; TAINTED ones are being
    /// replaced at the agents.
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
    /// Make and publish the answering replica's next key now, ahead of the
    /// schedule (it signs after `signet ca activate`).
    Prepare {
        /// Which key: x509 or jwt.
        #[arg(long, value_enum, default_value_t = Kind::X509)]
        kind: Kind,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Let the answering replica's prepared key sign now; the active one
    /// becomes OLD (still in the bundle).
    Activate {
        /// Which key: x509 or jwt.
        #[arg(long, value_enum, default_value_t = Kind::X509)]
        kind: Kind,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Mark an OLD key as compromised. X.509: every agent re-signs at once
    /// each SVID it signed, and workloads get the new ones on their open
    /// streams. JWT: agents stop handing out tokens it signed.
    ///
    /// Example (after `signet ca prepare` and `signet ca activate`):
    ///   signet ca taint 3f9c...
    #[command(verbatim_doc_comment)]
    Taint {
        /// The key's ID (`signet ca show`).
        key_id: String,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Take a key (X.509 or JWT) out of the trust bundle: what it signed
    /// stops verifying. Refused for the active key, and while what it
    /// signed may still be valid unless --force (taint it first).
    Revoke {
        /// The key's ID (`signet ca show`).
        key_id: String,
        /// Revoke even though SVIDs it signed may still be valid.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminSocket,
    },
}

/// The kind of key an operation is for.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Kind {
    /// Signs X.509-SVIDs.
    X509,
    /// Signs JWT-SVIDs.
    Jwt,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::X509 => "x509",
            Kind::Jwt => "jwt",
        }
    }
}

/// A signing key as printed (`--output json` too).
#[derive(Serialize)]
struct KeyView {
    kind: String,
    id: String,
    /// PREPARED, ACTIVE, OLD, LOST, REVOKED.
    state: String,
    /// The same in lower case (kept for scripts written before `state`).
    status: String,
    tainted: bool,
    detail: String,
    not_before: i64,
    not_after: i64,
    replica: String,
    in_use: bool,
}

impl output::Row for KeyView {
    const HEADERS: &'static [&'static str] = &[
        "KIND",
        "ID",
        "STATE",
        "TYPE",
        "NOT AFTER",
        "IN USE",
        "REPLICA",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.kind.clone(),
            self.id.clone(),
            if self.tainted {
                format!("{} TAINTED", self.state)
            } else {
                self.state.clone()
            },
            self.detail.clone(),
            timestamp(self.not_after),
            if self.in_use {
                "yes".into()
            } else {
                String::new()
            },
            self.replica.clone(),
        ]
    }
}

/// Flags of `signet ca serve`; each overrides the config file.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
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
    pub(crate) async fn run(self) -> anyhow::Result<()> {
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
                        state: k.status.to_uppercase(),
                        status: k.status,
                        tainted: k.tainted,
                        detail: k.detail,
                        not_before: k.not_before,
                        not_after: k.not_after,
                        replica: k.replica,
                        in_use: k.in_use,
                    })
                    .collect();
                output::list(output, &keys)?;
                if matches!(output, Format::Table) {
                    eprintln!("answered by replica {}", resp.replica);
                }
                Ok(())
            }
            CaCommand::Prepare { kind, admin } => {
                let k = admin
                    .connect()
                    .await?
                    .prepare_key(pb::PrepareKeyRequest {
                        kind: kind.as_str().into(),
                    })
                    .await
                    .into_result()?;
                println!("{}", k.id);
                eprintln!(
                    "prepared and published; it signs after `signet ca activate` (or on schedule)"
                );
                Ok(())
            }
            CaCommand::Activate { kind, admin } => {
                let k = admin
                    .connect()
                    .await?
                    .activate_key(pb::ActivateKeyRequest {
                        kind: kind.as_str().into(),
                    })
                    .await
                    .into_result()?;
                println!("{}", k.id);
                eprintln!("now signing; the previous key is OLD and stays in the bundle");
                Ok(())
            }
            CaCommand::Taint { key_id, admin } => {
                admin
                    .connect()
                    .await?
                    .taint_key(pb::TaintKeyRequest { id: key_id.clone() })
                    .await
                    .into_result()?;
                eprintln!("{key_id} tainted: agents are replacing what it signed");
                Ok(())
            }
            CaCommand::Revoke {
                key_id,
                force,
                admin,
            } => {
                admin
                    .connect()
                    .await?
                    .revoke_key(pb::RevokeKeyRequest {
                        id: key_id.clone(),
                        force,
                    })
                    .await
                    .into_result()?;
                eprintln!("{key_id} revoked: it is out of the trust bundle");
                Ok(())
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
