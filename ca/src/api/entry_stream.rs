//! One agent's entry stream (`SyncEntries`), served from the entry cache:
//! a first update (a snapshot, or a delta from the revision the agent says
//! it has), then a delta whenever the cache says this agent's entries
//! changed, and the bundle whenever it changes. Nothing here reads the
//! database except to re-check the agent after a ban or eviction, so an
//! idle fleet costs the database nothing.

use std::sync::Arc;

use signet_proto::node as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::api::convert::{entry_to_node_pb, published_to_pb};
use crate::api::status::status;
use crate::registry::entry::Entry;
use crate::registry::entry_cache::Catchup;
use crate::Ca;

/// Largest encoded size of the entries of one page, bytes: pages end at
/// [`pb::SYNC_PAGE_SIZE`] entries or this, whichever comes first, so even
/// entries with many selectors stay far below gRPC's 4 MiB message limit.
pub(crate) const PAGE_BYTES: usize = 1024 * 1024;

/// How long a stream opened with a revision this replica has not reached
/// yet (the agent came from a replica that is ahead) waits for the change
/// feed before it answers from what it has.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Splits one update into messages of at most [`pb::SYNC_PAGE_SIZE`]
/// entries (and removed IDs); the bundle rides on the first, `more` is set
/// on all but the last. An empty update is one message.
pub(crate) fn pages(
    catchup: &Catchup,
    revision: i64,
    bundle: Option<pb::Bundle>,
) -> Vec<pb::EntrySnapshot> {
    let (delta, entries, removed): (bool, &[Arc<Entry>], &[String]) = match catchup {
        Catchup::Snapshot(all) => (false, all, &[]),
        Catchup::Delta { changed, removed } => (true, changed, removed),
    };
    let mut out = Vec::new();
    let mut entries = entries.iter().map(|e| entry_to_node_pb(e)).peekable();
    let mut removed = removed.chunks(pb::SYNC_PAGE_SIZE);
    let mut bundle = bundle;
    loop {
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(e) = entries.peek() {
            let len = prost::Message::encoded_len(e);
            if page.len() == pb::SYNC_PAGE_SIZE || (!page.is_empty() && bytes + len > PAGE_BYTES) {
                break;
            }
            bytes += len;
            page.extend(entries.next());
        }
        let removed_page = removed.next().map(<[String]>::to_vec).unwrap_or_default();
        let last = entries.peek().is_none() && removed.len() == 0;
        out.push(pb::EntrySnapshot {
            entries: page,
            bundle: bundle.take(),
            revision,
            delta,
            removed_entry_ids: removed_page,
            more: !last,
        });
        if last {
            return out;
        }
    }
}

