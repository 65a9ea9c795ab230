//! Registration entries in the database.

use super::changes::{record_change, ChangeKind};
use super::endpoints::withdraw_unentitled;
use super::entry_rows::{entry_from_row, join_selectors, COLUMNS};
use super::{get, Store, StoreError};
use crate::registry::entry::{Entry, EntrySpec};

/// Optional filters for listing entries.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    /// Only entries whose parent is this agent.
    pub parent_id: Option<String>,
    /// Only entries with this SPIFFE ID.
    pub spiffe_id: Option<String>,
}

impl Store {
    /// Stores a new entry; its revision is the change's. `AlreadyExists`
    /// when an entry with the same SPIFFE ID, parent and selectors exists.
    pub(crate) async fn create_entry(
        &self,
        spec: &EntrySpec,
        now: i64,
    ) -> Result<Entry, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut tx = self.begin_write().await?;
        let revision = record_change(
            &mut tx,
            self.backend,
            ChangeKind::Entry,
            &id,
            spec.parent_id.as_str(),
            now,
        )
        .await?;
        sqlx::query(&format!(
            "INSERT INTO entries ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&id)
        .bind(spec.spiffe_id.as_str())
        .bind(spec.parent_id.as_str())
        .bind(join_selectors(spec))
        .bind(spec.x509_svid_ttl as i64)
        .bind(spec.dns_names.join("\n"))
        .bind(spec.admin as i64)
        .bind(now)
        .bind(now)
        .bind(revision)
        .bind(&spec.hint)
        .bind(spec.jwt_svid_ttl as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::from_insert(e, || duplicate(spec)))?;
        tx.commit().await?;
        Ok(Entry {
            id,
            spec: spec.clone(),
            created_at: now,
            updated_at: now,
            revision,
        })
    }

    /// One entry by ID.
    /// Reads and decodes one entry row, if any: whether the entries table
    /// can serve reads at all (readiness checks it, not just `SELECT 1`).
    pub(crate) async fn probe_entries(&self) -> Result<(), StoreError> {
        if let Some(row) = sqlx::query(&format!("SELECT {COLUMNS} FROM entries LIMIT 1"))
            .fetch_optional(&self.pool)
            .await?
        {
            entry_from_row(&row)?;
        }
        Ok(())
    }

    /// One entry by ID.
    pub(crate) async fn get_entry(&self, id: &str) -> Result<Entry, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM entries WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("entry {id}")))?;
        entry_from_row(&row)
    }

    /// Entries matching the filter, ordered by SPIFFE ID then ID.
    pub(crate) async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<Entry>, StoreError> {
        // Empty strings mean "no filter" so that one prepared statement serves.
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM entries \
             WHERE ($1 = '' OR parent_id = $1) AND ($2 = '' OR spiffe_id = $2) \
             ORDER BY spiffe_id, id"
        ))
        .bind(filter.parent_id.clone().unwrap_or_default())
        .bind(filter.spiffe_id.clone().unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Replaces an entry's fields; its revision becomes the change's. An
    /// entry moved to another agent is a change for both agents.
    pub(crate) async fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        now: i64,
    ) -> Result<Entry, StoreError> {
        let mut tx = self.begin_write().await?;
        let (old_parent, old_id): (String, String) =
            sqlx::query("SELECT parent_id, spiffe_id FROM entries WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("entry {id}")))
                .and_then(|row| Ok((get(&row, "parent_id")?, get(&row, "spiffe_id")?)))?;
        if old_parent != spec.parent_id.as_str() {
            record_change(
                &mut tx,
                self.backend,
                ChangeKind::Entry,
                id,
                &old_parent,
                now,
            )
            .await?;
        }
        let revision = record_change(
            &mut tx,
            self.backend,
            ChangeKind::Entry,
            id,
            spec.parent_id.as_str(),
            now,
        )
        .await?;
        sqlx::query(
            "UPDATE entries SET spiffe_id = $1, parent_id = $2, selectors = $3, x509_svid_ttl = $4, \
             dns_names = $5, admin = $6, updated_at = $7, revision = $11, hint = $9, \
             jwt_svid_ttl = $10 WHERE id = $8",
        )
        .bind(spec.spiffe_id.as_str())
        .bind(spec.parent_id.as_str())
        .bind(join_selectors(spec))
        .bind(spec.x509_svid_ttl as i64)
        .bind(spec.dns_names.join("\n"))
        .bind(spec.admin as i64)
        .bind(now)
        .bind(id)
        .bind(&spec.hint)
        .bind(spec.jwt_svid_ttl as i64)
        .bind(revision)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::from_insert(e, || duplicate(spec)))?;
        if (old_parent.as_str(), old_id.as_str())
            != (spec.parent_id.as_str(), spec.spiffe_id.as_str())
        {
            withdraw_unentitled(&mut tx, self.backend, &old_parent, &old_id, now).await?;
        }
        tx.commit().await?;
        self.get_entry(id).await
    }

    /// Deletes an entry.
    pub(crate) async fn delete_entry(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let (parent, spiffe_id): (String, String) =
            sqlx::query("DELETE FROM entries WHERE id = $1 RETURNING parent_id, spiffe_id")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("entry {id}")))
                .and_then(|row| Ok((get(&row, "parent_id")?, get(&row, "spiffe_id")?)))?;
        record_change(&mut tx, self.backend, ChangeKind::Entry, id, &parent, now).await?;
        withdraw_unentitled(&mut tx, self.backend, &parent, &spiffe_id, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn duplicate(spec: &EntrySpec) -> String {
    format!(
        "an entry for {} under {} with the same selectors",
        spec.spiffe_id, spec.parent_id
    )
}
