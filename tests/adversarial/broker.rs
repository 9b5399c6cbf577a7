//! Who may ask the broker API (`baton.v1.DelegationBroker`) for a token, and for which scopes.
//! The attacker holds some user's valid token of a trusted issuer (their own, or one they copied)
//! and calls Baton's broker directly: there is no Envoy in front of this API, so the cases go
//! straight at Baton's gRPC listener. Each row is one variant: the caller credential, what is asked
//! for, and what must happen.
//!
//! Classes: a user's token as the caller credential (it is verified like any token, so it must also
//! fail the caller rule, `caller_not_workload`), a caller credential that is not a verified token,
//! and scope escalation (a scope outside `broker_allowed_scopes`, however it is spelled).

use baton_envoy::broker::pb::ExchangeRequest;
use tonic::Code;

use baton_test_support::*;

use crate::BATON_BIN;

/// What the caller puts in the call's `authorization` metadata.
enum Credential {
    None,
    /// `Bearer <token>`.
    Bearer(String),
    /// The value as is.
    Raw(String),
    /// Two `authorization` entries.
    Twice(String, String),
}

/// What must happen: the delegated token's scope, or a refusal's gRPC code and reason.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Delegated(&'static str),
    Refused(Code, &'static str),
}

use Outcome::{Delegated, Refused};

