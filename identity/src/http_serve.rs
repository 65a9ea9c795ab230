//! The small HTTP/1.1 listeners every daemon has beside its real work
//! (metrics and health, OIDC discovery), served under the same admission
//! limits as the rest: a cap on open connections, a cap per source address,
//! a TLS handshake timeout, a header timeout that also closes a keep-alive
//! connection left idle, a bounded header size and a connection lifetime.
//! A flood of idle connections then costs this listener its own cap and
//! nothing else: the descriptors other listeners need stay free.
//!
//! Refusals are counted through the caller's `on_refused` and logged once
//! per source and reason per minute ([`RefusalLog`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::admission::{Admission, RefusalLog, Ticket};

/// The limits of one HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections; more are closed at accept.
    pub max_connections: usize,
    /// Open connections per source address; more are closed at accept.
    pub max_per_source: usize,
    /// Time for a TLS handshake, and for a request's headers (also the
    /// longest a keep-alive connection may sit idle).
    pub header_timeout: Duration,
    /// Longest a connection may stay open at all.
    pub max_lifetime: Duration,
}

/// The limits of a daemon's operator listener (metrics, health; the
/// proxy's admin port): a scraper holds one connection.
pub const OPERATOR_LIMITS: HttpLimits = HttpLimits {
    max_connections: 64,
    max_per_source: 16,
    header_timeout: Duration::from_secs(10),
    max_lifetime: Duration::from_secs(300),
};

/// Largest request head accepted (hyper's minimum buffer): the documents
/// served here take no large requests.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Serves `service` on `listener` (TLS through `tls` when given) under
/// `limits` until `shutdown`; then connections finish what they are doing.
/// `name` names the listener in logs; `on_refused` counts each refusal by
/// its limit's name (`max_connections`, `max_per_source`,
/// `handshake_timeout`, `handshake_failed`).
pub async fn serve<S, B, R>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    limits: HttpLimits,
    name: &'static str,
    on_refused: R,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R: Fn(&'static str) + Send + Sync + 'static,
{
    let admission = Admission::<IpAddr>::new(limits.max_connections, limits.max_per_source);
    let refusals = Arc::new(RefusalLog::new(Duration::from_secs(60)));
    let on_refused = Arc::new(on_refused);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: back off, don't spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(refused) => {
                refuse(name, &refusals, &*on_refused, peer, refused.reason());
                continue;
            }
        };
        let conn = Conn {
            tcp,
            peer,
            ticket,
            tls: tls.clone(),
            service: service.clone(),
            limits: limits.clone(),
        };
        let watcher = graceful.watcher();
        let (refusals, on_refused) = (refusals.clone(), on_refused.clone());
        tokio::spawn(async move {
            if let Err(reason) = conn.serve(watcher).await {
                refuse(name, &refusals, &*on_refused, peer, reason);
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Counts a refusal and logs it, once per source and reason per interval.
fn refuse(
    name: &'static str,
    log: &RefusalLog<IpAddr>,
    count: &(dyn Fn(&'static str) + Send + Sync),
    peer: SocketAddr,
    reason: &'static str,
) {
    count(reason);
    if log.first_in_interval(peer.ip(), reason, Instant::now()) {
        tracing::info!(listener = name, client = %peer.ip(), reason, "connection refused (logged once a minute per client and reason)");
    }
}

/// One admitted connection and what it is served with.
struct Conn<S> {
    tcp: TcpStream,
    peer: SocketAddr,
    ticket: Ticket<IpAddr>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    limits: HttpLimits,
}

impl<S> Conn<S> {
    /// Serves until the connection ends, its lifetime is over, or the
    /// listener shuts down; `Err` names the limit that refused it.
    async fn serve<B>(
        self,
        watcher: hyper_util::server::graceful::Watcher,
    ) -> Result<(), &'static str>
    where
        S: tower::Service<
                http::Request<Incoming>,
                Response = http::Response<B>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Conn {
            tcp,
            peer,
            ticket: _held,
            tls,
            service,
            limits,
        } = self;
        let _ = tcp.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + limits.max_lifetime;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        let service = TowerToHyperService::new(service);
        let served = match tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(tcp), service);
                tokio::time::timeout_at(deadline, watcher.watch(conn)).await
            }
            Some(acceptor) => {
                let tls =
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return Err("handshake_failed");
                        }
                        Err(_) => return Err("handshake_timeout"),
                    };
                let conn = builder.serve_connection(TokioIo::new(tls), service);
                tokio::time::timeout_at(deadline, watcher.watch(conn)).await
            }
        };
        match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "HTTP connection ended"),
            Err(_) => {
                tracing::debug!(client = %peer, "HTTP connection closed at the end of its lifetime")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Whether the server closed `s` within `wait`.
    async fn closed(s: &mut TcpStream, wait: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(wait, s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    async fn get(s: &mut TcpStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn each_cap_holds_at_its_limit_and_idle_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicUsize::new(0));
        let counted = refused.clone();
        let service = tower::service_fn(|_req: http::Request<Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(String::from("ok")))
        });
        let limits = HttpLimits {
            max_connections: 3,
            max_per_source: 2,
            header_timeout: Duration::from_millis(800),
            max_lifetime: Duration::from_secs(60),
        };
        tokio::spawn(serve(
            listener,
            None,
            service,
            limits,
            "test",
            move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            },
            std::future::pending(),
        ));
        // Per source: two from 127.0.0.2 are served, a third is closed.
        let mut a1 = connect_from("127.0.0.2", addr).await;
        let mut a2 = connect_from("127.0.0.2", addr).await;
        assert!(get(&mut a1).await.ends_with("ok"));
        assert!(get(&mut a2).await.ends_with("ok"));
        let mut a3 = connect_from("127.0.0.2", addr).await;
        assert!(closed(&mut a3, Duration::from_millis(500)).await);
        // The listener: a third source fits, a fourth connection does not.
        let mut b1 = connect_from("127.0.0.3", addr).await;
        assert!(get(&mut b1).await.ends_with("ok"));
        let mut c1 = connect_from("127.0.0.4", addr).await;
        assert!(closed(&mut c1, Duration::from_millis(500)).await);
        assert_eq!(refused.load(Ordering::SeqCst), 2);
        // Idle past the header timeout (after a request, too): closed,
        // and the places are free again.
        for s in [&mut a1, &mut a2, &mut b1] {
            assert!(closed(s, Duration::from_secs(3)).await);
        }
        let mut again = connect_from("127.0.0.4", addr).await;
        assert!(get(&mut again).await.ends_with("ok"));
    }
}
