//! Helpers for end-to-end tests that run the real `signet` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub mod go;
pub mod python;

/// Path of the `signet` binary under test.
pub fn signet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signet"))
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

/// A `signet ca serve` in a temp dir.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    pub admin_socket: PathBuf,
    pub metrics_port: u16,
    pub node_port: u16,
}

impl TestCa {
    pub fn start(extra: &[&str]) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> TestCa {
        Self::start_with_port(dir, signet_test_support::free_port(), extra)
    }

    /// Starts (or restarts) the CA in `dir` with its node API on `node_port`.
    pub fn start_with_port(dir: tempfile::TempDir, node_port: u16, extra: &[&str]) -> TestCa {
        Self::start_full(dir, node_port, None, extra)
    }

    /// Starts the CA under an open-file limit of `nofile` (soft and hard,
    /// through util-linux's `prlimit`), as a host with a low `LimitNOFILE`.
    pub fn start_with_nofile(nofile: u64, extra: &[&str]) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        Self::start_full(dir, signet_test_support::free_port(), Some(nofile), extra)
    }

    fn start_full(
        dir: tempfile::TempDir,
        node_port: u16,
        nofile: Option<u64>,
        extra: &[&str],
    ) -> TestCa {
        let admin_socket = dir.path().join("admin.sock");
        let metrics_port = signet_test_support::free_port();
        let daemon = Self::spawn(
            dir.path(),
            &admin_socket,
            metrics_port,
            node_port,
            nofile,
            extra,
        );
        TestCa {
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
        let TestCa { dir, .. } = self;
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

/// Minimal HTTP/1.0 GET against 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Whether this test process runs as root (CI does).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

impl TestCa {
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

/// A `signet agent run` in a temp dir. The directory is world-readable so
/// that processes of other users can reach the Workload API socket.
pub struct TestAgent {
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

impl TestAgent {
    /// Starts an agent against `ca` and waits for its ready line.
    pub fn start(ca: &TestCa, token: &str, extra: &[&str]) -> TestAgent {
        let (dir, cmd, socket) = Self::command(ca, token, extra);
        let mut daemon = Daemon::spawn(cmd);
        daemon.wait_for("signet agent ready", Duration::from_secs(30));
        TestAgent {
            dir,
            daemon,
            socket,
        }
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

    /// The command that would start an agent, its dir and socket.
    pub fn command(
        ca: &TestCa,
        token: &str,
        extra: &[&str],
    ) -> (tempfile::TempDir, Command, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("agent.sock");
        let mut cmd = signet();
        cmd.args(["agent", "run", "--ca", &ca.node_addr(), "--trust-bundle"])
            .arg(ca.bundle_file())
            .args(["--join-token", token, "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra);
        (dir, cmd, socket)
    }

    /// `unix://` endpoint of the Workload API.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
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

/// A TCP echo server on loopback that counts the connections it accepted.
pub struct EchoApp {
    pub port: u16,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl EchoApp {
    pub fn start() -> EchoApp {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        EchoApp { port, accepted }
    }

    /// An HTTP/1.1 app: answers every request with 200 and a body listing
    /// the `x-signet-peer-id` values it received (in `-` or `_` spelling),
    /// then the method and path.
    pub fn start_http() -> EchoApp {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let mut peer_ids = Vec::new();
                        let mut others = Vec::new();
                        let mut content_length = 0usize;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = line.split_once(':') {
                                // As a CGI-style server reads a name: every
                                // character not a letter or digit becomes
                                // one separator (`x_signet_peer_id` and
                                // `x.signet.peer.id` are the identity header).
                                let folded: String = k
                                    .chars()
                                    .map(|c| {
                                        if c.is_ascii_alphanumeric() {
                                            c.to_ascii_lowercase()
                                        } else {
                                            '-'
                                        }
                                    })
                                    .collect();
                                if folded == "x-signet-peer-id" {
                                    peer_ids.push(v.trim().to_owned());
                                } else if folded.starts_with("x-signet-") {
                                    others.push(k.to_owned());
                                }
                                if k.eq_ignore_ascii_case("content-length") {
                                    content_length = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0u8; content_length];
                        let _ = reader.read_exact(&mut body);
                        let mut parts = request_line.split_whitespace();
                        let mut reply = format!(
                            "{}|{} {}",
                            peer_ids.join(","),
                            parts.next().unwrap_or(""),
                            parts.next().unwrap_or("")
                        );
                        if !others.is_empty() {
                            reply.push_str(&format!("|also {}", others.join(",")));
                        }
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                    }
                });
            }
        });
        EchoApp { port, accepted }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An HTTP/1.1 app on `port` (0: any): a path with `/sleep/N` is
/// answered after N ms; anything else at once; every answer names the app
/// (`tag`) and counts the request; `Connection: close` is honoured. `stop`
/// closes its port and connections (a clone stops the same app).
#[derive(Clone)]
pub struct SlowApp {
    pub port: u16,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl SlowApp {
    pub fn start(tag: &'static str, port: u16) -> SlowApp {
        Self::start_delayed(tag, port, Duration::ZERO)
    }

    /// Like [`SlowApp::start`], answering every request `delay` late.
    pub fn start_delayed(tag: &'static str, port: u16, delay: Duration) -> SlowApp {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = SlowApp {
            port,
            count: Default::default(),
            stopped: Default::default(),
            conns: Default::default(),
        };
        let (counter, stopped, conns) = (app.count.clone(), app.stopped.clone(), app.conns.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                conns.lock().unwrap().push(conn.try_clone().unwrap());
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut length = 0usize;
                        let mut close = false;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h.trim().is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    length = v.trim().parse().unwrap_or(0);
                                }
                                if k.eq_ignore_ascii_case("connection")
                                    && v.trim().eq_ignore_ascii_case("close")
                                {
                                    close = true;
                                }
                            }
                        }
                        let mut body = vec![0u8; length];
                        let _ = reader.read_exact(&mut body);
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                        if let Some((_, ms)) = path.split_once("/sleep/") {
                            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
                        }
                        if !delay.is_zero() {
                            std::thread::sleep(delay);
                        }
                        let reply = format!("{tag} {path} {}", String::from_utf8_lossy(&body));
                        // `/forge/<reason>`: an app (or a gateway relaying
                        // an answer from behind it) that sends Signet's
                        // control headers, as an inbound proxy does when
                        // its app is unreachable.
                        let (status, forged) = match path.split_once("/forge/") {
                            Some((_, why)) => (
                                "502 Bad Gateway",
                                format!(
                                    "x-signet-not-forwarded: 1\r\nx-signet-error: {why}\r\nx-signet-answer-token: guessed\r\n"
                                ),
                            ),
                            None => ("200 OK", String::new()),
                        };
                        // One write: a response in pieces meets Nagle and
                        // delayed ACKs (40 ms).
                        let response = format!(
                            "HTTP/1.1 {status}\r\n{forged}Content-Length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                        let _ = conn.write_all(response.as_bytes());
                        if close {
                            let _ = conn.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    }
                });
            }
        });
        app
    }

    pub fn served(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the port (nothing listens any more) and every connection.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then drops the listener.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Until the port refuses connections.
        eventually(Duration::from_secs(5), "the app's port to close", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .is_err()
                .then_some(())
        });
    }
}

