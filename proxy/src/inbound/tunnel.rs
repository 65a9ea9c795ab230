//! The inbound tunnel listener (default port 15008): mTLS with ALPN `h2`,
//! then each `CONNECT` stream is one caller connection. The peer is the
//! tunnel connection's verified SVID; every stream is decided by policy on
//! its own (every request, in HTTP mode) before a byte reaches the app, and
//! a policy change that revokes the peer resets its open streams.
//!
//! The only target is the app: a `CONNECT` must name `forward_to` or the
//! address this proxy advertises (what a caller would dial without the
//! tunnel); anything else is refused, so the listener is never a relay.
//!
//! Refusals are HTTP answers carrying [`crate::wire::control_headers::ERROR`]:
//! `405 not-connect`, `400 target-not-allowed`, `403 denied`,
//! `403 peer-svid-expired` or `403 peer-svid-untrusted` (the connection
//! outlived the peer's SVID, or the bundle no longer holds its authority:
//! see [`signet_identity::peer_standing`]; the connection is closed),
//! `503 app-unreachable` (with `x-signet-not-forwarded`: the caller may try
//! another endpoint).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use signet_identity::admission::Admission;
use signet_identity::peer_standing::{PeerStanding, StandingLost};
use signet_identity::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::inbound::Inbound;
use crate::listener::{accept_loop, ConnTicket};
use crate::tunnel::stream::H2Stream;
use crate::wire::hbone::{self, response};

/// The `CONNECT` authorities that name this proxy's app: `forward_to`
/// itself, or the address the proxy advertises — exactly when it names a
/// host; with any host when it is only `:port` (the CA fills in the node's
/// address as it sees it, which the proxy cannot know). Whatever the
/// authority, the stream goes to `forward_to` and nowhere else.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    /// Accepted as they are.
    pub exact: Vec<String>,
    /// Any host with this port.
    pub any_host_port: Option<u16>,
}

impl Targets {
    /// Whether `authority` names the app.
    pub(crate) fn allows(&self, authority: &http::uri::Authority) -> bool {
        self.exact.iter().any(|t| t == authority.as_str())
            || (self.any_host_port.is_some() && authority.port_u16() == self.any_host_port)
    }
}

/// The metric label of a stream refused for a peer's lost standing.
fn lost_label(lost: &StandingLost) -> &'static str {
    match lost {
        StandingLost::Expired => "peer_svid_expired",
        StandingLost::Untrusted(_) => "peer_svid_untrusted",
    }
}

/// One inbound proxy's tunnel listener.
pub(crate) struct TunnelInbound {
    /// The proxy's inbound side: policy, app, limits, metrics.
    pub inbound: Arc<Inbound>,
    /// rustls server configuration offering ALPN `h2` only.
    pub tls: tokio_rustls::TlsAcceptor,
    /// The `CONNECT` authorities that name the app.
    pub targets: Targets,
    /// Set when the proxy drains: tunnel connections get a GOAWAY (no new
    /// streams) and their open streams finish.
    pub stop: watch::Receiver<bool>,
}

