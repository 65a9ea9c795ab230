//! Runs the same test against SQLite and a real PostgreSQL.
#![allow(clippy::unwrap_used)]

use signet_test_support::postgres::TestPostgres;

/// A database for one test: a SQLite file in a temp dir, or a fresh database
/// on the shared throwaway PostgreSQL server.
pub(crate) struct TestDb {
    /// Holds the data dir (and the SQLite file) for the test's lifetime.
    pub dir: tempfile::TempDir,
    /// The URL to connect to.
    pub url: String,
}

impl TestDb {
    pub(crate) fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("signet.db").display()
        );
        Self { dir, url }
    }

    /// `None` when PostgreSQL is not installed (the skip is announced loudly).
    pub(crate) fn postgres() -> Option<Self> {
        let pg = TestPostgres::get()?;
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            url: pg.fresh_database(),
        })
    }
}

/// Declares each listed `async fn name(db: TestDb)` twice: `sqlite::name`
/// and `postgres::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::test_db::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = $crate::test_db::TestDb::postgres() else { return };
                    super::$name(db).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;
