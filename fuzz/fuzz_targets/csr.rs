//! CSRs as agents send them (AttestAgent, RenewAgent, SignSvids): the
//! check the CA runs before it spends a join token or signs anything.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = signet_ca::check_csr(data);
});
