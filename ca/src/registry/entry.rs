//! Registration entries: which workload, on which agent, gets which SPIFFE ID.
//! Everything an administrator sends is validated here before it is stored.

use std::time::Duration;

use serde::Serialize;
use signet_identity::{SpiffeId, TrustDomain};

pub use signet_identity::reserved::{AGENT_PATH_PREFIX, RESERVED_PATH_PREFIX, SERVER_PATH};
pub use signet_identity::selector::Selector;
use signet_identity::selector::SelectorError;

/// Why an entry (or a selector) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The SPIFFE ID is malformed.
    #[error("invalid --spiffe-id {id:?}: {reason}")]
    BadSpiffeId {
        /// What was given.
        id: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The parent ID is malformed.
    #[error("invalid --parent-id {id:?}: {reason}")]
    BadParentId {
        /// What was given.
        id: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A selector is malformed or of an unknown type.
    #[error("invalid selector {selector:?}: {reason}")]
    BadSelector {
        /// What was given.
        selector: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No selector at all would match every process on the node.
    #[error("an entry needs at least one selector (e.g. --selector unix:uid:1000)")]
    NoSelectors,
    /// Asked-for TTL beyond the CA's maximum.
    #[error("x509 SVID TTL {asked}s exceeds the CA's maximum of {max}s; ask for less or raise max_x509_svid_ttl")]
    TtlTooLong {
        /// Requested seconds.
        asked: u64,
        /// The configured maximum.
        max: u64,
    },
    /// Negative TTL.
    #[error("SVID TTLs must not be negative")]
    NegativeTtl,
    /// Asked-for JWT-SVID TTL beyond the CA's maximum.
    #[error("JWT-SVID TTL {asked}s exceeds the CA's maximum of {max}s; ask for less or raise max_jwt_svid_ttl")]
    JwtTtlTooLong {
        /// Requested seconds.
        asked: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A DNS name that cannot go into a certificate.
    #[error(
        "invalid DNS name {0:?}: use letters, digits, '-' and '.', optionally starting with '*.'"
    )]
    BadDnsName(String),
    /// The hint is too long or holds control characters.
    #[error("hint: at most 1024 bytes of printable text")]
    BadHint,
}

/// The validated fields of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntrySpec {
    /// The identity the workload gets.
    pub spiffe_id: SpiffeId,
    /// The agent allowed to obtain it.
    pub parent_id: SpiffeId,
    /// Sorted, deduplicated.
    pub selectors: Vec<Selector>,
    /// 0: the CA's default.
    pub x509_svid_ttl: u64,
    /// DNS SANs to include.
    pub dns_names: Vec<String>,
    /// Reserved for admin workloads.
    pub admin: bool,
    /// Operator guidance sent with the SVID on the Workload API (`hint`):
    /// which of several SVIDs to use for what. Empty: none.
    pub hint: String,
    /// JWT-SVID lifetime, seconds; 0: the CA's default.
    pub jwt_svid_ttl: u64,
}

/// Longest hint accepted, bytes.
pub const MAX_HINT_LEN: usize = 1024;

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Opaque unique ID (UUID).
    pub id: String,
    /// The fields.
    #[serde(flatten)]
    pub spec: EntrySpec,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Starts at 1, bumped on each update.
    pub revision: i64,
}

/// Entry fields as an administrator sends them, before validation.
#[derive(Debug, Clone, Default)]
pub struct EntryInput {
    /// SPIFFE ID text.
    pub spiffe_id: String,
    /// Parent ID text.
    pub parent_id: String,
    /// `type:value` texts.
    pub selectors: Vec<String>,
    /// Seconds; 0 for default.
    pub x509_svid_ttl: i64,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// Admin flag.
    pub admin: bool,
    /// Workload API hint.
    pub hint: String,
    /// JWT-SVID seconds; 0 for default.
    pub jwt_svid_ttl: i64,
}

