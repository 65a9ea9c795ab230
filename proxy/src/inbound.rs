//! Inbound: terminate mTLS, authenticate the peer's SVID, authorize its
//! SPIFFE ID against policy, then forward bytes to the local app. A peer
//! without a valid SVID fails the handshake; a valid peer that policy does
//! not allow is closed before a single byte reaches the app.

pub(crate) mod app_health;
pub(crate) mod http;
pub(crate) mod open_connections;
pub(crate) mod registration;
pub(crate) mod tunnel;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use signet_identity::peer_standing::PeerStanding;
use signet_identity::tls::established_peer;
use signet_identity::TrustBundle;

use crate::tls::refusal::{failure_reason, refusal_reason};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::LimitsConfig;
use crate::forward::{ms_since, relay, relay_stream};
use crate::inbound::open_connections::OpenConnections;
use crate::listener::{accept_loop, ConnTicket};
use crate::metrics::Metrics;
use crate::policy::watch::PolicyHandle;
use crate::policy::{Decision, Request};
use crate::workload_identity::IdentityWatch;
use signet_identity::admission::Admission;
use signet_identity::SpiffeId;

/// The peer's side of an admitted connection.
pub(crate) enum PeerStream<'a> {
    /// A TLS connection of its own.
    Tls(&'a mut tokio_rustls::server::TlsStream<TcpStream>),
    /// A stream of a tunnel connection.
    Tunnel(&'a mut crate::tunnel::stream::H2Stream),
}

/// A connection whose peer passed the handshake (and, resumed, the check
/// of its stored chain).
pub(crate) struct Authenticated {
    /// The connection.
    pub tls: tokio_rustls::server::TlsStream<TcpStream>,
    /// Its peer.
    pub peer: SpiffeId,
    /// Our identity.
    pub own: SpiffeId,
    /// The bundle in force when the handshake began.
    bundle_before: Arc<TrustBundle>,
    /// The connection's place under the listener's `max_connections`: held
    /// for as long as the connection is open, however long it lives (a
    /// tunnel connection, a keep-alive HTTP/2 connection).
    pub admission: ConnTicket,
}

impl Authenticated {
    /// The peer's standing, for a connection that carries new work (HTTP
    /// requests, tunnel streams) long after its handshake.
    pub(crate) fn standing(&self) -> Arc<PeerStanding> {
        let chain = self.tls.get_ref().1.peer_certificates().unwrap_or_default();
        Arc::new(PeerStanding::after_handshake(
            chain,
            self.bundle_before.clone(),
        ))
    }
}

/// What every inbound connection needs.
pub(crate) struct Inbound {
    /// rustls server configuration.
    pub tls: tokio_rustls::TlsAcceptor,
    /// The local app.
    pub forward_to: String,
    /// Policy in force.
    pub policy: PolicyHandle,
    /// Our identity (the destination of every request).
    pub identity: IdentityWatch,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set for `protocol = "http"`: requests are parsed and decided one by one.
    pub http: Option<Arc<crate::inbound::http::HttpForwarder>>,
    /// Open connections, closed when a policy reload revokes their peer.
    pub open: Arc<OpenConnections>,
    /// Timeouts and caps.
    pub limits: LimitsConfig,
    /// Whether the app answers (the endpoint is registered only then).
    pub app_health: Arc<crate::inbound::app_health::AppHealth>,
}

impl Inbound {
    /// Accepts until `stop`, under the listener's limits.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        let admission = Admission::new(
            self.limits.max_connections,
            self.limits.max_handshakes_per_source,
        );
        let this = self.clone();
        accept_loop(
            listener,
            "inbound",
            admission,
            self.metrics.clone(),
            stop,
            move |tcp, addr, ticket| {
                let this = this.clone();
                async move { this.handle(tcp, addr, ticket).await }
            },
        )
        .await
    }

    async fn handle(&self, tcp: TcpStream, addr: std::net::SocketAddr, ticket: ConnTicket) {
        let start = Instant::now();
        let Some(authenticated) = self.authenticate(&self.tls, tcp, addr, ticket).await else {
            return;
        };
        if self.http.is_some() {
            let standing = authenticated.standing();
            let Authenticated {
                tls,
                peer,
                own,
                admission: _held,
                ..
            } = authenticated;
            self.serve_http(tls, peer, own, standing).await;
            return;
        }
        let Authenticated {
            mut tls,
            peer,
            own,
            admission: _held,
            ..
        } = authenticated;
        let Some(admitted) = self.decide_tcp(&peer, &own, start) else {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            return;
        };
        let Some(mut local) = self.connect_app(&peer).await else {
            return;
        };
        self.relay_tcp(
            PeerStream::Tls(&mut tls),
            &mut local,
            &peer,
            &own,
            admitted,
            start,
        )
        .await;
    }

    /// Accepts the TLS handshake on `tcp` (through `acceptor`: the plain or
    /// the tunnel listener's) within the handshake timeout and
    /// authenticates the peer. `None` (counted and logged) when it fails.
    pub(crate) async fn authenticate(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
        mut ticket: ConnTicket,
    ) -> Option<Authenticated> {
        let _ = tcp.set_nodelay(true);
        // Without an SVID yet there is nothing to present; with one, the
        // bundle in force before the handshake (see PeerStanding).
        let bundle_before = self.identity.borrow().as_ref()?.bundle.get();
        let handshake = tokio::time::timeout(self.limits.handshake_timeout(), acceptor.accept(tcp));
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = failure_reason(&e);
                self.metrics.handshake_failed("inbound", reason);
                tracing::info!(direction = "inbound", client = %addr, reason, error = %e, "handshake refused");
                return None;
            }
            Err(_) => {
                self.metrics.handshake_failed("inbound", "timeout");
                return None;
            }
        };
        // Authenticated (below, for resumed sessions): no longer counted
        // against its source address.
        ticket.established();
        let (own, bundle) = self
            .identity
            .borrow()
            .as_ref()
            .map(|i| (i.spiffe_id.clone(), i.bundle.clone()))?;
        // A resumed session is checked again: the ticket's chain may have
        // expired or lost its authority since it was verified.
        match established_peer(
            tls.get_ref().1,
            &bundle,
            &crate::tls::any_id(),
            SystemTime::now(),
        ) {
            Ok(peer) => Some(Authenticated {
                tls,
                peer,
                own,
                bundle_before,
                admission: ticket,
            }),
            Err(e) => {
                let reason = refusal_reason(&e);
                self.metrics.handshake_failed("inbound", reason);
                tracing::info!(direction = "inbound", client = %addr, reason, error = %e, "resumed session refused");
                None
            }
        }
    }

    /// HTTP mode: serves the requests arriving on `stream` from `peer`,
    /// each decided by policy (and refused once the peer has lost its
    /// `standing`), until it closes or policy revokes the peer.
    pub(crate) async fn serve_http<S>(
        &self,
        stream: S,
        peer: SpiffeId,
        own: SpiffeId,
        standing: Arc<PeerStanding>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Some(forwarder) = &self.http else {
            return;
        };
        let Some(bundle) = self.identity.borrow().as_ref().map(|i| i.bundle.clone()) else {
            return;
        };
        self.metrics
            .connections
            .get_or_create(&crate::metrics::PeerLabels {
                direction: "inbound".into(),
                peer: peer.to_string(),
            })
            .inc();
        self.metrics.active.inc();
        let registration = self.open.register(&peer, &own);
        let ctx = Arc::new(crate::inbound::http::HttpContext {
            app_health: self.app_health.clone(),
            peer: peer.clone(),
            own,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            forwarder: forwarder.clone(),
            standing,
            bundle,
            standing_lost: tokio::sync::Notify::new(),
        });
        tokio::select! {
            _ = crate::inbound::http::serve(stream, ctx, &self.limits) => {}
            _ = registration.revoked() => {
                tracing::info!(direction = "inbound", peer = %peer, "HTTP connection closed with its streams: policy no longer allows this peer");
            }
        }
        self.metrics.active.dec();
    }

    /// TCP mode: whether policy lets `peer` reach the app; counted, and a
    /// denial logged.
    pub(crate) fn decide_tcp(
        &self,
        peer: &SpiffeId,
        own: &SpiffeId,
        start: Instant,
    ) -> Option<Decision> {
        let decision = self.policy.get().evaluate(&Request {
            from: peer,
            to: own,
            method: None,
            path: None,
        });
        self.metrics.decided(&decision);
        if !decision.allowed {
            let (audit, audit_rule) = crate::inbound::http::audit_fields(&decision);
            tracing::info!(direction = "inbound", peer = %peer, decision = "deny", rule = %decision.rule_name(), audit, audit_rule, bytes_in = 0, bytes_out = 0, duration_ms = ms_since(start), "connection");
            return None;
        }
        Some(decision)
    }

    /// A connection to the local app, or `None` (logged; the endpoint is
    /// withdrawn until the app answers again).
    pub(crate) async fn connect_app(&self, peer: &SpiffeId) -> Option<TcpStream> {
        match TcpStream::connect(&self.forward_to).await {
            Ok(s) => {
                self.app_health.reached();
                let _ = s.set_nodelay(true);
                Some(s)
            }
            Err(e) => {
                tracing::warn!(direction = "inbound", peer = %peer, forward_to = %self.forward_to, error = %e, "cannot reach the local app");
                self.app_health.unreachable();
                None
            }
        }
    }

    /// Relays an admitted connection (a TLS connection or a tunnel stream)
    /// to the app until both sides close or policy revokes the peer, and
    /// logs it. Returns the relay's error, if any.
    pub(crate) async fn relay_tcp(
        &self,
        stream: PeerStream<'_>,
        local: &mut TcpStream,
        peer: &SpiffeId,
        own: &SpiffeId,
        decision: Decision,
        start: Instant,
    ) -> Option<std::io::Error> {
        let registration = self.open.register(peer, own);
        let peer_name = peer.to_string();
        let revoked = registration.revoked();
        let (to_peer, from_peer, err) = match stream {
            PeerStream::Tls(tls) => {
                relay(&self.metrics, "inbound", &peer_name, tls, local, revoked).await
            }
            PeerStream::Tunnel(h2) => {
                relay_stream(&self.metrics, "inbound", &peer_name, h2, local, revoked).await
            }
        };
        let (audit, audit_rule) = crate::inbound::http::audit_fields(&decision);
        tracing::info!(
            direction = "inbound",
            peer = %peer,
            decision = "allow",
            rule = %decision.rule_name(),
            audit,
            audit_rule,
            bytes_in = from_peer,
            bytes_out = to_peer,
            duration_ms = ms_since(start),
            error = err.as_ref().map(|e| e.to_string()).unwrap_or_default(),
            "connection"
        );
        err
    }
}
