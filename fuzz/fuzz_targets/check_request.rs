//! Header extraction from what Envoy sends: the bytes are a protobuf ext_authz `CheckRequest` (and,
//! read again, an ext_proc `ProcessingRequest`), decoded as the gRPC server decodes them (and as the
//! full envoy-types message). Whatever
//! the message, extraction never panics, refuses only with its own reasons, and every string it
//! returns is one the message carried.
#![no_main]

use std::collections::HashMap;

use baton_decide::reason::Reason;
use baton_decide::request::{Authorization, Headers, Outbound, subject_token};
use baton_decide::route::CONTEXT_KEY;
use baton_envoy::check_wire::WireCheckRequest;
use baton_envoy::extract::{Check, Processing};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    // The server decodes only the fields Baton reads (`check_wire`); it accepts all the full
    // decoding accepts, and extraction holds on both.
    if let Ok(request) = WireCheckRequest::decode(data) {
        check_authz(&CheckRequest::from(request));
    }
    if let Ok(request) = CheckRequest::decode(data) {
        assert!(
            WireCheckRequest::decode(data).is_ok(),
            "the wire decoding refused what the full decoding accepted"
        );
        check_authz(&request);
    }
    if let Ok(request) = ProcessingRequest::decode(data) {
        for route in [None, Some("orders"), Some("")] {
            match Processing::new(&request, route).outbound() {
                Ok(out) => {
                    assert_eq!(out.route_destination, route.filter(|r| !r.is_empty()));
                    check_outbound(&out, &[]);
                }
                Err(denial) => assert!(
                    matches!(denial.reason, Reason::CheckRequestMalformed | Reason::MalformedToken),
                    "{denial}"
                ),
            }
        }
    }
});

fn check_authz(request: &CheckRequest) {
    match Check::new(request).outbound() {
        Ok(out) => {
            let attributes = request.attributes.as_ref().expect("extracted");
            let http = attributes
                .request
                .as_ref()
                .and_then(|r| r.http.as_ref())
                .expect("extracted");
            match out.route_destination {
                Some(name) => assert_eq!(
                    Some(name),
                    attributes.context_extensions.get(CONTEXT_KEY).map(String::as_str)
                ),
                None => assert!(
                    attributes
                        .context_extensions
                        .get(CONTEXT_KEY)
                        .is_none_or(String::is_empty)
                ),
            }
            if let Some(principal) = out.source_principal {
                assert_eq!(
                    Some(principal),
                    attributes.source.as_ref().map(|s| s.principal.as_str())
                );
            }
            if let Headers::Folded(map) = out.headers {
                check_folded(map, &out);
            }
            check_outbound(&out, &[http.host.as_str(), http.method.as_str(), http.path.as_str()]);
        }
        Err(denial) => assert!(
            matches!(denial.reason, Reason::CheckRequestMalformed | Reason::MalformedToken),
            "{denial}"
        ),
    }
}

/// Folded headers: the Authorization value is the map's, and one with a comma counts as several.
fn check_folded(map: &HashMap<String, String>, out: &Outbound<'_>) {
    match (map.get("authorization"), &out.authorization) {
        (None, Authorization::Missing) => {}
        (Some(v), Authorization::Several) => assert!(v.contains(',')),
        (Some(v), Authorization::One(one)) => assert!(v == one && !v.contains(',')),
        (v, a) => panic!("folded authorization {v:?} read as {a:?}"),
    }
}

/// Every extracted string is one of the request's fields or one of its header values.
fn check_outbound(out: &Outbound<'_>, fields: &[&str]) {
    let carried = |s: &str| s.is_empty() || fields.contains(&s) || header_values(out.headers).any(|v| v == s);
    for s in [out.authority, out.method, out.path] {
        assert!(carried(s), "{s:?} is in no field or header");
    }
    if let Authorization::One(value) = out.authorization {
        assert!(carried(value));
        if let Ok(Some(token)) = subject_token(&out.authorization, 8192) {
            assert!(value.ends_with(token.trim_end_matches([' ', '\t'])) || value.contains(token));
        }
    }
}

fn header_values<'a>(headers: Headers<'a>) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    match headers {
        Headers::Folded(map) => Box::new(map.values().map(String::as_str)),
        Headers::Lines(lines) => Box::new(lines.iter().filter_map(|(_, value)| value)),
    }
}
