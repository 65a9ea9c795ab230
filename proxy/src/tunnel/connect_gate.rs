//! One connection attempt per endpoint at a time. Pools (HTTP/2 to an
//! endpoint, tunnel connections) have callers that all find no connection
//! at once; each waits its turn here, and the first makes the connection
//! the others then find in the pool, instead of each making its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Gates by endpoint address.
#[derive(Default)]
pub(crate) struct ConnectGates {
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Gates kept before those nobody waits on are dropped (endpoints come and
/// go).
const KEPT: usize = 256;

impl ConnectGates {
    /// Waits for the turn to connect to `address`; the turn lasts while the
    /// guard is held. The caller looks in its pool again first: the caller
    /// before may have connected.
    pub(crate) async fn turn(&self, address: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            if gates.len() > KEPT {
                gates.retain(|_, g| Arc::strong_count(g) > 1);
            }
            gates.entry(address.to_owned()).or_default().clone()
        };
        gate.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_turn_per_address_at_a_time() {
        let gates = ConnectGates::default();
        let a = gates.turn("10.0.0.1:1").await;
        // Another address is not held up.
        let _b = gates.turn("10.0.0.2:1").await;
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            gates.turn("10.0.0.1:1"),
        )
        .await;
        assert!(waiting.is_err(), "the same address waits");
        drop(a);
        let _again = gates.turn("10.0.0.1:1").await;
    }
}
