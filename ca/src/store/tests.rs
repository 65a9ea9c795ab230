#![allow(clippy::unwrap_used)]

use std::time::Duration;

use signet_identity::TrustDomain;

use super::*;
use crate::registry::entry::EntryInput;
use crate::test_db::{on_both_backends, TestDb};

on_both_backends!(
    entries_round_trip_and_filter,
    duplicate_entry_is_refused_and_nothing_is_stored,
    missing_entries_are_not_found,
    join_tokens_are_single_use_and_expire,
    agents_can_be_banned_and_evicted,
    ca_keys_and_bundle_sequence_persist_across_reconnect,
    the_change_feed_holds_every_change_in_commit_order,
    the_change_feed_is_pruned_up_to_a_horizon,
    endpoints_are_replaced_whole_and_withdrawn_only_with_their_session,
    an_entry_change_withdraws_the_endpoints_it_no_longer_covers,
);

fn spec(id: &str, parent: &str, selectors: &[&str]) -> crate::registry::entry::EntrySpec {
    EntryInput {
        spiffe_id: id.into(),
        parent_id: parent.into(),
        selectors: selectors.iter().map(|s| s.to_string()).collect(),
        dns_names: vec!["web.example.org".into()],
        ..Default::default()
    }
    .validate(
        &TrustDomain::new("example.org").unwrap(),
        Duration::from_secs(86400),
        Duration::from_secs(3600),
    )
    .unwrap()
}

const A1: &str = "spiffe://example.org/signet/agent/a1";
const A2: &str = "spiffe://example.org/signet/agent/a2";

