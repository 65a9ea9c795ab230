//! # signet-proxy
//!
//! The sidecar: zero trust enforced on every hop. Each room is a module
//! with its folder (`inbound.rs` beside `inbound/`):
//!
//! ```text
//!   peer sidecar ──mTLS──▶ inbound ──policy(from = peer ID, to = our ID)──▶ local app
//!   local app ──plain──▶ outbound ──mTLS (server must be server_id)──▶ peer sidecar
//!                  ▲                          ▲
//!          tls (rustls configs reading the current SVID per handshake; refusal reasons)
//!                  ▲
//!          workload_identity (Workload API stream from the agent)
//!   policy::watch (file changes, SIGHUP) ──▶ policy (pure evaluation: deny > allow > default deny)
//!          └──▶ inbound::open_connections (close what a new policy revokes)
//! ```
//!
//! | room | what lives there |
//! | --- | --- |
//! | `inbound` | the TCP listener; `http` (HTTP mode), `tunnel` (the tunnel listener, port 15008), `app_health`, `registration` (the endpoint, registered while the app answers), `open_connections` |
//! | `outbound` | the listener and its allowed local users; `tcp` (failover per connection), `http` (per request: pooled HTTP/2, `retry_budget`, route timeouts, pending cap) |
//! | `tunnel` | the client side of the tunnel: `pool`, `stream` (one CONNECT stream as bytes), `connect_gate`, `pooled_credentials` |
//! | `upstream` | an outbound listener's endpoints (static, DNS, discovery via the agent's mesh API); `balancer` (P2C: active connections or `peak_ewma`), `outlier` (ejection), `connector` (TCP + TLS + server ID, shared by every mode) |
//! | `wire` | what proxies say to each other: `hbone` (HTTP/2 settings, CONNECT), `control_headers` |
//! | `policy` | rules, evaluation, loading, `watch` |
//! | `tls` | rustls configurations, `refusal` (metric reasons for TLS failures) |
//!
//! Beside them: `config`, `run` (start, ready line, drain), `listener`
//! (accept loops under admission), `forward` (byte relays), `metrics` and
//! `admin` (`/metrics`, `/ready`, `/live`).
//!
//! Between proxies, `wire::control_headers` (`x-signet-error`,
//! `x-signet-not-forwarded`) are verdicts only on an answer the peer proxy
//! made itself, proved by the answer token the caller sent; an app's
//! `x-signet-` headers are removed on the way.
//!
//! Long-lived connections carry new work only while their identities hold:
//! `tunnel::pooled_credentials` (our SVID unchanged, the server in
//! standing) for both pools; inbound, the caller's `PeerStanding` before
//! each tunnel stream and each HTTP request.

mod admin;
pub mod config;
mod forward;
mod inbound;
mod listener;
mod metrics;
mod outbound;
pub mod policy;
mod run;
mod tls;
mod tunnel;
mod upstream;
mod wire;
mod workload_identity;

// Public interface.
pub use config::ProxyConfig;
pub use run::{run, ProxyError};
