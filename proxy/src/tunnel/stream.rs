//! One HTTP/2 stream as a byte stream (`AsyncRead + AsyncWrite`), so an app
//! connection can ride a `CONNECT` stream of a pooled tunnel connection and
//! be relayed with the same copy as a TLS connection. Flow control is the
//! stream's own: received bytes are released to the peer's window only as
//! the reader takes them (a slow reader slows its sender, not the other
//! streams); a write waits for send capacity and sends at most what was
//! granted. Shutdown ends the stream in our direction (half-close: the
//! other direction carries on).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An HTTP/2 stream's two halves, read and written as bytes.
pub(crate) struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    pending: Bytes,
    /// Our direction has ended (END_STREAM sent).
    shut: bool,
}

impl H2Stream {
    /// The byte stream over `send` and `recv`.
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            shut: false,
        }
    }
}

/// How much a relay reads from the app at a time.
const READ_CHUNK: usize = 16 * 1024;

impl H2Stream {
    /// Relays between this stream and the TCP connection `tcp` until both
    /// directions have ended, without copying through intermediate
    /// buffers: bytes read from `tcp` are handed to HTTP/2 as they are
    /// (the read buffer is allocated only once data is readable, and
    /// reused), and received DATA frames are written to `tcp` from the
    /// frames themselves, their window released only once written (a slow
    /// app slows its sender, not the other streams). End of input on either
    /// side is passed on as a half-close. `sent` and `received` count the
    /// bytes sent on and received from the stream as they pass.
    pub(crate) async fn splice_tcp(
        &mut self,
        tcp: &mut tokio::net::TcpStream,
        sent: &std::sync::atomic::AtomicU64,
        received: &std::sync::atomic::AtomicU64,
    ) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::AsyncWriteExt;
        let (from_app, mut to_app) = tcp.split();
        let (send, recv, pending, shut) = (
            &mut self.send,
            &mut self.recv,
            &mut self.pending,
            &mut self.shut,
        );
        let up = async {
            let mut buf = bytes::BytesMut::new();
            loop {
                from_app.as_ref().readable().await?;
                buf.reserve(READ_CHUNK);
                let n = match from_app.as_ref().try_read_buf(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    if !*shut {
                        *shut = true;
                        send.send_data(Bytes::new(), true).map_err(h2_error)?;
                    }
                    return Ok(());
                }
                let mut chunk = buf.split().freeze();
                while !chunk.is_empty() {
                    send.reserve_capacity(chunk.len());
                    let granted = std::future::poll_fn(|cx| loop {
                        if send.capacity() > 0 {
                            return Poll::Ready(Ok(send.capacity()));
                        }
                        match ready!(send.poll_capacity(cx)) {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                            None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                        }
                    })
                    .await?;
                    let part = chunk.split_to(granted.min(chunk.len()));
                    let len = part.len() as u64;
                    send.send_data(part, false).map_err(h2_error)?;
                    sent.fetch_add(len, Relaxed);
                }
            }
        };
        let down = async {
            if !pending.is_empty() {
                let data = std::mem::take(pending);
                to_app.write_all(&data).await?;
                received.fetch_add(data.len() as u64, Relaxed);
                let _ = recv.flow_control().release_capacity(data.len());
            }
            loop {
                match std::future::poll_fn(|cx| recv.poll_data(cx)).await {
                    Some(Ok(data)) => {
                        to_app.write_all(&data).await?;
                        received.fetch_add(data.len() as u64, Relaxed);
                        let _ = recv.flow_control().release_capacity(data.len());
                    }
                    Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => break,
                    Some(Err(e)) => return Err(h2_error(e)),
                    None => break,
                }
            }
            to_app.shutdown().await
        };
        tokio::try_join!(up, down).map(|_| ())
    }

    /// Ends the stream abruptly in both directions (RST_STREAM with
    /// `reason`): the peer sees an error, not a clean end, as when a TCP
    /// connection is reset.
    pub(crate) fn reset(&mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
    }
}

