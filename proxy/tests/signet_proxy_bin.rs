//! The slim `signet-proxy` binary as a real process: its command line, a
//! pair of them with static SVIDs carrying a connection through the tunnel,
//! and a graceful stop on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use signet_identity::testing::{LeafSpec, TestCa};

const BIN: &str = env!("CARGO_BIN_EXE_signet-proxy");

/// A started proxy and its stderr lines.
struct Proxy {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proxy {
    fn start(config: &std::path::Path) -> Proxy {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["--worker-threads", "1"])
            .env("SIGNET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut p = Proxy { child, lines };
        p.wait_for("signet proxy ready");
        p
    }

    fn wait_for(&mut self, needle: &str) {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(l) if l.contains(needle) => return,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no {needle:?} from signet-proxy:\n{}", seen.join("\n")),
            }
        }
    }

    /// SIGTERM, then whether it exited cleanly.
    fn terminate(mut self) -> bool {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().unwrap().success()
    }
}

fn free_port() -> u16 {
    signet_test_support::free_port()
}

#[test]
fn help_and_a_bad_config_answer_in_one_line() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--config") && text.contains("--worker-threads"),
        "{text}"
    );
    let bad = Command::new(BIN)
        .args(["--config", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("/nonexistent/proxy.toml"), "{err}");
}

#[test]
fn a_pair_of_slim_proxies_carries_a_connection_through_the_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let write_svid = |name: &str, id: &str| {
        let (chain, key) = ca.leaf(&LeafSpec::valid(id));
        let pem: String = chain
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
            .collect();
        std::fs::write(dir.path().join(format!("{name}.crt")), pem).unwrap();
        std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
    };
    write_svid("server", "spiffe://example.org/server");
    write_svid("client", "spiffe://example.org/client");
    std::fs::write(dir.path().join("bundle.pem"), ca.bundle().to_pem()).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/server.toml"),
        "[[allow]]\nto = \"spiffe://example.org/server\"\nfrom = [\"spiffe://example.org/client\"]\n",
    )
    .unwrap();

    // The app: echoes until EOF, then ends its side.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in app.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
    });

    let (listen, tunnel, outbound) = (free_port(), free_port(), free_port());
    let identity = |name: &str| {
        format!(
            "svid_file = \"{d}/{name}.crt\"\nsvid_key_file = \"{d}/{name}.key\"\nbundle_file = \"{d}/bundle.pem\"\nadmin_listen = \"127.0.0.1:0\"\n",
            d = dir.path().display()
        )
    };
    let server_cfg = dir.path().join("server.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "{}policy_dir = \"{}/policies\"\n[inbound]\nlisten = \"127.0.0.1:{listen}\"\nforward_to = \"127.0.0.1:{app_port}\"\ntunnel_listen = \"127.0.0.1:{tunnel}\"\n",
            identity("server"),
            dir.path().display()
        ),
    )
    .unwrap();
    let client_cfg = dir.path().join("client.toml");
    std::fs::write(
        &client_cfg,
        format!(
            "{}[[outbound]]\nlisten = \"127.0.0.1:{outbound}\"\nupstream = \"127.0.0.1:{listen}\"\nserver_id = \"spiffe://example.org/server\"\ntunnel = true\ntunnel_port = {tunnel}\n",
            identity("client")
        ),
    )
    .unwrap();
    let server = Proxy::start(&server_cfg);
    let client = Proxy::start(&client_cfg);

    let mut s = TcpStream::connect(("127.0.0.1", outbound)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"through the slim pair").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"through the slim pair");

    assert!(
        client.terminate(),
        "the client proxy stops cleanly on SIGTERM"
    );
    assert!(
        server.terminate(),
        "the server proxy stops cleanly on SIGTERM"
    );
}
