//! `signet ca serve`: opens the CA, binds its endpoints, logs one ready line,
//! and shuts down gracefully when told to.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::api::admin::{bind_socket, peer_allowed, AdminService};
use crate::config::CaConfig;
use crate::store::redact_url;
use crate::{Ca, CaError, KeyKind};

/// How long in-flight requests get to finish after shutdown is requested.
const DRAIN: Duration = Duration::from_secs(10);

/// Largest request from a client without an SVID: an AttestAgent (token
/// and CSR) is well under 4 KiB.
const UNAUTHENTICATED_MAX_REQUEST: usize = 16 * 1024;

/// Largest admin API request (an entry is well under 64 KiB).
const ADMIN_MAX_REQUEST: usize = 1024 * 1024;

/// Open admin socket connections (each CLI call is one).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Descriptors kept out of every listener's reach: the database pool, key
/// files, the listeners themselves, logs.
const DESCRIPTOR_RESERVE: u64 = 256;

/// The node API's limits once every listener's cap fits in the open-file
/// limit with [`DESCRIPTOR_RESERVE`] to spare: one listener's flood then
/// never takes the descriptors another needs (the admin socket, the node
/// API). The node API's cap gives way first (with a warning); a limit too
/// low for even that stops the CA with the fix in the message.
fn descriptor_budget(
    config: &CaConfig,
    fd_limit: u64,
) -> Result<crate::config::NodeApiLimits, CaError> {
    let mut limits = config.limits.clone();
    let others = config.oidc.as_ref().map_or(0, |o| o.max_connections) as u64
        + crate::api::health::MAX_CONNECTIONS as u64
        + ADMIN_MAX_CONNECTIONS as u64
        + DESCRIPTOR_RESERVE;
    let node_room = fd_limit.saturating_sub(others);
    if (limits.max_connections as u64) <= node_room {
        return Ok(limits);
    }
    const MIN_NODE_CONNECTIONS: u64 = 64;
    if node_room < MIN_NODE_CONNECTIONS {
        return Err(CaError::InvalidArgument(format!(
            "the open-file limit ({fd_limit}) leaves no room for the node API beside the other listeners' caps and {DESCRIPTOR_RESERVE} reserved descriptors: raise it (ulimit -n, LimitNOFILE=) to at least {}, or lower [oidc] max_connections",
            others + limits.max_connections.min(10_000) as u64
        )));
    }
    tracing::warn!(
        fd_limit,
        configured = limits.max_connections,
        max_connections = node_room,
        "[limits] max_connections lowered to fit the open-file limit beside the other listeners; raise the limit (LimitNOFILE=) to serve more agents"
    );
    limits.max_connections = node_room as usize;
    Ok(limits)
}

