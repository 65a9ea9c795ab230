//! The one worker that owns certificate state: it keeps the agent's own SVID
//! renewed, follows the entry stream from the CA, gets an SVID (fresh key,
//! CSR) for every entry, rotates each at `renewal_fraction` of its lifetime
//! with jitter, and publishes a [`Snapshot`] on every change.
//!
//! When the CA is unreachable it keeps serving what it has until each SVID
//! expires, retries with exponential backoff and jitter, and logs once per
//! change of state, not per attempt.
//!
//! ```text
//!   node_api::NodeApi (the CA: GrpcNodeApi, or a test's) ◀── SvidRotator ──▶ watch<Snapshot>
//!   sync::EntrySync (pages → entries)   schedule (due times, backoff, deadlines)
//! ```
//!
//! It reads the time only from its injected [`Clock`], so its schedule is
//! unit-tested on a manual clock, without sleeping.

pub(crate) mod node_api;
pub(crate) mod schedule;
pub(crate) mod sync;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use signet_identity::clock::Clock;
use signet_identity::tls::BundleHandle;
use signet_identity::x509_svid::unix_seconds;
use signet_identity::TrustBundle;
use signet_proto::node as pb;
use tokio::sync::{mpsc, watch};

use crate::agent_identity::{self, bundle_from_pb, new_key_and_csr, AgentSvid};
use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::rotator::node_api::{CallError, NodeApi};
use crate::rotator::schedule::{
    call_deadline, first_expiry_in, renew_at_ms, Backoff, REATTEST_DEADLINE,
};
use crate::rotator::sync::{EntrySync, SyncEvent};
use crate::workload_entry::WorkloadEntry;
use crate::workload_svids::{Snapshot, WorkloadSvid};

/// How long a new entry stream gets to deliver its first complete update.
const FIRST_UPDATE_WAIT: Duration = Duration::from_secs(10);

/// Why a pass of the rotator failed: it retries after a backoff.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PassError {
    /// A call to the CA failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The entry stream ended or delivered no first update.
    #[error("{0}")]
    Stream(String),
    /// Something on this node: a key, a CSR, an answer that cannot be used,
    /// the data directory.
    #[error("{0}")]
    Local(String),
}

impl PassError {
    fn local(e: impl std::fmt::Display) -> Self {
        PassError::Local(e.to_string())
    }
}

/// Whether the CA answered the last attempt (for state-change logging).
#[derive(Debug, Clone, PartialEq, Eq)]
enum CaState {
    Unknown,
    Connected,
    Unreachable(String),
}

