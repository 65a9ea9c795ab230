//! One module per top-level subcommand.

pub(crate) mod agent;
pub(crate) mod bundle;
pub(crate) mod ca;
pub(crate) mod dev;
mod dev_demo;
pub(crate) mod endpoints;
pub(crate) mod entry;
pub(crate) mod id;
pub(crate) mod jwt;
pub(crate) mod proxy;
pub(crate) mod token;
pub(crate) mod x509;

pub(crate) use signet_identity::daemon::shutdown_signal;

/// Log output format for daemons.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up `tracing` for a daemon (see
/// [`signet_identity::daemon::init_logging`]).
pub(crate) fn init_logging(format: LogFormat) {
    signet_identity::daemon::init_logging(matches!(format, LogFormat::Json))
}