fn valid_dns_name(name: &str) -> bool {
    signet_identity::endpoint::valid_dns_name(name, true)
}

impl EntryInput {
    /// Validates against the CA's trust domain and maximum TTL.
    pub fn validate(
        &self,
        td: &TrustDomain,
        max_ttl: Duration,
        max_jwt_ttl: Duration,
    ) -> Result<EntrySpec, EntryError> {
        let spiffe_id = SpiffeId::parse(&self.spiffe_id).map_err(|e| EntryError::BadSpiffeId {
            id: self.spiffe_id.clone(),
            reason: e.to_string(),
        })?;
        let bad_id = |reason: String| EntryError::BadSpiffeId {
            id: self.spiffe_id.clone(),
            reason,
        };
        if spiffe_id.trust_domain_name() != td.as_str() {
            return Err(bad_id(format!("not in this CA's trust domain {td}")));
        }
        if spiffe_id.is_root() {
            return Err(bad_id(
                "a workload ID needs a path, e.g. spiffe://<td>/app".into(),
            ));
        }
        let reserved = td
            .spiffe_id(RESERVED_PATH_PREFIX)
            .map_err(|e| bad_id(e.to_string()))?;
        if spiffe_id.is_under(&reserved) {
            return Err(bad_id(format!(
                "{RESERVED_PATH_PREFIX}/... is reserved for Signet's own identities (agents, CA server)"
            )));
        }
        let parent_id = SpiffeId::parse(&self.parent_id).map_err(|e| EntryError::BadParentId {
            id: self.parent_id.clone(),
            reason: e.to_string(),
        })?;
        if parent_id.trust_domain_name() != td.as_str() {
            return Err(EntryError::BadParentId {
                id: self.parent_id.clone(),
                reason: format!("not in this CA's trust domain {td}"),
            });
        }
        let mut selectors = self
            .selectors
            .iter()
            .map(|s| Selector::parse(s))
            .collect::<Result<Vec<_>, SelectorError>>()
            .map_err(|e| EntryError::BadSelector {
                selector: e.selector,
                reason: e.reason,
            })?;
        selectors.sort();
        selectors.dedup();
        if selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        if self.x509_svid_ttl < 0 || self.jwt_svid_ttl < 0 {
            return Err(EntryError::NegativeTtl);
        }
        let ttl = self.x509_svid_ttl as u64;
        if ttl > max_ttl.as_secs() {
            return Err(EntryError::TtlTooLong {
                asked: ttl,
                max: max_ttl.as_secs(),
            });
        }
        let jwt_svid_ttl = self.jwt_svid_ttl as u64;
        if jwt_svid_ttl > max_jwt_ttl.as_secs() {
            return Err(EntryError::JwtTtlTooLong {
                asked: jwt_svid_ttl,
                max: max_jwt_ttl.as_secs(),
            });
        }
        let mut dns_names = Vec::new();
        for name in &self.dns_names {
            let name = name.to_ascii_lowercase();
            if !valid_dns_name(&name) {
                return Err(EntryError::BadDnsName(name));
            }
            if !dns_names.contains(&name) {
                dns_names.push(name);
            }
        }
        if self.hint.len() > MAX_HINT_LEN || self.hint.chars().any(char::is_control) {
            return Err(EntryError::BadHint);
        }
        Ok(EntrySpec {
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: ttl,
            dns_names,
            admin: self.admin,
            hint: self.hint.clone(),
            jwt_svid_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> EntryInput {
        EntryInput {
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/signet/agent/node1".into(),
            selectors: vec!["unix:uid:1000".into()],
            ..Default::default()
        }
    }

    fn check(i: EntryInput) -> Result<EntrySpec, EntryError> {
        i.validate(
            &TrustDomain::new("example.org").unwrap(),
            Duration::from_secs(3600),
            Duration::from_secs(600),
        )
    }

    #[test]
    fn every_selector_kind_is_validated() {
        for ok in [
            "unix:uid:0",
            "unix:gid:1000",
            "unix:user:www-data",
            "unix:group:staff",
            "unix:path:/usr/bin/app",
            &format!("unix:sha256:{}", "ab".repeat(32)),
        ] {
            Selector::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "uid:1000",
            "k8s:ns:default",
            "unix:uid:-1",
            "unix:uid:abc",
            "unix:path:relative",
            "unix:sha256:xyz",
            "unix:pid:1",
            "unix",
            "unix:user:",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let mut i = input();
        i.spiffe_id = "spiffe://example.org/bad//id".into();
        assert!(matches!(check(i), Err(EntryError::BadSpiffeId { .. })));
        let mut i = input();
        i.spiffe_id = "spiffe://other.org/web".into();
        assert!(matches!(check(i), Err(EntryError::BadSpiffeId { .. })));
        let mut i = input();
        i.spiffe_id = "spiffe://example.org/signet/agent/fake".into();
        assert!(matches!(check(i), Err(EntryError::BadSpiffeId { .. })));
        let mut i = input();
        i.spiffe_id = "spiffe://example.org/signet/server".into();
        assert!(matches!(check(i), Err(EntryError::BadSpiffeId { .. })));
        let mut i = input();
        i.spiffe_id = "spiffe://example.org".into();
        assert!(matches!(check(i), Err(EntryError::BadSpiffeId { .. })));
        let mut i = input();
        i.parent_id = "not-an-id".into();
        assert!(matches!(check(i), Err(EntryError::BadParentId { .. })));
        let mut i = input();
        i.selectors.clear();
        assert_eq!(check(i), Err(EntryError::NoSelectors));
        let mut i = input();
        i.selectors = vec!["docker:label:x".into()];
        assert!(matches!(check(i), Err(EntryError::BadSelector { .. })));
        let mut i = input();
        i.x509_svid_ttl = 3601;
        assert_eq!(
            check(i),
            Err(EntryError::TtlTooLong {
                asked: 3601,
                max: 3600
            })
        );
        // The JWT-SVID TTL cap, both sides of it.
        let mut i = input();
        i.jwt_svid_ttl = 600;
        assert_eq!(check(i).unwrap().jwt_svid_ttl, 600);
        let mut i = input();
        i.jwt_svid_ttl = 601;
        assert_eq!(
            check(i),
            Err(EntryError::JwtTtlTooLong {
                asked: 601,
                max: 600
            })
        );
        let mut i = input();
        i.jwt_svid_ttl = -1;
        assert_eq!(check(i), Err(EntryError::NegativeTtl));
        let mut i = input();
        i.dns_names = vec!["bad_name.example".into()];
        assert!(matches!(check(i), Err(EntryError::BadDnsName(_))));
    }

    #[test]
    fn selectors_are_canonicalised() {
        let mut i = input();
        i.selectors = vec![
            "unix:uid:1".into(),
            "unix:gid:2".into(),
            "unix:uid:1".into(),
        ];
        let spec = check(i).unwrap();
        let s: Vec<String> = spec.selectors.iter().map(|s| s.to_string()).collect();
        assert_eq!(s, vec!["unix:gid:2", "unix:uid:1"]);
    }

    #[test]
    fn hints_are_kept_when_printable_and_short() {
        let td = TrustDomain::new("example.org").unwrap();
        let max = Duration::from_secs(86400);
        let mut i = input();
        i.hint = "internal".into();
        assert_eq!(i.validate(&td, max, max).unwrap().hint, "internal");
        i.hint = "x".repeat(MAX_HINT_LEN);
        assert!(i.validate(&td, max, max).is_ok());
        i.hint = "x".repeat(MAX_HINT_LEN + 1);
        assert!(matches!(
            i.validate(&td, max, max),
            Err(EntryError::BadHint)
        ));
        i.hint = "a\nb".into();
        assert!(matches!(
            i.validate(&td, max, max),
            Err(EntryError::BadHint)
        ));
    }
}
