//! `signet id show|fetch|jwt`: a workload's view, through the Workload API.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use serde::Serialize;
use signet_identity::workload_api;
use signet_identity::{certificates_to_pem, inspect_chain, CertificateDer};
use signet_proto::workload as pb;
use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use crate::duration::human;
use crate::output::{self, seconds_until, timestamp, Format};

/// Where to find the agent.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct WorkloadSocket {
    /// Workload API socket: a path or unix:///path [env: SPIFFE_ENDPOINT_SOCKET] [default: /run/signet/agent.sock].
    #[arg(long = "socket")]
    socket: Option<String>,
}

impl WorkloadSocket {
    fn path(&self) -> anyhow::Result<PathBuf> {
        Ok(workload_api::resolve_socket(self.socket.as_deref())?)
    }
}

/// Identity commands.
#[derive(clap::Subcommand)]
pub(crate) enum IdCommand {
    /// Show this process's SPIFFE identities, fetched from the Workload API.
    ///
    /// Example:
    ///   signet id show --socket /run/signet/agent.sock
    #[command(verbatim_doc_comment)]
    Show {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// How long to wait for the agent to issue an identity.
        #[arg(long, default_value = "10", value_parser = crate::duration::parse_seconds)]
        timeout: i64,
    },
    /// Print a JWT-SVID for the given audience(s), alone on stdout.
    ///
    /// Example:
    ///   curl -H "Authorization: Bearer $(signet id jwt --audience https://api.example.org)" ...
    #[command(verbatim_doc_comment)]
    Jwt {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Audience (aud claim), repeatable; at least one.
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Which of this process's SPIFFE IDs to get it for [default: the first].
        #[arg(long)]
        spiffe_id: Option<String>,
        /// How long to wait for the agent to issue an identity.
        #[arg(long, default_value = "10", value_parser = crate::duration::parse_seconds)]
        timeout: i64,
    },
    /// Write the SVID, its key and the bundle to files, for apps that read files.
    ///
    /// Writes svid.pem (chain), svid.key (mode 0600) and bundle.pem; further
    /// identities go to svid.1.pem, svid.1.key, ...
    ///
    /// Example:
    ///   signet id fetch --write /etc/myapp/tls
    #[command(verbatim_doc_comment)]
    Fetch {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Directory to write into.
        #[arg(long)]
        write: PathBuf,
        /// How long to wait for the agent to issue an identity.
        #[arg(long, default_value = "10", value_parser = crate::duration::parse_seconds)]
        timeout: i64,
    },
}

