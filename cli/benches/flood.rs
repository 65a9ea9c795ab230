//! Flood benchmark: does an unauthenticated flood hurt legitimate traffic?
//!
//! Real processes on loopback (release `signet`): a CA, two agents, an echo
//! app behind an inbound proxy, and a caller's outbound proxy. Two
//! legitimate loops run at a steady rate: requests through the proxy pair
//! (a new connection each, so every one needs a TLS handshake), and an
//! agent's authenticated node API calls (`SyncEntries`... as a SignSvids
//! round trip) to the CA. They run once alone, then beside a flood from
//! 127.0.0.2 made of:
//! - silent TCP connections to the proxy's inbound port and to the CA
//!   (held open: slowloris),
//! - garbage "handshakes" (random bytes) to both,
//! - `AttestAgent` calls with bogus join tokens to the CA.
//!
//! Printed: for each legitimate loop and phase, requests, errors (target
//! 0), p50 and p99 latency; and what the flood managed to do.
//! Bounded: each phase lasts `PHASE` and every flood loop stops with it.
//!
//! Run: `cargo bench -p signet-cli --bench flood`
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signet_proto::node as pb;
use signet_test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PHASE: Duration = Duration::from_secs(15);
/// Legitimate proxy requests per second (each on a new connection).
const PROXY_RATE: u64 = 200;
/// Legitimate node API calls per second.
const NODE_RATE: u64 = 50;

#[derive(Default)]
struct Loop {
    latencies_us: Vec<u64>,
    errors: u64,
}

impl Loop {
    fn line(&mut self, name: &str) -> String {
        self.latencies_us.sort_unstable();
        let q = |p: f64| {
            self.latencies_us
                .get(
                    ((self.latencies_us.len() as f64 * p) as usize)
                        .min(self.latencies_us.len().saturating_sub(1)),
                )
                .map(|v| *v as f64 / 1000.0)
                .unwrap_or(f64::NAN)
        };
        format!(
            "{name:<34} {:>8} {:>7} {:>9.2} {:>9.2}",
            self.latencies_us.len() as u64 + self.errors,
            self.errors,
            q(0.50),
            q(0.99)
        )
    }
}

async fn proxy_loop(port: u16) -> Loop {
    let mut out = Loop::default();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PROXY_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < PHASE {
        tick.tick().await;
        let t = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            s.write_all(b"0123456789abcdef").await.ok()?;
            let mut buf = [0u8; 16];
            s.read_exact(&mut buf).await.ok()?;
            (&buf == b"0123456789abcdef").then_some(())
        })
        .await;
        match ok {
            Ok(Some(())) => out.latencies_us.push(t.elapsed().as_micros() as u64),
            _ => out.errors += 1,
        }
    }
    out
}

async fn node_loop(
    mut client: pb::node_client::NodeClient<tonic::transport::Channel>,
    entry_id: String,
) -> Loop {
    let mut out = Loop::default();
    let csr = signet_agent::agent_identity::new_key_and_csr().unwrap().1;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / NODE_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < PHASE {
        tick.tick().await;
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client.sign_svids(pb::SignSvidsRequest {
                requests: vec![pb::SvidRequest {
                    entry_id: entry_id.clone(),
                    csr: csr.clone(),
                }],
            }),
        )
        .await;
        match r {
            Ok(Ok(_)) => out.latencies_us.push(t.elapsed().as_micros() as u64),
            _ => out.errors += 1,
        }
    }
    out
}

/// What the flood did.
#[derive(Default)]
struct FloodStats {
    idle_opened: AtomicU64,
    garbage_sent: AtomicU64,
    bogus_attestations: AtomicU64,
    bogus_refused_fast: AtomicU64,
}

async fn from_flood_address(to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind("127.0.0.2:0".parse().unwrap())?;
    s.connect(to).await
}

/// Opens silent connections to `to` as fast as `rate`/s and holds them.
async fn slowloris(to: SocketAddr, rate: u64, stop: Arc<AtomicBool>, stats: Arc<FloodStats>) {
    let mut held = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if let Ok(s) = from_flood_address(to).await {
            stats.idle_opened.fetch_add(1, Ordering::Relaxed);
            held.push(s);
        }
    }
}

/// Sends random bytes as a "ClientHello" to `to`, `rate`/s.
async fn garbage(to: SocketAddr, rate: u64, stop: Arc<AtomicBool>, stats: Arc<FloodStats>) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let stats = stats.clone();
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        tokio::spawn(async move {
            if let Ok(mut s) = from_flood_address(to).await {
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
                let _ = s.write_all(&bytes).await;
                stats.garbage_sent.fetch_add(1, Ordering::Relaxed);
                let mut b = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
            }
        });
    }
}

