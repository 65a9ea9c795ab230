//! Attested agents.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::changes::{record_change, ChangeKind};
use super::{get, Store, StoreError};

/// An agent the CA has attested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRecord {
    /// The agent's SPIFFE ID.
    pub spiffe_id: String,
    /// How it proved itself: `join_token`, `x509pop`, `sshpop`.
    pub attestation_type: String,
    /// What it proved of its node (x509pop, sshpop), e.g.
    /// `x509pop:san:dns:web-17.prod.example.com`; replaced on each
    /// attestation; node groups match on them.
    pub node_selectors: Vec<String>,
    /// Hex serial of its current SVID.
    pub svid_serial: String,
    /// Hex serial of the SVID it renewed from, accepted until the agent
    /// first presents the current one (the renewal's answer may never have
    /// reached the agent's disk). `None` once the new SVID is in use, and
    /// after (re-)attestation.
    pub previous_svid_serial: Option<String>,
    /// When its current SVID expires, Unix seconds.
    pub svid_expires_at: i64,
    /// Banned agents can neither renew, sign nor re-attest.
    pub banned: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

fn agent_from_row(row: &AnyRow) -> Result<AgentRecord, StoreError> {
    Ok(AgentRecord {
        spiffe_id: get(row, "spiffe_id")?,
        attestation_type: get(row, "attestation_type")?,
        node_selectors: serde_json::from_str(&get::<String>(row, "node_selectors")?)
            .map_err(|e| StoreError::Corrupt(format!("agent node selectors: {e}")))?,
        svid_serial: get(row, "svid_serial")?,
        previous_svid_serial: get(row, "previous_svid_serial")?,
        svid_expires_at: get(row, "svid_expires_at")?,
        banned: get::<i64>(row, "banned")? != 0,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

const COLUMNS: &str = "spiffe_id, attestation_type, svid_serial, svid_expires_at, banned, \
     created_at, updated_at, previous_svid_serial, node_selectors";

impl Store {
    /// Records a (re-)attested agent, or updates its SVID if it exists.
    /// A banned agent stays banned.
    pub(crate) async fn upsert_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (spiffe_id) DO UPDATE SET attestation_type = excluded.attestation_type, \
             svid_serial = excluded.svid_serial, svid_expires_at = excluded.svid_expires_at, \
             updated_at = excluded.updated_at, previous_svid_serial = excluded.previous_svid_serial, \
             node_selectors = excluded.node_selectors"
        ))
        .bind(&agent.spiffe_id)
        .bind(&agent.attestation_type)
        .bind(&agent.svid_serial)
        .bind(agent.svid_expires_at)
        .bind(agent.banned as i64)
        .bind(agent.created_at)
        .bind(agent.updated_at)
        .bind(agent.previous_svid_serial.as_deref())
        .bind(serde_json::Value::from(agent.node_selectors.clone()).to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One agent.
    pub(crate) async fn get_agent(&self, spiffe_id: &str) -> Result<AgentRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM agents WHERE spiffe_id = $1"
        ))
        .bind(spiffe_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("agent {spiffe_id}")))?;
        agent_from_row(&row)
    }

    /// All agents, by SPIFFE ID.
    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM agents ORDER BY spiffe_id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// The agent has presented its current SVID: its previous serial is no
    /// longer accepted.
    pub(crate) async fn forget_previous_serial(
        &self,
        spiffe_id: &str,
        serial: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET previous_svid_serial = NULL WHERE spiffe_id = $1 AND svid_serial = $2",
        )
        .bind(spiffe_id)
        .bind(serial)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Bans an agent; its entry stream ends.
    pub(crate) async fn ban_agent(
        &self,
        spiffe_id: &str,
        now: i64,
    ) -> Result<AgentRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        // A banned or evicted agent's endpoints go with it (the change
        // below tells every replica to re-read them).
        sqlx::query("DELETE FROM endpoints WHERE agent_id = $1")
            .bind(spiffe_id)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("UPDATE agents SET banned = 1, updated_at = $1 WHERE spiffe_id = $2")
            .bind(now)
            .bind(spiffe_id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("agent {spiffe_id}")));
        }
        record_change(
            &mut tx,
            self.backend,
            ChangeKind::Agent,
            spiffe_id,
            spiffe_id,
            now,
        )
        .await?;
        tx.commit().await?;
        self.get_agent(spiffe_id).await
    }

    /// Removes an agent's record (it may re-attest with a new token); its
    /// entry stream ends.
    pub(crate) async fn delete_agent(&self, spiffe_id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // A banned or evicted agent's endpoints go with it (the change
        // below tells every replica to re-read them).
        sqlx::query("DELETE FROM endpoints WHERE agent_id = $1")
            .bind(spiffe_id)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM agents WHERE spiffe_id = $1")
            .bind(spiffe_id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("agent {spiffe_id}")));
        }
        record_change(
            &mut tx,
            self.backend,
            ChangeKind::Agent,
            spiffe_id,
            spiffe_id,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
