//! `signet proxy run` and `signet policy check|eval|test`.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use signet_identity::SpiffeId;
use std::sync::Arc;

use signet_proxy::policy::{
    canonical_method, canonical_path, cases, load_dir, CompiledPolicy, Mode, Request, Rule,
};

/// `ALLOW by allow payments.toml:3` or `DENY (no rule matched: default deny)`.
fn explain(allowed: bool, rule: &Option<Arc<Rule>>) -> String {
    let verdict = if allowed { "ALLOW" } else { "DENY" };
    match rule {
        Some(r) => {
            let kind = match r.mode {
                Mode::Enforce => r.effect.to_string(),
                Mode::Audit => format!("audit {}", r.effect),
            };
            format!("{verdict} by {kind} {}:{}", r.file.display(), r.line)
        }
        None => format!("{verdict} (no rule matched: default deny)"),
    }
}

/// Proxy commands.
#[derive(clap::Subcommand)]
pub(crate) enum ProxyCommand {
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
pub(crate) enum PolicyCommand {
    /// Validate a policy directory (for CI on your policy repo).
    ///
    /// Example:
    ///   signet policy check ./policies
    #[command(verbatim_doc_comment)]
    Check {
        /// Directory of *.toml policy files.
        dir: PathBuf,
    },
    /// Run the test cases kept beside the rules ([[test]] tables), for CI on
    /// your policy repo: one line per failure with the rule that decided,
    /// exit status 1 if any fails.
    ///
    /// A test case, in any policy file:
    ///   [[test]]
    ///   from = "spiffe://example.org/ns/prod/sa/web"
    ///   to = "spiffe://example.org/ns/prod/sa/payments"
    ///   method = "GET"          # optional, HTTP listeners
    ///   path = "/v1/pay"        # optional, HTTP listeners
    ///   expect = "deny"         # or "allow"
    ///
    /// Example:
    ///   signet policy test ./policies
    #[command(verbatim_doc_comment)]
    Test {
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
    pub(crate) fn worker_threads(&self) -> Option<usize> {
        let ProxyCommand::Run { worker_threads, .. } = self;
        *worker_threads
    }

    /// Runs the command.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
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
    pub(crate) fn run(self) -> anyhow::Result<()> {
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
                println!("{}", explain(d.allowed, &d.rule));
                if let Some(a) = &d.audit {
                    println!("audit: would {}", explain(a.allowed, &a.rule));
                }
                Ok(())
            }
            PolicyCommand::Test { dir } => {
                let p = load_dir(&dir).map_err(|e| anyhow!("{e}"))?;
                if p.tests.is_empty() {
                    return Err(anyhow!(
                        "{}: no [[test]] cases; add some beside the rules (see `signet policy test --help`)",
                        dir.display()
                    ));
                }
                let outcomes = cases::run(&p);
                let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
                for o in &failed {
                    let c = o.case;
                    let request = match (&c.method, &c.path) {
                        (None, None) => String::new(),
                        (m, path) => format!(
                            " {} {}",
                            m.as_deref().unwrap_or("*"),
                            path.as_deref().unwrap_or("*")
                        ),
                    };
                    println!(
                        "FAIL {}:{}: {} -> {}{request}: expected {}, got {}",
                        c.file.display(),
                        c.line,
                        c.from,
                        c.to,
                        c.expect,
                        explain(o.decision.allowed, &o.decision.rule).to_lowercase(),
                    );
                }
                println!(
                    "policy tests: {} passed, {} failed",
                    outcomes.len() - failed.len(),
                    failed.len()
                );
                if failed.is_empty() {
                    Ok(())
                } else {
                    std::process::exit(1)
                }
            }
        }
    }
}
