//! # signet-ca
//!
//! Signet's certificate authority for one trust domain.
//!
//! ```text
//!              admin socket (gRPC, 0600)          /metrics /ready /live
//!                      │                                   │
//!   signet CLI ──▶ admin::AdminService ──┐          health::serve
//!                                        ▼
//!                                   ca::Ca (shared state)
//!                        ┌───────────────┼─────────────────┐
//!                        ▼               ▼                 ▼
//!               authority::Authority  store::Store   issuance::sign_x509_svid
//!               (signing keys, files  (sqlx: SQLite   (CSR → X.509-SVID chain)
//!                0600, bundle)         or Postgres)
//! ```
//!
//! Entries ([`entry`]) and join tokens ([`join_token`]) are validated before
//! they are stored; nothing from outside is trusted.

pub mod admin;
pub mod authority;
mod ca;
pub mod config;
pub mod entry;
pub mod health;
pub mod issuance;
pub mod join_token;
pub mod metrics;
pub mod server;
pub mod store;

#[cfg(test)]
mod test_db;

// Public interface.
pub use ca::{Ca, CaError};
pub use config::{CaConfig, ConfigError};
pub use server::run;
