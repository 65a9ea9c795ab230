//! The accept loop both sides share: accept, apply the listener's
//! admission limits before anything else, hand each admitted connection to
//! its own task, stop on shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use signet_identity::admission::{Admission, Ticket};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// A connection's place under its listener's limits.
pub(crate) type ConnTicket = Ticket<IpAddr>;

/// Accepts on `listener` until `stop`, admitting each connection under
/// `admission` and running `handle` for it on its own task.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    direction: &'static str,
    admission: Arc<Admission<IpAddr>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, ConnTicket) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, addr) = tokio::select! {
            // Once stopped, accept nothing more, even if a connection waits.
            biased;
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: back off, don't spin.
                    tracing::warn!(direction, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match admission.admit(addr.ip()) {
            Ok(ticket) => {
                tokio::spawn(handle(tcp, addr, ticket));
            }
            Err(refused) => {
                metrics.refused(direction, refused.reason());
                tracing::debug!(direction, client = %addr, reason = refused.reason(), "connection refused at accept");
            }
        }
    }
}
