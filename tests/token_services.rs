//! How Baton talks to its token services, against real ones: mutual TLS (RFC 8705
//! `tls_client_auth`) against panva's oidc-provider serving HTTPS and requiring a client
//! certificate; a client assertion read from a file that rotates (workload identity federation),
//! checked by the same library; Microsoft Entra ID's on-behalf-of profile against that library's
//! JWT-bearer grant (test glue speaking Entra's dialect); and two `baton sts` instances serving
//! different destinations through the real Envoy.

use std::path::PathBuf;

use baton_envoy::broker::pb::ExchangeRequest;
use baton_envoy::broker::pb::delegation_broker_client::DelegationBrokerClient;
use baton_test_support::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

type Client = DelegationBrokerClient<tonic::transport::Channel>;

async fn broker(baton: &Baton) -> Client {
    DelegationBrokerClient::connect(format!("http://127.0.0.1:{}", baton.grpc))
        .await
        .expect("connect to the broker")
}

async fn exchange(
    client: &mut Client,
    token: &str,
    destination: &str,
) -> Result<baton_envoy::broker::pb::ExchangeResponse, tonic::Status> {
    let request = ExchangeRequest {
        subject_token: token.to_owned(),
        destination: destination.to_owned(),
        scopes: Vec::new(),
    };
    client.exchange(request).await.map(tonic::Response::into_inner)
}

/// A refusal's gRPC code and reason code (the start of its message).
fn refusal(result: Result<baton_envoy::broker::pb::ExchangeResponse, tonic::Status>) -> (tonic::Code, String) {
    let status = result.expect_err("refused");
    let reason = status.message().split(':').next().unwrap_or_default().to_owned();
    (status.code(), reason)
}

// === Test certificates ===

