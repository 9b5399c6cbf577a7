//! Fixed destination policies (rules and CEL `when:` expressions, as in docs/configuration.md) evaluated
//! against fuzzed facts: claims, source, method, path and headers, given as one JSON object. Never a
//! panic; a refusal names its rule; an allowed request really meets every rule.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use baton_core::files::parse_yaml;
use baton_decide::canonical;
use baton_decide::policy::{Facts, Policy, RawPolicy};
use baton_decide::reason::Reason;
use baton_decide::request::Headers;
use baton_decide::settings::Errors;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::{Map, Value};

const RULES: &str = r#"
allowed_sources: ["spiffe://cluster.local/ns/shop/*", "spiffe://cluster.local/ns/ops/sa/admin"]
require_claims: { tenant: acme, groups: [buyers, admins] }
methods: [get, POST]
paths: ["/orders/", "/items/*/price", "/v2/**/status"]
scopes_from_subject: intersect
"#;
const CEL: &str = r#"when: 'subject.tenant == "acme" && request.method == "GET" && destination == "orders"'"#;
const CEL_MORE: &str = r#"when: '("admins" in subject.groups || request.path.startsWith("/public/")) && source.endsWith("/frontend") && request.headers["user-agent"] != "evil" && subject.age >= 18'"#;
const SCOPES: [&str; 3] = ["orders.read", "orders.write", "orders.admin"];

struct Policies {
    rules: Policy,
    cel: Policy,
    cel_more: Policy,
}

fn policies() -> &'static Policies {
    static POLICIES: OnceLock<Policies> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let compile = |yaml: &str| {
            let mut errors = Errors::default();
            let policy = parse_yaml::<RawPolicy>(yaml)
                .expect("policy YAML")
                .compile("policy", true, &mut errors);
            assert!(errors.0.is_empty(), "{:?}", errors.0);
            policy
        };
        Policies {
            rules: compile(RULES),
            cel: compile(CEL),
            cel_more: compile(CEL_MORE),
        }
    })
}

#[derive(Deserialize)]
struct Input {
    claims: Option<Map<String, Value>>,
    source: Option<String>,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default = "orders")]
    destination: String,
}

fn orders() -> String {
    "orders".into()
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    let policies = policies();
    let facts = Facts {
        claims: input.claims.as_ref(),
        source: input.source.as_deref(),
        method: &input.method,
        path: &input.path,
        headers: Headers::Folded(&input.headers),
        destination: &input.destination,
    };
    let claim = |name: &str| input.claims.as_ref().and_then(|c| c.get(name));
    let holds = |name: &str, wanted: &[&str]| match claim(name) {
        Some(Value::String(s)) => wanted.contains(&s.as_str()),
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str().is_some_and(|s| wanted.contains(&s))),
        _ => false,
    };

    match policies.rules.check(&facts) {
        Ok(()) => {
            let source = input.source.as_deref().expect("allowed without a source");
            assert!(
                source.starts_with("spiffe://cluster.local/ns/shop/")
                    || source == "spiffe://cluster.local/ns/ops/sa/admin",
                "source {source:?} allowed"
            );
            assert!(matches!(input.method.to_ascii_uppercase().as_str(), "GET" | "POST"));
            // Path rules judge the canonical path (issue 12).
            let path = canonical::path(&input.path).expect("an allowed path is canonical");
            assert!(path.starts_with('/'), "path {path:?} allowed");
            assert!(holds("tenant", &["acme"]), "tenant {:?} allowed", claim("tenant"));
            assert!(
                holds("groups", &["buyers", "admins"]),
                "groups {:?} allowed",
                claim("groups")
            );
        }
        Err(denial) => assert!(
            matches!(
                denial.reason,
                Reason::SourceNotAllowed
                    | Reason::MethodNotAllowed
                    | Reason::PathNotAllowed
                    | Reason::PathNotCanonical
                    | Reason::ClaimRequirementFailed
            ),
            "{denial}"
        ),
    }
    let configured: Vec<String> = SCOPES.map(str::to_owned).into();
    match policies.rules.scopes(&configured, input.claims.as_ref()) {
        Ok(Some(scope)) => {
            assert!(!scope.is_empty());
            for s in scope.split(' ') {
                assert!(SCOPES.contains(&s), "{s:?} was not configured");
                let held = match claim("scope").or_else(|| claim("scp")) {
                    Some(Value::String(all)) => all.split(' ').any(|h| h == s),
                    Some(Value::Array(all)) => all.iter().any(|h| h.as_str() == Some(s)),
                    _ => false,
                };
                assert!(held, "{s:?} is not held");
            }
        }
        Ok(None) => panic!("scopes_from_subject always decides"),
        Err(denial) => assert_eq!(denial.reason, Reason::ScopeNotHeld),
    }

    match policies.cel.check(&facts) {
        Ok(()) => {
            assert_eq!(claim("tenant"), Some(&Value::String("acme".into())));
            assert_eq!(input.method, "GET");
            assert_eq!(input.destination, "orders");
        }
        Err(denial) => assert!(
            matches!(
                denial.reason,
                Reason::PolicyExpressionFalse | Reason::PolicyExpressionError | Reason::PathNotCanonical
            ),
            "{denial}"
        ),
    }
    match policies.cel_more.check(&facts) {
        Ok(()) => {
            // CEL's `in` also reads a map's keys.
            let admin = holds("groups", &["admins"])
                || claim("groups")
                    .and_then(Value::as_object)
                    .is_some_and(|g| g.contains_key("admins"));
            let path = canonical::path(&input.path).unwrap_or_default();
            assert!(admin || path.starts_with("/public/"));
            assert!(input.source.as_deref().unwrap_or("").ends_with("/frontend"));
            assert!(claim("age").and_then(Value::as_f64).is_some_and(|age| age >= 18.0));
        }
        Err(denial) => assert!(
            matches!(
                denial.reason,
                Reason::PolicyExpressionFalse | Reason::PolicyExpressionError | Reason::PathNotCanonical
            ),
            "{denial}"
        ),
    }
});
