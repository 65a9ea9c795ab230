//! What every Signet daemon does the same way at its edges: log setup, the
//! shutdown signal, and reading its configuration file. Shared by the
//! `signet` command and the slim `signet-proxy` sidecar binary.

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

/// Why a daemon's configuration cannot be used; the same for the CA, the
/// agent and the proxy, so each names a bad file the same way.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What the parser said, with line and column, on one line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Reads a daemon's TOML configuration file into `T` (a regular file, not
/// a device or a FIFO, of bounded size: [`crate::files::read_input_file`]).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, ConfigError> {
    let text = crate::files::read_input_file(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        port: u16,
    }

    #[test]
    fn a_bad_file_is_named_with_the_line_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "port = 1\nbogus = 2\n").unwrap();
        let e = read_toml::<Sample>(&path).unwrap_err().to_string();
        assert!(e.starts_with("invalid config file "), "{e}");
        assert!(
            e.contains("bad.toml") && e.contains("bogus") && e.contains("line 2"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let missing = read_toml::<Sample>(&dir.path().join("none.toml")).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
        std::fs::write(&path, "port = 8080\n").unwrap();
        assert_eq!(read_toml::<Sample>(&path).unwrap().port, 8080);
    }
}