/// A CA, a server certificate for 127.0.0.1 and a client certificate it issued, and a client
/// certificate from another CA with the same subject: PEM files in the scratch directory.
struct Pki {
    ca_pem: String,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("ca cert");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(issuer: &Issuer<'_, KeyPair>, names: &[&str], cn: &str) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("cert");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new(scratch: &Scratch, client_cn: &str) -> Self {
        let (ca_pem, issuer) = ca("baton test CA");
        let (server_cert, server_key) = leaf(&issuer, &["127.0.0.1", "localhost"], "token service");
        let (client_cert, client_key) = leaf(&issuer, &[], client_cn);
        let (_, rogue_issuer) = ca("another CA");
        let (rogue_cert, rogue_key) = leaf(&rogue_issuer, &[], client_cn);
        Self {
            ca: scratch.write("ca.pem", &ca_pem),
            ca_pem,
            server_cert: scratch.write("server.pem", &server_cert),
            server_key: scratch.write("server-key.pem", &server_key),
            client_cert: scratch.write("client.pem", &client_cert),
            client_key: scratch.write("client-key.pem", &client_key),
            rogue_cert: scratch.write("rogue.pem", &rogue_cert),
            rogue_key: scratch.write("rogue-key.pem", &rogue_key),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_client_authentication_and_the_entra_on_behalf_of_profile() {
    let scratch = Scratch::new(BATON_BIN, "mtls");
    let client_id = format!("{CLIENT_ID}-mtls");
    let pki = Pki::new(&scratch, &client_id);
    let path = |p: &PathBuf| p.display().to_string();
    let options = PeerOptions {
        env: vec![
            ("TLS_CERT_FILE", path(&pki.server_cert)),
            ("TLS_KEY_FILE", path(&pki.server_key)),
            ("TLS_CLIENT_CA_FILE", path(&pki.ca)),
        ],
        tls_root: Some(pki.ca_pem.clone()),
        ..Default::default()
    };
    let service = TokenService::start_with(Peer::OidcProvider, &scratch, options).await;
    assert!(
        service.token_endpoint.starts_with("https://"),
        "{}",
        service.token_endpoint
    );

    let endpoint = &service.token_endpoint;
    let tls = |cert: &PathBuf, key: &PathBuf| {
        format!(
            "{{method: tls_client_auth, cert_file: '{}', key_file: '{}'}}",
            path(cert),
            path(key)
        )
    };
    let mtls = tls(&pki.client_cert, &pki.client_key);
    let rogue = tls(&pki.rogue_cert, &pki.rogue_key);
    let ca = path(&pki.ca);
    let config = format!(
        r#"broker: {{ callers: any }}
token_services:
  mtls: {{token_endpoint: "{endpoint}", client_id: {client_id}, ca_file: '{ca}', auth: {mtls}, timeout: 2s}}
  obo: {{token_endpoint: "{endpoint}", client_id: {client_id}, ca_file: '{ca}', profile: entra_obo, auth: {mtls}, timeout: 2s}}
  rogue: {{token_endpoint: "{endpoint}", client_id: {client_id}, ca_file: '{ca}', auth: {rogue}, timeout: 2s}}
  no-certificate: {{token_endpoint: "{endpoint}", client_id: {client_id}, ca_file: '{ca}', auth: {{method: none}}, timeout: 2s}}
  untrusted-server: {{token_endpoint: "{endpoint}", client_id: {client_id}, auth: {mtls}, timeout: 2s, retries: 0}}
destinations:
  - {{name: orders, audience: "{ORDERS}", scopes: [orders.read], token_service: mtls}}
  - {{name: orders-obo, audience: "{ORDERS}", token_service: obo}}
  - {{name: billing-obo, audience: "{BILLING}", scopes: ["{BILLING}/invoices.read"], token_service: obo}}
  - {{name: forbidden-obo, audience: "{FORBIDDEN}", token_service: obo}}
  - {{name: rogue, audience: "{ORDERS}", token_service: rogue}}
  - {{name: no-certificate, audience: "{ORDERS}", token_service: no-certificate}}
  - {{name: untrusted-server, audience: "{ORDERS}", token_service: untrusted-server}}
"#
    );
    let baton = Baton::start_raw(&scratch, &config, "baton=debug,info").await;
    let mut client = broker(&baton).await;
    // Entra only lets the app a user token was issued to use it on the user's behalf.
    let user = service
        .mint_with(&[("sub", "alice"), ("scope", "orders.read"), ("aud", &client_id)])
        .await;

    // RFC 8693 over mutual TLS: the library authenticated the client by its certificate.
    let issued = exchange(&mut client, &user, "orders").await.expect("mtls exchange");
    let claims = service.verify(&issued.access_token).await;
    assert_eq!(audiences(&claims), [ORDERS]);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"].as_str(), Some(client_id.as_str()));
    assert_eq!(service.exchanges().await, 1);

    // Entra on-behalf-of, authenticated the same way: `<resource>/.default` when no scope is set...
    let issued = exchange(&mut client, &user, "orders-obo").await.expect("obo");
    let claims = service.verify(&issued.access_token).await;
    assert_eq!(
        (audiences(&claims), &claims["sub"]),
        (vec![ORDERS.to_owned()], &"alice".into())
    );
    assert_eq!(claims["scope"], serde_json::Value::Null, "{claims}");
    assert_eq!(issued.issued_token_type, "", "Entra's answer has no issued_token_type");
    assert_eq!(issued.scope, format!("{ORDERS}/.default"));
    // ...and the configured scopes when there are some.
    let issued = exchange(&mut client, &user, "billing-obo")
        .await
        .expect("obo with scopes");
    let claims = service.verify(&issued.access_token).await;
    assert_eq!(audiences(&claims), [BILLING]);
    assert_eq!(claims["scope"], "invoices.read");
    assert_eq!(service.stat("on_behalf_of").await, 2);
    assert_eq!(service.exchanges().await, 1, "no token exchange for the OBO profile");
    // Entra's refusals keep their meaning: an unknown resource, a token issued to another app.
    assert_eq!(
        refusal(exchange(&mut client, &user, "forbidden-obo").await),
        (tonic::Code::PermissionDenied, "target_refused".into())
    );
    let someone_elses = service.mint("alice", "orders.read").await;
    assert_eq!(
        refusal(exchange(&mut client, &someone_elses, "orders-obo").await),
        (tonic::Code::Unauthenticated, "subject_token_rejected".into())
    );

    // The token service requires the certificate: one from another CA, or none, is refused.
    for destination in ["rogue", "no-certificate"] {
        assert_eq!(
            refusal(exchange(&mut client, &user, destination).await),
            (tonic::Code::Unavailable, "token_service_client_rejected".into()),
            "{destination}"
        );
    }
    // Without `ca_file`, the token service's certificate is not trusted: no connection.
    assert_eq!(
        refusal(exchange(&mut client, &user, "untrusted-server").await),
        (tonic::Code::Unavailable, "token_service_unavailable".into())
    );
    let log = std::fs::read_to_string(scratch.0.join("baton.log")).expect("baton log");
    assert!(
        log.contains("invalid peer certificate"),
        "the unreachable error should say why (an untrusted certificate)"
    );
    assert!(!log.contains(&user), "the user's token was logged");
}

// === Client assertion from a file ===

/// A P-256 key: (PEM for signing assertions, the public JWKS the token service trusts).
fn assertion_key() -> (jsonwebtoken::EncodingKey, String) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = KeyPair::generate().expect("key");
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec key");
    let point = key.public_key_raw();
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "workload", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    }]});
    (signing, jwks.to_string())
}