/// Runs the CA until `shutdown` completes. Errors before the ready line mean
/// the CA did not start (bad config, database, key, port in use).
pub async fn run(
    config: CaConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CaError> {
    let admin_path = config.admin_socket_path();
    let metrics_listen = config.metrics_listen.clone();
    let database = redact_url(&config.database_url());
    let ca = Ca::open(config).await?;
    // Endpoints published through this replica before it stopped: their
    // streams are gone; withdrawn after the grace period unless
    // re-published.
    ca.withdraw_orphaned_endpoints().await?;
    let fd_limit = signet_identity::admission::raise_fd_limit();
    tracing::debug!(fd_limit, "open-file limit");
    let limits = descriptor_budget(ca.config(), fd_limit)?;

    let io = |what: &str, e: std::io::Error| CaError::InvalidArgument(format!("{what}: {e}"));
    let admin_listener = bind_socket(&admin_path)
        .await
        .map_err(|e| io(&format!("admin socket {}", admin_path.display()), e))?;
    let own_uid = std::fs::metadata(&admin_path)
        .map_err(|e| io("admin socket", e))?
        .uid();
    let metrics_listener = tokio::net::TcpListener::bind(&metrics_listen)
        .await
        .map_err(|e| io(&format!("metrics_listen {metrics_listen}"), e))?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|e| io("metrics_listen", e))?;
    let node_listen = ca.config().listen.clone();
    let node_listener = tokio::net::TcpListener::bind(&node_listen)
        .await
        .map_err(|e| io(&format!("listen {node_listen}"), e))?;
    let node_addr = node_listener.local_addr().map_err(|e| io("listen", e))?;
    let oidc = match &ca.config().oidc {
        None => None,
        Some(oidc) => {
            let tls = crate::api::oidc::tls_config(oidc)?;
            let listener = tokio::net::TcpListener::bind(&oidc.listen)
                .await
                .map_err(|e| io(&format!("[oidc] listen {}", oidc.listen), e))?;
            let addr = listener.local_addr().map_err(|e| io("[oidc] listen", e))?;
            Some((listener, tls, addr, oidc.clone()))
        }
    };
    let bundle = signet_identity::tls::BundleHandle::new(ca.bundle().await?);
    let (tls_config, resolver, server_svid_lifetime) =
        crate::api::node_tls::server_config(&ca, bundle.clone())?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let admin_admission = signet_identity::admission::Admission::<()>::new(
        ADMIN_MAX_CONNECTIONS,
        ADMIN_MAX_CONNECTIONS,
    );
    let admin_ca = ca.clone();
    let incoming = UnixListenerStream::new(admin_listener).filter_map(move |conn| match conn {
        Ok(stream) if !peer_allowed(&stream, own_uid) => {
            tracing::warn!("admin connection refused: peer is neither root nor the CA's user");
            None
        }
        Ok(stream) => match admin_admission.admit(()) {
            Ok(ticket) => Some(Ok(signet_identity::admission::Admitted::new(
                stream, ticket,
            ))),
            Err(refused) => {
                admin_ca
                    .metrics()
                    .listener_refused("admin", refused.reason());
                tracing::warn!(
                    limit = refused.reason(),
                    max = ADMIN_MAX_CONNECTIONS,
                    "admin connection refused: too many open"
                );
                None
            }
        },
        Err(e) => Some(Err(e)),
    });
    let admin = tonic::transport::Server::builder()
        .add_service(AdminService::server(ca.clone()).max_decoding_message_size(ADMIN_MAX_REQUEST))
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let health = crate::api::health::serve(metrics_listener, ca.clone(), stopped(stop_rx.clone()));
    let throttle = Arc::new(crate::api::attest_throttle::AttestThrottle::new(
        limits.attestation_failures_per_minute,
    ));
    let incoming = crate::api::node_tls::accept_tls(
        node_listener,
        tls_config,
        &limits,
        ca.clone(),
        stop_rx.clone(),
    );
    // Agents (authenticated by their SVID in the handshake).
    let node = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .http2_max_pending_accept_reset_streams(Some(32))
        .add_service(
            crate::api::node::NodeService::server(ca.clone(), throttle.clone())
                .max_decoding_message_size(limits.max_request_bytes),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(incoming.agents),
            stopped(stop_rx.clone()),
        );
    // Clients without an SVID can only attest: small messages, few
    // streams, a short life.
    let attest = tonic::transport::Server::builder()
        .max_concurrent_streams(2)
        .http2_max_header_list_size(8 * 1024)
        .max_connection_age(Duration::from_secs(limits.unauthenticated_lifetime))
        .max_connection_age_grace(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .add_service(
            crate::api::node::NodeService::server(ca.clone(), throttle)
                .max_decoding_message_size(UNAUTHENTICATED_MAX_REQUEST),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(incoming.unauthenticated),
            stopped(stop_rx.clone()),
        );
    let node = tokio::spawn(async move {
        let _ = tokio::join!(node, attest);
    });
    let rotator = tokio::spawn(crate::api::node_tls::rotate_server_svid(
        ca.clone(),
        resolver,
        server_svid_lifetime,
        stop_rx.clone(),
    ));
    let admin = tokio::spawn(admin);
    let health = tokio::spawn(health);
    let pruner = tokio::spawn(prune_tokens(ca.clone(), stop_rx.clone()));
    let jwt_rotation = tokio::spawn(rotate_keys(ca.clone(), KeyKind::Jwt, stop_rx.clone()));
    let x509_rotation = tokio::spawn(rotate_keys(ca.clone(), KeyKind::X509, stop_rx.clone()));
    let feed = tokio::spawn(crate::registry::change_feed::run(
        ca.clone(),
        stop_rx.clone(),
    ));
    let client_trust = tokio::spawn(follow_bundle(ca.clone(), bundle, stop_rx.clone()));
    let oidc_addr = oidc.as_ref().map(|o| o.2.to_string()).unwrap_or_default();
    let oidc = oidc.map(|(listener, tls, _, config)| {
        tokio::spawn(crate::api::oidc::serve(
            listener,
            tls,
            ca.clone(),
            config,
            stopped(stop_rx.clone()),
        ))
    });

    tracing::info!(
        trust_domain = %ca.trust_domain,
        node_api = %node_addr,
        admin_socket = %admin_path.display(),
        metrics = %metrics_addr,
        database = %database,
        signing_key = %ca.authority().id,
        jwt_key = %ca.jwt_signer().kid,
        oidc = %oidc_addr,
        "signet CA ready"
    );

    shutdown.await;
    tracing::info!("shutting down: draining requests");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        let _ = admin.await;
        let _ = node.await;
        let _ = rotator.await;
        let _ = health.await;
        let _ = pruner.await;
        let _ = jwt_rotation.await;
        let _ = x509_rotation.await;
        let _ = feed.await;
        let _ = client_trust.await;
        if let Some(oidc) = oidc {
            let _ = oidc.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still running after {DRAIN:?}; stopping anyway");
    }
    let _ = std::fs::remove_file(&admin_path);
    ca.close().await;
    tracing::info!("signet CA stopped");
    Ok(())
}

/// Moves rotation of one kind of key forward on its schedule.
async fn rotate_keys(ca: Arc<Ca>, kind: KeyKind, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(ca.rotation_interval(kind));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = ca.rotate_keys(kind).await {
                    tracing::error!(error = %e, ?kind, "signing key rotation failed; retrying");
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Keeps the bundle agents' client certificates are verified against equal
/// to the published one: an agent renewed by a newly activated key, or by
/// another replica, must be let in.
async fn follow_bundle(
    ca: Arc<Ca>,
    handle: signet_identity::tls::BundleHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut bundles = ca.subscribe_bundle();
    loop {
        let current = bundles.borrow_and_update().bundle.clone();
        if *handle.get() != current {
            handle.set(current);
        }
        tokio::select! {
            r = bundles.changed() => if r.is_err() { return },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Deletes expired join tokens every minute.
async fn prune_tokens(ca: Arc<Ca>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = signet_identity::x509_svid::unix_seconds(std::time::SystemTime::now());
                match ca.prune_join_tokens(now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(count = n, "pruned expired join tokens"),
                    Err(e) => tracing::warn!(error = %e, "pruning join tokens failed"),
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_listeners_cap_fits_in_the_open_file_limit_with_a_reserve() {
        let mut config = CaConfig::default();
        let others = (crate::api::health::MAX_CONNECTIONS + ADMIN_MAX_CONNECTIONS) as u64
            + DESCRIPTOR_RESERVE;
        // Room for all: unchanged, at the limit and far below it.
        config.limits.max_connections = 1000;
        assert_eq!(
            descriptor_budget(&config, others + 1000)
                .unwrap()
                .max_connections,
            1000
        );
        assert_eq!(
            descriptor_budget(&config, 1 << 20).unwrap().max_connections,
            1000
        );
        // One descriptor short: the node API gives way, the others keep theirs.
        assert_eq!(
            descriptor_budget(&config, others + 999)
                .unwrap()
                .max_connections,
            999
        );
        // The OIDC listener's cap counts too.
        config.oidc = Some(
            toml::from_str("listen = \"x\"\nissuer = \"https://o.example\"\nmax_connections = 500")
                .unwrap(),
        );
        assert_eq!(
            descriptor_budget(&config, others + 1000)
                .unwrap()
                .max_connections,
            500
        );
        // No room worth having: refused, with the fix.
        let e = descriptor_budget(&config, others + 500 + 63)
            .unwrap_err()
            .to_string();
        assert!(e.contains("LimitNOFILE"), "{e}");
        assert!(descriptor_budget(&config, others + 500 + 64).is_ok());
    }
}
