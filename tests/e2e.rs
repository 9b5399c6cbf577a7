//! Baton through the real Envoy against three token services: `baton sts`, panva's oidc-provider and
//! IdentityPython's idpyoidc, once through the ext_authz filter and once through the ext_proc filter
//! (request headers only), so both APIs are held to the same contract. Each suite starts its own
//! stack on free loopback ports and checks what the upstream receives.

use std::time::Duration;

use baton_test_support::*;
use futures_util::future::join_all;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// The whole delegation contract against one token service, through one Envoy API.
async fn delegation_suite(api: Api, peer: Peer) {
    let stack = Stack::start_for(BATON_BIN, api, peer, &format!("{api:?}-{peer:?}").to_lowercase()).await;
    let svc = &stack.service;

    // The upstream gets a token for itself, on behalf of the user, that is not the user's token.
    let alice = svc.mint("alice", "orders.read billing.read").await;
    let before = svc.exchanges().await;
    let reply = stack.get("orders.example", "/orders/1", Some(&bearer(&alice))).await;
    let issued = reply.upstream_token().to_owned();
    assert_ne!(issued, alice, "{peer:?}: the user's own token reached the destination");
    let claims = svc.verify(&issued).await;
    assert_eq!(audiences(&claims), [ORDERS], "{peer:?}: aud {claims}");
    assert_eq!(claims["sub"], "alice", "{peer:?}: sub {claims}");
    assert_eq!(reply.body["authorization_count"], 1);
    assert_eq!(
        svc.exchanges().await,
        before + 1,
        "{peer:?}: one exchange for the first request"
    );

    // A repeated request is served from the cache: same token, no second exchange.
    let again = stack.get("orders:8080", "/orders/2", Some(&bearer(&alice))).await;
    assert_eq!(again.upstream_token(), issued);
    assert_eq!(
        svc.exchanges().await,
        before + 1,
        "{peer:?}: a repeated request exchanged again"
    );

    // The route names the destination (context_extensions), on a host of its own (a route naming
    // a destination for a host it does not claim is refused: tests/adversarial/hosts.rs).
    let routed = stack
        .get("invoices.billing.example", "/routed/invoice", Some(&bearer(&alice)))
        .await;
    let routed_claims = svc.verify(routed.upstream_token()).await;
    assert_eq!(audiences(&routed_claims), [BILLING], "{peer:?}: {routed_claims}");
    // ...and a wildcard host pattern finds the same destination, from the cache.
    let wild = stack.get("eu.billing.example", "/x", Some(&bearer(&alice))).await;
    assert_eq!(wild.upstream_token(), routed.upstream_token());

    // 100 concurrent first requests for one user and destination: one exchange.
    let bob = svc.mint("bob", "orders.read").await;
    let before = svc.exchanges().await;
    let replies = join_all((0..100).map(|i| {
        let auth = bearer(&bob);
        let stack = &stack;
        async move { stack.get("orders.example", &format!("/burst/{i}"), Some(&auth)).await }
    }))
    .await;
    let first = replies[0].upstream_token().to_owned();
    assert!(
        replies.iter().all(|r| r.upstream_token() == first),
        "{peer:?}: all 100 got the same token"
    );
    assert_eq!(
        svc.exchanges().await,
        before + 1,
        "{peer:?}: 100 concurrent misses made more than one exchange"
    );
    assert_eq!(svc.verify(&first).await["sub"], "bob");

    // Unknown destination: the user's token is stripped, the request goes on.
    let stripped = stack.get("elsewhere.example", "/", Some(&bearer(&alice))).await;
    assert_eq!(
        stripped.upstream_authorization(),
        None,
        "{peer:?}: a user token leaked to an unlisted host"
    );

    // Bad subject tokens: 401 with the reason, before or by the token service.
    let cases: [(Option<String>, &str); 5] = [
        (None, "missing_token"),
        (Some("Bearer not a token".into()), "malformed_token"),
        (Some("Basic YWxpY2U6cHc=".into()), "unsupported_authorization_scheme"),
        (Some(bearer(&"a".repeat(17 * 1024))), "token_too_large"),
        (
            Some(bearer("eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.")),
            "subject_token_rejected",
        ),
    ];
    for (authorization, reason) in cases {
        let reply = stack.get("orders.example", "/", authorization.as_deref()).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (401, reason),
            "{peer:?}: {:?}",
            reply.body
        );
        // The same reply headers whichever API carried the denial.
        assert_eq!(reply.header("content-type"), Some("application/json"), "{api:?}");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "{api:?}: www-authenticate {challenge:?}"
        );
    }
    let expired = unsigned_jwt(r#"{"sub":"alice","exp":1000000000}"#);
    let reply = stack.get("orders.example", "/", Some(&bearer(&expired))).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_expired"),
        "{:?}",
        reply.body
    );

    // The token service refuses the audience: 403.
    let reply = stack.get("forbidden.example", "/", Some(&bearer(&alice))).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, "target_refused"),
        "{peer:?}: {:?}",
        reply.body
    );
    // A definite refusal is remembered for a few seconds (`cache.negative_ttl`): the same request
    // again does not reach the token service.
    let before = svc.exchanges().await;
    let again = stack.get("forbidden.example", "/", Some(&bearer(&alice))).await;
    assert_eq!(
        (again.status, again.reason()),
        (403, "target_refused"),
        "{peer:?}: {:?}",
        again.body
    );
    assert_eq!(
        svc.exchanges().await,
        before,
        "{peer:?}: a remembered refusal went to the token service again"
    );

    // The token service hangs (SIGSTOP): 503 within Baton's timeout, then recovers.
    let carol = svc.mint("carol", "orders.read").await;
    svc.signal("STOP");
    let reply = stack.get("orders.example", "/", Some(&bearer(&carol))).await;
    svc.signal("CONT");
    assert_eq!(
        (reply.status, reply.reason()),
        api.carries(503, "token_service_timeout"),
        "{peer:?}: {:?}",
        reply.body
    );
    let reply = stack.get("orders.example", "/", Some(&bearer(&carol))).await;
    assert_eq!(
        svc.verify(reply.upstream_token()).await["sub"],
        "carol",
        "{peer:?}: no recovery after a timeout"
    );

    // The token service is gone: 503, while cached tokens keep working.
    let dave = svc.mint("dave", "orders.read").await;
    let Stack {
        service,
        envoy,
        baton: _baton,
        upstream: _upstream,
        scratch: _scratch,
    } = stack;
    service.stop().await;
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&dave))).await;
    assert_eq!(
        (reply.status, reply.reason()),
        api.carries(503, "token_service_unavailable"),
        "{peer:?}: {:?}",
        reply.body
    );
    let cached = send(&envoy, "orders.example", "/", Some(&bearer(&alice))).await;
    assert_eq!(
        cached.upstream_token(),
        issued,
        "{peer:?}: a cached token stopped working"
    );
}

