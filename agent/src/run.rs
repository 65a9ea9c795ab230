//! `signet agent run`: obtain or load the agent's identity, start the SVID
//! rotator and the Workload API, log one ready line, stop on request.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_identity::admission::{Admission, Admitted};
use signet_identity::tls::BundleHandle;
use signet_identity::{TrustBundle, TrustDomain};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::config::WorkloadApiLimits;

use crate::agent_identity::{self, AgentSvid, IdentityError};
use crate::config::{AgentConfig, ConfigError, NodeAttestationMethod};
use crate::node_attestation::{self, ExchangeError, NodeAttestor};
use crate::node_client::{self, ConnectError, ServerTrust};
use crate::rotator::node_api::{CaLinks, GrpcNodeApi};
use crate::rotator::SvidRotator;
use crate::workload_api::WorkloadApi;
use crate::workload_svids::Snapshot;
use signet_identity::clock::Clock;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Identity files or attestation material.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The CA could not be reached for attestation.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The CA refused attestation.
    #[error("attestation refused by the CA: {0}")]
    Attestation(String),
    /// A required setting is missing.
    #[error("{0}")]
    Missing(String),
    /// Socket or listener problem.
    #[error("{0}")]
    Io(String),
}

/// First wait after a failed attestation; doubled per failure up to
/// [`ATTEST_MAX_BACKOFF`], each wait drawn between half and one and a half
/// times it, so a rack of agents refused together does not come back
/// together.
const ATTEST_MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attestation attempts.
const ATTEST_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before attestation attempt `failures + 1`, with `jitter` in
/// [0, 1).
fn attest_backoff(failures: u32, jitter: f64) -> Duration {
    let base = ATTEST_MIN_BACKOFF
        .saturating_mul(1u32 << failures.min(16))
        .min(ATTEST_MAX_BACKOFF);
    base.mul_f64(0.5 + jitter)
}

/// Whether a refused attestation may succeed later unchanged: the CA was
/// unreachable, busy or shed the connection at a limit (the join token is
/// then still unused). A refusal of the token or the request is final.
fn attestation_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable | ResourceExhausted | DeadlineExceeded | Aborted | Cancelled | Unknown
    )
}

/// One attestation attempt's failure: worth another try, or final.
enum AttestFailure {
    /// The CA was unreachable or refused for now; the reason.
    Retry(String),
    /// The token, the request or the local setup is wrong.
    Final(AgentError),
}

impl From<AgentError> for AttestFailure {
    fn from(e: AgentError) -> Self {
        AttestFailure::Final(e)
    }
}

/// Attests with the join token (first start, or the stored SVID expired),
/// trying again with backoff and jitter while the CA is unreachable or
/// sheds the attempt at a limit, as every later call does. `None`: `stop`
/// came first.
async fn attest_until_done(
    config: &AgentConfig,
    td: &TrustDomain,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<(AgentSvid, TrustBundle)>, AgentError> {
    let mut failures = 0u32;
    loop {
        let reason = match attest(config, td).await {
            Ok(done) => return Ok(Some(done)),
            Err(AttestFailure::Final(e)) => return Err(e),
            Err(AttestFailure::Retry(reason)) => reason,
        };
        let wait = attest_backoff(failures, rand::random::<f64>());
        failures = failures.saturating_add(1);
        tracing::warn!(ca = ?config.ca, attempt = failures, reason = %reason, retry_in_ms = wait.as_millis() as u64, "attestation failed for now (a join token is still unused); trying again");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut *stop => return Ok(None),
        }
    }
}

