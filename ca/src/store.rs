//! The CA's state in a real database through sqlx: SQLite (a file in the data
//! dir, WAL mode) by default, PostgreSQL when several CA replicas share state.
//!
//! One implementation serves both through sqlx's `Any` driver: queries are
//! written in the SQL both dialects share (`$n` placeholders, `RETURNING`),
//! and each backend has its own migrations under `migrations/`.

mod agents;
mod bundle;
mod changes;
mod endpoints;
mod entries;
mod entry_rows;
mod jwt_keys;
mod key_journal;
mod keys;
mod tokens;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub(crate) use agents::AgentRecord;
pub(crate) use changes::{ChangeKind, ChangeRow, NOTIFY_CHANNEL};
pub(crate) use endpoints::{EndpointRecord, PublishSession};
pub(crate) use entries::EntryFilter;
pub(crate) use jwt_keys::JwtKeyRecord;
pub(crate) use key_journal::{KeyJournal, KeyTable};
pub(crate) use keys::CaKeyRecord;
pub(crate) use tokens::TokenUse;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A record with the same identity already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The database could not be opened or migrated.
    #[error("cannot open database {url}: {source}")]
    Open {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other driver error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Stored data that does not parse back (hand-edited or corrupted).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to `AlreadyExists(what)`.
    fn from_insert(e: sqlx::Error, what: impl FnOnce() -> String) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::AlreadyExists(what()),
            _ => Self::Database(e),
        }
    }
}

/// Where a signing key (X.509 or JWT) is in its life. Every state but
/// `Revoked` is published in the bundle until `not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Published, not signing yet: relying parties learn it before any
    /// token needs it.
    Prepared,
    /// Signing (one per replica).
    Active,
    /// Replaced; published until the last token it signed has expired.
    Old,
    /// Its private key file is gone; signs nothing, still published.
    Lost,
    /// Taken out of the bundle by an operator (`signet ca revoke`): what it
    /// signed no longer verifies.
    Revoked,
}

impl KeyStatus {
    /// The stored (and displayed) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Old => "old",
            Self::Lost => "lost",
            Self::Revoked => "revoked",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "prepared" => Self::Prepared,
            "active" => Self::Active,
            "old" => Self::Old,
            "lost" => Self::Lost,
            "revoked" => Self::Revoked,
            other => return Err(StoreError::Corrupt(format!("key status {other:?}"))),
        })
    }
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Handle to the CA database; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and applies
    /// pending migrations.
    pub(crate) async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let open_err = |source| StoreError::Open {
            url: redact_url(url),
            source,
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            // One writer at a time anyway; readers share WAL snapshots.
            options = options.max_connections(4).after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(8);
        }
        let pool = options.connect(url).await.map_err(open_err)?;
        if backend == Backend::Sqlite {
            pool.execute("PRAGMA journal_mode = WAL")
                .await
                .map_err(open_err)?;
        }
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await?;
        Ok(Self { pool, backend })
    }

    /// A transaction that will write. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`): a transaction that reads first and then
    /// upgrades can fail with SQLITE_BUSY at once instead of waiting.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Which database this is.
    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections to finish.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// A value from the settings table.
    pub(crate) async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?)
    }

    /// Sets a value in the settings table (insert or replace).
    pub(crate) async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    Ok(row.try_get(col)?)
}

/// A database URL with any password replaced, safe to log.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:****{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
#[path = "store/tests.rs"]
mod tests;
