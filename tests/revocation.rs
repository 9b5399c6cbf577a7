//! Revocation through the real Envoy (issue 14, the operator's signal): a delegated user is revoked
//! with `baton revoke`, and the same token is then refused `subject_revoked` without an exchange,
//! while another user is unaffected and a token minted after the revocation is delegated again.
//! Calls to `POST /revoke` that are unauthenticated or malformed are refused and change nothing.
//! Once through ext_authz and once through ext_proc, against `baton sts`.

use std::time::Duration;

use baton_test_support::revocation_stack::{REMEMBER, next_second, post_without_the_section, trusted_issuer};
use baton_test_support::*;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

const ADMIN_SECRET: &str = "revocation-admin-secret-for-tests-0123456789";

struct Revocable {
    service: TokenService,
    pod: Pod,
    operator: Operator,
}

impl Revocable {
    async fn start(api: Api, name: &str) -> Self {
        Self::start_with(api, name, PeerOptions::default(), false).await
    }

    /// With `verified`, Baton verifies subject tokens (`trusted_issuers`: the token service, for
    /// audience `frontend`), so it also holds verified subjects to purge.
    async fn start_with(api: Api, name: &str, options: PeerOptions, verified: bool) -> Self {
        let scratch = Scratch::new(BATON_BIN, name);
        let secret = AdminSecret::write(&scratch, ADMIN_SECRET);
        let service = TokenService::start_with(Peer::BatonSts, &scratch, options).await;
        let mut extra = secret.section(REMEMBER);
        if verified {
            extra.push_str(&trusted_issuer(&service.issuer, "frontend"));
        }
        let pod = Pod::start(api, scratch, &service.token_endpoint, &extra).await;
        let operator = pod.operator(secret);
        Self { service, pod, operator }
    }
}

