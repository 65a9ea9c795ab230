//! An outbound listener: accepts the local app's connections, lets only
//! the allowed local users use this workload's identity, and hands each
//! connection to TCP mode or HTTP mode.

use std::sync::Arc;
use std::time::Instant;

use signet_identity::admission::Admission;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::listener::{accept_loop, ConnTicket};
use crate::outbound::http::HttpState;
use crate::outbound::target::Target;

/// One outbound listener.
pub(crate) struct Outbound {
    /// The upstream and how it is reached.
    pub target: Arc<Target>,
    /// HTTP mode: per-request balancing, retries, timeouts.
    pub http: Option<Arc<HttpState>>,
    /// Local users whose connections may use this listener (and so this
    /// workload's identity).
    pub allowed_uids: Vec<u32>,
}

impl Outbound {
    /// Accepts until `stop`, under the listener's limits.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        // Local apps are not counted per address: they all come from
        // loopback. Which local users may connect is checked per connection.
        let max = self.target.limits.max_connections;
        let this = self.clone();
        let listen = listener.local_addr().ok();
        accept_loop(
            listener,
            "outbound",
            Admission::new(max, max),
            self.target.metrics.clone(),
            stop,
            move |tcp, addr, ticket| {
                let this = this.clone();
                async move { this.handle(tcp, addr, listen, ticket).await }
            },
        )
        .await
    }

    /// Whether the local user who opened `local` may use our identity.
    /// `peer` is the address accept returned; `listen` the listener's own
    /// address, used as ours unless it is a wildcard.
    fn caller_allowed(
        &self,
        local: &TcpStream,
        peer: std::net::SocketAddr,
        listen: Option<std::net::SocketAddr>,
    ) -> Result<u32, String> {
        let ours = match listen.filter(|l| !l.ip().is_unspecified()) {
            Some(l) => l,
            None => local
                .local_addr()
                .map_err(|e| format!("connection without a local address: {e}"))?,
        };
        match crate::outbound::local_peer::peer_uid(peer, ours) {
            Ok(Some(uid)) if self.allowed_uids.contains(&uid) => Ok(uid),
            Ok(Some(uid)) => Err(format!("local uid {uid} is not in allowed_uids")),
            Ok(None) => Err(format!("{peer} is not a socket of this host")),
            Err(e) => Err(format!("cannot find the caller's uid: {e}")),
        }
    }

    async fn handle(
        self: Arc<Self>,
        local: TcpStream,
        peer: std::net::SocketAddr,
        listen: Option<std::net::SocketAddr>,
        _ticket: ConnTicket,
    ) {
        let start = Instant::now();
        if let Err(why) = self.caller_allowed(&local, peer, listen) {
            self.target.metrics.refused("outbound", "uid_not_allowed");
            tracing::warn!(direction = "outbound", listen = ?local.local_addr().ok(), reason = %why, "caller refused: it may not use this workload's identity");
            return;
        }
        let _ = local.set_nodelay(true);
        match self.http.clone() {
            Some(http) => self.target.clone().serve_http(local, http).await,
            None => self.target.clone().relay_tcp(local, start).await,
        }
    }
}
