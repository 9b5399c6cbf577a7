//! DPoP-bound delegation (RFC 9449, issue 16 §1) through the real Envoy, by ext_authz (gRPC and
//! HTTP: the proof is an upstream header of the allowing answer, like `authorization`, and the
//! caller's own `dpop` is in `x-envoy-auth-headers-to-remove`), by ext_proc and by the Wasm filter (in-proxy mode: never cached in the filter, which holds no key
//! and can make no proof, so every request is a Decide and gets Baton's fresh proof), with panva's oidc-provider as the token service (its token-exchange grant checks
//! Baton's proof with the library's own DPoP validation and binds the token to the proof's key)
//! and a resource server that verifies every proof with `jose` (`dpop-resource.mjs`): signature,
//! typ, htm/htu, ath, iat, jti never replayed, cnf.jkt the proof's key.
//!
//! Asserted: each request reaches the destination with `Authorization: DPoP` and a fresh proof
//! (a hit too); a captured token and proof replayed to the destination are refused; the server's
//! `use_dpop_nonce` is answered; a rotated key file gets a new exchange and never the token bound to
//! the old key; a subject token that is itself bound is refused by default; a token service that
//! does not bind (`baton sts`) gets its token refused.

use std::process::Stdio;
use std::time::Duration;

use baton_test_support::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// The jose-verified resource server behind Envoy.
struct Resource {
    port: u16,
    _child: Child,
}

