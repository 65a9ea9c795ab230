//! go-spiffe v2 (the reference Go library, on grpc-go) as a client we did
//! not write: tests/go, built once per test binary with the machine's `go`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The built Go client, or `None` (announced loudly) when `go` is absent;
/// under `SIGNET_REQUIRE_GO=1` (CI) a missing or failing `go` fails instead.
pub fn go_client() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let required = std::env::var("SIGNET_REQUIRE_GO").is_ok();
            let have_go = Command::new("go")
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !have_go {
                assert!(
                    !required,
                    "SIGNET_REQUIRE_GO is set but `go` is not installed"
                );
                eprintln!("!!! SKIPPING: Go is not installed, go-spiffe client not tested");
                return None;
            }
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/go");
            // One binary per version of the sources, under cargo's target
            // directory (gone with `cargo clean`), not a new file in /tmp
            // for every test process.
            let out = crate::process::target_tmpdir()
                .join(format!("signet-go-client-{:016x}", sources_digest(&src)));
            if out.is_file() {
                return Some(out);
            }
            // Test binaries run side by side: each builds under its own
            // name and renames into place, so none runs a half-written file.
            let partial = out.with_extension(format!("partial-{}", std::process::id()));
            let build = Command::new("go")
                .args(["build", "-o"])
                .arg(&partial)
                .arg(".")
                .current_dir(&src)
                .output()
                .expect("go build runs");
            if !build.status.success() {
                let _ = std::fs::remove_file(&partial);
                let err = String::from_utf8_lossy(&build.stderr).into_owned();
                assert!(!required, "go build of tests/go failed:\n{err}");
                eprintln!("!!! SKIPPING: go build of tests/go failed (no module proxy?):\n{err}");
                return None;
            }
            std::fs::rename(&partial, &out).expect("move the built Go client into place");
            Some(out)
        })
        .clone()
}

/// A digest of tests/go's files (names and contents), so a changed client
/// is rebuilt and an unchanged one is not.
fn sources_digest(src: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("read tests/go")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        file.file_name().hash(&mut hasher);
        std::fs::read(&file)
            .expect("read a tests/go file")
            .hash(&mut hasher);
    }
    hasher.finish()
}

/// Runs the Go client with `args`, which must succeed; its last stdout
/// line.
pub fn run(client: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(client)
        .args(args)
        .output()
        .expect("run the Go client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go client {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().trim().to_owned()
}

/// A Go client command that does something once, waits for a line on its
/// stdin, and does it again on the same connection (`hbone-wait`,
/// `get-wait`): the test changes the world in between.
pub struct GoTwoStep {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl GoTwoStep {
    /// Runs `go` with `args`; returns it and the first outcome line.
    pub fn start(go: &std::path::Path, args: &[&str]) -> (Self, String) {
        use std::io::BufRead;
        let mut child = Command::new(go)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the Go client");
        let stdout = child.stdout.take().expect("the Go client's stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines
            .next()
            .expect("the Go client's first outcome")
            .expect("read the Go client's output");
        (Self { child, lines }, first)
    }

    /// Lets it go on; the outcome lines it prints until it exits.
    pub fn again(mut self) -> Vec<String> {
        use std::io::Write;
        self.child
            .stdin
            .take()
            .expect("the Go client's stdin")
            .write_all(b"go on\n")
            .expect("signal the Go client");
        let later = self
            .lines
            .map(|l| l.expect("read the Go client's output"))
            .collect();
        let _ = self.child.wait();
        later
    }
}