struct Row {
    variant: &'static str,
    credential: Credential,
    destination: &'static str,
    scopes: &'static [&'static str],
    expected: Outcome,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_token_is_no_broker_caller_and_scopes_never_widen() {
    let scratch = Scratch::new(BATON_BIN, "adversarial-broker");
    let GuardedBroker { idp, baton } = GuardedBroker::start(&scratch).await;
    // Another issuer, not trusted: it mints tokens with every claim a caller's should have.
    let rogue = TokenService::start_with(
        Peer::BatonSts,
        &scratch,
        PeerOptions {
            name: Some("rogue"),
            ..Default::default()
        },
    )
    .await;
    let mut client = broker_client(baton.grpc).await;

    let alice = mint_for(&idp, "alice", "frontend", r#"{"azp":"web-app"}"#, &[]).await;
    let worker_claims = format!(r#"{{"azp":"{CALLER_CLIENT}"}}"#);
    let worker = mint_for(&idp, "svc-batch", CALLER_AUDIENCE, &worker_claims, &[]).await;
    let user = |claims: &'static str, aud: &'static str| {
        let idp = &idp;
        async move { Credential::Bearer(mint_for(idp, "mallory", aud, claims, &[]).await) }
    };
    let refused_caller = Refused(Code::Unauthenticated, "caller_not_workload");
    let escalation = Refused(Code::PermissionDenied, "scope_not_allowed");
    let forged_claims = serde_json::json!({
        "iss": idp.issuer, "sub": "svc-batch", "aud": CALLER_AUDIENCE, "azp": CALLER_CLIENT,
        "exp": unix_now() + 600,
    });
    let rows = vec![
        Row {
            variant: "the workload itself (control)",
            credential: Credential::Bearer(worker.clone()),
            destination: "orders",
            scopes: &[],
            expected: Delegated("orders.read"),
        },
        // A user's token as the caller credential.
        Row {
            variant: "a user token of the trusted issuer",
            credential: Credential::Bearer(alice.clone()),
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "a user token with the broker's audience, no client id",
            credential: user("{}", CALLER_AUDIENCE).await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "a user token with the broker's audience, another client",
            credential: user(r#"{"azp":"web-app"}"#, CALLER_AUDIENCE).await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "a listed client in azp, a user's audience",
            credential: user(r#"{"azp":"batch-worker"}"#, "frontend").await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "a listed client in client_id, a user's audience",
            credential: user(r#"{"client_id":"batch-worker"}"#, "frontend").await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "azp names a listed client, client_id another",
            credential: user(r#"{"azp":"batch-worker","client_id":"web-app"}"#, CALLER_AUDIENCE).await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "client_id as a list holding the listed client",
            credential: user(r#"{"client_id":["batch-worker"]}"#, CALLER_AUDIENCE).await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "the listed client in another case",
            credential: user(r#"{"azp":"Batch-Worker"}"#, CALLER_AUDIENCE).await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "the listed client with a trailing space",
            credential: user(r#"{"azp":"batch-worker "}"#, CALLER_AUDIENCE).await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "the listed client as a non-string",
            credential: user(r#"{"azp":{"id":"batch-worker"}}"#, CALLER_AUDIENCE).await,
            destination: "orders",
            scopes: &[],
            expected: refused_caller.clone(),
        },
        Row {
            variant: "an audience that only starts like the broker's",
            credential: user(r#"{"azp":"batch-worker"}"#, "baton-broker.evil").await,
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "subject_token_audience_mismatch"),
        },
        Row {
            variant: "the workload's token, expired",
            credential: Credential::Bearer(
                mint_for(
                    &idp,
                    "svc-batch",
                    CALLER_AUDIENCE,
                    &worker_claims,
                    &[("expires_in", "-120")],
                )
                .await,
            ),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "subject_token_expired"),
        },
        Row {
            variant: "the workload's token, not valid yet",
            credential: Credential::Bearer(
                mint_for(
                    &idp,
                    "svc-batch",
                    CALLER_AUDIENCE,
                    &worker_claims,
                    &[("not_before", "600")],
                )
                .await,
            ),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "subject_token_not_yet_valid"),
        },
        Row {
            variant: "every caller claim, from an untrusted issuer",
            credential: Credential::Bearer(mint_for(&rogue, "svc-batch", CALLER_AUDIENCE, &worker_claims, &[]).await),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "subject_token_issuer_untrusted"),
        },
        Row {
            variant: "every caller claim, unsigned (alg none)",
            credential: Credential::Bearer(forge_jwt(
                r#"{"alg":"none","typ":"JWT"}"#,
                &forged_claims.to_string(),
                "",
            )),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "subject_token_unsigned"),
        },
        Row {
            variant: "the workload's token with its signature cut",
            credential: Credential::Bearer(format!("{}.", worker.rsplit_once('.').expect("a JWT").0)),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "subject_token_signature_invalid"),
        },
        // Not a verified token at all.
        Row {
            variant: "no credential",
            credential: Credential::None,
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "caller_unauthenticated"),
        },
        Row {
            variant: "no credential, probing an unknown destination",
            credential: Credential::None,
            destination: "nowhere",
            scopes: &["anything"],
            expected: Refused(Code::Unauthenticated, "caller_unauthenticated"),
        },
        Row {
            variant: "an opaque string",
            credential: Credential::Raw("Bearer opaque-caller-credential".into()),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "subject_token_opaque"),
        },
        Row {
            variant: "the workload's token under the Basic scheme",
            credential: Credential::Raw(format!("Basic {worker}")),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "unsupported_authorization_scheme"),
        },
        Row {
            variant: "a user's token, then the workload's",
            credential: Credential::Twice(bearer(&alice), bearer(&worker)),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "multiple_authorization_headers"),
        },
        Row {
            variant: "the workload's token, then a user's",
            credential: Credential::Twice(bearer(&worker), bearer(&alice)),
            destination: "orders",
            scopes: &[],
            expected: Refused(Code::Unauthenticated, "multiple_authorization_headers"),
        },
        // Scope escalation by an authenticated caller.
        Row {
            variant: "a scope the destination does not allow",
            credential: Credential::Bearer(worker.clone()),
            destination: "orders",
            scopes: &["orders.write"],
            expected: escalation.clone(),
        },
        Row {
            variant: "a superset of the destination's scopes",
            credential: Credential::Bearer(worker.clone()),
            destination: "orders",
            scopes: &["orders.read", "orders.write"],
            expected: escalation.clone(),
        },
        Row {
            variant: "another destination's scope",
            credential: Credential::Bearer(worker.clone()),
            destination: "orders",
            scopes: &["invoices.write"],
            expected: escalation.clone(),
        },
        Row {
            variant: "two scopes in one element, space-separated",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.read invoices.admin"],
            expected: escalation.clone(),
        },
        Row {
            variant: "two allowed scopes in one element, space-separated",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.read invoices.write"],
            expected: escalation.clone(),
        },
        Row {
            variant: "comma-separated",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.read,invoices.write"],
            expected: escalation.clone(),
        },
        Row {
            variant: "tab, newline and plus separators",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &[
                "invoices.read\tinvoices.write",
                "invoices.read\ninvoices.write",
                "invoices.read+invoices.write",
            ],
            expected: escalation.clone(),
        },
        Row {
            variant: "percent-encoded space",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.read%20invoices.admin"],
            expected: escalation.clone(),
        },
        Row {
            variant: "an allowed scope in upper case",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["INVOICES.WRITE"],
            expected: escalation.clone(),
        },
        Row {
            variant: "an allowed scope with a trailing space",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.write "],
            expected: escalation.clone(),
        },
        Row {
            variant: "an allowed scope with a NUL",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.write\u{0}"],
            expected: escalation.clone(),
        },
        Row {
            variant: "a wildcard",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.*"],
            expected: escalation.clone(),
        },
        Row {
            variant: "an empty scope",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &[""],
            expected: escalation.clone(),
        },
        Row {
            variant: "an allowed scope and a disallowed one",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.write", "invoices.admin"],
            expected: escalation.clone(),
        },
        Row {
            variant: "an allowed set, repeated and reordered (control)",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &["invoices.write", "invoices.read", "invoices.write"],
            expected: Delegated("invoices.read invoices.write"),
        },
        Row {
            variant: "no scopes: the destination's own (control)",
            credential: Credential::Bearer(worker.clone()),
            destination: "billing",
            scopes: &[],
            expected: Delegated("invoices.read"),
        },
    ];

    let mut failures = Vec::new();
    for row in rows {
        let mut request = tonic::Request::new(ExchangeRequest {
            subject_token: alice.clone(),
            destination: row.destination.to_owned(),
            scopes: row.scopes.iter().map(|s| (*s).to_owned()).collect(),
        });
        let metadata = request.metadata_mut();
        match &row.credential {
            Credential::None => {}
            Credential::Bearer(token) => {
                metadata.insert("authorization", bearer(token).parse().expect("metadata"));
            }
            Credential::Raw(value) => {
                metadata.insert("authorization", value.parse().expect("metadata"));
            }
            Credential::Twice(first, second) => {
                metadata.append("authorization", first.parse().expect("metadata"));
                metadata.append("authorization", second.parse().expect("metadata"));
            }
        }
        let outcome = match client.exchange(request).await {
            Ok(reply) => {
                let claims = idp.verify(&reply.get_ref().access_token).await;
                assert_eq!(claims["sub"], "alice", "{}", row.variant);
                Ok(claims["scope"].as_str().unwrap_or_default().to_owned())
            }
            Err(status) => Err((status.code(), status.message().to_owned())),
        };
        let passed = match (&row.expected, &outcome) {
            (Delegated(scope), Ok(granted)) => granted == scope,
            (Refused(code, reason), Err((got, message))) => got == code && message.split(':').next() == Some(reason),
            _ => false,
        };
        if !passed {
            failures.push(format!("{}: expected {:?}, got {outcome:?}", row.variant, row.expected));
        }
    }
    assert!(
        failures.is_empty(),
        "{} broker case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Without a `broker:` section the broker API refuses everyone, whatever they present: a sidecar
/// that only serves Envoy offers no second way to ask for tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_api_is_off_unless_configured() {
    let scratch = Scratch::new(BATON_BIN, "adversarial-broker-off");
    let idp = TokenService::start(Peer::BatonSts, &scratch).await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", idp.token_endpoint));
    let body = format!(
        "token_service:\n{token_service}\ntrusted_issuers:\n  - issuer: {}\n    audiences: [frontend, {CALLER_AUDIENCE}]\ndestinations:\n  - name: orders\n    audience: {ORDERS}\n    scopes: [orders.read]\n",
        idp.issuer
    );
    let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
    let mut client = broker_client(baton.grpc).await;
    let alice = mint_for(&idp, "alice", "frontend", "{}", &[]).await;
    let worker_claims = format!(r#"{{"azp":"{CALLER_CLIENT}"}}"#);
    let worker = mint_for(&idp, "svc-batch", CALLER_AUDIENCE, &worker_claims, &[]).await;
    for (variant, credential, destination) in [
        ("no credential", None, "orders"),
        ("a user's token", Some(&alice), "orders"),
        ("a workload's token", Some(&worker), "orders"),
        ("a workload's token, an unknown destination", Some(&worker), "nowhere"),
    ] {
        let request = broker_request(credential.map(String::as_str), &alice, destination, &[]);
        let refused = client.exchange(request).await.expect_err(variant);
        assert_eq!(refused.code(), Code::PermissionDenied, "{variant}");
        assert!(
            refused.message().starts_with("broker_disabled"),
            "{variant}: {}",
            refused.message()
        );
    }
}
