//! OpenID Connect Back-Channel Logout through the real Envoy and the real panva oidc-provider (issue
//! 14, the first signal): users sign in at the provider and their requests are delegated; when one
//! user's session ends at the provider, the library itself sends Baton the logout token, and that
//! user's next request is refused `subject_revoked` without an exchange while another user is
//! unaffected. Logout tokens that break a rule of the spec (signed by a second trusted issuer, a
//! `baton sts` whose key the test holds, so each says what the row needs) are each refused with
//! their code and revoke nothing; a replayed one too. Once through ext_authz, once through ext_proc.

use std::time::Duration;

use baton_test_support::oidc_session::{APP_CLIENT_ID, Session, backchannel_peer};
use baton_test_support::revocation_stack::{REMEMBER, post_without_the_section};
use baton_test_support::*;
use serde_json::{Value, json};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// What users sign in for: the audience of their access tokens, the one Baton accepts.
const APP: &str = "https://app.example";
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
const FORM: &str = "application/x-www-form-urlencoded";

struct Stack {
    /// oidc-provider: users sign in here, Baton exchanges here, and it sends the logout tokens.
    idp: TokenService,
    /// A second trusted issuer whose signing key the test holds, to sign logout tokens that say
    /// what a row needs; its kid.
    forger: TokenService,
    forger_key: String,
    forger_kid: String,
    pod: Pod,
}

