//! `signet`: runs each Signet daemon and administers identities.
//!
//! Errors end the process with one line on stderr saying what to fix, and a
//! non-zero exit status.
#![forbid(unsafe_code)]
// Doc comments here are clap's `--help` text, written for a terminal:
// `<data-dir>` and bare URLs are meant literally, not as HTML or links.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

mod admin_client;
mod commands;
mod duration;
mod output;

use clap::{Parser, Subcommand};

/// Signet: zero-trust workload identity (SPIFFE) — CA, agent, sidecar proxy and admin tool.
#[derive(Parser)]
#[command(name = "signet", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a throwaway Signet on this machine with no configuration.
    ///
    /// Example:
    ///   signet dev
    #[command(verbatim_doc_comment)]
    Dev(commands::dev::DevArgs),
    /// Run the certificate authority.
    #[command(subcommand)]
    Ca(commands::ca::CaCommand),
    /// Create join tokens for new agents.
    #[command(subcommand)]
    Token(commands::token::TokenCommand),
    /// Manage registration entries (which workload gets which SPIFFE ID).
    #[command(subcommand)]
    Entry(commands::entry::EntryCommand),
    /// Run the node agent; list, ban and evict agents.
    #[command(subcommand)]
    Agent(commands::agent::AgentCommand),
    /// List the endpoints sidecars registered (the mesh's service registry).
    #[command(subcommand)]
    Endpoints(commands::endpoints::EndpointsCommand),
    /// Show the trust bundle.
    #[command(subcommand)]
    Bundle(commands::bundle::BundleCommand),
    /// Run the sidecar proxy.
    #[command(subcommand)]
    Proxy(commands::proxy::ProxyCommand),
    /// Validate policy files and evaluate requests against them.
    #[command(subcommand)]
    Policy(commands::proxy::PolicyCommand),
    /// Show or write this process's identity (X.509 or JWT), from the Workload API.
    #[command(subcommand)]
    Id(commands::id::IdCommand),
    /// Inspect JWT-SVIDs offline or validate them through the agent.
    #[command(subcommand)]
    Jwt(commands::jwt::JwtCommand),
    /// Inspect X.509 certificates offline.
    #[command(subcommand)]
    X509(commands::x509::X509Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Proxy(p) = &cli.command {
        if let Some(n) = p.worker_threads() {
            builder.worker_threads(n.max(1));
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("signet: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(a) => commands::dev::run(a).await,
            Command::Ca(c) => c.run().await,
            Command::Token(c) => c.run().await,
            Command::Entry(c) => c.run().await,
            Command::Agent(c) => c.run().await,
            Command::Bundle(c) => c.run().await,
            Command::Endpoints(c) => c.run().await,
            Command::Id(c) => c.run().await,
            Command::Jwt(c) => c.run().await,
            Command::Proxy(c) => c.run().await,
            Command::Policy(c) => c.run(),
            Command::X509(c) => c.run(),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context, then the causes.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("signet: error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
