//! The trust bundle's rows: the authorities in it and its sequence number,
//! which every change of the bundle (a key made, tainted or revoked) bumps
//! in the transaction that makes the change.

use sqlx::Row;

use super::changes::{record_change, ChangeKind};
use super::{Backend, Store, StoreError};

const BUNDLE_SEQUENCE: &str = "bundle_sequence";

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
    /// The bundle's authorities (DER) still valid at `now`, oldest first,
    /// and the bundle sequence number.
    pub(crate) async fn bundle(&self, now: i64) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
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