/// One attestation attempt by the configured method.
async fn attest(
    config: &AgentConfig,
    td: &TrustDomain,
) -> Result<(AgentSvid, TrustBundle), AttestFailure> {
    let attestor = NodeAttestor::from_config(config)?;
    let trust = if config.insecure_bootstrap {
        tracing::warn!("INSECURE BOOTSTRAP: trusting whatever answers at the CA address for first contact; never use this outside development");
        ServerTrust::InsecureBootstrap
    } else {
        let path = config.trust_bundle.as_deref().ok_or_else(|| {
            AgentError::Missing("pass --trust-bundle (the CA's bundle, `signet bundle show`) or --insecure-bootstrap for development".into())
        })?;
        let text = signet_identity::files::read_input_file(path)
            .map_err(|e| AgentError::Io(format!("trust bundle {}: {e}", path.display())))?;
        let bundle = TrustBundle::from_pem(td.clone(), &text)
            .map_err(|e| AgentError::Io(format!("trust bundle {}: {e}", path.display())))?;
        ServerTrust::Bundle(BundleHandle::new(bundle))
    };
    let mut client = match node_client::connect(&config.ca, td, &trust, None).await {
        Ok(c) => c,
        Err(e @ ConnectError::Connect { .. }) => return Err(AttestFailure::Retry(e.to_string())),
        Err(e) => return Err(AgentError::Connect(e).into()),
    };
    let (key, csr) = agent_identity::new_key_and_csr().map_err(AgentError::from)?;
    let resp = match node_attestation::attest(&mut client, &attestor, csr).await {
        Ok(r) => r,
        Err(ExchangeError::Status(s)) if attestation_retryable(s.code()) => {
            return Err(AttestFailure::Retry(format!(
                "{:?}: {}",
                s.code(),
                s.message()
            )))
        }
        Err(ExchangeError::Status(s)) => {
            return Err(AgentError::Attestation(s.message().to_owned()).into())
        }
        Err(ExchangeError::Local(e)) => return Err(e.into()),
    };
    let (svid, bundle) = agent_identity::from_response(&resp, &key, std::time::SystemTime::now())
        .map_err(AgentError::from)?;
    if svid.id.trust_domain_name() != td.as_str() {
        return Err(AgentError::Attestation(format!(
            "the CA issued {} outside trust domain {td}",
            svid.id
        ))
        .into());
    }
    agent_identity::save(&config.data_dir, &svid, &bundle).map_err(AgentError::from)?;
    tracing::info!(agent_id = %svid.id, method = attestor.method(), "node attested");
    Ok((svid, bundle))
}

