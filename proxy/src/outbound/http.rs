//! Outbound HTTP mode (`protocol = "http"` on an `[[outbound]]`): requests
//! from the local app (HTTP/1.1 or HTTP/2) are balanced one by one over the
//! upstream's endpoints by peak-EWMA latency, sent over one pooled HTTP/2
//! connection per endpoint (mTLS, ALPN `h2`; HTTP/1.1 when the peer does
//! not offer it), and survive failures:
//!
//! - a connection that cannot be made goes to another endpoint before any
//!   of the request is sent;
//! - a request the upstream proxy says never reached its app (it answers
//!   with `x-signet-not-forwarded`) is retried on another endpoint, and so
//!   is an idempotent request whose connection failed or that the upstream
//!   proxy answered with a 5xx of its own (`x-signet-error`), within the
//!   retry budget (20% of requests plus 10/s) and when its body was small
//!   enough to keep (at most [`REPLAY_LIMIT`] bytes, with a
//!   content-length); such answers also count toward ejection;
//! - per-route timeouts answer 504;
//! - past `max_pending_requests` in flight the proxy answers 503 at once.
//!
//! A pooled connection carries requests only while it is made with the SVID
//! held now (after a rotation, requests go to a new connection; the old one
//! finishes what it carries) and its server stays in standing (its SVID
//! unexpired and still verifying against the bundle in force:
//! [`PeerStanding`]); our own SVID expired, nothing is sent.
//!
//! Those two headers count only on an answer that carries the answer token
//! sent with the attempt: an app's own answer can neither make a request
//! run twice nor eject an endpoint ([`control_headers`]); its `x-signet-`
//! headers are removed before the local app sees them.
//!
//! Every answer the proxy makes itself carries `x-signet-error` saying why.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::tunnel::pooled_credentials::{PooledCredentials, Retired};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::sign::CertifiedKey;
use signet_identity::peer_standing::PeerStanding;
use signet_identity::tls::BundleHandle;
use tokio::net::TcpStream;

use crate::inbound::http::strip_hop_by_hop;
use crate::outbound::retry_budget::{BudgetLimits, RetryBudget};
use crate::outbound::target::Target;
use crate::upstream::MAX_ATTEMPTS;
use crate::wire::control_headers::{self, Reason};

/// Largest request body kept to be replayed on a retry.
pub(crate) const REPLAY_LIMIT: u64 = 64 * 1024;

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// The HTTP/2 connection to one endpoint, shared by its requests.
type Sender = hyper::client::conn::http2::SendRequest<Body>;

/// A pooled connection and what it was made with.
struct Pooled {
    sender: Sender,
    /// Our SVID and the server's chain, checked before each request.
    credentials: PooledCredentials,
}

/// One route's timeout: requests whose path starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteTimeout {
    /// Path prefix.
    pub prefix: String,
    /// How long a request may take, retries included.
    pub timeout: Duration,
}

/// The HTTP state of an outbound listener.
pub(crate) struct HttpState {
    pool: Mutex<std::collections::HashMap<String, Pooled>>,
    /// One connection attempt per endpoint at a time: requests that find
    /// no pooled connection wait for the one being made, rather than each
    /// making its own.
    connecting: crate::tunnel::connect_gate::ConnectGates,
    budget: Mutex<RetryBudget>,
    /// Longest-prefix-first route timeouts.
    routes: Vec<RouteTimeout>,
    /// Timeout of requests no route matches.
    default_timeout: Option<Duration>,
    max_pending: usize,
    pending: AtomicUsize,
}

impl HttpState {
    /// State with `routes` (any order) and the caps.
    pub(crate) fn new(
        mut routes: Vec<RouteTimeout>,
        default_timeout: Option<Duration>,
        max_pending: usize,
    ) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self {
            pool: Mutex::default(),
            connecting: Default::default(),
            budget: Mutex::new(RetryBudget::new(BudgetLimits::default())),
            routes,
            default_timeout,
            max_pending,
            pending: AtomicUsize::new(0),
        }
    }

    /// The timeout of a request to `path`.
    pub(crate) fn timeout_for(&self, path: &str) -> Option<Duration> {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.prefix))
            .map(|r| r.timeout)
            .or(self.default_timeout)
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, RetryBudget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pooled connection to `address`, if it is open, made with `key`
    /// and its server still in standing under `bundle`; otherwise it
    /// leaves the pool (finishing the requests it carries).
    fn pooled(
        &self,
        address: &str,
        key: &Arc<CertifiedKey>,
        bundle: &BundleHandle,
    ) -> Option<Sender> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let pooled = pool.get(address)?;
        if !pooled.sender.is_closed() {
            match pooled
                .credentials
                .usable(key, bundle, std::time::SystemTime::now())
            {
                Ok(()) => return Some(pooled.sender.clone()),
                Err(Retired::Rotated) => {}
                Err(Retired::ServerLost(e)) => {
                    tracing::warn!(direction = "outbound", endpoint = %address, error = %e, "pooled HTTP/2 connection carries no new request");
                }
            }
        }
        pool.remove(address);
        None
    }

    fn forget(&self, address: &str) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
    }
}

