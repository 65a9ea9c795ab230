//! The CA's in-memory view of every entry, indexed by the agent it belongs
//! to and ordered by revision, fed only by the change feed
//! ([`crate::registry::change_feed`]). Agent streams are served from it: an idle
//! fleet costs the database nothing, and a change wakes only the agent it
//! concerns.
//!
//! Plain data: [`EntryCache::apply`] takes one change row, and
//! [`EntryCache::since`] answers "what does an agent that has seen revision
//! N need": everything (a snapshot) or only what changed (a delta). Deleted
//! entries are remembered for [`TOMBSTONE_TTL_SECS`] so that a reconnecting
//! agent learns what went while it was away; one away for longer gets a
//! snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::watch;

use crate::registry::entry::Entry;
use crate::store::{ChangeKind, ChangeRow};

/// How long a deleted entry is remembered for deltas, seconds.
pub const TOMBSTONE_TTL_SECS: i64 = 3600;

/// The last revision that changed an agent's entries, and its standing (a
/// ban or eviction): what its stream waits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentVersion {
    /// Last change to the agent's entries.
    pub entries: i64,
    /// Last ban or eviction of the agent.
    pub standing: i64,
}

/// A deleted (or moved-away) entry, remembered for deltas.
#[derive(Debug, Clone, Copy)]
struct Tombstone {
    revision: i64,
    at: i64,
}

/// One agent's entries.
struct AgentView {
    entries: BTreeMap<String, Arc<Entry>>,
    removed: BTreeMap<String, Tombstone>,
    version: watch::Sender<AgentVersion>,
}

impl AgentView {
    fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            removed: BTreeMap::new(),
            version: watch::channel(AgentVersion::default()).0,
        }
    }
}

/// What an agent needs to catch up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Catchup {
    /// All its entries, replacing whatever it has.
    Snapshot(Vec<Arc<Entry>>),
    /// Only what changed after the revision it has seen.
    Delta {
        /// Entries created or updated since.
        changed: Vec<Arc<Entry>>,
        /// IDs of entries deleted (or moved to another agent) since.
        removed: Vec<String>,
    },
}

impl Catchup {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        matches!(self, Catchup::Delta { changed, removed } if changed.is_empty() && removed.is_empty())
    }
}

/// What applying a change did, beyond the agents' views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The trust bundle changed: it must be read again.
    pub bundle: bool,
}

/// Every entry, by agent.
pub struct EntryCache {
    revision: i64,
    /// Deltas are exact for agents that have seen at least this revision.
    horizon: i64,
    agents: HashMap<String, AgentView>,
    /// Entry ID → its agent (one per entry: also the count).
    parent_of: HashMap<String, String>,
}

impl EntryCache {
    /// A cache of `entries`, complete up to `revision`.
    pub fn load(entries: Vec<Entry>, revision: i64) -> Self {
        let mut cache = Self {
            revision,
            horizon: revision,
            agents: HashMap::new(),
            parent_of: HashMap::new(),
        };
        cache.fill(entries);
        cache
    }

    fn fill(&mut self, entries: Vec<Entry>) {
        for e in entries {
            let parent = e.spec.parent_id.to_string();
            self.parent_of.insert(e.id.clone(), parent.clone());
            self.agents
                .entry(parent)
                .or_insert_with(AgentView::new)
                .entries
                .insert(e.id.clone(), Arc::new(e));
        }
    }

    /// Replaces everything with `entries` at `revision` (the feed lost
    /// track); every agent's stream wakes and gets a snapshot.
    pub fn reload(&mut self, entries: Vec<Entry>, revision: i64) {
        for view in self.agents.values_mut() {
            view.entries.clear();
            view.removed.clear();
        }
        self.parent_of.clear();
        self.revision = revision;
        self.horizon = revision;
        self.fill(entries);
        for view in self.agents.values() {
            view.version.send_modify(|v| v.entries = revision);
        }
    }

