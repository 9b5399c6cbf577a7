//! Issue 14, the destination's and the operator's purges, through the real Envoy against `baton sts`:
//! - under ext_proc (response headers sent to Baton), a destination's 401 with a Bearer
//!   `error="invalid_token"` challenge purges the cache entry that served the request, and the next
//!   request is exchanged again (counted at the token service); a 401 without it, and a 403, change
//!   nothing. Recorded: the metric (`event="invalid_token"`), the audit line, the `baton.revocation`
//!   span at the harness's OTLP receiver.
//! - under the Wasm filter (in-proxy mode) the filter sees the response of a request it delegated
//!   (a hit in its own cache or a miss): it drops its entry, and tells the sidecar
//!   (`InProxy/Purge`), which purges its own as ext_proc's purge does; the next request is
//!   exchanged again, another user's entry is not touched.
//! - under ext_authz Baton never sees the response: the same 401 purges nothing (documented in
//!   docs/operations.md, "Revocation": use ext_proc).
//! - `baton revoke --destination NAME` purges that destination's tokens and remembers nothing (the
//!   same user is delegated again); an unknown name is a 400 `destination_not_configured`.
//!
//! The destination is the harness's stand-in (`StandInDestination`): an HTTP server that answers by
//! path, as a resource server would, since what matters is the response Envoy hands Baton.

use baton_test_support::*;

const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

const ADMIN_SECRET: &str = "invalid-token-admin-secret-for-tests-0123456789";

struct Setup {
    service: TokenService,
    pod: Pod,
    operator: Operator,
}

/// What `Setup::two_users_cached` leaves: two users' tokens, the one alice's requests are served,
/// and the token service's exchange count before either.
struct Cached {
    alice: String,
    bob: String,
    first: String,
    start: u64,
}

impl Setup {
    async fn start(api: Api, name: &str) -> Self {
        Self::start_with(api, name, Front::Harness).await
    }

    /// With `Front::Generated`, Envoy runs what `baton envoy-config` writes (its outbound cluster
    /// pointed at the stand-in destination) rather than the harness's hand-written bootstrap.
    async fn start_with(api: Api, name: &str, front: Front) -> Self {
        let scratch = Scratch::new(BATON_BIN, name);
        let secret = AdminSecret::write(&scratch, ADMIN_SECRET);
        let service = TokenService::start(Peer::BatonSts, &scratch).await;
        let pod = Pod::start_stand_in(api, front, scratch, &service.token_endpoint, &secret.section("")).await;
        let operator = pod.operator(secret);
        Self { service, pod, operator }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.pod.get_path(path, token).await
    }

    /// alice and bob delegated (two exchanges), alice served from a cache `hits` times more, then a
    /// 401 without `invalid_token` and a 403 from the destination, which purge nothing: the same
    /// cached token keeps serving, and no exchange follows.
    async fn two_users_cached(&self, hits: usize) -> Cached {
        let svc = &self.service;
        let alice = svc.mint_with(&[("sub", "alice"), ("scope", "orders.read")]).await;
        let bob = svc.mint_with(&[("sub", "bob"), ("scope", "orders.read")]).await;

        let start = svc.exchanges().await;
        let first = self.delegated(&alice).await;
        self.delegated(&bob).await;
        for _ in 0..hits {
            assert_eq!(self.delegated(&alice).await, first, "served from a cache");
        }
        assert_eq!(svc.exchanges().await, start + 2);

        for (path, status) in [("/login", 401), ("/forbid", 403)] {
            let reply = self.get(path, &alice).await;
            assert_eq!(reply.status, status, "{path}: {:?}", reply.body);
            assert_eq!(self.delegated(&alice).await, first, "{path} purged nothing");
        }
        assert_eq!(
            svc.exchanges().await,
            start + 2,
            "no exchange after a 401 without invalid_token or a 403"
        );
        Cached {
            alice,
            bob,
            first,
            start,
        }
    }

