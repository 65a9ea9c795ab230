//! Prometheus metrics of the agent, and its `/metrics`, `/ready`, `/live`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of Workload API calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    /// RPC method.
    pub method: String,
    /// gRPC code of the admission decision.
    pub code: String,
}

/// The agent's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    /// Workload SVIDs obtained for new entries.
    pub svids_issued: Counter,
    /// Workload SVIDs rotated.
    pub svid_rotations: Counter,
    /// JWT-SVIDs the CA signed for this agent (cache misses).
    pub jwt_svids_minted: Counter,
    /// Workload SVIDs held now.
    pub svids_held: Gauge,
    /// Entries of this agent, as last synced from the CA.
    pub entries: Gauge,
    /// 1 while the CA answers.
    pub ca_connected: Gauge,
    /// Workload API calls by method and admission code.
    pub workload_calls: Family<CallLabels, Counter>,
    /// Workload API connections and streams refused by a limit.
    pub workload_refusals: Family<ReasonLabel, Counter>,
    /// Connections the metrics listener refused, by limit.
    pub metrics_refusals: Family<ReasonLabel, Counter>,
    /// Whether the agent has its entries from the CA and a current SVID
    /// for each (what `/ready` reports).
    pub ready: std::sync::atomic::AtomicBool,
}

/// A reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// Short reason.
    pub reason: String,
}

impl Metrics {
    /// Creates and registers every metric.
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("signet_agent");
        let svids_issued = Counter::default();
        registry.register(
            "x509_svids_issued",
            "Workload SVIDs obtained for new entries",
            svids_issued.clone(),
        );
        let svid_rotations = Counter::default();
        registry.register(
            "x509_svid_rotations",
            "Workload SVIDs rotated",
            svid_rotations.clone(),
        );
        let jwt_svids_minted = Counter::default();
        registry.register(
            "jwt_svids_minted",
            "JWT-SVIDs the CA signed for this agent (cache misses)",
            jwt_svids_minted.clone(),
        );
        let svids_held = Gauge::default();
        registry.register("x509_svids", "Workload SVIDs held", svids_held.clone());
        let entries = Gauge::default();
        registry.register(
            "entries",
            "Entries of this agent, as last synced from the CA",
            entries.clone(),
        );
        let ca_connected = Gauge::default();
        registry.register(
            "ca_connected",
            "1 while the CA answers",
            ca_connected.clone(),
        );
        let workload_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "workload_api_calls",
            "Workload API calls by method and admission code",
            workload_calls.clone(),
        );
        let workload_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "workload_refusals",
            "Workload API connections and streams refused by a limit (max_connections, max_per_source = per uid, max_streams_per_uid)",
            workload_refusals.clone(),
        );
        let metrics_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "metrics_listener_refusals",
            "Connections the metrics listener refused by a limit (max_connections, max_per_source)",
            metrics_refusals.clone(),
        );
        Arc::new(Self {
            registry,
            workload_refusals,
            metrics_refusals,
            ready: std::sync::atomic::AtomicBool::new(false),
            svids_issued,
            svid_rotations,
            jwt_svids_minted,
            svids_held,
            entries,
            ca_connected,
            workload_calls,
        })
    }

    /// Records a Workload API admission.
    pub(crate) fn workload_call(&self, method: &str, code: Option<tonic::Code>) {
        self.workload_calls
            .get_or_create(&CallLabels {
                method: method.into(),
                code: format!("{:?}", code.unwrap_or(tonic::Code::Ok)),
            })
            .inc();
    }

    /// Counts a connection the metrics listener refused for `reason`.
    pub(crate) fn metrics_refused(&self, reason: &str) {
        self.metrics_refusals
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Records a Workload API connection or stream refused by a limit.
    pub(crate) fn workload_refused(&self, reason: &str) {
        self.workload_refusals
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves the endpoints until `shutdown`. Ready means the agent has synced
/// its entries from the CA and holds a current SVID for every one.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .route(
            "/ready",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(std::sync::atomic::Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no current SVID yet for every entry (CA not reached since start?)\n",
                    )
                }
            }),
        )
        .route("/live", get(|| async { "live\n" }))
        .with_state(metrics.clone());
    signet_identity::http_serve::serve(
        listener,
        None,
        app,
        signet_identity::http_serve::OPERATOR_LIMITS,
        "metrics",
        move |reason| metrics.metrics_refused(reason),
        shutdown,
    )
    .await
}
