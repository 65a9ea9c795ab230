//! HTTP endpoints for operators: `/metrics` (Prometheus), `/ready` (can
//! issue: database up, signing key valid), `/live` (process responsive),
//! under their own connection limits (a scraper holds one connection).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::Ca;

/// Open connections to the metrics listener (counted in the CA's
/// descriptor budget).
pub(crate) const MAX_CONNECTIONS: usize =
    signet_identity::http_serve::OPERATOR_LIMITS.max_connections;

/// Serves the endpoints on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    ca: Arc<Ca>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .with_state(ca.clone());
    signet_identity::http_serve::serve(
        listener,
        None,
        app,
        signet_identity::http_serve::OPERATOR_LIMITS,
        "metrics",
        move |reason| ca.metrics().listener_refused("metrics", reason),
        shutdown,
    )
    .await
}

async fn metrics(
    State(ca): State<Arc<Ca>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ca.metrics().encode(),
    )
}

async fn ready(State(ca): State<Arc<Ca>>) -> (StatusCode, &'static str) {
    if ca.is_ready().await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