/// A Workload API client on `socket`, with a clear error when the agent is
/// not there.
pub(crate) async fn client(
    socket: &WorkloadSocket,
) -> anyhow::Result<SpiffeWorkloadApiClient<tonic::transport::Channel>> {
    let path = socket.path()?;
    if !path.exists() {
        return Err(anyhow!(
            "Workload API socket {} does not exist: is `signet agent run` running? (set --socket or SPIFFE_ENDPOINT_SOCKET)",
            path.display()
        ));
    }
    let channel = workload_api::connect(&path)
        .await
        .with_context(|| format!("cannot connect to {}", path.display()))?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

/// Calls `call` until it answers, the deadline passes, or it fails for a
/// reason other than "no identity yet" (an entry created a moment ago
/// reaches the agent within about a second).
async fn with_retry<T, F, Fut>(timeout: i64, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout.max(1) as u64);
    let mut said = false;
    loop {
        let status = match tokio::time::timeout_at(deadline, call()).await {
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(s)) => s,
            Err(_) => tonic::Status::deadline_exceeded("no answer"),
        };
        let retry = matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unavailable
        );
        if !retry || tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
            return Err(match status.code() {
                tonic::Code::PermissionDenied => anyhow!(
                    "the agent has no identity for this process ({}); register an entry whose selectors match it, e.g. --selector unix:uid:{}",
                    status.message(),
                    rustix::process::getuid().as_raw()
                ),
                tonic::Code::DeadlineExceeded => anyhow!(
                    "no identity from the agent within {}; is an entry registered for this process?",
                    human(timeout)
                ),
                _ => anyhow!("Workload API: {}", status.message()),
            });
        }
        if !said {
            eprintln!(
                "waiting up to {} for the agent to issue an identity for this process...",
                human(timeout)
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fetch(socket: &WorkloadSocket, timeout: i64) -> anyhow::Result<pb::X509svidResponse> {
    let client = client(socket).await?;
    with_retry(timeout, || {
        let mut client = client.clone();
        async move {
            let req = workload_api::with_security_header(pb::X509svidRequest {});
            let mut stream = client.fetch_x509svid(req).await?.into_inner();
            stream
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unavailable("the agent closed the stream"))
        }
    })
    .await
}

fn split_chain(der: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    signet_identity::certificates_from_der_concat(der)
        .map_err(|e| anyhow!("the agent sent an unparsable certificate: {e}"))
}

#[derive(Serialize)]
struct SvidView {
    spiffe_id: String,
    expires_at: i64,
    chain: Vec<signet_identity::CertSummary>,
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    signet_identity::files::write_atomically(path, contents, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

impl IdCommand {
    /// Runs the command.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self {
            IdCommand::Show {
                socket,
                output,
                timeout,
            } => {
                let resp = fetch(&socket, timeout).await?;
                let mut views = Vec::new();
                for svid in &resp.svids {
                    let chain = inspect_chain(&split_chain(&svid.x509_svid)?, SystemTime::now());
                    views.push(SvidView {
                        spiffe_id: svid.spiffe_id.clone(),
                        expires_at: chain.first().map(|c| c.not_after_unix).unwrap_or(0),
                        chain,
                    });
                }
                match output {
                    Format::Json => output::json(&views)?,
                    Format::Table => {
                        for v in &views {
                            println!("SPIFFE ID:  {}", v.spiffe_id);
                            println!(
                                "Expires:    {} (in {})",
                                timestamp(v.expires_at),
                                human(seconds_until(v.expires_at))
                            );
                            for (i, c) in v.chain.iter().enumerate() {
                                println!(
                                    "Chain [{i}]:  {} (issuer {}, {})",
                                    c.subject, c.issuer, c.key_type
                                );
                            }
                            println!();
                        }
                    }
                }
                Ok(())
            }
            IdCommand::Jwt {
                socket,
                audience,
                spiffe_id,
                timeout,
            } => {
                let client = client(&socket).await?;
                let resp = with_retry(timeout, || {
                    let mut client = client.clone();
                    let req = workload_api::with_security_header(pb::JwtsvidRequest {
                        audience: audience.clone(),
                        spiffe_id: spiffe_id.clone().unwrap_or_default(),
                    });
                    async move { Ok(client.fetch_jwtsvid(req).await?.into_inner()) }
                })
                .await?;
                let svid = resp
                    .svids
                    .first()
                    .ok_or_else(|| anyhow!("the agent returned no JWT-SVID"))?;
                println!("{}", svid.svid);
                Ok(())
            }
            IdCommand::Fetch {
                socket,
                write,
                timeout,
            } => {
                let resp = fetch(&socket, timeout).await?;
                std::fs::create_dir_all(&write)
                    .with_context(|| format!("cannot create {}", write.display()))?;
                for (i, svid) in resp.svids.iter().enumerate() {
                    let suffix = if i == 0 {
                        String::new()
                    } else {
                        format!(".{i}")
                    };
                    let chain = split_chain(&svid.x509_svid)?;
                    write_file(
                        &write.join(format!("svid{suffix}.pem")),
                        certificates_to_pem(&chain).as_bytes(),
                        0o644,
                    )?;
                    let key =
                        pem::encode(&pem::Pem::new("PRIVATE KEY", svid.x509_svid_key.clone()));
                    write_file(
                        &write.join(format!("svid{suffix}.key")),
                        key.as_bytes(),
                        0o600,
                    )?;
                    if i == 0 {
                        let bundle = split_chain(&svid.bundle)?;
                        write_file(
                            &write.join("bundle.pem"),
                            certificates_to_pem(&bundle).as_bytes(),
                            0o644,
                        )?;
                    }
                    eprintln!(
                        "wrote {} to {}",
                        svid.spiffe_id,
                        write.join(format!("svid{suffix}.pem")).display()
                    );
                }
                Ok(())
            }
        }
    }
}
