//! Delegation chains at decision time: the subject token's own `act` chain is judged against the
//! destination's `allowed_actors` and `max_delegation_depth` before any exchange, and the issued
//! token's chain after it, its signature verified first when the destination says `verify_issued`
//! (by the subject-token verifier's keys: no second JWKS fetcher). The matching rule itself is
//! pure, in `baton_decide::chain`. It never logs a token; a refusal names a position in the
//! chain, not a token.

use serde_json::Value;

use crate::decision::Destination;
use crate::exchange::Issued;
use crate::jwt::Unverified;
use crate::verify::Verifier;
use baton_decide::chain;
use baton_decide::reason::{Denial, Reason};

/// A verified subject's chain, under `allowed_actors` (`authz::authorize` records it as the
/// `allowed_actors` rule's verdict).
pub(crate) fn subject_chain(route: &Destination, act: Option<&Value>) -> Result<(), Denial> {
    route
        .policy
        .allowed_actors
        .check(act)
        .map(|_| ())
        .map_err(|e| chain::subject_denial(&e))
}

/// An unverified subject's chain (verification off, or an opaque token forwarded), read from its
/// payload: the same `allowed_actors` rule, and the depth it would reach with Baton's actor added,
/// both before the exchange (a verified subject's depth is judged by `authorize`).
pub(crate) fn unverified_subject_chain(route: &Destination, act: Option<&Value>) -> Result<(), Denial> {
    if !route.policy.allowed_actors.is_empty() {
        subject_chain(route, act)?;
    }
    if let Some(max) = route.policy.max_delegation_depth {
        let held = crate::actor::chain(act, max + 1).len();
        if held + usize::from(route.use_actor) > max {
            return Err(Denial::new(
                Reason::DelegationTooDeep,
                "the delegation chain would be longer than this destination allows",
            ));
        }
    }
    Ok(())
}

