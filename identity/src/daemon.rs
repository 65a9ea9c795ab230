//! What every Signet daemon does the same way at its edges: log setup and
//! the shutdown signal. Shared by the `signet` command and the slim
//! `signet-proxy` sidecar binary.

/// Completes on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when
/// this is called, not when the future is first polled: a daemon logs its
/// ready line before it waits on this, and a SIGTERM sent right after that
/// line must reach the handler, not the default action (which kills the
/// process without draining).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                // Without signal handlers, fall back to Ctrl-C only.
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Sets up `tracing` for a daemon: stderr, level from `SIGNET_LOG` (then
/// `RUST_LOG`), default `info`; one JSON object per line if `json`.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("SIGNET_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if json {
        builder.json().init()
    } else {
        builder.init()
    }
}