/// One HTTP/1.1 request on a new connection: status, `x-signet-error`,
/// body.
pub fn http_call(port: u16, method: &str, path: &str, body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: payments\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let error = head
        .lines()
        .find_map(|l| l.strip_prefix("x-signet-error: "))
        .unwrap_or("")
        .to_owned();
    (status, error, body.to_owned())
}

/// `signet proxy run` with an inbound listener on a free loopback port in
/// front of the app at 127.0.0.1:`app_port`, its identity from the agent at
/// `agent_socket`; `inbound_extra` holds more `[inbound]` keys. Returns
/// once its endpoint is published, with the port.
pub fn start_inbound(
    dir: &Path,
    agent_socket: &Path,
    policy_dir: &Path,
    app_port: u16,
    inbound_extra: &str,
) -> (Daemon, u16) {
    let port = signet_test_support::free_port();
    let cfg = dir.join(format!("inbound-{port}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "workload_api_socket = \"unix://{}\"\npolicy_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout = 2\n[inbound]\nlisten = \"127.0.0.1:{port}\"\nforward_to = \"127.0.0.1:{app_port}\"\n{inbound_extra}\n",
            agent_socket.display(),
            policy_dir.display(),
        ),
    )
    .unwrap();
    let mut cmd = signet();
    cmd.args(["proxy", "run", "--config"]).arg(&cfg);
    let mut proxy = Daemon::spawn(cmd);
    proxy.wait_for("endpoint published", Duration::from_secs(20));
    (proxy, port)
}

