//! # signet-test-support
//!
//! Shared helpers for tests across the workspace (never linked into a
//! daemon):
//!
//! | module | what |
//! | --- | --- |
//! | [`postgres`] | a real, throwaway PostgreSQL server started by the tests |
//! | [`process`] | the `signet` binary under test: commands, daemons and their logs, waiting |
//! | [`ca`] | [`CaProcess`]: a `signet ca run` of a test's own |
//! | [`agent`] | [`AgentProcess`]: a `signet agent run` attested to it |
//! | [`apps`] | apps behind the proxies: echo, slow/failing HTTP |
//! | [`mesh`] | a mesh of real processes, and the IDs and policies tests share |
//! | [`grpc`] | clients of the Workload, node and admin APIs |
//! | [`http`] | one HTTP client for tests, and reading metrics |
//! | [`go`], [`python`] | go-spiffe and py-spiffe clients we did not write |
//!
//! and [`free_port`]: a loopback port nobody listens on. The in-memory
//! certificate issuer for unit tests is `signet_identity::testing::TestCa`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod agent;
pub mod apps;
pub mod ca;
pub mod go;
pub mod grpc;
pub mod http;
pub mod mesh;
pub mod postgres;
pub mod process;
pub mod python;

pub use agent::*;
pub use apps::*;
pub use ca::*;
pub use grpc::*;
pub use http::{http_call, http_get, metric};
pub use mesh::*;
pub use process::*;

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
