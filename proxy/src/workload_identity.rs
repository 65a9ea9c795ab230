//! The proxy's identity, from the agent: a Workload API stream kept open for
//! the life of the proxy. Every message replaces the SVID, key and bundle
//! that *new* handshakes use; established connections keep what they
//! handshook with. While the agent is unreachable the last identity stays in
//! use until it expires; after that, handshakes fail closed. When the agent
//! answers PERMISSION_DENIED (the entry is gone), the identity is dropped at
//! once: no handshakes, not ready.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use signet_identity::tls::{provider, BundleHandle};
use signet_identity::workload_api;
use signet_identity::x509_svid::unix_seconds;
use signet_identity::{SpiffeId, TrustBundle};
use signet_proto::workload as pb;
use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::sync::watch;

/// The proxy's current SVID.
pub struct Identity {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Chain and signing key, as rustls uses them.
    pub key: Arc<CertifiedKey>,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// The bundle handle every verifier reads (the same handle for the
    /// proxy's whole life; its contents are swapped).
    pub bundle: BundleHandle,
}

impl Identity {
    /// Whether the SVID is still valid.
    pub fn is_valid(&self) -> bool {
        unix_seconds(SystemTime::now()) < self.not_after
    }
}

/// Shared view of the current identity (`None` until the first SVID).
pub(crate) type IdentityWatch = watch::Receiver<Option<Arc<Identity>>>;

fn split_chain(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    signet_identity::certificates_from_der_concat(der).map_err(|e| e.to_string())
}

fn identity_from(
    msg: &pb::X509svidResponse,
    handle: &mut Option<BundleHandle>,
) -> Result<Arc<Identity>, String> {
    let svid = msg.svids.first().ok_or("the agent sent no SVID")?;
    let spiffe_id = SpiffeId::parse(&svid.spiffe_id).map_err(|e| e.to_string())?;
    let chain = split_chain(&svid.x509_svid)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(chain.first().ok_or("empty chain")?)
        .map_err(|e| e.to_string())?;
    let not_after = leaf.validity().not_after.timestamp();
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(svid.x509_svid_key.clone().into()))
        .map_err(|e| format!("SVID key: {e}"))?;
    let bundle = TrustBundle::new(spiffe_id.trust_domain(), split_chain(&svid.bundle)?)
        .map_err(|e| e.to_string())?;
    let bundle = match handle {
        Some(h) => {
            h.set(bundle);
            h.clone()
        }
        None => {
            let h = BundleHandle::new(bundle);
            *handle = Some(h.clone());
            h
        }
    };
    Ok(Arc::new(Identity {
        spiffe_id,
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
        not_after,
        bundle,
    }))
}

async fn stream_once(
    socket: &std::path::Path,
    tx: &watch::Sender<Option<Arc<Identity>>>,
    handle: &mut Option<BundleHandle>,
) -> Result<(), String> {
    let channel = workload_api::connect(socket).await.map_err(|e| {
        format!(
            "cannot connect to the Workload API at {}: {e}",
            socket.display()
        )
    })?;
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let req = workload_api::with_security_header(pb::X509svidRequest {});
    let refused = |s: tonic::Status| {
        // PERMISSION_DENIED is the agent's answer once this workload has no
        // identity (its entry was deleted): stop using the old SVID at
        // once, rather than serving it for the rest of its lifetime.
        if s.code() == tonic::Code::PermissionDenied && tx.send_replace(None).is_some() {
            tracing::warn!(message = %s.message(), "the agent withdrew this workload's identity; refusing new handshakes and not ready until it has one again");
        }
        format!("Workload API: {:?}: {}", s.code(), s.message())
    };
    let mut stream = client
        .fetch_x509svid(req)
        .await
        .map_err(refused)?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                let identity = identity_from(&msg, handle)?;
                let first = tx.borrow().is_none();
                tracing::info!(spiffe_id = %identity.spiffe_id, not_after = identity.not_after, first, "SVID received from the agent");
                tx.send_replace(Some(identity));
            }
            Ok(None) => return Err("the agent closed the Workload API stream".into()),
            Err(s) => return Err(refused(s)),
        }
    }
}

/// Follows the Workload API until `stop`; reconnects with backoff and logs
/// once per change of state.
pub(crate) fn spawn(socket: PathBuf, mut stop: watch::Receiver<bool>) -> IdentityWatch {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut handle = None;
        let mut backoff = Duration::from_millis(200);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                r = stream_once(&socket, &tx, &mut handle) => {
                    if let Err(e) = r {
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "no stream from the agent; keeping the last SVID until it expires, retrying");
                            last_error = Some(e);
                        }
                    }
                }
                _ = stop.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    rx
}

/// A fixed identity read from PEM files (no Workload API): for static
/// deployments and benchmarks. Not reloaded; it expires like any SVID.
pub(crate) fn from_files(
    svid: &std::path::Path,
    key: &std::path::Path,
    bundle: &std::path::Path,
) -> Result<IdentityWatch, String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let chain = signet_identity::certificates_from_pem(&read(svid)?)
        .map_err(|e| format!("{}: {e}", svid.display()))?;
    let key_pem = pem::parse_many(read(key)?)
        .map_err(|e| format!("{}: {e}", key.display()))?
        .into_iter()
        .find(|p| p.tag() == "PRIVATE KEY")
        .ok_or_else(|| format!("{}: no PKCS#8 \"PRIVATE KEY\" block (convert with `openssl pkcs8 -topk8 -nocrypt`)", key.display()))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| e.to_string())?;
    let spiffe_id = signet_identity::x509_svid::leaf_spiffe_id(&leaf)
        .map_err(|e| format!("{}: {e}", svid.display()))?;
    let not_after = leaf.validity().not_after.timestamp();
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key_pem.into_contents().into()))
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let bundle = TrustBundle::from_pem(spiffe_id.trust_domain(), &read(bundle)?)
        .map_err(|e| format!("{}: {e}", bundle.display()))?;
    let identity = Identity {
        spiffe_id,
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
        not_after,
        bundle: BundleHandle::new(bundle),
    };
    // The value never changes; readers only borrow it.
    let (_tx, rx) = watch::channel(Some(Arc::new(identity)));
    Ok(rx)
}
