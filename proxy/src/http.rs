//! Inbound HTTP mode (`protocol = "http"`): requests on the authenticated
//! connection are parsed (HTTP/1.1 or HTTP/2, detected), each is authorized
//! with its method and path, and allowed ones are forwarded to the local app
//! over pooled HTTP/1.1 with the verified peer identity in
//! `x-signet-peer-id` — any such header the peer sent (in any spelling a
//! framework could map onto it) is removed first, so the app can trust it.
//! Denied requests get 403 and never reach the app. Method and path are put
//! in canonical form first ([`policy::canonical_path`]): policy decides on
//! that form and the app receives exactly it; ambiguous spellings get 400.

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

/// Log fields for an audit (dry-run) difference: label and rule, or empty.
pub(crate) fn audit_fields(d: &policy::Decision) -> (&'static str, String) {
    d.audit
        .as_ref()
        .map(|a| (a.label(), a.rule_name()))
        .unwrap_or(("", String::new()))
}

/// Whether `name` is, or could be read by an app framework as, the identity
/// header: CGI/WSGI-style servers map `x_signet_peer_id` onto the same
/// variable (`HTTP_X_SIGNET_PEER_ID`) as `x-signet-peer-id`.
fn is_identity_header(name: &str) -> bool {
    name.len() == PEER_ID_HEADER.len()
        && name
            .bytes()
            .zip(PEER_ID_HEADER.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

async fn handle(
    ctx: Arc<HttpContext>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    // Policy decides on the canonical form, and the app receives exactly it.
    let canonical = policy::canonical_method(req.method().as_str())
        .and_then(|method| Ok((method, policy::canonical_path(req.uri().path())?)));
    let (method, path) = match canonical {
        Ok(c) => c,
        Err(e) => {
            ctx.metrics
                .authz
                .get_or_create(&DecisionLabels {
                    decision: "deny".into(),
                    rule: "invalid-request-target".into(),
                })
                .inc();
            tracing::info!(direction = "inbound", peer = %ctx.peer, method = %req.method(), path = %req.uri().path(), decision = "deny", reason = %e, status = 400, "request");
            return Ok(text(StatusCode::BAD_REQUEST, "request path or method not accepted: ambiguous spelling (see the Signet README, HTTP mode)\n"));
        }
    };
    let decision = ctx.policy.get().evaluate(&policy::Request {
        from: &ctx.peer,
        to: &ctx.own,
        method: Some(&method),
        path: Some(&path),
    });
    let rule = decision.rule_name();
    ctx.metrics.decided(&decision);
    let (audit, audit_rule) = audit_fields(&decision);
    if !decision.allowed {
        tracing::info!(direction = "inbound", peer = %ctx.peer, method, path, decision = "deny", rule = %rule, audit, audit_rule, status = 403, duration_ms = start.elapsed().as_millis() as u64, "request");
        return Ok(text(StatusCode::FORBIDDEN, "forbidden by policy\n"));
    }
    let headers = req.headers_mut();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    let spoofed: Vec<_> = headers
        .keys()
        .filter(|k| is_identity_header(k.as_str()))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    if let Ok(v) = ctx.peer.as_str().parse() {
        headers.insert(PEER_ID_HEADER, v);
    }
    if !headers.contains_key(hyper::header::HOST) {
        if let Some(host) = req.uri().authority().and_then(|a| a.as_str().parse().ok()) {
            req.headers_mut().insert(hyper::header::HOST, host);
        }
    }
    let target = match req.uri().query() {
        Some(q) => format!("http://{}{path}?{q}", ctx.forwarder.forward_to),
        None => format!("http://{}{path}", ctx.forwarder.forward_to),
    };
    let (Ok(uri), Ok(forwarded_method)) =
        (target.parse(), hyper::Method::from_bytes(method.as_bytes()))
    else {
        return Ok(text(StatusCode::BAD_REQUEST, "bad request target\n"));
    };
    *req.uri_mut() = uri;
    *req.method_mut() = forwarded_method;
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
    tracing::info!(direction = "inbound", peer = %ctx.peer, method, path, decision = "allow", rule = %rule, audit, audit_rule, status, duration_ms = start.elapsed().as_millis() as u64, "request");
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
