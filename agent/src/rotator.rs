//! The one worker that owns certificate state: it keeps the agent's own SVID
//! renewed, follows the entry stream from the CA, gets an SVID (fresh key,
//! CSR) for every entry, rotates each at `renewal_fraction` of its lifetime
//! with jitter, and publishes a [`Snapshot`] on every change.
//!
//! When the CA is unreachable it keeps serving what it has until each SVID
//! expires, retries with exponential backoff and jitter, and logs once per
//! change of state, not per attempt.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use signet_identity::tls::BundleHandle;
use signet_identity::x509_svid::unix_seconds;
use signet_identity::{TrustBundle, TrustDomain};
use signet_proto::node as pb;
use signet_proto::node::node_client::NodeClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::agent_identity::{self, bundle_from_pb, new_key_and_csr, AgentSvid};
use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::node_client::{self, ServerTrust};
use crate::workload_svids::{Snapshot, WorkloadSvid};

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a new entry stream gets to deliver its first complete update.
const FIRST_UPDATE_WAIT: Duration = Duration::from_secs(10);

/// A uniform random number in [0, 1).
pub fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b) as f64 / (u32::MAX as f64 + 1.0)
}

/// Whether the CA answered the last attempt (for state-change logging).
#[derive(Debug, Clone, PartialEq, Eq)]
enum CaState {
    Unknown,
    Connected,
    Unreachable(String),
}

/// Messages from the entry-sync task.
enum SyncEvent {
    Page(pb::EntrySnapshot),
    Ended(String),
}

/// An update whose pages are still arriving.
#[derive(Default)]
struct PendingUpdate {
    delta: bool,
    entries: Vec<pb::WorkloadEntry>,
    removed: Vec<String>,
}

/// Where the rest of the agent finds the CA: the rotator's own connection
/// (JWT-SVID minting shares it: short unary calls), and the mesh's.
pub struct CaLinks {
    /// The rotator's connection.
    pub ca: watch::Sender<Option<NodeClient<Channel>>>,
    /// The mesh's connection (publisher, watches).
    pub mesh: watch::Sender<Option<NodeClient<Channel>>>,
}

/// Owns the agent SVID and every workload SVID.
pub struct SvidRotator {
    config: AgentConfig,
    td: TrustDomain,
    data_dir: PathBuf,
    agent: AgentSvid,
    bundle: BundleHandle,
    client: Option<NodeClient<Channel>>,
    /// Where the Workload API finds the connection to the CA (to have
    /// JWT-SVIDs signed): the same as `client`, `None` while disconnected.
    ca_link: watch::Sender<Option<NodeClient<Channel>>>,
    /// The connection the mesh's long-lived streams use (the endpoint
    /// publisher, the discovery watches): another HTTP/2 connection with
    /// the same agent SVID, made on first use, so that however many
    /// streams the mesh holds, SVID renewal and JWT-SVID minting never wait
    /// behind them for the CA's per-connection stream budget.
    mesh_link: watch::Sender<Option<NodeClient<Channel>>>,
    sync: Option<mpsc::Receiver<SyncEvent>>,
    /// Entries by ID, as of `revision`.
    entries: Vec<pb::WorkloadEntry>,
    /// The revision of the last complete update applied: sent on reconnect,
    /// so the CA answers with only what changed since.
    revision: Option<i64>,
    /// The update being received, page by page.
    pending: Option<PendingUpdate>,
    /// A complete update has arrived on the current stream.
    stream_synced: bool,
    /// Key IDs of CA keys the CA has tainted: what they signed is replaced.
    tainted: std::collections::HashSet<Vec<u8>>,
    /// The kids of JWT keys the CA has tainted.
    tainted_jwt: Vec<String>,
    svids: HashMap<String, Arc<WorkloadSvid>>,
    published: watch::Sender<Arc<Snapshot>>,
    ca_state: CaState,
    backoff: Duration,
    retry_at: Option<tokio::time::Instant>,
    /// The agent SVID's expiry has been logged (once, not per loop).
    expiry_reported: bool,
    /// Entries have been received from the CA since this process started.
    synced: bool,
    metrics: Arc<Metrics>,
}

