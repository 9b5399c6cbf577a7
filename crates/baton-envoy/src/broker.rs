//! `baton.v1.DelegationBroker`: the same destinations, verification, policy, cache and token service
//! as the Envoy path, for callers that hand Baton a user's token directly (batch jobs, async
//! workers that kept the user's token and ask at execution time, so the decision is made then). The
//! caller authenticates with a bearer token in the call's `authorization` metadata, verified like a
//! subject token and then held to the caller rule (`broker.caller_audience`,
//! `broker.caller_client_ids`), so that a user's token, however valid, never passes for a caller;
//! its `sub` is the policy's `source`. A caller may narrow a destination's scopes, never widen them
//! (`broker_allowed_scopes`). Refusals are gRPC errors here (there is no Envoy to answer for), with
//! the same reason codes. Without a `broker:` section every call is refused (`broker_disabled`).
//! `Defer` and `Redeem` (deferred jobs) are carried here and decided in `baton_core::jobs`,
//! after the same caller check.
//!
//! This module owns who counts as a broker caller; it must never accept a caller on a token that
//! only proves a user, nor echo a token or a caller-supplied string in a refusal.

use tonic::{Request, Response, Status};

use baton_core::authz::{Authz, Caller, Current};
use baton_core::cache;
use baton_core::callers::{BrokerCallers, CallerRule};
use baton_core::decision::Allow;
use baton_core::jobs;
use baton_core::telemetry::{Api, Decided, Observation};
use baton_decide::reason::{Denial, Reason};
use baton_decide::request::{Authorization, Headers, check_token, subject_token};

pub mod pb {
    tonic::include_proto!("baton.v1");
}

use pb::delegation_broker_server::DelegationBroker;
use pb::{DeferRequest, DeferResponse, ExchangeRequest, ExchangeResponse, RedeemRequest, RedeemResponse};

#[derive(Debug)]
pub struct Broker {
    authz: Current,
}

impl Broker {
    pub fn new(authz: Current) -> Self {
        Self { authz }
    }
}

#[tonic::async_trait]
impl DelegationBroker for Broker {
    async fn exchange(&self, request: Request<ExchangeRequest>) -> Result<Response<ExchangeResponse>, Status> {
        let authz = self.authz.load_full();
        let (observation, caller, request) = opened(&authz, request).await;
        // Only an authenticated caller learns which destinations and scopes exist: its denial
        // comes first. A scope outside the allow-list (whatever its case, separators or
        // repeats) is a refusal of its own, never a wider token.
        let route = authz.route_for(&request.destination, &request.scopes);
        let source = caller.as_ref().ok().and_then(|c| c.as_deref());
        let outcome = match (
            &caller,
            &route,
            check_token(&request.subject_token, authz.max_token_bytes()),
        ) {
            (Err(denial), _, _) | (Ok(_), Err(denial), _) => Err(denial.clone()),
            (_, _, Err(denial)) => Err(denial),
            (Ok(_), Ok(route), Ok(subject)) => {
                // No HTTP request here: destinations with method or path rules refuse broker calls.
                let caller = Caller {
                    source,
                    method: "",
                    path: "",
                    headers: Headers::NONE,
                };
                observation
                    .run(authz.delegate(route, subject, &caller))
                    .await
                    .map(|(token, cache, key)| Allow::Delegate {
                        destination: route.clone(),
                        token,
                        cache,
                        key: Some(key),
                        // The broker hands the token to its caller, who holds no DPoP key.
                        bound: None,
                    })
            }
        };
        observation.finish(Decided {
            outcome: &outcome,
            destination: route.as_ref().ok(),
            source,
        });
        match outcome {
            Ok(Allow::Delegate { token, .. }) => Ok(Response::new(ExchangeResponse {
                access_token: token.token().to_owned(),
                issued_token_type: token.issued_token_type().unwrap_or_default().to_owned(),
                token_type: token.token_type().to_owned(),
                expires_at: i64::try_from(token.expires_at).unwrap_or(i64::MAX),
                scope: token.scope().unwrap_or_default().to_owned(),
            })),
            // `delegate` only ever delegates.
            Ok(Allow::Strip | Allow::Passthrough) => Err(Status::internal("no token was delegated")),
            Err(denial) => Err(status(&denial)),
        }
    }

