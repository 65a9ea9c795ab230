//! `signet proxy run` and `signet policy check|eval`.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use signet_identity::SpiffeId;
use signet_proxy::policy::{canonical_method, canonical_path, load_dir, CompiledPolicy, Request};

/// Proxy commands.
#[derive(clap::Subcommand)]
pub enum ProxyCommand {
    /// Run the sidecar proxy: mTLS in and out with this workload's SVID, policy on inbound.
    ///
    /// Takes its SVID and bundle from the agent (workload_api_socket, default
    /// $SPIFFE_ENDPOINT_SOCKET) and swaps them live. Binds nothing and reports
    /// not-ready until the first SVID arrives. Reloads policy_dir on change or
    /// SIGHUP; drains open connections on SIGTERM.
    ///
    /// Example:
    ///   signet proxy run --config /etc/signet/proxy.toml
    #[command(verbatim_doc_comment)]
    Run {
        /// proxy.toml.
        #[arg(long)]
        config: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value_t = super::LogFormat::Text)]
        log_format: super::LogFormat,
        /// Runtime worker threads [default: one per core].
        #[arg(long)]
        worker_threads: Option<usize>,
    },
}

/// Policy commands.
#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory (for CI on your policy repo).
    ///
    /// Example:
    ///   signet policy check ./policies
    #[command(verbatim_doc_comment)]
    Check {
        /// Directory of *.toml policy files.
        dir: PathBuf,
    },
    /// Print the decision for one request, and the rule that made it.
    ///
    /// Example:
    ///   signet policy eval --policy ./policies \
    ///     --from spiffe://example.org/ns/prod/sa/checkout --to spiffe://example.org/ns/prod/sa/payments
    #[command(verbatim_doc_comment)]
    Eval {
        /// Directory of *.toml policy files.
        #[arg(long)]
        policy: PathBuf,
        /// The caller's SPIFFE ID.
        #[arg(long)]
        from: String,
        /// The destination's SPIFFE ID.
        #[arg(long)]
        to: String,
        /// HTTP method (for rules with methods).
        #[arg(long)]
        method: Option<String>,
        /// HTTP path (for rules with paths).
        #[arg(long)]
        path: Option<String>,
    },
}

impl ProxyCommand {
    /// Worker threads asked for on the command line.
    pub fn worker_threads(&self) -> Option<usize> {
        let ProxyCommand::Run { worker_threads, .. } = self;
        *worker_threads
    }

    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        let ProxyCommand::Run {
            config, log_format, ..
        } = self;
        let config = signet_proxy::ProxyConfig::from_file(&config)?;
        super::init_logging(log_format);
        signet_proxy::run(config, super::shutdown_signal()).await?;
        Ok(())
    }
}

impl PolicyCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            PolicyCommand::Check { dir } => {
                let policy = load_dir(&dir).map_err(|e| anyhow!("{e}"))?;
                println!("{}: {} rule(s), valid", dir.display(), policy.rules.len());
                Ok(())
            }
            PolicyCommand::Eval {
                policy,
                from,
                to,
                method,
                path,
            } => {
                let from = SpiffeId::parse(&from).with_context(|| format!("--from {from:?}"))?;
                let to = SpiffeId::parse(&to).with_context(|| format!("--to {to:?}"))?;
                let p = load_dir(&policy).map_err(|e| anyhow!("{e}"))?;
                let compiled = CompiledPolicy::for_destination(&p, Some(&to));
                // The proxy decides on the canonical form; so does eval.
                let method = method
                    .map(|m| canonical_method(&m).map_err(|e| anyhow!("--method {m:?}: {e}")))
                    .transpose()?;
                let path = path
                    .map(|p| {
                        canonical_path(&p).map_err(|e| {
                            anyhow!("--path {p:?}: {e}; the proxy answers such requests with 400")
                        })
                    })
                    .transpose()?;
                if let Some(p) = &path {
                    println!("path (canonical): {p}");
                }
                let d = compiled.evaluate(&Request {
                    from: &from,
                    to: &to,
                    method: method.as_deref(),
                    path: path.as_deref(),
                });
                let verdict = if d.allowed { "ALLOW" } else { "DENY" };
                match &d.rule {
                    Some(r) => {
                        println!("{verdict} by {} {}:{}", r.effect, r.file.display(), r.line)
                    }
                    None => println!("{verdict} (no rule matched: default deny)"),
                }
                Ok(())
            }
        }
    }
}
