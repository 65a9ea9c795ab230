//! # signet-identity
//!
//! The SPIFFE identity core every Signet component shares: the CA issues with
//! it, the agent checks what it serves with it, the proxy authenticates peers
//! with it. One implementation of the rules, so that no two components can
//! disagree about who a peer is.
//!
//! ```text
//!   SpiffeId / TrustDomain      parse + validate (SPIFFE-ID.md)
//!          │
//!   x509_svid                   the X.509-SVID profile: what is issued, what each rule forbids
//!          │
//!   verify_x509_svid(chain, &TrustBundle, now) -> VerifiedSvid
//!          │
//!   TrustBundle                 authorities of a trust domain, PEM and SPIFFE JWKS
//!   jwt_svid                    JWT authorities, signing, check_jwt_svid (every broken rule)
//!   selector, reserved          the selector grammar; SPIFFE ID paths Signet keeps for itself
//!   node_attestation            method names and the challenge a node signs (CA and agent agree)
//!   files                       atomic writes of keys (0600 from the first byte) and certificates
//!   clock                       the system clock, or a manual one tests drive
//!   endpoint                    mesh endpoints: address, protocol, weight, zone and their limits
//!
//!   tls                         rustls verifiers; established_peer (safe against resumption)
//!   peer_standing               a long-lived connection's peer checked again per new stream
//!   admission                   connection caps every listener applies before parsing a byte
//!   http_serve                  the small HTTP listeners (metrics, health, discovery) under those caps
//!   workload_api                the Workload API's header, socket address and client channel
//!   unix_grpc                   a gRPC client channel on a Unix socket (Workload API, admin API)
//!   daemon                      log setup, shutdown signal, config file: the same in every daemon
//! ```
//!
//! ```
//! use signet_identity::SpiffeId;
//! let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
//! assert_eq!(id.trust_domain_name(), "example.org");
//! assert_eq!(id.path(), "/ns/prod/sa/web");
//! ```

pub mod admission;
mod bundle;
pub mod clock;
pub mod daemon;
pub mod endpoint;
pub mod files;
pub mod http_serve;
mod inspect;
pub mod jwt_svid;
pub mod node_attestation;
pub mod peer_standing;
pub mod reserved;
pub mod selector;
mod spiffe_id;
pub mod tls;
pub mod unix_grpc;
mod verify;
pub mod workload_api;
pub mod x509_svid;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

// Public interface.
pub use bundle::{
    certificates_from_der_concat, certificates_from_pem, certificates_from_pem_or_der,
    certificates_to_pem, BundleError, TrustBundle,
};
pub use inspect::{inspect_chain, key_type, spki_key_type, CertSummary};
pub use spiffe_id::{
    validate_path, IdError, SpiffeId, TrustDomain, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN,
};
pub use verify::{verify_x509_svid, SvidError, VerifiedSvid};
pub use x509_svid::Violation;

/// Re-exported so that dependents name certificates with the same type.
pub use rustls_pki_types::CertificateDer;
