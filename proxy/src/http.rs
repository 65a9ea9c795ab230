//! Inbound HTTP mode (`protocol = "http"`): requests on the authenticated
//! connection are parsed (HTTP/1.1 or HTTP/2, detected), each is authorized
//! with its method and path, and allowed ones are forwarded to the local app
//! over pooled HTTP/1.1 with the verified peer identity in
//! `x-signet-peer-id` — any such header the peer sent is removed first, so
//! the app can trust it. Denied requests get 403 and never reach the app.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use signet_identity::SpiffeId;

use crate::metrics::{DecisionLabels, Metrics};
use crate::policy;
use crate::policy_watch::PolicyHandle;

/// The header that carries the verified caller identity to the app.
pub const PEER_ID_HEADER: &str = "x-signet-peer-id";

/// Connection-level headers that must not be forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Forwards authorized requests to the local app.
pub struct HttpForwarder {
    client: Client<HttpConnector, Incoming>,
    forward_to: String,
}

impl HttpForwarder {
    /// A pooled HTTP/1.1 client to `forward_to`.
    pub fn new(forward_to: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            forward_to: forward_to.to_owned(),
        }
    }
}

fn text(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(msg.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// Everything a request needs to be decided and forwarded.
pub struct HttpContext {
    /// The authenticated peer.
    pub peer: SpiffeId,
    /// Our own identity (the destination).
    pub own: SpiffeId,
    /// Policy in force.
    pub policy: PolicyHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The app.
    pub forwarder: Arc<HttpForwarder>,
}

async fn handle(
    ctx: Arc<HttpContext>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let decision = ctx.policy.get().evaluate(&policy::Request {
        from: &ctx.peer,
        to: &ctx.own,
        method: Some(&method),
        path: Some(&path),
    });
    let rule = decision.rule_name();
    ctx.metrics
        .authz
        .get_or_create(&DecisionLabels {
            decision: if decision.allowed { "allow" } else { "deny" }.into(),
            rule: rule.clone(),
        })
        .inc();
    if !decision.allowed {
        tracing::info!(direction = "inbound", peer = %ctx.peer, method, path, decision = "deny", rule = %rule, status = 403, duration_ms = start.elapsed().as_millis() as u64, "request");
        return Ok(text(StatusCode::FORBIDDEN, "forbidden by policy\n"));
    }
    let headers = req.headers_mut();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    headers.remove(PEER_ID_HEADER);
    if let Ok(v) = ctx.peer.as_str().parse() {
        headers.insert(PEER_ID_HEADER, v);
    }
    if !headers.contains_key(hyper::header::HOST) {
        if let Some(host) = req.uri().authority().and_then(|a| a.as_str().parse().ok()) {
            req.headers_mut().insert(hyper::header::HOST, host);
        }
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let uri = match format!("http://{}{}", ctx.forwarder.forward_to, path_and_query).parse() {
        Ok(u) => u,
        Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "bad request target\n")),
    };
    *req.uri_mut() = uri;
    *req.version_mut() = hyper::Version::HTTP_11;
    let (status, resp) = match ctx.forwarder.client.request(req).await {
        Ok(resp) => (resp.status().as_u16(), resp.map(|b| b.boxed())),
        Err(e) => {
            tracing::warn!(peer = %ctx.peer, error = %e, "cannot reach the local app");
            (
                502,
                text(StatusCode::BAD_GATEWAY, "the local app is unreachable\n"),
            )
        }
    };
    tracing::info!(direction = "inbound", peer = %ctx.peer, method, path, decision = "allow", rule = %rule, status, duration_ms = start.elapsed().as_millis() as u64, "request");
    Ok(resp)
}

/// Serves HTTP/1.1 or HTTP/2 on an authenticated connection until it closes.
pub async fn serve<S>(stream: S, ctx: Arc<HttpContext>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}
