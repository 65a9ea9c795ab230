//! Whether the inbound listener's app answers. The endpoint is registered
//! only while it does: a connection to the app that is refused withdraws
//! the endpoint at once (callers stop sending new connections within
//! milliseconds, TCP ones included, which cannot otherwise tell a dead app
//! from a closed connection), and a probe every [`PROBE_INTERVAL`] brings it
//! back when the app listens again. The app is assumed to answer at start
//! (no probe connection reaches an app that works: apps see only their
//! callers); a sidecar that starts before its app withdraws at the first
//! refused connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

/// How often an unreachable app is tried again.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The app's reachability.
pub(crate) struct AppHealth {
    forward_to: String,
    up: watch::Sender<bool>,
}

impl AppHealth {
    /// Assumed up until a connection to the app fails.
    pub(crate) fn start(forward_to: &str) -> Arc<Self> {
        Arc::new(Self {
            forward_to: forward_to.to_owned(),
            up: watch::channel(true).0,
        })
    }

    /// A receiver of whether the app answers.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// A connection to the app succeeded.
    pub(crate) fn reached(&self) {
        // Called for every connection and request: the common case (already
        // up) takes only the read lock.
        if *self.up.borrow() {
            return;
        }
        if self.up.send_if_modified(|up| !std::mem::replace(up, true)) {
            tracing::info!(forward_to = %self.forward_to, "the app answers: endpoint registered again");
        }
    }

    /// A connection to the app was refused or failed.
    pub(crate) fn unreachable(self: &Arc<Self>) {
        if self.up.send_if_modified(|up| std::mem::replace(up, false)) {
            tracing::warn!(forward_to = %self.forward_to, "the app does not answer: endpoint withdrawn until it does");
            self.clone().spawn_probe();
        }
    }

    fn spawn_probe(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                if TcpStream::connect(&self.forward_to).await.is_ok() {
                    self.reached();
                    return;
                }
                // Somebody else saw it answer meanwhile.
                if *self.up.borrow() {
                    return;
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn withdrawn_on_a_refusal_until_a_probe_finds_the_app_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let health = AppHealth::start(&addr);
        let mut up = health.subscribe();
        assert!(*up.borrow_and_update(), "assumed up at start");
        // A refused connection: down, and the probe finds nothing yet.
        health.unreachable();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!*up.borrow_and_update(), "nothing listens yet");
        let app = tokio::net::TcpListener::bind(&addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(3), up.wait_for(|u| *u))
            .await
            .unwrap()
            .unwrap();
        health.unreachable();
        assert!(!*up.borrow_and_update());
        // The app still listens: the probe brings it back.
        tokio::time::timeout(Duration::from_secs(3), up.wait_for(|u| *u))
            .await
            .unwrap()
            .unwrap();
        drop(app);
    }
}
