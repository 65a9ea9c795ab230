//! The outbound side of the tunnel: pooled HTTP/2 mTLS connections to each
//! endpoint's tunnel port, and a `CONNECT` stream on one of them per app
//! connection — one TLS handshake per pooled connection instead of one per
//! app connection.
//!
//! A connection carries at most `streams_per_connection` streams, or
//! fewer if the peer allows fewer; past it another connection to the same
//! endpoint is opened (one attempt at a
//! time per endpoint). Connections are made with the SVID held when they
//! were opened: after a rotation new streams go to new connections made
//! with the new SVID, and the old ones leave the pool, carrying their open
//! streams until those end. So does a connection whose server has lost its
//! standing (its SVID expired, or the bundle no longer holds its
//! authority: [`PeerStanding`]), checked before each new stream. A
//! connection that fails (peer gone, no ping answer) fails its streams at
//! once and leaves the pool; the next stream opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::tunnel::pooled_credentials::{PooledCredentials, Retired};
use bytes::Bytes;
use rustls::sign::CertifiedKey;
use signet_identity::peer_standing::PeerStanding;
use signet_identity::tls::BundleHandle;

use crate::metrics::Metrics;
use crate::tls::OutboundTls;
use crate::tunnel::stream::H2Stream;
use crate::upstream::connector::Connector;
use crate::wire::hbone;

/// One pooled tunnel connection.
struct TunnelConn {
    send: h2::client::SendRequest<Bytes>,
    /// Streams open on it (and being opened); [`CLOSING`] once it is
    /// closed for being idle.
    streams: Arc<AtomicUsize>,
    /// The upstream's verified SPIFFE ID.
    peer: String,
    /// Our SVID and the upstream's chain, checked before each new stream.
    credentials: PooledCredentials,
    /// Set once the connection has ended.
    closed: Arc<AtomicBool>,
}

/// How long a tunnel connection may carry no stream before it is closed
/// (endpoints come and go; their idle connections must not stay open).
pub(crate) const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The stream count of a connection closed for being idle: larger than any
/// cap, so no stream is reserved on it any more.
const CLOSING: usize = usize::MAX / 2;

/// One look at an idle connection, every `tick`: `idle_for` grows while it
/// carries no stream; past `limit` it is claimed for closing (its stream
/// count set to [`CLOSING`] at once, so that a stream being reserved at the
/// same instant either wins and keeps it open or sees it closing). Whether
/// to close it.
fn idle_past(
    streams: &AtomicUsize,
    idle_for: &mut std::time::Duration,
    tick: std::time::Duration,
    limit: std::time::Duration,
) -> bool {
    if streams.load(Ordering::Relaxed) != 0 {
        *idle_for = std::time::Duration::ZERO;
        return false;
    }
    *idle_for += tick;
    *idle_for >= limit
        && streams
            .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
}

/// A stream's place on its connection, given back when dropped.
pub(crate) struct StreamSlot {
    conn: Arc<TunnelConn>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open tunnel stream to an upstream's app.
pub(crate) struct TunnelStream {
    /// The bytes.
    pub io: H2Stream,
    /// The upstream's verified SPIFFE ID.
    pub peer: String,
    /// Held while the stream is open (its drop frees the place).
    _slot: StreamSlot,
}

/// Why no stream was opened.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The endpoint could not be reached, or its connection failed: an
    /// endpoint failure (metric reason, error); another endpoint may be
    /// tried.
    Endpoint(&'static str, String),
    /// The upstream proxy answered the CONNECT with a refusal.
    Refused {
        /// The HTTP status.
        status: http::StatusCode,
        /// Its `x-signet-error`, if any.
        why: String,
        /// The stream never reached the app (another endpoint may be
        /// tried).
        not_forwarded: bool,
    },
}

/// An outbound listener's tunnel connections, by tunnel address.
pub(crate) struct TunnelPool {
    /// TLS with ALPN `h2`, one configuration per SVID.
    tls: OutboundTls,
    conns: Mutex<HashMap<String, Vec<Arc<TunnelConn>>>>,
    /// One connection attempt per tunnel address at a time.
    connecting: crate::tunnel::connect_gate::ConnectGates,
    streams_per_connection: usize,
    metrics: Arc<Metrics>,
}

/// `address`'s host with `port`: where its tunnel listener is.
pub(crate) fn tunnel_address(address: &str, port: u16) -> String {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    format!("{host}:{port}")
}

impl TunnelPool {
    /// An empty pool whose connections use `tls` (offering ALPN `h2`).
    pub(crate) fn new(
        tls: OutboundTls,
        streams_per_connection: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tls,
            conns: Mutex::default(),
            connecting: Default::default(),
            streams_per_connection,
            metrics,
        }
    }

