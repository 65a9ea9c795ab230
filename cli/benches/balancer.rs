//! HTTP balancer benchmark: p99 latency with three endpoints of which one
//! answers 50 ms late, peak-EWMA (the default) against round-robin, and
//! three healthy endpoints for reference.
//!
//! Real processes on loopback: three HTTP-mode inbound proxies (static
//! SVIDs from a test CA) each in front of an HTTP/1.1 app, and one HTTP
//! outbound listener with the three as a static `upstream` list. A closed
//! loop of `SIGNET_BENCH_CLIENTS` (default 16) clients, each with a
//! keep-alive connection, sends GETs for `SIGNET_BENCH_SECS` (default 15)
//! seconds per configuration. Printed: requests, p50 / p99 / p99.9, and
//! the share of requests the slow endpoint served.
//!
//! Run: `cargo bench -p signet-cli --bench balancer`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signet_identity::testing::{LeafSpec, TestCa as MintCa};
use signet_test_support::*;

const SERVER: &str = "spiffe://example.org/ns/prod/sa/payments";
const CLIENT: &str = "spiffe://example.org/ns/prod/sa/checkout";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_identity(ca: &MintCa, dir: &Path, name: &str, id: &str) -> (String, String) {
    let (chain, key) = ca.leaf(&LeafSpec::valid(id));
    let (crt, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, signet_identity::certificates_to_pem(&chain)).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (crt.display().to_string(), k.display().to_string())
}

struct Setup {
    _apps: Vec<SlowApp>,
    _proxies: Vec<Daemon>,
    outbound_port: u16,
    slow_tag: &'static str,
}

fn start(dir: &Path, slow: bool, balancer: &str) -> Setup {
    let ca = MintCa::new("example.org");
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, ca.bundle().to_pem()).unwrap();
    let (server_crt, server_key) = write_identity(&ca, dir, "server", SERVER);
    let (client_crt, client_key) = write_identity(&ca, dir, "client", CLIENT);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/p.toml"),
        format!("[[allow]]\nto = \"{SERVER}\"\nfrom = [\"{CLIENT}\"]\n"),
    )
    .unwrap();
    let mut apps = Vec::new();
    let mut proxies = Vec::new();
    let mut upstreams = Vec::new();
    for (i, tag) in ["e1", "e2", "e3-slow"].into_iter().enumerate() {
        let delay = if slow && i == 2 {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        let app = SlowApp::start_delayed(tag, 0, delay);
        let port = signet_test_support::free_port();
        let cfg = dir.join(format!("inbound-{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "svid_file = \"{server_crt}\"\nsvid_key_file = \"{server_key}\"\nbundle_file = \"{}\"\npolicy_dir = \"{}/policies\"\nadmin_listen = \"127.0.0.1:0\"\n[inbound]\nlisten = \"127.0.0.1:{port}\"\nforward_to = \"127.0.0.1:{}\"\nprotocol = \"http\"\n",
                bundle.display(),
                dir.display(),
                app.port
            ),
        )
        .unwrap();
        let mut cmd = signet();
        cmd.env("SIGNET_LOG", "warn,signet_proxy::run=info")
            .args(["proxy", "run", "--config"])
            .arg(&cfg);
        let mut proxy = Daemon::spawn(cmd);
        proxy.wait_for("signet proxy ready", Duration::from_secs(20));
        proxies.push(proxy);
        apps.push(app);
        upstreams.push(format!("\"127.0.0.1:{port}\""));
    }
    let outbound_port = signet_test_support::free_port();
    let cfg = dir.join("outbound.toml");
    std::fs::write(
        &cfg,
        format!(
            "svid_file = \"{client_crt}\"\nsvid_key_file = \"{client_key}\"\nbundle_file = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n[[outbound]]\nlisten = \"127.0.0.1:{outbound_port}\"\nupstream = [{}]\nserver_id = \"{SERVER}\"\nprotocol = \"http\"\nbalancer = \"{balancer}\"\nmax_pending_requests = 10000\n",
            bundle.display(),
            upstreams.join(", ")
        ),
    )
    .unwrap();
    let mut cmd = signet();
    cmd.env("SIGNET_LOG", "warn,signet_proxy::run=info")
        .args(["proxy", "run", "--config"])
        .arg(&cfg);
    let mut proxy = Daemon::spawn(cmd);
    proxy.wait_for("signet proxy ready", Duration::from_secs(20));
    proxies.push(proxy);
    Setup {
        _apps: apps,
        _proxies: proxies,
        outbound_port,
        slow_tag: "e3-slow",
    }
}

/// One keep-alive client: GETs until `stop`; (latency, served by) each.
fn client(
    port: u16,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<(Duration, bool)>>>,
    slow_tag: &str,
) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut mine = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: payments\r\n\r\n")
            .unwrap();
        let mut length = 0usize;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        mine.push((t.elapsed(), body.starts_with(slow_tag.as_bytes())));
    }
    out.lock().unwrap().extend(mine);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn run(label: &str, slow: bool, balancer: &str, clients: u64, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let setup = start(dir.path(), slow, balancer);
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Vec::new()));
    let spawn_clients = |stop: &Arc<AtomicBool>, out: &Arc<Mutex<Vec<(Duration, bool)>>>| {
        (0..clients)
            .map(|_| {
                let (stop, out) = (stop.clone(), out.clone());
                let (port, tag) = (setup.outbound_port, setup.slow_tag);
                std::thread::spawn(move || client(port, stop, out, tag))
            })
            .collect::<Vec<_>>()
    };
    let measure = |stop: &Arc<AtomicBool>, out: &Arc<Mutex<Vec<(Duration, bool)>>>, secs: u64| {
        stop.store(false, Ordering::Relaxed);
        let workers = spawn_clients(stop, out);
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    };
    // Warm-up (connections made, estimates formed), then the measure.
    measure(&stop, &Arc::new(Mutex::new(Vec::new())), 2);
    measure(&stop, &out, secs);
    let results = out.lock().unwrap();
    let mut lat: Vec<Duration> = results.iter().map(|r| r.0).collect();
    lat.sort();
    let to_slow = results.iter().filter(|r| r.1).count();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    println!(
        "| {label} | {} | {:.0} | {} | {} | {} | {:.2}% |",
        lat.len(),
        lat.len() as f64 / secs as f64,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 0.999)),
        100.0 * to_slow as f64 / lat.len().max(1) as f64
    );
}

fn main() {
    let clients = env_or("SIGNET_BENCH_CLIENTS", 16);
    let secs = env_or("SIGNET_BENCH_SECS", 15);
    println!("{clients} keep-alive clients, closed loop, {secs} s per row (after 2 s warm-up)\n");
    println!(
        "| endpoints, balancer | requests | req/s | p50 ms | p99 ms | p99.9 ms | to the slow one |"
    );
    println!("|---|---|---|---|---|---|---|");
    run("3 healthy, peak-EWMA (p2c)", false, "p2c", clients, secs);
    run(
        "2 healthy + 1 slow (+50 ms), peak-EWMA (p2c)",
        true,
        "p2c",
        clients,
        secs,
    );
    run(
        "2 healthy + 1 slow (+50 ms), round-robin",
        true,
        "round-robin",
        clients,
        secs,
    );
}
