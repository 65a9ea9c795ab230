//! # signet-proto
//!
//! Generated gRPC code for Signet's APIs. The `.proto` files under `proto/`
//! are the contract; this crate only compiles them (with protox, no system
//! `protoc`).
//!
//! - [`admin`]: the CA's local administration API (`signet.admin.v1`);
//! - [`node`]: the CA's API for agents, over mTLS (`signet.node.v1`);
//! - [`workload`]: the standard SPIFFE Workload API agents serve to workloads.
#![allow(missing_docs)]

/// The CA's administration API, spoken over its admin Unix socket.
pub mod admin {
    tonic::include_proto!("signet.admin.v1");
}

/// The CA's API for node agents.
pub mod node {
    tonic::include_proto!("signet.node.v1");

    /// Most CSRs one `SignSvids` call may carry: the CA refuses more, and
    /// agents split larger sets of due entries into calls of this size.
    pub const MAX_SIGN_BATCH: usize = 1000;

    /// Most entries (and, apart, most removed entry IDs) one `SyncEntries`
    /// message carries: a larger update is split into pages, so no message
    /// grows with the number of entries (an entry is well under 2 KiB, a
    /// page well under gRPC's 4 MiB default).
    pub const SYNC_PAGE_SIZE: usize = 500;
}

/// The SPIFFE Workload API (no protobuf package, as in the public spec).
pub mod workload {
    tonic::include_proto!("_");
}
