//! What Baton reads of an outbound request, so that the Envoy configuration it generates asks
//! Envoy for that and no more (issue 15): the Authorization header, the W3C trace context, and the
//! headers the configured policies read. Every header Envoy sends is copied, encoded, sent and
//! decoded once per request on both sides, and a header Baton never reads (a cookie, an API key) is
//! one more place a secret travels. No body, no peer certificate: nothing in Baton reads them (the
//! caller's identity arrives as Envoy's `source.principal` attribute, not as the certificate).
//!
//! It owns the list and never writes it by hand: each name comes from the constant of the code that
//! reads it (`extract`, `baton_core::telemetry::trace`, `Policy::reads_headers`), so a new reader
//! cannot be forgotten here without its constant being skipped too.

use serde_json::{Value, json};

use crate::extract::{AUTHORIZATION, EXT_PROC_PSEUDO_HEADERS};
use crate::file::Config;

/// The request headers Baton reads under `config`, sorted and without repeats.
pub fn headers(config: &Config) -> Vec<&'static str> {
    let mut names = vec![AUTHORIZATION];
    names.extend(baton_core::telemetry::trace::HEADERS);
    for d in &config.decision.destinations {
        names.extend(d.policy.reads_headers());
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// An Envoy `ListStringMatcher` matching exactly these names (Envoy's header keys are lower-case).
pub fn matcher(names: &[&str]) -> Value {
    let patterns: Vec<Value> = names.iter().map(|n| json!({ "exact": n })).collect();
    json!({ "patterns": patterns })
}

/// ext_proc's `forward_rules`: the headers Baton reads, plus the pseudo-headers ext_proc carries the
/// authority, method and path in (ext_authz sends those as attributes of their own), plus the
/// response headers `refused` reads (`:status`, `www-authenticate`): the rules apply to every
/// headers message, the response's too.
pub fn ext_proc_forward_rules(names: &[&'static str]) -> Value {
    let mut all: Vec<&str> = names.to_vec();
    all.extend(EXT_PROC_PSEUDO_HEADERS);
    all.extend(crate::refused::READS);
    all.sort_unstable();
    all.dedup();
    json!({ "allowed_headers": matcher(&all) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(policy: &str) -> Config {
        Config::from_yaml(&format!(
            r#"
listen: {{ grpc: 127.0.0.1:9191 }}
token_service: {{ token_endpoint: http://127.0.0.1:9400/token, client_id: c, auth: {{ method: none }} }}
destinations:
  - name: orders
    hosts: ["orders"]
    audience: a
  - name: billing
    hosts: ["billing"]
    audience: b
{policy}"#
        ))
        .expect("config")
    }

    #[test]
    fn authorization_and_the_trace_context_always() {
        assert_eq!(headers(&config("")), ["authorization", "traceparent", "tracestate"]);
        let rules = "    policy: { methods: [GET], paths: [/orders/], allowed_sources: [spiffe://a/*] }\n";
        assert_eq!(
            headers(&config(rules)),
            ["authorization", "traceparent", "tracestate"],
            "methods, paths and sources are attributes, not headers"
        );
    }

    #[test]
    fn and_what_a_policy_expression_can_read() {
        let reading = "    policy: { when: \"request.headers['user-agent'] == 'x'\" }\n";
        assert_eq!(
            headers(&config(reading)),
            [
                "authorization",
                "content-type",
                "traceparent",
                "tracestate",
                "user-agent",
                "x-forwarded-for",
                "x-request-id"
            ]
        );
        let not_reading = "    policy: { when: \"destination == 'billing'\" }\n";
        assert_eq!(
            headers(&config(not_reading)),
            ["authorization", "traceparent", "tracestate"]
        );
    }

    #[test]
    fn ext_proc_also_gets_the_pseudo_headers() {
        let rules = ext_proc_forward_rules(&headers(&config("")));
        let names: Vec<&str> = rules["allowed_headers"]["patterns"]
            .as_array()
            .expect("patterns")
            .iter()
            .filter_map(|p| p["exact"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                ":authority",
                ":method",
                ":path",
                ":status",
                "authorization",
                "host",
                "traceparent",
                "tracestate",
                "www-authenticate"
            ]
        );
    }
}
