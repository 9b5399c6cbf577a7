//! What the filter decides by itself, in the order `baton_core::authz::admit` and `delegate` do
//! and with the same baton-decide functions: the canonical authority, the destination it matches,
//! the bearer token's rules (which give the subject token the cache is keyed on), and on a hit the
//! destination's policy judged on this request with the claims the sidecar verified. Pure (the caller passes the clock and whether
//! the sidecar's epoch is fresh), so it is tested natively. Whatever it cannot settle is `Miss`:
//! the sidecar decides, and audits.

use std::rc::Rc;
use std::sync::Arc;

use baton_decide::canonical;
use baton_decide::policy::Facts;
use baton_decide::reason::{Denial, Reason};
use baton_decide::request::{self, Headers};

use crate::cache::{self, Cache, Held};
use crate::config::{Settings, Unknown};

/// The request as the filter reads it from Envoy.
#[derive(Debug)]
pub struct Request<'a> {
    pub authority: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The request's headers (without pseudo-headers).
    pub headers: Headers<'a>,
}

/// The filter's own verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Local {
    /// Remove `Authorization`: no destination (`unknown_destination: strip`).
    Strip,
    /// Leave the request alone.
    Passthrough,
    /// Refuse, before any token is looked at by the sidecar (the same reason it would give).
    Deny(Denial),
    /// Served from the cache: `Authorization` becomes `authorization` (the entry `held`, which a
    /// destination's `invalid_token` purges).
    Hit {
        destination: Arc<str>,
        authorization: Rc<str>,
        held: Held,
    },
    /// Ask the sidecar; keep its answer for `token` at `params`.
    Miss {
        destination: Arc<str>,
        params: cache::Destination,
        token: Rc<str>,
    },
}

