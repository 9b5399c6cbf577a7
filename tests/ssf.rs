//! The Shared Signals receiver through the real Envoy (issue 14, sections 1 and 3), against the test
//! SSF transmitter of the test-support crate (no SSF transmitter exists in the package registries)
//! and `baton sts` as the token service: a pushed CAEP `session-revoked` (complex subject) ends a
//! session at once, without an exchange; a polled RISC `account-disabled` names a user by e-mail; a
//! SET that is unsigned, forged, for another audience or issuer, stale, replayed, oversized, of the
//! wrong type or unauthenticated is refused and revokes nothing; and three Batons, each polling a
//! stream of its own from one transmitter, all stop delegating for a revoked user.

use std::time::{Duration, Instant};

use baton_test_support::revocation_stack::{REMEMBER, next_second, trusted_issuer};
use baton_test_support::ssf_test_transmitter::{TestTransmitter, events, push};
use baton_test_support::*;
use serde_json::{Value, json};

const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");
const AUDIENCE: &str = "https://baton.test/ssf";
const PUSH_SECRET: &str = "ssf-push-secret-for-tests-0123456789abcdef";

/// A user token for `sub` with these extra claims, meant for this workload (`aud` frontend).
async fn user(service: &TokenService, sub: &str, claims: &str) -> String {
    service
        .mint_with(&[
            ("sub", sub),
            ("scope", "orders.read"),
            ("aud", "frontend"),
            ("claims", claims),
        ])
        .await
}

/// One pod (Baton verifying `baton sts`'s tokens, remembering revocations and receiving Shared
/// Signals as `ssf` says, the real Envoy asking it through `api`, the echoing upstream).
async fn pod_for(api: Api, name: &str, service: &TokenService, ssf: &str) -> Pod {
    let extra = format!(
        "{}revocation:\n{REMEMBER}{ssf}",
        trusted_issuer(&service.issuer, "frontend")
    );
    Pod::start(api, Scratch::new(BATON_BIN, name), &service.token_endpoint, &extra).await
}

async fn pod(name: &str, service: &TokenService, ssf: &str) -> Pod {
    pod_for(Api::ExtAuthz, name, service, ssf).await
}

fn push_url(pod: &Pod) -> String {
    pod.admin_url("/ssf/push")
}

fn ssf_push(tx: &TestTransmitter, secret_file: &std::path::Path) -> String {
    format!(
        "ssf:\n  issuer: {}\n  audience: {AUDIENCE}\n  max_age: 60s\n  push:\n    secret_file: {}\n",
        tx.issuer,
        secret_file.display()
    )
}

