//! # signet-proto
//!
//! Generated gRPC code for Signet's APIs. The `.proto` files under `proto/`
//! are the contract; this crate only compiles them (with protox, no system
//! `protoc`).
//!
//! - [`admin`]: the CA's local administration API (`signet.admin.v1`).
#![allow(missing_docs)]

/// The CA's administration API, spoken over its admin Unix socket.
pub mod admin {
    tonic::include_proto!("signet.admin.v1");
}