    async fn defer(&self, request: Request<DeferRequest>) -> Result<Response<DeferResponse>, Status> {
        let authz = self.authz.load_full();
        let (observation, caller, request) = opened(&authz, request).await;
        // Only a well-formed job id reaches the audit record and the span (bounded, nothing to escape).
        let observation = match jobs::well_formed(&authz, &request.job_id) {
            Some(job) => observation.with_job(job),
            None => observation,
        };
        let source = caller.as_ref().ok().and_then(|c| c.as_deref());
        let outcome = match &caller {
            Err(denial) => Err(denial.clone()),
            Ok(_) => {
                let asked = jobs::DeferRequest {
                    subject_token: &request.subject_token,
                    job_id: &request.job_id,
                    destinations: &request.destinations,
                    max_age_seconds: request.max_age_seconds,
                };
                observation
                    .run(jobs::defer(&authz, &asked, &broker_caller(source)))
                    .await
            }
        };
        let route = authz.deferred.as_ref().map(|d| d.route().clone());
        let (outcome, expires_at) = match (outcome, &route) {
            (Ok(granted), Some(route)) => (
                Ok(Allow::Delegate {
                    destination: route.clone(),
                    token: granted.grant,
                    cache: cache::CacheStatus::Miss,
                    // Never cached (a grant, or a Redeem's token): no entry to purge.
                    key: None,
                    bound: None,
                }),
                granted.expires_at,
            ),
            // `defer` grants only with a `deferred:` section.
            (Ok(_), None) => (Err(Denial::new(Reason::DeferredDisabled, "deferred jobs are off")), 0),
            (Err(denial), _) => (Err(denial), 0),
        };
        observation.finish(Decided {
            outcome: &outcome,
            destination: route.as_ref(),
            source,
        });
        match outcome {
            Ok(Allow::Delegate { token, .. }) => Ok(Response::new(DeferResponse {
                grant: token.token().to_owned(),
                expires_at,
            })),
            Ok(_) => Err(Status::internal("no grant was issued")),
            Err(denial) => Err(status(&denial)),
        }
    }

    async fn redeem(&self, request: Request<RedeemRequest>) -> Result<Response<RedeemResponse>, Status> {
        let authz = self.authz.load_full();
        let (observation, caller, request) = opened(&authz, request).await;
        // The job, for the audit record, as the grant names it (read before it is verified: a
        // refused Redeem is audited with the job it claimed).
        let observation = match jobs::job_of(&authz, &request.grant) {
            Some(job) => observation.with_job(&job),
            None => observation,
        };
        let source = caller.as_ref().ok().and_then(|c| c.as_deref());
        let outcome = match &caller {
            Err(denial) => Err(denial.clone()),
            Ok(_) => {
                observation
                    .run(jobs::redeem(
                        &authz,
                        &request.grant,
                        &request.destination,
                        &broker_caller(source),
                    ))
                    .await
            }
        };
        let named = authz.route_for(&request.destination, &[]).ok();
        let (outcome, job) = match outcome {
            Ok(redeemed) => (
                Ok(Allow::Delegate {
                    destination: redeemed.destination,
                    token: redeemed.token,
                    cache: cache::CacheStatus::Miss,
                    // Never cached (a grant, or a Redeem's token): no entry to purge.
                    key: None,
                    bound: None,
                }),
                redeemed.job,
            ),
            Err(denial) => (Err(denial), String::new()),
        };
        observation.finish(Decided {
            outcome: &outcome,
            destination: match &outcome {
                Ok(Allow::Delegate { destination, .. }) => Some(destination),
                _ => named.as_ref(),
            },
            source,
        });
        match outcome {
            Ok(Allow::Delegate { token, .. }) => Ok(Response::new(RedeemResponse {
                access_token: token.token().to_owned(),
                issued_token_type: token.issued_token_type().unwrap_or_default().to_owned(),
                token_type: token.token_type().to_owned(),
                expires_at: i64::try_from(token.expires_at).unwrap_or(i64::MAX),
                scope: token.scope().unwrap_or_default().to_owned(),
                job_id: job,
            })),
            Ok(_) => Err(Status::internal("no token was delegated")),
            Err(denial) => Err(status(&denial)),
        }
    }
}

/// What every broker call starts with: its observation (span, metrics, audit record; the trace
/// context from the call's metadata), who is calling (or why the caller is refused), and the
/// request's message.
async fn opened<'a, T>(authz: &'a Authz, request: Request<T>) -> (Observation<'a>, Result<Option<String>, Denial>, T) {
    let observation =
        authz
            .telemetry()
            .observe(Api::Broker, || crate::outcome::trace_context(request.metadata()), None);
    let caller = caller(authz, &request).await;
    (observation, caller, request.into_inner())
}

