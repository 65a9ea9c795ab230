//! # signet-proto
//!
//! Generated gRPC code for Signet's APIs. The `.proto` files under `proto/`
//! are the contract; this crate only compiles them (with protox, no system
//! `protoc`).
//!
//! - [`admin`]: the CA's local administration API (`signet.admin.v1`);
//! - [`mesh`]: endpoint registration and discovery (`signet.mesh.v1`);
//! - [`node`]: the CA's API for agents, over mTLS (`signet.node.v1`);
//! - [`workload`]: the standard SPIFFE Workload API agents serve to workloads.
#![allow(missing_docs)]

/// The generated packages, nested as protobuf names them (so references
/// between packages resolve); used through the short names below.
pub mod signet {
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("signet.admin.v1");
        }
    }
    pub mod mesh {
        pub mod v1 {
            tonic::include_proto!("signet.mesh.v1");

            /// The protocols an endpoint may name.
            pub const PROTOCOLS: [&str; 2] = ["tcp", "http"];

            /// Most endpoints one agent may publish: a node runs a bounded
            /// number of sidecars, and one update must stay a small message.
            pub const MAX_ENDPOINTS_PER_AGENT: usize = 256;
        }
    }
    pub mod node {
        pub mod v1 {
            tonic::include_proto!("signet.node.v1");

            /// Most CSRs one `SignSvids` call may carry: the CA refuses
            /// more, and agents split larger sets of due entries into calls
            /// of this size.
            pub const MAX_SIGN_BATCH: usize = 1000;

            /// Most entries (and, apart, most removed entry IDs) one
            /// `SyncEntries` message carries: a larger update is split into
            /// pages, so no message grows with the number of entries (an
            /// entry is well under 2 KiB, a page well under gRPC's 4 MiB
            /// default).
            pub const SYNC_PAGE_SIZE: usize = 500;
        }
    }
}

/// The CA's administration API, spoken over its admin Unix socket.
pub use signet::admin::v1 as admin;
/// The mesh API: sidecars register endpoints and watch identities' endpoints
/// through their agent.
pub use signet::mesh::v1 as mesh;
/// The CA's API for node agents.
pub use signet::node::v1 as node;

/// The SPIFFE Workload API (no protobuf package, as in the public spec).
pub mod workload {
    tonic::include_proto!("_");
}
