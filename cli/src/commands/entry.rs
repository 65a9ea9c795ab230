//! `signet entry create|list|show|update|delete`.

use serde::Serialize;
use signet_proto::admin as pb;

use crate::admin_client::{AdminSocket, ResponseExt};
use crate::duration::{human, parse_seconds};
use crate::output::{self, timestamp, Format};

/// Registration entry commands.
#[derive(clap::Subcommand)]
pub(crate) enum EntryCommand {
    /// Register a workload identity.
    ///
    /// Prints the new entry's ID alone on stdout.
    ///
    /// Example:
    ///   signet entry create --spiffe-id spiffe://example.org/ns/prod/sa/web \
    ///     --parent-id spiffe://example.org/signet/agent/node-1 \
    ///     --selector unix:uid:1000 --x509-ttl 1h --dns-name web.prod.svc
    #[command(verbatim_doc_comment)]
    Create {
        #[command(flatten)]
        fields: EntryFields,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// List entries.
    ///
    /// Example:
    ///   signet entry list --parent-id spiffe://example.org/signet/agent/node-1 --output json
    #[command(verbatim_doc_comment)]
    List {
        /// Only entries under this agent.
        #[arg(long)]
        parent_id: Option<String>,
        /// Only entries with this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Show one entry.
    ///
    /// Example:
    ///   signet entry show 3f2a...
    #[command(verbatim_doc_comment)]
    Show {
        /// Entry ID.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Change an entry; flags not given keep their current value.
    ///
    /// --selector and --dns-name, when given, replace the whole list.
    ///
    /// Example:
    ///   signet entry update 3f2a... --x509-ttl 30m
    #[command(verbatim_doc_comment)]
    Update {
        /// Entry ID.
        id: String,
        #[command(flatten)]
        fields: EntryUpdateFields,
        #[command(flatten)]
        admin: AdminSocket,
    },
    /// Delete an entry.
    ///
    /// Example:
    ///   signet entry delete 3f2a...
    #[command(verbatim_doc_comment)]
    Delete {
        /// Entry ID.
        id: String,
        #[command(flatten)]
        admin: AdminSocket,
    },
}

/// Fields of a new entry.
#[derive(clap::Args)]
pub(crate) struct EntryFields {
    /// The workload's SPIFFE ID.
    #[arg(long)]
    spiffe_id: String,
    /// SPIFFE ID of the agent that may obtain it.
    #[arg(long)]
    parent_id: String,
    /// type:value selector, repeatable; all must match (unix:uid:1000, unix:path:/usr/bin/app...).
    #[arg(long = "selector", required = true)]
    selectors: Vec<String>,
    /// SVID lifetime (3600, 1h...) [default: the CA's default_x509_svid_ttl].
    #[arg(long, value_parser = parse_seconds)]
    x509_ttl: Option<i64>,
    /// JWT-SVID lifetime (300, 5m...) [default: the CA's default_jwt_svid_ttl].
    #[arg(long, value_parser = parse_seconds)]
    jwt_ttl: Option<i64>,
    /// DNS name to include in the SVID, repeatable.
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// Mark as an admin workload.
    #[arg(long)]
    admin_workload: bool,
    /// Workload API hint sent with the SVID (e.g. internal, external): which
    /// of several SVIDs the workload should use for what.
    #[arg(long)]
    hint: Option<String>,
}

/// Fields an update may change.
#[derive(clap::Args)]
pub(crate) struct EntryUpdateFields {
    /// New SPIFFE ID.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// New parent ID.
    #[arg(long)]
    parent_id: Option<String>,
    /// New selectors (replace all).
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// New SVID lifetime.
    #[arg(long, value_parser = parse_seconds)]
    x509_ttl: Option<i64>,
    /// New JWT-SVID lifetime (0: the CA's default).
    #[arg(long, value_parser = parse_seconds)]
    jwt_ttl: Option<i64>,
    /// New DNS names (replace all).
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// New Workload API hint ("" removes it).
    #[arg(long)]
    hint: Option<String>,
}

/// An entry as printed (`--output json` too).
#[derive(Serialize)]
struct EntryView {
    id: String,
    spiffe_id: String,
    parent_id: String,
    selectors: Vec<String>,
    x509_svid_ttl: i64,
    jwt_svid_ttl: i64,
    dns_names: Vec<String>,
    admin: bool,
    hint: String,
    created_at: i64,
    updated_at: i64,
    revision: i64,
}

impl output::Row for EntryView {
    const HEADERS: &'static [&'static str] =
        &["ENTRY ID", "SPIFFE ID", "PARENT ID", "SELECTORS", "TTL"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.spiffe_id.clone(),
            self.parent_id.clone(),
            self.selectors.join(","),
            ttl_text(self.x509_svid_ttl),
        ]
    }
}

impl From<pb::Entry> for EntryView {
    fn from(e: pb::Entry) -> Self {
        let spec = e.spec.unwrap_or_default();
        Self {
            id: e.id,
            spiffe_id: spec.spiffe_id,
            parent_id: spec.parent_id,
            selectors: spec.selectors,
            x509_svid_ttl: spec.x509_svid_ttl_seconds,
            jwt_svid_ttl: spec.jwt_svid_ttl_seconds,
            dns_names: spec.dns_names,
            admin: spec.admin,
            hint: spec.hint,
            created_at: e.created_at,
            updated_at: e.updated_at,
            revision: e.revision,
        }
    }
}

fn ttl_text(ttl: i64) -> String {
    if ttl == 0 {
        "default".into()
    } else {
        human(ttl)
    }
}

fn print_one(e: &EntryView) {
    println!("Entry ID:   {}", e.id);
    println!("SPIFFE ID:  {}", e.spiffe_id);
    println!("Parent ID:  {}", e.parent_id);
    for s in &e.selectors {
        println!("Selector:   {s}");
    }
    println!("X509 TTL:   {}", ttl_text(e.x509_svid_ttl));
    println!("JWT TTL:    {}", ttl_text(e.jwt_svid_ttl));
    for d in &e.dns_names {
        println!("DNS name:   {d}");
    }
    if !e.hint.is_empty() {
        println!("Hint:       {}", e.hint);
    }
    if e.admin {
        println!("Admin:      true");
    }
    println!(
        "Revision:   {} (updated {})",
        e.revision,
        timestamp(e.updated_at)
    );
}

impl EntryCommand {
    /// Runs the command.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self {
            EntryCommand::Create { fields, admin } => {
                let spec = pb::EntrySpec {
                    spiffe_id: fields.spiffe_id,
                    parent_id: fields.parent_id,
                    selectors: fields.selectors,
                    x509_svid_ttl_seconds: fields.x509_ttl.unwrap_or(0),
                    dns_names: fields.dns_names,
                    admin: fields.admin_workload,
                    hint: fields.hint.unwrap_or_default(),
                    jwt_svid_ttl_seconds: fields.jwt_ttl.unwrap_or(0),
                };
                let entry = admin
                    .connect()
                    .await?
                    .create_entry(pb::CreateEntryRequest { spec: Some(spec) })
                    .await
                    .into_result()?;
                println!("{}", entry.id);
                let spec = entry.spec.unwrap_or_default();
                eprintln!(
                    "created entry for {} under {}",
                    spec.spiffe_id, spec.parent_id
                );
                Ok(())
            }
            EntryCommand::List {
                parent_id,
                spiffe_id,
                output,
                admin,
            } => {
                let entries: Vec<EntryView> = admin
                    .connect()
                    .await?
                    .list_entries(pb::ListEntriesRequest {
                        parent_id: parent_id.unwrap_or_default(),
                        spiffe_id: spiffe_id.unwrap_or_default(),
                    })
                    .await
                    .into_result()?
                    .entries
                    .into_iter()
                    .map(EntryView::from)
                    .collect();
                output::list(output, &entries)
            }
            EntryCommand::Show { id, output, admin } => {
                let entry: EntryView = admin
                    .connect()
                    .await?
                    .get_entry(pb::GetEntryRequest { id })
                    .await
                    .into_result()?
                    .into();
                match output {
                    Format::Json => output::json(&entry),
                    Format::Table => {
                        print_one(&entry);
                        Ok(())
                    }
                }
            }
            EntryCommand::Update { id, fields, admin } => {
                let mut client = admin.connect().await?;
                let current = client
                    .get_entry(pb::GetEntryRequest { id: id.clone() })
                    .await
                    .into_result()?;
                let mut spec = current.spec.unwrap_or_default();
                if let Some(v) = fields.spiffe_id {
                    spec.spiffe_id = v;
                }
                if let Some(v) = fields.parent_id {
                    spec.parent_id = v;
                }
                if !fields.selectors.is_empty() {
                    spec.selectors = fields.selectors;
                }
                if let Some(v) = fields.x509_ttl {
                    spec.x509_svid_ttl_seconds = v;
                }
                if let Some(v) = fields.jwt_ttl {
                    spec.jwt_svid_ttl_seconds = v;
                }
                if !fields.dns_names.is_empty() {
                    spec.dns_names = fields.dns_names;
                }
                if let Some(v) = fields.hint {
                    spec.hint = v;
                }
                let updated: EntryView = client
                    .update_entry(pb::UpdateEntryRequest {
                        id,
                        spec: Some(spec),
                    })
                    .await
                    .into_result()?
                    .into();
                print_one(&updated);
                Ok(())
            }
            EntryCommand::Delete { id, admin } => {
                admin
                    .connect()
                    .await?
                    .delete_entry(pb::DeleteEntryRequest { id: id.clone() })
                    .await
                    .into_result()?;
                eprintln!("deleted entry {id}");
                Ok(())
            }
        }
    }
}