/// `signet proxy run` with one outbound listener on 127.0.0.1:`port` that
/// names only `server_id` (its endpoints discovered through the agent at
/// `agent_socket`), its admin on `admin_port`; `outbound_extra` holds more
/// `[[outbound]]` keys and tables. Returns once it is ready.
pub fn start_caller(
    dir: &Path,
    agent_socket: &Path,
    port: u16,
    admin_port: u16,
    server_id: &str,
    outbound_extra: &str,
) -> Daemon {
    let cfg = dir.join(format!("caller-{port}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "workload_api_socket = \"unix://{}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n[[outbound]]\nlisten = \"127.0.0.1:{port}\"\nserver_id = \"{server_id}\"\n{outbound_extra}\n",
            agent_socket.display()
        ),
    )
    .unwrap();
    let mut cmd = signet();
    cmd.args(["proxy", "run", "--config"]).arg(&cfg);
    let mut caller = Daemon::spawn(cmd);
    caller.wait_for("signet proxy ready", Duration::from_secs(20));
    caller
}

/// CA, two agents ("hosts" a and b), an echo app behind an inbound proxy on
/// host b (identity `payments`), and an outbound proxy on host a (identity
/// `checkout`) pointed at it.
pub struct Mesh {
    pub ca: TestCa,
    pub agent_a: TestAgent,
    pub agent_b: TestAgent,
    pub app: EchoApp,
    pub policy_dir: PathBuf,
    pub server: Daemon,
    pub client: Option<Daemon>,
    pub client_port: u16,
    pub server_port: u16,
    pub server_admin: u16,
    /// The outbound proxy's admin port.
    pub client_admin: u16,
}

pub const CHECKOUT: &str = "spiffe://example.org/ns/prod/sa/checkout";

/// Policy for payments: checkout may call it.
pub const ALLOW_CHECKOUT: &str = r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
"#;

/// Policy for payments: only web may call it (checkout is denied).
pub const ALLOW_WEB_ONLY: &str = r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/web"]
"#;
pub const PAYMENTS: &str = "spiffe://example.org/ns/prod/sa/payments";

impl Mesh {
    /// Starts everything; `policy` is written to payments.toml first;
    /// `server_id` is what the outbound side expects; `ttl` the SVID TTL.
    pub fn start(policy: &str, server_id: &str, ttl: &str) -> Mesh {
        Self::start_with(policy, server_id, ttl, "tcp")
    }

    /// Like [`Mesh::start`], with the inbound listener's protocol; an
    /// `http` mesh puts an HTTP app (see [`EchoApp::start_http`]) behind it.
    pub fn start_with(policy: &str, server_id: &str, ttl: &str, protocol: &str) -> Mesh {
        Self::start_limited(policy, server_id, ttl, protocol, "")
    }

