//! Fleet sync benchmark: does the CA's cost grow with the fleet?
//!
//! A release `signet ca serve` on a PostgreSQL server of the benchmark's
//! own. Simulated agents (attested over the real node API with their own
//! keys and SVIDs, each holding a real `SyncEntries` stream; no agent
//! process) with 10 entries each. Printed:
//! - database transactions and rows read per second (`pg_stat_database`)
//!   over an idle window, with 10 and then 200 agents' streams open
//!   (target: flat), and the CA's RSS and CPU per agent;
//! - time from `CreateEntry` (admin API) to the update on the agent's
//!   stream, over 200 creations (target: median < 50 ms, p99 < 1 s);
//! - one real agent process with 10,000 entries: time to all SVIDs, its
//!   RSS, and the largest sync message.
//!
//! Bounded: fixed counts; the idle window is `SIGNET_BENCH_IDLE_SECS`
//! (default 60) seconds.
//!
//! Run: `cargo bench -p signet-cli --bench fleet_sync`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::time::{Duration, Instant};

use signet_proto::admin as admin_pb;
use signet_proto::node as pb;
use signet_test_support::postgres::TestPostgres;
use signet_test_support::*;

const SMALL: usize = 10;
const LARGE: usize = 200;
const ENTRIES_PER_AGENT: usize = 10;
const CREATIONS: usize = 200;
const BIG_AGENT_ENTRIES: usize = 10_000;

type AdminClient = admin_pb::admin_client::AdminClient<tonic::transport::Channel>;
type NodeClient = pb::node_client::NodeClient<tonic::transport::Channel>;

fn spec(spiffe_id: String, node: &str, selector: &str) -> admin_pb::EntrySpec {
    admin_pb::EntrySpec {
        spiffe_id,
        parent_id: format!("spiffe://example.org/signet/agent/{node}"),
        selectors: vec![selector.into()],
        ..Default::default()
    }
}

async fn create(admin: &mut AdminClient, s: admin_pb::EntrySpec) {
    admin
        .create_entry(admin_pb::CreateEntryRequest { spec: Some(s) })
        .await
        .unwrap();
}

