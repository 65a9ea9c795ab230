//! End-to-end tests that run alone, one at a time, as they did when each
//! was a test binary of its own: they measure loss and latency while they
//! kill processes (fault), play hosts in network namespaces (mesh_netns),
//! or drive the README's walkthrough and a Python gRPC stack end to end,
//! and a neighbour's load would blur what they measure.

mod fault;
mod grpc;
mod mesh_netns;
mod walkthrough;

/// Held for a whole test: the tests of this binary take turns.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}
