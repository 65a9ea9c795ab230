//! A mesh of real processes: a CA, an agent, proxies and apps, with the
//! policies and IDs the tests share.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::AgentProcess;
use crate::apps::EchoApp;
use crate::ca::CaProcess;
use crate::http::{http_get, metric};
use crate::process::{eventually, my_uid, run, signet, Daemon};

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
    let port = crate::free_port();
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
    pub ca: CaProcess,
    pub agent_a: AgentProcess,
    pub agent_b: AgentProcess,
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
            CaProcess::start(&[]),
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
        ca: CaProcess,
        agent_extra: &[&str],
        policy: &str,
        server_id: &str,
        ttl: &str,
        protocol: &str,
        server_extra: &str,
    ) -> Mesh {
        let agent_a = AgentProcess::start(&ca, &ca.token("node-a"), agent_extra);
        let agent_b = AgentProcess::start(&ca, &ca.token("node-b"), agent_extra);
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
        let (server_port, server_admin) = (crate::free_port(), crate::free_port());
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
        let port = crate::free_port();
        let admin = crate::free_port();
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
