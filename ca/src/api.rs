//! The CA's doors: every listener and the gRPC services behind them. What
//! comes in is checked here and turned into calls on [`crate::Ca`]; what
//! goes out is turned into protobuf here.
//!
//! ```text
//!   agents ──TLS 1.3 / mTLS──▶ node_tls ─▶ node::NodeService (attest_throttle)
//!                                              ├─ attest_stream (AttestNode: evidence, challenge, SVID)
//!                                              ├─ entry_stream (an agent's entries, pushed)
//!                                              └─ endpoint_streams (publish / watch the mesh's endpoints)
//!   signet CLI ──admin socket (0600)──▶ admin::AdminService
//!   Prometheus ──▶ health (/metrics /ready /live)
//!   OIDC relying parties ──▶ oidc (discovery + JWKS)
//! ```

pub(crate) mod admin;
pub(crate) mod attest_stream;
pub(crate) mod attest_throttle;
pub(crate) mod convert;
pub(crate) mod endpoint_streams;
pub(crate) mod entry_stream;
pub(crate) mod health;
pub(crate) mod node;
pub(crate) mod node_tls;
pub(crate) mod oidc;
pub(crate) mod status;
