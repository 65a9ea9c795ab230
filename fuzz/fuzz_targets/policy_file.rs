//! Policy files (a user's repository, reloaded live): parse any text, and
//! whatever loads must compile and evaluate without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signet_identity::SpiffeId;
use signet_proxy::policy::{cases, parse_file, CompiledPolicy, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = parse_file(std::path::Path::new("fuzz.toml"), text) else {
        return;
    };
    let compiled = CompiledPolicy::for_destination(&policy, None);
    let (Ok(from), Ok(to)) = (
        SpiffeId::parse("spiffe://example.org/a"),
        SpiffeId::parse("spiffe://example.org/b"),
    ) else {
        return;
    };
    let _ = compiled.evaluate(&Request {
        from: &from,
        to: &to,
        method: Some("GET"),
        path: Some("/x"),
    });
    let _ = compiled.may_allow(&from, &to);
    let _ = cases::run(&policy);
});
