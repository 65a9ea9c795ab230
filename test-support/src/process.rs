//! Running the `signet` binary under test: one-shot commands, daemons
//! whose log is read line by line, and waiting for a condition.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Path of the `signet` binary under test.
pub fn signet_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SIGNET_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test binary> → target/<profile>/signet: cargo
    // builds the package's binaries before its integration tests and
    // benches.
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    profile_dir.join("signet")
}

/// Cargo's scratch directory for tests (`target/tmp`, what
/// `CARGO_TARGET_TMPDIR` names in an integration test): kept across runs,
/// gone with `cargo clean`.
pub fn target_tmpdir() -> PathBuf {
    let dir = signet_bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("tmp"))
        .expect("a target directory");
    std::fs::create_dir_all(&dir).expect("create target/tmp");
    dir
}

/// A `signet` command with a clean environment for Signet variables.
pub fn signet() -> Command {
    let mut c = Command::new(signet_bin());
    c.env_remove("SIGNET_ADMIN_SOCKET")
        .env_remove("SPIFFE_ENDPOINT_SOCKET");
    c
}

/// Runs `signet` with `args`; returns the output.
pub fn run(args: &[&str], admin_socket: &Path) -> Output {
    signet()
        .args(args)
        .env("SIGNET_ADMIN_SOCKET", admin_socket)
        .output()
        .unwrap()
}

/// Runs and asserts success; returns stdout.
pub fn run_ok(args: &[&str], admin_socket: &Path) -> String {
    let out = run(args, admin_socket);
    assert!(
        out.status.success(),
        "signet {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and asserts failure with exactly one line on stderr; returns it.
pub fn run_err(args: &[&str], admin_socket: &Path) -> String {
    let out = run(args, admin_socket);
    assert!(
        !out.status.success(),
        "signet {args:?} unexpectedly succeeded"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("signet: error: "), "{stderr}");
    lines[0].to_owned()
}

/// A daemon child process whose stderr is collected line by line; it is
/// terminated (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
    lines: Receiver<String>,
    pub log: Vec<String>,
}

impl Daemon {
    pub fn spawn(mut cmd: Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn daemon");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines: rx,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`; panics with the log so far.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?} within {timeout:?}; exit: {:?}; log:\n{}",
                    self.child.try_wait(),
                    self.log.join("\n")
                ),
            }
        }
    }

    /// The lines of `log` that contain every one of `words`.
    pub fn lines_with(&self, words: &[&str]) -> Vec<&String> {
        self.log
            .iter()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .collect()
    }

    /// Stops the daemon (SIGTERM) and collects every line it wrote into
    /// `log`, to the end of its output.
    pub fn stop_and_read_log(&mut self) {
        self.terminate();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
    }

    /// Sends SIGTERM and waits for exit; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.try_recv() {
                    self.log.push(line);
                }
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Whether this test process runs as root (CI does).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Retries `f` every 50 ms until it returns `Some`, or panics after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The uid of this test process.
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// Runs `program` with `args` in `dir` as an operator would (openssl,
/// ssh-keygen); panics with its stderr, naming the package to install when
/// the tool is absent.
pub fn run_tool(dir: &Path, program: &str, package: &str, args: &[&str]) {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required (apt install {package}): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
