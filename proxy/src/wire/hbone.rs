//! The tunnel between sidecars, the parts both ends share: app connections
//! ride as HTTP/2 `CONNECT` streams (RFC 9113 §8.5) over a few pooled mTLS
//! connections to the upstream's tunnel port, in Istio's HBONE format —
//! TLS 1.3 with SPIFFE X.509-SVIDs on both sides, ALPN `h2`, a `CONNECT`
//! whose `:authority` is the target address, `200` then raw bytes both
//! ways, END_STREAM for a half-close and RST_STREAM for a reset.
//!
//! Flow control is sized so that a slow stream never stalls the others
//! (ztunnel #1174): the connection window holds many stream windows, and
//! a stream's received bytes are released only as its reader takes them
//! ([`crate::tunnel::stream::H2Stream`]).

use std::time::Duration;

use crate::wire::control_headers::ERROR;

/// Receive window per stream: what one stream may have in flight unread.
/// 1 MiB keeps a bulk stream at full speed over a few ms of RTT.
pub(crate) const STREAM_WINDOW: u32 = 1 << 20;
/// Receive window per connection: 32 stream windows, so up to 31 stalled
/// streams leave room for the others.
pub(crate) const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest frame we accept. Larger frames than the default 16 KiB cut
/// per-frame work on bulk streams.
pub(crate) const MAX_FRAME: u32 = 64 * 1024;
/// Largest header list accepted: a CONNECT carries a handful of headers.
pub(crate) const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Bytes a stream may queue for sending beyond its window.
pub(crate) const MAX_SEND_BUFFER: usize = 256 * 1024;
/// How often an idle tunnel connection is pinged.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped with
/// its streams (a peer gone without a FIN or RST).
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 settings of a tunnel connection's server side (the tunnel
/// listener adds its stream cap).
pub(crate) fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER);
    b
}

/// The HTTP/2 settings of a tunnel connection's client side (the pool adds
/// its streams per connection); server push is refused.
pub(crate) fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false);
    b
}

/// The `CONNECT` request for `authority` (`host:port`).
pub(crate) fn connect_request(authority: &str) -> Result<http::Request<()>, http::Error> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .version(http::Version::HTTP_2)
        .body(())
}

/// Completes when the peer has not answered a ping within
/// [`PING_TIMEOUT`] (or the ping failed): the connection is dead. Without
/// a ping handle (taken already), never.
pub(crate) async fn dead_peer(ping: Option<h2::PingPong>) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// A response with no body; a refusal says why in [`ERROR`]
/// (`denied`, `target-not-allowed`, `app-unreachable`, `not-connect`,
/// `peer-svid-expired`, `peer-svid-untrusted`).
pub(crate) fn response(status: http::StatusCode, why: Option<&'static str>) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() = status;
    if let Some(why) = why {
        r.headers_mut()
            .insert(ERROR, http::HeaderValue::from_static(why));
    }
    r
}
