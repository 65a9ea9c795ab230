//! gRPC through Signet, with stacks we did not write: a Python grpcio
//! server behind an HTTP-mode inbound proxy (`app_protocol = "h2"`), called
//! (1) by a grpcio client through an HTTP outbound listener that names only
//! the server's SPIFFE ID, and (2) directly by a grpcio client over mTLS
//! with the caller's SVID from the Workload API (`signet id fetch`) — the
//! proxy must offer ALPN h2, as grpc-core insists. Per-method policy
//! (`paths`) applies both ways; trailers (grpc-status and custom metadata)
//! come back intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::process::{Command, Stdio};

use signet_test_support::python::{python, python_spiffe_available};
use signet_test_support::*;

const POLICY: &str = r#"
[[allow]]
to = "spiffe://example.org/ns/prod/sa/payments"
from = ["spiffe://example.org/ns/prod/sa/checkout"]
paths = ["/demo.Echo/Allowed"]
"#;

fn script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/grpc_echo.py")
}

/// Kills the Python server when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn call(args: &[&str]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(script()).arg("call").args(args);
    python(&mut cmd)
}

#[test]
fn grpc_crosses_a_signet_pair_and_a_plain_grpc_client_calls_the_inbound_proxy_with_its_svid() {
    let _alone = crate::alone();
    if !python_spiffe_available() {
        return;
    }
    let ca = CaProcess::start(&[]);
    let agent_a = AgentProcess::start(&ca, &ca.token("node-a"), &[]);
    let agent_b = AgentProcess::start(&ca, &ca.token("node-b"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry(CHECKOUT, "node-a", &[&uid], &[]);
    ca.entry(
        PAYMENTS,
        "node-b",
        &[&uid],
        &["--dns-name", "payments.example"],
    );
    let policy_dir = ca.dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("payments.toml"), POLICY).unwrap();

    // The gRPC server (plaintext HTTP/2 on loopback, behind its proxy).
    let app_port = signet_test_support::free_port();
    let mut server = Command::new("python3")
        .arg(script())
        .args(["serve", &app_port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "serving");
    let _server = Child(server);

    let (_inbound, inbound_port) = start_inbound(
        ca.dir.path(),
        &agent_b.socket,
        &policy_dir,
        app_port,
        "protocol = \"http\"\napp_protocol = \"h2\"",
    );
    let outbound_port = signet_test_support::free_port();
    let _outbound = start_caller(
        ca.dir.path(),
        &agent_a.socket,
        outbound_port,
        signet_test_support::free_port(),
        PAYMENTS,
        "protocol = \"http\"",
    );

    // (1) Through the pair.
    let target = format!("127.0.0.1:{outbound_port}");
    let allowed = call(&[&target, "Allowed"]);
    println!("through the pair, allowed method: {allowed}");
    assert_eq!(allowed, "OK echo:ping 42", "reply and trailer intact");
    let denied = call(&[&target, "Denied"]);
    println!("through the pair, denied method: {denied}");
    assert!(denied.starts_with("ERR PERMISSION_DENIED"), "{denied}");

    // (2) Directly, with the caller's SVID from the Workload API.
    let tls = tempfile::tempdir().unwrap();
    let fetched = signet()
        .args(["id", "fetch", "--socket"])
        .arg(&agent_a.socket)
        .arg("--write")
        .arg(tls.path())
        .output()
        .unwrap();
    assert!(fetched.status.success(), "{fetched:?}");
    let file = |n: &str| tls.path().join(n).to_str().unwrap().to_owned();
    let direct = format!("127.0.0.1:{inbound_port}");
    let (root, key, chain) = (file("bundle.pem"), file("svid.key"), file("svid.pem"));
    let allowed = call(&[&direct, "Allowed", &root, &key, &chain, "payments.example"]);
    println!("direct mTLS, allowed method: {allowed}");
    assert_eq!(allowed, "OK echo:ping 42");
    let denied = call(&[&direct, "Denied", &root, &key, &chain, "payments.example"]);
    println!("direct mTLS, denied method: {denied}");
    assert!(denied.starts_with("ERR PERMISSION_DENIED"), "{denied}");

    // Control: the same inbound without h2 in its ALPN list is refused by
    // grpc-core, which is why the proxy offers it.
    let (_no_h2, no_h2_port) = start_inbound(
        ca.dir.path(),
        &agent_b.socket,
        &policy_dir,
        app_port,
        "protocol = \"http\"\napp_protocol = \"h2\"\nalpn = [\"http/1.1\"]",
    );
    let refused = call(&[
        &format!("127.0.0.1:{no_h2_port}"),
        "Allowed",
        &root,
        &key,
        &chain,
        "payments.example",
    ]);
    println!("direct mTLS to a listener without ALPN h2: {refused}");
    assert!(refused.starts_with("ERR UNAVAILABLE"), "{refused}");
}
