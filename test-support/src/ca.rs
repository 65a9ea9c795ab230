//! A `signet ca run` of a test's own, in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::http::http_get;
use crate::process::{run_err, run_ok, signet, signet_bin, Daemon};

/// A `signet ca serve` in a temp dir.
pub struct CaProcess {
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    pub admin_socket: PathBuf,
    pub metrics_port: u16,
    pub node_port: u16,
}

impl CaProcess {
    pub fn start(extra: &[&str]) -> CaProcess {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> CaProcess {
        Self::start_with_port(dir, crate::free_port(), extra)
    }

    /// Starts (or restarts) the CA in `dir` with its node API on `node_port`.
    pub fn start_with_port(dir: tempfile::TempDir, node_port: u16, extra: &[&str]) -> CaProcess {
        Self::start_full(dir, node_port, None, extra)
    }

    /// Starts the CA under an open-file limit of `nofile` (soft and hard,
    /// through util-linux's `prlimit`), as a host with a low `LimitNOFILE`.
    pub fn start_with_nofile(nofile: u64, extra: &[&str]) -> CaProcess {
        let dir = tempfile::tempdir().unwrap();
        Self::start_full(dir, crate::free_port(), Some(nofile), extra)
    }

    fn start_full(
        dir: tempfile::TempDir,
        node_port: u16,
        nofile: Option<u64>,
        extra: &[&str],
    ) -> CaProcess {
        let admin_socket = dir.path().join("admin.sock");
        let metrics_port = crate::free_port();
        let daemon = Self::spawn(
            dir.path(),
            &admin_socket,
            metrics_port,
            node_port,
            nofile,
            extra,
        );
        CaProcess {
            dir,
            daemon,
            admin_socket,
            metrics_port,
            node_port,
        }
    }

    /// `signet ca serve` in `dir`, once it says it is ready.
    fn spawn(
        dir: &Path,
        admin_socket: &Path,
        metrics_port: u16,
        node_port: u16,
        nofile: Option<u64>,
        extra: &[&str],
    ) -> Daemon {
        let mut cmd = match nofile {
            None => signet(),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(signet_bin())
                    .env_remove("SIGNET_ADMIN_SOCKET")
                    .env_remove("SPIFFE_ENDPOINT_SOCKET");
                c
            }
        };
        cmd.args(["ca", "serve", "--trust-domain", "example.org", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--admin-socket")
            .arg(admin_socket)
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--listen", &format!("127.0.0.1:{node_port}")])
            .args(extra);
        let mut daemon = Daemon::spawn(cmd);
        daemon.wait_for("signet CA ready", Duration::from_secs(30));
        daemon
    }

    /// Kills the CA with SIGKILL (no shutdown of any kind).
    pub fn kill(&mut self) {
        self.daemon.child.kill().unwrap();
        self.daemon.child.wait().unwrap();
    }

    /// Starts the (killed or stopped) CA again in the same directory on the
    /// same ports, with `extra`.
    pub fn restart(&mut self, extra: &[&str]) {
        self.daemon = Self::spawn(
            self.dir.path(),
            &self.admin_socket,
            self.metrics_port,
            self.node_port,
            None,
            extra,
        );
    }

    /// Kills the CA with SIGKILL, waits `down`, and starts it again.
    pub fn kill_and_restart(&mut self, extra: &[&str], down: Duration) {
        self.kill();
        std::thread::sleep(down);
        self.restart(extra);
    }

    /// Stops the CA and hands back its directory for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        assert!(
            self.daemon.terminate(),
            "CA did not exit cleanly:\n{}",
            self.daemon.log.join("\n")
        );
        let CaProcess { dir, .. } = self;
        dir
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        run_ok(args, &self.admin_socket)
    }

    pub fn run_err(&self, args: &[&str]) -> String {
        run_err(args, &self.admin_socket)
    }

    /// HTTP GET on the metrics port: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_port, path)
    }
}

impl CaProcess {
    /// The node API address.
    pub fn node_addr(&self) -> String {
        format!("127.0.0.1:{}", self.node_port)
    }

    /// Writes the bundle to a file agents can bootstrap from.
    pub fn bundle_file(&self) -> PathBuf {
        let path = self.dir.path().join("bootstrap-bundle.pem");
        std::fs::write(&path, self.run_ok(&["bundle", "show"])).unwrap();
        path
    }

    /// A join token for node `name`.
    pub fn token(&self, name: &str) -> String {
        self.run_ok(&["token", "create", "--node-name", name])
            .trim()
            .to_owned()
    }

    /// Registers `id` under agent node `node` with `selectors`; returns the entry ID.
    pub fn entry(&self, id: &str, node: &str, selectors: &[&str], extra: &[&str]) -> String {
        let parent = format!("spiffe://example.org/signet/agent/{node}");
        let mut args = vec!["entry", "create", "--spiffe-id", id, "--parent-id", &parent];
        for s in selectors {
            args.push("--selector");
            args.push(s);
        }
        args.extend_from_slice(extra);
        self.run_ok(&args).trim().to_owned()
    }
}
