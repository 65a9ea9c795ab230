//! What the pools' unit tests share: an SVID's signing key as rustls holds
//! it, and an HTTP/2 server on the far end of an in-memory pipe (standing
//! in for a TLS connection to an upstream proxy).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use signet_identity::testing::{LeafSpec, TestCa};

/// A fresh SVID for `id` from `ca`, as the key a pooled connection is made
/// with.
pub(crate) fn certified_key(ca: &TestCa, id: &str) -> Arc<CertifiedKey> {
    let (chain, key) = ca.leaf(&LeafSpec::valid(id));
    let signing = signet_identity::tls::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    Arc::new(CertifiedKey::new(chain, signing))
}

/// The client end of a pipe whose other end is an HTTP/2 server accepting
/// (and ignoring) streams.
pub(crate) fn h2_pipe() -> tokio::io::DuplexStream {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Ok(mut server) = h2::server::handshake(server_io).await {
            while server.accept().await.is_some() {}
        }
    });
    client_io
}
