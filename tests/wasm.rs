//! In-proxy mode through the real Envoy (issue 15 §2): Envoy runs the real `baton.wasm` (built
//! here with `--profile wasm`; the test fails, never skips, when it cannot be) with the plugin
//! configuration `baton envoy-config --api wasm` writes from Baton's own file, and Baton serves
//! `baton.v1.InProxy` beside ext_authz. A delegated request is rewritten and the next one is a
//! hit inside Envoy (no exchange, no Decide); an unlisted host gets no token; a forged token is
//! refused with its reason; a revocation reaches the filter within its bound (epoch tick +
//! timeout); the sidecar down is `sidecar_unavailable`, for cached tokens too once the bound passes.

use std::time::{Duration, Instant};

use baton_test_support::*;

const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");
const ADMIN_SECRET: &str = "revocation-admin-secret-for-wasm-tests-0123456789";

/// The access log of the wasm mode: what the filter recorded in the request's filter state.
const ACCESS_LOG: &str = r#"{"name":"envoy.access_loggers.file","typed_config":{
  "@type":"type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
  "path":"@ACCESS_LOG@",
  "log_format":{"json_format":{"authority":"%REQ(:AUTHORITY)%","status":"%RESPONSE_CODE%",
    "baton_decision":"%FILTER_STATE(wasm.baton.decision:PLAIN)%",
    "baton_destination":"%FILTER_STATE(wasm.baton.destination:PLAIN)%",
    "baton_reason":"%FILTER_STATE(wasm.baton.reason:PLAIN)%"}}}}"#;

