//! The standard SPIFFE Workload API on a Unix socket, open to every local
//! user: who gets what is decided by attesting each caller, not by file
//! modes. Every request must carry the `workload.spiffe.io: true` header.
//! `FetchX509SVID`, `FetchX509Bundles` and `FetchJWTBundles` stream a new
//! message whenever the caller's SVIDs or the bundle change.
//! `FetchJWTSVID` has the CA sign (the agent holds no JWT key) and serves
//! from [`JwtSvidCache`]; `ValidateJWTSVID` checks every JWT-SVID rule
//! against the bundle and names each one broken.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use signet_identity::jwt_svid::{audience_problem, validate_jwt_svid};
use signet_identity::selector::Selector;
use signet_identity::{SpiffeId, TrustBundle};
use signet_proto::node::node_client::NodeClient;
use signet_proto::workload as pb;
use signet_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::transport::server::UdsConnectInfo;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use signet_identity::admission::{Admission, Ticket};

use crate::config::WorkloadApiLimits;
use crate::jwt_svids::{CachedJwt, JwtSvidCache};
use crate::metrics::Metrics;
use crate::workload_attestor::{PeerCred, WorkloadAttestor};
use crate::workload_entry::WorkloadEntry;
use crate::workload_svids::Snapshot;

pub(crate) use signet_identity::workload_api::SECURITY_HEADER;

/// The Workload API service.
pub(crate) struct WorkloadApi {
    state: watch::Receiver<Arc<Snapshot>>,
    attestor: Arc<WorkloadAttestor>,
    /// Bounds the attestations (and so binary hashes) running at once on
    /// the blocking pool.
    attesting: Arc<tokio::sync::Semaphore>,
    streams: Arc<Admission<u32>>,
    /// The rotator's connection to the CA, to have JWT-SVIDs signed.
    ca_link: watch::Receiver<Option<NodeClient<Channel>>>,
    jwt_cache: Arc<JwtSvidCache>,
    metrics: Arc<Metrics>,
}

/// A caller attested: its uid and selectors.
pub(crate) struct Caller {
    pub(crate) uid: u32,
    pub(crate) selectors: Vec<Selector>,
}

impl WorkloadApi {
    /// The service over the rotator's published snapshots (shared with the
    /// mesh API, which attests its callers the same way).
    pub(crate) fn new(
        state: watch::Receiver<Arc<Snapshot>>,
        ca_link: watch::Receiver<Option<NodeClient<Channel>>>,
        metrics: Arc<Metrics>,
        limits: &WorkloadApiLimits,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            attestor: Arc::new(WorkloadAttestor::new(limits.max_binary_hash_bytes)),
            attesting: Arc::new(tokio::sync::Semaphore::new(
                limits.concurrent_binary_hashes.max(1),
            )),
            streams: Admission::new(usize::MAX, limits.max_streams_per_uid),
            ca_link,
            jwt_cache: Arc::new(JwtSvidCache::new(
                limits.jwt_cache_entries,
                limits.jwt_cache_entries_per_identity,
            )),
            metrics,
        })
    }

    /// The tonic server of `api`.
    pub(crate) fn server(api: Arc<Self>) -> SpiffeWorkloadApiServer<Self> {
        SpiffeWorkloadApiServer::from_arc(api)
    }

    /// The snapshot callers are served from.
    pub(crate) fn state(&self) -> &watch::Receiver<Arc<Snapshot>> {
        &self.state
    }

    /// Checks the header and attests the caller: its selectors.
    pub(crate) async fn admit<T>(&self, req: &Request<T>, method: &str) -> Result<Caller, Status> {
        let result = self.admit_inner(req).await;
        self.metrics
            .workload_call(method, result.as_ref().err().map(|s| s.code()));
        result
    }

    /// A place for one more open stream of `uid`, or RESOURCE_EXHAUSTED.
    pub(crate) fn stream_slot(&self, uid: u32) -> Result<Ticket<u32>, Status> {
        self.streams.admit(uid).map_err(|_| {
            self.metrics.workload_refused("max_streams_per_uid");
            Status::resource_exhausted(
                "too many open Workload API streams for this user; close some first",
            )
        })
    }

    async fn admit_inner<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        match req
            .metadata()
            .get(SECURITY_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some("true") => {}
            _ => {
                return Err(Status::invalid_argument(
                    "security header missing from request",
                ))
            }
        }
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .and_then(|c| {
                Some(PeerCred {
                    pid: c.pid()?,
                    uid: c.uid(),
                    gid: c.gid(),
                })
            })
            .ok_or_else(|| Status::unauthenticated("caller credentials unavailable"))?;
        let needs_sha = self.state.borrow().needs_sha256();
        let attested = if needs_sha {
            // Hashing a binary may read a gigabyte: on the blocking pool, a
            // bounded number at a time, never on the runtime.
            let permit = self
                .attesting
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Status::unavailable("the agent is shutting down"))?;
            let attestor = self.attestor.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                attestor.attest(cred, true)
            })
            .await
            .map_err(|_| Status::internal("workload attestation did not complete"))?
        } else {
            // Without a hash it is a few small reads of /proc and a stat of
            // /etc/passwd and /etc/group (tens of microseconds, served from
            // memory): cheaper in place than a hand-off to another thread.
            self.attestor.attest(cred, false)
        };
        let selectors = attested.map_err(|e| {
            tracing::info!(pid = cred.pid, uid = cred.uid, error = %e, "workload attestation failed");
            Status::permission_denied(format!("workload attestation failed: {e}"))
        })?;
        Ok(Caller {
            uid: cred.uid,
            selectors,
        })
    }
}

