//! SPIFFE bundles in JWKS form (federation, `--bundle` files): parse, and
//! whatever parses must write out and parse back to the same authorities,
//! X.509 and JWT.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signet_identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(td) = TrustDomain::new("example.org") else {
        return;
    };
    if let Ok(b) = TrustBundle::from_jwks(td.clone(), text) {
        let json = b.to_jwks().expect("a parsed bundle serializes");
        let again = TrustBundle::from_jwks(td, &json).expect("and parses back");
        assert_eq!(again.authorities(), b.authorities());
        assert_eq!(again.jwt_authorities(), b.jwt_authorities());
    }
});