impl Resource {
    async fn start(scratch: &Scratch, service: &TokenService) -> Self {
        let dir = repo().join("tests/peers/oidc-provider");
        let mut child = Command::new("node")
            .arg(dir.join("dpop-resource.mjs"))
            .env("ISSUER", &service.issuer)
            .env("JWKS_URI", &service.jwks_uri)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(scratch.log("dpop-resource.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("ready within 30 s")
            .expect("read")
            .expect("a ready line");
        let ready: Value = serde_json::from_str(&ready).expect("json");
        Self {
            port: ready["port"].as_u64().expect("port") as u16,
            _child: child,
        }
    }

    /// Send `authorization` and `proof` straight to the resource server, as a thief who copied
    /// them would.
    async fn replay(&self, path: &str, authorization: &str, proof: &str) -> (u16, Value) {
        let response = http()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .header("host", "orders.example")
            .header("authorization", authorization)
            .header("dpop", proof)
            .send()
            .await
            .expect("replay");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }
}

/// A P-256 PKCS#8 key written to `scratch` under `name`, and its RFC 7638 thumbprint.
fn key_file(scratch: &Scratch, name: &str) -> (std::path::PathBuf, String) {
    let pem = rcgen::KeyPair::generate().expect("p256").serialize_pem();
    let jkt = baton_core::dpop::SigningKey::from_pem(&pem)
        .expect("key")
        .thumbprint()
        .to_owned();
    (scratch.write(name, &pem), jkt)
}

fn config(scratch: &Scratch, service: &TokenService, key: &std::path::Path) -> String {
    let token_service = basic_auth_to(scratch, &format!("token_endpoint: {}", service.token_endpoint));
    format!(
        r#"token_service:
{token_service}
dpop:
  key_file: {key}
  key_check_interval: 10ms
destinations:
  - name: orders
    hosts: [orders.example]
    audience: {ORDERS}
    binding: dpop
    upstream_scheme: http
"#,
        key = key.display()
    )
}

/// The sidecar's audit lines for `InProxy/Decide` so far (the Wasm filter's misses), waited for
/// until there are at least `want` (audit lines are written just after the answer), up to 3 s.
async fn decides(scratch: &Scratch, want: usize) -> usize {
    let count = || {
        std::fs::read_to_string(scratch.0.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"in_proxy\""))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while count() < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    count()
}

async fn get(envoy: &Envoy, path: &str, token: &str) -> Reply {
    send(envoy, "orders.example", path, Some(&format!("Bearer {token}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_bound_tokens_reach_the_destination_with_a_fresh_proof_each_time() {
    let scratch = Scratch::new(BATON_BIN, "dpop");
    let service = TokenService::start(Peer::OidcProvider, &scratch).await;
    let resource = Resource::start(&scratch, &service).await;
    let (key, jkt) = key_file(&scratch, "dpop-key.pem");
    let baton = Baton::start_raw(&scratch, &config(&scratch, &service, &key), "baton=debug,info").await;

    for (api, user) in [
        (Api::ExtAuthz, "alice"),
        (Api::ExtAuthzHttp, "dave"),
        (Api::ExtProc, "bob"),
        (Api::Wasm, "carol"),
    ] {
        let envoy = Envoy::start_for(api, &scratch, baton.port_for(api), resource.port).await;
        let token = service.mint(user, "").await;
        let before = service.exchanges().await;

        let first = get(&envoy, "/orders/1?page=2", &token).await;
        assert_eq!(first.status, 200, "{api:?}: {}", first.body);
        let authorization = first.body["authorization"].as_str().expect("authorization");
        assert!(authorization.starts_with("DPoP "), "{api:?}: {authorization}");
        assert_eq!(first.body["jkt"], jkt.as_str(), "{api:?}: bound to Baton's key");
        assert_eq!(first.body["sub"], user);
        assert_eq!(first.body["path"], "/orders/1");
        assert_eq!(service.exchanges().await, before + 1);

        // A hit: the same token, a new proof (the destination refuses a jti it has seen).
        let second = get(&envoy, "/orders/2", &token).await;
        assert_eq!(second.status, 200, "{api:?}: {}", second.body);
        assert_eq!(second.body["authorization"], authorization);
        assert_ne!(second.body["dpop"], first.body["dpop"]);
        assert_eq!(service.exchanges().await, before + 1, "{api:?}: served from the cache");

        // A thief with the token and a proof: the proof is used up, and one for another URL
        // does not fit.
        let proof = second.body["dpop"].as_str().expect("dpop");
        let (status, body) = resource.replay("/orders/2", authorization, proof).await;
        assert_eq!((status, body["why"].as_str()), (401, Some("jti replayed")), "{body}");
        let (status, body) = resource.replay("/orders/3", authorization, proof).await;
        assert_eq!(status, 401, "{body}");
        assert!(body["why"].as_str().unwrap_or("").starts_with("htu mismatch"), "{body}");
        // The token alone, under Bearer, is no good either.
        let (status, _) = resource
            .replay("/orders/2", &format!("Bearer {}", &authorization[5..]), proof)
            .await;
        assert_eq!(status, 401);

        // A proof the caller sent is replaced by Baton's.
        let third = send_with(
            &envoy,
            "orders.example",
            "/orders/4",
            Some(&format!("Bearer {token}")),
            &[("dpop", "caller.proof.junk")],
        )
        .await;
        assert_eq!(third.status, 200, "{api:?}: {}", third.body);
        assert_ne!(third.body["dpop"], "caller.proof.junk");
        assert_eq!(third.body["authorization"], authorization);

        if api == Api::Wasm {
            // Never served from the filter's cache (the filter waited for Baton's epoch, so it
            // would have served a cacheable token): each of the three requests was a Decide.
            assert_eq!(decides(&scratch, 3).await, 3, "every DPoP request is a Decide");
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(decides(&scratch, 3).await, 3, "and only those");
            assert_eq!(
                service.exchanges().await,
                before + 1,
                "{api:?}: the sidecar's cache served"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_nonce_is_used_and_a_rotated_key_is_never_served_an_old_token() {
    let scratch = Scratch::new(BATON_BIN, "dpop-nonce");
    let service = TokenService::start_with(
        Peer::OidcProvider,
        &scratch,
        PeerOptions {
            env: vec![("DPOP_REQUIRE_NONCE", "1".into())],
            ..PeerOptions::default()
        },
    )
    .await;
    let resource = Resource::start(&scratch, &service).await;
    let (key, jkt) = key_file(&scratch, "dpop-key.pem");
    let baton = Baton::start_raw(&scratch, &config(&scratch, &service, &key), "baton=debug,info").await;
    let envoy = Envoy::start_for(Api::ExtProc, &scratch, baton.grpc, resource.port).await;
    let alice = service.mint("alice", "").await;

    // The first exchange is answered `use_dpop_nonce` (the library's), then retried with the nonce.
    let reply = get(&envoy, "/a", &alice).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["jkt"], jkt.as_str());
    assert_eq!(
        service.exchanges().await,
        2,
        "one refused for want of a nonce, one granted"
    );
    // The nonce is remembered: the next exchange needs one request.
    let bob = service.mint("bob", "").await;
    let reply = get(&envoy, "/b", &bob).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(service.exchanges().await, 3, "the remembered nonce is sent at once");

    // Rotate the key file (renamed over, as a Secret update is): a new exchange, bound to the new key.
    let (next, next_jkt) = key_file(&scratch, "dpop-key-next.pem");
    std::fs::rename(&next, &key).expect("rotate");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = get(&envoy, "/a", &alice).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["jkt"], next_jkt.as_str(), "bound to the new key");
    assert_eq!(service.exchanges().await, 4, "the old key's token is not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_subject_token_and_an_unbound_issued_token_are_refused() {
    let scratch = Scratch::new(BATON_BIN, "dpop-refused");
    let service = TokenService::start(Peer::OidcProvider, &scratch).await;
    let resource = Resource::start(&scratch, &service).await;
    let (key, _) = key_file(&scratch, "dpop-key.pem");
    let baton = Baton::start_raw(&scratch, &config(&scratch, &service, &key), "baton=debug,info").await;
    let envoy = Envoy::start_for(Api::ExtAuthz, &scratch, baton.grpc, resource.port).await;

    // A user token bound to someone else's key (`cnf.jkt`): its proof cannot be checked here.
    let bound = service
        .mint_with(&[("sub", "alice"), ("jkt", baton_sts::ANOTHER_KEYS_THUMBPRINT)])
        .await;
    let reply = get(&envoy, "/a", &bound).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_bound"),
        "{}",
        reply.body
    );
    assert_eq!(service.exchanges().await, 0, "never exchanged");

    // A token service that ignores the proof and issues a Bearer token (`baton sts`): refused.
    let scratch = Scratch::new(BATON_BIN, "dpop-refused-sts");
    let sts = TokenService::start(Peer::BatonSts, &scratch).await;
    let (key, _) = key_file(&scratch, "dpop-key.pem");
    let baton = Baton::start_raw(&scratch, &config(&scratch, &sts, &key), "baton=debug,info").await;
    let envoy = Envoy::start_for(Api::ExtProc, &scratch, baton.grpc, resource.port).await;
    let token = sts.mint("alice", "").await;
    let reply = get(&envoy, "/a", &token).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (503, "issued_token_not_dpop_bound"),
        "{}",
        reply.body
    );

    // A token service that binds the token to another key than the proof's: refused, not cached.
    let scratch = Scratch::new(BATON_BIN, "dpop-refused-other-key");
    let options = PeerOptions {
        answer: Some("bound_to_another_key"),
        ..PeerOptions::default()
    };
    let sts = TokenService::start_with(Peer::BatonSts, &scratch, options).await;
    let (key, _) = key_file(&scratch, "dpop-key.pem");
    let baton = Baton::start_raw(&scratch, &config(&scratch, &sts, &key), "baton=debug,info").await;
    let token = sts.mint("alice", "").await;
    for api in [Api::ExtAuthz, Api::ExtAuthzHttp, Api::Wasm] {
        let envoy = Envoy::start_for(api, &scratch, baton.port_for(api), resource.port).await;
        // Twice: the second would be a 200 had the first answer been cached (by Baton or the filter).
        for _ in 0..2 {
            let reply = get(&envoy, "/a", &token).await;
            assert_eq!(
                (reply.status, reply.reason()),
                api.carries(503, "issued_token_jkt_mismatch"),
                "{api:?}: {}",
                reply.body
            );
        }
    }
    // Over HTTP the application gets Envoy's own 503 (`status_on_error`): the reason is Baton's
    // audit line's.
    let audit = scratch.0.join("audit.log");
    eventually("both HTTP refusals audited with their reason", || {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let refused = text
            .lines()
            .filter(|l| l.contains("\"ext_authz_http\"") && l.contains("\"issued_token_jkt_mismatch\""))
            .count();
        (refused == 2).then_some(())
    })
    .await;
    assert!(sts.exchanges().await >= 1, "the token service was asked");
}
