//! The canonical path (`canonical::path`): never a panic; what it accepts is canonical already
//! (idempotent), starts with `/`, has no dot segment, no empty segment but a trailing one, no
//! encoded `/`, `\` or control character, and only upper-case escapes.
#![no_main]

use baton_decide::canonical::{path, path_only};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical) = path(raw) else {
        return;
    };
    assert_eq!(
        path(&canonical).as_deref(),
        Ok(canonical.as_str()),
        "not idempotent: {raw:?}"
    );
    assert!(canonical.starts_with('/'), "{raw:?} -> {canonical:?}");
    assert_eq!(path_only(&canonical), canonical, "a query survived: {raw:?}");
    let segments: Vec<&str> = canonical[1..].split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(
            *s != "." && *s != "..",
            "a dot segment survived: {raw:?} -> {canonical:?}"
        );
        assert!(
            !s.is_empty() || i == segments.len() - 1,
            "an empty segment: {raw:?} -> {canonical:?}"
        );
    }
    let upper = canonical.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%00", "%2E", "\\"] {
        assert!(!upper.contains(bad), "{bad} survived: {raw:?} -> {canonical:?}");
    }
    assert!(
        canonical.bytes().all(|b| b.is_ascii_graphic()),
        "{raw:?} -> {canonical:?}"
    );
});
