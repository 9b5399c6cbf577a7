//! The chain the mission describes, end to end: gateway -> service A -> service B -> service C, each
//! of A and B with its own real Envoy and its own Baton, and panva's oidc-provider as the one
//! authorization server (it issued the user's token, and exchanges at each hop, nesting `act`). The
//! test plays the gateway: it sends the user's token and a W3C `traceparent` to A. A and B are test
//! relays (`Relay`); C records what it receives. A's Envoy asks its Baton by ext_authz, B's by
//! ext_proc.
//!
//! Asserted: C gets a token for C, for the user, whose `act` names B with A nested inside, each
//! hop's audit record and span in the one trace the gateway started, the chain authenticated
//! (`verify_issued`, `chain_verified`); and a policy that refuses at B (an actor not allowed in the
//! subject's chain, in the issued chain, or a depth limit) stops the chain there with its reason,
//! C receiving nothing.

use baton_test_support::*;
use serde_json::{Value, json};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

const A_AUD: &str = "https://svc-a.example";
const B_AUD: &str = "https://svc-b.example";
const C_AUD: &str = "https://svc-c.example";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// One hop's sidecar: Baton and its Envoy, in a scratch directory of their own (each keeps its own
/// audit log).
struct Hop {
    baton: Baton,
    envoy: Envoy,
    scratch: Scratch,
}

impl Hop {
    /// Baton as workload `actor` (its own token from the token service), verifying subject tokens
    /// for `own_audience`, with `destinations` (YAML list items); its Envoy asks it through `api`
    /// and goes to `next`.
    async fn start(
        name: &str,
        api: Api,
        service: &TokenService,
        actor: &str,
        own_audience: &str,
        destinations: &str,
        next: u16,
    ) -> Self {
        let scratch = Scratch::new(BATON_BIN, name);
        let actor_token = service.mint(actor, "").await;
        let actor_file = scratch.write("actor-token", &actor_token);
        let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
        let body = format!(
            r#"token_service:
{token_service}
trusted_issuers:
  - issuer: {issuer}
    jwks_uri: {jwks}
    audiences: ["{own_audience}"]
actor:
  token_file: {actor_file}
  token_type: urn:ietf:params:oauth:token-type:access_token
destinations:
{destinations}"#,
            issuer = service.issuer,
            jwks = service.jwks_uri,
            actor_file = actor_file.display(),
        );
        let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
        let envoy = Envoy::start_for(api, &scratch, baton.port_for(api), next).await;
        Self { baton, envoy, scratch }
    }

    /// Its audit records so far.
    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.scratch.0.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// Its audit record for destination `name` in trace `trace`, once written.
    async fn audited(&self, name: &str, trace: &str) -> Value {
        eventually(&format!("the audit record for {name}"), || {
            self.audit()
                .into_iter()
                .find(|l| l["destination"] == name && l["trace_id"] == trace)
        })
        .await
    }
}

/// The whole chain, started from its end.
struct Chain {
    service: TokenService,
    a: Hop,
    b: Hop,
    relay_a: Relay,
    relay_b: Relay,
    c: Relay,
    _scratch: Scratch,
}

impl Chain {
    async fn start() -> Self {
        let scratch = Scratch::new(BATON_BIN, "chain");
        let service = TokenService::start_with(
            Peer::OidcProvider,
            &scratch,
            PeerOptions {
                audiences: vec![B_AUD.to_owned(), C_AUD.to_owned()],
                ..PeerOptions::default()
            },
        )
        .await;
        let c = Relay::last("c").await;
        // B may call C for the user when A and B are the chain's actors, at most two deep; the
        // other destinations are the same C under stricter rules, to refuse at B.
        // A's Envoy asks its Baton by ext_authz, B's by ext_proc: the chain crosses both APIs.
        let b = Hop::start(
            "chain-b",
            Api::ExtProc,
            &service,
            "svc-b",
            B_AUD,
            &format!(
                r#"  - name: svc-c
    hosts: [svc-c.example]
    audience: {C_AUD}
    verify_issued: true
    policy:
      allowed_actors: ["svc-*"]
      max_delegation_depth: 2
  - name: svc-c-only-b
    hosts: [svc-c-only-b.example]
    audience: {C_AUD}
    policy:
      allowed_actors: [svc-b]
  - name: svc-c-only-a
    hosts: [svc-c-only-a.example]
    audience: {C_AUD}
    policy:
      allowed_actors: [svc-a]
  - name: svc-c-shallow
    hosts: [svc-c-shallow.example]
    audience: {C_AUD}
    policy:
      max_delegation_depth: 1
"#
            ),
            c.port,
        )
        .await;
        let relay_b = Relay::calling("b", b.envoy.port, "svc-c.example").await;
        let a = Hop::start(
            "chain-a",
            Api::ExtAuthz,
            &service,
            "svc-a",
            A_AUD,
            &format!(
                r#"  - name: svc-b
    hosts: [svc-b.example]
    audience: {B_AUD}
    verify_issued: true
    policy:
      allowed_actors: [svc-a]
      max_delegation_depth: 1
"#
            ),
            relay_b.port,
        )
        .await;
        let relay_a = Relay::calling("a", a.envoy.port, "svc-b.example").await;
        Self {
            service,
            a,
            b,
            relay_a,
            relay_b,
            c,
            _scratch: scratch,
        }
    }

