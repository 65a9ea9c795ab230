//! The mesh's endpoint registry: each agent's published endpoints, replaced
//! whole on each update and withdrawn with the stream that published them.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::changes::{record_change, ChangeKind};
use super::{get, Store, StoreError};

/// One published endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointRecord {
    /// The agent (node) that published it.
    pub agent_id: String,
    /// The identity it proves.
    pub spiffe_id: String,
    /// `host:port` callers dial.
    pub address: String,
    /// `tcp` or `http`.
    pub protocol: String,
    /// Optional locality ("" when not set).
    pub zone: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// Its tunnel listener's port on the address's host (0: none).
    pub tunnel_port: u16,
    /// When first published, Unix seconds.
    pub registered_at: i64,
    /// When its agent's publishing stream ended (0 while open).
    pub lost_at: i64,
}

/// Which publishing stream an agent's endpoints came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSession {
    /// Random per stream.
    pub id: String,
    /// The replica holding the stream.
    pub replica: String,
}

const COLUMNS: &str =
    "agent_id, spiffe_id, address, protocol, zone, weight, tunnel_port, registered_at, lost_at";

fn endpoint_from_row(row: &AnyRow) -> Result<EndpointRecord, StoreError> {
    Ok(EndpointRecord {
        agent_id: get(row, "agent_id")?,
        spiffe_id: get(row, "spiffe_id")?,
        address: get(row, "address")?,
        protocol: get(row, "protocol")?,
        zone: get(row, "zone")?,
        weight: u32::try_from(get::<i64>(row, "weight")?)
            .map_err(|e| StoreError::Corrupt(format!("endpoint weight: {e}")))?,
        tunnel_port: u16::try_from(get::<i64>(row, "tunnel_port")?)
            .map_err(|e| StoreError::Corrupt(format!("endpoint tunnel_port: {e}")))?,
        registered_at: get(row, "registered_at")?,
        lost_at: get(row, "lost_at")?,
    })
}

/// Inside the transaction of an entry change that took SPIFFE ID
/// `spiffe_id` from agent `agent_id` (deleted, moved to another parent,
/// given another ID): withdraws the agent's endpoints of that identity
/// unless another of its entries still names it. In the same transaction,
/// so no replica ever serves an endpoint its node can no longer prove.
pub(super) async fn withdraw_unentitled(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: super::Backend,
    agent_id: &str,
    spiffe_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    let withdrawn = sqlx::query(
        "DELETE FROM endpoints WHERE agent_id = $1 AND spiffe_id = $2 \
         AND NOT EXISTS (SELECT 1 FROM entries WHERE parent_id = $1 AND spiffe_id = $2)",
    )
    .bind(agent_id)
    .bind(spiffe_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if withdrawn > 0 {
        record_change(tx, backend, ChangeKind::Endpoints, agent_id, agent_id, now).await?;
        tracing::info!(
            agent_id,
            spiffe_id,
            withdrawn,
            "endpoints withdrawn: no entry of the node names the identity any more"
        );
    }
    Ok(())
}

impl Store {
    /// Replaces `agent_id`'s endpoints with `endpoints` (published through
    /// `session`); an endpoint published before keeps its registration
    /// time. One change row, whatever the number of endpoints.
    pub(crate) async fn replace_endpoints(
        &self,
        agent_id: &str,
        endpoints: &[EndpointRecord],
        session: &PublishSession,
        now: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let before: Vec<EndpointRecord> = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM endpoints WHERE agent_id = $1"
        ))
        .bind(agent_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect::<Result<_, _>>()?;
        sqlx::query("DELETE FROM endpoints WHERE agent_id = $1")
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        for e in endpoints {
            let registered_at = before
                .iter()
                .find(|b| b.spiffe_id == e.spiffe_id && b.address == e.address)
                .map_or(now, |b| b.registered_at);
            sqlx::query(&format!(
                "INSERT INTO endpoints ({COLUMNS}, session, replica) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)"
            ))
            .bind(agent_id)
            .bind(&e.spiffe_id)
            .bind(&e.address)
            .bind(&e.protocol)
            .bind(&e.zone)
            .bind(i64::from(e.weight))
            .bind(i64::from(e.tunnel_port))
            .bind(registered_at)
            .bind(&session.id)
            .bind(&session.replica)
            .execute(&mut *tx)
            .await
            .map_err(|err| {
                StoreError::from_insert(err, || {
                    format!("endpoint {} at {}", e.spiffe_id, e.address)
                })
            })?;
        }
        let revision = record_change(
            &mut tx,
            self.backend,
            ChangeKind::Endpoints,
            agent_id,
            agent_id,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(revision)
    }

    /// Marks the endpoints `session` published as lost at `now` (their
    /// agent's stream ended); they stay published until withdrawn.
    pub(crate) async fn mark_endpoints_lost(
        &self,
        agent_id: &str,
        session: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.change_session_rows(
            agent_id,
            "UPDATE endpoints SET lost_at = $3 WHERE agent_id = $1 AND session = $2",
            session,
            Some(now),
            now,
        )
        .await
    }

    /// Withdraws the endpoints `session` published, if the agent has not
    /// published again since (through another stream).
    pub(crate) async fn withdraw_endpoints(
        &self,
        agent_id: &str,
        session: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.change_session_rows(
            agent_id,
            "DELETE FROM endpoints WHERE agent_id = $1 AND session = $2",
            session,
            None,
            now,
        )
        .await
    }

    /// Runs `sql` over one session's rows and records a change if any row
    /// was touched.
    async fn change_session_rows(
        &self,
        agent_id: &str,
        sql: &str,
        session: &str,
        lost_at: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let mut q = sqlx::query(sql).bind(agent_id).bind(session);
        if let Some(at) = lost_at {
            q = q.bind(at);
        }
        if q.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(());
        }
        record_change(
            &mut tx,
            self.backend,
            ChangeKind::Endpoints,
            agent_id,
            agent_id,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The publishing sessions `replica` held, with their agents: after a
    /// restart of that replica, nobody else will withdraw them.
    pub(crate) async fn endpoint_sessions_of(
        &self,
        replica: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT agent_id, session FROM endpoints WHERE replica = $1")
                .bind(replica)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((get(r, "agent_id")?, get(r, "session")?)))
            .collect()
    }

    /// `agent_id`'s endpoints.
    pub(crate) async fn endpoints_of_agent(
        &self,
        agent_id: &str,
    ) -> Result<Vec<EndpointRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM endpoints WHERE agent_id = $1 ORDER BY spiffe_id, address"
        ))
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect()
    }

    /// Every endpoint.
    pub(crate) async fn list_endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM endpoints ORDER BY spiffe_id, address"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect()
    }
}
