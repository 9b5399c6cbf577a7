//! The token service's circuit breaker through the real Envoy and `baton sts`: a token service that
//! answers 500 is cut off after enough failures (Baton answers 503 `token_service_circuit_open` at
//! once and stops calling it), and once a healthy one is back on the same address a single probe
//! goes through and delegation resumes.

use std::time::Duration;

use baton_test_support::*;
use futures_util::future::join_all;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

const OPEN_FOR: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_service_is_cut_off_then_probed_back() {
    let scratch = Scratch::new(BATON_BIN, "breaker");
    let port = free_port();
    let failing = TokenService::start_with(
        Peer::BatonSts,
        &scratch,
        PeerOptions {
            status: Some(500),
            port: Some(port),
            ..Default::default()
        },
    )
    .await;
    let endpoint = failing.token_endpoint.clone();
    let token_service = format!(
        "{}\n  retries: 0\n  circuit_breaker:\n    failure_ratio: 0.5\n    min_requests: 4\n    window: 30s\n    open_for: {}ms",
        basic_auth_to(&scratch, &format!("token_endpoint: {endpoint}")),
        OPEN_FOR.as_millis()
    );
    let baton = Baton::start_with(&scratch, &token_service, "").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let alice = bearer(&failing.mint("alice", "orders.read").await);

    // Four exchanges answered 500 (no retries): 4 of 4 failed, and the fourth opens the breaker.
    for i in 0..4 {
        let reply = send(&envoy, "orders.example", "/", Some(&alice)).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (503, "token_service_error"),
            "request {i}: {:?}",
            reply.body
        );
        assert!(reply.headers.get("retry-after").is_none(), "no pause known yet");
    }
    let opened = tokio::time::Instant::now();
    assert_eq!(failing.exchanges().await, 4);

    // Open: answered at once, and the service is not called.
    for i in 0..10 {
        let reply = send(&envoy, "orders.example", "/", Some(&alice)).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (503, "token_service_circuit_open"),
            "request {i} while open: {:?}",
            reply.body
        );
        // Until the breaker lets a probe through: within OPEN_FOR, in whole seconds rounded up.
        let retry_after = retry_after(&reply);
        assert!(
            (1..=OPEN_FOR.as_secs()).contains(&retry_after),
            "Retry-After {retry_after}"
        );
    }
    assert!(
        opened.elapsed() < OPEN_FOR,
        "the refusals took {:?}: the test cannot tell them from probes",
        opened.elapsed()
    );
    assert_eq!(failing.exchanges().await, 4, "an open breaker called the token service");
    let metrics = baton.metrics().await;
    for line in [
        r#"baton_circuit_breaker_state{token_service="default",state="open"} 1"#,
        r#"baton_circuit_breaker_state{token_service="default",state="closed"} 0"#,
        r#"baton_circuit_breaker_transitions_total{token_service="default",to="open"} 1"#,
        r#"baton_exchanges_total{token_service="default",outcome="token_service_circuit_open"} 10"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }

    // A healthy token service comes back on the same address, slow enough (300 ms an answer) that
    // requests arriving together overlap the probe.
    failing.stop().await;
    let healthy = TokenService::start_with(
        Peer::BatonSts,
        &scratch,
        PeerOptions {
            port: Some(port),
            delay: Some("300ms"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(healthy.token_endpoint, endpoint);
    let mut users = Vec::new();
    for name in ["bob", "carol", "dave"] {
        users.push(healthy.mint(name, "orders.read").await);
    }
    let wait = (opened + OPEN_FOR + Duration::from_millis(200)).saturating_duration_since(tokio::time::Instant::now());
    tokio::time::sleep(wait).await;

    // Half-open: of three users at once, one is the probe (and is delegated); the other two are
    // refused at once; exactly one exchange reached the service.
    let replies = join_all(users.iter().map(|u| {
        let auth = bearer(u);
        let envoy = &envoy;
        async move { send(envoy, "orders.example", "/", Some(&auth)).await }
    }))
    .await;
    let outcomes: Vec<(u16, String)> = replies.iter().map(|r| (r.status, r.reason().to_owned())).collect();
    let delegated: Vec<usize> = (0..3).filter(|&i| replies[i].status == 200).collect();
    let refused = outcomes
        .iter()
        .filter(|(s, r)| (*s, r.as_str()) == (503, "token_service_circuit_open"))
        .count();
    assert_eq!((delegated.len(), refused), (1, 2), "{outcomes:?}");
    for reply in replies.iter().filter(|r| r.status == 503) {
        assert_eq!(retry_after(reply), 1, "while the probe is out");
    }
    assert_eq!(healthy.exchanges().await, 1, "one probe only");
    let probe = delegated[0];
    let claims = healthy.verify(replies[probe].upstream_token()).await;
    assert_eq!(audiences(&claims), [ORDERS], "{claims}");
    assert_eq!(claims["sub"], ["bob", "carol", "dave"][probe], "{claims}");

    // Closed again: everyone is delegated, each with an exchange of their own.
    for (i, user) in users.iter().enumerate() {
        let reply = send(&envoy, "orders.example", "/", Some(&bearer(user))).await;
        let claims = healthy.verify(reply.upstream_token()).await;
        assert_eq!(claims["sub"], ["bob", "carol", "dave"][i], "{claims}");
    }
    assert_eq!(
        healthy.exchanges().await,
        3,
        "the probe's token was cached, the others exchanged"
    );
    let metrics = baton.metrics().await;
    for line in [
        r#"baton_circuit_breaker_state{token_service="default",state="closed"} 1"#,
        r#"baton_circuit_breaker_state{token_service="default",state="open"} 0"#,
        r#"baton_circuit_breaker_transitions_total{token_service="default",to="half_open"} 1"#,
        r#"baton_circuit_breaker_transitions_total{token_service="default",to="closed"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let log = std::fs::read_to_string(scratch.0.join("baton.log")).expect("baton.log");
    for (level, message) in [("WARN", "circuit open"), ("INFO", "circuit closed")] {
        assert!(
            log.lines().any(|l| l.contains(level) && l.contains(message)),
            "no {level} `{message}` line in baton.log"
        );
    }
}

/// The `Retry-After` of a reply, in seconds; it must be there.
fn retry_after(reply: &Reply) -> u64 {
    let value = reply.headers.get("retry-after").expect("a Retry-After header");
    value.to_str().ok().and_then(|v| v.parse().ok()).expect("delta-seconds")
}
