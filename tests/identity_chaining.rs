//! Identity chaining across trust domains (issue 16 section 4, draft-ietf-oauth-identity-chaining)
//! through the real Envoy, with two real authorization servers: panva's oidc-provider as the home
//! domain (AS-A, which issues the user's token and the JWT authorization grant) and a second one as
//! the foreign domain (AS-B, which trusts AS-A's grants only: signature by AS-A's keys found by its
//! discovery, `iss` AS-A, `aud` itself, `exp`). Each AS counts the requests that reach its token
//! endpoint, so the cache and the coalescing of each step are counted where they matter.

use std::time::Duration;

use baton_test_support::*;
use futures_util::future::join_all;
use serde_json::Value;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// A grant audience AS-A will issue for but no foreign server here is.
const ELSEWHERE: &str = "https://elsewhere.example";

fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

struct Domains {
    home: TokenService,
    foreign: TokenService,
    /// A foreign server that trusts another home issuer, not AS-A.
    untrusting: TokenService,
    baton: Baton,
    envoy: Envoy,
    /// A second Envoy asking the same Baton through ext_proc.
    envoy_proc: Envoy,
    _upstream: Upstream,
    scratch: Scratch,
}

async fn domains(name: &str) -> Domains {
    let scratch = Scratch::new(BATON_BIN, name);
    let (home_port, foreign_port, untrusting_port) = (free_port(), free_port(), free_port());
    let issuer = |port: u16| format!("http://127.0.0.1:{port}");
    let home = TokenService::start_with(
        Peer::OidcProvider,
        &scratch,
        PeerOptions {
            port: Some(home_port),
            name: Some("as-a"),
            // The grants AS-A may issue: for the two foreign servers, and for one that is neither.
            audiences: vec![issuer(foreign_port), issuer(untrusting_port), ELSEWHERE.to_owned()],
            ..Default::default()
        },
    )
    .await;
    let foreign_with = |port: u16, trusted: String, name: &'static str| PeerOptions {
        port: Some(port),
        name: Some(name),
        audiences: vec![ORDERS.to_owned(), BILLING.to_owned()],
        env: vec![
            ("TRUSTED_GRANT_ISSUER", trusted),
            ("GRANT_SUBJECT_PREFIX", "as-a:".to_owned()),
        ],
        ..Default::default()
    };
    let foreign = TokenService::start_with(
        Peer::OidcProvider,
        &scratch,
        foreign_with(foreign_port, home.issuer.clone(), "as-b"),
    )
    .await;
    // Trusts an issuer on a port nobody listens on: AS-A's grants are not its.
    let untrusting = TokenService::start_with(
        Peer::OidcProvider,
        &scratch,
        foreign_with(untrusting_port, issuer(free_port()), "as-b-untrusting"),
    )
    .await;
    assert_eq!(foreign.issuer, issuer(foreign_port));

    let secret = scratch.write("baton-client-secret", CLIENT_SECRET);
    let auth = format!(
        "client_id: {CLIENT_ID}, auth: {{method: client_secret_basic, secret_file: '{}'}}, timeout: 2s",
        secret.display()
    );
    let chained = |endpoint: &str, audience: &str| {
        format!(
            "{{token_endpoint: '{endpoint}', {auth}, profile: identity_chaining, identity_chaining: {{home: home, grant_audience: '{audience}', grant_issuer: '{}'}}}}",
            home.issuer
        )
    };
    let config = format!(
        r#"token_services:
  home: {{token_endpoint: '{}', {auth}, retries: 0}}
  partner: {}
  untrusting: {}
  wrong-audience: {}
  unlisted: {}
  other-issuer: {}
cache:
  max_entries: 1000
  expiry_margin: 30s
  negative_ttl: 60s
destinations:
  - {{name: partner-orders, hosts: [orders.partner.example], audience: "{ORDERS}", scopes: [orders.read], token_service: partner}}
  - {{name: partner-billing, hosts: [billing.partner.example], audience: "{BILLING}", token_service: partner}}
  - {{name: untrusting, hosts: [untrusting.example], audience: "{ORDERS}", token_service: untrusting}}
  - {{name: wrong-audience, hosts: [wrong-audience.example], audience: "{ORDERS}", token_service: wrong-audience}}
  - {{name: unlisted, hosts: [unlisted.example], audience: "{ORDERS}", token_service: unlisted}}
  - {{name: other-issuer, hosts: [other-issuer.example], audience: "{ORDERS}", token_service: other-issuer}}
"#,
        home.token_endpoint,
        chained(&foreign.token_endpoint, &foreign.issuer),
        chained(&untrusting.token_endpoint, &untrusting.issuer),
        chained(&foreign.token_endpoint, ELSEWHERE),
        // AS-A issues no grant for this audience.
        chained(&foreign.token_endpoint, "https://unlisted.example"),
        // Expects grants from another issuer than AS-A.
        chained(&foreign.token_endpoint, &foreign.issuer).replace(&home.issuer, "https://not-as-a.example"),
    );
    let baton = Baton::start_raw(&scratch, &config, "baton=debug,info").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let envoy_proc = Envoy::start_for(Api::ExtProc, &scratch, baton.grpc, upstream.port).await;
    Domains {
        home,
        foreign,
        untrusting,
        baton,
        envoy,
        envoy_proc,
        _upstream: upstream,
        scratch,
    }
}

