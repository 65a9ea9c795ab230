//! # signet-ca
//!
//! Signet's certificate authority for one trust domain.
//!
//! ```text
//!   agents ──TLS 1.3 / mTLS──▶ node_tls ─▶ node_api::NodeService ─┐
//!   signet CLI ──admin socket (0600)──▶ admin::AdminService ─────┤
//!   Prometheus ──▶ health::serve (/metrics /ready /live) ────────┤
//!   OIDC relying parties ──▶ oidc::serve (discovery + JWKS) ──────┤
//!                                                                 ▼
//!                                                        ca::Ca (shared state)
//!                          ┌──────────────────────────────────┼──────────────────────┐
//!                          ▼                                  ▼                      ▼
//!              authority::Authority                    store::Store       issuance::sign_x509_svid
//!              (signing key: file 0600,                (sqlx: SQLite      (CSR → X.509-SVID chain)
//!               certificate + bundle in the DB)         or PostgreSQL)
//! ```
//!
//! JWT-SVIDs are signed with keys apart from the X.509 ones, rotated by
//! [`jwt_keys`] (prepared → active → old, each published before it signs).
//! Entries ([`entry`]) and join tokens ([`join_token`]) are validated before
//! they are stored; nothing from outside is trusted.
//!
//! The mesh's endpoint registry: agents publish their node's endpoints
//! ([`endpoint_streams`], checked by [`endpoint_publish`]), stored with the
//! change feed so replicas share them, and served to watchers from memory
//! ([`endpoint_registry`]).

pub mod admin;
pub mod attest_throttle;
pub mod authority;
mod ca;
pub mod change_feed;
pub mod config;
pub mod endpoint_publish;
pub mod endpoint_registry;
pub mod endpoint_streams;
pub mod entry;
pub mod entry_cache;
pub mod entry_stream;
pub mod health;
pub mod issuance;
pub mod join_token;
pub mod jwt_keys;
pub mod metrics;
pub mod node_api;
pub mod node_tls;
pub mod oidc;
pub mod rotation;
pub mod server;
pub mod store;
pub mod x509_keys;

#[cfg(test)]
mod test_db;

// Public interface.
pub use ca::{AnyKey, Ca, CaError, KeyKind, PublishedBundle};
pub use config::{CaConfig, ConfigError};
pub use server::run;