    /// A pooled connection to `tunnel_addr` made with `key`, whose server is
    /// still in standing under `bundle`, with room for one more stream, now
    /// counted on it.
    fn reserve(
        &self,
        tunnel_addr: &str,
        key: &Arc<CertifiedKey>,
        bundle: &BundleHandle,
    ) -> Option<StreamSlot> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(tunnel_addr)?;
        // Closed connections, those of an SVID no longer held and those
        // whose server lost its standing leave the pool (the latter two
        // keep their open streams).
        let now = std::time::SystemTime::now();
        list.retain(|c| {
            if c.closed.load(Ordering::Relaxed) {
                return false;
            }
            match c.credentials.usable(key, bundle, now) {
                Ok(()) => true,
                Err(Retired::Rotated) => false,
                Err(Retired::ServerLost(e)) => {
                    tracing::warn!(direction = "outbound", endpoint = %tunnel_addr, peer = %c.peer, error = %e, "tunnel connection carries no new stream");
                    false
                }
            }
        });
        // A connection's room: our cap, or the peer's
        // SETTINGS_MAX_CONCURRENT_STREAMS if lower (beyond it h2 would
        // queue the stream until another ends, rather than open a new
        // connection).
        let conn = list
            .iter()
            .find(|c| {
                let cap = self
                    .streams_per_connection
                    .min(c.send.current_max_send_streams());
                // One more, unless full or claimed for closing meanwhile.
                c.streams
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                        (n < cap).then_some(n + 1)
                    })
                    .is_ok()
            })?
            .clone();
        Some(StreamSlot { conn })
    }

    /// A slot on a connection to `tunnel_addr`, opening one if every pooled
    /// connection is full.
    async fn slot(
        &self,
        connector: &Connector,
        tunnel_addr: &str,
        bundle: &BundleHandle,
    ) -> Result<StreamSlot, StreamError> {
        let identity = connector
            .identity
            .borrow()
            .clone()
            .ok_or_else(|| StreamError::Endpoint("tls_setup", "no identity yet".into()))?;
        crate::tunnel::pooled_credentials::not_expired(&identity)
            .map_err(|(reason, e)| StreamError::Endpoint(reason, e))?;
        let key = identity.key.clone();
        if let Some(slot) = self.reserve(tunnel_addr, &key, bundle) {
            return Ok(slot);
        }
        let _turn = self.connecting.turn(tunnel_addr).await;
        if let Some(slot) = self.reserve(tunnel_addr, &key, bundle) {
            return Ok(slot);
        }
        let conn = self.open(connector, tunnel_addr, bundle, key).await?;
        // Not shared yet: the first stream is ours.
        conn.streams.fetch_add(1, Ordering::AcqRel);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tunnel_addr.to_owned())
            .or_default()
            .push(conn.clone());
        Ok(StreamSlot { conn })
    }

    /// A new tunnel connection: TCP, TLS (ALPN `h2`), the HTTP/2 handshake,
    /// and a task driving it until it ends.
    async fn open(
        &self,
        connector: &Connector,
        tunnel_addr: &str,
        bundle: &BundleHandle,
        key: Arc<CertifiedKey>,
    ) -> Result<Arc<TunnelConn>, StreamError> {
        // Before the handshake: see PeerStanding::after_handshake.
        let bundle_before = bundle.get();
        let (tls, peer) = connector
            .connect(&self.tls, tunnel_addr, bundle)
            .await
            .map_err(|(reason, e)| StreamError::Endpoint(reason, e))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(StreamError::Endpoint(
                "no_tunnel",
                format!("{tunnel_addr} did not agree to HTTP/2 (ALPN h2): not a tunnel listener"),
            ));
        }
        let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let credentials =
            PooledCredentials::new(key, PeerStanding::after_handshake(chain, bundle_before));
        let handshake = hbone::client_builder()
            .initial_max_send_streams(self.streams_per_connection)
            .handshake::<_, Bytes>(tls);
        let (send, mut conn) =
            match tokio::time::timeout(connector.handshake_timeout, handshake).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(StreamError::Endpoint("h2_handshake", e.to_string())),
                Err(_) => {
                    return Err(StreamError::Endpoint(
                        "timeout",
                        "no HTTP/2 handshake in time".into(),
                    ))
                }
            };
        let closed = Arc::new(AtomicBool::new(false));
        let dead = hbone::dead_peer(conn.ping_pong());
        let metrics = self.metrics.clone();
        metrics.tunnel_connection("outbound", 1);
        let (done, address, who) = (closed.clone(), tunnel_addr.to_owned(), peer.clone());
        let streams = Arc::new(AtomicUsize::new(0));
        let counted = streams.clone();
        tokio::spawn(async move {
            let idle = async {
                let mut idle_for = std::time::Duration::ZERO;
                loop {
                    tokio::time::sleep(hbone::PING_INTERVAL).await;
                    if idle_past(&counted, &mut idle_for, hbone::PING_INTERVAL, IDLE_TIMEOUT) {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = idle => {
                    tracing::debug!(direction = "outbound", endpoint = %address, peer = %who, "idle tunnel connection closed");
                }
                r = conn => {
                    if let Err(e) = r {
                        tracing::info!(direction = "outbound", endpoint = %address, peer = %who, error = %e, "tunnel connection failed; its streams are reset");
                    }
                }
                _ = dead => {
                    tracing::warn!(direction = "outbound", endpoint = %address, peer = %who, "tunnel peer stopped answering pings; connection dropped with its streams");
                }
            }
            done.store(true, Ordering::Relaxed);
            metrics.tunnel_connection("outbound", -1);
        });
        tracing::debug!(direction = "outbound", endpoint = %tunnel_addr, peer = %peer, "tunnel connection open");
        Ok(Arc::new(TunnelConn {
            send,
            streams,
            peer,
            credentials,
            closed,
        }))
    }

    /// A `CONNECT` stream to `authority` through the tunnel at
    /// `tunnel_addr`.
    pub(crate) async fn open_stream(
        &self,
        connector: &Connector,
        tunnel_addr: &str,
        authority: &str,
        bundle: &BundleHandle,
    ) -> Result<TunnelStream, StreamError> {
        let slot = self.slot(connector, tunnel_addr, bundle).await?;
        let failed = |e: h2::Error| {
            // The connection may be gone: the next stream checks.
            if e.is_io() || e.is_go_away() {
                slot.conn.closed.store(true, Ordering::Relaxed);
            }
            StreamError::Endpoint("tunnel_failed", e.to_string())
        };
        let req = hbone::connect_request(authority)
            .map_err(|e| StreamError::Endpoint("bad_address", e.to_string()))?;
        let mut send = slot.conn.send.clone().ready().await.map_err(failed)?;
        let (answer, body) = send.send_request(req, false).map_err(failed)?;
        let answer = match tokio::time::timeout(connector.handshake_timeout, answer).await {
            Ok(r) => r.map_err(failed)?,
            Err(_) => {
                return Err(StreamError::Endpoint(
                    "timeout",
                    format!(
                        "no answer to CONNECT within {:?}",
                        connector.handshake_timeout
                    ),
                ))
            }
        };
        if answer.status() != http::StatusCode::OK {
            let header = |name: &str| {
                answer
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            return Err(StreamError::Refused {
                status: answer.status(),
                why: header(crate::wire::control_headers::ERROR).unwrap_or_default(),
                not_forwarded: header(crate::wire::control_headers::NOT_FORWARDED).is_some(),
            });
        }
        Ok(TunnelStream {
            io: H2Stream::new(body, answer.into_body()),
            peer: slot.conn.peer.clone(),
            _slot: slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_closed_only_after_a_whole_idle_timeout_without_streams() {
        let tick = std::time::Duration::from_secs(10);
        let limit = std::time::Duration::from_secs(60);
        let streams = AtomicUsize::new(0);
        let mut idle_for = std::time::Duration::ZERO;
        for _ in 0..5 {
            assert!(!idle_past(&streams, &mut idle_for, tick, limit));
        }
        // A stream at 50 s starts the count again.
        streams.store(1, Ordering::Relaxed);
        assert!(!idle_past(&streams, &mut idle_for, tick, limit));
        streams.store(0, Ordering::Relaxed);
        for _ in 0..5 {
            assert!(!idle_past(&streams, &mut idle_for, tick, limit));
        }
        // 60 s without a stream: claimed for closing; nothing fits any more.
        assert!(idle_past(&streams, &mut idle_for, tick, limit));
        assert_eq!(streams.load(Ordering::Relaxed), CLOSING);
    }

    #[test]
    fn a_connection_carrying_a_stream_is_never_claimed() {
        let tick = std::time::Duration::from_secs(60);
        let streams = AtomicUsize::new(0);
        let mut idle_for = std::time::Duration::ZERO;
        streams.store(1, Ordering::Relaxed);
        assert!(!idle_past(&streams, &mut idle_for, tick, tick));
        assert_eq!(streams.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connection_whose_server_left_the_bundle_carries_no_new_stream() {
        use crate::tunnel::test_pools::{certified_key, h2_pipe};
        use signet_identity::testing::{LeafSpec, TestCa};
        use signet_identity::TrustBundle;
        let ca = TestCa::new("example.org");
        let other = TestCa::new("example.org");
        let bundle = BundleHandle::new(ca.bundle());
        let (send, driver) = h2::client::handshake(h2_pipe()).await.unwrap();
        tokio::spawn(driver);
        let (server_chain, _) = ca.leaf(&LeafSpec::valid("spiffe://example.org/server"));
        let key = certified_key(&ca, "spiffe://example.org/client");
        let conn = Arc::new(TunnelConn {
            send,
            streams: Arc::new(AtomicUsize::new(0)),
            peer: "spiffe://example.org/server".into(),
            credentials: PooledCredentials::new(
                key.clone(),
                PeerStanding::after_handshake(&server_chain, bundle.get()),
            ),
            closed: Arc::new(AtomicBool::new(false)),
        });
        let (_keep, identity) = tokio::sync::watch::channel(None);
        let tls = OutboundTls::new(identity, Arc::new(|_| true), vec![b"h2".to_vec()]);
        let pool = TunnelPool::new(tls, 100, Metrics::new());
        let addr = "10.0.0.2:15008";
        pool.conns.lock().unwrap().insert(addr.into(), vec![conn]);

        drop(pool.reserve(addr, &key, &bundle).expect("a stream on it"));
        // A new bundle that still holds the server's authority (a CA key
        // being added): the connection stays in use.
        bundle.set(
            TrustBundle::new(
                ca.trust_domain.clone(),
                vec![ca.root.der.clone(), other.root.der.clone()],
            )
            .unwrap(),
        );
        drop(
            pool.reserve(addr, &key, &bundle)
                .expect("still in standing"),
        );
        // The server's authority revoked: the connection leaves the pool
        // and the next stream would open a new one (a new handshake).
        bundle.set(other.bundle());
        assert!(pool.reserve(addr, &key, &bundle).is_none());
        assert!(pool.conns.lock().unwrap()[addr].is_empty());
    }

    #[test]
    fn the_tunnel_is_on_the_endpoint_host() {
        assert_eq!(tunnel_address("10.0.0.2:15006", 15008), "10.0.0.2:15008");
        assert_eq!(tunnel_address("[::1]:15006", 15008), "[::1]:15008");
        assert_eq!(tunnel_address("web.svc:80", 15008), "web.svc:15008");
    }
}
