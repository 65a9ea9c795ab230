//! Inbound HTTP mode (`protocol = "http"`): requests on the authenticated
//! connection are parsed (HTTP/1.1 or HTTP/2, detected), each is authorized
//! with its method and path, and allowed ones are forwarded to the local app
//! over pooled HTTP/1.1 with the verified peer identity in
//! `x-signet-peer-id` — every header of the `x-signet-` namespace the peer
//! sent (in any spelling a framework could map onto it) is removed first,
//! so the app can trust it — and every `x-signet-` header of the app's
//! answer is removed, so the caller's proxy can trust the control headers
//! of the answers this proxy makes itself ([`crate::wire::control_headers`]).
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use signet_identity::SpiffeId;

use crate::config::{AppProtocol, LimitsConfig};
use crate::metrics::{DecisionLabels, Metrics};
use crate::policy;
use crate::policy::watch::PolicyHandle;
use crate::wire::control_headers::{self, Reason, ANSWER_TOKEN, NOT_FORWARDED};

/// The header that carries the verified caller identity to the app.
pub(crate) const PEER_ID_HEADER: &str = "x-signet-peer-id";

/// Connection-level headers that must not be forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

/// Removes the connection-level headers of a request being forwarded, both
/// ways (inbound to the app, outbound to the upstream); `te: trailers` is
/// kept, as gRPC needs it.
pub(crate) fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    if headers
        .get("te")
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove("te");
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Forwards authorized requests to the local app.
pub(crate) struct HttpForwarder {
    client: Client<HttpConnector, Incoming>,
    forward_to: String,
    version: hyper::Version,
}

