#![allow(clippy::unwrap_used)]

use std::time::Duration;

use signet_identity::TrustDomain;

use super::*;
use crate::registry::entry::EntryInput;

const A: &str = "spiffe://example.org/signet/agent/a";
const B: &str = "spiffe://example.org/signet/agent/b";

fn entry(id: &str, parent: &str, revision: i64) -> Entry {
    let spec = EntryInput {
        spiffe_id: format!("spiffe://example.org/{id}"),
        parent_id: parent.into(),
        selectors: vec!["unix:uid:1000".into()],
        ..Default::default()
    }
    .validate(
        &TrustDomain::new("example.org").unwrap(),
        Duration::from_secs(86400),
        Duration::from_secs(3600),
    )
    .unwrap();
    Entry {
        id: id.into(),
        spec,
        created_at: 0,
        updated_at: 0,
        revision,
    }
}

fn upserted(e: &Entry) -> ChangeRow {
    ChangeRow {
        revision: e.revision,
        kind: ChangeKind::Entry,
        key: e.id.clone(),
        parent_id: e.spec.parent_id.to_string(),
        entry: Some(e.clone()),
    }
}

fn deleted(id: &str, parent: &str, revision: i64) -> ChangeRow {
    ChangeRow {
        revision,
        kind: ChangeKind::Entry,
        key: id.into(),
        parent_id: parent.into(),
        entry: None,
    }
}

fn ids(entries: &[Arc<Entry>]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

fn delta(c: Catchup) -> (Vec<String>, Vec<String>) {
    match c {
        Catchup::Delta { changed, removed } => {
            (changed.iter().map(|e| e.id.clone()).collect(), removed)
        }
        Catchup::Snapshot(_) => panic!("expected a delta"),
    }
}

#[test]
fn an_agent_without_a_usable_revision_gets_a_snapshot_of_its_own_entries_only() {
    let cache = EntryCache::load(
        vec![entry("e1", A, 3), entry("e2", A, 4), entry("e3", B, 5)],
        10,
    );
    for known in [None, Some(9), Some(11)] {
        match cache.since(A, known) {
            Catchup::Snapshot(all) => assert_eq!(ids(&all), ["e1", "e2"], "known {known:?}"),
            other => panic!("known {known:?}: {other:?}"),
        }
    }
    // Up to date: an empty delta, nothing to send.
    assert!(cache.since(A, Some(10)).is_empty());
    // An agent without entries gets an empty snapshot, not an error.
    assert_eq!(
        cache.since("spiffe://example.org/signet/agent/c", None),
        Catchup::Snapshot(vec![])
    );
}

#[test]
fn deltas_carry_only_what_changed_after_the_agents_revision() {
    let mut cache = EntryCache::load(vec![entry("e1", A, 3), entry("e2", A, 4)], 10);
    cache.apply(&upserted(&entry("e3", A, 11)), 0);
    cache.apply(&upserted(&entry("e1", A, 12)), 0);
    cache.apply(&deleted("e2", A, 13), 0);
    assert_eq!(cache.revision(), 13);
    assert_eq!(
        delta(cache.since(A, Some(10))),
        (vec!["e1".into(), "e3".into()], vec!["e2".into()])
    );
    assert_eq!(delta(cache.since(A, Some(12))), (vec![], vec!["e2".into()]));
    assert!(cache.since(A, Some(13)).is_empty());
    assert_eq!(cache.len(), 2);
    assert!(cache.entry("e2").is_none());
    assert_eq!(cache.entry("e1").unwrap().revision, 12);
}

#[test]
fn an_entry_moved_to_another_agent_leaves_the_first_and_reaches_the_second() {
    let mut cache = EntryCache::load(vec![entry("e1", A, 3)], 10);
    // The store writes one change per agent: A's (the entry is now B's) then B's.
    let moved = entry("e1", B, 12);
    cache.apply(
        &ChangeRow {
            parent_id: A.into(),
            revision: 11,
            ..upserted(&moved)
        },
        0,
    );
    cache.apply(&upserted(&moved), 0);
    assert_eq!(delta(cache.since(A, Some(10))), (vec![], vec!["e1".into()]));
    assert_eq!(delta(cache.since(B, Some(10))), (vec!["e1".into()], vec![]));
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.entry("e1").unwrap().spec.parent_id.as_str(), B);
}

#[test]
fn a_deleted_entry_that_comes_back_is_not_also_reported_removed() {
    let mut cache = EntryCache::load(vec![entry("e1", A, 3)], 10);
    cache.apply(&deleted("e1", A, 11), 0);
    cache.apply(&upserted(&entry("e1", A, 12)), 0);
    assert_eq!(delta(cache.since(A, Some(10))), (vec!["e1".into()], vec![]));
}