/// A broker call has no HTTP request: destinations with method or path rules refuse it.
fn broker_caller(source: Option<&str>) -> Caller<'_> {
    Caller {
        source,
        method: "",
        path: "",
        headers: Headers::NONE,
    }
}

/// Who is calling: the verified `sub` of the call's bearer token, once the token meets the caller
/// rule, or under `callers: mtls` the verified identity of its TLS client certificate (`None` under
/// `callers: any`).
async fn caller<T>(authz: &Authz, request: &Request<T>) -> Result<Option<String>, Denial> {
    let Some(broker) = &authz.broker else {
        return Err(Denial::new(
            Reason::BrokerDisabled,
            "the broker API is off: the configuration has no `broker:` section",
        ));
    };
    if broker.callers == BrokerCallers::Any {
        return Ok(None);
    }
    if broker.callers == BrokerCallers::Mtls {
        // Set only by the mutual-TLS listener, after the certificate chain and allow-list checks.
        return match request.extensions().get::<crate::tls::PeerIdentity>() {
            Some(peer) => Ok(Some(peer.identity.to_string())),
            None => Err(Denial::new(
                Reason::CallerUnauthenticated,
                "broker.callers is mtls and the call did not come over the mutual-TLS listener",
            )),
        };
    }
    let unauthenticated = |why: &'static str| Denial::new(Reason::CallerUnauthenticated, why);
    if !authz.verifies() {
        return Err(unauthenticated(
            "the broker authenticates callers against trusted_issuers, and none is configured",
        ));
    }
    // Two credentials are refused rather than one picked: which one a proxy or a library keeps
    // differs, and an attacker would add the one that suits them.
    let mut values = request.metadata().get_all("authorization").iter();
    let header = match (values.next().map(|v| v.to_str()), values.next()) {
        (None, _) => Authorization::Missing,
        (Some(_), Some(_)) => Authorization::Several,
        (Some(Ok(v)), None) => Authorization::One(v),
        (Some(Err(_)), None) => return Err(unauthenticated("the caller's authorization metadata is not text")),
    };
    let token = subject_token(&header, authz.max_token_bytes())?
        .ok_or_else(|| unauthenticated("the call carries no bearer token of its caller"))?;
    // An opaque token forwarded unverified (`opaque_tokens: forward`) proves nothing about its
    // holder: it is no caller's credential.
    let subject = authz
        .verify(token, &cache::digest(token))
        .await?
        .ok_or_else(|| unauthenticated("the caller's token cannot be verified here (opaque)"))?;
    is_caller(&broker.rule, &subject.claims)?;
    subject
        .sub()
        .map(|sub| Some(sub.to_owned()))
        .ok_or_else(|| unauthenticated("the caller's token names no subject"))
}

/// Whether verified `claims` are a workload's, by `rule`: every part that is set must hold. A
/// claim of the wrong JSON type counts as absent (fail closed, never a guess).
fn is_caller(rule: &CallerRule, claims: &serde_json::Map<String, serde_json::Value>) -> Result<(), Denial> {
    use serde_json::Value;
    let not_caller = |why: &'static str| Denial::new(Reason::CallerNotWorkload, why);
    if let Some(audience) = &rule.audience {
        let carried = match claims.get("aud") {
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience.as_str())),
            _ => false,
        };
        if !carried {
            return Err(not_caller("the caller's token lacks the broker's caller audience"));
        }
    }
    if !rule.client_ids.is_empty() {
        // `azp` (OpenID Connect) and `client_id` (RFC 9068) both name the client the token was
        // issued to; when a token has both they must agree, so neither can smuggle in the other.
        let named: Vec<Option<&str>> = ["azp", "client_id"]
            .iter()
            .filter_map(|c| claims.get(*c))
            .map(Value::as_str)
            .collect();
        let client = match named.as_slice() {
            [Some(one)] => Some(*one),
            [Some(a), Some(b)] if a == b => Some(*a),
            _ => None,
        };
        if !client.is_some_and(|c| rule.client_ids.iter().any(|id| id == c)) {
            return Err(not_caller(
                "the caller's token does not name an allowed caller client (azp / client_id)",
            ));
        }
    }
    Ok(())
}

