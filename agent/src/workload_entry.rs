//! An entry parented to this agent, typed where it comes in: the entry
//! stream's protobuf is converted once, so the rest of the agent matches
//! parsed [`Selector`]s and hands out a parsed [`SpiffeId`].

use signet_identity::selector::Selector;
use signet_identity::SpiffeId;
use signet_proto::node as pb;

/// One registration entry this agent issues SVIDs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkloadEntry {
    /// The CA's entry ID (what SVIDs are asked for by).
    pub id: String,
    /// Its revision: an SVID issued for an older one is replaced.
    pub revision: i64,
    /// The identity its workloads get.
    pub spiffe_id: SpiffeId,
    /// A caller matches when it has every one of these (never when empty).
    pub selectors: Vec<Selector>,
    /// The Workload API hint of its SVIDs.
    pub hint: String,
}

/// Why an entry from the CA cannot be used here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EntryError {
    /// Its SPIFFE ID does not parse.
    #[error("entry {id}: spiffe_id {value:?}: {reason}")]
    SpiffeId {
        /// The entry.
        id: String,
        /// What was sent.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A selector does not parse (a type this agent cannot attest).
    #[error("entry {id}: {source}")]
    Selector {
        /// The entry.
        id: String,
        /// The selector's error.
        source: signet_identity::selector::SelectorError,
    },
}

impl TryFrom<pb::WorkloadEntry> for WorkloadEntry {
    type Error = EntryError;

    fn try_from(e: pb::WorkloadEntry) -> Result<Self, EntryError> {
        let spiffe_id = SpiffeId::parse(&e.spiffe_id).map_err(|err| EntryError::SpiffeId {
            id: e.id.clone(),
            value: e.spiffe_id.clone(),
            reason: err.to_string(),
        })?;
        let selectors = e
            .selectors
            .iter()
            .map(|s| Selector::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| EntryError::Selector {
                id: e.id.clone(),
                source,
            })?;
        Ok(Self {
            id: e.id,
            revision: e.revision,
            spiffe_id,
            selectors,
            hint: e.hint,
        })
    }
}

impl WorkloadEntry {
    /// Whether a caller attested with `caller`'s selectors gets this
    /// entry's identity: it has every selector, and there is at least one.
    pub(crate) fn matches(&self, caller: &[Selector]) -> bool {
        !self.selectors.is_empty() && self.selectors.iter().all(|s| caller.contains(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb_entry(spiffe_id: &str, selectors: &[&str]) -> pb::WorkloadEntry {
        pb::WorkloadEntry {
            id: "e1".into(),
            spiffe_id: spiffe_id.into(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            revision: 3,
            hint: "internal".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_is_typed_once_or_refused_with_its_id() {
        let e = WorkloadEntry::try_from(pb_entry("spiffe://example.org/web", &["unix:uid:1000"]))
            .unwrap();
        assert_eq!(e.spiffe_id.as_str(), "spiffe://example.org/web");
        assert_eq!(
            e.selectors,
            vec![signet_identity::selector::unix::uid(1000)]
        );
        assert_eq!((e.revision, e.hint.as_str()), (3, "internal"));
        let bad_id = WorkloadEntry::try_from(pb_entry("web", &["unix:uid:1000"])).unwrap_err();
        assert!(
            bad_id.to_string().starts_with("entry e1: spiffe_id"),
            "{bad_id}"
        );
        let unknown =
            WorkloadEntry::try_from(pb_entry("spiffe://example.org/web", &["k8s:ns:prod"]))
                .unwrap_err();
        assert!(unknown.to_string().contains("k8s"), "{unknown}");
    }
}
