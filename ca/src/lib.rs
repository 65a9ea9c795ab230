//! # signet-ca
//!
//! Signet's certificate authority for one trust domain. Three rooms and
//! one door between them:
//!
//! ```text
//!   agents, signet CLI, Prometheus, OIDC relying parties
//!        │
//!        ▼
//!   api/       every listener and gRPC service: node (+ entry_stream, endpoint_streams,
//!              node_tls, attest_throttle), admin, health, oidc; one error → Status map
//!              (status), all protobuf conversions (convert)
//!        │  calls only
//!        ▼
//!   ca::Ca     the door: operations by concern (ca/agents: attest, renew, standing;
//!              ca/keys; ca/registry; ca/endpoints; ca/signing). The store is private to it.
//!        │
//!        ├──▶ node_attestation/  how a node proves itself: join tokens (spent by Ca),
//!        │               x509pop (chain + proof of possession), path_template
//!        ├──▶ keys/      authority, rotation (pure), slot (one driver: x509, jwt), issuance
//!        ├──▶ registry/  entry validation, entry_cache, change_feed, join_token,
//!        │               endpoint_publish, endpoint_registry
//!        └──▶ store/     sqlx: SQLite or PostgreSQL
//! ```
//!
//! `server` starts the listeners and the background loops (rotation, change
//! feed, pruning) and drains them on shutdown; `config` and `metrics` are
//! shared by all.

mod api;
mod ca;
pub mod config;
mod keys;
mod metrics;
mod node_attestation;
pub mod registry;
mod server;
mod store;

#[cfg(test)]
mod test_db;

// Public interface.
pub use ca::{AgentRefused, AgentSvid, AnyKey, Attestation, Ca, CaError, KeyKind, PublishedBundle};
pub use config::{CaConfig, ConfigError};
/// The CSR check agents' requests pass before anything is signed (the
/// fuzz targets drive it).
pub use keys::issuance::{check_csr, CheckedCsr, IssueError};
pub use node_attestation::{AttestedNode, Evidence, PendingProof};
pub use server::run;
