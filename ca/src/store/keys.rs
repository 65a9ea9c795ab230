//! CA signing keys' certificates (X.509): their records; the bundle rows are in
//! `bundle`, the journal statements in `key_journal`.

use sqlx::any::AnyRow;

use super::bundle::bump_bundle_sequence;
use super::key_journal::KeyJournal;
use super::{get, KeyStatus, Store, StoreError};

const KEY_COLUMNS: &str = "id, cert_der, chain_pem, self_signed, status, not_before, not_after, \
     created_at, replica, tainted, retired_at";

/// A signing certificate the CA has created. Its private key is a file named
/// after `id` in the data dir of the replica that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaKeyRecord {
    /// Opaque ID, also the key file's name.
    pub id: String,
    /// The signing certificate.
    pub cert_der: Vec<u8>,
    /// Certificates between it and a bundle root (upstream mode), PEM.
    pub chain_pem: String,
    /// Whether it is its own root.
    pub self_signed: bool,
    /// The replica whose data dir holds the private key; `None` for keys
    /// made before replicas were recorded (adopted by the replica that has
    /// the file).
    pub replica: Option<String>,
    /// Where it is in its life.
    pub journal: KeyJournal,
}

fn key_from_row(row: &AnyRow) -> Result<CaKeyRecord, StoreError> {
    Ok(CaKeyRecord {
        id: get(row, "id")?,
        cert_der: get(row, "cert_der")?,
        chain_pem: get(row, "chain_pem")?,
        self_signed: get::<i64>(row, "self_signed")? != 0,
        replica: get(row, "replica")?,
        journal: KeyJournal::from_row(row)?,
    })
}

/// What a refused key insert collided with: the database holds at most one
/// prepared key per replica (migration 0010), so a second `prepare` made at
/// the same moment as another fails here, not in a check that raced it.
pub(crate) fn conflict(id: &str, status: KeyStatus, replica: &str) -> String {
    if status == KeyStatus::Prepared {
        format!("a prepared key of replica {replica:?} (made at the same moment)")
    } else {
        format!("key {id}")
    }
}

impl Store {
    /// Records a new signing key and, in the same transaction, adds the given
    /// roots to the bundle (bumping its sequence when any is new).
    pub(crate) async fn insert_ca_key(
        &self,
        key: &CaKeyRecord,
        new_roots: &[(String, Vec<u8>, i64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO ca_keys (id, cert_der, chain_pem, self_signed, status, not_before, not_after, created_at, replica, tainted, retired_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&key.id)
        .bind(&key.cert_der)
        .bind(&key.chain_pem)
        .bind(key.self_signed as i64)
        .bind(key.journal.status.as_str())
        .bind(key.journal.not_before)
        .bind(key.journal.not_after)
        .bind(key.journal.created_at)
        .bind(key.replica.as_deref())
        .bind(key.journal.tainted as i64)
        .bind(key.journal.retired_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::from_insert(e, || {
                conflict(&key.id, key.journal.status, key.replica.as_deref().unwrap_or(""))
            })
        })?;
        let mut added = 0;
        for (fingerprint, der, not_after) in new_roots {
            let r = sqlx::query(
                "INSERT INTO bundle_authorities (fingerprint, cert_der, not_after, added_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(fingerprint)
            .bind(der)
            .bind(*not_after)
            .bind(key.journal.created_at)
            .execute(&mut *tx)
            .await?;
            added += r.rows_affected();
        }
        if added > 0 {
            bump_bundle_sequence(&mut tx, self.backend, key.journal.created_at).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Signing keys with status `active`, newest expiry first.
    #[cfg(test)]
    pub(crate) async fn active_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} \
             FROM ca_keys WHERE status = 'active' ORDER BY not_after DESC, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Every signing key still valid at `now`, newest expiry first.
    pub(crate) async fn ca_keys(&self, now: i64) -> Result<Vec<CaKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} \
             FROM ca_keys WHERE not_after > $1 ORDER BY not_after DESC, id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Records that `replica` holds the private key of CA key `id`.
    pub(crate) async fn set_ca_key_replica(
        &self,
        id: &str,
        replica: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE ca_keys SET replica = $1 WHERE id = $2")
            .bind(replica)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One CA key by ID.
    pub(crate) async fn ca_key(&self, id: &str) -> Result<CaKeyRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM ca_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("CA key {id}")))?;
        key_from_row(&row)
    }
}