/// A JWT-shaped token with this payload and no valid signature.
fn unsigned_jwt(payload: &str) -> String {
    forge_jwt(r#"{"alg":"ES256"}"#, payload, "c2ln")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_with_baton_sts() {
    delegation_suite(Api::ExtAuthz, Peer::BatonSts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_with_oidc_provider() {
    delegation_suite(Api::ExtAuthz, Peer::OidcProvider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_with_idpyoidc() {
    delegation_suite(Api::ExtAuthz, Peer::Idpyoidc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_wasm_with_baton_sts() {
    delegation_suite(Api::Wasm, Peer::BatonSts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_ext_proc_with_baton_sts() {
    delegation_suite(Api::ExtProc, Peer::BatonSts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_ext_proc_with_oidc_provider() {
    delegation_suite(Api::ExtProc, Peer::OidcProvider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_ext_proc_with_idpyoidc() {
    delegation_suite(Api::ExtProc, Peer::Idpyoidc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_ext_authz_http_with_baton_sts() {
    delegation_suite(Api::ExtAuthzHttp, Peer::BatonSts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_through_envoy_ext_authz_http_with_oidc_provider() {
    delegation_suite(Api::ExtAuthzHttp, Peer::OidcProvider).await;
}

/// Faults only `baton sts` can inject on purpose: a token service slower than Baton's timeout, and
/// one that answers 500 (retried, then 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_service_faults_fail_closed_with_503() {
    for (faults, reason) in [
        (
            PeerOptions {
                delay: Some("5s"),
                ..Default::default()
            },
            "token_service_timeout",
        ),
        (
            PeerOptions {
                status: Some(500),
                ..Default::default()
            },
            "token_service_error",
        ),
        (
            PeerOptions {
                status: Some(429),
                ..Default::default()
            },
            "token_service_busy",
        ),
    ] {
        let scratch = Scratch::new(BATON_BIN, "faults");
        let service = TokenService::start_with(Peer::BatonSts, &scratch, faults.clone()).await;
        let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
        let upstream = Upstream::start().await;
        let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
        let user = service.mint("alice", "orders.read").await;
        let started = tokio::time::Instant::now();
        let reply = send(&envoy, "orders.example", "/", Some(&bearer(&user))).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (503, reason),
            "{faults:?}: {:?}",
            reply.body
        );
        // Bounded: Baton's 1 s timeout answered, not Envoy's 3 s one (nor a hang).
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{faults:?}: took {:?}",
            started.elapsed()
        );
        if faults.status == Some(429) {
            // The service said `Retry-After: 2`: the next exchange is refused at once, unsent.
            let before = service.exchanges().await;
            let other = service.mint("bob", "orders.read").await;
            let reply = send(&envoy, "orders.example", "/", Some(&bearer(&other))).await;
            assert_eq!(
                (reply.status, reply.reason()),
                (503, "token_service_busy"),
                "{:?}",
                reply.body
            );
            assert_eq!(service.exchanges().await, before, "Retry-After was not respected");
        }
        if faults.status == Some(500) {
            assert_eq!(service.exchanges().await, 3, "500 is retried twice, then given up");
        }
    }
}

/// A token service that does not listen at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_token_service_is_503() {
    let scratch = Scratch::new(BATON_BIN, "unreachable");
    let closed = free_port();
    let baton = Baton::start(&scratch, &format!("http://127.0.0.1:{closed}/token"), "").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let reply = send(&envoy, "orders.example", "/", Some("Bearer opaque-user-token")).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (503, "token_service_unavailable"),
        "{:?}",
        reply.body
    );
}

/// `unknown_destination: deny` and `missing_token: passthrough`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_and_missing_token_policies() {
    let scratch = Scratch::new(BATON_BIN, "policies");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start(
        &scratch,
        &service.token_endpoint,
        "unknown_destination: deny\nmissing_token: passthrough\n",
    )
    .await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let user = service.mint("alice", "orders.read").await;
    let reply = send(&envoy, "elsewhere.example", "/", Some(&bearer(&user))).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, "destination_unknown"),
        "{:?}",
        reply.body
    );
    let reply = send(&envoy, "orders.example", "/", None).await;
    assert_eq!(reply.upstream_authorization(), None, "passthrough without a token");
}

/// Token-service answers a client must survive, through the real Envoy: unusable bodies fail closed
/// with 503 `token_service_bad_response`; odd lifetimes never keep a token longer than it lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_token_service_answers() {
    // (fault, expected status and reason, whether a second request is served from the cache)
    let cases: [(&str, u16, &str, Option<bool>); 7] = [
        ("html", 503, "token_service_bad_response", None),
        ("truncated_json", 503, "token_service_bad_response", None),
        ("huge_body", 503, "token_service_bad_response", None),
        // The issued JWT's exp still bounds the cache.
        ("no_expires_in", 200, "", Some(true)),
        ("expires_in_huge", 200, "", Some(true)),
        // Used for this request, never kept.
        ("expires_in_zero", 200, "", Some(false)),
        ("expires_in_negative", 200, "", Some(false)),
    ];
    for (answer, status, reason, cached) in cases {
        let scratch = Scratch::new(BATON_BIN, "answers");
        let options = PeerOptions {
            answer: Some(answer),
            ..Default::default()
        };
        let service = TokenService::start_with(Peer::BatonSts, &scratch, options).await;
        let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
        let upstream = Upstream::start().await;
        let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
        let user = service.mint("alice", "orders.read").await;
        let reply = send(&envoy, "orders.example", "/", Some(&bearer(&user))).await;
        if status != 200 {
            assert_eq!(
                (reply.status, reply.reason()),
                (status, reason),
                "{answer}: {:?}",
                reply.body
            );
            continue;
        }
        let first = reply.upstream_token().to_owned();
        assert_eq!(service.verify(&first).await["sub"], "alice", "{answer}");
        let before = service.exchanges().await;
        let again = send(&envoy, "orders.example", "/", Some(&bearer(&user))).await;
        assert_eq!(again.status, 200, "{answer}: {:?}", again.body);
        let exchanged_again = service.exchanges().await > before;
        assert_eq!(Some(!exchanged_again), cached, "{answer}: cached?");
    }
}

/// Refresh ahead, through the real Envoy: tokens kept 10 s (40 s lifetime, 30 s margin) are
/// refreshed in the background by a hit 2 s before the cache would drop them, so requests keep
/// being served from the cache with a fresh token and none waits on an exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_near_expiry_refresh_in_the_background() {
    let scratch = Scratch::new(BATON_BIN, "refresh");
    let options = PeerOptions {
        lifetime: Some("40s"),
        ..Default::default()
    };
    let service = TokenService::start_with(Peer::BatonSts, &scratch, options).await;
    let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let user = service.mint("alice", "orders.read").await;
    let get = || async {
        send(&envoy, "orders.example", "/", Some(&bearer(&user)))
            .await
            .upstream_token()
            .to_owned()
    };

    let first = get().await;
    assert_eq!(service.exchanges().await, 1);
    // Kept 10 s; the default 60 s window is longer, so the refresh starts past half of it.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(
        get().await,
        first,
        "the hit that starts the refresh is served the cached token"
    );
    wait_until("the background refresh", Duration::from_secs(5), || async {
        service.exchanges().await == 2
    })
    .await;
    let fresh = get().await;
    assert_ne!(fresh, first, "the cache now serves the refreshed token");
    assert_eq!(service.verify(&fresh).await["sub"], "alice");
    assert_eq!(
        service.exchanges().await,
        2,
        "serving the refreshed token exchanged nothing more"
    );
}

/// `max_concurrent_exchanges` bounds the exchanges in flight and the queue behind them: with one
/// allowed and a slow token service, of three users at once one is exchanged, one waits its turn, and
/// the third is refused at once with 503 `token_service_busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exchanges_are_bounded() {
    let scratch = Scratch::new(BATON_BIN, "bounded");
    let options = PeerOptions {
        delay: Some("300ms"),
        ..Default::default()
    };
    let service = TokenService::start_with(Peer::BatonSts, &scratch, options).await;
    let token_service = format!(
        "{}\n  max_concurrent_exchanges: 1",
        basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint))
    );
    let baton = Baton::start_with(&scratch, &token_service, "").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol"] {
        users.push(service.mint(name, "orders.read").await);
    }
    let replies = join_all(users.iter().map(|u| {
        let auth = bearer(u);
        let envoy = &envoy;
        async move { send(envoy, "orders.example", "/", Some(&auth)).await }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let busy = replies
        .iter()
        .filter(|r| (r.status, r.reason()) == (503, "token_service_busy"))
        .count();
    assert_eq!(
        (ok, busy),
        (2, 1),
        "{:?}",
        replies
            .iter()
            .map(|r| (r.status, r.reason().to_owned()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        service.exchanges().await,
        2,
        "the refused one never reached the token service"
    );
}
