//! Join tokens: stored as SHA-256 hashes, deleted when used (single use).

use sqlx::Row;

use super::{Store, StoreError};

/// The outcome of presenting a join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenUse {
    /// The token was valid and is now burned; the agent gets this ID.
    Accepted {
        /// The SPIFFE ID recorded for the agent.
        agent_id: String,
    },
    /// The token existed but had expired; it is burned as well.
    Expired,
    /// No such token: never issued or already used.
    Unknown,
}

impl Store {
    /// Records a new token by its hash.
    pub(crate) async fn insert_join_token(
        &self,
        token_hash: &str,
        agent_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, agent_id, expires_at, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(agent_id)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_insert(e, || "join token".into()))?;
        Ok(())
    }

    /// Burns a token atomically: of two concurrent uses, exactly one wins.
    pub(crate) async fn use_join_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<TokenUse, StoreError> {
        let row = sqlx::query(
            "DELETE FROM join_tokens WHERE token_hash = $1 RETURNING agent_id, expires_at",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(TokenUse::Unknown);
        };
        let expires_at: i64 = row.try_get("expires_at")?;
        if expires_at <= now {
            return Ok(TokenUse::Expired);
        }
        Ok(TokenUse::Accepted {
            agent_id: row.try_get("agent_id")?,
        })
    }

    /// Deletes expired tokens; returns how many.
    pub(crate) async fn prune_join_tokens(&self, now: i64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM join_tokens WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}