/// Binds the Workload API socket: directory 0755, socket 0777.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, AgentError> {
    let err =
        |e: std::io::Error| AgentError::Io(format!("Workload API socket {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AgentError::Io(format!(
                "{} is in use by a running agent",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(err)?;
    Ok(listener)
}

/// The Workload API's connections, each admitted by its caller's uid (from
/// the kernel's peer credentials) under `limits`: one user's flood of idle
/// connections cannot starve another user's workloads.
fn admitted_by_uid(
    listener: tokio::net::UnixListener,
    limits: &WorkloadApiLimits,
    metrics: Arc<crate::metrics::Metrics>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Admitted<tokio::net::UnixStream, u32>>> {
    let admission = Admission::new(limits.max_connections, limits.max_connections_per_uid);
    UnixListenerStream::new(listener).filter_map(move |conn| {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(_) => return None,
        };
        match admission.admit(uid) {
            Ok(ticket) => Some(Ok(Admitted::new(stream, ticket))),
            Err(refused) => {
                metrics.workload_refused(refused.reason());
                tracing::debug!(
                    uid,
                    reason = refused.reason(),
                    "Workload API connection refused"
                );
                None
            }
        }
    })
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let td = config.validate()?;
    let shutdown = shutdown;
    tokio::pin!(shutdown);
    // gRPC clients built on grpc-core (Python, C++, Java, ...) send the
    // socket path as :authority on a Unix socket; this process's only
    // HTTP/2 server is the Workload API on one (vendor/h2/PATCH.md).
    h2::server::accept_any_authority(true);
    let fd_limit = signet_identity::admission::raise_fd_limit();
    tracing::debug!(fd_limit, "open-file limit");
    agent_identity::prepare_data_dir(&config.data_dir)?;
    let (svid, bundle) = match agent_identity::load(&config.data_dir, &td)? {
        Some((svid, bundle)) if svid.is_valid_at(SystemTime::now()) => {
            tracing::info!(agent_id = %svid.id, not_after = svid.not_after, "using the stored agent SVID");
            (svid, bundle)
        }
        stored => {
            if let Some((svid, _)) = stored {
                tracing::warn!(agent_id = %svid.id, method = config.node_attestation.as_str(), "the stored agent SVID has expired; attesting again");
            }
            match attest_until_done(&config, &td, &mut shutdown).await? {
                Some(attested) => attested,
                None => {
                    tracing::info!("stopped before attesting");
                    return Ok(());
                }
            }
        }
    };
    let agent_id = svid.id.clone();
    let metrics = crate::metrics::Metrics::new();
    let (state_tx, state_rx) = watch::channel(Arc::new(Snapshot::empty()));
    let (ca_link_tx, ca_link_rx) = watch::channel(None);
    let (mesh_link_tx, mesh_link_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = bind_socket(&config.socket)?;
    let metrics_listener = tokio::net::TcpListener::bind(&config.metrics_listen)
        .await
        .map_err(|e| AgentError::Io(format!("metrics_listen {}: {e}", config.metrics_listen)))?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|e| AgentError::Io(e.to_string()))?;

    // A node attested by proof attests again by itself if its SVID is
    // ever lost; a join token is spent once.
    let reattestor = match config.node_attestation {
        NodeAttestationMethod::JoinToken => None,
        _ => Some(Arc::new(NodeAttestor::from_config(&config)?)),
    };
    let node_api = GrpcNodeApi::new(
        config.ca.clone(),
        td.clone(),
        CaLinks {
            ca: ca_link_tx,
            mesh: mesh_link_tx,
        },
        reattestor,
    );
    let rotator = SvidRotator::new(
        config.clone(),
        svid,
        bundle,
        state_tx,
        node_api,
        metrics.clone(),
        Clock::system(),
    );
    let rotator = tokio::spawn(rotator.run(stop_rx.clone()));
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let limits = config.limits.clone();
    let incoming = admitted_by_uid(listener, &limits, metrics.clone());
    let workload_api = WorkloadApi::new(state_rx, ca_link_rx.clone(), metrics.clone(), &limits);
    let local_endpoints = crate::local_endpoints::LocalEndpoints::new();
    let publisher = tokio::spawn(crate::endpoint_publisher::run(
        local_endpoints.clone(),
        mesh_link_rx.clone(),
        stop_rx.clone(),
    ));
    let watches = crate::endpoint_watches::EndpointWatches::new(
        mesh_link_rx,
        limits.max_watched_identities,
        limits.max_watched_identities_per_uid,
    );
    let api = tonic::transport::Server::builder()
        .max_concurrent_streams(32)
        .http2_max_header_list_size(16 * 1024)
        .add_service(WorkloadApi::server(workload_api.clone()).max_decoding_message_size(64 * 1024))
        .add_service(
            crate::mesh_api::MeshApi::server(workload_api, local_endpoints, watches)
                .max_decoding_message_size(64 * 1024),
        )
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let api = tokio::spawn(api);
    let health = tokio::spawn(crate::metrics::serve(
        metrics_listener,
        metrics,
        stopped(stop_rx.clone()),
    ));

    tracing::info!(
        agent_id = %agent_id,
        trust_domain = %td,
        ca = %config.ca.join(","),
        socket = %config.socket.display(),
        metrics = %metrics_addr,
        "signet agent ready"
    );
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let _ = api.await;
        let _ = rotator.await;
        let _ = publisher.await;
        let _ = health.await;
    })
    .await;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("signet agent stopped");
    Ok(())
}

#[cfg(test)]
mod attestation_tests {
    use super::*;

    #[test]
    fn attestation_backs_off_exponentially_with_jitter_up_to_a_cap() {
        assert_eq!(attest_backoff(0, 0.5), ATTEST_MIN_BACKOFF);
        assert_eq!(attest_backoff(1, 0.5), ATTEST_MIN_BACKOFF * 2);
        assert_eq!(attest_backoff(0, 0.0), ATTEST_MIN_BACKOFF / 2);
        assert!(attest_backoff(0, 0.999) < ATTEST_MIN_BACKOFF * 3 / 2);
        // Capped, however many failures.
        assert_eq!(attest_backoff(6, 0.5), ATTEST_MAX_BACKOFF);
        assert_eq!(attest_backoff(u32::MAX, 0.5), ATTEST_MAX_BACKOFF);
        assert!(attest_backoff(u32::MAX, 0.999) < ATTEST_MAX_BACKOFF * 3 / 2);
    }

    #[test]
    fn only_a_ca_that_is_unreachable_or_busy_is_tried_again() {
        use tonic::Code;
        for c in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Aborted,
        ] {
            assert!(attestation_retryable(c), "{c:?}");
        }
        for c in [
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::AlreadyExists,
        ] {
            assert!(!attestation_retryable(c), "{c:?}");
        }
    }
}