/// Serves agent `agent_id`'s stream into `tx` until the agent goes, is
/// banned or evicted, or the CA stops.
pub(crate) async fn serve(
    ca: Arc<Ca>,
    agent_id: String,
    known: Option<i64>,
    tx: mpsc::Sender<Result<pb::EntrySnapshot, Status>>,
) {
    ca.metrics().sync_streams.inc();
    let _open = scopeguard(&ca);
    let mut version = ca.subscribe_agent(&agent_id);
    let mut bundles = ca.subscribe_bundle();
    if let Some(k) = known {
        wait_for_revision(&ca, k).await;
    }
    let mut sent = known;
    let mut standing = None;
    let mut sent_bundle: Option<Arc<crate::PublishedBundle>> = None;
    loop {
        let v = *version.borrow_and_update();
        if standing != Some(v.standing) {
            // Checked on the first pass too: a ban may have come between
            // the call's authorization and the subscription.
            if let Err(s) = ca
                .agent_in_good_standing(&agent_id)
                .await
                .map_err(|e| status(&e))
            {
                let _ = tx.send(Err(s)).await;
                return;
            }
            standing = Some(v.standing);
        }
        let bundle = bundles.borrow_and_update().clone();
        let bundle_changed = sent_bundle
            .as_ref()
            .is_none_or(|b| !Arc::ptr_eq(b, &bundle) && **b != *bundle);
        let (catchup, revision) = ca.entry_catchup(&agent_id, sent);
        let first = sent_bundle.is_none();
        if first || bundle_changed || !catchup.is_empty() {
            let delta = matches!(catchup, Catchup::Delta { .. });
            let messages = pages(
                &catchup,
                revision,
                bundle_changed.then(|| published_to_pb(&bundle)),
            );
            ca.metrics().sync_update(delta, messages.len());
            for m in messages {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            sent = Some(revision);
            sent_bundle = Some(bundle);
        }
        tokio::select! {
            r = version.changed() => if r.is_err() { return },
            r = bundles.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

/// Lets the change feed bring this replica to revision `known` (for at
/// most [`CATCH_UP_WAIT`]).
async fn wait_for_revision(ca: &Ca, known: i64) {
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    while ca.revision() < known && tokio::time::Instant::now() < deadline {
        if let Err(e) = ca.catch_up().await {
            tracing::debug!(error = %e, "catching up for a stream");
        }
        if ca.revision() < known {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Decrements the open-streams gauge when a stream ends, however it ends.
fn scopeguard(ca: &Arc<Ca>) -> impl Drop + '_ {
    struct Open<'a>(&'a Ca);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.metrics().sync_streams.dec();
        }
    }
    Open(ca)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("id-{i}")).collect()
    }

    #[test]
    fn an_empty_update_is_one_message_with_the_bundle() {
        let bundle = pb::Bundle {
            trust_domain: "example.org".into(),
            ..Default::default()
        };
        let out = pages(&Catchup::Snapshot(vec![]), 7, Some(bundle.clone()));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bundle, Some(bundle));
        assert!(!out[0].more && !out[0].delta);
        assert_eq!(out[0].revision, 7);
    }

    /// An entry whose protobuf form is about `bytes` long.
    fn big_entry(i: usize, bytes: usize) -> Arc<Entry> {
        let spec = crate::registry::entry::EntryInput {
            spiffe_id: format!("spiffe://example.org/w{i}"),
            parent_id: "spiffe://example.org/signet/agent/a".into(),
            selectors: vec!["unix:uid:1".into()],
            ..Default::default()
        }
        .validate(
            &signet_identity::TrustDomain::new("example.org").unwrap(),
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let mut spec = spec;
        spec.dns_names = (0..bytes / 64)
            .map(|n| format!("{n:0>60}.example"))
            .collect();
        Arc::new(Entry {
            id: format!("e{i:04}"),
            spec,
            created_at: 0,
            updated_at: 0,
            revision: 1,
        })
    }

    #[test]
    fn pages_end_at_the_byte_limit_before_the_entry_count() {
        let entries: Vec<_> = (0..pb::SYNC_PAGE_SIZE)
            .map(|i| big_entry(i, 4096))
            .collect();
        let len = prost::Message::encoded_len(&entry_to_node_pb(&entries[0]));
        let per_page = PAGE_BYTES / len;
        assert!(per_page < pb::SYNC_PAGE_SIZE, "{len} bytes an entry");
        let out = pages(&Catchup::Snapshot(entries.clone()), 1, None);
        for page in &out {
            let bytes: usize = page.entries.iter().map(prost::Message::encoded_len).sum();
            assert!(bytes <= PAGE_BYTES, "{bytes} bytes in a page");
        }
        // Exactly as many as fit, then one more would not.
        assert_eq!(out[0].entries.len(), per_page);
        let all: usize = out.iter().map(|p| p.entries.len()).sum();
        assert_eq!(all, entries.len());
        // An entry larger than a page still goes, alone.
        let huge = big_entry(0, PAGE_BYTES + 4096);
        let out = pages(&Catchup::Snapshot(vec![huge.clone(), huge]), 1, None);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|p| p.entries.len() == 1));
    }

    #[test]
    fn removed_ids_are_paged_on_both_sides_of_the_page_size() {
        for (n, expect) in [
            (pb::SYNC_PAGE_SIZE, 1),
            (pb::SYNC_PAGE_SIZE + 1, 2),
            (2 * pb::SYNC_PAGE_SIZE, 2),
        ] {
            let out = pages(
                &Catchup::Delta {
                    changed: vec![],
                    removed: ids(n),
                },
                9,
                None,
            );
            assert_eq!(out.len(), expect, "{n} removed");
            assert!(out.iter().all(|m| m.delta && m.revision == 9));
            assert!(out[..expect - 1].iter().all(|m| m.more));
            assert!(!out[expect - 1].more);
            let all: Vec<String> = out.into_iter().flat_map(|m| m.removed_entry_ids).collect();
            assert_eq!(all, ids(n));
        }
    }
}
