//! Outbound: plaintext from the local app, mTLS to the peer's sidecar with
//! our SVID; the upstream must present the expected SPIFFE ID.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::LimitsConfig;
use crate::forward::{ms_since, relay, relay_stream};
use crate::listener::{accept_loop, ConnTicket};
use crate::metrics::Metrics;
use crate::refusal::{failure_reason, refusal_reason};
use crate::tls::OutboundTls;
use crate::upstream::Upstream;
use signet_identity::tls::BundleHandle;
use tokio_rustls::client::TlsStream;

/// Most endpoints one connection tries before it is closed.
pub const MAX_ATTEMPTS: usize = 3;
use crate::workload_identity::IdentityWatch;
use signet_identity::admission::Admission;
use signet_identity::tls::{established_peer, Authorizer};

/// One outbound listener.
pub struct Outbound {
    /// rustls client configurations (verify the expected server ID), one
    /// per SVID with its own tickets.
    pub tls: Arc<OutboundTls>,
    /// The peer sidecars: their endpoints and the balancer over them.
    pub upstream: Arc<Upstream>,
    /// How long a TCP connect to one endpoint may take.
    pub connect_timeout: std::time::Duration,
    /// How long the TLS handshake with one endpoint may take.
    pub handshake_timeout: std::time::Duration,
    /// The TLS server name sent.
    pub sni: ServerName<'static>,
    /// HTTP mode: per-request balancing, retries, timeouts.
    pub http: Option<Arc<crate::http_outbound::HttpState>>,
    /// The ID pattern the upstream must present (for logs).
    pub server_id: String,
    /// The check of `server_id`, applied again to resumed sessions.
    pub authorize: Authorizer,
    /// Our identity, for the bundle resumed sessions are checked against.
    pub identity: IdentityWatch,
    /// Timeouts and caps.
    pub limits: LimitsConfig,
    /// Local users whose connections may use this listener (and so this
    /// workload's identity).
    pub allowed_uids: Vec<u32>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// When app connections ride the tunnel.
    pub tunnel_mode: TunnelMode,
    /// The tunnel connections (TCP mode, unless `tunnel = false`).
    pub tunnel: Option<Arc<crate::tunnel_pool::TunnelPool>>,
}

/// When an outbound listener's connections ride the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// For endpoints with a tunnel port.
    Auto,
    /// Never (`tunnel = false`).
    Never,
    /// Always (`tunnel = true`): an endpoint without one fails.
    Always,
}

/// An upstream connection: its own TLS connection, or a tunnel stream.
enum UpstreamStream {
    Tls(Box<TlsStream<TcpStream>>),
    Tunnel(crate::tunnel_pool::TunnelStream),
}

