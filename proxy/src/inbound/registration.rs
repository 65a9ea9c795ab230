//! The inbound listener's endpoint, registered with the agent while the
//! proxy serves: one open `Register` call, re-made after a failure; ending
//! it (drain, crash) withdraws the endpoint at once.

use std::path::PathBuf;
use std::time::Duration;

use signet_identity::workload_api;
use signet_proto::mesh as pb;
use signet_proto::mesh::mesh_client::MeshClient;
use signet_proto::mesh::registration_state::State;
use tokio::sync::watch;

use crate::workload_identity::IdentityWatch;

/// What the inbound listener advertises (the SPIFFE ID is the proxy's own).
#[derive(Debug, Clone)]
pub(crate) struct Advertised {
    /// `host:port` or `:port`.
    pub address: String,
    /// `tcp` or `http`.
    pub protocol: String,
    /// Optional locality.
    pub zone: String,
    /// Relative share of traffic (0: the default).
    pub weight: u32,
    /// The tunnel listener's port (0: none).
    pub tunnel_port: u16,
}

/// Keeps the endpoint registered while the app answers (`app_up`), until
/// `stop`.
pub(crate) async fn keep_registered(
    socket: PathBuf,
    advertised: Advertised,
    mut identity: IdentityWatch,
    mut app_up: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut last_error: Option<String> = None;
    loop {
        if !*app_up.borrow_and_update() {
            tokio::select! {
                r = app_up.wait_for(|u| *u) => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        let id = identity
            .borrow_and_update()
            .as_ref()
            .map(|i| i.spiffe_id.to_string());
        let Some(id) = id else {
            tokio::select! {
                r = identity.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        };
        let endpoint = pb::Endpoint {
            spiffe_id: id,
            address: advertised.address.clone(),
            protocol: advertised.protocol.clone(),
            zone: advertised.zone.clone(),
            weight: advertised.weight,
            tunnel_port: u32::from(advertised.tunnel_port),
            ..Default::default()
        };
        let ended = tokio::select! {
            r = register_once(&socket, endpoint, &mut backoff) => r,
            // Dropping the call withdraws the endpoint.
            _ = app_up.wait_for(|u| !*u) => continue,
            _ = stop.wait_for(|s| *s) => {
                tracing::info!("endpoint registration withdrawn (draining)");
                return;
            }
        };
        if last_error.as_ref() != Some(&ended) {
            tracing::warn!(error = %ended, "endpoint registration interrupted; registering again");
            last_error = Some(ended);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One registration call; returns why it ended.
async fn register_once(
    socket: &std::path::Path,
    endpoint: pb::Endpoint,
    backoff: &mut Duration,
) -> String {
    let channel = match workload_api::connect(socket).await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect to the agent at {}: {e}", socket.display()),
    };
    let spiffe_id = endpoint.spiffe_id.clone();
    let mut client = MeshClient::new(channel);
    let req = workload_api::with_security_header(pb::RegisterRequest {
        endpoint: Some(endpoint),
    });
    let mut states = match client.register(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return format!("Register: {:?}: {}", s.code(), s.message()),
    };
    loop {
        match states.message().await {
            Ok(Some(s)) => {
                *backoff = Duration::from_millis(200);
                match State::try_from(s.state) {
                    Ok(State::Published) => {
                        tracing::info!(spiffe_id = %spiffe_id, address = %s.address, "endpoint published")
                    }
                    Ok(State::Refused) => {
                        tracing::warn!(spiffe_id = %spiffe_id, address = %s.address, reason = %s.reason, "endpoint refused by the CA")
                    }
                    _ => {
                        tracing::debug!(spiffe_id = %spiffe_id, "endpoint registered, not yet published")
                    }
                }
            }
            Ok(None) => return "the agent ended the registration".into(),
            Err(s) => return format!("Register: {:?}: {}", s.code(), s.message()),
        }
    }
}