async fn entries_round_trip_and_filter(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    let e1 = store
        .create_entry(
            &spec("spiffe://example.org/web", A1, &["unix:uid:1000"]),
            100,
        )
        .await
        .unwrap();
    let e2 = store
        .create_entry(
            &spec(
                "spiffe://example.org/db",
                A2,
                &["unix:uid:1001", "unix:gid:5"],
            ),
            101,
        )
        .await
        .unwrap();
    assert_eq!(store.get_entry(&e1.id).await.unwrap(), e1);
    assert_eq!(store.get_entry(&e2.id).await.unwrap(), e2);
    let all = store.list_entries(&EntryFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2);
    let a1 = store
        .list_entries(&EntryFilter {
            parent_id: Some(A1.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a1, vec![e1.clone()]);
    let updated = store
        .update_entry(
            &e1.id,
            &spec("spiffe://example.org/web2", A1, &["unix:uid:1000"]),
            200,
        )
        .await
        .unwrap();
    // Revisions are the change feed's: fleet-wide and increasing.
    assert!(e1.revision < e2.revision && e2.revision < updated.revision);
    assert_eq!(updated.spec.spiffe_id.as_str(), "spiffe://example.org/web2");
    assert_eq!(updated.created_at, 100);
    assert_eq!(updated.updated_at, 200);
    store.delete_entry(&e1.id, 102).await.unwrap();
    assert_eq!(
        store.list_entries(&EntryFilter::default()).await.unwrap(),
        vec![e2]
    );
}

async fn duplicate_entry_is_refused_and_nothing_is_stored(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    let s = spec("spiffe://example.org/web", A1, &["unix:uid:1000"]);
    store.create_entry(&s, 1).await.unwrap();
    let err = store.create_entry(&s, 2).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    assert_eq!(
        store
            .list_entries(&EntryFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    // Same ID under another parent, or with other selectors, is a different entry.
    store
        .create_entry(&spec("spiffe://example.org/web", A2, &["unix:uid:1000"]), 3)
        .await
        .unwrap();
    store
        .create_entry(&spec("spiffe://example.org/web", A1, &["unix:uid:1001"]), 4)
        .await
        .unwrap();
    // An update that would collide is refused and leaves the row as it was.
    let other = store
        .create_entry(
            &spec("spiffe://example.org/other", A1, &["unix:uid:1000"]),
            5,
        )
        .await
        .unwrap();
    let err = store.update_entry(&other.id, &s, 6).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    assert_eq!(store.get_entry(&other.id).await.unwrap(), other);
}

async fn missing_entries_are_not_found(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    let s = spec("spiffe://example.org/web", A1, &["unix:uid:1000"]);
    assert!(matches!(
        store.get_entry("nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.update_entry("nope", &s, 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_entry("nope", 102).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn join_tokens_are_single_use_and_expire(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    store.insert_join_token("h1", A1, 1000, 10).await.unwrap();
    store.insert_join_token("h2", A2, 1000, 10).await.unwrap();
    assert_eq!(
        store.use_join_token("h1", 500).await.unwrap(),
        TokenUse::Accepted {
            agent_id: A1.into()
        }
    );
    assert_eq!(
        store.use_join_token("h1", 501).await.unwrap(),
        TokenUse::Unknown
    );
    assert_eq!(
        store.use_join_token("h2", 1000).await.unwrap(),
        TokenUse::Expired
    );
    assert_eq!(
        store.use_join_token("h2", 10).await.unwrap(),
        TokenUse::Unknown
    );
    assert_eq!(
        store.use_join_token("never", 10).await.unwrap(),
        TokenUse::Unknown
    );
    store.insert_join_token("h3", A1, 50, 10).await.unwrap();
    assert_eq!(store.prune_join_tokens(60).await.unwrap(), 1);
}

async fn agents_can_be_banned_and_evicted(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    let agent = AgentRecord {
        spiffe_id: A1.into(),
        attestation_type: "join_token".into(),
        node_selectors: Vec::new(),
        svid_serial: "01ab".into(),
        previous_svid_serial: None,
        svid_expires_at: 5000,
        banned: false,
        created_at: 1,
        updated_at: 1,
    };
    store.upsert_agent(&agent).await.unwrap();
    assert_eq!(store.list_agents().await.unwrap(), vec![agent.clone()]);
    let banned = store.ban_agent(A1, 7).await.unwrap();
    assert!(banned.banned);
    // Re-recording a banned agent does not lift the ban.
    store
        .upsert_agent(&AgentRecord {
            updated_at: 8,
            ..agent.clone()
        })
        .await
        .unwrap();
    assert!(store.get_agent(A1).await.unwrap().banned);
    // A renewal keeps the serial it renewed from until the new one is used.
    store
        .upsert_agent(&AgentRecord {
            svid_serial: "02cd".into(),
            previous_svid_serial: Some("01ab".into()),
            ..agent.clone()
        })
        .await
        .unwrap();
    let renewed = store.get_agent(A1).await.unwrap();
    assert_eq!(renewed.previous_svid_serial.as_deref(), Some("01ab"));
    store.forget_previous_serial(A1, "01ab").await.unwrap();
    assert!(
        store
            .get_agent(A1)
            .await
            .unwrap()
            .previous_svid_serial
            .is_some(),
        "only presenting the current serial forgets the previous one"
    );
    store.forget_previous_serial(A1, "02cd").await.unwrap();
    assert_eq!(
        store.get_agent(A1).await.unwrap().previous_svid_serial,
        None
    );
    store.delete_agent(A1, 300).await.unwrap();
    assert!(matches!(
        store.get_agent(A1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.ban_agent(A2, 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_agent(A2, 300).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn ca_keys_and_bundle_sequence_persist_across_reconnect(db: TestDb) {
    let key = CaKeyRecord {
        id: "k1".into(),
        cert_der: vec![1, 2, 3],
        chain_pem: String::new(),
        self_signed: true,
        replica: Some("r1".into()),
        journal: KeyJournal::new(KeyStatus::Active, 10, 10_000, 10),
    };
    {
        let store = Store::connect(&db.url).await.unwrap();
        store
            .insert_ca_key(&key, &[("fp1".into(), vec![1, 2, 3], 10_000)])
            .await
            .unwrap();
        store
            .set_setting("trust_domain", "example.org")
            .await
            .unwrap();
        store.close().await;
    }
    let store = Store::connect(&db.url).await.unwrap();
    assert_eq!(store.active_ca_keys().await.unwrap(), vec![key.clone()]);
    assert_eq!(store.bundle(20).await.unwrap(), (vec![vec![1, 2, 3]], 1));
    assert_eq!(
        store.setting("trust_domain").await.unwrap().as_deref(),
        Some("example.org")
    );
    // Adding the same root again does not bump the sequence; a new one does.
    let k2 = CaKeyRecord {
        id: "k2".into(),
        ..key.clone()
    };
    store
        .insert_ca_key(&k2, &[("fp1".into(), vec![1, 2, 3], 10_000)])
        .await
        .unwrap();
    assert_eq!(store.bundle(20).await.unwrap().1, 1);
    let k3 = CaKeyRecord {
        id: "k3".into(),
        ..key
    };
    store
        .insert_ca_key(&k3, &[("fp2".into(), vec![4], 10_000)])
        .await
        .unwrap();
    assert_eq!(
        store.bundle(20).await.unwrap(),
        (vec![vec![1, 2, 3], vec![4]], 2)
    );
    // Expired authorities drop out of the bundle.
    assert_eq!(store.bundle(10_000).await.unwrap().0.len(), 0);
}

async fn the_change_feed_holds_every_change_in_commit_order(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    let start = store.latest_revision().await.unwrap();
    let web = spec("spiffe://example.org/web", A1, &["unix:uid:1000"]);
    let e1 = store.create_entry(&web, 100).await.unwrap();
    // A refused write leaves nothing in the feed.
    assert!(store.create_entry(&web, 100).await.is_err());
    let moved = store
        .update_entry(
            &e1.id,
            &spec("spiffe://example.org/web", A2, &["unix:uid:1000"]),
            101,
        )
        .await
        .unwrap();
    let e2 = store
        .create_entry(&spec("spiffe://example.org/db", A2, &["unix:uid:7"]), 102)
        .await
        .unwrap();
    store.delete_entry(&e2.id, 103).await.unwrap();
    store.upsert_agent(&agent(A1)).await.unwrap();
    store.ban_agent(A1, 104).await.unwrap();
    store.delete_agent(A1, 105).await.unwrap();
    store.insert_jwt_key(&jwt_key("k1", 106)).await.unwrap();

    let rows = store.changes_since(start, 100).await.unwrap();
    let summary: Vec<(ChangeKind, &str, &str, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r.kind,
                r.key.as_str(),
                r.parent_id.as_str(),
                r.entry.as_ref().map(|e| e.revision),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (ChangeKind::Entry, e1.id.as_str(), A1, Some(moved.revision)),
            // Moved: one change for the agent it left, one for the one it joined.
            (ChangeKind::Entry, e1.id.as_str(), A1, Some(moved.revision)),
            (ChangeKind::Entry, e1.id.as_str(), A2, Some(moved.revision)),
            (ChangeKind::Entry, e2.id.as_str(), A2, None),
            (ChangeKind::Entry, e2.id.as_str(), A2, None),
            (ChangeKind::Agent, A1, A1, None),
            (ChangeKind::Agent, A1, A1, None),
            (ChangeKind::Bundle, "", "", None),
        ]
    );
    assert!(rows.windows(2).all(|w| w[0].revision < w[1].revision));
    assert_eq!(rows[0].revision, e1.revision);
    assert_eq!(rows[2].revision, moved.revision);
    assert_eq!(rows[3].revision, e2.revision);
    assert_eq!(store.latest_revision().await.unwrap(), rows[7].revision);
    // Reading from the middle, and in pages.
    let tail = store.changes_since(rows[5].revision, 100).await.unwrap();
    assert_eq!(tail, rows[6..].to_vec());
    assert_eq!(
        store.changes_since(start, 3).await.unwrap(),
        rows[..3].to_vec()
    );
    let (entries, revision) = store.entries_at_revision().await.unwrap();
    assert_eq!(entries, vec![moved]);
    assert_eq!(revision, rows[7].revision);
}

async fn the_change_feed_is_pruned_up_to_a_horizon(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    assert_eq!(store.changes_horizon().await.unwrap(), 0);
    let a = store
        .create_entry(&spec("spiffe://example.org/a", A1, &["unix:uid:1"]), 100)
        .await
        .unwrap();
    let b = store
        .create_entry(&spec("spiffe://example.org/b", A1, &["unix:uid:2"]), 200)
        .await
        .unwrap();
    // Nothing recorded before 100: nothing pruned.
    assert_eq!(store.prune_changes(100).await.unwrap(), 0);
    assert_eq!(store.prune_changes(101).await.unwrap(), 1);
    assert_eq!(store.changes_horizon().await.unwrap(), a.revision);
    // The newest row stays however old, so revisions never go back.
    assert_eq!(store.prune_changes(1_000).await.unwrap(), 0);
    assert_eq!(store.latest_revision().await.unwrap(), b.revision);
    let c = store
        .create_entry(&spec("spiffe://example.org/c", A1, &["unix:uid:3"]), 300)
        .await
        .unwrap();
    assert!(c.revision > b.revision);
}

fn agent(id: &str) -> AgentRecord {
    AgentRecord {
        spiffe_id: id.into(),
        attestation_type: "join_token".into(),
        node_selectors: Vec::new(),
        svid_serial: "01".into(),
        previous_svid_serial: None,
        svid_expires_at: 1_000,
        banned: false,
        created_at: 1,
        updated_at: 1,
    }
}

fn jwt_key(kid: &str, at: i64) -> JwtKeyRecord {
    JwtKeyRecord {
        kid: kid.into(),
        alg: "ES256".into(),
        public_key: vec![1, 2, 3],
        replica: "r1".into(),
        journal: KeyJournal::new(KeyStatus::Prepared, at, at + 1000, at),
    }
}

async fn endpoints_are_replaced_whole_and_withdrawn_only_with_their_session(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    let ep = |address: &str| EndpointRecord {
        agent_id: A1.into(),
        spiffe_id: "spiffe://example.org/web".into(),
        address: address.into(),
        protocol: "http".into(),
        zone: "z1".into(),
        weight: 100,
        tunnel_port: 15008,
        registered_at: 0,
        lost_at: 0,
    };
    let first = PublishSession {
        id: "s1".into(),
        replica: "r1".into(),
    };
    let r1 = store
        .replace_endpoints(A1, &[ep("10.0.0.1:1")], &first, 100)
        .await
        .unwrap();
    let r2 = store
        .replace_endpoints(A1, &[ep("10.0.0.1:1"), ep("10.0.0.1:2")], &first, 200)
        .await
        .unwrap();
    assert!(r2 > r1, "each update is one change");
    let stored = store.endpoints_of_agent(A1).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].registered_at, 100, "kept from the first update");
    assert_eq!(stored[1].registered_at, 200);
    assert_eq!(stored[0].tunnel_port, 15008, "the tunnel port is kept");
    assert_eq!(
        store.endpoint_sessions_of("r1").await.unwrap(),
        vec![(A1.to_string(), "s1".to_string())]
    );

    // The stream ends: marked lost, still published.
    store.mark_endpoints_lost(A1, "s1", 300).await.unwrap();
    assert!(store
        .list_endpoints()
        .await
        .unwrap()
        .iter()
        .all(|e| e.lost_at == 300));
    // The agent publishes again through another replica before the grace
    // period ends: the first session's withdrawal leaves its endpoints.
    let second = PublishSession {
        id: "s2".into(),
        replica: "r2".into(),
    };
    store
        .replace_endpoints(A1, &[ep("10.0.0.1:1")], &second, 310)
        .await
        .unwrap();
    store.withdraw_endpoints(A1, "s1", 330).await.unwrap();
    let after = store.list_endpoints().await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].lost_at, 0);
    // Its own session's withdrawal removes them.
    store.withdraw_endpoints(A1, "s2", 400).await.unwrap();
    assert!(store.list_endpoints().await.unwrap().is_empty());

    // A ban withdraws an agent's endpoints in the same transaction.
    store
        .upsert_agent(&AgentRecord {
            spiffe_id: A1.into(),
            attestation_type: "join_token".into(),
            node_selectors: Vec::new(),
            svid_serial: "01".into(),
            previous_svid_serial: None,
            svid_expires_at: 5000,
            banned: false,
            created_at: 1,
            updated_at: 1,
        })
        .await
        .unwrap();
    store
        .replace_endpoints(A1, &[ep("10.0.0.1:1")], &second, 500)
        .await
        .unwrap();
    store.ban_agent(A1, 600).await.unwrap();
    assert!(store.endpoints_of_agent(A1).await.unwrap().is_empty());
    let kinds: Vec<ChangeKind> = store
        .changes_since(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.kind)
        .collect();
    assert!(kinds.contains(&ChangeKind::Endpoints));
}

/// In the entry change's own transaction: an agent's endpoints of an
/// identity go when no entry parented to it names the identity any more
/// (moved, renamed, deleted), and stay while another entry still does.
async fn an_entry_change_withdraws_the_endpoints_it_no_longer_covers(db: TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    const WEB: &str = "spiffe://example.org/web";
    let session = PublishSession {
        id: "s1".into(),
        replica: "r1".into(),
    };
    let publish = |at: i64| {
        let store = &store;
        let session = &session;
        async move {
            let ep = EndpointRecord {
                agent_id: A1.into(),
                spiffe_id: WEB.into(),
                address: "10.0.0.1:1".into(),
                protocol: "tcp".into(),
                zone: String::new(),
                weight: 100,
                tunnel_port: 0,
                registered_at: 0,
                lost_at: 0,
            };
            store
                .replace_endpoints(A1, &[ep], session, at)
                .await
                .unwrap();
            assert_eq!(store.endpoints_of_agent(A1).await.unwrap().len(), 1);
        }
    };
    let changes = |store: &Store| {
        let store = store.clone();
        async move {
            store
                .changes_since(0, 1000)
                .await
                .unwrap()
                .iter()
                .filter(|c| c.kind == ChangeKind::Endpoints)
                .count()
        }
    };
    let first = store
        .create_entry(&spec(WEB, A1, &["unix:uid:1"]), 1)
        .await
        .unwrap();
    let second = store
        .create_entry(&spec(WEB, A1, &["unix:uid:2"]), 2)
        .await
        .unwrap();
    publish(10).await;
    // Another entry of the agent still names the identity: kept.
    store.delete_entry(&first.id, 20).await.unwrap();
    assert_eq!(store.endpoints_of_agent(A1).await.unwrap().len(), 1);
    // Its last entry moves to another agent: withdrawn, with a change row.
    let before = changes(&store).await;
    store
        .update_entry(&second.id, &spec(WEB, A2, &["unix:uid:2"]), 30)
        .await
        .unwrap();
    assert!(store.endpoints_of_agent(A1).await.unwrap().is_empty());
    assert_eq!(changes(&store).await, before + 1);
    // Renamed under the same agent: the old identity's endpoints go.
    store
        .update_entry(&second.id, &spec(WEB, A1, &["unix:uid:2"]), 40)
        .await
        .unwrap();
    publish(50).await;
    store
        .update_entry(
            &second.id,
            &spec("spiffe://example.org/other", A1, &["unix:uid:2"]),
            60,
        )
        .await
        .unwrap();
    assert!(store.endpoints_of_agent(A1).await.unwrap().is_empty());
    // Back under the agent and published again: a change that keeps the
    // identity on the agent keeps them; deleted, they are withdrawn.
    store
        .update_entry(&second.id, &spec(WEB, A1, &["unix:uid:2"]), 70)
        .await
        .unwrap();
    publish(80).await;
    store
        .update_entry(&second.id, &spec(WEB, A1, &["unix:uid:3"]), 85)
        .await
        .unwrap();
    assert_eq!(store.endpoints_of_agent(A1).await.unwrap().len(), 1);
    store.delete_entry(&second.id, 90).await.unwrap();
    assert!(store.endpoints_of_agent(A1).await.unwrap().is_empty());
}