/// Owns the agent SVID and every workload SVID.
pub(crate) struct SvidRotator<N> {
    config: AgentConfig,
    data_dir: PathBuf,
    agent: AgentSvid,
    bundle: BundleHandle,
    api: N,
    sync: Option<mpsc::Receiver<SyncEvent>>,
    entries: EntrySync,
    /// Key IDs of CA keys the CA has tainted: what they signed is replaced.
    tainted: HashSet<Vec<u8>>,
    /// The kids of JWT keys the CA has tainted.
    tainted_jwt: Vec<String>,
    svids: HashMap<String, Arc<WorkloadSvid>>,
    published: watch::Sender<Arc<Snapshot>>,
    ca_state: CaState,
    backoff: Backoff,
    /// No pass before this time (ms since the epoch): backing off.
    retry_at_ms: Option<i64>,
    /// The agent SVID's expiry has been logged (once, not per loop).
    expiry_reported: bool,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl<N: NodeApi> SvidRotator<N> {
    /// A rotator for an attested agent, reaching the CA through `api`.
    /// `published` receives snapshots.
    pub(crate) fn new(
        config: AgentConfig,
        agent: AgentSvid,
        bundle: TrustBundle,
        published: watch::Sender<Arc<Snapshot>>,
        api: N,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        Self {
            data_dir: config.data_dir.clone(),
            config,
            agent,
            bundle: BundleHandle::new(bundle),
            api,
            sync: None,
            entries: EntrySync::default(),
            tainted: HashSet::new(),
            tainted_jwt: Vec::new(),
            svids: HashMap::new(),
            published,
            ca_state: CaState::Unknown,
            backoff: Backoff::default(),
            retry_at_ms: None,
            expiry_reported: false,
            metrics,
            clock,
        }
    }

    fn now_ms(&self) -> i64 {
        self.clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn set_ca_state(&mut self, state: CaState) {
        if state == self.ca_state {
            return;
        }
        match &state {
            CaState::Connected => {
                tracing::info!(ca = ?self.config.ca, "connected to the CA");
                self.metrics.ca_connected.set(1);
            }
            CaState::Unreachable(reason) if self.svids.is_empty() => {
                tracing::warn!(ca = ?self.config.ca, reason = %reason, "CA unreachable and no SVIDs to serve: workloads get nothing until it answers; retrying with backoff");
                self.metrics.ca_connected.set(0);
            }
            CaState::Unreachable(reason) => {
                tracing::warn!(ca = ?self.config.ca, reason = %reason, svids = self.svids.len(), "CA unreachable; serving cached SVIDs until they expire, retrying with backoff");
                self.metrics.ca_connected.set(0);
            }
            CaState::Unknown => {}
        }
        self.ca_state = state;
    }

    fn disconnect(&mut self) {
        self.api.disconnect();
        self.sync = None;
    }

    fn fail(&mut self, error: PassError) {
        self.disconnect();
        self.set_ca_state(CaState::Unreachable(error.to_string()));
        let now = self.now_ms();
        let wait = self
            .backoff
            .failed(rand::random::<f64>(), self.first_expiry_in(now));
        self.retry_at_ms = Some(now + wait.as_millis() as i64);
    }

    fn call_deadline(&self) -> Duration {
        call_deadline(self.first_expiry_in(self.now_ms()))
    }

    /// How long until the first SVID held (the agent's own included)
    /// expires.
    fn first_expiry_in(&self, now_ms: i64) -> Duration {
        first_expiry_in(
            self.svids
                .values()
                .map(|s| s.not_after)
                .chain(std::iter::once(self.agent.not_after)),
            now_ms,
        )
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.retry_at_ms = None;
        self.set_ca_state(CaState::Connected);
    }

    fn renew_at_ms(&self, issued_at: i64, not_after: i64) -> i64 {
        renew_at_ms(self.config.renewal_fraction, issued_at, not_after)
    }

    /// Connects and takes the first update of the entry stream.
    async fn connect(&mut self) -> Result<(), PassError> {
        self.entries.new_stream();
        let rx = self
            .api
            .connect(
                &self.agent.cert,
                &self.bundle,
                self.entries.revision,
                self.call_deadline(),
            )
            .await?;
        self.sync = Some(rx);
        // The first update follows right away; take it before signing.
        let deadline = tokio::time::Instant::now() + FIRST_UPDATE_WAIT.min(self.call_deadline());
        while !self.entries.stream_synced {
            let Some(rx) = self.sync.as_mut() else {
                return Err(PassError::Stream("entry stream closed".into()));
            };
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(SyncEvent::Page(p))) => self.apply_page(p),
                Ok(Some(SyncEvent::Ended(r))) => return Err(PassError::Stream(r)),
                Ok(None) | Err(_) => {
                    return Err(PassError::Stream("no entry update from the CA".into()))
                }
            }
        }
        Ok(())
    }

    async fn renew_agent(&mut self) -> Result<(), PassError> {
        let deadline = self.call_deadline();
        let (key, csr) = new_key_and_csr().map_err(PassError::local)?;
        let resp = self.api.renew_agent(csr, deadline).await?;
        let (svid, bundle) = agent_identity::from_response(&resp, &key, self.clock.now())
            .map_err(PassError::local)?;
        agent_identity::save(&self.data_dir, &svid, &bundle).map_err(PassError::local)?;
        tracing::info!(agent_id = %svid.id, not_after = svid.not_after, "agent SVID renewed");
        self.agent = svid;
        self.bundle.set(bundle);
        // Reconnect so the CA sees the new SVID on every later call.
        self.disconnect();
        Ok(())
    }

    /// The agent SVID is gone (expired while the CA was away): the node
    /// proves itself again, by the same method, and keeps its agent ID.
    async fn reattest(&mut self) -> Result<(), PassError> {
        let deadline = REATTEST_DEADLINE;
        let (key, csr) = new_key_and_csr().map_err(PassError::local)?;
        self.disconnect();
        let resp = self.api.reattest(&self.bundle, csr, deadline).await?;
        let (svid, bundle) = agent_identity::from_response(&resp, &key, self.clock.now())
            .map_err(PassError::local)?;
        if svid.id != self.agent.id {
            tracing::warn!(was = %self.agent.id, now = %svid.id, "re-attested under another agent ID (the node's certificate changed); its entries are fetched afresh");
            // What was synced belongs to the old ID: a delta from its
            // revision would miss the new ID's older entries.
            self.entries = EntrySync::default();
            self.svids.clear();
        }
        agent_identity::save(&self.data_dir, &svid, &bundle).map_err(PassError::local)?;
        tracing::info!(agent_id = %svid.id, not_after = svid.not_after, "agent SVID had expired; the node attested again by itself");
        self.agent = svid;
        self.bundle.set(bundle);
        Ok(())
    }

