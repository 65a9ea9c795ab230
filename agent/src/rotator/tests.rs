//! The rotator against a CA in memory that signs real certificates and
//! fails on demand, on a manual clock: each test drives turns by hand and
//! moves the clock, so nothing sleeps.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateSigningRequestParams, Issuer, SanType};
use rustls::pki_types::CertificateSigningRequestDer;
use signet_identity::clock::Clock;
use signet_identity::testing::TestCa;
use signet_identity::tls::BundleHandle;
use signet_identity::x509_svid::{subject_key_id, unix_seconds};
use signet_proto::node as pb;
use tokio::sync::{mpsc, watch};

use super::node_api::{CallError, NodeApi};
use super::schedule::{MAX_BACKOFF, MIN_BACKOFF};
use super::sync::SyncEvent;
use super::SvidRotator;
use crate::agent_identity::{self, new_key_and_csr};
use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::node_client::ClientCert;
use crate::workload_svids::Snapshot;

const AGENT_ID: &str = "spiffe://example.org/agent/node-1";
const DAY: Duration = Duration::from_secs(86_400);

/// What the fake CA does and has done; shared by the test and the rotator.
struct CaState {
    clock: Clock,
    /// Signing keys, the current last; each its own root.
    roots: Vec<TestCa>,
    /// Whether it answers at all.
    up: bool,
    /// Renewals whose answer is lost after the CA recorded them.
    lose_renewal_answers: usize,
    agent_ttl: Duration,
    workload_ttl: Duration,
    entries: Vec<pb::WorkloadEntry>,
    tainted: Vec<Vec<u8>>,
    /// The agent SVID serials the CA accepts: current and previous (the
    /// real CA's rule for a lost renewal answer).
    current_serial: Vec<u8>,
    previous_serial: Option<Vec<u8>>,
    connected: bool,
    stream: Option<mpsc::Sender<SyncEvent>>,
    connects: usize,
    renewals: usize,
    signings: usize,
    /// Whether the node proves itself by a method it can repeat (x509pop).
    reattestable: bool,
    reattestations: usize,
    /// The agent ID a re-attestation gives (the node's certificate was
    /// renewed: x509pop's default ID follows the leaf).
    reattest_as: Option<String>,
    /// The revision the agent said it knew on each connection.
    known_revisions: Vec<Option<i64>>,
}

impl CaState {
    fn signer(&self) -> &TestCa {
        self.roots.last().unwrap()
    }

    fn sign(&self, csr: &[u8], id: &str, ttl: Duration) -> Vec<Vec<u8>> {
        let now = self.clock.now();
        let mut req =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
                .unwrap();
        req.params.not_before = (now - Duration::from_secs(30)).into();
        req.params.not_after = (now + ttl).into();
        req.params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        req.params.use_authority_key_identifier_extension = true;
        let root = &self.signer().root;
        let issuer = Issuer::from_ca_cert_der(&root.der, &root.key).unwrap();
        vec![req.signed_by(&issuer).unwrap().der().to_vec()]
    }

    fn bundle(&self) -> pb::Bundle {
        pb::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: self.roots.iter().map(|r| r.root.der.to_vec()).collect(),
            tainted_key_ids: self.tainted.clone(),
            sequence: self.roots.len() as u64,
            ..Default::default()
        }
    }

    fn agent_svid(&mut self, csr: &[u8]) -> pb::AgentSvid {
        self.agent_svid_as(csr, AGENT_ID)
    }

    fn agent_svid_as(&mut self, csr: &[u8], id: &str) -> pb::AgentSvid {
        let chain = self.sign(csr, id, self.agent_ttl);
        self.previous_serial = Some(std::mem::replace(
            &mut self.current_serial,
            serial_of(&chain[0]),
        ));
        pb::AgentSvid {
            spiffe_id: id.into(),
            cert_chain: chain,
            expires_at: unix_seconds(self.clock.now() + self.agent_ttl),
            bundle: Some(self.bundle()),
        }
    }

    fn snapshot(&self) -> pb::EntrySnapshot {
        pb::EntrySnapshot {
            entries: self.entries.clone(),
            bundle: Some(self.bundle()),
            revision: 1,
            ..Default::default()
        }
    }

    fn down(&self, what: &'static str) -> Result<(), CallError> {
        if self.up {
            Ok(())
        } else {
            Err(CallError::Timeout {
                what,
                deadline: Duration::from_secs(1),
            })
        }
    }
}

