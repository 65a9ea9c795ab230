//! Outbound: plaintext from the local app, mTLS to the peer's sidecar with
//! our SVID; the upstream must present the expected SPIFFE ID.
//!
//! ```text
//!   local app ──▶ listener::Outbound (local_peer: may this uid use our identity?)
//!                   ├─ TCP mode: per connection, failover before the first app byte,
//!                   │            over a tunnel stream (crate::tunnel) or a TLS connection of its own
//!                   └─ http::HttpState (HTTP mode: per request, pooled HTTP/2,
//!                                       retry_budget, route timeouts, pending cap)
//!   both reach an endpoint through crate::upstream::connector::Connector
//! ```

pub(crate) mod http;
mod listener;
pub(crate) mod local_peer;
pub(crate) mod retry_budget;
mod target;
mod tcp;

pub(crate) use listener::Outbound;
pub(crate) use target::{Target, TunnelMode};