/// The X509SVIDResponse for a caller, `None` while it has matching entries
/// whose SVIDs are not issued yet, `Err` when nothing matches.
fn svid_response(
    snapshot: &Snapshot,
    caller: &[Selector],
) -> Result<Option<pb::X509svidResponse>, Status> {
    let matching: Vec<&WorkloadEntry> = snapshot.matching_entries(caller).collect();
    if matching.is_empty() {
        return Err(no_identity());
    }
    let Some(bundle) = &snapshot.bundle else {
        return Ok(None);
    };
    let bundle_der = bundle.to_concatenated_der();
    let mut hints = OnePerHint::default();
    let svids: Vec<pb::X509svid> = snapshot
        .svids
        .iter()
        .filter_map(|s| {
            let entry = matching.iter().find(|e| e.id == s.entry_id)?;
            if !hints.admits(&entry.hint) {
                return None;
            }
            Some(pb::X509svid {
                spiffe_id: s.spiffe_id.clone(),
                x509_svid: s.chain.iter().flat_map(|c| c.iter().copied()).collect(),
                x509_svid_key: s.key_pkcs8.clone(),
                bundle: bundle_der.clone(),
                hint: entry.hint.clone(),
            })
        })
        .collect();
    if svids.is_empty() {
        return Ok(None);
    }
    Ok(Some(pb::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: Default::default(),
    }))
}

/// Each SVID (X.509 or JWT) carries its entry's hint; of several with the
/// same non-empty hint only the first is sent, as SPIRE does, so a hint
/// names one SVID.
#[derive(Default)]
struct OnePerHint<'a>(std::collections::HashSet<&'a str>);

impl<'a> OnePerHint<'a> {
    /// Whether an SVID with `hint` may still be sent.
    fn admits(&mut self, hint: &'a str) -> bool {
        hint.is_empty() || self.0.insert(hint)
    }
}

/// The status of a caller with no identity here (never had one, or its
/// last entry was deleted while its stream was open).
fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// The bundles a caller may have, keyed by trust domain ID, each in the
/// form `encode` writes; `None` before the first bundle, `Err` once the
/// caller has no entry left, so its stream ends instead of going on serving
/// bundles to a workload this agent no longer has an identity for.
fn bundles_for(
    snapshot: &Snapshot,
    caller: &[Selector],
    encode: impl Fn(&TrustBundle) -> Vec<u8>,
) -> Result<Option<HashMap<String, Vec<u8>>>, Status> {
    if snapshot.matching_entries(caller).next().is_none() {
        return Err(no_identity());
    }
    Ok(snapshot
        .bundle
        .as_ref()
        .map(|bundle| HashMap::from([(bundle.trust_domain().id().to_string(), encode(bundle))])))
}

