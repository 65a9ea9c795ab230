//! A `signet agent run` of a test's own, attested to a [`crate::CaProcess`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ca::CaProcess;
use crate::process::{signet, Daemon};

/// A `signet agent run` in a temp dir. The directory is world-readable so
/// that processes of other users can reach the Workload API socket.
pub struct AgentProcess {
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    pub socket: PathBuf,
}

/// The port of `metrics=127.0.0.1:PORT` in a daemon's ready line.
pub fn metrics_port_of(ready_line: &str) -> u16 {
    ready_line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("metrics="))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {ready_line:?}"))
}

impl AgentProcess {
    /// Starts an agent against `ca` and waits for its ready line.
    pub fn start(ca: &CaProcess, token: &str, extra: &[&str]) -> AgentProcess {
        Self::start_attested_by(ca, &["--join-token", token], extra)
    }

    /// The port of its `/metrics` (from its ready line).
    pub fn metrics_port(&self) -> u16 {
        let line = self
            .daemon
            .log
            .iter()
            .find(|l| l.contains("signet agent ready"))
            .expect("the agent's ready line");
        metrics_port_of(line)
    }

    /// Starts an agent that proves its node with `attestation` (e.g.
    /// `--node-attestation x509pop --x509pop-cert …`) instead of a join
    /// token, and waits for its ready line.
    pub fn start_attested_by(ca: &CaProcess, attestation: &[&str], extra: &[&str]) -> AgentProcess {
        let (dir, cmd, socket) = Self::command_attested_by(ca, attestation, extra);
        let mut daemon = Daemon::spawn(cmd);
        daemon.wait_for("signet agent ready", Duration::from_secs(30));
        AgentProcess {
            dir,
            daemon,
            socket,
        }
    }

    /// The command that would start an agent, its dir and socket.
    pub fn command(
        ca: &CaProcess,
        token: &str,
        extra: &[&str],
    ) -> (tempfile::TempDir, Command, PathBuf) {
        Self::command_attested_by(ca, &["--join-token", token], extra)
    }

    /// [`AgentProcess::command`] with `attestation` for the join token.
    pub fn command_attested_by(
        ca: &CaProcess,
        attestation: &[&str],
        extra: &[&str],
    ) -> (tempfile::TempDir, Command, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cmd = Self::command_in(dir.path(), ca, attestation, extra);
        let socket = dir.path().join("agent.sock");
        (dir, cmd, socket)
    }

    /// The command that starts an agent with its data and socket in `dir`
    /// (a first start, or a restart of the same agent).
    pub fn command_in(dir: &Path, ca: &CaProcess, attestation: &[&str], extra: &[&str]) -> Command {
        let mut cmd = signet();
        cmd.args(["agent", "run", "--ca", &ca.node_addr(), "--trust-bundle"])
            .arg(ca.bundle_file())
            .args(attestation)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra);
        cmd
    }

    /// `unix://` endpoint of the Workload API.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}
