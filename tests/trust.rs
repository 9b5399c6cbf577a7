//! Baton as a control point, through the real Envoy: it verifies the subject token itself (trusted
//! issuer, JWKS, algorithm, times, audience), applies each destination's delegation policy, and
//! presents the workload's own token as actor. `baton sts` is the issuer, the token service and the
//! source of the workload's token.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_test_support::*;
use futures_util::future::join_all;
use serde_json::Value;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

const WORKLOAD: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

struct Trust {
    idp: TokenService,
    envoy: Envoy,
    baton: Baton,
    _upstream: Upstream,
    _scratch: Scratch,
}

impl Trust {
    async fn start(name: &str) -> Self {
        let scratch = Scratch::new(BATON_BIN, name);
        let idp = TokenService::start(Peer::BatonSts, &scratch).await;
        let actor = idp.mint_with(&[("sub", "svc-frontend"), ("aud", "baton-sts")]).await;
        let actor_file = scratch.write("actor-token", &actor);
        let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", idp.token_endpoint));
        let body = format!(
            r#"token_service:
{token_service}
trusted_issuers:
  - issuer: {issuer}
    audiences: [frontend]
    jwks_min_refetch: 2s
workload:
  identity: {WORKLOAD}
actor:
  token_file: {actor_file}
broker:
  caller_client_ids: [batch-job]
destinations:
  - name: orders
    hosts: [orders.example]
    audience: {ORDERS}
    scopes: [orders.read, orders.write]
    policy:
      scopes_from_subject: intersect
      methods: [GET, POST]
      paths: ["/orders/", "/items/*/price"]
      require_claims: {{ tenant: acme }}
      max_delegation_depth: 1
  - name: billing
    hosts: [billing.example]
    audience: {BILLING}
    policy:
      allowed_sources: ["spiffe://cluster.local/ns/billing/*"]
  - name: cel
    hosts: [cel.example]
    audience: {BILLING}
    policy:
      when: 'subject.tenant == "acme" && request.method == "GET"'
  - name: direct
    hosts: [direct.example]
    audience: {BILLING}
    actor: none
    policy:
      max_delegation_depth: 0
  - name: deep
    hosts: [deep.example]
    audience: {BILLING}
    policy:
      max_delegation_depth: 0
"#,
            issuer = idp.issuer,
            actor_file = actor_file.display()
        );
        let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
        let upstream = Upstream::start().await;
        let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
        Self {
            idp,
            envoy,
            baton,
            _upstream: upstream,
            _scratch: scratch,
        }
    }

