//! Prometheus metrics of the proxy (served by [`crate::admin`]).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Direction and peer of a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Peer SPIFFE ID.
    pub peer: String,
}

/// A handshake failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Short reason.
    pub reason: String,
}

/// An authorization decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`; `would_deny` or `would_allow` for audit rules.
    pub decision: String,
    /// `file:line (effect)` or `default-deny`.
    pub rule: String,
}

/// Outcome label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: String,
}

/// 0.5 ms to ~16 s, doubling.
fn new_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// One endpoint of an outbound upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The upstream (its `server_id`).
    pub upstream: String,
    /// The endpoint's address.
    pub endpoint: String,
    /// `success`, or why the attempt failed.
    pub result: String,
}

/// An outbound upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream (its `server_id`).
    pub upstream: String,
}

/// An outbound HTTP request's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The upstream (its `server_id`).
    pub upstream: String,
    /// `response` (whatever its status), or the proxy's own answer:
    /// `no_endpoint`, `upstream_unreachable`, `upstream_failed`, `timeout`,
    /// `max_pending_requests`.
    pub outcome: String,
}

/// One side of the tunnel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `inbound` or `outbound`.
    pub direction: String,
}

/// A tunnel stream's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// `opened`, or why not: `denied`, `target_not_allowed`,
    /// `app_unreachable`, `not_connect`, `failed`.
    pub result: String,
}

