//! `signet-proxy`: the sidecar alone, the same as `signet proxy run`
//! without the CA, the agent and their database drivers in the binary. A
//! sidecar runs beside every workload: the smaller binary maps fewer pages
//! (idle RSS) and starts faster.

use std::path::PathBuf;

use clap::Parser;

/// Signet's sidecar proxy: mTLS with SPIFFE identities, policy, discovery,
/// balancing and the tunnel (see the README's "Running the sidecar proxy").
#[derive(Parser)]
#[command(name = "signet-proxy", version)]
struct Args {
    /// proxy.toml.
    #[arg(long)]
    config: PathBuf,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Runtime worker threads [default: one per core].
    #[arg(long)]
    worker_threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = signet_proxy::ProxyConfig::from_file(&args.config)?;
    signet_identity::daemon::init_logging(args.log_format == "json");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(n.max(1));
    }
    runtime
        .enable_all()
        .build()?
        // The signal handlers need the runtime.
        .block_on(async {
            signet_proxy::run(config, signet_identity::daemon::shutdown_signal()).await
        })?;
    Ok(())
}