/// Reads every page of the next update; returns the largest page's size.
async fn next_update(stream: &mut tonic::Streaming<pb::EntrySnapshot>) -> usize {
    let mut largest = 0;
    loop {
        let page = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("an update within 60 s")
            .unwrap()
            .unwrap();
        largest = largest.max(prost::Message::encoded_len(&page));
        if !page.more {
            return largest;
        }
    }
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process, seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

struct Window {
    xacts_per_s: f64,
    rows_per_s: f64,
    /// Rows read per table over the window (sequential + index), the
    /// largest first.
    by_table: Vec<(String, i64)>,
    ca_cpu_per_s: f64,
    ca_rss_kib: u64,
}

fn idle_window(pg: &TestPostgres, db: &str, ca_pid: u32, secs: u64) -> Window {
    // Vacuum and analyze now what the setup wrote, so autovacuum (whose
    // reads count in the database's statistics) does not run in the
    // window; an idle backend reports its statistics up to 10 s late.
    pg.run_sql(db, "VACUUM ANALYZE");
    std::thread::sleep(Duration::from_millis(11_500));
    // The per-table counters are read in the database itself (catalog
    // reads, a transaction): outside the window.
    let t0 = table_reads(pg, db);
    std::thread::sleep(Duration::from_millis(11_500));
    let (x0, r0) = pg.stats(db);
    let c0 = cpu_secs(ca_pid);
    std::thread::sleep(Duration::from_secs(secs));
    let (x1, r1) = pg.stats(db);
    let c1 = cpu_secs(ca_pid);
    let t1 = table_reads(pg, db);
    let mut by_table: Vec<(String, i64)> = t1
        .iter()
        .map(|(t, n)| (t.clone(), n - t0.get(t).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    by_table.sort_by_key(|(_, n)| -n);
    Window {
        xacts_per_s: (x1 - x0) as f64 / secs as f64,
        rows_per_s: (r1 - r0) as f64 / secs as f64,
        by_table,
        ca_cpu_per_s: (c1 - c0) / secs as f64,
        ca_rss_kib: proc_status(ca_pid, "VmRSS:"),
    }
}

/// Rows read so far from each table of `db` (sequential and index).
fn table_reads(pg: &TestPostgres, db: &str) -> std::collections::BTreeMap<String, i64> {
    pg.run_sql(
        db,
        "SELECT relname, COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables",
    )
    .lines()
    .filter_map(|l| {
        let (t, n) = l.split_once('|')?;
        Some((t.trim().to_owned(), n.trim().parse().ok()?))
    })
    .collect()
}

fn main() {
    let idle_secs: u64 = std::env::var("SIGNET_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let pg =
        TestPostgres::own().expect("the fleet benchmark needs PostgreSQL (apt install postgresql)");
    let url = pg.fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let ca = CaProcess::start(&["--database-url", &url]);
    let ca_pid = ca.daemon.child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("fleet sync benchmark: CA on PostgreSQL, {ENTRIES_PER_AGENT} entries per agent, idle windows of {idle_secs} s");

    let mut admin = rt.block_on(admin_client(&ca));
    let mut streams = Vec::new();
    let mut clients: Vec<NodeClient> = Vec::new();
    let mut windows = Vec::new();
    for target in [SMALL, LARGE] {
        while streams.len() < target {
            let i = streams.len();
            let node = format!("node-{i}");
            rt.block_on(async {
                for e in 0..ENTRIES_PER_AGENT {
                    create(
                        &mut admin,
                        spec(
                            format!("spiffe://example.org/a{i}/w{e}"),
                            &node,
                            "unix:uid:1",
                        ),
                    )
                    .await;
                }
                let mut client = attested_node_client(&ca, &node).await;
                let mut stream = client
                    .sync_entries(pb::SyncEntriesRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                next_update(&mut stream).await;
                clients.push(client);
                streams.push(stream);
            });
        }
        let w = idle_window(&pg, &db, ca_pid, idle_secs);
        println!(
            "  idle, {target:>3} agents' streams open: {:>6.2} db transactions/s, {:>7.1} rows read/s, CA CPU {:>5.2}%, CA RSS {} KiB",
            w.xacts_per_s,
            w.rows_per_s,
            w.ca_cpu_per_s * 100.0,
            w.ca_rss_kib
        );
        println!("      rows read by table over the window: {:?}", w.by_table);
        windows.push(w);
    }
    let (small, large) = (&windows[0], &windows[1]);
    println!(
        "  growth 10 → 200 agents: {:+.2} transactions/s, {:+.1} rows/s; CA RSS {:.1} KiB per added agent, CPU {:+.3}% per added agent",
        large.xacts_per_s - small.xacts_per_s,
        large.rows_per_s - small.rows_per_s,
        (large.ca_rss_kib as f64 - small.ca_rss_kib as f64) / (LARGE - SMALL) as f64,
        (large.ca_cpu_per_s - small.ca_cpu_per_s) * 100.0 / (LARGE - SMALL) as f64
    );

    // Entry create → the agent's stream.
    let mut latencies = Vec::with_capacity(CREATIONS);
    rt.block_on(async {
        for n in 0..CREATIONS {
            let i = (n * 7919) % LARGE;
            let start = Instant::now();
            create(
                &mut admin,
                spec(
                    format!("spiffe://example.org/new{n}"),
                    &format!("node-{i}"),
                    "unix:uid:2",
                ),
            )
            .await;
            next_update(&mut streams[i]).await;
            latencies.push(start.elapsed());
        }
    });
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "  entry create → agent stream ({CREATIONS} creations, {LARGE} agents): median {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    drop(streams);
    drop(clients);

    // One agent with 10,000 entries: a real agent process.
    let uid = format!("unix:uid:{}", 4_000_123);
    let created = Instant::now();
    rt.block_on(async {
        for e in 0..BIG_AGENT_ENTRIES {
            create(
                &mut admin,
                spec(format!("spiffe://example.org/big/w{e}"), "big", &uid),
            )
            .await;
        }
    });
    println!(
        "  {BIG_AGENT_ENTRIES} entries created for one agent in {:?}",
        created.elapsed()
    );
    let metrics_port = signet_test_support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = signet();
    cmd.args(["agent", "run", "--ca", &ca.node_addr(), "--trust-bundle"])
        .arg(ca.bundle_file())
        .args(["--join-token", &ca.token("big"), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    let started = Instant::now();
    let mut agent = Daemon::spawn(cmd);
    agent.wait_for("signet agent ready", Duration::from_secs(60));
    let all = eventually(Duration::from_secs(600), "10,000 SVIDs", || {
        let (_, body) = http_get(metrics_port, "/metrics");
        let held = body
            .lines()
            .find_map(|l| l.strip_prefix("signet_agent_x509_svids "))
            .and_then(|v| v.trim().parse::<usize>().ok())?;
        (held == BIG_AGENT_ENTRIES).then(|| started.elapsed())
    });
    let agent_pid = agent.child.id();
    let largest = rt.block_on(async {
        // The stream the agent gets, read with the agent's own SVID.
        let mut client = node_client_in(&dir.path().join("data"), &ca.node_addr()).await;
        let mut stream = client
            .sync_entries(pb::SyncEntriesRequest::default())
            .await
            .unwrap()
            .into_inner();
        next_update(&mut stream).await
    });
    println!(
        "  one agent, {BIG_AGENT_ENTRIES} entries: all SVIDs in {all:?} from process start; agent RSS {} KiB (peak {} KiB); largest sync message {} bytes ({} entries per page)",
        proc_status(agent_pid, "VmRSS:"),
        proc_status(agent_pid, "VmHWM:"),
        largest,
        pb::SYNC_PAGE_SIZE
    );
}
