//! How an outbound listener reaches one endpoint: a TCP connect and a TLS
//! handshake, each within its timeout, and the server's SPIFFE ID checked
//! (again, for a resumed session). Both pools (the tunnel's and HTTP
//! mode's) and plain TCP mode dial through one [`Connector`].

use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use signet_identity::tls::{established_peer, Authorizer, BundleHandle};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::refusal::{failure_reason, refusal_reason};
use crate::tls::OutboundTls;
use crate::workload_identity::IdentityWatch;

/// The dialing settings of one outbound listener.
pub(crate) struct Connector {
    /// How long a TCP connect to one endpoint may take.
    pub connect_timeout: Duration,
    /// How long the TLS handshake with one endpoint may take.
    pub handshake_timeout: Duration,
    /// The TLS server name sent.
    pub sni: ServerName<'static>,
    /// The check of the listener's `server_id`, applied again to resumed
    /// sessions.
    pub authorize: Authorizer,
    /// Our identity, for the bundle resumed sessions are checked against.
    pub identity: IdentityWatch,
}

impl Connector {
    /// One attempt on `address` with `tls`: TCP connect and TLS handshake,
    /// each within its timeout, and the peer checked (again, for a resumed
    /// session). On failure: the metric reason and the error.
    pub(crate) async fn connect(
        &self,
        configs: &OutboundTls,
        address: &str,
        bundle: &BundleHandle,
    ) -> Result<(TlsStream<TcpStream>, String), (&'static str, String)> {
        // At most two tries: a resumed session whose ticket predates the
        // upstream's current SVID is refused below; the tickets are then
        // flushed and the second try is a full handshake.
        let mut stale_tickets = false;
        loop {
            let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Err(("connect", e.to_string())),
                Err(_) => {
                    return Err((
                        "connect_timeout",
                        format!("no connection within {:?}", self.connect_timeout),
                    ))
                }
            };
            let _ = tcp.set_nodelay(true);
            let connector = configs.connector().map_err(|e| ("tls_setup", e))?;
            let tls = match tokio::time::timeout(
                self.handshake_timeout,
                connector.connect(self.sni.clone(), tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Err((failure_reason(&e), e.to_string())),
                Err(_) => {
                    return Err((
                        "timeout",
                        format!("no TLS handshake within {:?}", self.handshake_timeout),
                    ))
                }
            };
            // A resumed session is checked again: the upstream's SVID in
            // the ticket may have expired or lost its authority since.
            match established_peer(tls.get_ref().1, bundle, &self.authorize, SystemTime::now()) {
                Ok(peer) => return Ok((tls, peer.to_string())),
                Err(e) if !stale_tickets => {
                    tracing::debug!(direction = "outbound", endpoint = %address, error = %e, "resumed session refused; flushing tickets, full handshake next");
                    configs.flush();
                    stale_tickets = true;
                }
                Err(e) => return Err((refusal_reason(&e), e.to_string())),
            }
        }
    }
}
