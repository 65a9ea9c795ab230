//! SPIFFE IDs and trust domain names from any bytes: parse, and anything
//! accepted must print back to itself and stay within the spec's limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signet_identity::{SpiffeId, TrustDomain, MAX_SPIFFE_ID_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert!(id.as_str().len() <= MAX_SPIFFE_ID_LEN);
        let again = SpiffeId::parse(id.as_str()).expect("a parsed ID parses again");
        assert_eq!(again, id);
        assert!(TrustDomain::new(id.trust_domain_name()).is_ok());
    }
    let _ = TrustDomain::new(s);
});
