//! Node API requests off the wire (any TLS client can send AttestAgent):
//! decode each message type, and run the CSR checks the CA applies to
//! what decodes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use signet_proto::node as pb;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pb::AttestAgentRequest::decode(data) {
        let _ = signet_ca::registry::join_token::hash(&r.join_token);
        let _ = signet_ca::check_csr(&r.csr);
    }
    if let Ok(r) = pb::RenewAgentRequest::decode(data) {
        let _ = signet_ca::check_csr(&r.csr);
    }
    if let Ok(r) = pb::SignSvidsRequest::decode(data) {
        for s in r.requests.iter().take(4) {
            let _ = signet_ca::check_csr(&s.csr);
        }
    }
    let _ = pb::SyncEntriesRequest::decode(data);
});
