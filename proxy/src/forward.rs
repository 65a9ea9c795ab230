//! The byte path: copy both ways until each side has closed, with proper
//! half-close, and report the counts — counted as they pass, so they are
//! right however the connection ends (a peer that closes without TLS
//! `close_notify` ends the copy with an error, not with zero bytes).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::{Metrics, PeerLabels};
use crate::tunnel::stream::H2Stream;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffer per direction: one TLS record.
const BUF: usize = 16 * 1024;

/// A stream that counts the bytes read from it and written to it.
struct Counted<'a, S: ?Sized> {
    inner: &'a mut S,
    read: u64,
    written: u64,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Copies between `peer` (the mTLS side) and `local` until both directions
/// are done or `cut` completes. Returns (bytes to peer, bytes from peer,
/// error if any).
async fn splice<P, L>(
    peer: &mut P,
    local: &mut L,
    cut: impl std::future::Future<Output = std::io::Error>,
) -> (u64, u64, Option<std::io::Error>)
where
    P: AsyncRead + AsyncWrite + Unpin + ?Sized,
    L: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut peer = Counted {
        inner: peer,
        read: 0,
        written: 0,
    };
    let err = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut peer, local, BUF, BUF) => r.err(),
        e = cut => Some(e),
    };
    (peer.written, peer.read, err)
}

/// Milliseconds since `start`.
pub(crate) fn ms_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Relays one authorized connection and keeps its metrics: connection and
/// byte counters by direction and peer, and the active-connection gauge.
/// The relay is cut when `revoked` completes (policy no longer allows the
/// peer). Returns (bytes to peer, bytes from peer, error if any).
pub(crate) async fn relay<P, L>(
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
    counted(
        metrics,
        direction,
        peer,
        splice(tls, local, async {
            revoked.await;
            revoked_error()
        }),
    )
    .await
}

fn revoked_error() -> std::io::Error {
    std::io::Error::other("closed: policy no longer allows this peer")
}

/// Like [`relay`], for a tunnel stream: relayed without intermediate
/// buffers ([`H2Stream::splice_tcp`]).
pub(crate) async fn relay_stream(
    metrics: &Metrics,
    direction: &str,
    peer: &str,
    stream: &mut H2Stream,
    local: &mut tokio::net::TcpStream,
    revoked: impl std::future::Future<Output = ()>,
) -> (u64, u64, Option<std::io::Error>) {
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let copy = async {
        let err = tokio::select! {
            r = stream.splice_tcp(local, &sent, &received) => r.err(),
            _ = revoked => Some(revoked_error()),
        };
        (sent.load(Relaxed), received.load(Relaxed), err)
    };
    counted(metrics, direction, peer, copy).await
}

/// Runs `copy` (which returns bytes to and from the peer and its error)
/// under the connection metrics: connection and byte counters by
/// direction and peer, and the active-connection gauge.
async fn counted(
    metrics: &Metrics,
    direction: &str,
    peer: &str,
    copy: impl std::future::Future<Output = (u64, u64, Option<std::io::Error>)>,
) -> (u64, u64, Option<std::io::Error>) {
    let labels = PeerLabels {
        direction: direction.into(),
        peer: peer.into(),
    };
    metrics.connections.get_or_create(&labels).inc();
    metrics.active.inc();
    let (to_peer, from_peer, err) = copy.await;
    metrics.active.dec();
    metrics.bytes_to_peer.get_or_create(&labels).inc_by(to_peer);
    metrics
        .bytes_from_peer
        .get_or_create(&labels)
        .inc_by(from_peer);
    (to_peer, from_peer, err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that sends `data`, waits for `expect` bytes, then fails the
    /// way a TLS stream does when the other side closes without
    /// close_notify.
    struct Truncated {
        data: Vec<u8>,
        sent: bool,
        got: Vec<u8>,
        expect: usize,
        reader: Option<std::task::Waker>,
    }

    impl AsyncRead for Truncated {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.sent {
                if self.got.len() < self.expect {
                    self.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.sent = true;
            let data = std::mem::take(&mut self.data);
            buf.put_slice(&data);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Truncated {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.got.extend_from_slice(data);
            if let Some(w) = self.reader.take() {
                w.wake();
            }
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn counts_survive_a_peer_closing_without_close_notify() {
        let (mut local, mut app) = tokio::io::duplex(64 * 1024);
        let mut peer = Truncated {
            data: vec![7u8; 1000],
            sent: false,
            got: Vec::new(),
            expect: 300,
            reader: None,
        };
        app.write_all(&[1u8; 300]).await.unwrap();
        let app_side = tokio::spawn(async move {
            let mut buf = vec![0u8; 1000];
            app.read_exact(&mut buf).await.unwrap();
            app
        });
        let metrics = Metrics::new();
        let (to_peer, from_peer, err) = relay(
            &metrics,
            "inbound",
            "spiffe://td/x",
            &mut peer,
            &mut local,
            std::future::pending(),
        )
        .await;
        let _app = app_side.await.unwrap();
        assert!(err.is_some(), "the truncation is reported");
        assert_eq!(from_peer, 1000);
        assert_eq!(to_peer, peer.got.len() as u64);
        assert_eq!(to_peer, 300);
    }
}