/// What a projected service-account token stands in for: a JWT someone else signed for Baton's
/// client, for the token service, with a lifetime and an id.
fn signed_assertion(key: &jsonwebtoken::EncodingKey, client_id: &str, audience: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": client_id, "sub": client_id, "aud": audience,
        "iat": now, "exp": now + 600, "jti": format!("{now}-{}", rand::random::<u64>()),
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("workload".into());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_assertion_file_is_sent_and_re_read_when_it_rotates() {
    let scratch = Scratch::new(BATON_BIN, "assertion-file");
    let (key, jwks) = assertion_key();
    let options = PeerOptions {
        env: vec![("JWT_CLIENT_JWKS", jwks)],
        ..Default::default()
    };
    let service = TokenService::start_with(Peer::OidcProvider, &scratch, options).await;
    let client_id = format!("{CLIENT_ID}-jwt");
    let first = signed_assertion(&key, &client_id, &service.issuer);
    let file = scratch.write("sa-token", &first);
    let token_service = format!(
        "  token_endpoint: {}\n  client_id: {client_id}\n  auth:\n    method: jwt_bearer_assertion_file\n    assertion_file: {}\n  timeout: 2s",
        service.token_endpoint,
        file.display()
    );
    let baton = Baton::start_with(&scratch, &token_service, "broker: { callers: any }\n").await;
    let mut client = broker(&baton).await;

    let alice = service.mint("alice", "orders.read").await;
    let issued = exchange(&mut client, &alice, "orders")
        .await
        .expect("assertion accepted");
    let claims = service.verify(&issued.access_token).await;
    assert_eq!(
        (audiences(&claims), &claims["sub"]),
        (vec![ORDERS.to_owned()], &"alice".into())
    );
    assert_eq!(claims["client_id"].as_str(), Some(client_id.as_str()));

    // oidc-provider accepts an assertion's `jti` once (RFC 7523 lets a server refuse replays), so
    // the unchanged file is refused now: proof that Baton sent the file's content, not its own.
    let bob = service.mint("bob", "orders.read").await;
    assert_eq!(
        refusal(exchange(&mut client, &bob, "orders").await),
        (tonic::Code::Unavailable, "token_service_client_rejected".into())
    );

    // Rotation as the kubelet does it (a new file swapped in atomically): picked up on next use.
    let second = signed_assertion(&key, &client_id, &service.issuer);
    let next = scratch.write("sa-token.next", &second);
    std::fs::rename(&next, &file).expect("rotate");
    let issued = exchange(&mut client, &bob, "orders")
        .await
        .expect("rotated assertion accepted");
    assert_eq!(service.verify(&issued.access_token).await["sub"], "bob");

    let log = std::fs::read_to_string(scratch.0.join("baton.log")).expect("baton log");
    for secret in [&first, &second] {
        assert!(!log.contains(secret.as_str()), "a client assertion was logged");
    }
}

// === Several token services ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_token_services_serve_different_destinations_through_envoy() {
    let scratch = Scratch::new(BATON_BIN, "two-services");
    let (scratch_east, scratch_west) = (Scratch::new(BATON_BIN, "sts-east"), Scratch::new(BATON_BIN, "sts-west"));
    let east = TokenService::start(Peer::BatonSts, &scratch_east).await;
    let west = TokenService::start(Peer::BatonSts, &scratch_west).await;
    let secret = scratch.write("client-secret", CLIENT_SECRET);
    let service = |endpoint: &str| {
        format!(
            "{{token_endpoint: \"{endpoint}\", client_id: {CLIENT_ID}, auth: {{method: client_secret_basic, secret_file: '{}'}}, timeout: 1s}}",
            secret.display()
        )
    };
    // `orders` and `orders-west` ask for the same thing (audience, scopes, client) from two
    // services: only the token service tells their cache entries apart.
    let config = format!(
        r#"token_services:
  east: {}
  west: {}
destinations:
  - {{name: orders, hosts: [orders.example], audience: "{ORDERS}", scopes: [orders.read], token_service: east}}
  - {{name: orders-west, hosts: [orders.west.example], audience: "{ORDERS}", scopes: [orders.read], token_service: west}}
  - {{name: billing, hosts: ["*.billing.example"], audience: "{BILLING}", token_service: west}}
"#,
        service(&east.token_endpoint),
        service(&west.token_endpoint)
    );
    let baton = Baton::start_raw(&scratch, &config, "baton=debug,info").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;

    let alice_east = east.mint("alice", "orders.read").await;
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&alice_east))).await;
    let claims = east.verify(reply.upstream_token()).await;
    assert_eq!(
        (audiences(&claims), &claims["sub"]),
        (vec![ORDERS.to_owned()], &"alice".into())
    );

    // The same subject token and target towards the other service is asked of that service (which
    // does not accept east's tokens), never served east's cached token.
    let reply = send(&envoy, "orders.west.example", "/", Some(&bearer(&alice_east))).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_rejected"),
        "{:?}",
        reply.body
    );

    let alice_west = west.mint("alice", "orders.read billing.read").await;
    let reply = send(&envoy, "orders.west.example", "/", Some(&bearer(&alice_west))).await;
    let claims = west.verify(reply.upstream_token()).await;
    assert_eq!(audiences(&claims), [ORDERS]);
    let reply = send(&envoy, "eu.billing.example", "/", Some(&bearer(&alice_west))).await;
    let billing = reply.upstream_token().to_owned();
    assert_eq!(audiences(&west.verify(&billing).await), [BILLING]);
    // The route names the destination; its token service follows: a cache hit here.
    let routed = send(
        &envoy,
        "routed.billing.example",
        "/routed/x",
        Some(&bearer(&alice_west)),
    )
    .await;
    assert_eq!(routed.upstream_token(), billing);

    assert_eq!(east.exchanges().await, 1, "east: orders only");
    assert_eq!(west.exchanges().await, 3, "west: the refused one, orders-west, billing");
}
