//! The journal both kinds of signing key keep (SPIRE keeps one slot type
//! for X.509 and JWT keys; so do we): where a key is in its life, and the
//! statements that move it, the same for the `ca_keys` and `jwt_keys`
//! tables.

use sqlx::any::AnyRow;

use super::bundle::bump_bundle_sequence;
use super::changes::{record_change, ChangeKind};
use super::{get, KeyStatus, Store, StoreError};

/// Where a signing key is in its life; embedded in both key records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyJournal {
    /// Its state.
    pub status: KeyStatus,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds; nothing it signs outlives it.
    pub not_after: i64,
    /// When it was made (and published), Unix seconds.
    pub created_at: i64,
    /// Tainted by an operator: signs nothing more, and agents replace what
    /// it signed at once.
    pub tainted: bool,
    /// When it stopped signing (became old, lost or tainted), Unix seconds;
    /// 0 while it signs or if it never did.
    pub retired_at: i64,
}

impl KeyJournal {
    /// A new key's journal: made at `now`, living `lifetime` seconds.
    pub(crate) fn new(status: KeyStatus, not_before: i64, not_after: i64, now: i64) -> Self {
        Self {
            status,
            not_before,
            not_after,
            created_at: now,
            tainted: false,
            retired_at: 0,
        }
    }

    /// The journal columns of a row of either key table.
    pub(crate) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok(Self {
            status: KeyStatus::parse(&get::<String>(row, "status")?)?,
            not_before: get(row, "not_before")?,
            not_after: get(row, "not_after")?,
            created_at: get(row, "created_at")?,
            tainted: get::<i64>(row, "tainted")? != 0,
            retired_at: get(row, "retired_at")?,
        })
    }
}

/// The table a kind of key is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyTable {
    /// `ca_keys`: X.509 signing keys.
    X509,
    /// `jwt_keys`: JWT-SVID signing keys.
    Jwt,
}

impl KeyTable {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::X509 => "ca_keys",
            Self::Jwt => "jwt_keys",
        }
    }

    fn id_column(self) -> &'static str {
        match self {
            Self::X509 => "id",
            Self::Jwt => "kid",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::X509 => "CA key",
            Self::Jwt => "JWT key",
        }
    }
}

impl Store {
    /// Moves key `id` from state `from` to `to`, recording when it stopped
    /// signing if it did; false when it was not in `from` (another process
    /// moved it first). It stays in the bundle (a lost key too: what it
    /// signed keeps verifying until it expires).
    pub(crate) async fn set_key_status(
        &self,
        table: KeyTable,
        id: &str,
        from: KeyStatus,
        to: KeyStatus,
        now: i64,
    ) -> Result<bool, StoreError> {
        let retired = from == KeyStatus::Active && to != KeyStatus::Active;
        let r = sqlx::query(&format!(
            "UPDATE {} SET status = $1, \
             retired_at = CASE WHEN $2 = 1 THEN $3 ELSE retired_at END \
             WHERE {} = $4 AND status = $5",
            table.name(),
            table.id_column()
        ))
        .bind(to.as_str())
        .bind(retired as i64)
        .bind(now)
        .bind(id)
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Taints key `id` (not the active one: the caller checks): agents
    /// learn it with the bundle and replace what it signed.
    pub(crate) async fn taint_key(
        &self,
        table: KeyTable,
        id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(&format!(
            "UPDATE {} SET tainted = 1 WHERE {} = $1 AND tainted = 0",
            table.name(),
            table.id_column()
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "untainted {} {id}",
                table.noun()
            )));
        }
        record_change(&mut tx, self.backend, ChangeKind::Bundle, id, "", now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revokes key `id`: it signs nothing more and leaves the bundle (with
    /// its certificate `root_fingerprint`, when it is a bundle root).
    pub(crate) async fn revoke_key(
        &self,
        table: KeyTable,
        id: &str,
        root_fingerprint: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(&format!(
            "UPDATE {} SET status = 'revoked' WHERE {} = $1",
            table.name(),
            table.id_column()
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(fp) = root_fingerprint {
            sqlx::query("DELETE FROM bundle_authorities WHERE fingerprint = $1")
                .bind(fp)
                .execute(&mut *tx)
                .await?;
        }
        bump_bundle_sequence(&mut tx, self.backend, now).await?;
        tx.commit().await?;
        Ok(())
    }
}
