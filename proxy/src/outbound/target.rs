//! What an outbound listener's two modes share: the upstream, how its
//! endpoints are dialed, our TLS configurations and the tunnel pool.

use std::sync::Arc;

use signet_identity::tls::BundleHandle;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::tls::OutboundTls;
use crate::upstream::connector::Connector;
use crate::upstream::Upstream;

/// Where an outbound listener sends its app's connections, and how: what
/// TCP mode and HTTP mode share.
pub(crate) struct Target {
    /// rustls client configurations (verify the expected server ID), one
    /// per SVID with its own tickets.
    pub tls: Arc<OutboundTls>,
    /// The peer sidecars: their endpoints and the balancer over them.
    pub upstream: Arc<Upstream>,
    /// How an endpoint is reached: TCP, TLS, the server's ID checked.
    pub connector: Arc<Connector>,
    /// The ID pattern the upstream must present (for logs).
    pub server_id: String,
    /// Timeouts and caps.
    pub limits: LimitsConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// When app connections ride the tunnel.
    pub tunnel_mode: TunnelMode,
    /// The tunnel connections (TCP mode, unless `tunnel = false`).
    pub tunnel: Option<Arc<crate::tunnel::pool::TunnelPool>>,
}

/// When an outbound listener's connections ride the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelMode {
    /// For endpoints with a tunnel port.
    Auto,
    /// Never (`tunnel = false`).
    Never,
    /// Always (`tunnel = true`): an endpoint without one fails.
    Always,
}

impl Target {
    /// One attempt on `address` with the listener's own TLS configuration.
    pub(crate) async fn connect(
        &self,
        address: &str,
        bundle: &BundleHandle,
    ) -> Result<(TlsStream<TcpStream>, String), (&'static str, String)> {
        self.connector.connect(&self.tls, address, bundle).await
    }
}
