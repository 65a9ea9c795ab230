//! Request paths and methods as peers send them in HTTP mode. The canonical
//! form must be a fixed point, start with '/', hold no dot segment, no
//! empty segment and no escaped slash: otherwise policy and the app could
//! still read one request two ways.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signet_proxy::policy::{canonical_method, canonical_path};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = canonical_path(raw) {
        assert!(c.starts_with('/'), "{raw:?} -> {c:?}");
        assert_eq!(canonical_path(&c).as_deref(), Ok(c.as_str()), "{raw:?}");
        let inner = c.strip_suffix('/').unwrap_or(&c);
        for seg in inner.split('/').skip(1) {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{raw:?} -> {c:?}"
            );
        }
        let lower = c.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !c.contains('\\'));
    }
    if let Ok(m) = canonical_method(raw) {
        assert_eq!(m, m.to_ascii_uppercase());
    }
});