/// The X509BundlesResponse for a caller (concatenated DER per trust domain).
fn x509_bundles_for(
    snapshot: &Snapshot,
    caller: &[Selector],
) -> Result<Option<pb::X509BundlesResponse>, Status> {
    let bundles = bundles_for(snapshot, caller, TrustBundle::to_concatenated_der)?;
    Ok(bundles.map(|bundles| pb::X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    }))
}

/// The JWTBundlesResponse for a caller (a JWKS of JWT authorities per
/// trust domain).
fn jwt_bundles_for(
    snapshot: &Snapshot,
    caller: &[Selector],
) -> Result<Option<pb::JwtBundlesResponse>, Status> {
    let bundles = bundles_for(snapshot, caller, |b| b.jwt_jwks().into_bytes())?;
    Ok(bundles.map(|bundles| pb::JwtBundlesResponse { bundles }))
}

/// Streams `make(snapshot)` whenever it changes, until the client goes away
/// or `make` returns an error (sent as the final status). No task per
/// stream: the response body polls it, and dropping it (the client left)
/// releases the caller's stream slot.
fn watch_stream<T, F>(
    state: watch::Receiver<Arc<Snapshot>>,
    slot: Ticket<u32>,
    make: F,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(&Snapshot) -> Result<Option<T>, Status> + Send + 'static,
{
    struct Watch<T, F> {
        state: watch::Receiver<Arc<Snapshot>>,
        make: F,
        last: Option<T>,
        first: bool,
        ended: bool,
        // The caller's stream slot, held until the stream is dropped.
        _slot: Ticket<u32>,
    }
    let start = Watch {
        state,
        make,
        last: None,
        first: true,
        ended: false,
        _slot: slot,
    };
    Box::pin(futures_util::stream::unfold(start, |mut w| async move {
        if w.ended {
            return None;
        }
        loop {
            if !w.first && w.state.changed().await.is_err() {
                return None;
            }
            w.first = false;
            let current = w.state.borrow_and_update().clone();
            match (w.make)(&current) {
                Ok(Some(msg)) if w.last.as_ref() != Some(&msg) => {
                    w.last = Some(msg.clone());
                    return Some((Ok(msg), w));
                }
                Ok(_) => {}
                Err(status) => {
                    w.ended = true;
                    return Some((Err(status), w));
                }
            }
        }
    }))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = BoxStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.admit(&req, "FetchX509SVID").await?;
        // Refuse at once (no stream) when nothing matches.
        svid_response(&self.state.borrow(), &caller.selectors)?;
        let slot = self.stream_slot(caller.uid)?;
        let selectors = caller.selectors;
        Ok(Response::new(watch_stream(
            self.state.clone(),
            slot,
            move |s| svid_response(s, &selectors),
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.admit(&req, "FetchX509Bundles").await?;
        // Bundles go to workloads this agent has an identity for, as SPIRE does.
        x509_bundles_for(&self.state.borrow(), &caller.selectors)?;
        let slot = self.stream_slot(caller.uid)?;
        let selectors = caller.selectors;
        Ok(Response::new(watch_stream(
            self.state.clone(),
            slot,
            move |s| x509_bundles_for(s, &selectors),
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let caller = self.admit(&req, "FetchJWTSVID").await?;
        let r = req.into_inner();
        if let Some(problem) = audience_problem(&r.audience) {
            return Err(Status::invalid_argument(problem));
        }
        let wanted = match r.spiffe_id.as_str() {
            "" => None,
            id => Some(
                SpiffeId::parse(id)
                    .map_err(|e| Status::invalid_argument(format!("spiffe_id {id:?}: {e}")))?,
            ),
        };
        let snapshot = self.state.borrow().clone();
        let entries = jwt_entries(&snapshot, &caller.selectors, wanted.as_ref())?;
        let now = std::time::SystemTime::now();
        let mut svids = Vec::with_capacity(entries.len());
        for entry in entries {
            let token = self
                .jwt_cache
                .get_or_mint(
                    entry.spiffe_id.as_str(),
                    &r.audience,
                    now,
                    |t| snapshot.jwt_signer_trusted(&t.kid),
                    || self.mint(&entry, &r.audience),
                )
                .await?;
            svids.push(pb::Jwtsvid {
                spiffe_id: entry.spiffe_id.to_string(),
                svid: token.token,
                hint: entry.hint.clone(),
            });
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.admit(&req, "FetchJWTBundles").await?;
        // As for X.509 bundles: to workloads this agent has an identity for.
        jwt_bundles_for(&self.state.borrow(), &caller.selectors)?;
        let slot = self.stream_slot(caller.uid)?;
        let selectors = caller.selectors;
        Ok(Response::new(watch_stream(
            self.state.clone(),
            slot,
            move |s| jwt_bundles_for(s, &selectors),
        )))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        // Any attested local process may validate: it learns nothing a
        // bundle does not already say.
        self.admit(&req, "ValidateJWTSVID").await?;
        let r = req.into_inner();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let Some(bundle) = self.state.borrow().bundle.clone() else {
            return Err(Status::unavailable("the agent has no trust bundle yet"));
        };
        match validate_jwt_svid(&r.svid, &*bundle, &r.audience, std::time::SystemTime::now()) {
            Ok(valid) => Ok(Response::new(pb::ValidateJwtsvidResponse {
                spiffe_id: valid.spiffe_id.to_string(),
                claims: Some(json_to_struct(valid.claims)),
            })),
            Err(problems) => Err(Status::invalid_argument(format!(
                "invalid JWT-SVID: {}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
        }
    }
}

impl WorkloadApi {
    /// Has the CA sign a JWT-SVID for `entry` (on a cache miss).
    async fn mint(&self, entry: &WorkloadEntry, audience: &[String]) -> Result<CachedJwt, Status> {
        let Some(mut client) = self.ca_link.borrow().clone() else {
            return Err(Status::unavailable(
                "the CA is unreachable and no cached JWT-SVID for this audience is fresh; retry later",
            ));
        };
        let minted = client
            .mint_jwt_svid(signet_proto::node::MintJwtSvidRequest {
                entry_id: entry.id.clone(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(|s| {
                let code = match s.code() {
                    tonic::Code::PermissionDenied | tonic::Code::NotFound => {
                        tonic::Code::PermissionDenied
                    }
                    tonic::Code::InvalidArgument => tonic::Code::InvalidArgument,
                    _ => tonic::Code::Unavailable,
                };
                Status::new(code, format!("the CA did not sign: {}", s.message()))
            })?
            .into_inner();
        self.metrics.jwt_svids_minted.inc();
        let kid = signet_identity::jwt_svid::decode_jwt(&minted.token)
            .ok()
            .and_then(|d| {
                d.header
                    .get("kid")
                    .and_then(|k| k.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Ok(CachedJwt {
            token: minted.token,
            issued_at: minted.issued_at,
            expires_at: minted.expires_at,
            kid,
        })
    }
}

/// The entries a caller gets JWT-SVIDs for: one per SPIFFE ID (and, as for
/// X.509-SVIDs, one per non-empty hint), only `wanted` when given.
fn jwt_entries(
    snapshot: &Snapshot,
    caller: &[Selector],
    wanted: Option<&SpiffeId>,
) -> Result<Vec<WorkloadEntry>, Status> {
    let mut ids = std::collections::HashSet::new();
    let mut hints = OnePerHint::default();
    let mut any = false;
    let mut chosen = Vec::new();
    for entry in snapshot.matching_entries(caller) {
        any = true;
        if wanted.is_some_and(|w| *w != entry.spiffe_id) {
            continue;
        }
        if !ids.insert(entry.spiffe_id.as_str()) {
            continue;
        }
        if !hints.admits(&entry.hint) {
            continue;
        }
        chosen.push(entry.clone());
    }
    if !any {
        return Err(no_identity());
    }
    if chosen.is_empty() {
        return Err(Status::permission_denied(format!(
            "this workload is not entitled to {}",
            wanted.map(|w| w.as_str()).unwrap_or_default()
        )));
    }
    Ok(chosen)
}

/// JSON claims as the protobuf `Struct` the Workload API returns.
fn json_to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
