//! # signet-agent
//!
//! The node agent: one per host. It proves its node to the CA (a join
//! token, or by proof of possession: `node_attestation`), keeps its own
//! SVID and every workload's SVID fresh, and serves them to local processes
//! over the standard SPIFFE Workload API.
//!
//! ```text
//!   CA node API ◀──mTLS── node_client ◀── rotator::node_api::GrpcNodeApi ◀── rotator::SvidRotator ──publishes──▶ watch<Snapshot>
//!                          (agent SVID from agent_identity, data dir 0600)          │
//!                                                                                   ▼
//!   workload ──Unix socket──▶ workload_api::WorkloadApi ──workload_attestor::WorkloadAttestor (SO_PEERCRED, /proc, pidfd)
//!                                  │ FetchJWTSVID: jwt_svids::JwtSvidCache, miss ─▶ CA MintJwtSvid
//!   sidecar ──same socket──▶ mesh_api::MeshApi (same attestation)
//!                                  │ Register ─▶ local_endpoints ─▶ endpoint_publisher ─▶ CA PublishEndpoints
//!                                  │ Watch ──▶ endpoint_watches (one per identity, shared) ─▶ CA WatchEndpoints
//! ```
//!
//! The mesh's streams ride a connection of their own to the CA (made on
//! first use, `rotator::node_api::CaLinks::mesh`), so SVID renewal and JWT-SVID
//! minting never wait behind them for the CA's per-connection stream cap.
//!
//! The rotator is the only owner of certificate state; the Workload API
//! only reads published snapshots, so a fetch never waits on the CA. It
//! reaches the CA through the `rotator::node_api::NodeApi` trait and reads
//! time from an injected clock, so its schedule (`rotator::schedule`),
//! backoff and recovery are unit-tested without sleeping. Entries are typed
//! where they arrive (`rotator::sync` makes a `workload_entry::WorkloadEntry`
//! of each, with parsed SPIFFE ID and selectors), and callers are attested
//! into the same `Selector`s they are matched against.

pub mod agent_identity;
pub mod config;
mod endpoint_publisher;
mod endpoint_watches;
mod jwt_svids;
mod local_endpoints;
mod mesh_api;
mod metrics;
mod node_attestation;
pub mod node_client;
mod rotator;
mod run;
mod workload_api;
mod workload_attestor;
mod workload_entry;
mod workload_svids;

// Public interface.
pub use config::AgentConfig;
pub use run::{run, AgentError};