fn serial_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

/// The rotator's end of the fake CA.
struct FakeCa(Arc<Mutex<CaState>>);

impl NodeApi for FakeCa {
    async fn connect(
        &mut self,
        agent: &ClientCert,
        _bundle: &BundleHandle,
        known_revision: Option<i64>,
        _deadline: Duration,
    ) -> Result<mpsc::Receiver<SyncEvent>, CallError> {
        let mut ca = self.0.lock().unwrap();
        ca.down("connect")?;
        ca.connects += 1;
        ca.known_revisions.push(known_revision);
        let (_, cert) = x509_parser::parse_x509_certificate(&agent.chain[0]).unwrap();
        if cert.validity().not_after.timestamp() <= unix_seconds(ca.clock.now()) {
            // The real CA's TLS handshake refuses an expired client SVID.
            return Err(CallError::Connect(
                "handshake: client certificate expired".into(),
            ));
        }
        let serial = serial_of(&agent.chain[0]);
        if serial != ca.current_serial && Some(&serial) != ca.previous_serial.as_ref() {
            return Err(CallError::Status {
                what: "entry stream",
                code: tonic::Code::PermissionDenied,
                message: "neither its current nor its previous SVID".into(),
            });
        }
        let (tx, rx) = mpsc::channel(8);
        tx.try_send(SyncEvent::Page(ca.snapshot())).unwrap();
        ca.stream = Some(tx);
        ca.connected = true;
        Ok(rx)
    }

    async fn renew_agent(
        &mut self,
        csr: Vec<u8>,
        _deadline: Duration,
    ) -> Result<pb::AgentSvid, CallError> {
        let mut ca = self.0.lock().unwrap();
        ca.down("renew agent SVID")?;
        ca.renewals += 1;
        assert!(ca.renewals < 20, "the rotator renews in a loop");
        let svid = ca.agent_svid(&csr);
        if ca.lose_renewal_answers > 0 {
            ca.lose_renewal_answers -= 1;
            return Err(CallError::Timeout {
                what: "renew agent SVID",
                deadline: Duration::from_secs(1),
            });
        }
        Ok(svid)
    }

    async fn sign_svids(
        &mut self,
        requests: Vec<pb::SvidRequest>,
        _deadline: Duration,
    ) -> Result<Vec<pb::WorkloadSvid>, CallError> {
        let mut ca = self.0.lock().unwrap();
        ca.down("sign SVIDs")?;
        ca.signings += requests.len();
        let ttl = ca.workload_ttl;
        let answer = requests
            .iter()
            .map(|r| {
                let entry = ca.entries.iter().find(|e| e.id == r.entry_id).unwrap();
                pb::WorkloadSvid {
                    entry_id: r.entry_id.clone(),
                    spiffe_id: entry.spiffe_id.clone(),
                    cert_chain: ca.sign(&r.csr, &entry.spiffe_id, ttl),
                    expires_at: unix_seconds(ca.clock.now() + ttl),
                }
            })
            .collect();
        Ok(answer)
    }

    fn can_reattest(&self) -> bool {
        self.0.lock().unwrap().reattestable
    }

    async fn reattest(
        &mut self,
        _bundle: &BundleHandle,
        csr: Vec<u8>,
        _deadline: Duration,
    ) -> Result<pb::AgentSvid, CallError> {
        let mut ca = self.0.lock().unwrap();
        assert!(ca.reattestable, "only a proof method re-attests");
        ca.down("re-attest")?;
        ca.reattestations += 1;
        assert!(ca.reattestations < 20, "the rotator re-attests in a loop");
        let id = ca
            .reattest_as
            .clone()
            .unwrap_or_else(|| AGENT_ID.to_owned());
        Ok(ca.agent_svid_as(&csr, &id))
    }