    /// A user token from the trusted issuer, for this workload (`aud: frontend`).
    async fn user(&self, sub: &str, extra: &[(&str, &str)]) -> String {
        let mut form = vec![
            ("sub", sub),
            ("aud", "frontend"),
            ("scope", "orders.read profile"),
            ("claims", r#"{"tenant":"acme"}"#),
        ];
        for (k, v) in extra {
            form.retain(|(key, _)| key != k);
            form.push((k, v));
        }
        self.idp.mint_with(&form).await
    }

    async fn get(&self, host: &str, path: &str, token: &str) -> Reply {
        send(&self.envoy, host, path, Some(&bearer(token))).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_subjects_policy_and_actor_through_envoy() {
    let t = Trust::start("trust").await;
    let alice = t.user("alice", &[]).await;

    // The happy path: verified, policy passed, scope narrowed to what alice holds, workload as actor.
    let reply = t.get("orders.example", "/orders/7", &alice).await;
    let issued = t.idp.verify(reply.upstream_token()).await;
    assert_eq!(audiences(&issued), [ORDERS]);
    assert_eq!(issued["sub"], "alice");
    assert_eq!(issued["scope"], "orders.read", "scopes_from_subject: intersect");
    assert_eq!(
        issued["act"]["sub"], "svc-frontend",
        "the workload is the actor: {issued}"
    );

    // Cache isolation: the same user towards another destination gets another token.
    let cel = t.get("cel.example", "/", &alice).await;
    assert_ne!(cel.upstream_token(), reply.upstream_token());
    assert_eq!(audiences(&t.idp.verify(cel.upstream_token()).await), [BILLING]);

    // Verification failures: each with its own reason, none reaches the token service.
    let before = t.idp.exchanges().await;
    let good = jwt_claims(&alice).expect("a JWT");
    let sig = alice.rsplit('.').next().expect("signature");
    let kid = serde_json::from_slice::<Value>(
        &URL_SAFE_NO_PAD
            .decode(alice.split('.').next().expect("h"))
            .expect("b64"),
    )
    .expect("header")["kid"]
        .clone();
    let mut tampered = good.clone();
    tampered["sub"] = "mallory".into();
    let cases = [
        (
            forge_jwt(r#"{"alg":"none"}"#, &good.to_string(), ""),
            "subject_token_unsigned",
        ),
        (
            hs256_with_public_key(&t, &good).await,
            "subject_token_algorithm_not_allowed",
        ),
        (
            forge_jwt(&format!(r#"{{"alg":"ES256","kid":{kid}}}"#), &tampered.to_string(), sig),
            "subject_token_signature_invalid",
        ),
        (
            t.user("alice", &[("expires_in", "-120")]).await,
            "subject_token_expired",
        ),
        (
            t.user("alice", &[("not_before", "600")]).await,
            "subject_token_not_yet_valid",
        ),
        (
            t.user("alice", &[("aud", "someone-else")]).await,
            "subject_token_audience_mismatch",
        ),
        ("opaque-not-a-jwt".to_owned(), "subject_token_opaque"),
    ];
    for (token, reason) in cases {
        let reply = t.get("orders.example", "/orders/1", &token).await;
        assert_eq!((reply.status, reply.reason()), (401, reason), "{:?}", reply.body);
    }
    assert_eq!(
        t.idp.exchanges().await,
        before,
        "a refused subject token reached the token service"
    );

    // Another issuer, even a real one, is not trusted.
    let scratch = Scratch::new(BATON_BIN, "other-issuer");
    let other = TokenService::start(Peer::BatonSts, &scratch).await;
    let foreign = other.mint_with(&[("sub", "alice"), ("aud", "frontend")]).await;
    let reply = t.get("orders.example", "/orders/1", &foreign).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_issuer_untrusted"),
        "{:?}",
        reply.body
    );

    // Policy: each rule refuses with its own reason.
    let cases = [
        (
            "orders.example",
            "/orders/1",
            t.user("bob", &[("claims", r#"{"tenant":"evil"}"#)]).await,
            "claim_requirement_failed",
        ),
        ("orders.example", "/admin", alice.clone(), "path_not_allowed"),
        (
            "orders.example",
            "/orders/1",
            t.user("carol", &[("scope", "profile")]).await,
            "scope_not_held",
        ),
        ("billing.example", "/", alice.clone(), "source_not_allowed"),
        (
            "cel.example",
            "/",
            t.user("dave", &[("claims", r#"{"tenant":"other"}"#)]).await,
            "policy_expression_false",
        ),
        (
            "cel.example",
            "/",
            t.user("erin", &[("claims", r#"{"region":"eu"}"#)]).await,
            "policy_expression_error",
        ),
        ("deep.example", "/", alice.clone(), "delegation_too_deep"),
    ];
    for (host, path, token, reason) in cases {
        let reply = t.get(host, path, &token).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (403, reason),
            "{host}{path}: {:?}",
            reply.body
        );
    }
    let reply = t.get("orders.example", "/items/9/price", &alice).await;
    assert_eq!(reply.status, 200, "a glob path is allowed: {:?}", reply.body);
    // Without the actor, a depth of 0 is met.
    let direct = t.get("direct.example", "/", &alice).await;
    assert!(t.idp.verify(direct.upstream_token()).await.get("act").is_none());

    // The subject named who may act for it, and it is not this workload: the token service refuses.
    let reply = t
        .get(
            "orders.example",
            "/orders/1",
            &t.user("frank", &[("may_act", "svc-other")]).await,
        )
        .await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_rejected"),
        "{:?}",
        reply.body
    );
}

/// HS256 "signed" with the issuer's public key as the HMAC secret: the classic algorithm confusion.
async fn hs256_with_public_key(t: &Trust, claims: &Value) -> String {
    let jwks: Value = serde_json::from_slice(
        &http()
            .get(&t.idp.jwks_uri)
            .send()
            .await
            .expect("jwks")
            .bytes()
            .await
            .expect("body"),
    )
    .expect("json");
    let public = jwks["keys"][0].to_string();
    let key = jsonwebtoken::EncodingKey::from_secret(public.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), claims, &key).expect("sign")
}

/// An unknown kid makes Baton look for a rotated key, at a bounded rate: a flood of random kids costs
/// the issuer one JWKS fetch per `jwks_min_refetch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_is_rate_limited() {
    let t = Trust::start("kid-flood").await;
    let alice = t.user("alice", &[]).await;
    let reply = t.get("orders.example", "/orders/1", &alice).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // Past the minimum interval since the start-up fetch, so the flood may cause one fetch.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = t.idp.stat("jwks").await;
    let good = jwt_claims(&alice).expect("a JWT");
    let sig = alice.rsplit('.').next().expect("signature").to_owned();
    let started = std::time::Instant::now();
    let replies = join_all((0..50).map(|i| {
        let token = forge_jwt(
            &format!(r#"{{"alg":"ES256","kid":"random-{i}"}}"#),
            &good.to_string(),
            &sig,
        );
        let t = &t;
        async move { t.get("orders.example", "/orders/1", &token).await }
    }))
    .await;
    let elapsed = started.elapsed();
    assert!(
        replies
            .iter()
            .all(|r| (r.status, r.reason()) == (401, "subject_token_key_unknown")),
        "{:?}",
        replies[0].body
    );
    let fetched = t.idp.stat("jwks").await - before;
    // One fetch to look for a rotated key, and at most one more per 2 s (`jwks_min_refetch`) the
    // flood lasted on a loaded machine.
    let allowed = 1 + elapsed.as_secs() / 2;
    assert!(
        (1..=allowed).contains(&fetched),
        "50 unknown kids over {elapsed:?} caused {fetched} JWKS fetches"
    );
}

/// Keys cached: verification keeps working while the issuer is unreachable. No keys ever fetched:
/// 401 `issuer_keys_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_jwks_endpoint() {
    let t = Trust::start("jwks-down").await;
    let alice = t.user("alice", &[]).await;
    let bob = t.user("bob", &[]).await;
    assert_eq!(t.get("orders.example", "/orders/1", &alice).await.status, 200);
    t.idp.signal("STOP");
    // Bob's token verifies against the cached keys; only the exchange then times out.
    let reply = t.get("orders.example", "/orders/1", &bob).await;
    t.idp.signal("CONT");
    assert_eq!(
        (reply.status, reply.reason()),
        (503, "token_service_timeout"),
        "{:?}",
        reply.body
    );
    assert_eq!(
        t.get("orders.example", "/orders/1", &bob).await.status,
        200,
        "recovers once the issuer is back"
    );

    let scratch = Scratch::new(BATON_BIN, "no-keys");
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", t.idp.token_endpoint));
    let body = format!(
        "token_service:\n{token_service}\ntrusted_issuers:\n  - issuer: {}\n    jwks_uri: http://127.0.0.1:{}/jwks\n    audiences: [frontend]\ndestinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: {ORDERS}\n",
        t.idp.issuer,
        free_port()
    );
    let baton = Baton::start_raw(&scratch, &body, "info").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&alice))).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "issuer_keys_unavailable"),
        "{:?}",
        reply.body
    );
}

/// The same actor rules against panva's oidc-provider: the workload's token becomes `act`, and a
/// subject whose `may_act` names another workload is refused by the token service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_and_may_act_with_oidc_provider() {
    let scratch = Scratch::new(BATON_BIN, "actor-oidc");
    let service = TokenService::start(Peer::OidcProvider, &scratch).await;
    let workload = service.mint("svc-frontend", "").await;
    let actor_file = scratch.write("actor-token", &workload);
    let extra = format!(
        "actor:\n  token_file: {}\n  token_type: urn:ietf:params:oauth:token-type:access_token\n",
        actor_file.display()
    );
    let baton = Baton::start(&scratch, &service.token_endpoint, &extra).await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;

    let alice = service.mint("alice", "orders.read").await;
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&alice))).await;
    let claims = service.verify(reply.upstream_token()).await;
    assert_eq!(
        (claims["sub"].as_str(), claims["act"]["sub"].as_str()),
        (Some("alice"), Some("svc-frontend")),
        "{claims}"
    );

    let bound = service
        .mint_with(&[("sub", "bob"), ("scope", "orders.read"), ("may_act", "svc-other")])
        .await;
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&bound))).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_rejected"),
        "{:?}",
        reply.body
    );
    let allowed = service
        .mint_with(&[("sub", "carol"), ("scope", "orders.read"), ("may_act", "svc-frontend")])
        .await;
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&allowed))).await;
    assert_eq!(
        service.verify(reply.upstream_token()).await["act"]["sub"],
        "svc-frontend"
    );
}