    /// Like [`Mesh::start_with`], with `server_extra` (TOML tables such as
    /// `[limits]`) appended to the inbound proxy's configuration.
    pub fn start_limited(
        policy: &str,
        server_id: &str,
        ttl: &str,
        protocol: &str,
        server_extra: &str,
    ) -> Mesh {
        Self::start_on(
            TestCa::start(&[]),
            &[],
            policy,
            server_id,
            ttl,
            protocol,
            server_extra,
        )
    }

    /// Like [`Mesh::start_limited`], on a CA already running, with
    /// `agent_extra` flags for both agents (e.g. `--ca` of another replica).
    pub fn start_on(
        ca: TestCa,
        agent_extra: &[&str],
        policy: &str,
        server_id: &str,
        ttl: &str,
        protocol: &str,
        server_extra: &str,
    ) -> Mesh {
        let agent_a = TestAgent::start(&ca, &ca.token("node-a"), agent_extra);
        let agent_b = TestAgent::start(&ca, &ca.token("node-b"), agent_extra);
        let uid = format!("unix:uid:{}", my_uid());
        ca.entry(CHECKOUT, "node-a", &[&uid], &["--x509-ttl", ttl]);
        ca.entry(PAYMENTS, "node-b", &[&uid], &["--x509-ttl", ttl]);
        let app = if protocol == "http" {
            EchoApp::start_http()
        } else {
            EchoApp::start()
        };
        let policy_dir = ca.dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir).unwrap();
        std::fs::write(policy_dir.join("payments.toml"), policy).unwrap();
        let (server_port, server_admin) = (
            signet_test_support::free_port(),
            signet_test_support::free_port(),
        );
        let server_cfg = ca.dir.path().join("server.toml");
        std::fs::write(
            &server_cfg,
            format!(
                "workload_api_socket = \"unix://{}\"\npolicy_dir = \"{}\"\nadmin_listen = \"127.0.0.1:{server_admin}\"\ndrain_timeout = 5\n[inbound]\nlisten = \"127.0.0.1:{server_port}\"\nforward_to = \"127.0.0.1:{}\"\nprotocol = \"{protocol}\"\n{server_extra}",
                agent_b.socket.display(),
                policy_dir.display(),
                app.port
            ),
        )
        .unwrap();
        let mut cmd = signet();
        cmd.args(["proxy", "run", "--config"]).arg(&server_cfg);
        let mut server = Daemon::spawn(cmd);
        server.wait_for("signet proxy ready", Duration::from_secs(20));
        let mut mesh = Mesh {
            ca,
            agent_a,
            agent_b,
            app,
            policy_dir,
            server,
            client: None,
            client_port: 0,
            server_port,
            server_admin,
            client_admin: 0,
        };
        mesh.start_client(server_id);
        mesh
    }

    /// (Re)starts the outbound proxy expecting `server_id`.
    pub fn start_client(&mut self, server_id: &str) {
        self.start_client_with(server_id, "")
    }

    /// (Re)starts the outbound proxy expecting `server_id`, with
    /// `outbound_extra` (keys such as `allowed_uids = [..]`) in its
    /// `[[outbound]]` table.
    pub fn start_client_with(&mut self, server_id: &str, outbound_extra: &str) {
        self.client = None;
        let port = signet_test_support::free_port();
        let admin = signet_test_support::free_port();
        let cfg = self.ca.dir.path().join(format!("client-{port}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "workload_api_socket = \"unix://{}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[[outbound]]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{}\"\nserver_id = \"{server_id}\"\n{outbound_extra}",
                self.agent_a.socket.display(),
                self.server_port
            ),
        )
        .unwrap();
        let mut cmd = signet();
        cmd.args(["proxy", "run", "--config"]).arg(&cfg);
        let mut client = Daemon::spawn(cmd);
        client.wait_for("signet proxy ready", Duration::from_secs(20));
        self.client = Some(client);
        self.client_port = port;
        self.client_admin = admin;
    }

    /// Sends `data` through the pair, half-closes, and returns what came back
    /// before EOF.
    pub fn round_trip(&self, data: &[u8]) -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reader = s.try_clone().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = s.write_all(&data);
            let _ = s.shutdown(std::net::Shutdown::Write);
        });
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        writer.join().unwrap();
        out
    }

    /// A CA key incident: a new key prepared and activated, every SVID of
    /// the old one replaced (`taint`), the old key revoked (forced: SVIDs
    /// it signed may be held still) — returns once the inbound proxy holds
    /// the bundle without it.
    pub fn revoke_the_signing_key(&self) {
        let keys: serde_json::Value =
            serde_json::from_str(&self.ca.run_ok(&["ca", "show", "--output", "json"])).unwrap();
        let old = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == "x509" && k["state"] == "ACTIVE")
            .unwrap_or_else(|| panic!("no active X.509 key: {keys}"))["id"]
            .as_str()
            .unwrap()
            .to_owned();
        self.ca.run_ok(&["ca", "prepare"]);
        eventually(
            Duration::from_secs(30),
            "the new key activated after the grace period",
            || {
                run(&["ca", "activate"], &self.ca.admin_socket)
                    .status
                    .success()
                    .then_some(())
            },
        );
        self.ca.run_ok(&["ca", "taint", &old]);
        self.ca.run_ok(&["ca", "revoke", &old, "--force"]);
        eventually(
            Duration::from_secs(30),
            "the inbound proxy holding the bundle without the revoked key",
            || {
                let text = self.server_metrics();
                (metric(&text, "signet_proxy_trust_bundle_authorities ") == 1).then_some(())
            },
        );
    }

    /// The inbound proxy's metrics text.
    pub fn server_metrics(&self) -> String {
        http_get(self.server_admin, "/metrics").1
    }

    /// Opens a connection through the pair, then rewrites payments' policy
    /// to [`ALLOW_WEB_ONLY`]: the open connection must be closed within
    /// 10 s, and a new one refused.
    pub fn revoke_checkout_and_expect_closed(&self) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"open").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"open");
        std::fs::write(self.policy_dir.join("payments.toml"), ALLOW_WEB_ONLY).unwrap();
        let start = Instant::now();
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the revoked connection stayed open"
        );
        assert!(
            matches!(r, Ok(0)) || r.is_err(),
            "expected the connection to be closed: {r:?}"
        );
        let _ = s.write_all(b"still there?");
        assert!(
            self.round_trip(b"new").is_empty(),
            "and new ones are refused"
        );
    }

    /// Keeps one connection through the pair talking for `secs` seconds
    /// (a line there and back every 100 ms), opening a new connection
    /// every `new_every` lines: with short SVIDs, both proxies rotate
    /// meanwhile, and neither the old connection nor the new ones may
    /// break.
    pub fn talk_through_rotations(&self, secs: u64, new_every: u32) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let mut i = 0u32;
        while started.elapsed() < Duration::from_secs(secs) {
            let msg = format!("message {i}\n");
            s.write_all(msg.as_bytes()).unwrap();
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(buf, msg.as_bytes());
            if i % new_every == 0 {
                assert_eq!(self.round_trip(b"new"), b"new", "new connection {i}");
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The outbound proxy's metrics text.
    pub fn client_metrics(&self) -> String {
        http_get(self.client_admin, "/metrics").1
    }
}

/// A Workload API client on the agent's Unix socket.
pub async fn workload_api_client(
    socket: &Path,
) -> signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    let channel = signet_identity::workload_api::connect(socket)
        .await
        .unwrap();
    signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel)
}

