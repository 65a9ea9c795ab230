//! What the CA knows about the fleet, apart from its keys: registration
//! entries (validated before they are stored), join tokens, the change
//! feed that keeps replicas in step, and the mesh's endpoints.
//!
//! ```text
//!   entry (validation) ──▶ store ──▶ change_feed (every replica follows) ──▶ entry_cache (by parent, in memory)
//!   join_token (minting, hashing)
//!   endpoint_publish (what a node may publish) ──▶ store ──▶ endpoint_registry (watchers, from memory)
//! ```

pub mod change_feed;
pub mod endpoint_publish;
pub mod endpoint_registry;
pub mod entry;
pub mod entry_cache;
pub mod join_token;
