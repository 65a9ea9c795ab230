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
            let out = std::env::temp_dir().join(format!("signet-go-client-{}", std::process::id()));
            let build = Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                .output()
                .expect("go build runs");
            if !build.status.success() {
                let err = String::from_utf8_lossy(&build.stderr).into_owned();
                assert!(!required, "go build of tests/go failed:\n{err}");
                eprintln!("!!! SKIPPING: go build of tests/go failed (no module proxy?):\n{err}");
                return None;
            }
            Some(out)
        })
        .clone()
}