impl TunnelInbound {
    /// Accepts until `stop`, under the inbound limits.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let limits = &self.inbound.limits;
        let admission = Admission::new(limits.max_connections, limits.max_handshakes_per_source);
        let this = self.clone();
        accept_loop(
            listener,
            "inbound",
            admission,
            self.inbound.metrics.clone(),
            self.stop.clone(),
            move |tcp, addr, ticket| {
                let this = this.clone();
                async move { this.handle(tcp, addr, ticket).await }
            },
        )
        .await
    }

    async fn handle(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
        ticket: ConnTicket,
    ) {
        let inbound = &self.inbound;
        let Some(authenticated) = inbound.authenticate(&self.tls, tcp, addr, ticket).await else {
            return;
        };
        // A TLS connection is authenticated once; a tunnel connection
        // carries new streams for as long as it lives. None is accepted
        // once the peer's chain has expired or lost its authority.
        let Some(bundle) = inbound.identity.borrow().as_ref().map(|i| i.bundle.clone()) else {
            return;
        };
        let standing = authenticated.standing();
        let crate::inbound::Authenticated {
            tls,
            peer,
            own,
            admission: _held,
            ..
        } = authenticated;
        let handshake = hbone::server_builder()
            .max_concurrent_streams(inbound.limits.tunnel_max_streams)
            .handshake::<_, Bytes>(tls);
        let mut conn = match tokio::time::timeout(inbound.limits.handshake_timeout(), handshake)
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::info!(direction = "inbound", client = %addr, peer = %peer, error = %e, "tunnel: not an HTTP/2 client");
                return;
            }
            Err(_) => {
                tracing::info!(direction = "inbound", client = %addr, peer = %peer, "tunnel: no HTTP/2 preface in time");
                return;
            }
        };
        inbound.metrics.tunnel_connection("inbound", 1);
        tracing::debug!(direction = "inbound", client = %addr, peer = %peer, "tunnel connection open");
        let dead = hbone::dead_peer(conn.ping_pong());
        tokio::pin!(dead);
        let mut stop = self.stop.clone();
        let mut draining = false;
        // The connection must be polled (accept) for its streams to move,
        // until it has closed.
        loop {
            tokio::select! {
                r = conn.accept() => match r {
                    Some(Ok((req, mut respond))) => match standing.check(&bundle, SystemTime::now()) {
                        Ok(()) => {
                            tokio::spawn(self.clone().stream(req, respond, peer.clone(), own.clone(), standing.clone()));
                        }
                        Err(lost) => {
                            inbound.metrics.tunnel_stream("inbound", lost_label(&lost));
                            tracing::info!(direction = "inbound", peer = %peer, error = %lost, "tunnel: stream refused; connection closing");
                            let _ = respond.send_response(
                                response(StatusCode::FORBIDDEN, Some(lost.reason())),
                                true,
                            );
                            if !draining {
                                draining = true;
                                conn.graceful_shutdown();
                            }
                        }
                    },
                    Some(Err(e)) => {
                        tracing::debug!(direction = "inbound", peer = %peer, error = %e, "tunnel connection ended with an error");
                        break;
                    }
                    None => break,
                },
                _ = &mut dead => {
                    tracing::info!(direction = "inbound", peer = %peer, "tunnel peer stopped answering pings; connection dropped with its streams");
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    break;
                }
                _ = stop.wait_for(|s| *s), if !draining => {
                    draining = true;
                    conn.graceful_shutdown();
                }
            }
        }
        inbound.metrics.tunnel_connection("inbound", -1);
    }

    /// One `CONNECT` stream from `peer`.
    async fn stream(
        self: Arc<Self>,
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        peer: SpiffeId,
        own: SpiffeId,
        standing: Arc<PeerStanding>,
    ) {
        let start = Instant::now();
        let inbound = &self.inbound;
        let refuse = |respond: &mut h2::server::SendResponse<Bytes>,
                      status: StatusCode,
                      why: &'static str| {
            inbound
                .metrics
                .tunnel_stream("inbound", &why.replace('-', "_"));
            let _ = respond.send_response(response(status, Some(why)), true);
        };
        if req.method() != http::Method::CONNECT {
            refuse(&mut respond, StatusCode::METHOD_NOT_ALLOWED, "not-connect");
            return;
        }
        let target = req.uri().authority();
        if !target.is_some_and(|t| self.targets.allows(t)) {
            let target = target.map(|a| a.as_str()).unwrap_or("");
            tracing::warn!(direction = "inbound", peer = %peer, target, allowed = ?self.targets, "tunnel: CONNECT to a target other than the app refused");
            refuse(&mut respond, StatusCode::BAD_REQUEST, "target-not-allowed");
            return;
        }
        if inbound.http.is_some() {
            // Each request on the stream is decided by policy.
            let Ok(send) = respond.send_response(response(StatusCode::OK, None), false) else {
                return;
            };
            inbound.metrics.tunnel_stream("inbound", "opened");
            inbound
                .serve_http(H2Stream::new(send, req.into_body()), peer, own, standing)
                .await;
            return;
        }
        let Some(decision) = inbound.decide_tcp(&peer, &own, start) else {
            refuse(&mut respond, StatusCode::FORBIDDEN, "denied");
            return;
        };
        let Some(mut local) = inbound.connect_app(&peer).await else {
            let mut r = response(StatusCode::SERVICE_UNAVAILABLE, Some("app-unreachable"));
            r.headers_mut().insert(
                crate::wire::control_headers::NOT_FORWARDED,
                http::HeaderValue::from_static("1"),
            );
            inbound.metrics.tunnel_stream("inbound", "app_unreachable");
            let _ = respond.send_response(r, true);
            return;
        };
        let Ok(send) = respond.send_response(response(StatusCode::OK, None), false) else {
            return;
        };
        inbound.metrics.tunnel_stream("inbound", "opened");
        let mut stream = H2Stream::new(send, req.into_body());
        let err = inbound
            .relay_tcp(
                crate::inbound::PeerStream::Tunnel(&mut stream),
                &mut local,
                &peer,
                &own,
                decision,
                start,
            )
            .await;
        if err.is_some() {
            // Revoked, or one side failed: the caller sees a reset, not a
            // clean end.
            stream.reset(h2::Reason::CANCEL);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn authority(s: &str) -> http::uri::Authority {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_app_is_a_target() {
        let given_host = Targets {
            exact: vec!["127.0.0.1:8080".into(), "10.0.0.2:15006".into()],
            any_host_port: None,
        };
        assert!(given_host.allows(&authority("127.0.0.1:8080")));
        assert!(given_host.allows(&authority("10.0.0.2:15006")));
        assert!(!given_host.allows(&authority("10.0.0.3:15006")));
        assert!(!given_host.allows(&authority("127.0.0.1:22")));
        assert!(!given_host.allows(&authority("169.254.169.254:80")));
        let port_only = Targets {
            exact: vec!["127.0.0.1:8080".into()],
            any_host_port: Some(15006),
        };
        assert!(port_only.allows(&authority("192.0.2.7:15006")));
        assert!(port_only.allows(&authority("127.0.0.1:8080")));
        assert!(!port_only.allows(&authority("192.0.2.7:15007")));
        assert!(!port_only.allows(&authority("192.0.2.7")));
    }
}