impl Stack {
    async fn start(api: Api) -> Self {
        let scratch = Scratch::new(BATON_BIN, &format!("backchannel-logout-{api:?}").to_lowercase());
        let key_file = sts_signing_key(&scratch, "forger");
        let forger_key = std::fs::read_to_string(&key_file).expect("the forger's key");
        leaks::secret(forger_key.trim());
        let forger = TokenService::start_with(
            Peer::BatonSts,
            &scratch,
            PeerOptions {
                signing_key_file: Some(key_file),
                name: Some("forger"),
                ..PeerOptions::default()
            },
        )
        .await;
        // The provider's issuer is known before it starts (its port), so Baton can trust it and
        // the provider can be told Baton's admin address.
        let idp_port = free_port();
        let idp_issuer = format!("http://127.0.0.1:{idp_port}");
        let extra = format!(
            r#"trusted_issuers:
  - issuer: {idp_issuer}
    audiences: ["{APP}"]
    jwks_min_refetch: 1s
  - issuer: {forger}
    audiences: ["{APP}"]
    jwks_min_refetch: 1s
revocation:
{REMEMBER}backchannel_logout:
  client_id: {APP_CLIENT_ID}
  issuers: [{idp_issuer}, {forger}]
  max_age: 2m
  leeway: 5s
  max_replay_entries: 100
"#,
            forger = forger.issuer
        );
        let pod = Pod::start(api, scratch, &format!("{idp_issuer}/token"), &extra).await;
        let logout_uri = pod.admin_url("/backchannel-logout");
        let idp = backchannel_peer(&pod.scratch, idp_port, &logout_uri, &[ORDERS, BILLING, APP]).await;
        assert_eq!(idp.issuer, idp_issuer);
        let response = http().get(&forger.jwks_uri).send().await.expect("the forger's JWKS");
        let jwks: Value = serde_json::from_slice(&response.bytes().await.expect("JWKS")).expect("JWKS json");
        let forger_kid = jwks["keys"][0]["kid"].as_str().expect("a kid").to_owned();
        // Baton tried the provider's JWKS before the provider was up: past `jwks_min_refetch`, the
        // first token fetches it again.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        Self {
            idp,
            forger,
            forger_key,
            forger_kid,
            pod,
        }
    }

    async fn get(&self, token: &str) -> Reply {
        self.pod.get(token).await
    }

    /// `POST /backchannel-logout` with this content type and body: (status, answer, Cache-Control).
    async fn post(&self, content_type: &str, body: String) -> (u16, Value, String) {
        let response = http()
            .post(self.pod.admin_url("/backchannel-logout"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /backchannel-logout");
        let status = response.status().as_u16();
        let cache_control = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let answer = serde_json::from_slice(&response.bytes().await.expect("body")).unwrap_or_default();
        (status, answer, cache_control)
    }

    /// A logout token of the forger's with these claims, and these header members.
    fn forged(&self, header: Value, claims: &Value) -> String {
        let mut header = header;
        if header.get("kid").is_none() {
            header["kid"] = Value::from(self.forger_kid.as_str());
        }
        sign_es256(&self.forger_key, header, claims)
    }

    /// Claims of a good logout token from the forger, for `sub`, fresh.
    fn claims(&self, sub: &str, jti: &str) -> Value {
        json!({
            "iss": self.forger.issuer, "aud": APP_CLIENT_ID, "iat": unix_now(), "jti": jti,
            "sub": sub, "events": { EVENT: {} },
        })
    }
}

fn form(token: &str) -> String {
    format!("logout_token={token}")
}

fn with(mut claims: Value, change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    change(claims.as_object_mut().expect("an object"));
    claims
}

async fn suite(api: Api) {
    let stack = Stack::start(api).await;
    let idp = &stack.idp;
    let alice = Session::sign_in(idp, "alice", APP).await;
    let bob = Session::sign_in(idp, "bob", APP).await;
    assert_ne!(alice.sid, bob.sid);

    // Both delegated, then served from the cache.
    let before = idp.exchanges().await;
    for user in [&alice, &bob] {
        let reply = stack.get(&user.access_token).await;
        assert_eq!(reply.status, 200, "{api:?}: {:?}", reply.body);
        assert_ne!(reply.upstream_token(), user.access_token.as_str());
    }
    assert_eq!(idp.exchanges().await, before + 2);

    // Logout tokens that break a rule: each refused with its code, nothing revoked.
    let now = unix_now();
    let good = stack.claims("mallory", "j-forged");
    let typ = json!({"typ": "logout+jwt"});
    let spliced = {
        let a = stack.forged(typ.clone(), &good);
        let b = stack.forged(
            typ.clone(),
            &with(good.clone(), |c| drop(c.insert("sub".into(), "eve".into()))),
        );
        let (head, _) = b.rsplit_once('.').expect("a JWS");
        let (_, signature) = a.rsplit_once('.').expect("a JWS");
        format!("{head}.{signature}")
    };
    let idp_issued = with(good.clone(), |c| {
        drop(c.insert("iss".into(), idp.issuer.clone().into()))
    });
    let rows: Vec<(&str, String, String, &str)> = vec![
        (
            "alg none",
            FORM.into(),
            form(&forge_jwt(
                r#"{"alg":"none","typ":"logout+jwt"}"#,
                &good.to_string(),
                "",
            )),
            "logout_token_unsigned",
        ),
        (
            "HMAC",
            FORM.into(),
            form(&forge_jwt(r#"{"alg":"HS256"}"#, &good.to_string(), "c2ln")),
            "logout_token_algorithm_not_allowed",
        ),
        (
            "bad signature",
            FORM.into(),
            form(&spliced),
            "logout_token_signature_invalid",
        ),
        (
            "another issuer's key",
            FORM.into(),
            form(&stack.forged(typ.clone(), &idp_issued)),
            "logout_token_key_unknown",
        ),
        (
            "another issuer's key, no kid",
            FORM.into(),
            form(&sign_es256(
                &stack.forger_key,
                json!({"typ": "logout+jwt"}),
                &idp_issued,
            )),
            "logout_token_signature_invalid",
        ),
        (
            "untrusted iss",
            FORM.into(),
            form(&stack.forged(
                typ.clone(),
                &with(good.clone(), |c| {
                    drop(c.insert("iss".into(), "https://stranger.example".into()))
                }),
            )),
            "logout_token_issuer_untrusted",
        ),
        (
            "wrong aud",
            FORM.into(),
            form(&stack.forged(
                typ.clone(),
                &with(good.clone(), |c| drop(c.insert("aud".into(), "someone-else".into()))),
            )),
            "logout_token_audience_mismatch",
        ),
        (
            "stale iat",
            FORM.into(),
            form(&stack.forged(
                typ.clone(),
                &with(good.clone(), |c| drop(c.insert("iat".into(), (now - 600).into()))),
            )),
            "logout_token_stale",
        ),
        (
            "future iat",
            FORM.into(),
            form(&stack.forged(
                typ.clone(),
                &with(good.clone(), |c| drop(c.insert("iat".into(), (now + 600).into()))),
            )),
            "logout_token_issued_in_future",
        ),
        (
            "expired",
            FORM.into(),
            form(&stack.forged(
                typ.clone(),
                &with(good.clone(), |c| drop(c.insert("exp".into(), (now - 120).into()))),
            )),
            "logout_token_expired",
        ),
        (
            "missing events",
            FORM.into(),
            form(&stack.forged(typ.clone(), &with(good.clone(), |c| drop(c.remove("events"))))),
            "logout_token_event_missing",
        ),
        (
            "events not an object",
            FORM.into(),
            form(&stack.forged(
                typ.clone(),
                &with(good.clone(), |c| drop(c.insert("events".into(), json!([EVENT])))),
            )),
            "logout_token_event_malformed",
        ),
        (
            "nonce present",
            FORM.into(),
            form(&stack.forged(
                typ.clone(),
                &with(good.clone(), |c| drop(c.insert("nonce".into(), "n-1".into()))),
            )),
            "logout_token_nonce_present",
        ),
        (
            "neither sub nor sid",
            FORM.into(),
            form(&stack.forged(typ.clone(), &with(good.clone(), |c| drop(c.remove("sub"))))),
            "logout_token_subject_missing",
        ),
        (
            "missing jti",
            FORM.into(),
            form(&stack.forged(typ.clone(), &with(good.clone(), |c| drop(c.remove("jti"))))),
            "logout_token_jti_missing",
        ),
        (
            "an access token's typ",
            FORM.into(),
            form(&stack.forged(json!({"typ": "at+jwt"}), &good)),
            "logout_token_type_invalid",
        ),
        (
            "oversized body",
            FORM.into(),
            form(&"a".repeat(17 * 1024)),
            "body_too_large",
        ),
        (
            "wrong content type",
            "application/json".into(),
            json!({"logout_token": stack.forged(typ.clone(), &good)}).to_string(),
            "content_type_invalid",
        ),
        ("not a JWT", FORM.into(), form("not-a-jwt"), "logout_token_malformed"),
        ("empty body", FORM.into(), String::new(), "logout_token_missing"),
        (
            "two tokens",
            FORM.into(),
            format!("{}&{}", form("a.b.c"), form("d.e.f")),
            "request_malformed",
        ),
    ];
    for (what, content_type, body, code) in rows {
        let (status, answer, cache_control) = stack.post(&content_type, body).await;
        let description = answer["error_description"].as_str().unwrap_or_default();
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_request")),
            "{api:?} {what}: {answer}"
        );
        assert!(
            description.starts_with(&format!("{code}: ")),
            "{api:?} {what}: expected {code}, got {answer}"
        );
        assert_eq!(cache_control, "no-store", "{what}");
    }
    let metrics = stack.pod.baton.metrics().await;
    assert!(
        metrics.contains("baton_revocations_remembered 0"),
        "{api:?}: a refused logout token revoked something"
    );
    let reply = stack.get(&alice.access_token).await;
    assert_eq!(reply.status, 200, "{api:?}: {:?}", reply.body);
    assert_eq!(
        idp.exchanges().await,
        before + 2,
        "alice is still served from the cache"
    );

    // A good logout token is acted on once: its replay is refused and changes nothing more.
    let carol = form(&stack.forged(typ.clone(), &stack.claims("carol", "j-carol")));
    let posted = std::time::Instant::now();
    let (status, answer, cache_control) = stack.post(FORM, carol.clone()).await;
    let handled = posted.elapsed();
    assert_eq!((status, cache_control.as_str()), (200, "no-store"), "{answer}");
    // Replayed, also after a configuration reload (the jtis are kept across it).
    for reload in [false, true] {
        if reload {
            stack.pod.reload().await;
        }
        let (status, answer, _) = stack.post(FORM, carol.clone()).await;
        assert_eq!(status, 400, "reload {reload}: {answer}");
        assert!(
            answer["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with("logout_token_replayed: ")),
            "reload {reload}: {answer}"
        );
    }
    assert!(
        stack
            .pod
            .baton
            .metrics()
            .await
            .contains("baton_revocations_remembered 1")
    );

    // Alice's session ends at the provider, which sends Baton the logout token itself (before it
    // answers the browser): her token is refused from then on, without an exchange.
    let alice_token = alice.access_token.clone();
    let ending = std::time::Instant::now();
    alice.end().await;
    let ended = ending.elapsed();
    let refused = stack.get(&alice_token).await;
    let signal_to_refusal = ending.elapsed();
    assert_eq!(refused.reason(), "subject_revoked", "{api:?}: {:?}", refused.body);
    // Measured, not asserted (debug build, loopback, shared machine).
    report::line(&format!(
        "backchannel_logout {api:?}: one logout POST verified and acted on in {} ms; the session's end at oidc-provider (its logout page, the confirm, the logout token built, signed, delivered and answered) {} ms; the first refused request {} ms after the end began",
        handled.as_millis(),
        ended.as_millis(),
        signal_to_refusal.as_millis()
    ));
    for _ in 0..2 {
        stack.pod.assert_revoked(&alice_token, &format!("{api:?}")).await;
        let reply = stack.get(&bob.access_token).await;
        assert_eq!(reply.status, 200, "{api:?}: bob is unaffected: {:?}", reply.body);
    }
    let metrics = stack.pod.baton.metrics().await;
    assert!(
        metrics.contains(r#"baton_backchannel_logouts_total{outcome="ok"} 2"#),
        "carol's and alice's logouts: {metrics}"
    );
    // alice's session and alice herself, and carol.
    assert!(metrics.contains("baton_revocations_remembered 3"), "{metrics}");
    assert!(metrics.contains(r#"baton_backchannel_logouts_total{outcome="logout_token_replayed"} 2"#));
    assert_eq!(idp.exchanges().await, before + 2, "bob is served from the cache");

    // The audit records name the event, never a token.
    // Carol; alice's session and subject.
    let records = stack.pod.wait_for_revocation_records(3).await;
    assert!(
        records
            .iter()
            .all(|r| r["event"] == "backchannel_logout" && r["outcome"] == "ok"),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_through_envoy_ext_authz() {
    suite(Api::ExtAuthz).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_through_envoy_ext_proc() {
    suite(Api::ExtProc).await;
}

/// Without a `backchannel_logout:` section the endpoint is off: 404, whatever is posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_section_the_endpoint_is_off() {
    let status = post_without_the_section(
        BATON_BIN,
        "backchannel-logout-off",
        "/backchannel-logout",
        ("content-type", FORM),
        "logout_token=a.b.c",
    )
    .await;
    assert_eq!(status, 404);
}