#[test]
fn a_deletion_of_an_entry_the_cache_never_held_still_reaches_agents() {
    // Loaded at revision 10 from a read that already missed e9 (deleted at 11).
    let mut cache = EntryCache::load(vec![], 10);
    cache.apply(&deleted("e9", A, 11), 0);
    assert_eq!(delta(cache.since(A, Some(10))), (vec![], vec!["e9".into()]));
}

#[test]
fn changes_already_applied_are_ignored() {
    let mut cache = EntryCache::load(vec![entry("e1", A, 3)], 10);
    cache.apply(&deleted("e1", A, 9), 0);
    assert!(cache.entry("e1").is_some());
    assert_eq!(cache.revision(), 10);
    // An entry row older than the cached one does not replace it.
    cache.apply(&upserted(&entry("e2", A, 12)), 0);
    cache.apply(
        &ChangeRow {
            revision: 13,
            ..upserted(&entry("e2", A, 11))
        },
        0,
    );
    assert_eq!(cache.entry("e2").unwrap().revision, 12);
}

#[test]
fn a_change_wakes_only_the_agent_it_concerns() {
    let mut cache = EntryCache::load(vec![entry("e1", A, 3)], 10);
    let mut a = cache.subscribe(A);
    let mut b = cache.subscribe(B);
    a.mark_unchanged();
    b.mark_unchanged();
    cache.apply(&upserted(&entry("e2", A, 11)), 0);
    assert!(a.has_changed().unwrap());
    assert!(!b.has_changed().unwrap());
    assert_eq!(a.borrow_and_update().entries, 11);
    // A ban moves the standing, not the entries.
    cache.apply(
        &ChangeRow {
            revision: 12,
            kind: ChangeKind::Agent,
            key: B.into(),
            parent_id: B.into(),
            entry: None,
        },
        0,
    );
    assert!(!a.has_changed().unwrap());
    assert_eq!(
        *b.borrow_and_update(),
        AgentVersion {
            entries: 0,
            standing: 12
        }
    );
    // A bundle change wakes no agent view; the caller re-reads the bundle.
    let applied = cache.apply(
        &ChangeRow {
            revision: 13,
            kind: ChangeKind::Bundle,
            key: String::new(),
            parent_id: String::new(),
            entry: None,
        },
        0,
    );
    assert!(applied.bundle);
    assert!(!a.has_changed().unwrap() && !b.has_changed().unwrap());
}

#[test]
fn tombstones_are_forgotten_after_their_ttl_and_older_agents_then_get_snapshots() {
    let mut cache = EntryCache::load(vec![entry("e1", A, 3), entry("e2", A, 4)], 10);
    cache.apply(&deleted("e1", A, 11), 1_000);
    cache.apply(&deleted("e2", A, 12), 2_000);
    // Just inside the TTL of the first: nothing is forgotten.
    cache.prune(1_000 + TOMBSTONE_TTL_SECS);
    assert_eq!(delta(cache.since(A, Some(10))).1, ["e1", "e2"]);
    // Just past it: the first is forgotten, so an agent at 10 gets a snapshot,
    // one at 11 still a delta.
    cache.prune(1_001 + TOMBSTONE_TTL_SECS);
    assert_eq!(cache.since(A, Some(10)), Catchup::Snapshot(vec![]));
    assert_eq!(delta(cache.since(A, Some(11))).1, ["e2"]);
}

#[test]
fn views_nobody_uses_are_dropped_but_not_those_with_a_listener() {
    let mut cache = EntryCache::load(vec![], 10);
    let _listening = cache.subscribe(A);
    drop(cache.subscribe(B));
    cache.prune(0);
    assert!(cache.agents.contains_key(A));
    assert!(!cache.agents.contains_key(B));
}

#[test]
fn a_reload_wakes_every_listener_and_starts_over_with_snapshots() {
    let mut cache = EntryCache::load(vec![entry("e1", A, 3)], 10);
    let mut a = cache.subscribe(A);
    a.mark_unchanged();
    cache.reload(vec![entry("e2", A, 20)], 20);
    assert!(a.has_changed().unwrap());
    assert!(cache.entry("e1").is_none());
    match cache.since(A, Some(15)) {
        Catchup::Snapshot(all) => assert_eq!(ids(&all), ["e2"]),
        other => panic!("{other:?}"),
    }
    assert!(cache.since(A, Some(20)).is_empty());
}