/// How one attempt on an endpoint failed.
enum AttemptError {
    /// Try another endpoint (metric reason, error).
    Endpoint(&'static str, String),
    /// Give up: the upstream refused this caller (what it answered).
    Final(String),
}

impl Outbound {
    /// Accepts until `stop`, under the listener's limits.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        // Local apps are not counted per address: they all come from
        // loopback. Which local users may connect is checked per connection.
        let max = self.limits.max_connections;
        let this = self.clone();
        let listen = listener.local_addr().ok();
        accept_loop(
            listener,
            "outbound",
            Admission::new(max, max),
            self.metrics.clone(),
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
        match crate::local_peer::peer_uid(peer, ours) {
            Ok(Some(uid)) if self.allowed_uids.contains(&uid) => Ok(uid),
            Ok(Some(uid)) => Err(format!("local uid {uid} is not in allowed_uids")),
            Ok(None) => Err(format!("{peer} is not a socket of this host")),
            Err(e) => Err(format!("cannot find the caller's uid: {e}")),
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut local: TcpStream,
        peer: std::net::SocketAddr,
        listen: Option<std::net::SocketAddr>,
        _ticket: ConnTicket,
    ) {
        let start = Instant::now();
        if let Err(why) = self.caller_allowed(&local, peer, listen) {
            self.metrics.refused("outbound", "uid_not_allowed");
            tracing::warn!(direction = "outbound", listen = ?local.local_addr().ok(), reason = %why, "caller refused: it may not use this workload's identity");
            return;
        }
        let _ = local.set_nodelay(true);
        if let Some(http) = self.http.clone() {
            self.serve_http(local, http).await;
            return;
        }
        let Some(bundle) = self.identity.borrow().as_ref().map(|i| i.bundle.clone()) else {
            return;
        };
        // Nothing of the app has been read yet: a failed attempt goes to
        // another endpoint, unnoticed by the app.
        let mut tried: Vec<String> = Vec::new();
        let (upstream, peer, pick) = loop {
            let Some(pick) = self
                .upstream
                .pick_or_wait(&tried, self.connect_timeout)
                .await
            else {
                self.metrics.handshake_failed("outbound", "no_endpoint");
                tracing::warn!(direction = "outbound", upstream = %self.upstream.name, tried = ?tried, "no endpoint left to try; connection closed");
                return;
            };
            let attempt = Instant::now();
            match self.attempt(&pick, &bundle).await {
                Ok((stream, peer)) => {
                    self.upstream.success(&pick.address);
                    break (stream, peer, pick);
                }
                Err(AttemptError::Final(why)) => {
                    self.upstream.success(&pick.address);
                    tracing::warn!(direction = "outbound", upstream = %self.upstream.name, endpoint = %pick.address, reason = %why, "upstream refused this connection; closed");
                    return;
                }
                Err(AttemptError::Endpoint(reason, error)) => {
                    self.metrics.handshake_failed("outbound", reason);
                    // Logged before the failure is recorded (it may eject):
                    // the attempt began `attempt_ms` before this line.
                    tracing::warn!(direction = "outbound", upstream = %self.upstream.name, endpoint = %pick.address, expected = %self.server_id, reason, error = %error, attempt_ms = ms_since(attempt), "endpoint attempt failed; trying another");
                    self.upstream.failure(&pick.address, reason);
                    tried.push(pick.address.clone());
                    if tried.len() >= MAX_ATTEMPTS {
                        tracing::warn!(direction = "outbound", upstream = %self.upstream.name, tried = ?tried, "every attempt failed; connection closed");
                        return;
                    }
                }
            }
        };
        let (tunnel, (to_peer, from_peer, err)) = match upstream {
            UpstreamStream::Tls(mut tls) => (
                false,
                relay(
                    &self.metrics,
                    "outbound",
                    &peer,
                    &mut *tls,
                    &mut local,
                    std::future::pending(),
                )
                .await,
            ),
            UpstreamStream::Tunnel(mut stream) => {
                let r = relay_stream(
                    &self.metrics,
                    "outbound",
                    &peer,
                    &mut stream.io,
                    &mut local,
                    std::future::pending(),
                )
                .await;
                if r.2.is_some() {
                    // The upstream sees a reset, not a clean end.
                    stream.io.reset(h2::Reason::CANCEL);
                }
                (true, r)
            }
        };
        tracing::info!(
            direction = "outbound",
            peer = %peer,
            upstream = %self.upstream.name,
            endpoint = %pick.address,
            tunnel,
            bytes_in = from_peer,
            bytes_out = to_peer,
            duration_ms = ms_since(start),
            error = err.map(|e| e.to_string()).unwrap_or_default(),
            "connection"
        );
    }

    /// One attempt on the endpoint `pick`: a tunnel stream, or a TLS
    /// connection of its own.
    async fn attempt(
        &self,
        pick: &crate::balancer::Pick,
        bundle: &BundleHandle,
    ) -> Result<(UpstreamStream, String), AttemptError> {
        let tunnel_port = match (self.tunnel_mode, pick.tunnel_port, &self.tunnel) {
            (TunnelMode::Never, _, _) | (_, _, None) => None,
            (TunnelMode::Auto, 0, _) => None,
            (TunnelMode::Always, 0, _) => {
                return Err(AttemptError::Endpoint(
                    "no_tunnel",
                    "tunnel = true, and this endpoint advertises no tunnel port".into(),
                ))
            }
            (_, port, Some(pool)) => Some((port, pool)),
        };
        let direct = || async {
            self.connect(&pick.address, bundle)
                .await
                .map(|(tls, peer)| (UpstreamStream::Tls(Box::new(tls)), peer))
                .map_err(|(reason, e)| AttemptError::Endpoint(reason, e))
        };
        let Some((port, pool)) = tunnel_port else {
            return direct().await;
        };
        let tunnel_addr = crate::tunnel_pool::tunnel_address(&pick.address, port);
        use crate::tunnel_pool::StreamError;
        match pool
            .open_stream(self, &tunnel_addr, &pick.address, bundle)
            .await
        {
            Ok(stream) => {
                self.metrics.tunnel_stream("outbound", "opened");
                let peer = stream.peer.clone();
                Ok((UpstreamStream::Tunnel(stream), peer))
            }
            // By default (not `tunnel = true`) a tunnel port that takes no
            // connection (closed, filtered, not speaking HTTP/2) does not
            // cost the endpoint: its own TLS listener is tried next.
            Err(StreamError::Endpoint(reason, e))
                if self.tunnel_mode == TunnelMode::Auto
                    && matches!(reason, "connect" | "connect_timeout" | "no_tunnel") =>
            {
                self.metrics.tunnel_stream("outbound", "fallback");
                tracing::debug!(direction = "outbound", endpoint = %pick.address, tunnel = %tunnel_addr, reason, error = %e, "tunnel unreachable; connecting directly");
                direct().await
            }
            Err(StreamError::Endpoint(reason, e)) => {
                self.metrics.tunnel_stream("outbound", "failed");
                Err(AttemptError::Endpoint(
                    reason,
                    format!("tunnel {tunnel_addr}: {e}"),
                ))
            }
            Err(StreamError::Refused {
                status,
                why,
                not_forwarded,
            }) => {
                self.metrics.tunnel_stream("outbound", "refused");
                let text = format!("tunnel {tunnel_addr} answered {status} {why}");
                if not_forwarded {
                    Err(AttemptError::Endpoint("app_unreachable", text))
                } else {
                    Err(AttemptError::Final(text))
                }
            }
        }
    }

    /// One attempt on `address` with the listener's own TLS configuration.
    pub(crate) async fn connect(
        &self,
        address: &str,
        bundle: &BundleHandle,
    ) -> Result<(TlsStream<TcpStream>, String), (&'static str, String)> {
        self.connect_via(&self.tls, address, bundle).await
    }

    /// One attempt on `address` with `tls`: TCP connect and TLS handshake,
    /// each within its timeout, and the peer checked (again, for a resumed
    /// session). On failure: the metric reason and the error.
    pub(crate) async fn connect_via(
        &self,
        configs: &OutboundTls,
        address: &str,
        bundle: &BundleHandle,
    ) -> Result<(TlsStream<TcpStream>, String), (&'static str, String)> {
        // At most two tries: a resumed session whose ticket predates the
        // upstream's current SVID is refused below; the tickets are then
        // flushed and the second try is a full handshake.
        let mut stale_tickets = false;
        loop {
            let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Err(("connect", e.to_string())),
                Err(_) => {
                    return Err((
                        "connect_timeout",
                        format!("no connection within {:?}", self.connect_timeout),
                    ))
                }
            };
            let _ = tcp.set_nodelay(true);
            let connector = configs.connector().map_err(|e| ("tls_setup", e))?;
            let tls = match tokio::time::timeout(
                self.handshake_timeout,
                connector.connect(self.sni.clone(), tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Err((failure_reason(&e), e.to_string())),
                Err(_) => {
                    return Err((
                        "timeout",
                        format!("no TLS handshake within {:?}", self.handshake_timeout),
                    ))
                }
            };
            // A resumed session is checked again: the upstream's SVID in
            // the ticket may have expired or lost its authority since.
            match established_peer(tls.get_ref().1, bundle, &self.authorize, SystemTime::now()) {
                Ok(peer) => return Ok((tls, peer.to_string())),
                Err(e) if !stale_tickets => {
                    tracing::debug!(direction = "outbound", endpoint = %address, error = %e, "resumed session refused; flushing tickets, full handshake next");
                    configs.flush();
                    stale_tickets = true;
                }
                Err(e) => return Err((refusal_reason(&e), e.to_string())),
            }
        }
    }
}
