//! JWT signing keys: their public halves, states and owners. Private keys
//! are files in the owning replica's data dir, never in the database.

use sqlx::any::AnyRow;

use super::bundle::bump_bundle_sequence;
use super::key_journal::KeyJournal;
use super::{get, Store, StoreError};

/// One JWT signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKeyRecord {
    /// Key ID: the `kid` of the tokens it signs, and its file's name.
    pub kid: String,
    /// `ES256` or `RS256`.
    pub alg: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// The replica holding the private key file.
    pub replica: String,
    /// Where it is in its life; tokens it signs never outlive it.
    pub journal: KeyJournal,
}

const COLUMNS: &str =
    "kid, alg, public_key, status, not_before, not_after, created_at, replica, tainted, retired_at";

fn record_from_row(row: &AnyRow) -> Result<JwtKeyRecord, StoreError> {
    Ok(JwtKeyRecord {
        kid: get(row, "kid")?,
        alg: get(row, "alg")?,
        public_key: get(row, "public_key")?,
        replica: get(row, "replica")?,
        journal: KeyJournal::from_row(row)?,
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
        .bind(key.journal.status.as_str())
        .bind(key.journal.not_before)
        .bind(key.journal.not_after)
        .bind(key.journal.created_at)
        .bind(&key.replica)
        .bind(key.journal.tainted as i64)
        .bind(key.journal.retired_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::from_insert(e, || {
                super::keys::conflict(&key.kid, key.journal.status, &key.replica)
            })
        })?;
        bump_bundle_sequence(&mut tx, self.backend, key.journal.created_at).await?;
        tx.commit().await?;
        Ok(())
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
