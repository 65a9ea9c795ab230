//! One module per top-level subcommand.

pub mod agent;
pub mod bundle;
pub mod ca;
pub mod dev;
mod dev_demo;
pub mod endpoints;
pub mod entry;
pub mod id;
pub mod jwt;
pub mod proxy;
pub mod token;
pub mod x509;

pub use signet_identity::daemon::shutdown_signal;

/// Log output format for daemons.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up `tracing` for a daemon (see
/// [`signet_identity::daemon::init_logging`]).
pub fn init_logging(format: LogFormat) {
    signet_identity::daemon::init_logging(matches!(format, LogFormat::Json))
}
