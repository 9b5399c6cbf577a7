//! A destination's `when:` CEL expression, compiled from fuzz input (`RawPolicy::compile`), then
//! evaluated for a fixed request. Compiling never panics and a bad expression is a config error at
//! `policy.when`; a compiled one allows, is false, or errors, and an error refuses.
#![no_main]

use std::collections::HashMap;

use baton_decide::policy::{Facts, RawPolicy};
use baton_decide::reason::Reason;
use baton_decide::request::Headers;
use baton_decide::settings::Errors;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let raw = RawPolicy {
        when: Some(source.to_owned()),
        ..Default::default()
    };
    let mut errors = Errors::default();
    let policy = raw.compile("policy", true, &mut errors);
    if !errors.0.is_empty() {
        assert!(errors.0.iter().all(|e| e.path == "policy.when"), "{:?}", errors.0);
        return;
    }
    let Value::Object(claims) = json!({
        "iss": "http://baton-sts.fuzz", "sub": "alice", "aud": ["frontend"], "exp": 2_000_000_000,
        "tenant": "acme", "groups": ["buyers", "admins"], "scope": "orders.read orders.write",
        "act": {"sub": "svc-frontend"}, "age": 42, "ratio": 0.5, "admin": true, "none": null
    }) else {
        unreachable!()
    };
    let headers: HashMap<String, String> = [("user-agent", "curl/8"), ("content-type", "application/json")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    for claims in [Some(&claims), None, Some(&Map::new())] {
        let facts = Facts {
            claims,
            source: Some("spiffe://cluster.local/ns/shop/sa/frontend"),
            method: "GET",
            path: "/orders/1?x=y",
            headers: Headers::Folded(&headers),
            destination: "orders",
        };
        if let Err(denial) = policy.check(&facts) {
            assert!(
                matches!(
                    denial.reason,
                    Reason::PolicyExpressionFalse | Reason::PolicyExpressionError
                ),
                "{denial}"
            );
        }
    }
});