    fn disconnect(&mut self) {
        let mut ca = self.0.lock().unwrap();
        ca.connected = false;
        ca.stream = None;
    }

    fn is_connected(&self) -> bool {
        self.0.lock().unwrap().connected
    }
}

struct Harness {
    ca: Arc<Mutex<CaState>>,
    clock: Clock,
    rotator: SvidRotator<FakeCa>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    _data_dir: tempfile::TempDir,
}

impl Harness {
    fn new(agent_ttl: Duration, workload_ttl: Duration) -> Self {
        let clock = Clock::manual(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let data_dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(Mutex::new(CaState {
            clock: clock.clone(),
            roots: vec![TestCa::new("example.org")],
            up: true,
            lose_renewal_answers: 0,
            agent_ttl,
            workload_ttl,
            entries: vec![pb::WorkloadEntry {
                id: "web".into(),
                spiffe_id: "spiffe://example.org/web".into(),
                selectors: vec!["unix:uid:1000".into()],
                revision: 1,
                ..Default::default()
            }],
            tainted: Vec::new(),
            current_serial: Vec::new(),
            previous_serial: None,
            connected: false,
            stream: None,
            connects: 0,
            renewals: 0,
            signings: 0,
            reattestable: false,
            reattestations: 0,
            reattest_as: None,
            known_revisions: Vec::new(),
        }));
        // Attestation: the agent's first SVID.
        let (key, csr) = new_key_and_csr().unwrap();
        let resp = ca.lock().unwrap().agent_svid(&csr);
        let (agent, bundle) = agent_identity::from_response(&resp, &key, clock.now()).unwrap();
        let config = AgentConfig {
            data_dir: data_dir.path().to_owned(),
            ..AgentConfig::default()
        };
        let (tx, snapshots) = watch::channel(Arc::new(Snapshot::empty()));
        let rotator = SvidRotator::new(
            config,
            agent,
            bundle,
            tx,
            FakeCa(ca.clone()),
            Metrics::new(),
            clock.clone(),
        );
        Self {
            ca,
            clock,
            rotator,
            snapshots,
            _data_dir: data_dir,
        }
    }

    fn now_ms(&self) -> i64 {
        self.rotator.now_ms()
    }

    /// Moves the clock to the rotator's next turn and takes it; returns
    /// how far the clock moved.
    async fn next_turn(&mut self, wake: i64) -> (Duration, i64) {
        let step = Duration::from_millis((wake - self.now_ms()).max(0) as u64);
        self.clock.advance(step);
        (step, self.rotator.turn().await)
    }

    fn svids(&self) -> Vec<(String, i64, i64)> {
        self.snapshots
            .borrow()
            .svids
            .iter()
            .map(|s| (s.spiffe_id.clone(), s.issued_at, s.not_after))
            .collect()
    }

    fn ca(&self) -> std::sync::MutexGuard<'_, CaState> {
        self.ca.lock().unwrap()
    }
}

#[tokio::test]
async fn workload_svids_are_renewed_at_the_fraction_of_their_lifetime_with_jitter() {
    let mut h = Harness::new(DAY * 30, Duration::from_secs(3600));
    let wake = h.rotator.turn().await;
    let first = h.svids();
    assert_eq!(first.len(), 1, "the entry gets its SVID on the first turn");
    let (_, issued, not_after) = first[0].clone();
    let lifetime_ms = (not_after - issued) * 1000;
    // The rotator's next turn is its renewal: in [45%, 50%] of the lifetime.
    let due = wake - issued * 1000;
    assert!(
        (lifetime_ms * 45 / 100..=lifetime_ms / 2).contains(&due),
        "due {due} ms into a {lifetime_ms} ms lifetime"
    );
    // Just before it nothing is signed; at it, the SVID is replaced.
    h.clock
        .advance(Duration::from_millis((wake - h.now_ms() - 1000) as u64));
    h.rotator.turn().await;
    assert_eq!(h.ca().signings, 1);
    assert_eq!(h.svids(), first);
    h.next_turn(wake).await;
    assert_eq!(h.ca().signings, 2, "renewed when due");
    let renewed = h.svids();
    assert_eq!(renewed.len(), 1);
    assert!(renewed[0].2 > not_after, "a new SVID replaces the old one");
    assert_eq!(h.ca().renewals, 0, "the agent SVID is not due yet");
}

