//! Entry sync between the CA and its agents: paged snapshots, deltas from
//! the revision an agent has, several CA replicas on one PostgreSQL with
//! agents failing over between them, and idle streams that leave the
//! database alone. Real `signet` processes, real TLS, a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use signet_proto::admin as admin_pb;
use signet_proto::node as pb;
use signet_test_support::postgres::TestPostgres;
use signet_test_support::*;

type AdminClient = admin_pb::admin_client::AdminClient<tonic::transport::Channel>;
type Snapshots = tonic::Streaming<pb::EntrySnapshot>;

fn agent_id(node: &str) -> String {
    format!("spiffe://example.org/signet/agent/{node}")
}

fn spec(spiffe_id: &str, node: &str, selector: &str) -> admin_pb::EntrySpec {
    admin_pb::EntrySpec {
        spiffe_id: spiffe_id.into(),
        parent_id: agent_id(node),
        selectors: vec![selector.into()],
        ..Default::default()
    }
}

async fn create(admin: &mut AdminClient, spiffe_id: &str, node: &str, selector: &str) -> String {
    admin
        .create_entry(admin_pb::CreateEntryRequest {
            spec: Some(spec(spiffe_id, node, selector)),
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Every page of the next update.
async fn next_update(stream: &mut Snapshots) -> Vec<pb::EntrySnapshot> {
    let mut pages = Vec::new();
    loop {
        let page = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("an update within 15 s")
            .unwrap()
            .expect("the stream goes on");
        let more = page.more;
        pages.push(page);
        if !more {
            return pages;
        }
    }
}

fn entry_ids(pages: &[pb::EntrySnapshot]) -> BTreeSet<String> {
    pages
        .iter()
        .flat_map(|p| p.entries.iter().map(|e| e.id.clone()))
        .collect()
}

async fn open(
    node: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
    known: Option<i64>,
) -> Snapshots {
    node.sync_entries(pb::SyncEntriesRequest {
        known_revision: known,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn entry_streams_page_large_updates_and_resume_with_deltas() {
    let ca = CaProcess::start(&[]);
    let mut admin = admin_client(&ca).await;
    let mut node = attested_node_client(&ca, "node-1").await;
    // Exactly one page of entries: one message.
    let mut ids = Vec::new();
    for i in 0..pb::SYNC_PAGE_SIZE {
        ids.push(
            create(
                &mut admin,
                &format!("spiffe://example.org/w{i}"),
                "node-1",
                "unix:uid:1",
            )
            .await,
        );
    }
    let _theirs = create(
        &mut admin,
        "spiffe://example.org/theirs",
        "node-2",
        "unix:uid:1",
    )
    .await;
    let mut stream = open(&mut node, None).await;
    let first = next_update(&mut stream).await;
    assert_eq!(first.len(), 1);
    assert!(!first[0].delta, "no revision given: a snapshot");
    assert!(
        first[0].bundle.is_some(),
        "the first update carries the bundle"
    );
    assert_eq!(entry_ids(&first), ids.iter().cloned().collect());
    let r1 = first[0].revision;

    // One more entry: a delta of that entry alone on the open stream.
    let extra = create(
        &mut admin,
        "spiffe://example.org/extra",
        "node-1",
        "unix:uid:1",
    )
    .await;
    let delta = next_update(&mut stream).await;
    assert_eq!(delta.len(), 1);
    assert!(delta[0].delta && delta[0].bundle.is_none());
    assert_eq!(entry_ids(&delta), BTreeSet::from([extra.clone()]));
    assert!(delta[0].revision > r1);

    // One past a page: a new stream without a revision gets two pages.
    let snapshot = next_update(&mut open(&mut node, None).await).await;
    assert_eq!(snapshot.len(), 2);
    assert!(snapshot[0].more && !snapshot[1].more);
    assert_eq!(snapshot[0].entries.len(), pb::SYNC_PAGE_SIZE);
    assert!(snapshot[0].bundle.is_some() && snapshot[1].bundle.is_none());
    assert!(snapshot
        .iter()
        .all(|p| !p.delta && p.revision == delta[0].revision));
    assert_eq!(entry_ids(&snapshot).len(), pb::SYNC_PAGE_SIZE + 1);
    drop(stream);

    // While the agent is away: one entry deleted, one updated.
    admin
        .delete_entry(admin_pb::DeleteEntryRequest { id: ids[0].clone() })
        .await
        .unwrap();
    admin
        .update_entry(admin_pb::UpdateEntryRequest {
            id: ids[1].clone(),
            spec: Some(spec("spiffe://example.org/w1", "node-1", "unix:uid:2")),
        })
        .await
        .unwrap();
    // Back with the revision it had: only what changed since.
    let resumed = next_update(&mut open(&mut node, Some(r1)).await).await;
    assert_eq!(resumed.len(), 1);
    assert!(resumed[0].delta);
    assert_eq!(
        entry_ids(&resumed),
        BTreeSet::from([extra.clone(), ids[1].clone()])
    );
    assert_eq!(resumed[0].removed_entry_ids, vec![ids[0].clone()]);
    let latest = resumed[0].revision;
    // Up to date: an empty delta (with the bundle, as every first update).
    let current = next_update(&mut open(&mut node, Some(latest)).await).await;
    assert!(
        current[0].delta
            && current[0].entries.is_empty()
            && current[0].removed_entry_ids.is_empty()
    );
    assert!(current[0].bundle.is_some());
    // A revision this CA never reached (a restored database): a snapshot.
    let ahead = next_update(&mut open(&mut node, Some(latest + 1_000_000)).await).await;
    assert!(ahead.iter().all(|p| !p.delta));
    assert_eq!(entry_ids(&ahead).len(), pb::SYNC_PAGE_SIZE);
}

/// Two replicas on one database, each with its own data dir.
fn replicas(url: &str) -> (CaProcess, CaProcess) {
    let a = CaProcess::start(&["--database-url", url]);
    let b = CaProcess::start(&["--database-url", url]);
    // Each replica has its own signing key; the bundle is the union, and
    // replica A learns of B's key through the change feed.
    eventually(
        Duration::from_secs(10),
        "both replicas' keys in A's bundle",
        || {
            (a.run_ok(&["bundle", "show"])
                .matches("BEGIN CERTIFICATE")
                .count()
                == 2)
                .then_some(())
        },
    );
    (a, b)
}

/// Waits on the Workload API stream for a message with `n` SVIDs.
async fn wait_for_svids(
    stream: &mut tonic::Streaming<signet_proto::workload::X509svidResponse>,
    n: usize,
) -> Duration {
    let start = Instant::now();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("{n} SVIDs within 30 s"))
            .expect("the workload's stream never breaks")
            .unwrap();
        if m.svids.len() == n {
            return start.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_through_one_replica_reaches_agents_on_another_and_agents_fail_over() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let url = pg.fresh_database();
    let (mut a, mut b) = replicas(&url);
    let uid = format!("unix:uid:{}", my_uid());
    // The agent knows both replicas.
    let agent = AgentProcess::start(&a, &a.token("node-1"), &["--ca", &b.node_addr()]);
    a.entry("spiffe://example.org/one", "node-1", &[&uid], &[]);
    let (mut svids, _) = svid_stream(&agent, 1).await;
    // Made through B, delivered by whichever replica the agent is on.
    b.entry("spiffe://example.org/two", "node-1", &[&uid], &[]);
    let took = wait_for_svids(&mut svids, 2).await;
    eprintln!("entry created through replica B reached the workload in {took:?}");

    // Replica A dies (SIGKILL): the agent goes on with B.
    a.kill();
    b.entry("spiffe://example.org/three", "node-1", &[&uid], &[]);
    wait_for_svids(&mut svids, 3).await;
    // A comes back; B dies: the agent goes on with A.
    a.restart(&["--database-url", &url]);
    b.kill();
    a.entry("spiffe://example.org/four", "node-1", &[&uid], &[]);
    let took = wait_for_svids(&mut svids, 4).await;
    eprintln!("after B was killed, an entry made through A reached the workload in {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_entry_streams_leave_the_database_alone() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let url = pg.fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let ca = CaProcess::start(&["--database-url", &url]);
    let mut admin = admin_client(&ca).await;
    const AGENTS: usize = 30;
    let mut streams = Vec::new();
    for i in 0..AGENTS {
        let node = format!("node-{i}");
        create(
            &mut admin,
            &format!("spiffe://example.org/w{i}"),
            &node,
            "unix:uid:1",
        )
        .await;
        let mut client = attested_node_client(&ca, &node).await;
        let mut stream = open(&mut client, None).await;
        next_update(&mut stream).await;
        streams.push((client, stream));
    }
    // A PostgreSQL backend that goes idle reports its statistics up to
    // 10 s later: let the setup's show up before the window starts.
    std::thread::sleep(Duration::from_millis(11_500));
    let (xacts0, rows0) = pg.stats(&db);
    // Longer than the change feed's safety net, and than the 5 s the
    // streams used to re-read the database at.
    std::thread::sleep(Duration::from_secs(7));
    let (xacts1, rows1) = pg.stats(&db);
    let (xacts, rows) = (xacts1 - xacts0, rows1 - rows0);
    eprintln!("{AGENTS} idle entry streams, 7 s: {xacts} transactions, {rows} rows read");
    assert!(
        xacts < AGENTS as u64 / 2,
        "{xacts} transactions in 7 s with {AGENTS} idle streams: streams must not read the database"
    );

    // A change wakes its own agent only, and promptly.
    let start = Instant::now();
    create(
        &mut admin,
        "spiffe://example.org/new",
        "node-7",
        "unix:uid:1",
    )
    .await;
    let update = next_update(&mut streams[7].1).await;
    eprintln!("entry create → agent stream: {:?}", start.elapsed());
    assert!(update[0].delta);
    assert_eq!(update[0].entries[0].spiffe_id, "spiffe://example.org/new");
    let quiet = tokio::time::timeout(Duration::from_millis(300), streams[8].1.message()).await;
    assert!(
        quiet.is_err(),
        "another agent's stream got a message: {quiet:?}"
    );
}
