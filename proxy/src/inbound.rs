//! Inbound: terminate mTLS, authenticate the peer's SVID, authorize its
//! SPIFFE ID against policy, then forward bytes to the local app. A peer
//! without a valid SVID fails the handshake; a valid peer that policy does
//! not allow is closed before a single byte reaches the app.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use signet_identity::tls::{established_peer, Authorizer};

use crate::refusal::{failure_reason, refusal_reason};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::LimitsConfig;
use crate::forward::{ms_since, relay};
use crate::listener::{accept_loop, ConnTicket};
use crate::metrics::Metrics;
use crate::open_connections::OpenConnections;
use crate::policy::Request;
use crate::policy_watch::PolicyHandle;
use crate::workload_identity::IdentityWatch;
use signet_identity::admission::Admission;

/// What every inbound connection needs.
pub struct Inbound {
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
    pub http: Option<Arc<crate::http::HttpForwarder>>,
    /// Open connections, closed when a policy reload revokes their peer.
    pub open: Arc<OpenConnections>,
    /// Timeouts and caps.
    pub limits: LimitsConfig,
    /// Whether the app answers (the endpoint is registered only then).
    pub app_health: Arc<crate::app_health::AppHealth>,
}

/// Authentication on inbound accepts any SPIFFE ID of the bundle; policy
/// decides afterwards.
pub(crate) fn any_id() -> Authorizer {
    Arc::new(|_| true)
}

impl Inbound {
    /// Accepts until `stop`, under the listener's limits.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
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

    async fn handle(&self, tcp: TcpStream, addr: std::net::SocketAddr, mut ticket: ConnTicket) {
        let start = Instant::now();
        let _ = tcp.set_nodelay(true);
        let handshake = tokio::time::timeout(self.limits.handshake_timeout(), self.tls.accept(tcp));
        let mut tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = failure_reason(&e);
                self.metrics.handshake_failed("inbound", reason);
                tracing::info!(direction = "inbound", client = %addr, reason, error = %e, "handshake refused");
                return;
            }
            Err(_) => {
                self.metrics.handshake_failed("inbound", "timeout");
                return;
            }
        };
        // Authenticated (below, for resumed sessions): no longer counted
        // against its source address.
        ticket.established();
        let Some((own, bundle)) = self
            .identity
            .borrow()
            .as_ref()
            .map(|i| (i.spiffe_id.clone(), i.bundle.clone()))
        else {
            return;
        };
        // A resumed session is checked again: the ticket's chain may have
        // expired or lost its authority since it was verified.
        let peer = match established_peer(tls.get_ref().1, &bundle, &any_id(), SystemTime::now()) {
            Ok(peer) => peer,
            Err(e) => {
                let reason = refusal_reason(&e);
                self.metrics.handshake_failed("inbound", reason);
                tracing::info!(direction = "inbound", client = %addr, reason, error = %e, "resumed session refused");
                return;
            }
        };
        if let Some(forwarder) = &self.http {
            self.metrics
                .connections
                .get_or_create(&crate::metrics::PeerLabels {
                    direction: "inbound".into(),
                    peer: peer.to_string(),
                })
                .inc();
            self.metrics.active.inc();
            let registration = self.open.register(&peer, &own);
            let ctx = Arc::new(crate::http::HttpContext {
                app_health: self.app_health.clone(),
                peer: peer.clone(),
                own,
                policy: self.policy.clone(),
                metrics: self.metrics.clone(),
                forwarder: forwarder.clone(),
            });
            tokio::select! {
                _ = crate::http::serve(tls, ctx, &self.limits) => {}
                _ = registration.revoked() => {
                    tracing::info!(direction = "inbound", peer = %peer, "HTTP connection closed with its streams: policy no longer allows this peer");
                }
            }
            self.metrics.active.dec();
            return;
        }

        let decision = self.policy.get().evaluate(&Request {
            from: &peer,
            to: &own,
            method: None,
            path: None,
        });
        let rule = decision.rule_name();
        self.metrics.decided(&decision);
        let (audit, audit_rule) = crate::http::audit_fields(&decision);
        if !decision.allowed {
            tracing::info!(direction = "inbound", peer = %peer, decision = "deny", rule = %rule, audit, audit_rule, bytes_in = 0, bytes_out = 0, duration_ms = ms_since(start), "connection");
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            return;
        }
        let mut local = match TcpStream::connect(&self.forward_to).await {
            Ok(s) => {
                self.app_health.reached();
                s
            }
            Err(e) => {
                tracing::warn!(direction = "inbound", peer = %peer, forward_to = %self.forward_to, error = %e, "cannot reach the local app");
                self.app_health.unreachable();
                return;
            }
        };
        let _ = local.set_nodelay(true);
        let registration = self.open.register(&peer, &own);
        let (to_peer, from_peer, err) = relay(
            &self.metrics,
            "inbound",
            &peer.to_string(),
            &mut tls,
            &mut local,
            registration.revoked(),
        )
        .await;
        tracing::info!(
            direction = "inbound",
            peer = %peer,
            decision = "allow",
            rule = %rule,
            audit,
            audit_rule,
            bytes_in = from_peer,
            bytes_out = to_peer,
            duration_ms = ms_since(start),
            error = err.map(|e| e.to_string()).unwrap_or_default(),
            "connection"
        );
    }
}
