//! JWT-SVIDs as a validator receives them (`ValidateJWTSVID`, `signet jwt
//! inspect`): decode and check every rule. Nothing may panic, and nothing
//! the fuzzer makes may validate unless it carries a real signature of the
//! one authority (whose private key the fuzzer does not have; the seeds
//! hold tokens it signed, so mutations of valid tokens are explored).
#![no_main]
use std::sync::OnceLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use signet_identity::jwt_svid::{
    check_jwt_svid, decode_jwt, validate_jwt_svid, JwtAlgorithm, JwtAuthority, JwtSigningKey,
};
use signet_identity::TrustDomain;

fn authorities() -> &'static (TrustDomain, Vec<JwtAuthority>) {
    static KEYS: OnceLock<(TrustDomain, Vec<JwtAuthority>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = JwtSigningKey::from_pkcs8(JwtAlgorithm::Es256, include_bytes!("jwt_svid_key.pk8"))
            .expect("the fuzz key");
        let authority =
            JwtAuthority::from_spki_der("fuzz", &key.public_spki_der()).expect("its authority");
        (TrustDomain::new("example.org").expect("td"), vec![authority])
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = authorities();
    if let Ok(decoded) = decode_jwt(token) {
        let _ = check_jwt_svid(&decoded, keys, None, SystemTime::now());
    }
    if let Ok(valid) = validate_jwt_svid(token, keys, "fuzz", SystemTime::now()) {
        let header = decode_jwt(token).expect("a valid token decodes").header;
        assert_eq!(header["alg"], "ES256", "validated with another alg");
        assert_eq!(header["kid"], "fuzz");
        assert_eq!(valid.spiffe_id.trust_domain_name(), "example.org");
    }
});