    /// The revision everything is applied up to.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.parent_of.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.parent_of.is_empty()
    }

    /// One entry by ID.
    pub fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        let parent = self.parent_of.get(id)?;
        self.agents.get(parent)?.entries.get(id).cloned()
    }

    /// Whether agent `agent` has an entry for SPIFFE ID `spiffe_id` (so
    /// may advertise endpoints of it).
    pub fn agent_holds(&self, agent: &str, spiffe_id: &str) -> bool {
        self.agents.get(agent).is_some_and(|v| {
            v.entries
                .values()
                .any(|e| e.spec.spiffe_id.as_str() == spiffe_id)
        })
    }

    /// Applies one change (older than what is applied: ignored); `now` is
    /// Unix seconds, for tombstones.
    pub fn apply(&mut self, change: &ChangeRow, now: i64) -> Applied {
        if change.revision <= self.revision {
            return Applied::default();
        }
        self.revision = change.revision;
        match change.kind {
            ChangeKind::Bundle => return Applied { bundle: true },
            // The endpoint registry follows these (Ca::catch_up).
            ChangeKind::Endpoints => {}
            ChangeKind::Agent => {
                let view = self.view(&change.parent_id);
                view.version.send_modify(|v| v.standing = change.revision);
            }
            ChangeKind::Entry => match &change.entry {
                Some(e) if e.spec.parent_id.as_str() == change.parent_id => {
                    self.upsert(e.clone(), change.revision, now)
                }
                _ => self.remove(&change.key, &change.parent_id, change.revision, now),
            },
        }
        Applied::default()
    }

    fn view(&mut self, agent: &str) -> &mut AgentView {
        self.agents
            .entry(agent.to_owned())
            .or_insert_with(AgentView::new)
    }

    fn upsert(&mut self, entry: Entry, revision: i64, now: i64) {
        let parent = entry.spec.parent_id.to_string();
        if let Some(old_parent) = self.parent_of.get(&entry.id).cloned() {
            if old_parent != parent {
                self.remove(&entry.id, &old_parent, revision, now);
            }
        }
        let id = entry.id.clone();
        let view = self.view(&parent);
        let newer = view
            .entries
            .get(&id)
            .is_none_or(|cur| cur.revision <= entry.revision);
        if newer {
            view.entries.insert(id.clone(), Arc::new(entry));
        }
        view.removed.remove(&id);
        view.version.send_modify(|v| v.entries = revision);
        self.parent_of.insert(id, parent);
    }

    fn remove(&mut self, id: &str, parent: &str, revision: i64, now: i64) {
        let view = self.view(parent);
        view.entries.remove(id);
        // Remembered even when it was not here: it may have gone between
        // the revision this cache was loaded at and the read of the entries.
        view.removed
            .insert(id.to_owned(), Tombstone { revision, at: now });
        view.version.send_modify(|v| v.entries = revision);
        if self.parent_of.get(id).map(String::as_str) == Some(parent) {
            self.parent_of.remove(id);
        }
    }

    /// A receiver that changes whenever `agent`'s entries or standing do.
    pub fn subscribe(&mut self, agent: &str) -> watch::Receiver<AgentVersion> {
        self.view(agent).version.subscribe()
    }

    /// What an agent that has seen revision `known` (`None`: nothing) needs
    /// to be up to date with this cache.
    pub fn since(&self, agent: &str, known: Option<i64>) -> Catchup {
        let view = self.agents.get(agent);
        let all = || {
            view.map(|v| v.entries.values().cloned().collect())
                .unwrap_or_default()
        };
        match known {
            Some(k) if k >= self.horizon && k <= self.revision => {
                let Some(v) = view else {
                    return Catchup::Delta {
                        changed: Vec::new(),
                        removed: Vec::new(),
                    };
                };
                Catchup::Delta {
                    changed: v
                        .entries
                        .values()
                        .filter(|e| e.revision > k)
                        .cloned()
                        .collect(),
                    removed: v
                        .removed
                        .iter()
                        .filter(|(_, t)| t.revision > k)
                        .map(|(id, _)| id.clone())
                        .collect(),
                }
            }
            _ => Catchup::Snapshot(all()),
        }
    }

    /// Forgets tombstones older than [`TOMBSTONE_TTL_SECS`] at `now` (agents
    /// that saw less than the newest forgotten get snapshots) and views
    /// nobody uses.
    pub fn prune(&mut self, now: i64) {
        let cutoff = now - TOMBSTONE_TTL_SECS;
        let mut horizon = self.horizon;
        self.agents.retain(|_, view| {
            view.removed.retain(|_, t| {
                let keep = t.at >= cutoff;
                if !keep {
                    horizon = horizon.max(t.revision);
                }
                keep
            });
            !view.entries.is_empty()
                || !view.removed.is_empty()
                || view.version.receiver_count() > 0
        });
        self.horizon = horizon;
    }
}

#[cfg(test)]
mod tests;
