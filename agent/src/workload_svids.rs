//! What the agent currently holds for its workloads: the entries parented to
//! it, an SVID (with key) for each, and the bundle. The rotator publishes a
//! new [`Snapshot`] on every change; Workload API streams watch it.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use signet_identity::selector::Selector;
use signet_identity::TrustBundle;

use crate::workload_entry::WorkloadEntry;

/// An SVID the agent holds for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkloadSvid {
    /// The entry it was issued for.
    pub entry_id: String,
    /// The entry revision it reflects (an update re-issues).
    pub entry_revision: i64,
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// DER chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER key, generated on this node.
    pub key_pkcs8: Vec<u8>,
    /// When the agent received it, Unix seconds (rotation is timed from
    /// here: notBefore is backdated for clock skew).
    pub issued_at: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The key ID of the CA key that signed it (the leaf's authority key
    /// identifier): when the CA taints that key, the SVID is replaced.
    pub signed_by: Option<Vec<u8>>,
}

/// Everything the Workload API serves, at one instant.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The trust domain's bundle.
    pub bundle: Option<Arc<TrustBundle>>,
    /// Entries parented to this agent, as last synced.
    pub entries: Vec<WorkloadEntry>,
    /// The kids of JWT keys the CA tainted: cached tokens they signed are
    /// not handed out.
    pub tainted_jwt: Vec<String>,
    /// SVIDs by entry, for entries that have one.
    pub svids: Vec<Arc<WorkloadSvid>>,
}

impl Snapshot {
    /// Whether a JWT-SVID signed by key `kid` may still be handed out: the
    /// key is in the bundle (not revoked, not expired) and not tainted.
    pub(crate) fn jwt_signer_trusted(&self, kid: &str) -> bool {
        let published = self
            .bundle
            .as_ref()
            .is_some_and(|b| b.jwt_authorities().iter().any(|a| a.kid() == kid));
        published && !self.tainted_jwt.iter().any(|t| t == kid)
    }

    /// An empty snapshot (before the first sync).
    pub(crate) fn empty() -> Self {
        Self {
            bundle: None,
            tainted_jwt: Vec::new(),
            entries: Vec::new(),
            svids: Vec::new(),
        }
    }

    /// Entries whose selectors are all among `caller`'s selectors.
    pub(crate) fn matching_entries<'a>(
        &'a self,
        caller: &'a [Selector],
    ) -> impl Iterator<Item = &'a WorkloadEntry> + 'a {
        self.entries.iter().filter(move |e| e.matches(caller))
    }

    /// Whether any entry needs the binary's sha256 to be matched.
    pub(crate) fn needs_sha256(&self) -> bool {
        self.entries.iter().any(|e| {
            e.selectors
                .iter()
                .any(signet_identity::selector::unix::is_sha256)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, selectors: &[&str]) -> WorkloadEntry {
        WorkloadEntry {
            id: id.into(),
            revision: 1,
            spiffe_id: signet_identity::SpiffeId::parse("spiffe://example.org/w").unwrap(),
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
            hint: String::new(),
        }
    }

    fn selectors(all: &[&str]) -> Vec<Selector> {
        all.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn a_caller_matches_only_when_it_has_every_selector() {
        let s = Snapshot {
            bundle: None,
            tainted_jwt: Vec::new(),
            entries: vec![
                entry("a", &["unix:uid:1000"]),
                entry("b", &["unix:uid:1000", "unix:path:/usr/bin/app"]),
                entry("c", &["unix:uid:1001"]),
                entry("empty", &[]),
            ],
            svids: Vec::new(),
        };
        let caller = selectors(&["unix:uid:1000", "unix:gid:1000", "unix:path:/bin/sh"]);
        let ids: Vec<&str> = s.matching_entries(&caller).map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["a"],
            "partial matches and entries without selectors never match"
        );
        let other = selectors(&["unix:uid:0"]);
        assert_eq!(s.matching_entries(&other).count(), 0);
    }
}