    /// Entries whose SVID is missing, outdated, signed by a tainted key or
    /// due at `now_ms`, and the next due time (ms).
    fn due_entries(&self, now_ms: i64) -> (Vec<WorkloadEntry>, Option<i64>) {
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for e in &self.entries.entries {
            match self.svids.get(&e.id) {
                Some(s) if s.entry_revision == e.revision && !self.is_tainted(&s.signed_by) => {
                    let at = self.renew_at_ms(s.issued_at, s.not_after);
                    if now_ms >= at {
                        due.push(e.clone());
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                _ => due.push(e.clone()),
            }
        }
        (due, next)
    }

    /// Whether an SVID signed by key `signed_by` must be replaced at once.
    fn is_tainted(&self, signed_by: &Option<Vec<u8>>) -> bool {
        signed_by
            .as_ref()
            .is_some_and(|id| self.tainted.contains(id))
    }

    /// Whether the agent's own SVID was signed by a tainted key.
    fn agent_svid_tainted(&self) -> bool {
        let signer = self
            .agent
            .cert
            .chain
            .first()
            .and_then(|leaf| signet_identity::x509_svid::authority_key_id(leaf));
        self.is_tainted(&signer)
    }

    /// Gets SVIDs for `due` entries, in calls of at most the CA's batch size.
    async fn sign(&mut self, due: Vec<WorkloadEntry>) -> Result<(), PassError> {
        for batch in due.chunks(pb::MAX_SIGN_BATCH) {
            self.sign_batch(batch).await?;
        }
        Ok(())
    }

    async fn sign_batch(&mut self, due: &[WorkloadEntry]) -> Result<(), PassError> {
        let deadline = self.call_deadline();
        let mut keys = HashMap::new();
        let mut requests = Vec::with_capacity(due.len());
        for e in due {
            let (key, csr) = new_key_and_csr().map_err(PassError::local)?;
            keys.insert(e.id.clone(), key);
            requests.push(pb::SvidRequest {
                entry_id: e.id.clone(),
                csr,
            });
        }
        let svids = self.api.sign_svids(requests, deadline).await?;
        let issued_at = unix_seconds(self.clock.now());
        for svid in svids {
            let (Some(key), Some(entry)) = (
                keys.remove(&svid.entry_id),
                due.iter().find(|e| e.id == svid.entry_id),
            ) else {
                continue;
            };
            let chain: Vec<CertificateDer<'static>> = svid
                .cert_chain
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let signed_by = chain
                .first()
                .and_then(|leaf| signet_identity::x509_svid::authority_key_id(leaf));
            let rotated = self.svids.contains_key(&entry.id);
            self.svids.insert(
                entry.id.clone(),
                Arc::new(WorkloadSvid {
                    entry_id: entry.id.clone(),
                    entry_revision: entry.revision,
                    spiffe_id: svid.spiffe_id.clone(),
                    chain,
                    key_pkcs8: key.serialize_der(),
                    issued_at,
                    not_after: svid.expires_at,
                    signed_by,
                }),
            );
            if rotated {
                self.metrics.svid_rotations.inc();
            } else {
                self.metrics.svids_issued.inc();
            }
            tracing::debug!(spiffe_id = %svid.spiffe_id, not_after = svid.expires_at, rotated, "workload SVID ready");
        }
        Ok(())
    }

    /// Takes the bundle and the tainted keys a page carries.
    fn take_bundle(&mut self, b: &pb::Bundle) {
        let tainted: HashSet<Vec<u8>> = b.tainted_key_ids.iter().cloned().collect();
        if tainted != self.tainted {
            if !tainted.is_empty() {
                tracing::warn!(
                    keys = tainted.len(),
                    "the CA tainted signing keys: replacing every SVID they signed"
                );
            }
            self.tainted = tainted;
        }
        self.tainted_jwt = b.tainted_jwt_kids.clone();
        match bundle_from_pb(Some(b)) {
            Ok(bundle) => {
                // X.509 or JWT authorities: either change is a new bundle.
                if bundle != *self.bundle.get() {
                    if let Err(e) = agent_identity::save_bundle(&self.data_dir, &bundle) {
                        tracing::warn!(error = %e, "cannot save the new bundle");
                    }
                    tracing::info!(sequence = bundle.sequence, "trust bundle updated");
                }
                self.bundle.set(bundle);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the CA sent a bundle that cannot be used; keeping the last one")
            }
        }
    }

    /// Takes one page of an update from the CA; applies the update when
    /// its last page has come.
    fn apply_page(&mut self, page: pb::EntrySnapshot) {
        if let Some(b) = page.bundle.as_ref() {
            self.take_bundle(b);
        }
        if !self.entries.take_page(page) {
            return;
        }
        self.metrics.entries.set(self.entries.entries.len() as i64);
        let live: HashSet<&String> = self.entries.entries.iter().map(|e| &e.id).collect();
        self.svids.retain(|id, _| live.contains(id));
    }

    /// Handles what the entry stream delivered between passes.
    fn on_sync(&mut self, event: Option<SyncEvent>) {
        match event {
            Some(SyncEvent::Page(p)) => self.apply_page(p),
            Some(SyncEvent::Ended(reason)) => self.fail(PassError::Stream(reason)),
            None => self.fail(PassError::Stream("entry stream closed".into())),
        }
    }

    fn publish(&mut self, now: i64) {
        self.svids.retain(|_, s| s.not_after > now);
        let mut svids: Vec<_> = self.svids.values().cloned().collect();
        svids.sort_by(|a, b| {
            a.spiffe_id
                .cmp(&b.spiffe_id)
                .then(a.entry_id.cmp(&b.entry_id))
        });
        let snapshot = Snapshot {
            bundle: Some(self.bundle.get()),
            tainted_jwt: self.tainted_jwt.clone(),
            entries: self.entries.entries.clone(),
            svids,
        };
        self.metrics.svids_held.set(snapshot.svids.len() as i64);
        let complete = self
            .entries
            .entries
            .iter()
            .all(|e| snapshot.svids.iter().any(|s| s.entry_id == e.id));
        self.metrics.ready.store(
            self.entries.synced && complete,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.published.send_if_modified(|cur| {
            let changed = cur.svids != snapshot.svids
                || cur.entries != snapshot.entries
                || cur.tainted_jwt != snapshot.tainted_jwt
                || cur.bundle.as_deref() != snapshot.bundle.as_deref();
            if changed {
                *cur = Arc::new(snapshot);
            }
            changed
        });
    }

    /// One turn of the loop: a pass unless backing off, then publish.
    /// Returns when the next turn is due (ms since the epoch).
    async fn turn(&mut self) -> i64 {
        if self.retry_at_ms.is_none_or(|t| self.now_ms() >= t) {
            if let Err(e) = self.pass().await {
                self.fail(e);
            }
        }
        self.publish(unix_seconds(self.clock.now()));
        let expired = !self.agent.is_valid_at(self.clock.now());
        if expired && !self.expiry_reported {
            if self.api.can_reattest() {
                tracing::warn!(agent_id = %self.agent.id, not_after = self.agent.not_after, "agent SVID expired before it could be renewed; the node attests again by itself once the CA answers");
            } else {
                tracing::error!(agent_id = %self.agent.id, not_after = self.agent.not_after, "agent SVID expired before it could be renewed; the CA will not take it again: restart the agent with a new --join-token");
            }
        }
        self.expiry_reported = expired;
        self.next_turn(self.now_ms())
    }

    /// When the next turn is due: the next renewal, the next expiry, or the
    /// end of a backoff, whichever comes first (at least 50 ms away, at most
    /// an hour).
    fn next_turn(&self, now_ms: i64) -> i64 {
        let mut wake = now_ms + 3_600_000;
        wake = wake.min(self.renew_at_ms(self.agent.issued_at, self.agent.not_after));
        if let (_, Some(next)) = self.due_entries(now_ms) {
            wake = wake.min(next);
        }
        if let Some(exp) = self.svids.values().map(|s| s.not_after).min() {
            wake = wake.min(exp * 1000);
        }
        if let Some(r) = self.retry_at_ms {
            wake = r.min(wake).max(now_ms);
        }
        wake.max(now_ms + 50)
    }

    /// Runs until `stop` turns true.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let wake = self.turn().await;
            let sleep = Duration::from_millis((wake - self.now_ms()).max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                ev = recv_sync(&mut self.sync) => self.on_sync(ev),
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            }
        }
    }

    /// One pass: connect, renew the agent SVID, issue what is due. The
    /// agent SVID is renewed at most once a pass: a CA that answers with an
    /// SVID of a tainted key again is not asked in a loop.
    async fn pass(&mut self) -> Result<(), PassError> {
        if !self.agent.is_valid_at(self.clock.now()) && self.api.can_reattest() {
            self.reattest().await?;
        }
        let mut renewed = false;
        loop {
            if !self.api.is_connected() {
                self.connect().await?;
            }
            let due = self.now_ms() >= self.renew_at_ms(self.agent.issued_at, self.agent.not_after)
                || self.agent_svid_tainted();
            if due && !renewed {
                self.renew_agent().await?;
                renewed = true;
                continue;
            }
            break;
        }
        let (due, _) = self.due_entries(self.now_ms());
        if !due.is_empty() {
            self.sign(due).await?;
        }
        self.succeeded();
        Ok(())
    }
}

async fn recv_sync(rx: &mut Option<mpsc::Receiver<SyncEvent>>) -> Option<SyncEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
