//! The byte path: copy both ways until each side has closed, with proper
//! half-close, and report the counts.

use std::time::Instant;

use crate::metrics::{Metrics, PeerLabels};

use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer per direction: one TLS record.
const BUF: usize = 16 * 1024;

/// Copies between `peer` (the mTLS side) and `local` until both directions
/// are done. Returns (bytes to peer, bytes from peer, error if any).
async fn splice<P, L>(peer: &mut P, local: &mut L) -> (u64, u64, Option<std::io::Error>)
where
    P: AsyncRead + AsyncWrite + Unpin + ?Sized,
    L: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    match tokio::io::copy_bidirectional_with_sizes(peer, local, BUF, BUF).await {
        Ok((from_peer, to_peer)) => (to_peer, from_peer, None),
        Err(e) => (0, 0, Some(e)),
    }
}

/// Milliseconds since `start`.
pub fn ms_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Relays one authorized connection and keeps its metrics: connection and
/// byte counters by direction and peer, and the active-connection gauge.
/// The relay is cut when `revoked` completes (policy no longer allows the
/// peer). Returns (bytes to peer, bytes from peer, error if any).
pub async fn relay<P, L>(
    metrics: &Metrics,
    direction: &str,
    peer: &str,
    tls: &mut P,
    local: &mut L,
    revoked: impl std::future::Future<Output = ()>,
) -> (u64, u64, Option<std::io::Error>)
where
    P: AsyncRead + AsyncWrite + Unpin + ?Sized,
    L: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let labels = PeerLabels {
        direction: direction.into(),
        peer: peer.into(),
    };
    metrics.connections.get_or_create(&labels).inc();
    metrics.active.inc();
    let (to_peer, from_peer, err) = tokio::select! {
        r = splice(tls, local) => r,
        _ = revoked => (0, 0, Some(std::io::Error::other("closed: policy no longer allows this peer"))),
    };
    metrics.active.dec();
    metrics.bytes_to_peer.get_or_create(&labels).inc_by(to_peer);
    metrics
        .bytes_from_peer
        .get_or_create(&labels)
        .inc_by(from_peer);
    (to_peer, from_peer, err)
}