/// Whether a request with `method` may be sent twice.
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// An answer the proxy makes itself.
fn answer(status: StatusCode, why: Reason) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("signet: {}\n", why.header_value())))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    control_headers::mark_own_answer(r.headers_mut(), why, None);
    r
}

/// What came of a request: the answer for the app, the endpoint that gave
/// it, the attempts made, and the outcome's metric label (from a closed
/// set: `response` for an app's answer, else a [`Reason`]'s).
struct Attempted {
    resp: Response<Body>,
    endpoint: String,
    attempts: usize,
    outcome: &'static str,
}

impl Attempted {
    fn ours(status: StatusCode, why: Reason, endpoint: String, attempts: usize) -> Self {
        Attempted {
            resp: answer(status, why),
            endpoint,
            attempts,
            outcome: why.label(),
        }
    }
}

impl Target {
    /// Serves the local app's HTTP on `local` until it closes.
    pub(crate) async fn serve_http(self: Arc<Self>, local: TcpStream, http: Arc<HttpState>) {
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let http = http.clone();
            async move { Ok::<_, std::convert::Infallible>(this.request(&http, req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(self.limits.http_header_timeout))
            .max_headers(self.limits.http_max_headers)
            .max_buf_size(self.limits.http_max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.limits.http2_max_concurrent_streams);
        if let Err(e) = builder.serve_connection(TokioIo::new(local), service).await {
            tracing::debug!(direction = "outbound", error = %e, "local HTTP connection ended with an error");
        }
    }

    /// A pooled connection to `address`, made if needed.
    async fn sender(
        &self,
        http: &HttpState,
        address: &str,
    ) -> Result<Sender, (&'static str, String)> {
        let identity = self
            .connector
            .identity
            .borrow()
            .clone()
            .ok_or(("no_identity", "no SVID yet".to_string()))?;
        crate::tunnel::pooled_credentials::not_expired(&identity)?;
        let (key, bundle) = (&identity.key, &identity.bundle);
        if let Some(s) = http.pooled(address, key, bundle) {
            return Ok(s);
        }
        let _turn = http.connecting.turn(address).await;
        // Made by the request that went first?
        if let Some(s) = http.pooled(address, key, bundle) {
            return Ok(s);
        }
        // Before the handshake: see PeerStanding::after_handshake.
        let bundle_before = bundle.get();
        let (tls, peer) = self.connect(address, bundle).await?;
        let standing = PeerStanding::after_handshake(
            tls.get_ref().1.peer_certificates().unwrap_or_default(),
            bundle_before,
        );
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if !h2 {
            return Err((
                "no_h2",
                format!("{peer} at {address} did not negotiate HTTP/2 (ALPN h2)"),
            ));
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // A host cut off the network is noticed within ~4 s: requests
            // waiting on its connection fail (and are retried when they
            // may be) instead of hanging on TCP retransmissions.
            .keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ("h2_handshake", e.to_string()))?;
        let endpoint = address.to_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(direction = "outbound", endpoint = %endpoint, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        http.pool.lock().unwrap_or_else(|p| p.into_inner()).insert(
            address.to_owned(),
            Pooled {
                sender: sender.clone(),
                credentials: PooledCredentials::new(key.clone(), standing),
            },
        );
        Ok(sender)
    }

    /// One request from the app: balanced, retried, timed out.
    async fn request(&self, http: &HttpState, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        if http.pending.fetch_add(1, Ordering::AcqRel) >= http.max_pending {
            http.pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics
                .http_outcome(&self.upstream.name, Reason::MaxPendingRequests.label());
            tracing::warn!(direction = "outbound", upstream = %self.upstream.name, method = %method, path, status = 503, "request refused: max_pending_requests in flight");
            return answer(StatusCode::SERVICE_UNAVAILABLE, Reason::MaxPendingRequests);
        }
        struct Pending<'a>(&'a AtomicUsize);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _pending = Pending(&http.pending);
        let timeout = http.timeout_for(&path);
        let attempt = self.attempts(http, req);
        let Attempted {
            resp,
            endpoint,
            attempts,
            outcome,
        } = match timeout {
            Some(t) => match tokio::time::timeout(t, attempt).await {
                Ok(r) => r,
                Err(_) => Attempted::ours(
                    StatusCode::GATEWAY_TIMEOUT,
                    Reason::Timeout,
                    String::new(),
                    0,
                ),
            },
            None => attempt.await,
        };
        let status = resp.status().as_u16();
        self.metrics.http_outcome(&self.upstream.name, outcome);
        self.metrics
            .request_seconds(&self.upstream.name, start.elapsed());
        tracing::info!(direction = "outbound", upstream = %self.upstream.name, endpoint, method = %method, path, status, attempts, duration_ms = start.elapsed().as_millis() as u64, "request");
        resp
    }

    /// Sends `req` to one endpoint after another until an answer may be
    /// returned.
    async fn attempts(&self, http: &HttpState, req: Request<Incoming>) -> Attempted {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // A small body with a length is kept, so the request can be sent
        // again; anything else streams through once.
        let small = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= REPLAY_LIMIT);
        let (replayable, mut streaming) = if hyper::body::Body::is_end_stream(&body) {
            (Some(Bytes::new()), None)
        } else if small {
            match body.collect().await {
                Ok(b) => (Some(b.to_bytes()), None),
                Err(_) => {
                    return Attempted::ours(
                        StatusCode::BAD_REQUEST,
                        Reason::RequestBodyUnreadable,
                        String::new(),
                        0,
                    )
                }
            }
        } else {
            (None, Some(body))
        };
        let authority = parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "localhost".into());
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        let uri: hyper::Uri = match format!("http://{authority}{path_and_query}").parse() {
            Ok(u) => u,
            Err(_) => {
                return Attempted::ours(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequestTarget,
                    String::new(),
                    0,
                )
            }
        };
        http.budget().request(Instant::now());
        let mut tried: Vec<String> = Vec::new();
        loop {
            let Some(pick) = self
                .upstream
                .pick_or_wait(&tried, self.connector.connect_timeout)
                .await
            else {
                let why = if tried.is_empty() {
                    Reason::NoEndpoint
                } else {
                    Reason::UpstreamUnreachable
                };
                return Attempted::ours(
                    StatusCode::SERVICE_UNAVAILABLE,
                    why,
                    String::new(),
                    tried.len(),
                );
            };
            let address = pick.address.clone();
            let attempt = Instant::now();
            let sender = match self.sender(http, &address).await {
                Ok(s) => s,
                Err((reason, error)) => {
                    // Nothing of the request was sent: another endpoint.
                    tracing::warn!(direction = "outbound", upstream = %self.upstream.name, endpoint = %address, reason, error = %error, attempt_ms = attempt.elapsed().as_millis() as u64, "endpoint unreachable; trying another");
                    self.upstream.failure(&address, reason);
                    tried.push(address);
                    if tried.len() >= MAX_ATTEMPTS {
                        return Attempted::ours(
                            StatusCode::SERVICE_UNAVAILABLE,
                            Reason::UpstreamUnreachable,
                            String::new(),
                            tried.len(),
                        );
                    }
                    continue;
                }
            };
            let body: Body = match (&replayable, streaming.take()) {
                (Some(b), _) => Full::new(b.clone()).map_err(|n| match n {}).boxed(),
                (None, Some(s)) => s.boxed(),
                (None, None) => {
                    return Attempted::ours(
                        StatusCode::BAD_GATEWAY,
                        Reason::UpstreamFailed,
                        address,
                        tried.len() + 1,
                    )
                }
            };
            let mut out = Request::new(body);
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri.clone();
            *out.headers_mut() = parts.headers.clone();
            out.headers_mut().remove(hyper::header::HOST);
            // Fresh for every attempt, and whatever the app sent replaced:
            // only the peer proxy that received it can echo it.
            let token = control_headers::new_answer_token();
            out.headers_mut()
                .insert(control_headers::ANSWER_TOKEN, token.clone());
            *out.version_mut() = hyper::Version::HTTP_2;
            let sent = Instant::now();
            let mut s = sender;
            let result = s.send_request(out).await;
            let attempts = tried.len() + 1;
            match result {
                Ok(mut resp) => {
                    pick.observe(sent.elapsed(), Instant::now());
                    // An answer the upstream proxy made itself (proved by
                    // the token; a 5xx, or the request never reached the
                    // app): a failure of the endpoint, retried when the
                    // request never reached the app or may be sent twice.
                    let peer_answer = control_headers::peer_proxy_answer(resp.headers(), &token)
                        .filter(|a| a.not_forwarded || resp.status().is_server_error());
                    let Some(peer_answer) = peer_answer else {
                        // The app's answer: its own x-signet- headers are
                        // no verdict of ours for the local app either.
                        control_headers::strip_namespace(resp.headers_mut());
                        self.upstream.success(&address);
                        return Attempted {
                            resp: resp.map(|b| b.boxed()),
                            endpoint: address,
                            attempts,
                            outcome: "response",
                        };
                    };
                    resp.headers_mut().remove(control_headers::ANSWER_TOKEN);
                    let not_forwarded = peer_answer.not_forwarded;
                    let reason = if not_forwarded {
                        "app_unreachable"
                    } else {
                        "proxy_error"
                    };
                    self.upstream.failure(&address, reason);
                    let may_retry = not_forwarded || idempotent(&parts.method);
                    if may_retry
                        && replayable.is_some()
                        && attempts < MAX_ATTEMPTS
                        && self.retry(http)
                    {
                        tracing::info!(direction = "outbound", upstream = %self.upstream.name, endpoint = %address, reason, "answered by its proxy; retrying on another endpoint");
                        tried.push(address);
                        continue;
                    }
                    return Attempted {
                        resp: resp.map(|b| b.boxed()),
                        endpoint: address,
                        attempts,
                        outcome: peer_answer.reason.label(),
                    };
                }
                Err(e) => {
                    http.forget(&address);
                    self.upstream.failure(&address, "request_failed");
                    let retry = replayable.is_some()
                        && idempotent(&parts.method)
                        && attempts < MAX_ATTEMPTS
                        && self.retry(http);
                    tracing::warn!(direction = "outbound", upstream = %self.upstream.name, endpoint = %address, error = %e, retry, "request failed");
                    if retry {
                        tried.push(address);
                        continue;
                    }
                    return Attempted::ours(
                        StatusCode::BAD_GATEWAY,
                        Reason::UpstreamFailed,
                        address,
                        attempts,
                    );
                }
            }
        }
    }