impl SvidRotator {
    /// A rotator for an attested agent. `published` receives snapshots.
    pub fn new(
        config: AgentConfig,
        td: TrustDomain,
        agent: AgentSvid,
        bundle: TrustBundle,
        published: watch::Sender<Arc<Snapshot>>,
        links: CaLinks,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            data_dir: config.data_dir.clone(),
            config,
            td,
            agent,
            bundle: BundleHandle::new(bundle),
            client: None,
            ca_link: links.ca,
            mesh_link: links.mesh,
            sync: None,
            entries: Vec::new(),
            revision: None,
            pending: None,
            stream_synced: false,
            tainted: Default::default(),
            tainted_jwt: Vec::new(),
            svids: HashMap::new(),
            published,
            ca_state: CaState::Unknown,
            backoff: MIN_BACKOFF,
            retry_at: None,
            expiry_reported: false,
            synced: false,
            metrics,
        }
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

    /// Sets (or drops) the CA connection, for the rotator and the Workload
    /// API, and the mesh's connection beside it.
    fn set_client(&mut self, client: Option<(NodeClient<Channel>, NodeClient<Channel>)>) {
        let (client, mesh) = client.unzip();
        self.ca_link.send_replace(client.clone());
        self.mesh_link.send_replace(mesh);
        self.client = client;
    }

