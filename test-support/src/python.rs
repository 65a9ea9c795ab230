//! The Python `spiffe` package (grpcio) and PyJWT as clients we did not
//! write: tests/python/spiffe_client.py, driven from the tests.

use std::path::PathBuf;
use std::process::Command;

/// Whether python3 with `spiffe` is there; skips loudly when not, and
/// fails under `SIGNET_REQUIRE_PYTHON_SPIFFE=1` (CI).
pub fn python_spiffe_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import spiffe, grpc, cryptography, jwt"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("SIGNET_REQUIRE_PYTHON_SPIFFE").is_err(),
            "SIGNET_REQUIRE_PYTHON_SPIFFE is set but python3 cannot import spiffe (pip install spiffe)"
        );
        eprintln!(
            "!!! SKIPPING: python3 with the `spiffe` package is not installed (pip install spiffe)"
        );
    }
    ok
}

pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/spiffe_client.py")
}

/// Runs the Python workload client; returns its last stdout line.
pub fn python(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_owned()
}

pub fn py(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(script()).args(args);
    c
}
