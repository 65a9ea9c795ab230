//! TCP mode of an outbound listener: each app connection goes to one
//! endpoint, over a tunnel stream or a TLS connection of its own; a failed
//! attempt goes to another endpoint before the first app byte is read.

use std::sync::Arc;
use std::time::Instant;

use signet_identity::tls::BundleHandle;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::forward::{ms_since, relay, relay_stream};
use crate::outbound::target::{Target, TunnelMode};

/// An upstream connection: its own TLS connection, or a tunnel stream.
enum UpstreamStream {
    Tls(Box<TlsStream<TcpStream>>),
    Tunnel(crate::tunnel::pool::TunnelStream),
}

/// How one attempt on an endpoint failed.
enum AttemptError {
    /// Try another endpoint (metric reason, error).
    Endpoint(&'static str, String),
    /// Give up: the upstream refused this caller (what it answered).
    Final(String),
}

impl Target {
    /// TCP mode: one connection of the app relayed to one endpoint, after
    /// failover over at most [`crate::upstream::MAX_ATTEMPTS`] endpoints
    /// (nothing of the app is read before an endpoint is chosen).
    pub(crate) async fn relay_tcp(self: Arc<Self>, mut local: TcpStream, start: Instant) {
        let Some(bundle) = self
            .connector
            .identity
            .borrow()
            .as_ref()
            .map(|i| i.bundle.clone())
        else {
            return;
        };
        // Nothing of the app has been read yet: a failed attempt goes to
        // another endpoint, unnoticed by the app.
        let mut tried: Vec<String> = Vec::new();
        let (upstream, peer, pick) = loop {
            let Some(pick) = self
                .upstream
                .pick_or_wait(&tried, self.connector.connect_timeout)
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
                    if tried.len() >= crate::upstream::MAX_ATTEMPTS {
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
        pick: &crate::upstream::balancer::Pick,
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
        let tunnel_addr = crate::tunnel::pool::tunnel_address(&pick.address, port);
        use crate::tunnel::pool::StreamError;
        match pool
            .open_stream(&self.connector, &tunnel_addr, &pick.address, bundle)
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
}
