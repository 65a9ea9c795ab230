//! HTTP for tests, on one client (hyper's): GETs on metrics and health
//! endpoints, one request through a proxy, and reading a Prometheus
//! metric. Tests that must send bytes no client would (plaintext to a TLS
//! port, floods, malformed heads) write them on a socket themselves.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// An answer: status (0 when the server closed without one), headers,
/// body.
pub struct Answer {
    /// The status code, or 0.
    pub status: u16,
    /// The response headers.
    pub headers: hyper::HeaderMap,
    /// The body, as text.
    pub body: String,
}

/// One HTTP/1.1 request on a new connection to 127.0.0.1:`port`, with
/// `host` as its Host; panics when nothing connects or nothing is
/// answered within `timeout`.
pub fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Answer {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONNECTION, "close")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    // On a thread of its own: callers may be inside a runtime already (a
    // `#[tokio::test]`), where another cannot be started.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for one request")
            .block_on(exchange(port, req, timeout))
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

async fn exchange(port: u16, req: hyper::Request<Full<Bytes>>, timeout: Duration) -> Answer {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.ok()?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Some(answer)) => answer,
        // Closed without an answer (a refusal, say), or no answer within
        // `timeout` (a call stuck on a cut host): status 0, for the caller
        // to judge, as the read-timeout helpers this replaced did. A test
        // that expects an answer fails on the status.
        Ok(None) | Err(_) => Answer {
            status: 0,
            headers: hyper::HeaderMap::new(),
            body: String::new(),
        },
    }
}

/// GET `path` on 127.0.0.1:`port`: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let a = request(port, "GET", "localhost", path, "", Duration::from_secs(10));
    (a.status, a.body)
}

/// One request through a proxy listener on 127.0.0.1:`port` (Host
/// `payments`): status, `x-signet-error`, body.
pub fn http_call(port: u16, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let a = request(
        port,
        method,
        "payments",
        path,
        body,
        Duration::from_secs(15),
    );
    let error = a
        .headers
        .get("x-signet-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (a.status, error, a.body)
}

/// The value of the first metric line starting with `prefix` (0 if none).
pub fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
