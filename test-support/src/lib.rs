//! # signet-test-support
//!
//! Shared helpers for tests across the workspace (never linked into a
//! daemon):
//!
//! - [`postgres`]: a real, throwaway PostgreSQL server started by the tests;
//! - [`free_port`]: a loopback port nobody listens on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod postgres;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}
