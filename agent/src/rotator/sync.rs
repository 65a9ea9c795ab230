//! The agent's entries as the CA's entry stream delivers them: updates in
//! pages, complete or deltas, applied only once their last page has come.
//! Each entry is typed as it comes in ([`WorkloadEntry`]); one this agent
//! cannot use (a selector type it cannot attest) is left out, loudly.

use signet_proto::node as pb;

use crate::workload_entry::WorkloadEntry;

/// What the entry stream delivers.
#[derive(Debug)]
pub(crate) enum SyncEvent {
    /// One page of an update.
    Page(pb::EntrySnapshot),
    /// The stream ended, and why.
    Ended(String),
}

/// An update whose pages are still arriving.
#[derive(Default)]
struct PendingUpdate {
    delta: bool,
    entries: Vec<WorkloadEntry>,
    removed: Vec<String>,
}

/// The entries parented to this agent, as of the last complete update.
#[derive(Default)]
pub(crate) struct EntrySync {
    /// Entries, sorted by ID.
    pub entries: Vec<WorkloadEntry>,
    /// The revision of the last complete update applied: sent on
    /// reconnect, so the CA answers with only what changed since.
    pub revision: Option<i64>,
    /// The update being received, page by page.
    pending: Option<PendingUpdate>,
    /// A complete update has arrived on the current stream.
    pub stream_synced: bool,
    /// A complete update has arrived since this process started.
    pub synced: bool,
}

impl EntrySync {
    /// A new stream begins: a half-received update is dropped (the CA
    /// sends it again, from `revision`).
    pub(crate) fn new_stream(&mut self) {
        self.pending = None;
        self.stream_synced = false;
    }

    /// Takes one page; returns whether it completed an update (and the
    /// entries changed to it).
    pub(crate) fn take_page(&mut self, page: pb::EntrySnapshot) -> bool {
        let pending = self.pending.get_or_insert_with(|| PendingUpdate {
            delta: page.delta,
            ..Default::default()
        });
        for entry in page.entries {
            let id = entry.id.clone();
            match WorkloadEntry::try_from(entry) {
                Ok(e) => pending.entries.push(e),
                Err(e) => {
                    tracing::warn!(entry_id = %id, error = %e, "entry left out: this agent cannot use it");
                    // A delta that changes an entry into one we cannot use
                    // takes the old form out too.
                    pending.removed.push(id);
                }
            }
        }
        pending.removed.extend(page.removed_entry_ids);
        if page.more {
            return false;
        }
        let Some(update) = self.pending.take() else {
            return false;
        };
        self.entries = if update.delta {
            merge(
                std::mem::take(&mut self.entries),
                update.entries,
                &update.removed,
            )
        } else {
            let mut all = update.entries;
            all.sort_by(|a, b| a.id.cmp(&b.id));
            all
        };
        self.revision = Some(page.revision);
        self.synced = true;
        self.stream_synced = true;
        true
    }
}

/// `entries` (sorted by ID) with `changed` put in and `removed` taken out,
/// still sorted.
fn merge(
    entries: Vec<WorkloadEntry>,
    changed: Vec<WorkloadEntry>,
    removed: &[String],
) -> Vec<WorkloadEntry> {
    let mut by_id: std::collections::BTreeMap<String, WorkloadEntry> =
        entries.into_iter().map(|e| (e.id.clone(), e)).collect();
    for id in removed {
        by_id.remove(id);
    }
    for e in changed {
        by_id.insert(e.id.clone(), e);
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, rev: i64) -> pb::WorkloadEntry {
        pb::WorkloadEntry {
            id: id.into(),
            revision: rev,
            spiffe_id: format!("spiffe://example.org/{id}"),
            selectors: vec!["unix:uid:1000".into()],
            ..Default::default()
        }
    }

    /// [`e`] as the agent holds it.
    fn t(id: &str, rev: i64) -> WorkloadEntry {
        WorkloadEntry::try_from(e(id, rev)).unwrap()
    }

    fn page(entries: Vec<pb::WorkloadEntry>, more: bool, revision: i64) -> pb::EntrySnapshot {
        pb::EntrySnapshot {
            entries,
            more,
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_replaces_changed_entries_and_drops_removed_ones_in_id_order() {
        let merged = merge(
            vec![t("a", 1), t("b", 1), t("c", 1)],
            vec![t("d", 5), t("b", 4)],
            &["c".to_owned(), "unknown".to_owned()],
        );
        assert_eq!(merged, vec![t("a", 1), t("b", 4), t("d", 5)]);
    }

    #[test]
    fn an_update_applies_only_with_its_last_page_and_a_new_stream_drops_half_of_one() {
        let mut s = EntrySync::default();
        assert!(!s.take_page(page(vec![e("b", 1)], true, 3)));
        assert!(s.entries.is_empty() && !s.synced);
        assert!(s.take_page(page(vec![e("a", 1)], false, 3)));
        assert_eq!(s.entries, vec![t("a", 1), t("b", 1)]);
        assert_eq!(s.revision, Some(3));
        // Half an update, then the stream breaks: nothing of it stays.
        assert!(!s.take_page(page(vec![e("c", 4)], true, 4)));
        s.new_stream();
        assert!(!s.stream_synced);
        assert!(s.take_page(page(vec![e("d", 5)], false, 5)));
        assert_eq!(s.entries, vec![t("d", 5)], "a complete update replaces all");
    }

    #[test]
    fn an_entry_the_agent_cannot_use_is_left_out_and_its_old_form_goes() {
        let mut s = EntrySync::default();
        assert!(s.take_page(page(vec![e("a", 1), e("b", 1)], false, 1)));
        let mut unusable = e("b", 2);
        unusable.selectors = vec!["k8s:ns:prod".into()];
        let mut bad_id = e("c", 2);
        bad_id.spiffe_id = "not-an-id".into();
        let mut delta = page(vec![unusable, bad_id, e("d", 2)], false, 2);
        delta.delta = true;
        assert!(s.take_page(delta));
        assert_eq!(s.entries, vec![t("a", 1), t("d", 2)]);
        assert_eq!(s.revision, Some(2), "the rest of the update applies");
    }
}
