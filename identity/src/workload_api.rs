//! The SPIFFE Workload API words every Signet component shares: the
//! security header, where the socket is and how its address is written, and
//! a client connection to it. The agent serves the API; the proxy and the
//! CLI are clients; all of them use these, so they cannot disagree.

use std::path::{Path, PathBuf};

/// The header every Workload API request must carry with value `true`
/// (SPIFFE Workload API, section 4.2), so that a browser or an SSRF-prone
/// proxy cannot be made to call the API.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Where clients look for the socket address when none is given.
pub const ENDPOINT_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Signet's default agent socket.
pub const DEFAULT_SOCKET: &str = "/run/signet/agent.sock";

/// Why a Workload API socket address cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketAddrError {
    /// Another scheme than `unix:` (the agent serves only a Unix socket).
    #[error("Workload API address {0:?} is not a Unix socket: use unix:///absolute/path")]
    NotUnix(String),
    /// A relative path.
    #[error("Workload API socket {0:?} must be an absolute path: use unix:///absolute/path")]
    NotAbsolute(String),
}

/// The socket path of an address written `unix:///path`, `unix:/path` or as
/// a plain absolute path (the forms SPIFFE libraries accept in
/// `SPIFFE_ENDPOINT_SOCKET`).
pub fn socket_path(raw: &str) -> Result<PathBuf, SocketAddrError> {
    let path = if let Some(rest) = raw.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = raw.strip_prefix("unix:") {
        rest
    } else if raw.contains("://") {
        return Err(SocketAddrError::NotUnix(raw.to_owned()));
    } else {
        raw
    };
    if !path.starts_with('/') {
        return Err(SocketAddrError::NotAbsolute(raw.to_owned()));
    }
    Ok(PathBuf::from(path))
}

/// The socket to use: `explicit` if given, else `$SPIFFE_ENDPOINT_SOCKET`,
/// else [`DEFAULT_SOCKET`].
pub fn resolve_socket(explicit: Option<&str>) -> Result<PathBuf, SocketAddrError> {
    match explicit {
        Some(raw) => socket_path(raw),
        None => match std::env::var(ENDPOINT_SOCKET_ENV) {
            Ok(raw) => socket_path(&raw),
            Err(_) => Ok(PathBuf::from(DEFAULT_SOCKET)),
        },
    }
}

/// `msg` as a request carrying the security header.
pub fn with_security_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

/// A gRPC channel to the Workload API socket at `path`.
pub async fn connect(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    crate::unix_grpc::channel(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_in_every_accepted_form() {
        for ok in ["unix:///run/a.sock", "unix:/run/a.sock", "/run/a.sock"] {
            assert_eq!(socket_path(ok), Ok(PathBuf::from("/run/a.sock")), "{ok}");
        }
        assert!(matches!(
            socket_path("tcp://127.0.0.1:8081"),
            Err(SocketAddrError::NotUnix(_))
        ));
        for bad in ["run/a.sock", "unix://run/a.sock", "unix:a.sock", ""] {
            assert!(
                matches!(socket_path(bad), Err(SocketAddrError::NotAbsolute(_))),
                "{bad}"
            );
        }
        assert_eq!(
            resolve_socket(Some("unix:///x/y.sock")),
            Ok(PathBuf::from("/x/y.sock"))
        );
    }

    #[test]
    fn requests_carry_the_security_header() {
        let r = with_security_header(());
        assert_eq!(
            r.metadata()
                .get(SECURITY_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("true")
        );
    }
}
