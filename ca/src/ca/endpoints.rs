//! The mesh's endpoint registry as operations: what nodes publish, who
//! watches it, what is withdrawn when a node goes away.

use crate::registry::endpoint_publish::{check_update, Checked};
use crate::registry::endpoint_registry::EndpointRegistry;
use crate::store::{EndpointRecord, PublishSession};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::{Ca, CaError};

impl Ca {
    pub(crate) fn write_endpoints<T>(&self, f: impl FnOnce(&mut EndpointRegistry) -> T) -> T {
        match self.endpoints.write() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub(crate) fn read_endpoints<T>(&self, f: impl FnOnce(&EndpointRegistry) -> T) -> T {
        match self.endpoints.read() {
            Ok(guard) => f(&guard),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// The endpoints of `spiffe_id`, or all of them, from memory.
    pub fn endpoints(&self, spiffe_id: Option<&str>) -> Vec<EndpointRecord> {
        self.read_endpoints(|r| match spiffe_id {
            Some(id) => r.of(id),
            None => r.all(),
        })
    }

    /// A receiver that changes whenever `spiffe_id`'s endpoints do.
    pub fn subscribe_endpoints(&self, spiffe_id: &str) -> watch::Receiver<u64> {
        self.write_endpoints(|r| r.subscribe(spiffe_id))
    }

    /// Checks and publishes agent `agent_id`'s whole set of endpoints
    /// (connected from `peer_ip`, through `session`): what was published and
    /// what was refused.
    pub async fn publish_endpoints(
        &self,
        agent_id: &str,
        peer_ip: Option<std::net::IpAddr>,
        session: &PublishSession,
        endpoints: Vec<signet_proto::mesh::Endpoint>,
    ) -> Result<Checked, CaError> {
        let mut checked = self.check_endpoints(agent_id, peer_ip, endpoints);
        self.store
            .replace_endpoints(agent_id, &checked.accepted, session, self.now_secs())
            .await?;
        self.applied().await;
        // As stored: with the registration times kept from before.
        let stored = self.store.endpoints_of_agent(agent_id).await?;
        checked.accepted = stored;
        Ok(checked)
    }

    /// What of `endpoints` agent `agent_id` (connected from `peer_ip`) may
    /// publish under its entries now, and what not and why; nothing stored.
    pub fn check_endpoints(
        &self,
        agent_id: &str,
        peer_ip: Option<std::net::IpAddr>,
        endpoints: Vec<signet_proto::mesh::Endpoint>,
    ) -> Checked {
        self.read_cache(|cache| {
            check_update(endpoints, agent_id, peer_ip, &self.trust_domain, |id| {
                cache.agent_holds(agent_id, id)
            })
        })
    }

    /// Agent `agent_id`'s publishing stream `session` ended: its endpoints
    /// are marked lost now and withdrawn after the grace period, unless the
    /// agent has published again (to any replica) by then.
    pub async fn endpoints_lost(self: &Arc<Self>, agent_id: &str, session: &str) {
        if let Err(e) = self
            .store
            .mark_endpoints_lost(agent_id, session, self.now_secs())
            .await
        {
            tracing::warn!(agent_id, error = %e, "cannot mark endpoints lost");
        }
        self.applied().await;
        let ca = self.clone();
        let (agent_id, session) = (agent_id.to_owned(), session.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(ca.config.endpoint_grace)).await;
            ca.withdraw_endpoints(&agent_id, &session).await;
        });
    }

    pub(crate) async fn withdraw_endpoints(&self, agent_id: &str, session: &str) {
        match self
            .store
            .withdraw_endpoints(agent_id, session, self.now_secs())
            .await
        {
            Ok(()) => self.applied().await,
            Err(e) => {
                tracing::warn!(agent_id, error = %e, "cannot withdraw endpoints; they are withdrawn when this replica restarts")
            }
        }
    }

    /// At start: the publishing streams this replica held before it
    /// stopped are gone; their endpoints are withdrawn after the grace
    /// period unless their agents publish again.
    pub async fn withdraw_orphaned_endpoints(self: &Arc<Self>) -> Result<(), CaError> {
        for (agent_id, session) in self.store.endpoint_sessions_of(&self.replica).await? {
            self.endpoints_lost(&agent_id, &session).await;
        }
        Ok(())
    }
}
