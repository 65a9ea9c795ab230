//! Connects to the CA's admin API over its Unix socket, and turns gRPC
//! statuses into one-line messages that say what to fix.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use signet_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

/// Default admin socket: `$SIGNET_ADMIN_SOCKET`, else the CA's default.
pub(crate) const DEFAULT_ADMIN_SOCKET: &str = "/var/lib/signet/ca/admin.sock";

/// The `--admin-socket` flag every admin command takes.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct AdminSocket {
    /// Path of the CA's admin socket.
    #[arg(long = "admin-socket", env = "SIGNET_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub path: PathBuf,
}

impl AdminSocket {
    /// Connects, or explains why not.
    pub(crate) async fn connect(&self) -> anyhow::Result<AdminClient<Channel>> {
        let path = self.path.clone();
        if !path.exists() {
            return Err(anyhow!(
                "admin socket {} does not exist: is `signet ca serve` running? (set --admin-socket or SIGNET_ADMIN_SOCKET)",
                path.display()
            ));
        }
        let channel = signet_identity::unix_grpc::channel(&path)
            .await
            .map_err(|e| connect_error(&self.path, e))?;
        Ok(AdminClient::new(channel))
    }
}

fn connect_error(path: &Path, e: tonic::transport::Error) -> anyhow::Error {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::PermissionDenied => anyhow!(
                    "permission denied on admin socket {}: run as the CA's user or root",
                    path.display()
                ),
                std::io::ErrorKind::ConnectionRefused => anyhow!(
                    "nothing listens on admin socket {}: is `signet ca serve` running?",
                    path.display()
                ),
                _ => anyhow!("cannot connect to admin socket {}: {io}", path.display()),
            };
        }
        source = err.source();
    }
    anyhow!("cannot connect to admin socket {}: {e}", path.display())
}

/// Turns a gRPC status into an error whose message is the server's reason.
pub(crate) fn status(s: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let msg = s.message().to_owned();
    match s.code() {
        Code::Unavailable => anyhow!("the CA is unavailable: {msg}"),
        Code::PermissionDenied => anyhow!("permission denied: {msg}"),
        Code::Internal | Code::Unknown => anyhow!("the CA failed: {msg}"),
        _ => anyhow!(msg),
    }
}

/// `Result<Response<T>, Status>` → `anyhow::Result<T>`.
pub(crate) trait ResponseExt<T> {
    /// Unwraps the response or converts the status.
    fn into_result(self) -> anyhow::Result<T>;
}

impl<T> ResponseExt<T> for Result<tonic::Response<T>, tonic::Status> {
    fn into_result(self) -> anyhow::Result<T> {
        self.map(tonic::Response::into_inner).map_err(status)
    }
}

/// Reads a file with a message naming it.
pub(crate) fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