impl Domains {
    async fn get(&self, host: &str, token: &str) -> Reply {
        send(&self.envoy, host, "/", Some(&format!("Bearer {token}"))).await
    }

    /// The same request through the ext_proc Envoy.
    async fn get_proc(&self, host: &str, token: &str) -> Reply {
        send(&self.envoy_proc, host, "/", Some(&format!("Bearer {token}"))).await
    }

    /// Requests that reached each token endpoint: (AS-A token exchanges, AS-B jwt-bearer grants).
    async fn calls(&self) -> (u64, u64) {
        (self.home.exchanges().await, self.foreign.stat("jwt_bearer").await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_delegated_across_trust_domains_with_each_step_cached_and_coalesced() {
    let d = domains("identity-chaining").await;
    let alice = d.home.mint("alice", "orders.read").await;

    // The destination receives AS-B's token: its subject mapped from the user, for the destination.
    let reply = d.get("orders.partner.example", &alice).await;
    let token = reply.upstream_token().to_owned();
    let claims = d.foreign.verify(&token).await;
    assert_eq!(claims["iss"], d.foreign.issuer.as_str());
    assert_eq!(claims["sub"], "as-a:alice");
    assert_eq!(audiences(&claims), [ORDERS]);
    assert_eq!(claims["scope"], "orders.read");
    assert_eq!(d.calls().await, (1, 1), "one call to each authorization server");

    // The second request is a cache hit: neither server is asked again.
    let again = d.get("orders.partner.example", &alice).await;
    assert_eq!(again.upstream_token(), token);
    assert_eq!(d.calls().await, (1, 1), "a hit calls neither server");

    // Another destination in the foreign domain: the cached grant serves, only AS-B is asked.
    let billing = d.get("billing.partner.example", &alice).await;
    let claims = d.foreign.verify(billing.upstream_token()).await;
    assert_eq!(
        (audiences(&claims), &claims["sub"]),
        (vec![BILLING.to_owned()], &"as-a:alice".into())
    );
    assert_eq!(d.calls().await, (1, 2), "the grant came from the cache");

    // Concurrent misses for a new user, towards two destinations at once: one grant from AS-A for
    // all of them, one token from AS-B per destination.
    let bob = d.home.mint("bob", "orders.read").await;
    let requests = (0..12).map(|i| {
        let host = if i % 2 == 0 {
            "orders.partner.example"
        } else {
            "billing.partner.example"
        };
        d.get(host, &bob)
    });
    let replies = join_all(requests).await;
    for reply in &replies {
        assert!(reply.upstream_token().len() > 20, "{:?}", reply.body);
    }
    assert_eq!(
        d.calls().await,
        (2, 4),
        "one call per step and per key for concurrent misses"
    );

    // Through ext_proc alike: a miss makes both steps, then the hit is shared with ext_authz.
    let carol = d.home.mint("carol", "orders.read").await;
    let reply = d.get_proc("orders.partner.example", &carol).await;
    let claims = d.foreign.verify(reply.upstream_token()).await;
    assert_eq!(
        (audiences(&claims), &claims["sub"]),
        (vec![ORDERS.to_owned()], &"as-a:carol".into())
    );
    assert_eq!(d.calls().await, (3, 5));
    assert_eq!(
        d.get("orders.partner.example", &carol).await.upstream_token(),
        reply.upstream_token()
    );
    assert_eq!(d.calls().await, (3, 5));

    // Audit and spans name both steps.
    eventually("the exchange span with both steps", || {
        d.baton.exported_spans().into_iter().find(|s| {
            s.name == "baton.exchange"
                // The receiver prints attribute values as their protobuf debug form.
                && s.attributes.get("baton.token_service").is_some_and(|v| v.contains("\"partner\""))
                && ["baton.chaining.grant", "baton.chaining.assertion"]
                    .iter()
                    .all(|step| s.events.iter().any(|e| e.name == *step))
        })
    })
    .await;
    let audit = std::fs::read_to_string(d.scratch.0.join("audit.log")).expect("audit log");
    let line: Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["destination"] == "partner-orders")
        .expect("an audit record for the partner destination");
    assert_eq!(line["identity_chaining"]["grant_from"], "home", "{line}");
    assert_eq!(line["identity_chaining"]["assertion_at"], "partner", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_server_refusing_the_grant_or_the_home_one_down_stops_the_request() {
    let d = domains("identity-chaining-refused").await;
    let alice = d.home.mint("alice", "orders.read").await;
    let bob = d.home.mint("bob", "orders.read").await;

    // A foreign server that does not trust AS-A refuses its grant: nothing reaches the upstream.
    let refused = d.get("untrusting.example", &alice).await;
    assert_eq!(
        (refused.status, refused.reason()),
        (403, "chaining_assertion_refused"),
        "{:?}",
        refused.body
    );
    let description = refused.body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains("step 2") && description.contains("untrusting"),
        "{description}"
    );
    assert!(
        refused.body.get("authorization").is_none(),
        "the upstream answered: {:?}",
        refused.body
    );
    assert_eq!(d.untrusting.stat("jwt_bearer").await, 1);
    // Through ext_proc the same refusal (remembered: not asked again).
    let refused = d.get_proc("untrusting.example", &alice).await;
    assert_eq!(
        (refused.status, refused.reason()),
        (403, "chaining_assertion_refused"),
        "{:?}",
        refused.body
    );
    assert_eq!(d.untrusting.stat("jwt_bearer").await, 1);

    // AS-A's grant for another audience (Baton was told to ask for it): AS-B refuses it.
    let refused = d.get("wrong-audience.example", &alice).await;
    assert_eq!(
        (refused.status, refused.reason()),
        (403, "chaining_assertion_refused"),
        "{:?}",
        refused.body
    );
    assert_eq!(d.foreign.stat("jwt_bearer").await, 1);

    // A definite refusal is remembered briefly: the retry does not reach either server.
    let calls = d.calls().await;
    let again = d.get("wrong-audience.example", &alice).await;
    assert_eq!(again.reason(), "chaining_assertion_refused");
    assert_eq!(d.calls().await, calls);

    // AS-A refuses the grant (an audience it does not issue grants for): step 1's refusal.
    let before = d.foreign.stat("jwt_bearer").await;
    let refused = d.get("unlisted.example", &alice).await;
    assert_eq!(
        (refused.status, refused.reason()),
        (403, "chaining_grant_refused"),
        "{:?}",
        refused.body
    );
    let description = refused.body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains("step 1") && description.contains("`home`"),
        "{description}"
    );

    // AS-A's grant is not from the issuer Baton expects: never presented to AS-B.
    let refused = d.get("other-issuer.example", &alice).await;
    assert_eq!(
        (refused.status, refused.reason()),
        (503, "chaining_grant_invalid"),
        "{:?}",
        refused.body
    );
    assert_eq!(d.foreign.stat("jwt_bearer").await, before, "AS-B saw neither");

    // AS-A down: step 1 cannot be made; its reason, the step named, nothing upstream.
    d.home.signal("KILL");
    let port = d.home.port();
    eventually("AS-A to stop listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err().then_some(())
    })
    .await;
    let down = d.get("orders.partner.example", &bob).await;
    assert_eq!(
        (down.status, down.reason()),
        (503, "token_service_unavailable"),
        "{:?}",
        down.body
    );
    let description = down.body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains("step 1") && description.contains("`home`"),
        "{description}"
    );
    assert_eq!(d.foreign.stat("jwt_bearer").await, 1, "AS-B was not asked");
    let log = std::fs::read_to_string(d.scratch.0.join("baton.log")).expect("baton log");
    assert!(
        !log.contains(&bob) && !log.contains(&alice),
        "a user's token was logged"
    );
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