    /// The gateway's call to A: the user's token, a fresh trace, and where B should call.
    async fn call(&self, user_token: &str, trace_id: &str, b_calls: &str) -> (u16, Value) {
        let response = http()
            .get(format!("http://127.0.0.1:{}/orders/1", self.relay_a.port))
            .header("host", "svc-a.example")
            .header("authorization", bearer(user_token))
            .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
            .header("x-relay-b-calls", b_calls)
            .send()
            .await
            .expect("call A");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("A's answer");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// Whether `baton` exported its decision span (`baton.check`, `baton.ext_proc`) in `trace`, saying
/// the chain it delegated with was verified (`baton.delegation.chain_verified`, a debug rendering
/// of the OTLP value).
fn span_in_trace(baton: &Baton, name: &str, trace: &str) -> bool {
    baton.exported_spans().iter().any(|s| {
        s.name == name
            && s.trace_id == trace
            && s.attributes
                .get("baton.delegation.chain_verified")
                .is_some_and(|v| v.contains("BoolValue(true)"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_s_token_crosses_three_services_with_the_act_chain_nested_hop_by_hop() {
    let chain = Chain::start().await;
    let alice = chain
        .service
        .mint_with(&[("sub", "alice"), ("aud", A_AUD), ("scope", "")])
        .await;

    let (status, body) = chain.call(&alice, TRACE_ID, "svc-c.example").await;
    assert_eq!(status, 200, "{body}");

    // What each hop received: A the user's own token; B a token for B acting as A; C for C, B
    // acting for A acting for alice.
    let at_a = chain.relay_a.received();
    assert_eq!(at_a.len(), 1);
    assert_eq!(at_a[0].token(), Some(alice.as_str()));
    let at_b = chain.relay_b.received();
    assert_eq!(at_b.len(), 1);
    let to_b = chain.service.verify(at_b[0].token().expect("B got a token")).await;
    assert_eq!(
        (to_b["sub"].clone(), audiences(&to_b), to_b["act"].clone()),
        (json!("alice"), vec![B_AUD.to_owned()], json!({"sub": "svc-a"})),
        "{to_b}"
    );
    let at_c = chain.c.received();
    assert_eq!(at_c.len(), 1);
    let to_c = chain.service.verify(at_c[0].token().expect("C got a token")).await;
    assert_eq!(
        (to_c["sub"].clone(), audiences(&to_c), to_c["act"].clone()),
        (
            json!("alice"),
            vec![C_AUD.to_owned()],
            json!({"sub": "svc-b", "act": {"sub": "svc-a"}})
        ),
        "{to_c}"
    );

    // One trace: the gateway's traceparent reached every hop, and each Baton's audit record and
    // Check span are in it; the chain each audited was verified, not just decoded.
    for hop in [&at_a[0], &at_b[0], &at_c[0]] {
        assert!(
            hop.traceparent.as_deref().is_some_and(|tp| tp.contains(TRACE_ID)),
            "{hop:?}"
        );
    }
    let audit_a = chain.a.audited("svc-b", TRACE_ID).await;
    assert_eq!(
        (&audit_a["decision"], &audit_a["actors"], &audit_a["chain_verified"]),
        (&json!("delegate"), &json!(["svc-a"]), &json!(true)),
        "{audit_a}"
    );
    let audit_b = chain.b.audited("svc-c", TRACE_ID).await;
    assert_eq!(
        (
            &audit_b["decision"],
            &audit_b["actors"],
            &audit_b["delegation_depth"],
            &audit_b["chain_verified"]
        ),
        (&json!("delegate"), &json!(["svc-b", "svc-a"]), &json!(2), &json!(true)),
        "{audit_b}"
    );
    eventually("both Batons' decision spans in the gateway's trace", || {
        let a = span_in_trace(&chain.a.baton, "baton.check", TRACE_ID);
        let b = span_in_trace(&chain.b.baton, "baton.ext_proc", TRACE_ID);
        (a && b).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_refuses_at_b_stops_the_chain_there() {
    let chain = Chain::start().await;
    // (where B calls, the trace, the reply's status and reason, whether B's token service was
    // asked: a refusal of the subject's own chain comes before any exchange)
    let cases = [
        (
            "svc-c-only-b.example",
            "1af7651916cd43dd8448eb211c80319c",
            403,
            "actor_not_allowed",
            false,
        ),
        (
            "svc-c-shallow.example",
            "2af7651916cd43dd8448eb211c80319c",
            403,
            "delegation_too_deep",
            false,
        ),
        (
            "svc-c-only-a.example",
            "3af7651916cd43dd8448eb211c80319c",
            403,
            "actor_not_allowed",
            true,
        ),
    ];
    for (b_calls, trace, status, reason, exchanged) in cases {
        // A token of her own for each case, so no hop answers from its cache.
        let alice = chain
            .service
            .mint_with(&[("sub", "alice"), ("aud", A_AUD), ("scope", "")])
            .await;
        let before = chain.service.exchanges().await;
        let (got, body) = chain.call(&alice, trace, b_calls).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(reason)),
            "{b_calls}: {body}"
        );
        // A's exchange for B always; B's for C only when the issued chain was what refused.
        let asked = chain.service.exchanges().await - before;
        assert_eq!(asked, 1 + u64::from(exchanged), "{b_calls}: exchanges");
        let destination = b_calls.trim_end_matches(".example");
        let audit = chain.b.audited(destination, trace).await;
        assert_eq!(
            (&audit["decision"], &audit["reason"]),
            (&json!("deny"), &json!(reason)),
            "{audit}"
        );
    }
    assert!(chain.c.received().is_empty(), "C received nothing");
    assert_eq!(chain.relay_b.received().len(), 3, "each call reached B");
}

/// `verify_issued` refuses an issued token whose signature does not verify against the keys Baton
/// holds for its issuer, as a forged chain would not: here Baton is given another issuer's keys for
/// the token service (`baton sts`, which accepts the identity provider's tokens as subject tokens;
/// panva's oidc-provider is the identity provider). The token never reaches the upstream, and is
/// not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_issued_refuses_a_token_its_issuer_s_keys_did_not_sign() {
    let scratch = Scratch::new(BATON_BIN, "chain-forged");
    let idp = TokenService::start(Peer::OidcProvider, &scratch).await;
    let trusted = format!(
        "trusted_subject_issuers:\n  - issuer: {}\n    jwks_uri: {}\n    audiences: [\"{A_AUD}\"]\n",
        idp.issuer, idp.jwks_uri
    );
    let service = TokenService::start_with(
        Peer::BatonSts,
        &scratch,
        PeerOptions {
            audiences: vec![B_AUD.to_owned()],
            sts_extra: Some(trusted),
            ..PeerOptions::default()
        },
    )
    .await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
    // The token service's issuer, with the identity provider's keys: what Baton would see if the
    // token service's answer had been forged by someone without its key.
    let body = format!(
        r#"token_service:
{token_service}
trusted_issuers:
  - issuer: {idp}
    jwks_uri: {idp_jwks}
    audiences: ["{A_AUD}"]
  - issuer: {ts}
    jwks_uri: {idp_jwks}
    audiences: ["{A_AUD}"]
    jwks_min_refetch: 1s
destinations:
  - name: svc-b
    hosts: [svc-b.example]
    audience: {B_AUD}
    verify_issued: true
"#,
        idp = idp.issuer,
        idp_jwks = idp.jwks_uri,
        ts = service.issuer,
    );
    let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;

    let alice = idp.mint_with(&[("sub", "alice"), ("aud", A_AUD)]).await;
    for attempt in 1..=2 {
        let reply = send(&envoy, "svc-b.example", "/", Some(&bearer(&alice))).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (503, "issued_token_signature_invalid"),
            "attempt {attempt}: {:?}",
            reply.body
        );
    }
    assert_eq!(service.exchanges().await, 2, "a refused token is not cached");
}