fn status(denial: &Denial) -> Status {
    Status::new(crate::respond::grpc_code(denial.reason.class()), denial.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::file::Config;
    use baton_core::exchange::{TokenService, TokenServices};

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    fn rule(audience: Option<&str>, client_ids: &[&str]) -> CallerRule {
        CallerRule {
            audience: audience.map(str::to_owned),
            client_ids: client_ids.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn only_a_token_that_meets_every_part_of_the_rule_is_a_callers() {
        let both = rule(Some("baton-broker"), &["batch-worker"]);
        let cases = [
            // (what, rule, claims, is a caller)
            (
                "workload",
                &both,
                json!({"aud": "baton-broker", "azp": "batch-worker"}),
                true,
            ),
            (
                "aud in a list",
                &both,
                json!({"aud": ["x", "baton-broker"], "client_id": "batch-worker"}),
                true,
            ),
            (
                "azp and client_id agree",
                &both,
                json!({"aud": "baton-broker", "azp": "batch-worker", "client_id": "batch-worker"}),
                true,
            ),
            ("user token", &both, json!({"aud": "frontend", "azp": "web-app"}), false),
            ("right aud, no client", &both, json!({"aud": "baton-broker"}), false),
            (
                "listed client, wrong aud",
                &both,
                json!({"aud": "frontend", "azp": "batch-worker"}),
                false,
            ),
            (
                "azp and client_id disagree",
                &both,
                json!({"aud": "baton-broker", "azp": "web-app", "client_id": "batch-worker"}),
                false,
            ),
            (
                "client_id not a string",
                &both,
                json!({"aud": "baton-broker", "client_id": ["batch-worker"]}),
                false,
            ),
            (
                "aud not a string",
                &both,
                json!({"aud": {"baton-broker": true}, "azp": "batch-worker"}),
                false,
            ),
            (
                "client id case",
                &both,
                json!({"aud": "baton-broker", "azp": "Batch-Worker"}),
                false,
            ),
            (
                "aud case",
                &both,
                json!({"aud": "Baton-Broker", "azp": "batch-worker"}),
                false,
            ),
            (
                "aud prefix",
                &both,
                json!({"aud": "baton-broker-x", "azp": "batch-worker"}),
                false,
            ),
        ];
        for (what, rule, claims_json, expected) in cases {
            assert_eq!(is_caller(rule, &claims(claims_json)).is_ok(), expected, "{what}");
        }
        let audience_only = rule(Some("baton-broker"), &[]);
        assert!(is_caller(&audience_only, &claims(json!({"aud": "baton-broker"}))).is_ok());
        let clients_only = rule(None, &["batch-worker"]);
        assert!(
            is_caller(
                &clients_only,
                &claims(json!({"aud": "frontend", "azp": "batch-worker"}))
            )
            .is_ok()
        );
        let refused = is_caller(&clients_only, &claims(json!({"aud": "frontend"}))).expect_err("no client");
        assert_eq!(refused.reason, Reason::CallerNotWorkload);
    }

    fn authz() -> Authz {
        let yaml = r#"
listen: { grpc: 127.0.0.1:9191 }
token_service:
  token_endpoint: http://127.0.0.1:9/token
  client_id: sidecar
  auth: { method: none }
destinations:
  - name: orders
    audience: https://orders.example
    scopes: [orders.read]
  - name: billing
    audience: https://billing.example
    scopes: [invoices.read]
    broker_allowed_scopes: [invoices.read, invoices.write, invoices.admin]
broker: { callers: any }
"#;
        let config = Config::from_yaml(yaml).expect("valid").decision;
        let services = config
            .token_services
            .iter()
            .map(|ts| TokenService::new(ts).expect("client"))
            .collect::<Vec<_>>();
        Authz::new(config, TokenServices::new(services), None)
    }

    #[test]
    fn a_broker_call_narrows_a_destinations_scopes_and_never_widens_them() {
        let authz = authz();
        let asked = |destination: &str, scopes: &[&str]| {
            let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
            authz
                .route_for(destination, &scopes)
                .map(|r| r.target.scope.clone().unwrap_or_default())
                .map_err(|d| d.reason)
        };
        let refused = Err(Reason::ScopeNotAllowed);
        for (destination, scopes, expected) in [
            ("orders", &[][..], Ok("orders.read")),
            ("orders", &["orders.read"], Ok("orders.read")),
            ("orders", &["orders.read", "orders.read"], Ok("orders.read")),
            ("orders", &["orders.write"], refused),
            ("orders", &["orders.read", "orders.write"], refused),
            ("orders", &["orders.read orders.write"], refused),
            ("orders", &["orders.read,orders.write"], refused),
            ("orders", &["orders.read\torders.write"], refused),
            ("orders", &["Orders.Read"], refused),
            ("orders", &["ORDERS.READ"], refused),
            ("orders", &["orders.read "], refused),
            ("orders", &[""], refused),
            ("orders", &["orders.*"], refused),
            ("billing", &[], Ok("invoices.read")),
            ("billing", &["invoices.write"], Ok("invoices.write")),
            // The allow-list's order, once each: the same set is the same exchange.
            (
                "billing",
                &["invoices.write", "invoices.read", "invoices.write"],
                Ok("invoices.read invoices.write"),
            ),
            (
                "billing",
                &["invoices.read", "invoices.write"],
                Ok("invoices.read invoices.write"),
            ),
            ("billing", &["invoices.read", "orders.read"], refused),
            ("nowhere", &["orders.read"], Err(Reason::DestinationNotConfigured)),
        ] {
            assert_eq!(
                asked(destination, scopes),
                expected.map(str::to_owned),
                "{destination} {scopes:?}"
            );
        }
        // Asking for exactly the configured scopes is the destination's own route, cache key and all.
        let own = authz.route_for("orders", &[]).expect("own");
        let same = authz.route_for("orders", &["orders.read".to_owned()]).expect("same");
        assert!(std::sync::Arc::ptr_eq(&own, &same));
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever a caller asks for, a delegated route asks the token service only for scopes
        /// in the allow-list (or, asking for none, the destination's own), and the same set in
        /// any order or with repeats is the same request.
        #[test]
        fn a_granted_route_never_asks_beyond_the_allow_list(
            asked in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(vec!["invoices.read", "invoices.write", "invoices.admin", "orders.read"])
                        .prop_map(str::to_owned),
                    "[ -~]{0,12}",
                ],
                0..6,
            ),
            rotate in 0usize..6,
        ) {
            // One Authz for every case: building one (a token-service client) costs milliseconds.
            static AUTHZ: std::sync::LazyLock<Authz> = std::sync::LazyLock::new(authz);
            let authz = &*AUTHZ;
            let allowed = ["invoices.read", "invoices.write", "invoices.admin"];
            match authz.route_for("billing", &asked) {
                Ok(route) => {
                    let scope = route.target.scope.clone().unwrap_or_default();
                    let granted: Vec<&str> = scope.split(' ').collect();
                    prop_assert!(granted.iter().all(|s| allowed.contains(s)), "{asked:?} -> {scope}");
                    if asked.is_empty() {
                        prop_assert_eq!(scope.as_str(), "invoices.read");
                    } else {
                        prop_assert!(granted.iter().all(|g| asked.iter().any(|a| a == g)), "{asked:?} -> {scope}");
                        prop_assert!(asked.iter().all(|a| granted.contains(&a.as_str())), "{asked:?} -> {scope}");
                    }
                    let mut reordered = asked.clone();
                    if !reordered.is_empty() {
                        let by = rotate % reordered.len();
                        reordered.rotate_left(by);
                        reordered.push(reordered[0].clone());
                    }
                    let again = authz.route_for("billing", &reordered).expect("the same set");
                    prop_assert_eq!(&again.target.scope, &route.target.scope);
                }
                Err(denial) => {
                    prop_assert_eq!(denial.reason, Reason::ScopeNotAllowed);
                    prop_assert!(asked.iter().any(|a| !allowed.contains(&a.as_str())), "{asked:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn without_a_deferred_section_defer_and_redeem_are_refused() {
        let authz = authz();
        let caller = broker_caller(None);
        let asked = jobs::DeferRequest {
            subject_token: "t",
            job_id: "j",
            destinations: &["orders".to_owned()],
            max_age_seconds: 60,
        };
        let deferred = jobs::defer(&authz, &asked, &caller).await.map(|_| ());
        assert_eq!(deferred.map_err(|d| d.reason), Err(Reason::DeferredDisabled));
        let redeemed = jobs::redeem(&authz, "t", "orders", &caller).await.map(|_| ());
        assert_eq!(redeemed.map_err(|d| d.reason), Err(Reason::DeferredDisabled));
    }

    #[tokio::test]
    async fn without_a_broker_section_every_call_is_refused() {
        let mut authz = authz();
        authz.broker = None;
        let request = Request::new(ExchangeRequest::default());
        let refused = caller(&authz, &request).await.expect_err("off");
        assert_eq!(refused.reason, Reason::BrokerDisabled);
    }
}
