//! The canonical authority (`canonical::authority`) and host patterns: never a panic; what it
//! accepts is canonical already (idempotent through its text form), lower-case, without a trailing
//! dot, with a port 1-65535 written without leading zeros; and Baton's matching of it against a
//! fixed set of patterns is the same for the raw and the canonical text.
#![no_main]

use std::sync::OnceLock;

use baton_decide::canonical::{authority, host_pattern};
use baton_decide::route::Routes;
use libfuzzer_sys::fuzz_target;

fn routes() -> &'static Routes<&'static str> {
    static ROUTES: OnceLock<Routes<&'static str>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        Routes::new([
            (
                "orders".to_owned(),
                vec!["orders.local".to_owned(), "orders".to_owned()],
                "orders",
            ),
            ("admin".to_owned(), vec!["orders.local:8443".to_owned()], "admin"),
            (
                "wild".to_owned(),
                vec!["*.svc.local".to_owned(), "[::1]:80".to_owned()],
                "wild",
            ),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pattern) = host_pattern(raw) {
        assert_eq!(host_pattern(&pattern.to_string()), Ok(pattern.clone()), "{raw:?}");
    }
    let Ok(canonical) = authority(raw) else {
        return;
    };
    let text = canonical.to_string();
    assert_eq!(authority(&text), Ok(canonical.clone()), "not idempotent: {raw:?}");
    assert_eq!(text, text.to_ascii_lowercase(), "{raw:?}");
    assert!(
        !canonical.host().is_empty() && !canonical.host().ends_with('.'),
        "{raw:?} -> {text:?}"
    );
    if let Some(port) = canonical.port() {
        assert!(port >= 1, "{raw:?}");
        assert!(text.ends_with(&format!(":{port}")), "{raw:?} -> {text:?}");
    }
    let again = authority(&text).expect("canonical");
    assert_eq!(
        routes().by_authority(&canonical).map(|v| **v),
        routes().by_authority(&again).map(|v| **v),
        "{raw:?}"
    );
});
