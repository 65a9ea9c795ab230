//! JWT signing keys: their public halves, states and owners. Private keys
//! are files in the owning replica's data dir, never in the database.

use sqlx::any::AnyRow;

use super::keys::bump_bundle_sequence;
use super::{get, KeyStatus, Store, StoreError};

/// One JWT signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKeyRecord {
    /// Key ID: the `kid` of the tokens it signs, and its file's name.
    pub kid: String,
    /// `ES256` or `RS256`.
    pub alg: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// Where it is in its life.
    pub status: KeyStatus,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds; tokens it signs never outlive it.
    pub not_after: i64,
    /// Unix seconds: when it was made (and published).
    pub created_at: i64,
    /// The replica holding the private key file.
    pub replica: String,
}

fn record_from_row(row: &AnyRow) -> Result<JwtKeyRecord, StoreError> {
    Ok(JwtKeyRecord {
        kid: get(row, "kid")?,
        alg: get(row, "alg")?,
        public_key: get(row, "public_key")?,
        status: KeyStatus::parse(&get::<String>(row, "status")?)?,
        not_before: get(row, "not_before")?,
        not_after: get(row, "not_after")?,
        created_at: get(row, "created_at")?,
        replica: get(row, "replica")?,
    })
}

impl Store {
    /// Every JWT key not yet past `not_after`, oldest first.
    pub async fn jwt_keys(&self, now: i64) -> Result<Vec<JwtKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, public_key, status, not_before, not_after, created_at, replica \
             FROM jwt_keys WHERE not_after > $1 ORDER BY created_at, kid",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Records a new key; it is in the bundle from now on.
    pub async fn insert_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO jwt_keys (kid, alg, public_key, status, not_before, not_after, created_at, replica) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.public_key)
        .bind(key.status.as_str())
        .bind(key.not_before)
        .bind(key.not_after)
        .bind(key.created_at)
        .bind(&key.replica)
        .execute(&mut *tx)
        .await?;
        bump_bundle_sequence(&mut tx, self.backend, key.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves key `kid` of `replica` from one state to another; false when
    /// it was not in state `from` (another process moved it first).
    pub async fn set_jwt_key_status(
        &self,
        kid: &str,
        replica: &str,
        from: KeyStatus,
        to: KeyStatus,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE jwt_keys SET status = $1 WHERE kid = $2 AND replica = $3 AND status = $4",
        )
        .bind(to.as_str())
        .bind(kid)
        .bind(replica)
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes keys past their `not_after` (no token they signed is valid
    /// any more); bumps the bundle sequence when any went.
    pub async fn delete_expired_jwt_keys(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("DELETE FROM jwt_keys WHERE not_after <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() > 0 {
            bump_bundle_sequence(&mut tx, self.backend, now).await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected())
    }
}
