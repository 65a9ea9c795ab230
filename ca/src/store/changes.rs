//! The change feed's rows: what changed, in commit order, so every replica
//! (and through it every agent) learns of a change by reading only what is
//! new, never by re-reading everything.
//!
//! Each change is written in the transaction that makes it, by
//! [`record_change`]. On PostgreSQL the writer first takes one advisory
//! lock, so revisions are drawn in commit order (a reader that has seen
//! revision N never later finds a smaller one committed), and announces the
//! commit with `NOTIFY` on [`NOTIFY_CHANNEL`]. SQLite serializes writers by
//! itself and its replicas are one process, told in-process.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::entry_rows::{entry_from_row, COLUMNS as ENTRY_COLUMNS};
use super::{get, Backend, Store, StoreError};
use crate::registry::entry::Entry;

/// The PostgreSQL channel each committed change is announced on.
pub(crate) const NOTIFY_CHANNEL: &str = "signet_changes";

/// The advisory lock writers of changes take (an arbitrary constant, the
/// same in every replica).
const CHANGES_LOCK: i64 = 0x5167_6e65_7401;

/// The settings row holding the highest revision pruned from the table: a
/// replica whose cache is older must reload everything.
const HORIZON: &str = "changes_horizon";

/// What a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// An entry was created, updated or deleted.
    Entry,
    /// An agent was banned or evicted.
    Agent,
    /// The trust bundle changed.
    Bundle,
    /// An agent's published endpoints changed.
    Endpoints,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Agent => "agent",
            Self::Bundle => "bundle",
            Self::Endpoints => "endpoints",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "entry" => Ok(Self::Entry),
            "agent" => Ok(Self::Agent),
            "bundle" => Ok(Self::Bundle),
            "endpoints" => Ok(Self::Endpoints),
            other => Err(StoreError::Corrupt(format!("change kind {other:?}"))),
        }
    }
}

/// One row of the change feed, with the entry as it is now for an entry
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    /// Fleet-wide revision of this change.
    pub revision: i64,
    /// What changed.
    pub kind: ChangeKind,
    /// Entry ID or agent SPIFFE ID; empty for the bundle.
    pub key: String,
    /// The agent the change concerns; empty for the bundle.
    pub parent_id: String,
    /// For an entry change: the entry now, `None` when it is gone. It may be
    /// newer than this change (a later change is then also in the feed).
    pub entry: Option<Entry>,
}

/// Records a change inside the transaction that makes it; returns its
/// revision.
pub(super) async fn record_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    kind: ChangeKind,
    key: &str,
    parent_id: &str,
    at: i64,
) -> Result<i64, StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
            .bind(CHANGES_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    let row = sqlx::query(
        "INSERT INTO changes (kind, key, parent_id, at) VALUES ($1, $2, $3, $4) RETURNING revision",
    )
    .bind(kind.as_str())
    .bind(key)
    .bind(parent_id)
    .bind(at)
    .fetch_one(&mut **tx)
    .await?;
    let revision: i64 = row.try_get(0)?;
    if backend == Backend::Postgres {
        // Delivered when (and only if) the transaction commits.
        sqlx::query(&format!("NOTIFY {NOTIFY_CHANNEL}"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(revision)
}

fn change_from_row(row: &AnyRow) -> Result<ChangeRow, StoreError> {
    let kind = ChangeKind::parse(&get::<String>(row, "change_kind")?)?;
    let entry = match get::<Option<String>>(row, "id")? {
        Some(_) => Some(entry_from_row(row)?),
        None => None,
    };
    Ok(ChangeRow {
        revision: get(row, "change_revision")?,
        kind,
        key: get(row, "change_key")?,
        parent_id: get(row, "change_parent")?,
        entry,
    })
}

impl Store {
    /// Up to `limit` changes after revision `after`, oldest first, each entry
    /// change joined with the entry as it is now. One query, however many
    /// agents there are.
    pub(crate) async fn changes_since(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        let entry_columns = ENTRY_COLUMNS
            .split(", ")
            .map(|c| format!("e.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "SELECT c.revision AS change_revision, c.kind AS change_kind, c.key AS change_key, \
             c.parent_id AS change_parent, {entry_columns} \
             FROM changes c LEFT JOIN entries e ON c.kind = 'entry' AND e.id = c.key \
             WHERE c.revision > $1 ORDER BY c.revision LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }

    /// The newest revision (0 before any change).
    pub(crate) async fn latest_revision(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(revision), 0) FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// Every entry and the revision they are complete up to: the revision is
    /// read first, so changes committed while the entries are read are also
    /// in the feed after it (applying them again is harmless).
    pub(crate) async fn entries_at_revision(&self) -> Result<(Vec<Entry>, i64), StoreError> {
        let revision = self.latest_revision().await?;
        let entries = self.list_entries(&Default::default()).await?;
        Ok((entries, revision))
    }

    /// Deletes changes recorded before `before` (Unix seconds), keeping the
    /// newest, and raises the horizon to the highest deleted revision.
    pub(crate) async fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT COALESCE(MAX(revision), 0) FROM changes \
             WHERE at < $1 AND revision < (SELECT MAX(revision) FROM changes)",
        )
        .bind(before)
        .fetch_one(&mut *tx)
        .await?;
        let cut: i64 = row.try_get(0)?;
        if cut == 0 {
            return Ok(0);
        }
        let deleted = sqlx::query("DELETE FROM changes WHERE revision <= $1")
            .bind(cut)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(HORIZON)
        .bind(cut.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// The highest revision pruned from the feed (0: none).
    pub(crate) async fn changes_horizon(&self) -> Result<i64, StoreError> {
        self.setting(HORIZON)
            .await?
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|e| StoreError::Corrupt(format!("{HORIZON}: {e}")))
            })
            .transpose()
            .map(Option::unwrap_or_default)
    }
}
