//! # signet-proxy
//!
//! The sidecar: zero trust enforced on every hop.
//!
//! ```text
//!   peer sidecar ──mTLS──▶ inbound ──policy(from = peer ID, to = our ID)──▶ local app
//!   local app ──plain──▶ outbound ──mTLS (server must be server_id)──▶ peer sidecar
//!                  ▲                          ▲
//!          tls (rustls configs reading the current SVID per handshake)
//!                  ▲
//!          workload_identity (Workload API stream from the agent)
//!   policy_watch (file changes, SIGHUP) ──▶ policy (pure evaluation: deny > allow > default deny)
//!          └──▶ open_connections (close what a new policy revokes)
//! ```
//!
//! Finding, balancing and surviving (outbound):
//!
//! ```text
//!   upstream::Source (static list | DNS | discovery via the agent's mesh API)
//!        ──▶ upstream::Upstream ── balancer::Balancer (P2C: active connections, or peak_ewma)
//!                                        └── outlier::Outliers (ejection)
//!   outbound (TCP: per connection, failover before the first app byte)
//!   http_outbound (HTTP: per request, pooled HTTP/2, retry_budget, route timeouts, pending cap)
//!   inbound ── app_health ──▶ registration (the endpoint, registered while the app answers)
//! ```
//!
//! The tunnel (HBONE-compatible HTTP/2 CONNECT over pooled mTLS):
//!
//! ```text
//!   outbound (TCP) ── tunnel_pool (connections per endpoint tunnel port, streams capped per connection)
//!        ══ h2_stream (one CONNECT stream as bytes) ══▶ tunnel_inbound (port 15008; target = the app only)
//!                                                         └── inbound (policy per stream, relay to the app)
//!   tunnel: window sizes, keepalive pings, the CONNECT request
//! ```
//!
//! Between proxies, `control_headers` (`x-signet-error`,
//! `x-signet-not-forwarded`) are verdicts only on an answer the peer proxy
//! made itself, proved by the answer token the caller sent; an app's
//! `x-signet-` headers are removed on the way.
//!
//! Long-lived connections carry new work only while their identities hold:
//! `pooled_credentials` (our SVID unchanged, the server in standing) for
//! both pools; inbound, the caller's `PeerStanding` before each tunnel
//! stream and each HTTP request.

pub mod app_health;
pub mod balancer;
pub mod config;
pub mod connect_gate;
pub mod control_headers;
mod forward;
pub mod h2_stream;
pub mod http;
pub mod http_outbound;
pub mod inbound;
mod listener;
pub mod local_peer;
pub mod metrics;
pub mod open_connections;
pub mod outbound;
pub mod outlier;
pub mod peak_ewma;
pub mod policy;
pub mod policy_watch;
pub mod pooled_credentials;
pub mod refusal;
pub mod registration;
pub mod retry_budget;
mod run;
#[cfg(test)]
mod test_pools;
pub mod tls;
pub mod tunnel;
pub mod tunnel_inbound;
pub mod tunnel_pool;
pub mod upstream;
pub mod workload_identity;

// Public interface.
pub use config::ProxyConfig;
pub use run::{run, ProxyError};
