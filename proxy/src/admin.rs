//! The proxy's admin listener: Prometheus `/metrics`, `/ready` (listeners
//! bound and an unexpired SVID) and `/live`, under the operator admission
//! limits of [`signet_identity::http_serve`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::workload_identity::IdentityWatch;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    identity: IdentityWatch,
}

fn seconds_left(identity: &IdentityWatch) -> Option<i64> {
    let now = signet_identity::x509_svid::unix_seconds(SystemTime::now());
    identity.borrow().as_ref().map(|i| i.not_after - now)
}

fn bundle_authorities(identity: &IdentityWatch) -> Option<i64> {
    let bundle = identity.borrow().as_ref()?.bundle.get();
    i64::try_from(bundle.authorities().len()).ok()
}

/// Serves the endpoints until `shutdown`. Ready: listeners bound and an
/// unexpired SVID.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    identity: IdentityWatch,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move {
                s.metrics
                    .svid_expiry
                    .set(seconds_left(&s.identity).unwrap_or(0));
                s.metrics
                    .bundle_authorities
                    .set(bundle_authorities(&s.identity).unwrap_or(0));
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &s.metrics.registry);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    out,
                )
            }),
        )
        .route(
            "/ready",
            get(|State(s): State<AdminState>| async move {
                let listening = s.metrics.listening.load(Ordering::Relaxed);
                match seconds_left(&s.identity) {
                    Some(left) if left > 0 && listening => (StatusCode::OK, "ready\n".to_string()),
                    Some(left) if left <= 0 => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: SVID expired\n".into(),
                    ),
                    None => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: waiting for an SVID from the agent\n".into(),
                    ),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: listeners not bound\n".into(),
                    ),
                }
            }),
        )
        .route("/live", get(|| async { "live\n" }))
        .with_state(AdminState {
            metrics: metrics.clone(),
            identity,
        });
    signet_identity::http_serve::serve(
        listener,
        None,
        app,
        signet_identity::http_serve::OPERATOR_LIMITS,
        "admin",
        move |reason| metrics.refused("admin", reason),
        shutdown,
    )
    .await
}