/// The issued token's chain: with `verify_issued`, its signature first (`true`: the chain is
/// authenticated, `chain_verified` in the audit record); then every actor under `allowed_actors`.
pub(crate) async fn check_issued(
    route: &Destination,
    verifier: Option<&Verifier>,
    issued: &Issued,
    claims: Option<&Unverified>,
) -> Result<bool, Denial> {
    let mut verified = false;
    if route.verify_issued {
        let Some(verifier) = verifier else {
            // Configuration validation refuses `verify_issued` without trusted issuers.
            return Err(Denial::new(
                Reason::IssuedTokenSignatureInvalid,
                "the issued token cannot be verified: no trusted issuer is configured",
            ));
        };
        verifier.verify_issued(issued.access_token.expose()).await?;
        verified = true;
    }
    if !route.policy.allowed_actors.is_empty() {
        // An opaque token's chain cannot be judged: refused, whatever `require_delegation` says.
        let Some(claims) = claims else {
            return Err(Denial::new(
                Reason::IssuedTokenActorMissing,
                "the issued token is opaque, so allowed_actors cannot judge its delegation chain",
            ));
        };
        route
            .policy
            .allowed_actors
            .check(claims.act.as_ref())
            .map_err(|e| chain::issued_denial(&e))?;
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use crate::authz::Authz;
    use crate::exchange::{TokenService, TokenServices};
    use baton_decide::reason::Reason;
    use baton_decide::request::{Authorization, Headers, Outbound};

    /// Subject tokens are not verified here (no trusted_issuers), and the token service listens
    /// nowhere: a refusal by the chain rules proves they were judged before any exchange.
    fn authz(policy: &str) -> Authz {
        let yaml = format!(
            "token_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: c\n  auth:\n    method: none\n  retries: 0\n  timeout: 1s\ndestinations:\n  - name: c\n    hosts: [svc-c.example]\n    audience: https://svc-c.example\n    policy:\n{policy}"
        );
        let config = crate::config::Config::from_yaml(&yaml).expect("valid");
        let services = config
            .token_services
            .iter()
            .map(|ts| TokenService::new(ts).expect("client"))
            .collect::<Vec<_>>();
        Authz::new(config, TokenServices::new(services), None)
    }

    fn subject(act: &str) -> String {
        let payload = format!(r#"{{"sub":"alice","exp":4102444800{act}}}"#);
        format!("eyJhbGciOiJFUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    /// A GET to svc-c with this Authorization value.
    fn outbound(authorization: &str) -> Outbound<'_> {
        Outbound {
            route_destination: None,
            authority: "svc-c.example",
            method: "GET",
            path: "/",
            source_principal: None,
            authorization: Authorization::One(authorization),
            headers: Headers::NONE,
        }
    }

    async fn decide(authz: &Authz, token: &str) -> Reason {
        let authorization = format!("Bearer {token}");
        let outbound = outbound(&authorization);
        authz.decide(&outbound).await.expect_err("refused").reason
    }

    #[tokio::test]
    async fn an_unverified_subject_s_chain_is_judged_before_any_exchange() {
        let strict = authz("      allowed_actors: [svc-b]\n");
        let from_a = subject(r#","act":{"sub":"svc-a"}"#);
        assert_eq!(decide(&strict, &from_a).await, Reason::ActorNotAllowed);
        let malformed = subject(r#","act":{"sub":7}"#);
        assert_eq!(decide(&strict, &malformed).await, Reason::SubjectTokenMalformed);
        let nested = subject(r#","act":{"sub":"svc-b","act":"svc-a"}"#);
        assert_eq!(decide(&strict, &nested).await, Reason::SubjectTokenMalformed);
        // Allowed: on to the exchange, which fails here (nobody listens).
        let from_b = subject(r#","act":{"sub":"svc-b"}"#);
        assert_eq!(decide(&strict, &from_b).await, Reason::TokenServiceUnavailable);
        assert_eq!(decide(&strict, &subject("")).await, Reason::TokenServiceUnavailable);

        let shallow = authz("      max_delegation_depth: 1\n");
        let two = subject(r#","act":{"sub":"svc-b","act":{"sub":"svc-a"}}"#);
        assert_eq!(decide(&shallow, &two).await, Reason::DelegationTooDeep);
        assert_eq!(decide(&shallow, &from_b).await, Reason::TokenServiceUnavailable);
    }

    /// `baton explain` agrees with `baton run` on an unverified subject's chain: judged on the
    /// claims given, before the exchange.
    #[test]
    fn an_explanation_judges_the_unverified_chain_as_a_decision_does() {
        let strict = authz("      allowed_actors: [svc-b]\n");
        let token = subject("");
        let authorization = format!("Bearer {token}");
        let outbound = outbound(&authorization);
        let claims = |act: serde_json::Value| {
            serde_json::json!({"sub": "alice", "act": act})
                .as_object()
                .cloned()
                .expect("an object")
        };
        let from_a = crate::explain::explain(&strict, &outbound, Some(&claims(serde_json::json!({"sub": "svc-a"}))));
        assert_eq!((from_a.decision, from_a.reason), ("deny", Some("actor_not_allowed")));
        let from_b = crate::explain::explain(&strict, &outbound, Some(&claims(serde_json::json!({"sub": "svc-b"}))));
        assert_eq!(from_b.decision, "delegate");
    }

    /// A reload that changes a chain rule must not serve tokens judged by the old one: each rule
    /// is part of the destination's cache keys.
    #[test]
    fn the_chain_rules_are_part_of_the_cache_key() {
        let key = |policy: &str| authz(policy).route_for("c", &[]).expect("route").key_params;
        let base = key("      methods: [GET]\n");
        let keys = [
            key("      allowed_actors: [svc-a]\n"),
            key("      allowed_actors: [svc-a, svc-b]\n"),
            key("      allowed_actors: ['svc-a, svc-b']\n"),
            key("      allowed_actors: ['svc-*']\n"),
            key("      require_delegation: true\n"),
            key("      require_delegation: false\n"),
        ];
        for (i, k) in keys.iter().enumerate() {
            assert_ne!(*k, base, "{i}");
            assert!(keys[i + 1..].iter().all(|other| other != k), "{i}");
        }
        assert_eq!(key("      methods: [GET]\n"), base, "the same rules, the same key");
    }

    #[test]
    fn bad_chain_settings_are_configuration_errors_all_at_once() {
        let yaml = "token_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: c\n  auth:\n    method: none\ndestinations:\n  - name: c\n    hosts: [svc-c.example]\n    audience: https://svc-c.example\n    verify_issued: true\n    policy:\n      allowed_actors: ['', 'a*b']\n";
        let errors = crate::config::Config::from_yaml(yaml).expect_err("invalid");
        let text = errors.to_string();
        for path in [
            "destinations[0].verify_issued",
            "destinations[0].policy.allowed_actors[0]",
            "destinations[0].policy.allowed_actors[1]",
        ] {
            assert!(text.contains(path), "{path} in {text}");
        }
    }
}
