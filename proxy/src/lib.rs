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
//! Failure handling for outbound upstreams, as plain data with the time
//! passed in: [`outlier`] (ejection of failing endpoints) and
//! [`retry_budget`] (retries bounded by the traffic), the first parts of
//! balancing over several endpoints; outbound listeners do not use them yet.

pub mod app_health;
pub mod balancer;
pub mod config;
mod forward;
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
pub mod refusal;
pub mod registration;
pub mod retry_budget;
mod run;
pub mod tls;
pub mod upstream;
pub mod workload_identity;

// Public interface.
pub use config::ProxyConfig;
pub use run::{run, ProxyError};