/// `ssf.poll` through a stream Baton creates (`endpoint` absent) or a static one; `more` adds
/// `ssf.poll` keys (`    key: value` lines).
fn ssf_poll(tx: &TestTransmitter, secret_file: &std::path::Path, endpoint: Option<&str>, more: &str) -> String {
    let endpoint = endpoint.map(|e| format!("    endpoint: {e}\n")).unwrap_or_default() + more;
    format!(
        "ssf:\n  issuer: {}\n  audience: {AUDIENCE}\n  max_age: 60s\n  poll:\n{endpoint}    secret_file: {}\n    interval: 200ms\n    max_backoff: 1s\n    timeout: 5s\n",
        tx.issuer,
        secret_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_session_revoked_ends_the_session_and_bad_sets_change_nothing() {
    push_suite(Api::ExtAuthz).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_session_revoked_ends_the_session_through_ext_proc() {
    push_suite(Api::ExtProc).await;
}

async fn push_suite(api: Api) {
    let name = format!("ssf-push-{api:?}").to_lowercase();
    let tx = TestTransmitter::start(AUDIENCE).await;
    let scratch = Scratch::new(BATON_BIN, &format!("{name}-sts"));
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    leaks::secret(PUSH_SECRET);
    let secret_file = scratch.write("ssf-push-secret", &format!("{PUSH_SECRET}\n"));
    let pod = pod_for(api, &name, &service, &ssf_push(&tx, &secret_file)).await;
    tx.push_stream(&push_url(&pod), PUSH_SECRET);

    let alice = user(&service, "alice", r#"{"sid":"s-alice"}"#).await;
    let bob = user(&service, "bob", r#"{"sid":"s-bob"}"#).await;
    for user in [&alice, &bob] {
        let reply = pod.get(user).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let before = service.exchanges().await;

    // Each refused, with its RFC 8935 error code; none revokes anything.
    let auth = format!("Bearer {PUSH_SECRET}");
    let alice_session = json!({"format":"complex","user":{"format":"opaque","id":"alice"},
        "session":{"format":"opaque","id":"s-alice"}});
    let claims = || tx.claims(events::SESSION_REVOKED, alice_session.clone());
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims();
        change(&mut c);
        c
    };
    let unsigned = forge_jwt(r#"{"alg":"none","typ":"secevent+jwt"}"#, &claims().to_string(), "");
    let set_type = "application/secevent+jwt";
    let refusals: Vec<(&str, Option<&str>, &str, String, &str)> = vec![
        (
            "no authorization",
            None,
            set_type,
            tx.sign(&claims()),
            "authentication_failed",
        ),
        (
            "a wrong secret",
            Some("Bearer not-the-secret"),
            set_type,
            tx.sign(&claims()),
            "authentication_failed",
        ),
        (
            "a wrong content type",
            Some(&auth),
            "application/json",
            tx.sign(&claims()),
            "invalid_request",
        ),
        (
            "oversized",
            Some(&auth),
            set_type,
            format!("{}.{}", tx.sign(&claims()), "A".repeat(20 * 1024)),
            "invalid_request",
        ),
        ("unsigned", Some(&auth), set_type, unsigned, "invalid_key"),
        (
            "signed by another key",
            Some(&auth),
            set_type,
            tx.forge(&claims()),
            "invalid_key",
        ),
        (
            "another audience",
            Some(&auth),
            set_type,
            tx.sign(&with(&|c| c["aud"] = json!("https://someone-else"))),
            "invalid_audience",
        ),
        (
            "another issuer",
            Some(&auth),
            set_type,
            tx.sign(&with(&|c| c["iss"] = json!("https://evil.example"))),
            "invalid_issuer",
        ),
        (
            "stale",
            Some(&auth),
            set_type,
            tx.sign(&with(&|c| c["iat"] = json!(unix_now() - 3600))),
            "invalid_request",
        ),
        (
            "not a SET (typ)",
            Some(&auth),
            set_type,
            tx.sign_typed(&claims(), "at+jwt"),
            "invalid_request",
        ),
        (
            "an unsupported subject format",
            Some(&auth),
            set_type,
            tx.sign(&with(&|c| {
                c["sub_id"] = json!({"format":"phone_number","phone_number":"+12065550100"})
            })),
            "invalid_request",
        ),
        (
            "not a JWT",
            Some(&auth),
            set_type,
            "not-a-jwt".into(),
            "invalid_request",
        ),
    ];
    for (what, authorization, content_type, body, err) in refusals {
        let (status, answer) = push(&push_url(&pod), authorization, content_type, body).await;
        assert_eq!((status, answer["err"].as_str()), (400, Some(err)), "{what}: {answer}");
        assert!(answer["description"].is_string(), "{what}: {answer}");
    }
    let reply = pod.get(&alice).await;
    assert_eq!(reply.status, 200, "a refused SET revoked alice: {:?}", reply.body);
    assert_eq!(service.exchanges().await, before, "alice was not served from the cache");
    assert!(pod.baton.metrics().await.contains("baton_revocations_remembered 0"));

    // The transmitter pushes session-revoked: alice's session ends at once, without an exchange.
    let set_claims = claims();
    let set = tx.sign(&set_claims);
    let (status, answer) = push(&push_url(&pod), Some(&auth), set_type, set.clone()).await;
    assert_eq!(status, 202, "{answer}");
    for _ in 0..2 {
        pod.assert_revoked(&alice, "").await;
    }
    let reply = pod.get(&bob).await;
    assert_eq!(reply.status, 200, "bob is not alice: {:?}", reply.body);
    assert_eq!(
        service.exchanges().await,
        before,
        "a revoked or unaffected user was exchanged"
    );

    // Alice signs in again; a replay of the SET is refused and does not end her new session.
    next_second().await;
    let fresh = user(&service, "alice", r#"{"sid":"s-alice"}"#).await;
    assert_eq!(pod.get(&fresh).await.status, 200);
    let (status, answer) = push(&push_url(&pod), Some(&auth), set_type, set).await;
    assert_eq!(
        (status, answer["err"].as_str()),
        (400, Some("invalid_request")),
        "{answer}"
    );
    let reply = pod.get(&fresh).await;
    assert_eq!(reply.status, 200, "the replay revoked alice again: {:?}", reply.body);

    // Through the transmitter's own push delivery: an account event for bob.
    let statuses = tx
        .emit(
            events::ACCOUNT_PURGED,
            json!({"format":"iss_sub","iss": service.issuer, "sub":"bob"}),
        )
        .await;
    assert_eq!(statuses, [202]);
    pod.assert_revoked(&bob, "").await;

    let metrics = pod.baton.metrics().await;
    for line in [
        r#"baton_ssf_events_total{event="session-revoked",outcome="revoked"} 1"#,
        r#"baton_ssf_events_total{event="account-purged",outcome="revoked"} 1"#,
        r#"baton_ssf_events_total{event="none",outcome="invalid_key"} 2"#,
        r#"baton_ssf_events_total{event="none",outcome="authentication_failed"} 2"#,
        r#"baton_ssf_events_total{event="none",outcome="replayed"} 1"#,
        r#"baton_revocations_total{event="ssf.session-revoked",kind="session",outcome="ok"} 1"#,
    ] {
        assert!(metrics.contains(line), "no `{line}` in /metrics");
    }
    let records = pod.wait_for_revocation_records(2).await;
    assert_eq!(records[0]["event"], "ssf.session-revoked");
    assert_eq!(records[0]["kind"], "session");
    assert_eq!(records[0]["purged"], 2, "her token for orders and her verified subject");
    assert_eq!(records[1]["event"], "ssf.account-purged");
    assert_eq!(records[1]["subject"]["sub"], "bob");
    // No SET in anything Baton wrote: the leak scan (every SET the test transmitter signed) runs
    // when the pod stops.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_account_disabled_names_the_user_by_email() {
    let tx = TestTransmitter::start(AUDIENCE).await;
    let scratch = Scratch::new(BATON_BIN, "ssf-poll-sts");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let secret_file = scratch.write("ssf-poll-secret", &format!("{}\n", tx.secret));
    let pod = pod("ssf-poll", &service, &ssf_poll(&tx, &secret_file, None, "")).await;

    let carol = user(&service, "carol", r#"{"email":"carol@example.com"}"#).await;
    let dave = user(&service, "dave", r#"{"email":"dave@example.com"}"#).await;
    for user in [&carol, &dave] {
        assert_eq!(pod.get(user).await.status, 200);
    }
    wait_until("Baton to create its stream", Duration::from_secs(10), || {
        std::future::ready(tx.streams_created() == 1)
    })
    .await;
    let before = service.exchanges().await;

    // A forged SET and an event Baton does not act on come first: refused (setErrs) and ignored (acked).
    let forged = tx.claims(
        events::ACCOUNT_DISABLED,
        json!({"format":"email","email":"dave@example.com"}),
    );
    let forged_jti = forged["jti"].as_str().expect("jti").to_owned();
    tx.queue(&forged_jti, &tx.forge(&forged));
    let verification = tx.claims(events::VERIFICATION, json!({"format":"opaque","id":"stream-1"}));
    let verification_jti = verification["jti"].as_str().expect("jti").to_owned();
    tx.queue(&verification_jti, &tx.sign(&verification));
    wait_until("the forged SET refused by setErrs", Duration::from_secs(10), || {
        std::future::ready(tx.set_errs().contains_key(&forged_jti) && tx.acked().contains(&verification_jti))
    })
    .await;
    assert_eq!(tx.set_errs()[&forged_jti]["err"], "invalid_key");
    assert_eq!(pod.get(&dave).await.status, 200, "a forged SET disabled dave");

    // Account disabled, by e-mail address (any case): carol stops being delegated.
    tx.emit(
        events::ACCOUNT_DISABLED,
        json!({"format":"email","email":"Carol@Example.com"}),
    )
    .await;
    wait_until("carol refused", Duration::from_secs(10), || async {
        pod.get(&carol).await.reason() == "subject_revoked"
    })
    .await;
    assert_eq!(pod.get(&dave).await.status, 200, "dave is not carol");
    assert_eq!(service.exchanges().await, before);
    let metrics = pod.baton.metrics().await;
    for line in [
        r#"baton_ssf_events_total{event="account-disabled",outcome="revoked"} 1"#,
        r#"baton_ssf_events_total{event="unknown",outcome="ignored"} 1"#,
        r#"baton_ssf_polls_total{outcome="ok"}"#,
        r#"baton_revocations_total{event="ssf.account-disabled",kind="email",outcome="ok"} 1"#,
    ] {
        assert!(metrics.contains(line), "no `{line}` in /metrics");
    }
    let records = pod.wait_for_revocation_records(1).await;
    assert_eq!(
        (&records[0]["event"], &records[0]["kind"]),
        (&json!("ssf.account-disabled"), &json!("email"))
    );
    assert_eq!(
        records[0]["purged"], 2,
        "carol's verified subject, and her token for orders found by her (iss, sub)"
    );
    wait_until("the SET acknowledged", Duration::from_secs(5), || {
        std::future::ready(tx.acked().len() >= 2)
    })
    .await;
    // No push endpoint without `ssf.push`.
    let (status, _) = push(
        &push_url(&pod),
        Some("Bearer x"),
        "application/secevent+jwt",
        "x".into(),
    )
    .await;
    assert_eq!(status, 404);
}

/// Issue 14 section 3: one poll stream per Baton. Three Batons (each with its own Envoy) poll a
/// stream of their own at one transmitter (two created by Baton, one static); one event reaches
/// all three, and each stops delegating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pods_each_polling_its_own_stream_all_stop_delegating() {
    let tx = TestTransmitter::start(AUDIENCE).await;
    let scratch = Scratch::new(BATON_BIN, "ssf-pods-sts");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let secret_file = scratch.write("ssf-poll-secret", &format!("{}\n", tx.secret));
    // Pod 0 creates its stream and polls every 200 ms; pod 1 too, by long poll (the transmitter
    // holds the request until an event comes); pod 2's stream was configured at the transmitter.
    let static_stream = tx.poll_stream();
    let configs = [
        ssf_poll(&tx, &secret_file, None, ""),
        ssf_poll(&tx, &secret_file, None, "    return_immediately: false\n"),
        ssf_poll(&tx, &secret_file, Some(&static_stream), ""),
    ];
    let mut pods: Vec<Pod> = Vec::new();
    for (i, ssf) in configs.iter().enumerate() {
        pods.push(pod(&format!("ssf-pod-{i}"), &service, ssf).await);
    }
    let erin = user(&service, "erin", "{}").await;
    let frank = user(&service, "frank", "{}").await;
    for pod in &pods {
        assert_eq!(pod.get(&erin).await.status, 200);
        assert_eq!(pod.get(&frank).await.status, 200);
    }
    wait_until("two Batons to create their streams", Duration::from_secs(10), || {
        std::future::ready(tx.streams_created() == 2)
    })
    .await;

    let sent = Instant::now();
    tx.emit(
        events::CREDENTIAL_CHANGE,
        json!({"format":"iss_sub","iss": service.issuer, "sub":"erin"}),
    )
    .await;
    for (i, pod) in pods.iter().enumerate() {
        wait_until(&format!("pod {i} to refuse erin"), Duration::from_secs(10), || async {
            pod.get(&erin).await.reason() == "subject_revoked"
        })
        .await;
    }
    let all_refusing = sent.elapsed();
    for pod in &pods {
        assert_eq!(pod.get(&frank).await.status, 200, "frank is not erin");
    }
    // A Baton that stops deletes the stream it created; one polling a configured stream leaves it.
    for i in [0, 2] {
        pods[i].signal("TERM");
    }
    for i in [0, 2] {
        pods[i].baton.wait().await;
    }
    assert_eq!(
        tx.streams_deleted(),
        1,
        "pod 0's created stream deleted, pod 2's static one kept"
    );
    assert_eq!(tx.streams(), 2);
    report::line(&format!(
        "ssf many pods: 3 Batons, one poll stream each (interval 200ms; one long-polling): all refused the revoked user {} ms after the event was emitted; {} polls on the transmitter",
        all_refusing.as_millis(),
        tx.polls()
    ));
}