    fn fail(&mut self, reason: String) {
        self.set_client(None);
        self.sync = None;
        self.set_ca_state(CaState::Unreachable(reason));
        let wait = retry_wait(self.backoff, jitter(), self.first_expiry_in(now_ms()));
        self.retry_at = Some(tokio::time::Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// How long a call to the CA may take: a CA replica stuck (on its
    /// database, say) must not hold the agent past the point where it could
    /// still renew from another try. A quarter of the time left before the
    /// first SVID expires, between 1 and 15 s.
    fn call_deadline(&self) -> Duration {
        (self.first_expiry_in(now_ms()) / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
    }

    /// How long until the first SVID held (the agent's own included)
    /// expires.
    fn first_expiry_in(&self, now_ms: i64) -> Duration {
        let first = self
            .svids
            .values()
            .map(|s| s.not_after)
            .chain(std::iter::once(self.agent.not_after))
            .min()
            .unwrap_or(i64::MAX / 1000);
        Duration::from_millis((first.saturating_mul(1000) - now_ms).max(0) as u64)
    }

    fn succeeded(&mut self) {
        self.backoff = MIN_BACKOFF;
        self.retry_at = None;
        self.set_ca_state(CaState::Connected);
    }

    /// Connects and starts the entry stream.
    async fn connect(&mut self) -> Result<(), String> {
        let trust = ServerTrust::Bundle(self.bundle.clone());
        let mut client =
            node_client::connect(&self.config.ca, &self.td, &trust, Some(&self.agent.cert))
                .await
                .map_err(|e| e.to_string())?;
        self.pending = None;
        self.stream_synced = false;
        let stream = within(
            self.call_deadline(),
            "entry stream",
            client.sync_entries(pb::SyncEntriesRequest {
                known_revision: self.revision,
            }),
        )
        .await?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(forward_sync(stream, tx));
        let mesh =
            node_client::connect_lazy(&self.config.ca, &self.td, &trust, Some(&self.agent.cert))
                .map_err(|e| e.to_string())?;
        self.set_client(Some((client, mesh)));
        self.sync = Some(rx);
        Ok(())
    }

    /// When an SVID received at `issued_at` and expiring at `not_after` is
    /// due, in milliseconds since the epoch. The jitter is derived from the
    /// expiry so the due time stays put across loop iterations.
    fn renew_at_ms(&self, issued_at: i64, not_after: i64) -> i64 {
        let lifetime = Duration::from_secs((not_after - issued_at).max(1) as u64);
        let j = ((not_after as u64).wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
        issued_at * 1000 + self.config.renew_after(lifetime, j).as_millis() as i64
    }

    async fn renew_agent(&mut self) -> Result<(), String> {
        let deadline = self.call_deadline();
        let Some(client) = self.client.as_mut() else {
            return Err("not connected".into());
        };
        let (key, csr) = new_key_and_csr().map_err(|e| e.to_string())?;
        let resp = within(
            deadline,
            "renew agent SVID",
            client.renew_agent(pb::RenewAgentRequest { csr }),
        )
        .await?;
        let (svid, bundle) =
            agent_identity::from_response(&resp, &key).map_err(|e| e.to_string())?;
        agent_identity::save(&self.data_dir, &svid, &bundle).map_err(|e| e.to_string())?;
        tracing::info!(agent_id = %svid.id, not_after = svid.not_after, "agent SVID renewed");
        self.agent = svid;
        self.bundle.set(bundle);
        // Reconnect so the CA sees the new SVID on every later call.
        self.set_client(None);
        self.sync = None;
        Ok(())
    }

    /// Entries whose SVID is missing, outdated or due at `now_ms`, and the
    /// next due time (ms).
    fn due_entries(&self, now_ms: i64) -> (Vec<pb::WorkloadEntry>, Option<i64>) {
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for e in &self.entries {
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
    async fn sign(&mut self, due: Vec<pb::WorkloadEntry>) -> Result<(), String> {
        for batch in due.chunks(pb::MAX_SIGN_BATCH) {
            self.sign_batch(batch.to_vec()).await?;
        }
        Ok(())
    }

    async fn sign_batch(&mut self, due: Vec<pb::WorkloadEntry>) -> Result<(), String> {
        let deadline = self.call_deadline();
        let Some(client) = self.client.as_mut() else {
            return Err("not connected".into());
        };
        let mut keys = HashMap::new();
        let mut requests = Vec::with_capacity(due.len());
        for e in &due {
            let (key, csr) = new_key_and_csr().map_err(|e| e.to_string())?;
            keys.insert(e.id.clone(), key);
            requests.push(pb::SvidRequest {
                entry_id: e.id.clone(),
                csr,
            });
        }
        let resp = within(
            deadline,
            "sign SVIDs",
            client.sign_svids(pb::SignSvidsRequest { requests }),
        )
        .await?;
        for svid in resp.svids {
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
                    issued_at: unix_seconds(SystemTime::now()),
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

    /// Takes one page of an update from the CA; applies the update when
    /// its last page has come.
    fn apply_page(&mut self, page: pb::EntrySnapshot) {
        if let Some(b) = page.bundle.as_ref() {
            let tainted: std::collections::HashSet<Vec<u8>> =
                b.tainted_key_ids.iter().cloned().collect();
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
        let pending = self.pending.get_or_insert_with(|| PendingUpdate {
            delta: page.delta,
            ..Default::default()
        });
        pending.entries.extend(page.entries);
        pending.removed.extend(page.removed_entry_ids);
        if page.more {
            return;
        }
        let Some(update) = self.pending.take() else {
            return;
        };
        self.entries = if update.delta {
            merge(
                std::mem::take(&mut self.entries),
                update.entries,
                &update.removed,
            )
        } else {
            let mut all = update.entries;
            all.sort_by(|a, b| a.id.cmp(&b.id));
            all
        };
        self.revision = Some(page.revision);
        self.synced = true;
        self.stream_synced = true;
        self.metrics.entries.set(self.entries.len() as i64);
        let live: std::collections::HashSet<&String> = self.entries.iter().map(|e| &e.id).collect();
        self.svids.retain(|id, _| live.contains(id));
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
            entries: self.entries.clone(),
            svids,
        };
        self.metrics.svids_held.set(snapshot.svids.len() as i64);
        let complete = self
            .entries
            .iter()
            .all(|e| snapshot.svids.iter().any(|s| s.entry_id == e.id));
        self.metrics.ready.store(
            self.synced && complete,
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

    /// Runs until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let may_try = self
                .retry_at
                .is_none_or(|t| tokio::time::Instant::now() >= t);
            if may_try {
                if let Err(reason) = self.step().await {
                    self.fail(reason);
                }
            }
            self.publish(unix_seconds(SystemTime::now()));
            let expired = !self.agent.is_valid_at(SystemTime::now());
            if expired && !self.expiry_reported {
                tracing::error!(agent_id = %self.agent.id, not_after = self.agent.not_after, "agent SVID expired before it could be renewed; the CA will not take it again: restart the agent with a new --join-token");
            }
            self.expiry_reported = expired;

            // Sleep until the next due time, a retry, an entry change, or stop.
            let now_ms = now_ms();
            let mut wake = now_ms + 3_600_000;
            wake = wake.min(self.renew_at_ms(self.agent.issued_at, self.agent.not_after));
            if let (_, Some(next)) = self.due_entries(now_ms) {
                wake = wake.min(next);
            }
            if let Some(exp) = self.svids.values().map(|s| s.not_after).min() {
                wake = wake.min(exp * 1000);
            }
            let mut deadline =
                tokio::time::Instant::now() + Duration::from_millis((wake - now_ms).max(0) as u64);
            if let Some(r) = self.retry_at {
                deadline = r.min(deadline).max(tokio::time::Instant::now());
            }
            let deadline = deadline.max(tokio::time::Instant::now() + Duration::from_millis(50));
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                ev = recv_sync(&mut self.sync) => match ev {
                    Some(SyncEvent::Page(p)) => self.apply_page(p),
                    Some(SyncEvent::Ended(reason)) => self.fail(reason),
                    None => self.fail("entry stream closed".into()),
                },
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            }
        }
    }

    /// One pass: connect, renew the agent SVID, issue what is due.
    async fn step(&mut self) -> Result<(), String> {
        if self.client.is_none() {
            self.connect().await?;
            // The first update follows right away; take it before signing.
            let deadline =
                tokio::time::Instant::now() + FIRST_UPDATE_WAIT.min(self.call_deadline());
            while !self.stream_synced {
                let Some(rx) = self.sync.as_mut() else {
                    return Err("entry stream closed".into());
                };
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(SyncEvent::Page(p))) => self.apply_page(p),
                    Ok(Some(SyncEvent::Ended(r))) => return Err(r),
                    Ok(None) | Err(_) => return Err("no entry update from the CA".into()),
                }
            }
        }
        if now_ms() >= self.renew_at_ms(self.agent.issued_at, self.agent.not_after)
            || self.agent_svid_tainted()
        {
            self.renew_agent().await?;
            return Box::pin(self.step()).await;
        }
        let (due, _) = self.due_entries(now_ms());
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

async fn forward_sync(
    mut stream: tonic::Streaming<pb::EntrySnapshot>,
    tx: mpsc::Sender<SyncEvent>,
) {
    loop {
        let ev = match stream.message().await {
            Ok(Some(p)) => SyncEvent::Page(p),
            Ok(None) => SyncEvent::Ended("the CA closed the entry stream".into()),
            Err(s) => SyncEvent::Ended(format!(
                "entry stream: {}: {}",
                code_name(s.code()),
                s.message()
            )),
        };
        let end = matches!(ev, SyncEvent::Ended(_));
        if tx.send(ev).await.is_err() || end {
            return;
        }
    }
}

/// Runs one node API call for at most `deadline`.
async fn within<T>(
    deadline: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{what}: {}: {}", code_name(s.code()), s.message())),
        Err(_) => Err(format!("{what}: no answer within {deadline:?}")),
    }
}

/// How long to wait before the next try after a failure: the backoff with
/// ±20% jitter, but never more than a quarter of the time left before the
/// first SVID expires (at least `MIN_BACKOFF / 2`), so an outage that ends
/// in time does not leave workloads with expired SVIDs while the agent
/// sleeps.
fn retry_wait(backoff: Duration, jitter: f64, first_expiry_in: Duration) -> Duration {
    backoff
        .mul_f64(0.8 + 0.4 * jitter)
        .min(first_expiry_in / 4)
        .max(MIN_BACKOFF / 2)
}

/// `entries` (sorted by ID) with `changed` put in and `removed` taken out,
/// still sorted.
fn merge(
    entries: Vec<pb::WorkloadEntry>,
    changed: Vec<pb::WorkloadEntry>,
    removed: &[String],
) -> Vec<pb::WorkloadEntry> {
    let mut by_id: std::collections::BTreeMap<String, pb::WorkloadEntry> =
        entries.into_iter().map(|e| (e.id.clone(), e)).collect();
    for id in removed {
        by_id.remove(id);
    }
    for e in changed {
        by_id.insert(e.id.clone(), e);
    }
    by_id.into_values().collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_sooner_as_the_first_svid_nears_expiry() {
        let long = Duration::from_secs(3600);
        // Far from expiry: the backoff, with its jitter.
        assert_eq!(retry_wait(MAX_BACKOFF, 0.5, long), MAX_BACKOFF);
        assert_eq!(
            retry_wait(Duration::from_secs(10), 0.0, long),
            Duration::from_secs(8)
        );
        // 8 s left: at most 2 s, whatever the backoff.
        assert_eq!(
            retry_wait(MAX_BACKOFF, 1.0, Duration::from_secs(8)),
            Duration::from_secs(2)
        );
        // Expired or about to: the floor, not a busy loop.
        assert_eq!(
            retry_wait(MAX_BACKOFF, 1.0, Duration::ZERO),
            MIN_BACKOFF / 2
        );
    }

    #[test]
    fn a_delta_replaces_changed_entries_and_drops_removed_ones_in_id_order() {
        let e = |id: &str, rev: i64| pb::WorkloadEntry {
            id: id.into(),
            revision: rev,
            ..Default::default()
        };
        let merged = merge(
            vec![e("a", 1), e("b", 1), e("c", 1)],
            vec![e("d", 5), e("b", 4)],
            &["c".to_owned(), "unknown".to_owned()],
        );
        assert_eq!(merged, vec![e("a", 1), e("b", 4), e("d", 5)]);
    }
}
