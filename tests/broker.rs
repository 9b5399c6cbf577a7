//! Baton's own gRPC API (`baton.v1.DelegationBroker/Exchange`) against panva's oidc-provider, once
//! for each way Baton authenticates to a token service and finds its endpoint: client_secret_basic
//! with the endpoint discovered from the issuer, client_secret_post, and private_key_jwt (RFC 7523),
//! each checked by the library itself. Then who may call it: a user's token, however valid, is no
//! caller's credential, and a caller narrows a destination's scopes but never widens them.

use baton_envoy::broker::pb::delegation_broker_client::DelegationBrokerClient;
use baton_test_support::*;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

async fn exchange(
    client: &mut DelegationBrokerClient<tonic::transport::Channel>,
    token: &str,
    destination: &str,
    scopes: &[&str],
) -> Result<baton_envoy::broker::pb::ExchangeResponse, tonic::Status> {
    broker_exchange(client, None, token, destination, scopes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_exchanges_with_every_client_authentication_method() {
    let scratch = Scratch::new(BATON_BIN, "broker");
    let (pem, jwks) = client_key();
    let options = PeerOptions {
        env: vec![("JWT_CLIENT_JWKS", jwks)],
        ..Default::default()
    };
    let service = TokenService::start_with(Peer::OidcProvider, &scratch, options).await;
    let secret = scratch.write("post-secret", CLIENT_SECRET);
    let key = scratch.write("client-key.pem", &pem);
    let methods = [
        (
            "discovered endpoint, client_secret_basic",
            basic_auth_to(&scratch, &format!("issuer: {}", service.issuer)),
        ),
        (
            "client_secret_post",
            format!(
                "  token_endpoint: {}\n  client_id: {CLIENT_ID}\n  auth:\n    method: client_secret_post\n    secret_file: {}",
                service.token_endpoint,
                secret.display()
            ),
        ),
        (
            "private_key_jwt",
            format!(
                "  token_endpoint: {}\n  client_id: {CLIENT_ID}-jwt\n  auth:\n    method: private_key_jwt\n    key_file: {}\n    key_id: baton-test",
                service.token_endpoint,
                key.display()
            ),
        ),
    ];
    let user = service.mint("alice", "orders.read").await;
    for (method, token_service) in methods {
        let baton = Baton::start_with(&scratch, &token_service, "broker: { callers: any }\n").await;
        let mut client = broker_client(baton.grpc).await;

        let issued = exchange(&mut client, &user, "orders", &[])
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let claims = service.verify(&issued.access_token).await;
        assert_eq!(audiences(&claims), [ORDERS], "{method}");
        assert_eq!(claims["sub"], "alice", "{method}");
        assert_eq!(claims["scope"], "orders.read", "{method}");
        assert_eq!(issued.token_type, "Bearer");
        assert!(issued.expires_at > 0, "{method}");

        // A caller may not widen the destination's scopes.
        let wider = exchange(&mut client, &user, "orders", &["orders.read", "orders.write"])
            .await
            .expect_err("wider scopes");
        assert_eq!(wider.code(), tonic::Code::PermissionDenied, "{method}");
        assert!(wider.message().starts_with("scope_not_allowed"), "{}", wider.message());

        let refused = exchange(&mut client, &user, "nowhere", &[])
            .await
            .expect_err("unknown destination");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{method}");
        assert!(
            refused.message().starts_with("destination_not_configured"),
            "{}",
            refused.message()
        );
        let refused = exchange(&mut client, "bad token", "orders", &[])
            .await
            .expect_err("malformed");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(
            refused.message().starts_with("malformed_token"),
            "{}",
            refused.message()
        );
        let refused = exchange(&mut client, &user, "forbidden", &[])
            .await
            .expect_err("audience refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().starts_with("target_refused"), "{}", refused.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_token_never_authenticates_a_broker_caller() {
    let scratch = Scratch::new(BATON_BIN, "broker-callers");
    let g = GuardedBroker::start(&scratch).await;
    let mut client = g.client().await;
    let alice = g.token("alice", "frontend", r#"{"azp":"web-app"}"#, &[]).await;
    let worker = g
        .token("svc-batch", "baton-broker", r#"{"azp":"batch-worker"}"#, &[])
        .await;

    let issued = broker_exchange(&mut client, Some(&worker), &alice, "orders", &[])
        .await
        .expect("a workload's token is a caller's");
    assert_eq!(g.idp.verify(&issued.access_token).await["sub"], "alice");

    // Alice holds a valid token of a trusted issuer, and with it asks for her own token elsewhere.
    for (what, caller) in [
        ("her own token", alice.clone()),
        (
            "a user token with the broker's audience",
            g.token("alice", "baton-broker", r#"{"azp":"web-app"}"#, &[]).await,
        ),
        (
            "the broker's audience, no client id",
            g.token("alice", "baton-broker", "{}", &[]).await,
        ),
        (
            "a listed client, a user's audience",
            g.token("alice", "frontend", r#"{"azp":"batch-worker"}"#, &[]).await,
        ),
    ] {
        let refused = broker_exchange(&mut client, Some(&caller), &alice, "orders", &[])
            .await
            .expect_err(what);
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{what}");
        assert!(
            refused.message().starts_with("caller_not_workload"),
            "{what}: {}",
            refused.message()
        );
    }
    let expired = g
        .token(
            "svc-batch",
            "baton-broker",
            r#"{"azp":"batch-worker"}"#,
            &[("expires_in", "-120")],
        )
        .await;
    let refused = broker_exchange(&mut client, Some(&expired), &alice, "orders", &[])
        .await
        .expect_err("expired caller");
    assert!(
        refused.message().starts_with("subject_token_expired"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_caller_narrows_scopes_and_never_widens_them() {
    let scratch = Scratch::new(BATON_BIN, "broker-scopes");
    let g = GuardedBroker::start(&scratch).await;
    let mut client = g.client().await;
    let alice = g.token("alice", "frontend", "{}", &[]).await;
    let worker = g
        .token("svc-batch", "baton-broker", r#"{"azp":"batch-worker"}"#, &[])
        .await;

    let own = broker_exchange(&mut client, Some(&worker), &alice, "billing", &[])
        .await
        .expect("own scopes");
    assert_eq!(g.idp.verify(&own.access_token).await["scope"], "invoices.read");
    let both = broker_exchange(
        &mut client,
        Some(&worker),
        &alice,
        "billing",
        &["invoices.write", "invoices.read"],
    )
    .await
    .expect("allowed scopes");
    assert_eq!(
        g.idp.verify(&both.access_token).await["scope"],
        "invoices.read invoices.write"
    );
    // Another set of scopes is another exchange; the same set, however written, is the same one.
    assert_ne!(both.access_token, own.access_token);
    let again = broker_exchange(
        &mut client,
        Some(&worker),
        &alice,
        "billing",
        &["invoices.read", "invoices.write", "invoices.read"],
    )
    .await
    .expect("the same set");
    assert_eq!(again.access_token, both.access_token);

    for (destination, scopes) in [
        ("orders", &["orders.write"][..]),
        ("orders", &["orders.read", "orders.write"]),
        ("billing", &["invoices.read invoices.write"]),
        ("billing", &["Invoices.Write"]),
        ("billing", &["invoices.admin"]),
    ] {
        let refused = broker_exchange(&mut client, Some(&worker), &alice, destination, scopes)
            .await
            .expect_err("escalation");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{scopes:?}");
        assert!(
            refused.message().starts_with("scope_not_allowed"),
            "{scopes:?}: {}",
            refused.message()
        );
    }
}

/// Without a `broker:` section the broker API answers no one, whatever they present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_is_off_without_its_section() {
    let scratch = Scratch::new(BATON_BIN, "broker-off");
    let baton = Baton::start(&scratch, "http://127.0.0.1:9/token", "").await;
    let mut client = broker_client(baton.grpc).await;
    let refused = exchange(&mut client, "a.b.c", "orders", &[]).await.expect_err("off");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().starts_with("broker_disabled"),
        "{}",
        refused.message()
    );
}
