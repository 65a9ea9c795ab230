//! JWT signing keys: their public halves, states and owners. Private keys
//! are files in the owning replica's data dir, never in the database.

use sqlx::any::AnyRow;

use super::changes::{record_change, ChangeKind};
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
    /// Tainted by an operator: agents stop handing out tokens it signed.
    pub tainted: bool,
    /// When it stopped signing, Unix seconds (0: it signs, or never did).
    pub retired_at: i64,
}

const COLUMNS: &str =
    "kid, alg, public_key, status, not_before, not_after, created_at, replica, tainted, retired_at";

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
        tainted: get::<i64>(row, "tainted")? != 0,
        retired_at: get(row, "retired_at")?,
    })
}

impl Store {
    /// Every JWT key not yet past `not_after` and not revoked (the ones
    /// in the bundle), oldest first.
    pub(crate) async fn jwt_keys(&self, now: i64) -> Result<Vec<JwtKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jwt_keys WHERE not_after > $1 AND status <> 'revoked' \
             ORDER BY created_at, kid"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Records a new key; it is in the bundle from now on.
    pub(crate) async fn insert_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(&format!(
            "INSERT INTO jwt_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.public_key)
        .bind(key.status.as_str())
        .bind(key.not_before)
        .bind(key.not_after)
        .bind(key.created_at)
        .bind(&key.replica)
        .bind(key.tainted as i64)
        .bind(key.retired_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::from_insert(e, || {
                super::keys::conflict(&key.kid, key.status, &key.replica)
            })
        })?;
        bump_bundle_sequence(&mut tx, self.backend, key.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves key `kid` of `replica` from one state to another, recording
    /// when it stopped signing if it did; false when it was not in state
    /// `from` (another process moved it first).
    pub(crate) async fn set_jwt_key_status(
        &self,
        kid: &str,
        replica: &str,
        from: KeyStatus,
        to: KeyStatus,
        now: i64,
    ) -> Result<bool, StoreError> {
        let retired = from == KeyStatus::Active && to != KeyStatus::Active;
        let r = sqlx::query(
            "UPDATE jwt_keys SET status = $1, \
             retired_at = CASE WHEN $5 = 1 THEN $6 ELSE retired_at END \
             WHERE kid = $2 AND replica = $3 AND status = $4",
        )
        .bind(to.as_str())
        .bind(kid)
        .bind(replica)
        .bind(from.as_str())
        .bind(retired as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// One JWT key by `kid` (revoked ones too).
    pub(crate) async fn jwt_key(&self, kid: &str) -> Result<JwtKeyRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jwt_keys WHERE kid = $1"))
            .bind(kid)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {kid}")))?;
        record_from_row(&row)
    }

    /// Taints JWT key `kid`: agents learn it with the bundle and stop
    /// handing out tokens it signed.
    pub(crate) async fn taint_jwt_key(&self, kid: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("UPDATE jwt_keys SET tainted = 1 WHERE kid = $1 AND tainted = 0")
            .bind(kid)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("untainted JWT key {kid}")));
        }
        record_change(&mut tx, self.backend, ChangeKind::Bundle, kid, "", now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revokes JWT key `kid`: out of the bundle, so tokens it signed stop
    /// validating.
    pub(crate) async fn revoke_jwt_key(&self, kid: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE jwt_keys SET status = 'revoked' WHERE kid = $1")
            .bind(kid)
            .execute(&mut *tx)
            .await?;
        bump_bundle_sequence(&mut tx, self.backend, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes keys past their `not_after` (no token they signed is valid
    /// any more); bumps the bundle sequence when any went.
    pub(crate) async fn delete_expired_jwt_keys(&self, now: i64) -> Result<u64, StoreError> {
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