/// The broker API authenticates its caller with a verified bearer token, applies the destination's
/// policy with the caller as `source`, and re-verifies the user's token at call time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_authenticates_callers_and_applies_policy() {
    let t = Trust::start("broker-auth").await;
    let mut client = broker_client(t.baton.grpc).await;
    let alice = t.user("alice", &[]).await;
    // A workload's token: it names its client (`azp`), which the broker's caller rule lists.
    let job = t.user("batch-job", &[("claims", r#"{"azp":"batch-job"}"#)]).await;
    let call =
        |subject: &str, destination: &str, caller: Option<&str>| broker_request(caller, subject, destination, &[]);
    let refused = client
        .exchange(call(&alice, "direct", None))
        .await
        .expect_err("no caller token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().starts_with("caller_unauthenticated"),
        "{}",
        refused.message()
    );
    let refused = client
        .exchange(call(&alice, "direct", Some("opaque")))
        .await
        .expect_err("opaque caller token");
    assert!(
        refused.message().starts_with("subject_token_opaque"),
        "{}",
        refused.message()
    );

    let issued = client
        .exchange(call(&alice, "direct", Some(&job)))
        .await
        .expect("authenticated caller")
        .into_inner();
    let claims = t.idp.verify(&issued.access_token).await;
    assert_eq!(
        (claims["sub"].as_str(), audiences(&claims)),
        (Some("alice"), vec![BILLING.to_owned()])
    );

    // The caller is the policy's source: batch-job is not a billing workload.
    let refused = client
        .exchange(call(&alice, "billing", Some(&job)))
        .await
        .expect_err("source");
    assert!(
        refused.message().starts_with("source_not_allowed"),
        "{}",
        refused.message()
    );
    // No HTTP request behind a broker call: method rules refuse.
    let refused = client
        .exchange(call(&alice, "orders", Some(&job)))
        .await
        .expect_err("method");
    assert!(
        refused.message().starts_with("method_not_allowed"),
        "{}",
        refused.message()
    );
    // The user's token is judged at call time: an expired one is refused.
    let stale = t.user("alice", &[("expires_in", "-120")]).await;
    let refused = client
        .exchange(call(&stale, "direct", Some(&job)))
        .await
        .expect_err("expired subject");
    assert!(
        refused.message().starts_with("subject_token_expired"),
        "{}",
        refused.message()
    );
}

/// The actor token obtained by Baton itself with client_credentials from the destination's token
/// service: `act` names Baton's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_by_client_credentials() {
    let scratch = Scratch::new(BATON_BIN, "actor-cc");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start(&scratch, &service.token_endpoint, "actor:\n  client_credentials: {}\n").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    for user in ["alice", "bob"] {
        let token = service.mint(user, "orders.read").await;
        let reply = send(&envoy, "orders.example", "/", Some(&bearer(&token))).await;
        let claims = service.verify(reply.upstream_token()).await;
        assert_eq!(
            (claims["sub"].as_str(), claims["act"]["sub"].as_str()),
            (Some(user), Some(CLIENT_ID)),
            "{claims}"
        );
    }
}

/// Opaque subject tokens judged by RFC 7662 introspection (`baton sts /introspect`): an active one is
/// delegated and its claims feed the policy; an unknown one is `subject_token_inactive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_by_introspection() {
    let scratch = Scratch::new(BATON_BIN, "introspection");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
    let body = format!(
        "token_service:\n{token_service}\nopaque_tokens: introspect\nintrospection:\n  endpoint: {}/introspect\ndestinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: {ORDERS}\n    policy:\n      require_claims: {{ tenant: acme }}\n",
        service.issuer
    );
    let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;

    let opaque = service
        .mint_with(&[("sub", "alice"), ("opaque", "true"), ("claims", r#"{"tenant":"acme"}"#)])
        .await;
    assert!(opaque.starts_with("opq_") && !opaque.contains('.'), "an opaque token");
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&opaque))).await;
    assert_eq!(service.verify(reply.upstream_token()).await["sub"], "alice");
    let other_tenant = service
        .mint_with(&[("sub", "bob"), ("opaque", "true"), ("claims", r#"{"tenant":"evil"}"#)])
        .await;
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&other_tenant))).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, "claim_requirement_failed"),
        "{:?}",
        reply.body
    );
    let reply = send(&envoy, "orders.example", "/", Some("Bearer opq_never-issued")).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_inactive"),
        "{:?}",
        reply.body
    );
}
