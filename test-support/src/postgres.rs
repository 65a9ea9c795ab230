//! A real PostgreSQL server for tests, started once per test process from the
//! `initdb`/`pg_ctl` binaries under `/usr/lib/postgresql/*/bin`, listening on
//! a free loopback port, with a fresh database per caller.
//!
//! When the binaries are absent the tests skip with a loud message, unless
//! `SIGNET_REQUIRE_POSTGRES=1` (set by `.ci/run`), in which case they fail.
//! As root (CI), the server runs as the `postgres` user (initdb refuses root).
//! A watchdog shell stops the server when the test process exits.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A running server: the one shared by every test of this process
/// ([`TestPostgres::get`]), or one a test owns to stop and restart
/// ([`TestPostgres::own`]).
pub struct TestPostgres {
    port: u16,
    bin: PathBuf,
    who: Option<(u32, u32)>,
    data: PathBuf,
    /// The server options (`pg_ctl -o`): port, socket dir, settings.
    options: String,
    dir: tempfile::TempDir,
}

static SERVER: OnceLock<Option<TestPostgres>> = OnceLock::new();

fn find_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// uid/gid to run the server as: ourselves, or `postgres` (else `nobody`) as root.
fn run_as() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").ok()?.uid();
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for name in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == name {
                if let (Ok(u), Ok(g)) = (f[2].parse(), f[3].parse()) {
                    return Some((u, g));
                }
            }
        }
    }
    panic!("running as root but neither a postgres nor a nobody user exists to run PostgreSQL");
}

fn command(bin: &Path, who: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin);
    if let Some((uid, gid)) = who {
        use std::os::unix::process::CommandExt;
        c.uid(uid).gid(gid);
    }
    c.env_remove("PGDATA").env("LC_ALL", "C");
    c
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestPostgres {
    fn start() -> Option<Self> {
        Self::launch(false)
    }

    /// A server of the caller's own, stopped when dropped: for tests that
    /// stop or restart PostgreSQL under a running CA. `None` (after a loud
    /// message) when PostgreSQL is not installed.
    /// It commits durably (fsync, synchronous commit): a test that kills it
    /// must not lose what it acknowledged.
    pub fn own() -> Option<TestPostgres> {
        Self::launch(true)
    }

    fn pg_ctl(&self, args: &[&str], what: &str) {
        let mut c = command(&self.bin.join("pg_ctl"), self.who);
        c.arg("-D").arg(&self.data).args(args).stdout(Stdio::null());
        run(c, what);
    }

    /// Stops the server at once (`-m immediate`: like a crash).
    pub fn kill(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"], "pg_ctl stop");
    }

    /// Starts it again on the same port with the same settings, data kept.
    pub fn start_again(&self) {
        let log = self.dir.path().join("server.log");
        self.pg_ctl(
            &[
                "-l",
                &log.to_string_lossy(),
                "-o",
                &self.options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            "pg_ctl start",
        );
    }

    /// The database server's counters for database `name`: transactions
    /// committed and rows returned (from `pg_stat_database`).
    pub fn stats(&self, name: &str) -> (u64, u64) {
        let out = self.psql(&format!(
            "SELECT xact_commit, tup_returned + tup_fetched FROM pg_stat_database WHERE datname = '{name}'"
        ));
        let mut parts = out.trim().split('|');
        let mut next = || {
            parts
                .next()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("pg_stat_database: {out:?}"))
        };
        (next(), next())
    }

    /// Runs `sql` in database `db` (e.g. `VACUUM ANALYZE` before a
    /// measurement, so autovacuum does not run inside it).
    pub fn run_sql(&self, db: &str, sql: &str) -> String {
        self.psql_in(db, sql)
    }

    fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    fn psql_in(&self, db: &str, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let psql = if psql.exists() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-A",
                "-t",
                "-c",
            ])
            .arg(sql)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `durable`: fsync and synchronous commit on (slower; the shared
    /// server trades them for speed).
    fn launch(durable: bool) -> Option<Self> {
        let Some(bin) = find_bin_dir() else {
            let msg = "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin";
            if std::env::var("SIGNET_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("{msg}, and SIGNET_REQUIRE_POSTGRES=1: install the postgresql package");
            }
            eprintln!("\n!!!!!! SKIPPING PostgreSQL tests: {msg}. Install `postgresql` to run them. !!!!!!\n");
            return None;
        };
        let who = run_as();
        let dir = tempfile::Builder::new()
            .prefix("signet-pg-")
            .tempdir()
            .unwrap();
        if let Some((uid, gid)) = who {
            chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut c = command(&bin.join("initdb"), who);
        c.args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data);
        run(c, "initdb");
        let port = crate::free_port();
        let durability = if durable {
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
        } else {
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 {durability} -c max_connections=200",
            dir.path().display()
        );
        let mut c = command(&bin.join("pg_ctl"), who);
        c.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .arg("-o")
            .arg(&options)
            .args(["-w", "-t", "60", "start"]);
        c.stdout(Stdio::null());
        run(c, "pg_ctl start");
        // Stop the server when this test process exits, however it exits.
        let mut watchdog = command(Path::new("/bin/sh"), who);
        watchdog
            .arg("-c")
            .arg(format!(
                "while [ -d /proc/{pid} ]; do sleep 0.5; done; '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
                pid = std::process::id(),
                pg_ctl = bin.join("pg_ctl").display(),
                data = data.display(),
                dir = dir.path().display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Deliberately not waited for: it must outlive this process.
        #[allow(clippy::zombie_processes)]
        let _watchdog = watchdog.spawn().expect("spawn PostgreSQL watchdog");
        // The shared server's tempdir is never dropped (a static): the
        // watchdog stops the server and removes it.
        Some(Self {
            port,
            bin,
            who,
            data,
            options,
            dir,
        })
    }

    /// The shared server, or `None` (after a loud message) when PostgreSQL
    /// is not installed.
    pub fn get() -> Option<&'static TestPostgres> {
        SERVER.get_or_init(Self::start).as_ref()
    }

    /// Creates a fresh, empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for TestPostgres {
    /// An owned server stops with its owner (the shared one is a static and
    /// never dropped; its watchdog stops it).
    fn drop(&mut self) {
        let mut c = command(&self.bin.join("pg_ctl"), self.who);
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
        let _ = &self.dir;
    }
}
