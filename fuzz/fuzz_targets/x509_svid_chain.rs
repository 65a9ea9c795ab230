//! A presented certificate chain (what a TLS peer sends: DER certificates
//! back to back, or one PEM file) through the X.509-SVID verifier and the
//! inspector behind `signet x509 inspect`, against a real bundle. Nothing
//! may panic, and an unrelated chain can never verify.
#![no_main]
use std::sync::OnceLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use signet_identity::{
    certificates_from_der_concat, certificates_from_pem, inspect_chain, verify_x509_svid,
    TrustBundle, TrustDomain,
};

fn bundle() -> &'static TrustBundle {
    static B: OnceLock<TrustBundle> = OnceLock::new();
    B.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("root");
        TrustBundle::new(
            TrustDomain::new("example.org").expect("td"),
            vec![cert.der().clone()],
        )
        .expect("bundle")
    })
}

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::now();
    if let Ok(chain) = certificates_from_der_concat(data) {
        let _ = inspect_chain(&chain, now);
        // The fuzzer cannot forge a signature of the bundle's fresh key.
        assert!(verify_x509_svid(&chain, bundle(), now).is_err());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(chain) = certificates_from_pem(text) {
            let _ = inspect_chain(&chain, now);
            assert!(verify_x509_svid(&chain, bundle(), now).is_err());
        }
    }
});