/// Decide `request` from the configuration and the cache. `fresh`: the sidecar's epoch was heard
/// within the bound, so cached entries may be served.
pub fn decide(settings: &Settings, cache: &Cache, request: &Request<'_>, now: u64, fresh: bool) -> Local {
    let authority = match canonical::authority(request.authority) {
        Ok(authority) => authority,
        // A malformed authority reaches no destination: stripped, or refused.
        Err(e) => {
            return match settings.unknown {
                Unknown::Strip => Local::Strip,
                Unknown::Passthrough | Unknown::Deny => Local::Deny(Denial::new(
                    Reason::AuthorityMalformed,
                    format!("the request's authority {e}"),
                )),
            };
        }
    };
    let Some(destination) = settings.routes.by_authority(&authority) else {
        return match settings.unknown {
            Unknown::Strip => Local::Strip,
            Unknown::Passthrough => Local::Passthrough,
            Unknown::Deny => Local::Deny(Denial::new(
                Reason::DestinationUnknown,
                "no configured destination matches this host",
            )),
        };
    };
    let token = match request
        .headers
        .one("authorization")
        .and_then(|a| request::subject_token(&a, settings.max_token_bytes))
    {
        Ok(Some(token)) => token,
        Ok(None) if settings.missing_token_passthrough => return Local::Passthrough,
        Ok(None) => return Local::Deny(Denial::new(Reason::MissingToken, "the request has no bearer token")),
        Err(denial) => return Local::Deny(denial),
    };
    let miss = || Local::Miss {
        destination: destination.name.clone(),
        params: destination.params,
        token: token.into(),
    };
    if !fresh {
        return miss();
    }
    let Some((entry, held)) = cache.get(&destination.params, token, now) else {
        return miss();
    };
    let facts = Facts {
        claims: entry.claims.as_ref(),
        source: settings.source.as_deref(),
        method: request.method,
        path: request.path,
        headers: request.headers,
        destination: &destination.name,
    };
    // A refusal is the sidecar's to make: it audits it, with the same rules and claims.
    if destination.policy.check(&facts).is_err() {
        return miss();
    }
    Local::Hit {
        destination: destination.name.clone(),
        authorization: entry.authorization.clone(),
        held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Entry;
    use baton_decide::request::HeaderLines;

    #[derive(Debug)]
    struct Pairs(Vec<(&'static str, &'static str)>);

    impl HeaderLines for Pairs {
        fn line(&self, index: usize) -> Option<(&str, Option<&str>)> {
            self.0.get(index).map(|(k, v)| (*k, Some(*v)))
        }
    }

    fn settings(extra: &str) -> Settings {
        let json = format!(
            r#"{{"sidecar_cluster":"baton","verified":true,{extra}
            "destinations":[{{"name":"orders","hosts":["orders.internal"],
              "policy":{{"methods":["GET"],"require_claims":{{"tenant":"acme"}}}}}}]}}"#
        );
        Settings::from_json(json.as_bytes()).expect("valid")
    }

    fn run(settings: &Settings, cache: &Cache, authority: &str, method: &str, lines: &Pairs, fresh: bool) -> Local {
        let request = Request {
            authority,
            method,
            path: "/orders/1",
            headers: Headers::Lines(lines),
        };
        decide(settings, cache, &request, 1_000, fresh)
    }

    fn claims(tenant: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::json!({ "sub": "alice", "tenant": tenant })
            .as_object()
            .cloned()
            .expect("object")
    }

    #[test]
    fn an_unlisted_host_gets_no_token_and_a_bad_authority_matches_nothing() {
        let s = settings("");
        let cache = Cache::new(8);
        let user = Pairs(vec![("authorization", "Bearer user-token")]);
        assert_eq!(run(&s, &cache, "evil.example", "GET", &user, true), Local::Strip);
        assert_eq!(
            run(&s, &cache, "orders.internal@evil", "GET", &user, true),
            Local::Strip
        );
        let deny = settings(r#""unknown_destination":"deny","#);
        assert!(matches!(
            run(&deny, &cache, "evil.example", "GET", &user, true),
            Local::Deny(d) if d.reason == Reason::DestinationUnknown
        ));
    }

    #[test]
    fn bad_bearer_tokens_are_refused_with_the_sidecars_reasons() {
        let s = settings("");
        let reason = |lines: Pairs| match run(&s, &Cache::new(1), "orders.internal", "GET", &lines, true) {
            Local::Deny(d) => d.reason,
            other => panic!("not denied: {other:?}"),
        };
        assert_eq!(reason(Pairs(vec![])), Reason::MissingToken);
        assert_eq!(
            reason(Pairs(vec![("authorization", "Basic abc")])),
            Reason::UnsupportedAuthorizationScheme
        );
        assert_eq!(
            reason(Pairs(vec![("authorization", "Bearer a\r\nx: y")])),
            Reason::MalformedToken
        );
        assert_eq!(
            reason(Pairs(vec![
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ])),
            Reason::MultipleAuthorizationHeaders
        );
    }

    #[test]
    fn a_hit_is_served_only_when_fresh_and_when_the_policy_allows_this_request() {
        let s = settings("");
        let mut cache = Cache::new(8);
        let user = Pairs(vec![("authorization", "Bearer user-token")]);
        let Local::Miss { params, token, .. } = run(&s, &cache, "orders.internal", "GET", &user, true) else {
            panic!("an empty cache misses");
        };
        assert_eq!(&*token, "user-token", "the subject token, as baton-decide reads it");
        let entry = Entry {
            authorization: "Bearer issued".into(),
            expires_at: 2_000,
            claims: Some(claims("acme")),
            served: None,
        };
        let held = cache.insert(params, token, entry, 0, 1_000).expect("kept");
        assert_eq!(
            run(&s, &cache, "ORDERS.internal", "GET", &user, true),
            Local::Hit {
                destination: "orders".into(),
                authorization: "Bearer issued".into(),
                held,
            },
            "the canonical authority matches"
        );
        assert!(
            matches!(
                run(&s, &cache, "orders.internal", "GET", &user, false),
                Local::Miss { .. }
            ),
            "no recent epoch: nothing cached is served"
        );
        assert!(
            matches!(
                run(&s, &cache, "orders.internal", "DELETE", &user, true),
                Local::Miss { .. }
            ),
            "the policy refuses this method: the sidecar decides (and audits)"
        );
        let other = Pairs(vec![("authorization", "Bearer someone-else")]);
        assert!(matches!(
            run(&s, &cache, "orders.internal", "GET", &other, true),
            Local::Miss { .. }
        ));
    }

    #[test]
    fn a_token_cached_for_one_destination_is_never_served_to_another() {
        let s = Settings::from_json(
            br#"{"sidecar_cluster":"baton","destinations":[
              {"name":"orders","hosts":["orders.internal"]},{"name":"billing","hosts":["billing.internal"]}]}"#,
        )
        .expect("valid");
        let mut cache = Cache::new(8);
        let user = Pairs(vec![("authorization", "Bearer user-token")]);
        let Local::Miss { params, token, .. } = run(&s, &cache, "orders.internal", "GET", &user, true) else {
            panic!("an empty cache misses");
        };
        let entry = Entry {
            authorization: "Bearer for-orders".into(),
            expires_at: 2_000,
            claims: None,
            served: None,
        };
        assert!(cache.insert(params, token.clone(), entry, 0, 1_000).is_some());
        assert!(matches!(
            run(&s, &cache, "orders.internal", "GET", &user, true),
            Local::Hit { .. }
        ));
        let Local::Miss {
            params: other,
            destination,
            token: same,
        } = run(&s, &cache, "billing.internal", "GET", &user, true)
        else {
            panic!("billing must not be served the token cached for orders");
        };
        assert_eq!(&*destination, "billing");
        assert_ne!(other, params);
        assert_eq!(same, token, "the same subject token, another destination");
    }

    #[test]
    fn claims_that_fail_the_policy_are_not_served() {
        let s = settings("");
        let mut cache = Cache::new(8);
        let user = Pairs(vec![("authorization", "Bearer user-token")]);
        let Local::Miss { params, token, .. } = run(&s, &cache, "orders.internal", "GET", &user, true) else {
            panic!("miss");
        };
        let entry = Entry {
            authorization: "Bearer issued".into(),
            expires_at: 2_000,
            claims: Some(claims("other")),
            served: None,
        };
        assert!(cache.insert(params, token, entry, 0, 1_000).is_some());
        assert!(matches!(
            run(&s, &cache, "orders.internal", "GET", &user, true),
            Local::Miss { .. }
        ));
    }
}
