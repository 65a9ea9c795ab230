//! The CA's keys and what they sign.
//!
//! ```text
//!   rotation (pure: prepared → active → old, each published before it signs)
//!   slot (one driver for both kinds: rotate, prepare, activate, taint, revoke)
//!        ├─ x509  (X509Slot: X.509 signing keys, self-signed or upstream)
//!        └─ jwt   (JwtSlot: JWT-SVID signing keys)
//!   authority::Authority (one X.509 signing key, its certificate and chain)
//!   issuance (CSR → X.509-SVID chain; JWT-SVID claims)
//! ```

pub(crate) mod authority;
pub(crate) mod issuance;
pub(crate) mod jwt;
pub(crate) mod rotation;
pub(crate) mod slot;
pub(crate) mod x509;