#[allow(unused_imports)]
pub use signet_identity::workload_api::with_security_header;

/// TLS for talking to the CA's node API as anyone on the network can:
/// the CA authenticated against its bundle, no client certificate, h2.
pub fn anonymous_node_tls(bundle_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    let bundle = signet_identity::TrustBundle::from_pem(
        signet_identity::TrustDomain::new("example.org").unwrap(),
        bundle_pem,
    )
    .unwrap();
    let verifier = signet_identity::tls::SpiffeServerVerifier::new(
        signet_identity::tls::BundleHandle::new(bundle),
        std::sync::Arc::new(|_: &signet_identity::SpiffeId| true),
    );
    let mut config = rustls::ClientConfig::builder_with_provider(signet_identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

/// A node API client to `ca_addr` authenticated as `agent`, with the SVID
/// and bundle it keeps in its data dir.
pub async fn node_client_as(
    agent: &TestAgent,
    ca_addr: &str,
) -> signet_proto::node::node_client::NodeClient<tonic::transport::Channel> {
    node_client_in(&agent.dir.path().join("data"), ca_addr).await
}

/// A node API client to `ca_addr` authenticated with the agent SVID kept
/// in agent data dir `data_dir`.
pub async fn node_client_in(
    data_dir: &Path,
    ca_addr: &str,
) -> signet_proto::node::node_client::NodeClient<tonic::transport::Channel> {
    let td = signet_identity::TrustDomain::new("example.org").unwrap();
    let (svid, bundle) = signet_agent::agent_identity::load(data_dir, &td)
        .unwrap()
        .unwrap();
    let trust = signet_agent::node_client::ServerTrust::Bundle(
        signet_identity::tls::BundleHandle::new(bundle),
    );
    signet_agent::node_client::connect(&[ca_addr.to_owned()], &td, &trust, Some(&svid.cert))
        .await
        .unwrap()
}

/// Attests a new agent for node `node` over the node API, without an agent
/// process (a simulated agent), and returns a client authenticated by its
/// SVID.
pub async fn attested_node_client(
    ca: &TestCa,
    node: &str,
) -> signet_proto::node::node_client::NodeClient<tonic::transport::Channel> {
    let td = signet_identity::TrustDomain::new("example.org").unwrap();
    let bundle =
        signet_identity::TrustBundle::from_pem(td.clone(), &ca.run_ok(&["bundle", "show"]))
            .unwrap();
    let trust = signet_agent::node_client::ServerTrust::Bundle(
        signet_identity::tls::BundleHandle::new(bundle),
    );
    let addr = [ca.node_addr()];
    let mut anonymous = signet_agent::node_client::connect(&addr, &td, &trust, None)
        .await
        .unwrap();
    let (key, csr) = signet_agent::agent_identity::new_key_and_csr().unwrap();
    let resp = anonymous
        .attest_agent(signet_proto::node::AttestAgentRequest {
            join_token: ca.token(node),
            csr,
        })
        .await
        .unwrap()
        .into_inner();
    let (svid, _) = signet_agent::agent_identity::from_response(&resp, &key, std::time::SystemTime::now()).unwrap();
    signet_agent::node_client::connect(&addr, &td, &trust, Some(&svid.cert))
        .await
        .unwrap()
}

/// An admin API client on the CA's socket (for tests that make many calls).
pub async fn admin_client(
    ca: &TestCa,
) -> signet_proto::admin::admin_client::AdminClient<tonic::transport::Channel> {
    let channel = signet_identity::unix_grpc::channel(&ca.admin_socket)
        .await
        .unwrap();
    signet_proto::admin::admin_client::AdminClient::new(channel)
}

/// The workload's `FetchX509SVID` stream on `agent`, once a message has
/// exactly `n` SVIDs (retried for 30 s: the agent may not have them yet),
/// and that message.
pub async fn svid_stream(
    agent: &TestAgent,
    n: usize,
) -> (
    tonic::Streaming<signet_proto::workload::X509svidResponse>,
    signet_proto::workload::X509svidResponse,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{n} SVIDs within 30 s");
        let mut client = workload_api_client(&agent.socket).await;
        if let Ok(s) = client
            .fetch_x509svid(with_security_header(
                signet_proto::workload::X509svidRequest {},
            ))
            .await
        {
            let mut s = s.into_inner();
            if let Ok(Some(m)) = s.message().await {
                if m.svids.len() == n {
                    return (s, m);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the Prometheus line starting with `prefix`, or 0.
pub fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
