//! Apps behind the proxies: a TCP echo server and an HTTP/1.1 app that can
//! be slow, fail, or answer with what it saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use crate::process::eventually;

/// A TCP echo server on loopback that counts the connections it accepted.
pub struct EchoApp {
    pub port: u16,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl EchoApp {
    pub fn start() -> EchoApp {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        EchoApp { port, accepted }
    }

    /// An HTTP/1.1 app: answers every request with 200 and a body listing
    /// the `x-signet-peer-id` values it received (in `-` or `_` spelling),
    /// then the method and path.
    pub fn start_http() -> EchoApp {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let mut peer_ids = Vec::new();
                        let mut others = Vec::new();
                        let mut content_length = 0usize;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = line.split_once(':') {
                                // As a CGI-style server reads a name: every
                                // character not a letter or digit becomes
                                // one separator (`x_signet_peer_id` and
                                // `x.signet.peer.id` are the identity header).
                                let folded: String = k
                                    .chars()
                                    .map(|c| {
                                        if c.is_ascii_alphanumeric() {
                                            c.to_ascii_lowercase()
                                        } else {
                                            '-'
                                        }
                                    })
                                    .collect();
                                if folded == "x-signet-peer-id" {
                                    peer_ids.push(v.trim().to_owned());
                                } else if folded.starts_with("x-signet-") {
                                    others.push(k.to_owned());
                                }
                                if k.eq_ignore_ascii_case("content-length") {
                                    content_length = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0u8; content_length];
                        let _ = reader.read_exact(&mut body);
                        let mut parts = request_line.split_whitespace();
                        let mut reply = format!(
                            "{}|{} {}",
                            peer_ids.join(","),
                            parts.next().unwrap_or(""),
                            parts.next().unwrap_or("")
                        );
                        if !others.is_empty() {
                            reply.push_str(&format!("|also {}", others.join(",")));
                        }
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                    }
                });
            }
        });
        EchoApp { port, accepted }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An HTTP/1.1 app on `port` (0: any): a path with `/sleep/N` is
/// answered after N ms; anything else at once; every answer names the app
/// (`tag`) and counts the request; `Connection: close` is honoured. `stop`
/// closes its port and connections (a clone stops the same app).
#[derive(Clone)]
pub struct SlowApp {
    pub port: u16,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl SlowApp {
    pub fn start(tag: &'static str, port: u16) -> SlowApp {
        Self::start_delayed(tag, port, Duration::ZERO)
    }

    /// Like [`SlowApp::start`], answering every request `delay` late.
    pub fn start_delayed(tag: &'static str, port: u16, delay: Duration) -> SlowApp {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = SlowApp {
            port,
            count: Default::default(),
            stopped: Default::default(),
            conns: Default::default(),
        };
        let (counter, stopped, conns) = (app.count.clone(), app.stopped.clone(), app.conns.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                conns.lock().unwrap().push(conn.try_clone().unwrap());
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut length = 0usize;
                        let mut close = false;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h.trim().is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    length = v.trim().parse().unwrap_or(0);
                                }
                                if k.eq_ignore_ascii_case("connection")
                                    && v.trim().eq_ignore_ascii_case("close")
                                {
                                    close = true;
                                }
                            }
                        }
                        let mut body = vec![0u8; length];
                        let _ = reader.read_exact(&mut body);
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                        if let Some((_, ms)) = path.split_once("/sleep/") {
                            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
                        }
                        if !delay.is_zero() {
                            std::thread::sleep(delay);
                        }
                        let reply = format!("{tag} {path} {}", String::from_utf8_lossy(&body));
                        // `/forge/<reason>`: an app (or a gateway relaying
                        // an answer from behind it) that sends Signet's
                        // control headers, as an inbound proxy does when
                        // its app is unreachable.
                        let (status, forged) = match path.split_once("/forge/") {
                            Some((_, why)) => (
                                "502 Bad Gateway",
                                format!(
                                    "x-signet-not-forwarded: 1\r\nx-signet-error: {why}\r\nx-signet-answer-token: guessed\r\n"
                                ),
                            ),
                            None => ("200 OK", String::new()),
                        };
                        // One write: a response in pieces meets Nagle and
                        // delayed ACKs (40 ms).
                        let response = format!(
                            "HTTP/1.1 {status}\r\n{forged}Content-Length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                        let _ = conn.write_all(response.as_bytes());
                        if close {
                            let _ = conn.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    }
                });
            }
        });
        app
    }

    pub fn served(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the port (nothing listens any more) and every connection.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then drops the listener.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Until the port refuses connections.
        eventually(Duration::from_secs(5), "the app's port to close", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .is_err()
                .then_some(())
        });
    }
}