/// AttestAgent with bogus tokens from 127.0.0.2, as fast as answers come.
async fn bogus_attestations(
    ca: SocketAddr,
    bundle_pem: String,
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
) {
    let connector = tokio_rustls::TlsConnector::from(anonymous_node_tls(&bundle_pem));
    let csr = signet_agent::agent_identity::new_key_and_csr().unwrap().1;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let connector = connector.clone();
        let channel = tonic::transport::Endpoint::from_static("http://signet-ca")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let connector = connector.clone();
                async move {
                    let tcp = from_flood_address(ca).await?;
                    let name = rustls::pki_types::ServerName::try_from("signet-ca").unwrap();
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await;
        let Ok(channel) = channel else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut client = pb::node_client::NodeClient::new(channel);
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            i += 1;
            let r = client
                .attest_agent(pb::AttestAgentRequest {
                    join_token: format!("bogus-{i}"),
                    csr: csr.clone(),
                })
                .await;
            stats.bogus_attestations.fetch_add(1, Ordering::Relaxed);
            match r {
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    stats.bogus_refused_fast.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {}
                Ok(_) => panic!("a bogus token attested"),
            }
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mesh = Mesh::start(
        "[[allow]]\nto = \"spiffe://example.org/ns/prod/sa/payments\"\nfrom = [\"spiffe://example.org/ns/prod/sa/checkout\"]\n",
        PAYMENTS,
        "1h",
    );
    let entry = mesh.ca.entry(
        "spiffe://example.org/bench",
        "node-a",
        &["unix:uid:4000001"],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node_addr: SocketAddr = mesh.ca.node_addr().parse().unwrap();
    let inbound: SocketAddr = format!("127.0.0.1:{}", mesh.server_port).parse().unwrap();
    let bundle_pem = mesh.ca.run_ok(&["bundle", "show"]);
    let node = rt.block_on(node_client_as(&mesh.agent_a, &mesh.ca.node_addr()));

    println!(
        "flood benchmark: {} s per phase, legit proxy {} req/s (new connection each), legit node API {} calls/s",
        PHASE.as_secs(),
        PROXY_RATE,
        NODE_RATE
    );
    println!(
        "{:<34} {:>8} {:>7} {:>9} {:>9}",
        "loop / phase", "requests", "errors", "p50 ms", "p99 ms"
    );
    for flood in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FloodStats::default());
        let mut flooders = Vec::new();
        if flood {
            for target in [inbound, node_addr] {
                flooders.push(rt.spawn(slowloris(target, 200, stop.clone(), stats.clone())));
                flooders.push(rt.spawn(garbage(target, 200, stop.clone(), stats.clone())));
            }
            for _ in 0..2 {
                flooders.push(rt.spawn(bogus_attestations(
                    node_addr,
                    bundle_pem.clone(),
                    stop.clone(),
                    stats.clone(),
                )));
            }
        }
        let (mut p, mut n) = rt.block_on(async {
            tokio::join!(
                proxy_loop(mesh.client_port),
                node_loop(node.clone(), entry.trim().to_owned())
            )
        });
        stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for f in flooders {
                let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
            }
        });
        let phase = if flood { "with flood" } else { "alone" };
        println!("{}", p.line(&format!("proxy pair, {phase}")));
        println!("{}", n.line(&format!("CA node API, {phase}")));
        if flood {
            println!(
                "  flood: {} silent connections opened, {} garbage handshakes, {} bogus attestations ({} refused before any lookup)",
                stats.idle_opened.load(Ordering::Relaxed),
                stats.garbage_sent.load(Ordering::Relaxed),
                stats.bogus_attestations.load(Ordering::Relaxed),
                stats.bogus_refused_fast.load(Ordering::Relaxed),
            );
        }
        // Let timed-out flood connections drain before the next phase.
        std::thread::sleep(Duration::from_secs(6));
    }
    println!(
        "peak RSS: CA {} MiB, inbound proxy {} MiB",
        rss_kib(mesh.ca.daemon.child.id()) / 1024,
        rss_kib(mesh.server.child.id()) / 1024
    );
    let (_, m) = mesh.ca.http_get("/metrics");
    for l in m
        .lines()
        .filter(|l| l.starts_with("signet_ca_node_refusals_total"))
    {
        println!("  {l}");
    }
    for l in mesh.server_metrics().lines().filter(|l| {
        l.starts_with("signet_proxy_connections_refused_total")
            || l.starts_with("signet_proxy_handshake_failures_total")
    }) {
        println!("  {l}");
    }
}