#[tokio::test]
async fn the_agent_svid_is_renewed_when_due_and_the_ca_sees_the_new_one() {
    let mut h = Harness::new(Duration::from_secs(7200), DAY);
    let wake = h.rotator.turn().await;
    let old = h.rotator.agent.not_after;
    h.next_turn(wake).await;
    assert_eq!(h.ca().renewals, 1);
    assert!(h.rotator.agent.not_after > old);
    // It reconnected with the new SVID (the fake refuses any other).
    assert_eq!(h.ca().connects, 2);
    assert_eq!(
        serial_of(&h.rotator.agent.cert.chain[0]),
        h.ca().current_serial
    );
}

#[tokio::test]
async fn backoff_grows_to_its_cap_while_the_ca_is_down_and_resets_when_it_answers() {
    let mut h = Harness::new(DAY * 30, DAY * 30);
    h.rotator.turn().await;
    h.ca().up = false;
    h.ca().stream = None;
    h.rotator.on_sync(None);
    let mut waits = Vec::new();
    let mut wake = h.rotator.retry_at_ms.unwrap();
    waits.push(Duration::from_millis((wake - h.now_ms()) as u64));
    for _ in 0..10 {
        // A turn before the retry time asks nothing.
        h.clock.advance(Duration::from_millis(100));
        let connects = h.ca().connects;
        h.rotator.turn().await;
        assert_eq!(h.ca().connects, connects, "no call while backing off");
        let (_, next) = h.next_turn(wake).await;
        wake = h.rotator.retry_at_ms.unwrap();
        assert_eq!(next, wake.max(h.now_ms() + 50));
        waits.push(Duration::from_millis((wake - h.now_ms()) as u64));
    }
    let mut backoff = MIN_BACKOFF;
    for w in &waits {
        assert!(
            w.as_secs_f64() >= backoff.as_secs_f64() * 0.8 - 0.001
                && w.as_secs_f64() <= backoff.as_secs_f64() * 1.2 + 0.001,
            "waits {waits:?}"
        );
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    assert!(waits.last().unwrap() <= &MAX_BACKOFF.mul_f64(1.2));
    // The CA answers again: the next pass connects and the backoff resets.
    h.ca().up = true;
    h.next_turn(wake).await;
    assert!(h.rotator.retry_at_ms.is_none());
    assert_eq!(h.rotator.backoff.current(), MIN_BACKOFF);
    assert_eq!(h.svids().len(), 1);
}

#[tokio::test]
async fn a_ca_down_longer_than_an_svid_lives_drops_it_then_replaces_it() {
    let mut h = Harness::new(DAY * 30, Duration::from_secs(60));
    let mut wake = h.rotator.turn().await;
    let (_, _, not_after) = h.svids()[0].clone();
    h.ca().up = false;
    // Follow the rotator's own schedule through the outage.
    let mut steps = Vec::new();
    while unix_seconds(h.clock.now()) < not_after + 30 {
        let before = h.now_ms();
        let backing_off = h.rotator.retry_at_ms.is_some();
        let (step, next) = h.next_turn(wake).await;
        let left_ms = not_after * 1000 - before;
        if backing_off && left_ms > 0 {
            assert!(
                step.as_millis() as i64 <= (left_ms / 4).max(250) + 1,
                "waited {step:?} with {left_ms} ms left"
            );
        }
        steps.push(step);
        wake = next;
        assert!(steps.len() < 200, "the rotator keeps trying: {steps:?}");
    }
    assert!(h.svids().is_empty(), "an expired SVID is not served");
    assert!(!h
        .rotator
        .metrics
        .ready
        .load(std::sync::atomic::Ordering::Relaxed));
    // The CA comes back: the next try issues a new SVID.
    h.ca().up = true;
    h.next_turn(wake).await;
    let svids = h.svids();
    assert_eq!(svids.len(), 1);
    assert!(svids[0].2 > unix_seconds(h.clock.now()));
    assert!(h
        .rotator
        .metrics
        .ready
        .load(std::sync::atomic::Ordering::Relaxed));
}

/// Runs the rotator's own schedule until `until` (Unix seconds); returns
/// the wake time after it.
async fn ride_out(h: &mut Harness, wake: i64, until: i64) -> i64 {
    ride_out_until(h, wake, until, |_| false).await
}

/// [`ride_out`], stopping early once `done`.
async fn ride_out_until(
    h: &mut Harness,
    mut wake: i64,
    until: i64,
    done: impl Fn(&Harness) -> bool,
) -> i64 {
    let mut turns = 0;
    while unix_seconds(h.clock.now()) < until && !done(h) {
        let (_, next) = h.next_turn(wake).await;
        wake = next;
        turns += 1;
        assert!(turns < 10_000, "the rotator keeps trying");
    }
    wake
}

#[tokio::test]
async fn an_agent_svid_lost_in_an_outage_comes_back_by_proof_with_the_same_id() {
    let mut h = Harness::new(Duration::from_secs(600), Duration::from_secs(60));
    h.ca().reattestable = true;
    let wake = h.rotator.turn().await;
    let first_id = h.rotator.agent.id.clone();
    let agent_not_after = h.rotator.agent.not_after;
    h.ca().up = false;
    let wake = ride_out(&mut h, wake, agent_not_after + 60).await;
    assert!(!h.rotator.agent.is_valid_at(h.clock.now()));
    assert_eq!(
        h.ca().reattestations,
        0,
        "nothing to reach while the CA is down"
    );
    h.ca().up = true;
    // Within the backoff the outage ended in (its cap, 30 s).
    let back = unix_seconds(h.clock.now()) + MAX_BACKOFF.as_secs() as i64;
    ride_out_until(&mut h, wake, back, |h| h.ca().reattestations > 0).await;
    assert_eq!(h.ca().reattestations, 1, "attested again, once");
    assert!(h.rotator.agent.is_valid_at(h.clock.now()));
    assert_eq!(h.rotator.agent.id, first_id);
    assert_eq!(h.svids().len(), 1, "and its workloads get SVIDs again");
    // Stored, so a restart finds it.
    let td = signet_identity::TrustDomain::new("example.org").unwrap();
    let (stored, _) = agent_identity::load(&h.rotator.data_dir, &td)
        .unwrap()
        .unwrap();
    assert_eq!(stored.not_after, h.rotator.agent.not_after);
}

#[tokio::test]
async fn a_node_re_attested_under_another_id_fetches_its_entries_afresh() {
    for (new_id, fresh) in [
        (None, false),
        (Some("spiffe://example.org/agent/renewed"), true),
    ] {
        let mut h = Harness::new(Duration::from_secs(600), Duration::from_secs(60));
        h.ca().reattestable = true;
        h.ca().reattest_as = new_id.map(str::to_owned);
        let wake = h.rotator.turn().await;
        let agent_not_after = h.rotator.agent.not_after;
        h.ca().up = false;
        let wake = ride_out(&mut h, wake, agent_not_after + 60).await;
        h.ca().up = true;
        let back = unix_seconds(h.clock.now()) + MAX_BACKOFF.as_secs() as i64;
        ride_out_until(&mut h, wake, back, |h| {
            h.ca().reattestations > 0 && h.ca().connected
        })
        .await;
        let known = h.ca().known_revisions.clone();
        assert_eq!(
            known.first(),
            Some(&None),
            "the first connection knows nothing"
        );
        let last = known.last().copied().flatten();
        assert_eq!(last.is_none(), fresh, "{new_id:?}: {known:?}");
        assert_eq!(h.rotator.agent.id.as_str(), new_id.unwrap_or(AGENT_ID));
    }
}

#[tokio::test]
async fn a_join_token_agent_whose_svid_expired_does_not_try_to_reattest() {
    let mut h = Harness::new(Duration::from_secs(600), Duration::from_secs(60));
    let wake = h.rotator.turn().await;
    let agent_not_after = h.rotator.agent.not_after;
    h.ca().up = false;
    let wake = ride_out(&mut h, wake, agent_not_after + 60).await;
    h.ca().up = true;
    let later = unix_seconds(h.clock.now()) + 2 * MAX_BACKOFF.as_secs() as i64;
    ride_out(&mut h, wake, later).await;
    assert!(!h.rotator.agent.is_valid_at(h.clock.now()));
    assert!(h.svids().is_empty());
    assert_eq!(h.ca().reattestations, 0);
}

#[tokio::test]
async fn svids_of_a_tainted_key_are_replaced_at_once_and_renewed_only_once_a_pass() {
    let mut h = Harness::new(DAY * 30, DAY);
    h.rotator.turn().await;
    let leaf = |h: &Harness| h.snapshots.borrow().svids[0].chain[0].clone();
    let first = leaf(&h);
    // The CA moves to a new key and taints the old one.
    {
        let mut ca = h.ca();
        let old = subject_key_id(&ca.signer().root.der).unwrap();
        ca.roots.push(TestCa::new("example.org"));
        ca.tainted = vec![old];
        let page = ca.snapshot();
        ca.stream
            .as_ref()
            .unwrap()
            .try_send(SyncEvent::Page(page))
            .unwrap();
    }
    let ev = super::recv_sync(&mut h.rotator.sync).await;
    h.rotator.on_sync(ev);
    h.rotator.turn().await;
    assert_eq!(h.ca().renewals, 1, "the agent SVID is replaced at once");
    assert_eq!(
        h.ca().signings,
        2,
        "so is the workload SVID, long before it is due"
    );
    assert_ne!(leaf(&h), first, "the workload SVID is a new one");
    assert!(!h.rotator.agent_svid_tainted());
    // A CA still signing with the tainted key is not asked in a loop.
    {
        let mut ca = h.ca();
        let current = subject_key_id(&ca.signer().root.der).unwrap();
        ca.tainted.push(current);
        let page = ca.snapshot();
        ca.stream
            .as_ref()
            .unwrap()
            .try_send(SyncEvent::Page(page))
            .unwrap();
    }
    let ev = super::recv_sync(&mut h.rotator.sync).await;
    h.rotator.on_sync(ev);
    h.ca().roots.pop();
    h.rotator.turn().await;
    assert_eq!(h.ca().renewals, 2, "one renewal in the pass, not a loop");
}

#[tokio::test]
async fn a_lost_renewal_answer_keeps_the_old_svid_in_use_until_the_next_try() {
    let mut h = Harness::new(Duration::from_secs(7200), DAY);
    let wake = h.rotator.turn().await;
    let old = (
        h.rotator.agent.not_after,
        h.rotator.agent.cert.chain.clone(),
    );
    h.ca().lose_renewal_answers = 1;
    h.next_turn(wake).await;
    assert_eq!(h.ca().renewals, 1, "the CA signed, the answer was lost");
    assert_eq!(
        (
            h.rotator.agent.not_after,
            h.rotator.agent.cert.chain.clone()
        ),
        old,
        "the agent goes on with the SVID it has"
    );
    assert_eq!(h.svids().len(), 1, "workloads keep their SVIDs");
    let retry = h.rotator.retry_at_ms.expect("a retry is scheduled");
    assert!(retry - h.now_ms() <= MIN_BACKOFF.mul_f64(1.2).as_millis() as i64);
    // The next try connects with the old SVID (the CA's previous one) and
    // renews.
    h.next_turn(retry).await;
    assert_eq!(h.ca().renewals, 2);
    assert!(h.rotator.retry_at_ms.is_none());
    assert_ne!(h.rotator.agent.cert.chain, old.1);
    assert_eq!(
        serial_of(&h.rotator.agent.cert.chain[0]),
        h.ca().current_serial
    );
}
