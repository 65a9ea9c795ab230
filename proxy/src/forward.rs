//! The byte path: copy both ways until each side has closed, with proper
//! half-close, and report the counts.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer per direction: one TLS record.
const BUF: usize = 16 * 1024;

/// Copies between `peer` (the mTLS side) and `local` until both directions
/// are done. Returns (bytes to peer, bytes from peer, error if any).
pub async fn splice<P, L>(peer: &mut P, local: &mut L) -> (u64, u64, Option<std::io::Error>)
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
