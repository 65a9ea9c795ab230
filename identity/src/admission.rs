//! Admission of connections on every Signet listener, before any byte is
//! parsed: a cap on open connections per listener, and a cap per source
//! (an IP address, a local uid) on connections that have not yet proved
//! who they are. One flood from one source then cannot use up the
//! descriptors, memory or handshake capacity that everyone else needs.
//!
//! Also [`raise_fd_limit`]: daemons take the hard limit on open files as
//! their soft limit at start (the default soft limit, 1,024, is what a few
//! hundred idle connections exhaust).

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its maximum of open connections.
    Full,
    /// This source holds its maximum of unauthenticated connections.
    SourceLimit,
}

impl Refused {
    /// Short label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "max_connections",
            Refused::SourceLimit => "max_per_source",
        }
    }
}

/// The caps of one listener.
#[derive(Debug)]
pub struct Admission<K> {
    max_open: usize,
    max_per_source: usize,
    open: AtomicUsize,
    per_source: Mutex<HashMap<K, usize>>,
}

/// An admitted connection: holds its place until dropped.
#[derive(Debug)]
pub struct Ticket<K: Hash + Eq + Clone> {
    admission: Arc<Admission<K>>,
    /// The source, while the connection still counts against it.
    source: Option<K>,
}

impl<K: Hash + Eq + Clone> Admission<K> {
    /// A listener that admits at most `max_open` connections, at most
    /// `max_per_source` of them per source until [`Ticket::established`].
    pub fn new(max_open: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_open,
            max_per_source,
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
        })
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.per_source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `source`, or says why not.
    pub fn admit(self: &Arc<Self>, source: K) -> Result<Ticket<K>, Refused> {
        let mut sources = self.sources();
        let from_source = sources.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(Refused::SourceLimit);
        }
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_open).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refused::Full);
        }
        sources.insert(source.clone(), from_source + 1);
        Ok(Ticket {
            admission: self.clone(),
            source: Some(source),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections from `source` that still count against it.
    pub fn from_source(&self, source: &K) -> usize {
        self.sources().get(source).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Ticket<K> {
    /// The peer has authenticated: it no longer counts against its source's
    /// cap (only against the listener's).
    pub fn established(&mut self) {
        if let Some(source) = self.source.take() {
            release(&self.admission, &source);
        }
    }
}

fn release<K: Hash + Eq + Clone>(admission: &Admission<K>, source: &K) {
    let mut sources = admission.sources();
    if let Some(n) = sources.get_mut(source) {
        *n -= 1;
        if *n == 0 {
            sources.remove(source);
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Ticket<K> {
    fn drop(&mut self) {
        if let Some(source) = self.source.take() {
            release(&self.admission, &source);
        }
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that holds its [`Ticket`] for as long as it is open: hand
/// it to a server in place of the raw stream and the place is given back
/// when the server drops the connection.
#[derive(Debug)]
pub struct Admitted<S, K: Hash + Eq + Clone> {
    io: S,
    _ticket: Ticket<K>,
}

impl<S, K: Hash + Eq + Clone> Admitted<S, K> {
    /// `io`, holding `ticket`.
    pub fn new(io: S, ticket: Ticket<K>) -> Self {
        Self {
            io,
            _ticket: ticket,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S, K> tokio::io::AsyncRead for Admitted<S, K>
where
    S: tokio::io::AsyncRead + Unpin,
    K: Hash + Eq + Clone + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S, K> tokio::io::AsyncWrite for Admitted<S, K>
where
    S: tokio::io::AsyncWrite + Unpin,
    K: Hash + Eq + Clone + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S, K> tonic::transport::server::Connected for Admitted<S, K>
where
    S: tonic::transport::server::Connected,
    K: Hash + Eq + Clone,
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Says when a refusal is worth a log line: the first time in `interval`
/// for its source and reason. A flood is then visible (one line per source
/// and limit a minute, with the limit's name) without writing a line per
/// refused connection.
#[derive(Debug)]
pub struct RefusalLog<K> {
    interval: std::time::Duration,
    seen: Mutex<HashMap<(K, &'static str), std::time::Instant>>,
}

/// Sources remembered at most; past it, those outside the interval are
/// forgotten (and if none is, all are).
const REFUSAL_LOG_SOURCES: usize = 4096;

impl<K: Hash + Eq + Clone> RefusalLog<K> {
    /// One line per source and reason per `interval`.
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a refusal of `source` for `reason` at `now` is the first in
    /// its interval (and so should be logged).
    pub fn first_in_interval(
        &self,
        source: K,
        reason: &'static str,
        now: std::time::Instant,
    ) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (source, reason);
        if let Some(last) = seen.get(&key) {
            if now.saturating_duration_since(*last) < self.interval {
                return false;
            }
        }
        if seen.len() >= REFUSAL_LOG_SOURCES {
            let interval = self.interval;
            seen.retain(|_, at| now.saturating_duration_since(*at) < interval);
            if seen.len() >= REFUSAL_LOG_SOURCES {
                seen.clear();
            }
        }
        seen.insert(key, now);
        true
    }
}

/// Raises this process's soft limit on open files to its hard limit, and
/// returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (current.current, current.maximum) {
        let target = max.unwrap_or(1 << 20);
        if target > cur
            && setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(target),
                    maximum: max,
                },
            )
            .is_ok()
        {
            return target;
        }
        return cur;
    }
    u64::MAX
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_no_more_until_it_authenticates() {
        let a = Admission::new(10, 2);
        let t1 = a.admit("x").unwrap();
        let mut t2 = a.admit("x").unwrap();
        assert_eq!(a.admit("x").unwrap_err(), Refused::SourceLimit);
        let _other = a.admit("y").expect("another source is not affected");
        t2.established();
        let _t3 = a
            .admit("x")
            .expect("an authenticated connection frees its source slot");
        assert_eq!(a.admit("x").unwrap_err(), Refused::SourceLimit);
        drop(t1);
        assert!(a.admit("x").is_ok());
        assert_eq!(a.open(), 3, "t2, other, t3 remain");
    }

    #[test]
    fn the_listener_cap_holds_at_its_limit_and_frees_on_drop() {
        let a = Admission::new(3, 100);
        let tickets: Vec<_> = (0..3).map(|i| a.admit(i).unwrap()).collect();
        assert_eq!(a.admit(99).unwrap_err(), Refused::Full);
        assert_eq!(
            a.from_source(&99),
            0,
            "a refused connection leaves no trace"
        );
        drop(tickets);
        assert_eq!(a.open(), 0);
        assert!(a.admit(99).is_ok());
    }

    #[test]
    fn a_refusal_is_logged_once_per_source_and_reason_per_interval() {
        let log = RefusalLog::new(std::time::Duration::from_secs(60));
        let t0 = std::time::Instant::now();
        assert!(log.first_in_interval("a", "max_connections", t0));
        assert!(!log.first_in_interval(
            "a",
            "max_connections",
            t0 + std::time::Duration::from_secs(59)
        ));
        assert!(
            log.first_in_interval("a", "max_per_source", t0),
            "another limit"
        );
        assert!(
            log.first_in_interval("b", "max_connections", t0),
            "another source"
        );
        assert!(log.first_in_interval(
            "a",
            "max_connections",
            t0 + std::time::Duration::from_secs(60)
        ));
        // Bounded: a flood from many sources forgets the old ones.
        let many = RefusalLog::new(std::time::Duration::from_secs(60));
        for i in 0..(REFUSAL_LOG_SOURCES + 10) {
            assert!(many.first_in_interval(i, "r", t0));
        }
        assert!(many.seen.lock().unwrap().len() <= REFUSAL_LOG_SOURCES);
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let limit = raise_fd_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(limit));
        assert!(now.maximum.is_none_or(|max| max == limit));
    }
}
