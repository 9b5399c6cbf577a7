//! Baton's own gRPC API (`baton.v1.DelegationBroker/Exchange`) against panva's oidc-provider, once
//! for each way Baton authenticates to a token service and finds its endpoint: client_secret_basic
//! with the endpoint discovered from the issuer, client_secret_post, and private_key_jwt (RFC 7523),
//! each checked by the library itself.

mod support;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use baton::broker::pb::ExchangeRequest;
use baton::broker::pb::delegation_broker_client::DelegationBrokerClient;
use support::*;

/// A P-256 key: (PKCS#8 PEM for Baton, public JWKS JSON for the token service).
fn client_key() -> (String, String) {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
    let der = pair.to_pkcs8v1().expect("pkcs8");
    let b64 = STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let point = pair.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "baton-test", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    }]});
    (pem, jwks.to_string())
}

async fn exchange(
    client: &mut DelegationBrokerClient<tonic::transport::Channel>,
    token: &str,
    destination: &str,
    scopes: &[&str],
) -> Result<baton::broker::pb::ExchangeResponse, tonic::Status> {
    let request = ExchangeRequest {
        subject_token: token.to_owned(),
        destination: destination.to_owned(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    };
    client.exchange(request).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_exchanges_with_every_client_authentication_method() {
    let scratch = Scratch::new("broker");
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
        let mut client = DelegationBrokerClient::connect(format!("http://127.0.0.1:{}", baton.grpc))
            .await
            .expect("connect to the broker");

        let issued = exchange(&mut client, &user, "orders", &[])
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let claims = service.verify(&issued.access_token).await;
        assert_eq!(audiences(&claims), [ORDERS], "{method}");
        assert_eq!(claims["sub"], "alice", "{method}");
        assert_eq!(claims["scope"], "orders.read", "{method}");
        assert_eq!(issued.token_type, "Bearer");
        assert!(issued.expires_at > 0, "{method}");

        // Other scopes are another exchange, never the cached token of the configured ones.
        let wider = exchange(&mut client, &user, "orders", &["orders.read", "orders.write"])
            .await
            .expect("scopes");
        assert_ne!(wider.access_token, issued.access_token, "{method}");
        assert_eq!(
            service.verify(&wider.access_token).await["scope"],
            "orders.read orders.write"
        );

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