async fn revocation_suite(api: Api) {
    let stack = Revocable::start(api, &format!("revocation-{api:?}").to_lowercase()).await;
    let svc = &stack.service;
    let alice = svc
        .mint_with(&[
            ("sub", "alice"),
            ("scope", "orders.read"),
            ("claims", r#"{"sid":"s-alice"}"#),
        ])
        .await;
    let bob = svc
        .mint_with(&[
            ("sub", "bob"),
            ("scope", "orders.read"),
            ("claims", r#"{"sid":"s-bob"}"#),
        ])
        .await;

    // Both delegated, then served from the cache.
    let before = svc.exchanges().await;
    for user in [&alice, &bob] {
        let reply = stack.pod.get(user).await;
        assert_eq!(reply.status, 200, "{api:?}: {:?}", reply.body);
        assert_ne!(reply.upstream_token(), user.as_str());
    }
    assert_eq!(svc.exchanges().await, before + 2);

    // Refused calls change nothing: alice is still served, from the cache.
    let sub = || r#"{"sub":"alice"}"#.to_owned();
    let refusals = [
        (None, sub(), 401, "unauthenticated"),
        (Some("Bearer wrong-secret"), sub(), 401, "unauthenticated"),
        (Some(ADMIN_SECRET), sub(), 401, "unauthenticated"),
        (Some("bearer-less"), sub(), 401, "unauthenticated"),
        (Some("auth"), "not json".into(), 400, "malformed_body"),
        (
            Some("auth"),
            r#"{"sub":"alice","sid":"s-alice"}"#.into(),
            400,
            "ambiguous_selector",
        ),
        (
            Some("auth"),
            r#"{"issuer":"https://idp"}"#.into(),
            400,
            "issuer_without_sub",
        ),
        (Some("auth"), "{}".into(), 400, "no_selector"),
        (
            Some("auth"),
            r#"{"sub":"alice","admin":true}"#.into(),
            400,
            "malformed_body",
        ),
        (
            Some("auth"),
            format!(r#"{{"sub":"{}"}}"#, "a".repeat(64 * 1024)),
            400,
            "body_too_large",
        ),
    ];
    let authorized = stack.operator.secret.bearer();
    for (authorization, body, status, code) in refusals {
        let authorization = authorization.map(|a| if a == "auth" { authorized.as_str() } else { a });
        let (got, answer) = stack.operator.post(authorization, body).await;
        assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{answer}");
    }
    let reply = stack.pod.get(&alice).await;
    assert_eq!(
        reply.status, 200,
        "{api:?}: a refused revocation changed something: {:?}",
        reply.body
    );
    assert_eq!(svc.exchanges().await, before + 2, "alice was not served from the cache");
    assert!(
        stack
            .pod
            .baton
            .metrics()
            .await
            .contains("baton_revocations_remembered 0"),
        "nothing is remembered yet"
    );

    // The operator revokes alice: her cached token goes, and her token is refused without an exchange.
    let (ok, answer, stderr) = stack.operator.revoke(&["--sub", "alice"]).await;
    assert!(ok, "baton revoke failed: {stderr}");
    assert_eq!(answer["revoked"], "subject", "{answer}");
    assert_eq!(answer["purged"], 1, "alice's token for orders: {answer}");
    assert_eq!(answer["remembered"], 1, "{answer}");
    for _ in 0..3 {
        stack.pod.assert_revoked(&alice, &format!("{api:?}")).await;
    }
    // Bob is not alice: still served from the cache.
    let reply = stack.pod.get(&bob).await;
    assert_eq!(reply.status, 200, "{api:?}: {:?}", reply.body);
    assert_eq!(
        svc.exchanges().await,
        before + 2,
        "a revoked or unaffected user was exchanged"
    );

    // Alice signs in again: a token issued after the revocation is delegated (one new exchange).
    next_second().await;
    let fresh = svc.mint("alice", "orders.read").await;
    let reply = stack.pod.get(&fresh).await;
    assert_eq!(
        reply.status, 200,
        "{api:?}: a fresh token after the revocation: {:?}",
        reply.body
    );
    assert_eq!(svc.exchanges().await, before + 3);
    let reply = stack.pod.get(&alice).await;
    assert_eq!(reply.reason(), "subject_revoked", "the old token stays refused");

    // A session: bob's `sid` is revoked, his cached token purged.
    let (ok, answer, stderr) = stack.operator.revoke(&["--sid", "s-bob"]).await;
    assert!(ok, "baton revoke --sid failed: {stderr}");
    assert_eq!(
        (answer["revoked"].as_str(), answer["purged"].as_u64()),
        (Some("session"), Some(1)),
        "{answer}"
    );
    stack.pod.assert_revoked(&bob, "").await;

    // The command's own errors are clear and send nothing.
    let (ok, _, stderr) = stack.operator.revoke(&["--sub", "carol", "--all"]).await;
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");

    // Metrics and the audit record.
    let metrics = stack.pod.baton.metrics().await;
    for line in [
        r#"baton_revocations_total{event="operator",kind="subject",outcome="ok"} 1"#,
        r#"baton_revocations_total{event="operator",kind="session",outcome="ok"} 1"#,
        "baton_revocations_remembered 2",
        "baton_revocations_max 100",
    ] {
        assert!(metrics.contains(line), "no `{line}` in /metrics");
    }
    let records = stack.pod.wait_for_revocation_records(2).await;
    assert_eq!(records[0]["event"], "operator");
    assert_eq!(records[0]["kind"], "subject");
    assert_eq!(records[0]["subject"]["sub"], "alice");
    assert_eq!(records[0]["purged"], 1);
    assert_eq!(records[1]["kind"], "session");
    assert_ne!(
        records[1]["session"], "s-bob",
        "a session id is audited as a fingerprint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_revocation_through_envoy_ext_authz() {
    revocation_suite(Api::ExtAuthz).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_revocation_through_envoy_ext_proc() {
    revocation_suite(Api::ExtProc).await;
}

/// An exchange in flight when the revocation comes cannot put the old authority back: neither a
/// refresh ahead started by a hit, nor a first exchange (a miss). The token service answers after
/// 700 ms (Baton's timeout is 1 s), and the revocation is sent while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_finishing_after_the_purge_puts_nothing_back() {
    let options = PeerOptions {
        delay: Some("700ms"),
        // Kept 10 s (40 s minus the 30 s margin): a hit after 5 s refreshes ahead.
        lifetime: Some("40s"),
        ..Default::default()
    };
    let stack = Revocable::start_with(Api::ExtAuthz, "revocation-in-flight", options, false).await;
    let svc = &stack.service;
    let authorized = stack.operator.secret.bearer();
    let entries = |metrics: String| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("baton_cache_entries ").map(str::to_owned))
            .unwrap_or_default()
    };
    let exchanges_reach = |n: u64| async move {
        wait_until(
            "the exchange to reach the token service",
            Duration::from_secs(5),
            || async { svc.exchanges().await >= n },
        )
        .await;
    };

    // A refresh ahead in flight.
    let alice = svc.mint("alice", "orders.read").await;
    assert_eq!(stack.pod.get(&alice).await.status, 200);
    assert_eq!(svc.exchanges().await, 1);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(
        stack.pod.get(&alice).await.status,
        200,
        "the hit that starts the refresh"
    );
    exchanges_reach(2).await;
    let (status, answer) = stack
        .operator
        .post(Some(&authorized), r#"{"sub":"alice"}"#.into())
        .await;
    assert_eq!((status, answer["purged"].as_u64()), (200, Some(1)), "{answer}");
    // The refresh answers after the purge; it must not be kept.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        entries(stack.pod.baton.metrics().await),
        "0",
        "the refreshed token was put back"
    );
    assert_eq!(stack.pod.get(&alice).await.reason(), "subject_revoked");

    // A first exchange (a miss) in flight.
    let bob = svc.mint("bob", "orders.read").await;
    let pending = stack.pod.get(&bob);
    let revoke = async {
        exchanges_reach(3).await;
        stack.operator.post(Some(&authorized), r#"{"sub":"bob"}"#.into()).await
    };
    let (reply, (status, answer)) = tokio::join!(pending, revoke);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_revoked"),
        "an exchange that finished after the revocation was served: {:?}",
        reply.body
    );
    assert_eq!(
        entries(stack.pod.baton.metrics().await),
        "0",
        "the exchanged token was kept"
    );
    assert_eq!(svc.exchanges().await, 3);
}

/// When Baton verifies subject tokens, a revocation names the issuer too, and purges the verified
/// subject with the delegated tokens; the same `sub` from another issuer is someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_subject_is_revoked_by_issuer_and_sub() {
    let stack = Revocable::start_with(Api::ExtAuthz, "revocation-verified", PeerOptions::default(), true).await;
    let svc = &stack.service;
    let alice = svc
        .mint_with(&[("sub", "alice"), ("scope", "orders.read"), ("aud", "frontend")])
        .await;
    let bob = svc
        .mint_with(&[("sub", "bob"), ("scope", "orders.read"), ("aud", "frontend")])
        .await;
    for user in [&alice, &bob] {
        let reply = stack.pod.get(user).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    assert_eq!(svc.exchanges().await, 2);

    let (ok, answer, stderr) = stack
        .operator
        .revoke(&["--issuer", "https://another.example", "--sub", "alice"])
        .await;
    assert!(ok, "{stderr}");
    assert_eq!(answer["purged"], 0, "alice of another issuer: {answer}");
    assert_eq!(
        stack.pod.get(&alice).await.status,
        200,
        "alice of this issuer is not revoked"
    );

    let (ok, answer, stderr) = stack
        .operator
        .revoke(&["--issuer", &svc.issuer, "--sub", "alice"])
        .await;
    assert!(ok, "{stderr}");
    assert_eq!(
        answer["purged"], 2,
        "her delegated token and her verified subject: {answer}"
    );
    stack.pod.assert_revoked(&alice, "").await;
    assert_eq!(stack.pod.get(&bob).await.status, 200);
    assert_eq!(svc.exchanges().await, 2, "nothing exchanged again");

    // A reload (SIGHUP) keeps what was revoked.
    stack.pod.reload().await;
    stack.pod.assert_revoked(&alice, "after a reload").await;
    assert!(
        stack
            .pod
            .baton
            .metrics()
            .await
            .contains("baton_revocations_remembered 2")
    );

    // By e-mail address (`baton revoke --email`): the verified `email` claim, whatever its case.
    let carol = svc
        .mint_with(&[
            ("sub", "carol"),
            ("scope", "orders.read"),
            ("aud", "frontend"),
            ("claims", r#"{"email":"Carol@Example.com"}"#),
        ])
        .await;
    assert_eq!(stack.pod.get(&carol).await.status, 200);
    let (ok, answer, stderr) = stack.operator.revoke(&["--email", "carol@EXAMPLE.com"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        answer["purged"], 2,
        "her delegated token and her verified subject: {answer}"
    );
    stack.pod.assert_revoked(&carol, "").await;
    assert_eq!(stack.pod.get(&bob).await.status, 200, "bob has another address");
    let (ok, _, stderr) = stack.operator.revoke(&["--email", "not an address"]).await;
    assert!(!ok && stderr.contains("malformed_email"), "{stderr}");
    assert!(
        stack
            .pod
            .baton
            .metrics()
            .await
            .contains(r#"baton_revocations_total{event="operator",kind="email",outcome="ok"} 1"#)
    );
}

/// Without `revocation.admin_secret_file` the endpoint is not there at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_secret_the_endpoint_is_off() {
    let status = post_without_the_section(
        BATON_BIN,
        "revocation-off",
        "/revoke",
        ("authorization", "Bearer anything"),
        r#"{"all":true}"#,
    )
    .await;
    assert_eq!(status, 404);
}