impl HttpForwarder {
    /// A pooled client to `forward_to`: HTTP/1.1, or HTTP/2 with prior
    /// knowledge (`h2`).
    pub(crate) fn new(forward_to: &str, app_protocol: AppProtocol) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        let version = match app_protocol {
            AppProtocol::Http1 => hyper::Version::HTTP_11,
            AppProtocol::H2 => {
                builder.http2_only(true);
                hyper::Version::HTTP_2
            }
        };
        Self {
            client: builder.build(connector),
            forward_to: forward_to.to_owned(),
            version,
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
pub(crate) struct HttpContext {
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
    /// Whether the app answers.
    pub app_health: Arc<crate::inbound::app_health::AppHealth>,
    /// The peer's chain, checked before each request: a long-lived
    /// connection serves nothing once the peer's SVID has expired or lost
    /// its authority.
    pub standing: Arc<signet_identity::peer_standing::PeerStanding>,
    /// The bundle in force.
    pub bundle: signet_identity::tls::BundleHandle,
    /// Signalled when a request found the peer's standing lost: the
    /// connection is shut down gracefully (HTTP/2: GOAWAY; requests in
    /// flight and the refusal itself are still answered).
    pub standing_lost: tokio::sync::Notify,
}

/// Log fields for an audit (dry-run) difference: label and rule, or empty.
pub(crate) fn audit_fields(d: &policy::Decision) -> (&'static str, String) {
    d.audit
        .as_ref()
        .map(|a| (a.label(), a.rule_name()))
        .unwrap_or(("", String::new()))
}

async fn handle(
    ctx: Arc<HttpContext>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    // Echoed on the answers this proxy makes itself, never on the app's.
    let token = req.headers().get(ANSWER_TOKEN).cloned();
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
    if let Err(lost) = ctx
        .standing
        .check(&ctx.bundle, std::time::SystemTime::now())
    {
        tracing::info!(direction = "inbound", peer = %ctx.peer, method, path, error = %lost, status = 403, "request refused; the caller must reconnect");
        let mut r = text(
            StatusCode::FORBIDDEN,
            "the caller's SVID has expired or lost its authority: reconnect with a current one\n",
        );
        control_headers::mark_own_answer(r.headers_mut(), Reason::of_lost(&lost), token.as_ref());
        // The connection is shut down (HTTP/2: a GOAWAY), so the caller
        // reconnects and must pass a handshake; HTTP/1 says so in the
        // answer (HTTP/2 forbids the header).
        if req.version() < http::Version::HTTP_2 {
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        ctx.standing_lost.notify_one();
        return Ok(r);
    }
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
    strip_hop_by_hop(headers);
    // The identity header in any spelling, the caller's answer token, and
    // anything else of Signet's: the app gets only what the proxy sets.
    control_headers::strip_namespace(headers);
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
    *req.version_mut() = ctx.forwarder.version;
    let (status, resp) = match ctx.forwarder.client.request(req).await {
        Ok(mut resp) => {
            ctx.app_health.reached();
            // The app speaks for itself only: a control header it set
            // would read as this proxy's verdict (a retried POST, an
            // ejection, a metric label).
            control_headers::strip_namespace(resp.headers_mut());
            (resp.status().as_u16(), resp.map(|b| b.boxed()))
        }
        Err(e) if e.is_connect() => {
            ctx.app_health.unreachable();
            // The request never reached the app: the caller's proxy may
            // send it to another instance, whatever its method.
            tracing::warn!(peer = %ctx.peer, error = %e, "cannot reach the local app");
            let mut r = text(StatusCode::BAD_GATEWAY, "the local app is unreachable\n");
            r.headers_mut().insert(
                NOT_FORWARDED,
                hyper::header::HeaderValue::from_static("app-unreachable"),
            );
            control_headers::mark_own_answer(
                r.headers_mut(),
                Reason::AppUnreachable,
                token.as_ref(),
            );
            (502, r)
        }
        Err(e) => {
            tracing::warn!(peer = %ctx.peer, error = %e, "the local app failed the request");
            let mut r = text(
                StatusCode::BAD_GATEWAY,
                "the local app failed the request\n",
            );
            control_headers::mark_own_answer(r.headers_mut(), Reason::AppFailed, token.as_ref());
            (502, r)
        }
    };
    tracing::info!(direction = "inbound", peer = %ctx.peer, method, path, decision = "allow", rule = %rule, audit, audit_rule, status, duration_ms = start.elapsed().as_millis() as u64, "request");
    Ok(resp)
}

/// Requests in flight on one connection and when the last one ended: a
/// connection with none for `http_idle_timeout` is closed.
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last_end: std::sync::Mutex<Option<Instant>>,
}

/// Decrements the in-flight count when a request's handling ends, however
/// it ends.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(a: &Arc<Activity>) -> Self {
        a.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Activity {
    /// Whether nothing has been in flight for `idle` (since `opened`).
    fn idle_for(&self, idle: std::time::Duration, opened: Instant) -> bool {
        if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return false;
        }
        let last = self
            .last_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(opened);
        last.elapsed() >= idle
    }
}

/// Serves HTTP/1.1 or HTTP/2 on an authenticated connection until it
/// closes, under `limits`: header count, size and read time, HTTP/2
/// streams, and an idle timeout after which the connection is shut down
/// gracefully (requests in flight finish).
pub(crate) async fn serve<S>(stream: S, ctx: Arc<HttpContext>, limits: &LimitsConfig)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let watched = ctx.clone();
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let guard = InFlight::start(&activity);
            let ctx = ctx.clone();
            async move {
                let r = handle(ctx, req).await;
                drop(guard);
                r
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(limits.http_header_timeout))
        .max_headers(limits.http_max_headers)
        .max_buf_size(limits.http_max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.http_max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = std::time::Duration::from_secs(limits.http_idle_timeout);
    let opened = Instant::now();
    let mut check = tokio::time::interval(idle.min(std::time::Duration::from_secs(5)));
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = watched.standing_lost.notified(), if !shutting_down => {
                tracing::info!(direction = "inbound", peer = %watched.peer, "closing the HTTP connection of a caller whose SVID has expired or lost its authority");
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = check.tick(), if !shutting_down => {
                if activity.idle_for(idle, opened) {
                    tracing::debug!(idle_s = limits.http_idle_timeout, "closing idle HTTP connection");
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}