fn h2_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.remaining().min(self.pending.len());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                // Taken by the reader: the peer may send that much more.
                let _ = self.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => self.pending = data,
                // The peer ended its direction cleanly.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(data.len());
        while self.send.capacity() == 0 {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let n = self.send.capacity().min(data.len());
        self.send
            .send_data(Bytes::copy_from_slice(&data[..n]), false)
            .map_err(h2_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are handed to the connection as they are sent; it flushes.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An h2 server on `io` that echoes every CONNECT stream, then ends its
    /// direction when the client ends its own.
    async fn echo_server(io: tokio::io::DuplexStream) {
        let mut conn = h2::server::handshake(io).await.unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            assert_eq!(req.method(), http::Method::CONNECT);
            let send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            let mut stream = H2Stream::new(send, req.into_body());
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut stream);
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    }

    async fn connect(client: &mut h2::client::SendRequest<Bytes>) -> H2Stream {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("127.0.0.1:8080")
            .body(())
            .unwrap();
        let (resp, send) = client.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        H2Stream::new(send, resp.into_body())
    }

    /// Sends `data` on `stream` and half-closes while reading what comes
    /// back, to the end.
    async fn round_trip(stream: H2Stream, data: &[u8]) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(stream);
        let sent = data.to_vec();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            // Half-close: the echo still comes back after it.
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        back
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_intact_with_half_close_on_many_streams() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        tokio::spawn(echo_server(b));
        let (client, conn) = h2::client::handshake(a).await.unwrap();
        tokio::spawn(conn);
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let stream = connect(&mut client).await;
                // Larger than the default 64 KiB window for some streams.
                let len = if i % 20 == 0 {
                    1_000_000
                } else {
                    1000 + i as usize
                };
                let data: Vec<u8> = (0..len).map(|n| (n * 31 + i as usize) as u8).collect();
                let back = round_trip(stream, &data).await;
                assert!(
                    back == data,
                    "stream {i}: {} of {len} bytes back intact",
                    back.len()
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    /// A TCP echo server on loopback: echoes until EOF, then ends its side.
    async fn tcp_echo() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn splice_tcp_relays_both_ways_with_half_close_and_counts() {
        let app = tcp_echo().await;
        let (a, b) = tokio::io::duplex(64 * 1024);
        let counts = std::sync::Arc::new((
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
        ));
        let server_counts = counts.clone();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(b).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let send = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                let mut stream = H2Stream::new(send, req.into_body());
                let counts = server_counts.clone();
                tokio::spawn(async move {
                    let mut tcp = tokio::net::TcpStream::connect(app).await.unwrap();
                    stream
                        .splice_tcp(&mut tcp, &counts.0, &counts.1)
                        .await
                        .unwrap();
                });
            }
        });
        let (client, conn) = h2::client::handshake(a).await.unwrap();
        tokio::spawn(conn);
        let stream = connect(&mut client.clone()).await;
        // More than the default stream window, so flow control must move.
        let data: Vec<u8> = (0..3_000_000u32).map(|n| (n * 7) as u8).collect();
        let back = round_trip(stream, &data).await;
        assert!(
            back == data,
            "{} of {} bytes back intact",
            back.len(),
            data.len()
        );
        // Both directions counted by the relaying side.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let len = data.len() as u64;
        assert_eq!(counts.1.load(std::sync::atomic::Ordering::Relaxed), len);
        assert_eq!(counts.0.load(std::sync::atomic::Ordering::Relaxed), len);
    }

    // A stream whose reader stalls holds its stream window of the
    // connection's window, on both sides: with h2's defaults (64 KiB each)
    // one stalled stream stops the whole connection (ztunnel #1174). The
    // tunnel must size the connection window as many stream windows; this
    // test shows the stall with the defaults and none with such windows
    // (the tunnel's are in `tunnel.rs`).
    #[tokio::test]
    async fn a_stalled_reader_stalls_others_only_if_the_connection_window_is_one_stream_window() {
        async fn other_stream_answers(stream_window: u32, conn_window: u32) -> bool {
            let (a, b) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut conn = h2::server::Builder::new()
                    .initial_window_size(stream_window)
                    .initial_connection_window_size(conn_window)
                    .handshake::<_, Bytes>(b)
                    .await
                    .unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    let mut stream = H2Stream::new(send, req.into_body());
                    tokio::spawn(async move {
                        let (mut r, mut w) = tokio::io::split(&mut stream);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            });
            let (client, conn) = h2::client::Builder::new()
                .initial_window_size(stream_window)
                .initial_connection_window_size(conn_window)
                .handshake::<_, Bytes>(a)
                .await
                .unwrap();
            tokio::spawn(conn);
            // One stream writes 4 MiB and never reads its echo.
            let mut stalled = connect(&mut client.clone()).await;
            let stuck = tokio::spawn(async move {
                let _ = stalled.write_all(&vec![7u8; 4 << 20]).await;
            });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let mut client = client.clone();
            let answered = tokio::time::timeout(std::time::Duration::from_secs(3), async move {
                let mut other = connect(&mut client).await;
                other.write_all(b"still moving").await.unwrap();
                other.shutdown().await.unwrap();
                let mut back = Vec::new();
                other.read_to_end(&mut back).await.unwrap();
                back == b"still moving"
            })
            .await
            .unwrap_or(false);
            assert!(
                !stuck.is_finished(),
                "the stalled stream is held by flow control"
            );
            stuck.abort();
            answered
        }
        assert!(
            !other_stream_answers(65_535, 65_535).await,
            "with equal windows one stalled stream stops the connection"
        );
        assert!(
            other_stream_answers(256 * 1024, 16 * 1024 * 1024).await,
            "with a connection window of many stream windows the others go on"
        );
    }
}