/// The proxy's metrics.
pub struct Metrics {
    /// Outbound HTTP requests by upstream and outcome.
    pub http_requests: Family<OutcomeLabels, Counter>,
    /// Outbound HTTP request durations, seconds, by upstream.
    pub http_request_seconds: Family<UpstreamLabels, Histogram>,
    /// Retries made, by upstream.
    pub retries: Family<UpstreamLabels, Counter>,
    /// Retries the budget refused, by upstream.
    pub retry_budget_exhausted: Family<UpstreamLabels, Counter>,
    /// Outbound connection attempts by upstream, endpoint and result.
    pub endpoint_attempts: Family<EndpointLabels, Counter>,
    /// Outlier ejections by upstream and endpoint (`result` is `ejected`).
    pub ejections: Family<EndpointLabels, Counter>,
    /// Endpoints known per upstream.
    pub upstream_endpoints: Family<UpstreamLabels, Gauge>,
    /// Endpoints ejected per upstream (as of the last failure or update).
    pub upstream_ejected: Family<UpstreamLabels, Gauge>,
    /// Tunnel connections open now, by direction.
    pub tunnel_connections: Family<DirectionLabel, Gauge>,
    /// Tunnel connections opened since start, by direction.
    pub tunnel_connections_opened: Family<DirectionLabel, Counter>,
    /// Tunnel streams by direction and outcome.
    pub tunnel_streams: Family<StreamLabels, Counter>,
    pub(crate) registry: Registry,
    /// Connections by direction and peer.
    pub connections: Family<PeerLabels, Counter>,
    /// Bytes sent to the peer, by direction and peer.
    pub bytes_to_peer: Family<PeerLabels, Counter>,
    /// Bytes received from the peer, by direction and peer.
    pub bytes_from_peer: Family<PeerLabels, Counter>,
    /// Handshake failures by reason.
    pub handshake_failures: Family<FailureLabels, Counter>,
    /// Connections closed at accept by a limit, by direction and reason.
    pub refused: Family<FailureLabels, Counter>,
    /// Authorization decisions by rule.
    pub authz: Family<DecisionLabels, Counter>,
    /// Policy reloads by result.
    pub policy_reloads: Family<ResultLabel, Counter>,
    /// Open connections.
    pub active: Gauge,
    pub(crate) svid_expiry: Gauge,
    pub(crate) bundle_authorities: Gauge,
    /// Set once the listeners are bound.
    pub listening: AtomicBool,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix("signet_proxy");
        let connections = Family::<PeerLabels, Counter>::default();
        r.register(
            "connections",
            "Connections by direction and peer identity",
            connections.clone(),
        );
        let bytes_to_peer = Family::<PeerLabels, Counter>::default();
        r.register(
            "bytes_to_peer",
            "Bytes sent to the peer",
            bytes_to_peer.clone(),
        );
        let bytes_from_peer = Family::<PeerLabels, Counter>::default();
        r.register(
            "bytes_from_peer",
            "Bytes received from the peer",
            bytes_from_peer.clone(),
        );
        let handshake_failures = Family::<FailureLabels, Counter>::default();
        r.register(
            "handshake_failures",
            "TLS handshake failures by reason",
            handshake_failures.clone(),
        );
        let refused = Family::<FailureLabels, Counter>::default();
        r.register(
            "connections_refused",
            "Connections closed at accept by a limit (max_connections, max_per_source, uid_not_allowed)",
            refused.clone(),
        );
        let authz = Family::<DecisionLabels, Counter>::default();
        r.register(
            "authorization_decisions",
            "Authorization decisions by rule",
            authz.clone(),
        );
        let policy_reloads = Family::<ResultLabel, Counter>::default();
        r.register(
            "policy_reloads",
            "Policy reloads by result",
            policy_reloads.clone(),
        );
        let active = Gauge::default();
        r.register("active_connections", "Open connections", active.clone());
        let svid_expiry = Gauge::default();
        r.register(
            "svid_expiry_seconds",
            "Seconds until the current SVID expires",
            svid_expiry.clone(),
        );
        let bundle_authorities = Gauge::default();
        r.register(
            "trust_bundle_authorities",
            "X.509 authorities in the trust bundle in force (a revoked CA key leaves it)",
            bundle_authorities.clone(),
        );
        let http_requests = Family::<OutcomeLabels, Counter>::default();
        r.register(
            "http_requests",
            "Outbound HTTP requests by upstream and outcome",
            http_requests.clone(),
        );
        let http_request_seconds = Family::<UpstreamLabels, Histogram>::new_with_constructor(
            new_latency_histogram as fn() -> Histogram,
        );
        r.register(
            "http_request_seconds",
            "Outbound HTTP request durations (retries included)",
            http_request_seconds.clone(),
        );
        let retries = Family::<UpstreamLabels, Counter>::default();
        r.register("retries", "Outbound HTTP retries made", retries.clone());
        let retry_budget_exhausted = Family::<UpstreamLabels, Counter>::default();
        r.register(
            "retry_budget_exhausted",
            "Outbound HTTP retries the retry budget refused",
            retry_budget_exhausted.clone(),
        );
        let endpoint_attempts = Family::<EndpointLabels, Counter>::default();
        r.register(
            "endpoint_attempts",
            "Outbound connection attempts by upstream, endpoint and result",
            endpoint_attempts.clone(),
        );
        let ejections = Family::<EndpointLabels, Counter>::default();
        r.register(
            "ejections",
            "Outlier ejections by upstream and endpoint",
            ejections.clone(),
        );
        let upstream_endpoints = Family::<UpstreamLabels, Gauge>::default();
        r.register(
            "upstream_endpoints",
            "Endpoints known per outbound upstream",
            upstream_endpoints.clone(),
        );
        let tunnel_connections = Family::<DirectionLabel, Gauge>::default();
        r.register(
            "tunnel_connections",
            "Pooled HTTP/2 tunnel connections open, by direction",
            tunnel_connections.clone(),
        );
        let tunnel_connections_opened = Family::<DirectionLabel, Counter>::default();
        r.register(
            "tunnel_connections_opened",
            "Tunnel connections opened, by direction",
            tunnel_connections_opened.clone(),
        );
        let tunnel_streams = Family::<StreamLabels, Counter>::default();
        r.register(
            "tunnel_streams",
            "Tunnel CONNECT streams by direction and outcome",
            tunnel_streams.clone(),
        );
        let upstream_ejected = Family::<UpstreamLabels, Gauge>::default();
        r.register(
            "upstream_ejected",
            "Endpoints ejected per outbound upstream",
            upstream_ejected.clone(),
        );
        Arc::new(Self {
            http_requests,
            http_request_seconds,
            retries,
            retry_budget_exhausted,
            endpoint_attempts,
            ejections,
            upstream_endpoints,
            upstream_ejected,
            tunnel_connections,
            tunnel_connections_opened,
            tunnel_streams,
            registry: r,
            connections,
            bytes_to_peer,
            bytes_from_peer,
            handshake_failures,
            refused,
            authz,
            policy_reloads,
            active,
            svid_expiry,
            bundle_authorities,
            listening: AtomicBool::new(false),
        })
    }

    /// Counts an outbound HTTP request's outcome.
    pub fn http_outcome(&self, upstream: &str, outcome: &str) {
        self.http_requests
            .get_or_create(&OutcomeLabels {
                upstream: upstream.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Records an outbound HTTP request's duration.
    pub fn request_seconds(&self, upstream: &str, d: std::time::Duration) {
        self.http_request_seconds
            .get_or_create(&UpstreamLabels {
                upstream: upstream.into(),
            })
            .observe(d.as_secs_f64());
    }

    /// Counts a retry made (`ok`) or refused by the budget.
    pub fn retry(&self, upstream: &str, ok: bool) {
        let labels = UpstreamLabels {
            upstream: upstream.into(),
        };
        if ok {
            self.retries.get_or_create(&labels).inc();
        } else {
            self.retry_budget_exhausted.get_or_create(&labels).inc();
        }
    }

    /// Counts a tunnel stream's outcome.
    pub fn tunnel_stream(&self, direction: &str, result: &str) {
        self.tunnel_streams
            .get_or_create(&StreamLabels {
                direction: direction.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts a tunnel connection opened (`+1`) or closed (`-1`).
    pub fn tunnel_connection(&self, direction: &str, delta: i64) {
        let label = DirectionLabel {
            direction: direction.into(),
        };
        if delta > 0 {
            self.tunnel_connections_opened.get_or_create(&label).inc();
        }
        self.tunnel_connections.get_or_create(&label).inc_by(delta);
    }

    /// Counts a handshake failure.
    pub fn handshake_failed(&self, direction: &str, reason: &str) {
        self.handshake_failures
            .get_or_create(&FailureLabels {
                direction: direction.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts an authorization decision, and what audit rules would have
    /// decided where they differ (`would_deny`, `would_allow`).
    pub fn decided(&self, d: &crate::policy::Decision) {
        self.authz
            .get_or_create(&DecisionLabels {
                decision: if d.allowed { "allow" } else { "deny" }.into(),
                rule: d.rule_name(),
            })
            .inc();
        if let Some(a) = &d.audit {
            self.authz
                .get_or_create(&DecisionLabels {
                    decision: a.label().into(),
                    rule: a.rule_name(),
                })
                .inc();
        }
    }

    /// Counts a connection refused at accept.
    pub fn refused(&self, direction: &str, reason: &str) {
        self.refused
            .get_or_create(&FailureLabels {
                direction: direction.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a reload.
    pub fn reload(&self, ok: bool) {
        self.policy_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" }.into(),
            })
            .inc();
    }
}
