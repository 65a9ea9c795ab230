//! # signet-test-support
//!
//! Shared helpers for tests across the workspace (never linked into a
//! daemon):
//!
//! - [`postgres`]: a real, throwaway PostgreSQL server started by the tests;
//! - [`free_port`]: a loopback port nobody listens on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod postgres;

/// A TCP port on 127.0.0.1 that was free a moment ago, from below the
/// kernel's ephemeral range (32768-60999 by default): a port the kernel
/// handed out for `bind(:0)` could be handed out again to a daemon's own
/// `:0` listener before the test binds it. Each process walks the range
/// from a random start, so concurrent test binaries rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        let _ = NEXT.compare_exchange(u32::MAX, seed % COUNT, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999 on 127.0.0.1")
}