    /// Whether the budget allows one more retry (counted if so).
    fn retry(&self, http: &HttpState) -> bool {
        let ok = http.budget().try_retry(Instant::now());
        self.metrics.retry(&self.upstream.name, ok);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pooled_connection_carries_requests_only_on_its_svid_and_while_its_server_stands() {
        use crate::tunnel::test_pools::{certified_key, h2_pipe};
        use signet_identity::testing::{LeafSpec, TestCa};
        let ca = TestCa::new("example.org");
        let other = TestCa::new("example.org");
        let bundle = BundleHandle::new(ca.bundle());
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Body>(TokioIo::new(h2_pipe()))
            .await
            .unwrap();
        tokio::spawn(conn);
        let (server_chain, _) = ca.leaf(&LeafSpec::valid("spiffe://example.org/server"));
        let key = certified_key(&ca, "spiffe://example.org/client");
        let http = HttpState::new(Vec::new(), None, 10);
        let addr = "10.0.0.2:15006";
        let pool_it = || {
            http.pool.lock().unwrap().insert(
                addr.into(),
                Pooled {
                    sender: sender.clone(),
                    credentials: PooledCredentials::new(
                        key.clone(),
                        PeerStanding::after_handshake(&server_chain, bundle.get()),
                    ),
                },
            );
        };
        pool_it();
        assert!(http.pooled(addr, &key, &bundle).is_some());
        // After a rotation: our new SVID needs a new connection.
        let rotated = certified_key(&ca, "spiffe://example.org/client");
        assert!(http.pooled(addr, &rotated, &bundle).is_none());
        assert!(http.pool.lock().unwrap().is_empty());
        // The server's authority revoked: the connection leaves the pool.
        pool_it();
        bundle.set(other.bundle());
        assert!(http.pooled(addr, &key, &bundle).is_none());
        assert!(http.pool.lock().unwrap().is_empty());
    }

    #[test]
    fn the_longest_matching_route_sets_the_timeout() {
        let s = HttpState::new(
            vec![
                RouteTimeout {
                    prefix: "/".into(),
                    timeout: Duration::from_secs(5),
                },
                RouteTimeout {
                    prefix: "/slow/".into(),
                    timeout: Duration::from_secs(30),
                },
            ],
            None,
            10,
        );
        assert_eq!(s.timeout_for("/slow/report"), Some(Duration::from_secs(30)));
        assert_eq!(s.timeout_for("/fast"), Some(Duration::from_secs(5)));
        let none = HttpState::new(Vec::new(), Some(Duration::from_secs(2)), 10);
        assert_eq!(none.timeout_for("/x"), Some(Duration::from_secs(2)));
    }

    #[test]
    fn only_idempotent_methods_are_retried_blindly() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent(&m), "{m}");
        }
    }

    #[test]
    fn te_trailers_survives_hop_by_hop_stripping() {
        let mut h = hyper::HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        h.insert("connection", "close".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("connection").is_none());
        h.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("te").is_none());
    }
}
