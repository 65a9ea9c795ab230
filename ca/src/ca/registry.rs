//! Registration entries and join tokens as operations, and the change
//! feed that keeps this replica's entry cache in step with the database.

use crate::registry::entry::{Entry, EntryInput, EntrySpec};
use crate::registry::entry_cache::{AgentVersion, Catchup, EntryCache};
use crate::registry::join_token::{self, NewJoinToken};
use crate::store::{ChangeKind, EntryFilter};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::{Ca, CaError, FEED_PAGE};

impl Ca {
    /// Applies every change in the feed this replica has not seen: one
    /// query when there is none. Called after each local write and by the
    /// change feed task when another replica wrote.
    pub async fn catch_up(&self) -> Result<(), CaError> {
        let _reader = self.feed_reader.lock().await;
        loop {
            let after = self.read_cache(EntryCache::revision);
            let rows = self.store.changes_since(after, FEED_PAGE).await?;
            // Agents whose endpoints changed (a ban or eviction withdraws
            // them too): read before anything is applied, so a failed read
            // leaves the whole page to the next try.
            let mut agents: Vec<&str> = rows
                .iter()
                .filter(|r| matches!(r.kind, ChangeKind::Endpoints | ChangeKind::Agent))
                .map(|r| r.parent_id.as_str())
                .collect();
            agents.sort_unstable();
            agents.dedup();
            let mut endpoints = Vec::with_capacity(agents.len());
            for agent in agents {
                endpoints.push((agent, self.store.endpoints_of_agent(agent).await?));
            }
            let now = self.now_secs();
            let mut bundle = false;
            self.write_cache(|cache| {
                for row in &rows {
                    bundle |= cache.apply(row, now).bundle;
                }
                self.metrics.set_cache(cache.len(), cache.revision());
            });
            if !endpoints.is_empty() {
                self.write_endpoints(|registry| {
                    for (agent, set) in endpoints {
                        registry.replace_agent(agent, set);
                    }
                    self.metrics.endpoints.set(registry.len() as i64);
                });
            }
            if bundle {
                self.refresh_bundle().await?;
            }
            if (rows.len() as i64) < FEED_PAGE {
                return Ok(());
            }
        }
    }

    /// Reloads every entry when changes this replica never saw were pruned
    /// from the feed (it was cut off for longer than they are kept).
    pub async fn reload_if_behind(&self) -> Result<bool, CaError> {
        let horizon = self.store.changes_horizon().await?;
        if self.read_cache(EntryCache::revision) >= horizon {
            return Ok(false);
        }
        let _reader = self.feed_reader.lock().await;
        let (entries, revision) = self.store.entries_at_revision().await?;
        tracing::warn!(
            revision,
            horizon,
            "this replica missed pruned changes; reloaded every entry (agents get snapshots)"
        );
        let endpoints = self.store.list_endpoints().await?;
        self.write_cache(|cache| cache.reload(entries, revision));
        self.write_endpoints(|registry| registry.reload(endpoints));
        drop(_reader);
        self.refresh_bundle().await?;
        Ok(true)
    }

    /// Forgets old tombstones and unused agent views of the entry cache.
    pub fn prune_cache(&self) {
        let now = self.now_secs();
        self.write_cache(|cache| cache.prune(now));
    }

    /// What agent `agent_id`, having seen revision `known`, needs, and the
    /// revision that brings it to.
    pub fn entry_catchup(&self, agent_id: &str, known: Option<i64>) -> (Catchup, i64) {
        self.read_cache(|cache| (cache.since(agent_id, known), cache.revision()))
    }

    /// A receiver that changes whenever `agent_id`'s entries or standing do.
    pub fn subscribe_agent(&self, agent_id: &str) -> watch::Receiver<AgentVersion> {
        self.write_cache(|cache| cache.subscribe(agent_id))
    }

    /// The revision this replica's cache is at.
    pub fn revision(&self) -> i64 {
        self.read_cache(EntryCache::revision)
    }

    /// An entry from the cache, or from the database when the cache does
    /// not have it (yet).
    pub async fn entry(&self, id: &str) -> Result<Arc<Entry>, CaError> {
        if let Some(e) = self.read_cache(|c| c.entry(id)) {
            return Ok(e);
        }
        Ok(Arc::new(self.store.get_entry(id).await?))
    }

    pub(crate) fn read_cache<T>(&self, f: impl FnOnce(&EntryCache) -> T) -> T {
        match self.cache.read() {
            Ok(guard) => f(&guard),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    pub(crate) fn write_cache<T>(&self, f: impl FnOnce(&mut EntryCache) -> T) -> T {
        match self.cache.write() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// After a local write: apply it (and anything before it) at once. The
    /// write has committed; a failure here is retried by the feed task.
    pub(crate) async fn applied(&self) {
        if let Err(e) = self.catch_up().await {
            tracing::warn!(error = %e, "cannot read the change feed after a write; the feed task retries");
            self.feed_wake.notify_one();
        }
    }

    /// Validates and stores a new entry.
    pub async fn create_entry(&self, input: &EntryInput) -> Result<Entry, CaError> {
        let spec = self.validate_entry(input)?;
        let entry = self.store.create_entry(&spec, self.now_secs()).await?;
        self.applied().await;
        Ok(entry)
    }

    /// Validates and applies an update to an entry.
    pub async fn update_entry(&self, id: &str, input: &EntryInput) -> Result<Entry, CaError> {
        let spec = self.validate_entry(input)?;
        let entry = self.store.update_entry(id, &spec, self.now_secs()).await?;
        self.applied().await;
        Ok(entry)
    }

    /// Deletes an entry.
    pub async fn delete_entry(&self, id: &str) -> Result<(), CaError> {
        self.store.delete_entry(id, self.now_secs()).await?;
        self.applied().await;
        Ok(())
    }

    pub(crate) fn validate_entry(&self, input: &EntryInput) -> Result<EntrySpec, CaError> {
        Ok(input.validate(
            &self.trust_domain,
            self.config.max_ttl(),
            Duration::from_secs(self.config.max_jwt_svid_ttl),
        )?)
    }

    /// Lists entries.
    pub async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, CaError> {
        Ok(self.store.list_entries(filter).await?)
    }

    /// Mints a join token (`ttl` seconds, 0 for the configured default).
    pub async fn create_join_token(
        &self,
        ttl: i64,
        node_name: Option<&str>,
    ) -> Result<NewJoinToken, CaError> {
        if !(0..=crate::registry::join_token::MAX_TTL).contains(&ttl) {
            return Err(CaError::InvalidArgument(format!(
                "token TTL {ttl} s is out of range: give at most {} days (a join token is a bearer secret; mint it when the node is about to start)",
                crate::registry::join_token::MAX_TTL / 86400
            )));
        }
        let ttl = if ttl == 0 {
            self.config.join_token_ttl as i64
        } else {
            ttl
        };
        let token = join_token::generate()?;
        let agent_id = join_token::agent_id(&self.trust_domain, node_name, &token)?;
        let now = self.now_secs();
        let expires_at = now + ttl;
        self.store
            .insert_join_token(
                &join_token::hash(&token),
                agent_id.as_str(),
                expires_at,
                now,
            )
            .await?;
        self.metrics.join_tokens_created.inc();
        tracing::info!(agent_id = %agent_id, expires_at, "join token created");
        Ok(NewJoinToken {
            token,
            agent_id,
            expires_at,
        })
    }

    /// Entry `id` as the database has it now (not this replica's cache).
    pub async fn stored_entry(&self, id: &str) -> Result<Entry, CaError> {
        Ok(self.store.get_entry(id).await?)
    }
}