/// `baton envoy-config --api wasm` for Baton's file in `scratch`, routed to the test upstream.
fn bootstrap(scratch: &Scratch, listen: u16, upstream: u16) -> String {
    let output = std::process::Command::new(BATON_BIN)
        .args(["envoy-config", "--api", "wasm", "--wasm-module"])
        .arg(wasm_module())
        .arg("--config")
        .arg(scratch.0.join("baton.yaml"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{listen}"))
        .output()
        .expect("run baton envoy-config");
    assert!(
        output.status.success(),
        "baton envoy-config --api wasm: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut document: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&output.stdout)).expect("the bootstrap is YAML");
    to_test_upstream(&mut document, upstream);
    let manager = &mut document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    manager["access_log"] = serde_json::json!([serde_json::from_str::<serde_json::Value>(ACCESS_LOG).expect("json")]);
    // `Envoy::start_with_bootstrap` reads the listener's port from `port_value: N`, so YAML.
    baton_envoy::envoy_config::to_yaml(&document).expect("yaml")
}

struct InProxy {
    scratch: Scratch,
    service: TokenService,
    baton: Baton,
    _upstream: Upstream,
    envoy: Envoy,
}

impl InProxy {
    async fn start(name: &str) -> Self {
        let scratch = Scratch::new(BATON_BIN, name);
        leaks::secret(ADMIN_SECRET);
        let secret_file = scratch.write("admin-secret", &format!("{ADMIN_SECRET}\n"));
        let service = TokenService::start(Peer::BatonSts, &scratch).await;
        let extra = format!(
            "revocation:\n  remember: 1h\n  max_entries: 100\n  admin_secret_file: {}\n\
             trusted_issuers:\n  - issuer: {}\n    audiences: [frontend]\n",
            secret_file.display(),
            service.issuer
        );
        let baton = Baton::start(&scratch, &service.token_endpoint, &extra).await;
        let upstream = Upstream::start().await;
        let started = Instant::now();
        let envoy = Envoy::start_with_bootstrap(&scratch, &bootstrap(&scratch, free_port(), upstream.port)).await;
        eprintln!("envoy with baton.wasm ready in {:?}", started.elapsed());
        // The filter serves nothing cached before it has heard the sidecar's epoch (tick: 1 s).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        Self {
            scratch,
            service,
            baton,
            _upstream: upstream,
            envoy,
        }
    }

    async fn get(&self, host: &str, authorization: Option<&str>) -> Reply {
        send(&self.envoy, host, "/orders/1", authorization).await
    }

    /// The sidecar's audit lines for InProxy/Decide (the filter's misses).
    fn decides(&self) -> usize {
        std::fs::read_to_string(self.scratch.0.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"in_proxy\""))
            .count()
    }

    async fn revoke(&self, body: serde_json::Value) {
        let response = http()
            .post(format!("http://127.0.0.1:{}/revoke", self.baton.admin))
            .header("authorization", format!("Bearer {ADMIN_SECRET}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST /revoke");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
}

/// A user token for the frontend (the audience Baton verifies subject tokens for).
async fn user(svc: &TokenService, sub: &str) -> String {
    svc.mint_with(&[("sub", sub), ("scope", "orders.read"), ("aud", "frontend")])
        .await
}

/// Poll the access log for the line of the `n`th request (from 1).
async fn access_line(envoy: &Envoy, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = envoy.access_log();
        if lines.len() >= n {
            return lines[n - 1].clone();
        }
        assert!(Instant::now() < deadline, "no access log line {n}: {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wasm_filter_delegates_serves_hits_and_fails_closed() {
    let mut stack = InProxy::start("wasm").await;
    let svc = &stack.service;
    let alice = user(svc, "alice").await;
    let bob = user(svc, "bob").await;
    let probes = stack.envoy.access_log().len();

    // A miss: the sidecar exchanges, the upstream sees the issued token, not the user's.
    let before = svc.exchanges().await;
    let first = stack.get("orders.example", Some(&bearer(&alice))).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let issued = first.upstream_token().to_owned();
    assert_ne!(issued, alice, "the user's token must not reach the destination");
    assert_eq!(svc.exchanges().await, before + 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while stack.decides() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decides = stack.decides();
    assert_eq!(decides, 1, "the miss is in the sidecar's audit (api in_proxy)");

    // Hits: the same token again, no exchange; each Envoy worker has a cache of its own (its own
    // VM), so a worker's first request may miss: every miss is one Decide, a hit none.
    let mut hits = 0;
    for n in 0..8 {
        let again = stack.get("ORDERS.example", Some(&bearer(&alice))).await;
        assert_eq!(again.upstream_token(), issued);
        let line = access_line(&stack.envoy, probes + 2 + n).await;
        assert_eq!(line["baton_destination"], "orders", "{line}");
        match line["baton_decision"].as_str() {
            Some("hit") => hits += 1,
            Some("miss") => {}
            other => panic!("decision {other:?}: {line}"),
        }
    }
    assert!(hits >= 1, "no request was served inside Envoy");
    assert_eq!(svc.exchanges().await, before + 1, "a hit exchanges nothing");
    // Audit lines may be written just after the reply: wait for them, then for any extra.
    let want = decides + 8 - hits;
    let deadline = Instant::now() + Duration::from_secs(3);
    while stack.decides() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stack.decides(),
        want,
        "every miss is one Decide, a hit asks the sidecar nothing"
    );

    // A caller's own DPoP proof is for its own token: a hit removes it (the filter skips that host
    // call only when the request has no proof), as a miss and ext_authz do.
    let mut proof_hits = 0;
    for n in 0..4 {
        let reply = send_with(
            &stack.envoy,
            "orders.example",
            "/orders/1",
            Some(&bearer(&alice)),
            &[("dpop", "caller.proof.junk")],
        )
        .await;
        assert_eq!(reply.upstream_token(), issued);
        assert_eq!(reply.body["dpop"], serde_json::Value::Null, "{:?}", reply.body);
        let line = access_line(&stack.envoy, probes + 10 + n).await;
        proof_hits += usize::from(line["baton_decision"] == "hit");
    }
    assert!(proof_hits >= 1, "no request with a proof was served inside Envoy");

    // An unlisted host gets no token at all.
    let unlisted = stack.get("evil.example", Some(&bearer(&alice))).await;
    assert_eq!(unlisted.upstream_authorization(), None, "{:?}", unlisted.body);

    // Forged and malformed tokens are refused with their reasons.
    let forged = forge_jwt(
        r#"{"alg":"none","typ":"JWT"}"#,
        &format!(
            r#"{{"iss":"{}","sub":"mallory","aud":"frontend","exp":4102444800}}"#,
            svc.issuer
        ),
        "",
    );
    let refused = stack.get("orders.example", Some(&bearer(&forged))).await;
    assert_eq!(refused.status, 401, "{:?}", refused.body);
    assert!(refused.reason().starts_with("subject_token_"), "{:?}", refused.body);
    let malformed = stack.get("orders.example", Some("Bearer a b")).await;
    assert_eq!((malformed.status, malformed.reason()), (401, "malformed_token"));
    let missing = stack.get("orders.example", None).await;
    assert_eq!((missing.status, missing.reason()), (401, "missing_token"));

    // Bob is cached too; then alice is revoked: within the bound her cached token is refused.
    assert_eq!(stack.get("orders.example", Some(&bearer(&bob))).await.status, 200);
    assert_eq!(stack.get("orders.example", Some(&bearer(&bob))).await.status, 200);
    stack.revoke(serde_json::json!({ "sub": "alice" })).await;
    let revoked_at = Instant::now();
    // epoch_tick (1 s) + the generated timeout (Baton's token service timeout here, 1 s, + 1 s).
    let bound = Duration::from_secs(3);
    loop {
        let reply = stack.get("orders.example", Some(&bearer(&alice))).await;
        if reply.status == 401 {
            assert_eq!(reply.reason(), "subject_revoked");
            break;
        }
        assert!(
            revoked_at.elapsed() < bound + Duration::from_millis(500),
            "the revocation did not reach the filter within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("revocation reached the filter in {:?}", revoked_at.elapsed());

    // The sidecar down: a miss is sidecar_unavailable at once, a cached token once the bound passes.
    let carol = user(svc, "carol").await;
    assert_eq!(stack.get("orders.example", Some(&bearer(&bob))).await.status, 200);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(stack.baton.pid().to_string())
        .status();
    stack.baton.wait().await;
    let down = stack.get("orders.example", Some(&bearer(&carol))).await;
    assert_eq!(
        (down.status, down.reason()),
        (503, "sidecar_unavailable"),
        "{:?}",
        down.body
    );
    tokio::time::sleep(bound + Duration::from_millis(500)).await;
    let stale = stack.get("orders.example", Some(&bearer(&bob))).await;
    assert_eq!(
        (stale.status, stale.reason()),
        (503, "sidecar_unavailable"),
        "{:?}",
        stale.body
    );
}

/// A plugin configuration generated from an older `baton.yaml` is not trusted after Baton reloads
/// a new one: the sidecar's epoch carries the digest of the configuration its file generates, and a
/// filter whose own differs serves nothing cached. Here the reload adds a policy (GET only) to
/// `orders`: the filter's stale configuration has none, so without the check a cached token would
/// be served to a POST the new policy refuses; with it, the POST is a miss and the sidecar refuses
/// it (`method_not_allowed`), while GET is still delegated (by the sidecar, every time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_plugin_configuration_serves_nothing_cached_after_a_reload() {
    let stack = InProxy::start("wasm-drift").await;
    let alice = user(&stack.service, "alice").await;
    let post = || async {
        let response = http()
            .post(stack.envoy.url("/orders/1"))
            .header("host", "orders.example")
            .header("authorization", bearer(&alice))
            .send()
            .await
            .expect("POST through envoy");
        let status = response.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.expect("body")).unwrap_or_default();
        (status, body["error"].as_str().unwrap_or("").to_owned())
    };
    // Before: both workers hold alice's delegation, and a POST is served from the cache.
    for _ in 0..6 {
        assert_eq!(stack.get("orders.example", Some(&bearer(&alice))).await.status, 200);
    }
    assert_eq!(post().await.0, 200, "no policy yet: a POST is delegated");

    let file = stack.scratch.0.join("baton.yaml");
    let text = std::fs::read_to_string(&file).expect("baton.yaml");
    let tightened = text.replacen(
        "    scopes: [orders.read]\n",
        "    scopes: [orders.read]\n    policy:\n      methods: [GET]\n",
        1,
    );
    assert_ne!(tightened, text, "the orders destination's scopes line");
    std::fs::write(&file, tightened).expect("write baton.yaml");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &stack.baton.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());

    // Once every worker has polled the epoch (within epoch_tick + timeout: 3 s here), a POST is
    // refused by the sidecar's new policy, however often alice's GETs are delegated meanwhile.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    for n in 0..6 {
        assert_eq!(stack.get("orders.example", Some(&bearer(&alice))).await.status, 200);
        assert_eq!(
            post().await,
            (403, "method_not_allowed".to_owned()),
            "POST {n} after the reload"
        );
    }
    let decides = stack.decides();
    for _ in 0..4 {
        assert_eq!(stack.get("orders.example", Some(&bearer(&alice))).await.status, 200);
    }
    let want = decides + 4;
    let deadline = Instant::now() + Duration::from_secs(3);
    while stack.decides() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stack.decides(), want, "a stale filter asks the sidecar every time");
}

/// The filter's hand-written messages (`baton_wasm::messages`) and the sidecar's generated ones
/// agree on the fields a Purge depends on: a Decide reply's `served` and `issued`, and the Purge.
#[test]
fn the_purge_messages_agree_with_the_sidecars() {
    use prost::Message as _;
    let reply = baton_envoy::broker::pb::DecideReply {
        action: 1,
        generation: 9,
        served: vec![3; 32],
        issued: "sha256:fingerprint".to_owned(),
        ..Default::default()
    };
    let read = baton_wasm::messages::DecideReply::decode(reply.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(
        (read.served, read.issued.as_str(), read.generation),
        (vec![3; 32], "sha256:fingerprint", 9)
    );
    let purge = baton_wasm::messages::PurgeRequest {
        served: vec![4; 32],
        issued: "sha256:x".to_owned(),
    };
    let read = baton_envoy::broker::pb::PurgeRequest::decode(purge.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!((read.served, read.issued.as_str()), (vec![4; 32], "sha256:x"));
    let answer = baton_envoy::broker::pb::PurgeReply {
        purged: true,
        generation: 5,
    };
    let read = baton_wasm::messages::PurgeReply::decode(answer.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!((read.purged, read.generation), (true, 5));
}
