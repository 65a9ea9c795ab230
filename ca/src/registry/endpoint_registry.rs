//! The mesh's endpoints in memory, by SPIFFE ID, kept current by the change
//! feed: watches of an identity's endpoints are served from here and woken
//! only when that identity's set changes, never by re-reading the database.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::watch;

use crate::store::EndpointRecord;

/// The endpoints of one SPIFFE ID, by (agent, address).
struct IdView {
    endpoints: BTreeMap<(String, String), EndpointRecord>,
    /// Counts changes to `endpoints`; watchers wait on it.
    version: watch::Sender<u64>,
}

impl IdView {
    fn new() -> Self {
        Self {
            endpoints: BTreeMap::new(),
            version: watch::channel(0).0,
        }
    }
}

/// Every published endpoint, by agent and by SPIFFE ID.
#[derive(Default)]
pub struct EndpointRegistry {
    by_agent: HashMap<String, Vec<EndpointRecord>>,
    by_id: HashMap<String, IdView>,
}

impl EndpointRegistry {
    /// A registry holding `all`.
    pub fn load(all: Vec<EndpointRecord>) -> Self {
        let mut r = Self::default();
        r.reload(all);
        r
    }

    /// Replaces everything with `all`; every watcher wakes.
    pub fn reload(&mut self, all: Vec<EndpointRecord>) {
        let mut by_agent: HashMap<String, Vec<EndpointRecord>> = HashMap::new();
        for e in all {
            by_agent.entry(e.agent_id.clone()).or_default().push(e);
        }
        let mut agents: Vec<String> = self
            .by_agent
            .keys()
            .chain(by_agent.keys())
            .cloned()
            .collect();
        agents.sort_unstable();
        agents.dedup();
        for agent in agents {
            let set = by_agent.remove(&agent).unwrap_or_default();
            self.replace_agent(&agent, set);
        }
    }

    /// Replaces `agent`'s endpoints; wakes the watchers of each SPIFFE ID
    /// whose set changed, and only those.
    pub fn replace_agent(&mut self, agent: &str, endpoints: Vec<EndpointRecord>) {
        let old = self.by_agent.remove(agent).unwrap_or_default();
        let mut touched: Vec<String> = Vec::new();
        for e in &old {
            if !endpoints.contains(e) {
                if let Some(view) = self.by_id.get_mut(&e.spiffe_id) {
                    view.endpoints
                        .remove(&(agent.to_owned(), e.address.clone()));
                    touched.push(e.spiffe_id.clone());
                }
            }
        }
        for e in &endpoints {
            if !old.contains(e) {
                self.by_id
                    .entry(e.spiffe_id.clone())
                    .or_insert_with(IdView::new)
                    .endpoints
                    .insert((agent.to_owned(), e.address.clone()), e.clone());
                touched.push(e.spiffe_id.clone());
            }
        }
        touched.sort();
        touched.dedup();
        for id in touched {
            let remove = match self.by_id.get(&id) {
                Some(view) => {
                    view.version.send_modify(|v| *v += 1);
                    view.endpoints.is_empty() && view.version.receiver_count() == 0
                }
                None => false,
            };
            if remove {
                self.by_id.remove(&id);
            }
        }
        if !endpoints.is_empty() {
            self.by_agent.insert(agent.to_owned(), endpoints);
        }
    }

    /// The endpoints of `spiffe_id`.
    pub fn of(&self, spiffe_id: &str) -> Vec<EndpointRecord> {
        self.by_id
            .get(spiffe_id)
            .map(|v| v.endpoints.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every endpoint, by SPIFFE ID then agent and address.
    pub fn all(&self) -> Vec<EndpointRecord> {
        let mut ids: Vec<&String> = self.by_id.keys().collect();
        ids.sort();
        ids.into_iter()
            .flat_map(|id| self.by_id[id].endpoints.values().cloned())
            .collect()
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.by_agent.values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_agent.is_empty()
    }

    /// A receiver that changes whenever `spiffe_id`'s endpoints do.
    pub fn subscribe(&mut self, spiffe_id: &str) -> watch::Receiver<u64> {
        // Views of identities nobody publishes or watches any more go.
        self.by_id
            .retain(|_, v| !v.endpoints.is_empty() || v.version.receiver_count() > 0);
        self.by_id
            .entry(spiffe_id.to_owned())
            .or_insert_with(IdView::new)
            .version
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(agent: &str, id: &str, address: &str) -> EndpointRecord {
        EndpointRecord {
            agent_id: agent.into(),
            spiffe_id: id.into(),
            address: address.into(),
            protocol: "tcp".into(),
            zone: String::new(),
            weight: 100,
            tunnel_port: 0,
            registered_at: 1,
            lost_at: 0,
        }
    }

    #[test]
    fn a_change_wakes_only_the_watchers_of_the_identities_it_touches() {
        let mut r = EndpointRegistry::default();
        let mut web = r.subscribe("spiffe://td/web");
        let db = r.subscribe("spiffe://td/db");
        r.replace_agent("a1", vec![ep("a1", "spiffe://td/web", "10.0.0.1:80")]);
        assert!(web.has_changed().unwrap());
        assert!(!db.has_changed().unwrap());
        web.borrow_and_update();
        // Another agent adds an instance: both instances are listed.
        r.replace_agent("a2", vec![ep("a2", "spiffe://td/web", "10.0.0.2:80")]);
        assert!(web.has_changed().unwrap());
        web.borrow_and_update();
        assert_eq!(r.of("spiffe://td/web").len(), 2);
        // The same set again wakes nobody.
        r.replace_agent("a2", vec![ep("a2", "spiffe://td/web", "10.0.0.2:80")]);
        assert!(!web.has_changed().unwrap());
        // Moving a2 to serve db wakes both.
        r.replace_agent("a2", vec![ep("a2", "spiffe://td/db", "10.0.0.2:5432")]);
        assert!(web.has_changed().unwrap());
        assert!(db.has_changed().unwrap());
        assert_eq!(r.of("spiffe://td/web").len(), 1);
        assert_eq!(r.of("spiffe://td/db").len(), 1);
        assert_eq!(r.len(), 2);
        // An agent withdrawing everything.
        r.replace_agent("a1", Vec::new());
        assert!(r.of("spiffe://td/web").is_empty());
        assert_eq!(r.all().len(), 1);
    }

    #[test]
    fn reload_replaces_everything_and_drops_what_is_gone() {
        let mut r = EndpointRegistry::load(vec![
            ep("a1", "spiffe://td/web", "10.0.0.1:80"),
            ep("a2", "spiffe://td/web", "10.0.0.2:80"),
        ]);
        let web = r.subscribe("spiffe://td/web");
        r.reload(vec![ep("a2", "spiffe://td/web", "10.0.0.2:80")]);
        assert!(web.has_changed().unwrap());
        assert_eq!(
            r.of("spiffe://td/web"),
            vec![ep("a2", "spiffe://td/web", "10.0.0.2:80")]
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn unwatched_empty_identities_are_forgotten() {
        let mut r = EndpointRegistry::default();
        drop(r.subscribe("spiffe://td/gone"));
        r.subscribe("spiffe://td/other");
        assert!(!r.by_id.contains_key("spiffe://td/gone"));
        r.replace_agent("a1", vec![ep("a1", "spiffe://td/x", "10.0.0.1:80")]);
        r.replace_agent("a1", Vec::new());
        assert!(!r.by_id.contains_key("spiffe://td/x"));
    }
}
