//! CA signing keys' certificates and the trust bundle's authorities.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::changes::{record_change, ChangeKind};
use super::{get, Backend, Store, StoreError};

const BUNDLE_SEQUENCE: &str = "bundle_sequence";

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
    /// `active` for now; rotation adds more states.
    pub status: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// The replica whose data dir holds the private key; `None` for keys
    /// made before replicas were recorded (adopted by the replica that has
    /// the file).
    pub replica: Option<String>,
}

fn key_from_row(row: &AnyRow) -> Result<CaKeyRecord, StoreError> {
    Ok(CaKeyRecord {
        id: get(row, "id")?,
        cert_der: get(row, "cert_der")?,
        chain_pem: get(row, "chain_pem")?,
        self_signed: get::<i64>(row, "self_signed")? != 0,
        status: get(row, "status")?,
        not_before: get(row, "not_before")?,
        not_after: get(row, "not_after")?,
        created_at: get(row, "created_at")?,
        replica: get(row, "replica")?,
    })
}

/// Adds one to the bundle's `spiffe_sequence` and records the change in
/// the feed, inside the transaction that changes the bundle.
pub(super) async fn bump_bundle_sequence(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    at: i64,
) -> Result<(), StoreError> {
    record_change(tx, backend, ChangeKind::Bundle, "", "", at).await?;
    let current = sqlx::query("SELECT value FROM settings WHERE name = $1")
        .bind(BUNDLE_SEQUENCE)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    sqlx::query(
        "INSERT INTO settings (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(BUNDLE_SEQUENCE)
    .bind((current + 1).to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Records a new signing key and, in the same transaction, adds the given
    /// roots to the bundle (bumping its sequence when any is new).
    pub async fn insert_ca_key(
        &self,
        key: &CaKeyRecord,
        new_roots: &[(String, Vec<u8>, i64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO ca_keys (id, cert_der, chain_pem, self_signed, status, not_before, not_after, created_at, replica) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&key.id)
        .bind(&key.cert_der)
        .bind(&key.chain_pem)
        .bind(key.self_signed as i64)
        .bind(&key.status)
        .bind(key.not_before)
        .bind(key.not_after)
        .bind(key.created_at)
        .bind(key.replica.as_deref())
        .execute(&mut *tx)
        .await?;
        let mut added = 0;
        for (fingerprint, der, not_after) in new_roots {
            let r = sqlx::query(
                "INSERT INTO bundle_authorities (fingerprint, cert_der, not_after, added_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(fingerprint)
            .bind(der)
            .bind(*not_after)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await?;
            added += r.rows_affected();
        }
        if added > 0 {
            bump_bundle_sequence(&mut tx, self.backend, key.created_at).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Signing keys with status `active`, newest expiry first.
    pub async fn active_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, cert_der, chain_pem, self_signed, status, not_before, not_after, created_at, replica \
             FROM ca_keys WHERE status = 'active' ORDER BY not_after DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Every signing key still valid at `now`, newest expiry first.
    pub async fn ca_keys(&self, now: i64) -> Result<Vec<CaKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, cert_der, chain_pem, self_signed, status, not_before, not_after, created_at, replica \
             FROM ca_keys WHERE not_after > $1 ORDER BY not_after DESC, id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Records that `replica` holds the private key of CA key `id`.
    pub async fn set_ca_key_replica(&self, id: &str, replica: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE ca_keys SET replica = $1 WHERE id = $2")
            .bind(replica)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks CA key `id` as `lost`: its private key is gone for good and it
    /// signs nothing more. Its certificate stays in the bundle until it
    /// expires, so SVIDs it signed keep verifying.
    pub async fn mark_ca_key_lost(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE ca_keys SET status = 'lost' WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The bundle's authorities (DER) still valid at `now`, oldest first,
    /// and the bundle sequence number.
    pub async fn bundle(&self, now: i64) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        let rows = sqlx::query(
            "SELECT cert_der FROM bundle_authorities WHERE not_after > $1 ORDER BY added_at, fingerprint",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let certs = rows
            .iter()
            .map(|r| r.try_get::<Vec<u8>, _>(0))
            .collect::<Result<Vec<_>, _>>()?;
        let sequence = self
            .setting(BUNDLE_SEQUENCE)
            .await?
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|e| StoreError::Corrupt(format!("bundle sequence: {e}")))
            })
            .transpose()?
            .unwrap_or(0);
        Ok((certs, sequence))
    }
}
