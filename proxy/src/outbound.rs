//! Outbound: plaintext from the local app, mTLS to the peer's sidecar with
//! our SVID; the upstream must present the expected SPIFFE ID.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::forward::{ms_since, relay};
use crate::inbound::{failure_reason, refusal_reason};
use crate::metrics::Metrics;
use crate::workload_identity::IdentityWatch;
use signet_identity::tls::{established_peer, Authorizer};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One outbound listener.
pub struct Outbound {
    /// rustls client configuration (verifies the expected server ID).
    pub tls: tokio_rustls::TlsConnector,
    /// The peer sidecar.
    pub upstream: String,
    /// The ID pattern the upstream must present (for logs).
    pub server_id: String,
    /// The check of `server_id`, applied again to resumed sessions.
    pub authorize: Authorizer,
    /// Our identity, for the bundle resumed sessions are checked against.
    pub identity: IdentityWatch,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Outbound {
    /// Accepts until `stop`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbound accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let this = self.clone();
            tokio::spawn(async move { this.handle(tcp).await });
        }
    }

    async fn handle(&self, mut local: TcpStream) {
        let start = Instant::now();
        let _ = local.set_nodelay(true);
        let connect = async {
            let tcp = TcpStream::connect(&self.upstream).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("signet-peer").map_err(std::io::Error::other)?;
            self.tls.connect(name, tcp).await
        };
        let mut tls = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let reason = failure_reason(&e);
                self.metrics.handshake_failed("outbound", reason);
                tracing::warn!(direction = "outbound", upstream = %self.upstream, expected = %self.server_id, reason, error = %e, "upstream refused");
                return;
            }
            Err(_) => {
                self.metrics.handshake_failed("outbound", "timeout");
                return;
            }
        };
        // A resumed session is checked again: the upstream's SVID in the
        // ticket may have expired or lost its authority since.
        let Some(bundle) = self.identity.borrow().as_ref().map(|i| i.bundle.clone()) else {
            return;
        };
        let peer = match established_peer(
            tls.get_ref().1,
            &bundle,
            &self.authorize,
            SystemTime::now(),
        ) {
            Ok(peer) => peer.to_string(),
            Err(e) => {
                let reason = refusal_reason(&e);
                self.metrics.handshake_failed("outbound", reason);
                tracing::warn!(direction = "outbound", upstream = %self.upstream, expected = %self.server_id, reason, error = %e, "resumed session refused");
                return;
            }
        };
        let (to_peer, from_peer, err) = relay(
            &self.metrics,
            "outbound",
            &peer,
            &mut tls,
            &mut local,
            std::future::pending(),
        )
        .await;
        tracing::info!(
            direction = "outbound",
            peer = %peer,
            upstream = %self.upstream,
            bytes_in = from_peer,
            bytes_out = to_peer,
            duration_ms = ms_since(start),
            error = err.map(|e| e.to_string()).unwrap_or_default(),
            "connection"
        );
    }
}