    /// A request that reaches the destination and is answered 200: the token it received.
    async fn delegated(&self, token: &str) -> String {
        let reply = self.get("/orders/1", token).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.upstream_token().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destinations_invalid_token_purges_the_entry_that_served_it_under_ext_proc() {
    let setup = Setup::start(Api::ExtProc, "invalid-token-ext-proc").await;
    let svc = &setup.service;
    let Cached {
        alice,
        bob,
        first,
        start,
    } = setup.two_users_cached(1).await;

    // The destination says the token is bad: that entry is purged before Envoy answers the app.
    let reply = setup.get("/refuse", &alice).await;
    assert_eq!(
        reply.status, 401,
        "the destination's answer reaches the application: {:?}",
        reply.body
    );
    assert_eq!(svc.exchanges().await, start + 2, "the refused request itself was a hit");
    let second = setup.delegated(&alice).await;
    assert_eq!(svc.exchanges().await, start + 3, "the next request exchanged again");
    assert_ne!(second, first, "a new token");
    assert_eq!(setup.delegated(&alice).await, second, "and that one is cached");
    setup.delegated(&bob).await;
    assert_eq!(svc.exchanges().await, start + 3, "another user's entry was not touched");

    // Nobody was revoked: the subject is not remembered.
    let metrics = setup.pod.baton.metrics().await;
    for line in [
        r#"baton_revocations_total{event="invalid_token",kind="served",outcome="ok"} 1"#,
        "baton_revocations_remembered 0",
    ] {
        assert!(metrics.contains(line), "no `{line}` in /metrics");
    }
    let records = setup.pod.wait_for_revocation_records(1).await;
    let r = &records[0];
    assert_eq!(
        (&r["event"], &r["kind"], &r["destination"], &r["purged"], &r["outcome"]),
        (
            &serde_json::json!("invalid_token"),
            &serde_json::json!("served"),
            &serde_json::json!("orders"),
            &serde_json::json!(1),
            &serde_json::json!("ok")
        ),
        "{r}"
    );

    // The span, at the real OTLP receiver the harness gives every Baton.
    let span = eventually("the baton.revocation span", || {
        setup
            .pod
            .baton
            .exported_spans()
            .into_iter()
            .find(|s| s.name == "baton.revocation")
    })
    .await;
    for (key, value) in [
        ("baton.revocation.event", "invalid_token"),
        ("baton.revocation.kind", "served"),
        ("baton.revocation.outcome", "ok"),
        ("baton.revocation.purged", "1"),
        ("baton.destination", "orders"),
    ] {
        assert_eq!(span_attr(&span, key).as_deref(), Some(value), "{key} in {span:?}");
    }
    assert_eq!(
        span.attributes.len(),
        5,
        "nothing else, never a token or a subject: {span:?}"
    );
}

/// Under ext_authz (over gRPC or HTTP) Baton answers before the request goes on and never sees the
/// response: a destination's `invalid_token` purges nothing, the cached token keeps serving until
/// it expires (docs/operations.md says so, and to use ext_proc for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ext_authz_the_destinations_answer_is_not_seen() {
    for (api, name) in [
        (Api::ExtAuthz, "invalid-token-ext-authz"),
        (Api::ExtAuthzHttp, "invalid-token-ext-authz-http"),
    ] {
        let setup = Setup::start(api, name).await;
        let svc = &setup.service;
        let alice = svc.mint_with(&[("sub", "alice"), ("scope", "orders.read")]).await;
        let first = setup.delegated(&alice).await;
        let exchanged = svc.exchanges().await;
        let reply = setup.get("/refuse", &alice).await;
        assert_eq!(reply.status, 401, "{api:?}");
        assert_eq!(
            setup.delegated(&alice).await,
            first,
            "{api:?}: still served from the cache"
        );
        assert_eq!(svc.exchanges().await, exchanged, "{api:?}");
        let metrics = setup.pod.baton.metrics().await;
        assert!(
            !metrics.contains(r#"event="invalid_token""#),
            "{api:?}: no signal under ext_authz"
        );
        assert!(
            metrics.contains(r#"api="ext_authz_http""#) == (api == Api::ExtAuthzHttp),
            "{api:?}: decided over the API under test"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_purges_one_destination_and_nobody_is_revoked() {
    let setup = Setup::start(Api::ExtProc, "invalid-token-destination").await;
    let svc = &setup.service;
    let alice = svc.mint_with(&[("sub", "alice"), ("scope", "orders.read")]).await;
    let bob = svc.mint_with(&[("sub", "bob"), ("scope", "orders.read")]).await;
    setup.delegated(&alice).await;
    setup.delegated(&bob).await;
    let exchanged = svc.exchanges().await;

    let (ok, answer, stderr) = setup.operator.revoke(&["--destination", "orders"]).await;
    assert!(ok, "baton revoke --destination failed: {stderr}");
    assert_eq!(
        (
            answer["revoked"].as_str(),
            answer["purged"].as_u64(),
            answer["remembered"].as_u64()
        ),
        (Some("destination"), Some(2), Some(0)),
        "{answer}"
    );
    // The same users, the same tokens: delegated again, each exchanged once more.
    setup.delegated(&alice).await;
    setup.delegated(&bob).await;
    setup.delegated(&alice).await;
    assert_eq!(svc.exchanges().await, exchanged + 2);

    // An unknown destination is a clear refusal, and changes nothing.
    let (ok, _, stderr) = setup.operator.revoke(&["--destination", "nonesuch"]).await;
    assert!(
        !ok && stderr.contains("400") && stderr.contains("destination_not_configured"),
        "{stderr}"
    );
    let (ok, _, stderr) = setup
        .operator
        .revoke(&["--destination", "orders", "--sub", "alice"])
        .await;
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");
    setup.delegated(&alice).await;
    assert_eq!(svc.exchanges().await, exchanged + 2);

    let metrics = setup.pod.baton.metrics().await;
    assert!(
        metrics.contains(r#"baton_revocations_total{event="operator",kind="destination",outcome="ok"} 1"#),
        "{metrics}"
    );
    // One record: the refused calls left none.
    let records = setup.pod.wait_for_revocation_records(1).await;
    assert_eq!(
        (&records[0]["kind"], &records[0]["destination"], &records[0]["purged"]),
        (
            &serde_json::json!("destination"),
            &serde_json::json!("orders"),
            &serde_json::json!(2)
        )
    );
}

/// What `baton envoy-config` writes purges too: response headers are skipped but for a delegated
/// request's stream (`mode_override`, allowed by the generated `allowed_override_modes`), and its
/// `forward_rules` let `:status` and `www-authenticate` through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_envoy_configuration_purges_by_default() {
    let setup = Setup::start_with(Api::ExtProc, "invalid-token-generated", Front::Generated).await;
    let svc = &setup.service;
    let alice = svc.mint_with(&[("sub", "alice"), ("scope", "orders.read")]).await;
    let start = svc.exchanges().await;
    let first = setup.delegated(&alice).await;
    assert_eq!(setup.delegated(&alice).await, first, "served from the cache");
    let reply = setup.get("/refuse", &alice).await;
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    let second = setup.delegated(&alice).await;
    assert_ne!(second, first, "the refused token was purged: a new one");
    assert_eq!(svc.exchanges().await, start + 2);
}

/// In-proxy mode: the Wasm filter reads the destination's answer to a request it delegated (a hit
/// in its own cache, or a miss the sidecar answered) and, on a 401 `invalid_token`, drops its entry
/// and has the sidecar purge its own (`InProxy/Purge`, naming it by key and fingerprint) before the
/// response goes on. The purge bumps Baton's revocation generation, so the filter's other workers
/// (each its own cache) drop theirs when they next hear it: within `epoch_tick` (1 s here) +
/// `timeout`. The same counts as under ext_proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destinations_invalid_token_purges_the_entry_that_served_it_under_the_wasm_filter() {
    let setup = Setup::start(Api::Wasm, "invalid-token-wasm").await;
    let svc = &setup.service;
    let Cached {
        alice,
        bob,
        first,
        start,
    } = setup.two_users_cached(3).await;
    // A Purge from a process that reaches the listener but does not know the entry's key and the
    // token's fingerprint purges nothing (and at worst could only cause one exchange again).
    let mut client = baton_envoy::broker::pb::in_proxy_client::InProxyClient::connect(format!(
        "http://127.0.0.1:{}",
        setup.pod.baton.grpc
    ))
    .await
    .expect("connect");
    for (served, issued) in [
        (vec![0u8; 32], "sha256:AAAAAAAAAAA"),
        (vec![1u8; 7], ""),
        (Vec::new(), "x"),
    ] {
        let answer = client
            .purge(baton_envoy::broker::pb::PurgeRequest {
                served,
                issued: issued.to_owned(),
            })
            .await
            .expect("a Purge is answered");
        assert!(!answer.get_ref().purged, "a guessed Purge purged an entry");
    }
    assert_eq!(setup.delegated(&alice).await, first, "still served");
    let metrics = setup.pod.baton.metrics().await;
    assert!(!metrics.contains(r#"event="invalid_token""#), "no purge yet");

    // The destination says the token is bad: purged in the filter and at the sidecar before Envoy
    // answers the application.
    let reply = setup.get("/refuse", &alice).await;
    assert_eq!(
        reply.status, 401,
        "the destination's answer reaches the application: {:?}",
        reply.body
    );
    assert_eq!(
        svc.exchanges().await,
        start + 2,
        "the refused request itself was served a cached token"
    );
    let metrics = setup.pod.baton.metrics().await;
    assert!(
        metrics.contains(r#"baton_revocations_total{event="invalid_token",kind="served",outcome="ok"} 1"#),
        "the sidecar purged before the response went on"
    );
    // Every worker's copy is gone once it has heard the new generation (a poll every second,
    // answered at once here; the bound is epoch_tick + timeout).
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let second = setup.delegated(&alice).await;
    assert_ne!(second, first, "a new token");
    assert_eq!(svc.exchanges().await, start + 3, "the next request exchanged again");
    for _ in 0..3 {
        assert_eq!(setup.delegated(&alice).await, second, "and that one is cached");
    }
    setup.delegated(&bob).await;
    assert_eq!(svc.exchanges().await, start + 3, "another user's entry was not touched");

    let metrics = setup.pod.baton.metrics().await;
    assert!(metrics.contains("baton_revocations_remembered 0"), "nobody was revoked");
    let records = setup.pod.wait_for_revocation_records(1).await;
    let r = &records[0];
    assert_eq!(
        (&r["event"], &r["kind"], &r["destination"], &r["purged"]),
        (
            &serde_json::json!("invalid_token"),
            &serde_json::json!("served"),
            &serde_json::json!("orders"),
            &serde_json::json!(1)
        ),
        "{r}"
    );
}

/// One request on `connection` (so under the Wasm filter, the same Envoy worker and its cache each
/// time), and the filter's decision for it from Envoy's access log.
async fn on_connection(connection: &Connection, setup: &Setup, path: &str, token: &str) -> (Reply, String) {
    let envoy = &setup.pod.envoy;
    let logged = envoy.access_log().len();
    let reply = connection.get(path, &bearer(token)).await;
    let line = eventually("the request's access log line", || {
        envoy.access_log().get(logged).cloned()
    })
    .await;
    let decision = line["baton_decision"].as_str().unwrap_or("-").to_owned();
    (reply, decision)
}

/// The Wasm filter purges both ways a delegated request can have gone out, on one worker (one
/// HTTP/2 connection): a hit (the sidecar's entry named by the filter's entry) and a miss (named
/// by the Decide reply). Each time the very next request on that worker exchanges again, with no
/// wait: its entry went at once, and the sidecar's before the 401 reached the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_filter_purges_after_a_hit_and_after_a_miss() {
    let setup = Setup::start(Api::Wasm, "invalid-token-wasm-ways").await;
    let svc = &setup.service;
    let alice = svc.mint_with(&[("sub", "alice"), ("scope", "orders.read")]).await;
    let bob = svc.mint_with(&[("sub", "bob"), ("scope", "orders.read")]).await;
    let connection = Connection::to(&setup.pod.envoy, "orders.example");
    let start = svc.exchanges().await;

    // After a hit.
    let (first, decision) = on_connection(&connection, &setup, "/orders/1", &alice).await;
    assert_eq!((first.status, decision.as_str()), (200, "miss"), "{:?}", first.body);
    let (hit, decision) = on_connection(&connection, &setup, "/orders/2", &alice).await;
    assert_eq!((hit.status, decision.as_str()), (200, "hit"), "{:?}", hit.body);
    let (refused, decision) = on_connection(&connection, &setup, "/refuse", &alice).await;
    assert_eq!((refused.status, decision.as_str()), (401, "hit"), "{:?}", refused.body);
    assert_eq!(svc.exchanges().await, start + 1);
    let (again, decision) = on_connection(&connection, &setup, "/orders/3", &alice).await;
    assert_eq!((again.status, decision.as_str()), (200, "miss"), "{:?}", again.body);
    assert_ne!(again.upstream_token(), first.upstream_token(), "a new token");
    assert_eq!(svc.exchanges().await, start + 2, "exchanged again at once");

    // After a miss: bob's first request is refused by the destination.
    let (refused, decision) = on_connection(&connection, &setup, "/refuse", &bob).await;
    assert_eq!((refused.status, decision.as_str()), (401, "miss"), "{:?}", refused.body);
    assert_eq!(svc.exchanges().await, start + 3);
    let (next, decision) = on_connection(&connection, &setup, "/orders/1", &bob).await;
    assert_eq!((next.status, decision.as_str()), (200, "miss"), "{:?}", next.body);
    assert_eq!(svc.exchanges().await, start + 4, "exchanged again at once");
    let (cached, decision) = on_connection(&connection, &setup, "/orders/2", &bob).await;
    assert_eq!((cached.status, decision.as_str()), (200, "hit"), "{:?}", cached.body);
    assert_eq!(cached.upstream_token(), next.upstream_token());

    let metrics = setup.pod.baton.metrics().await;
    assert!(
        metrics.contains(r#"baton_revocations_total{event="invalid_token",kind="served",outcome="ok"} 2"#),
        "two purges at the sidecar"
    );
}
