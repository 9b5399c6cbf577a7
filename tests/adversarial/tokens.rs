//! What Baton does with the tokens it holds and receives (issue 12 sections 4, 5, 6), through the
//! real Envoy, ext_authz, ext_proc and the Wasm filter (in-proxy mode, with the configuration
//! `baton envoy-config --api wasm` writes from Baton's file: a miss asks the sidecar's
//! `InProxy/Decide`, which refuses with the same reason as Check):
//! - a misbehaving token service (`baton sts` fault modes): the issued token is the subject token,
//!   names another audience, has expired, impersonates instead of delegating, grants more scope,
//!   breaks a JWT rule. Each is a 503 with its own reason, and nothing is cached or remembered;
//! - cached tokens: two destinations with one audience and different limits never share a token;
//! - a hostile subject token: `crit` headers, and time claims of every odd form;
//! - a forged token beside a cached valid one (the same `sub`, one signature character changed):
//!   never served the valid token's delegation, from Baton's cache or the filter's.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use baton_test_support::*;

use crate::BATON_BIN;

/// One issuer for every `baton sts` here (with one signing key), so a user or actor token minted
/// by one is valid at all of them.
const ISSUER: &str = "http://sts.adversarial.test";
/// Baton's actor: the `sub` of the token in `actor.token_file`.
const ACTOR: &str = "spiffe://cluster.local/ns/shop/sa/web";
const APIS: [Api; 4] = [Api::ExtAuthz, Api::ExtProc, Api::Wasm, Api::ExtAuthzHttp];

/// The access log of the Wasm mode: the path, and what the filter recorded in the request's
/// filter state (`hit`, `miss`, `deny` and the reason).
const WASM_ACCESS_LOG: &str = r#"{"name":"envoy.access_loggers.file","typed_config":{
  "@type":"type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
  "path":"@ACCESS_LOG@",
  "log_format":{"json_format":{"path":"%REQ(:PATH)%","status":"%RESPONSE_CODE%",
    "baton_decision":"%FILTER_STATE(wasm.baton.decision:PLAIN)%",
    "baton_reason":"%FILTER_STATE(wasm.baton.reason:PLAIN)%"}}}}"#;

/// The real Envoy for `api` in front of `baton`: the harness's bootstrap for ext_authz and
/// ext_proc; for the Wasm filter what `baton envoy-config --api wasm` writes from Baton's own file
/// (the harness's hand-written plugin configuration names the standard test destinations, not
/// these), with an access log of the filter's decisions.
async fn envoy(api: Api, scratch: &Scratch, baton: &Baton, upstream: &Upstream) -> Envoy {
    if api != Api::Wasm {
        return Envoy::start_for(api, scratch, baton.port_for(api), upstream.port).await;
    }
    let generated = revocation_stack::generated_bootstrap(api, scratch, upstream.port);
    let mut document: serde_json::Value = serde_saphyr::from_str(&generated).expect("the bootstrap is YAML");
    let manager = &mut document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    manager["access_log"] = json!([serde_json::from_str::<serde_json::Value>(WASM_ACCESS_LOG).expect("json")]);
    let bootstrap = baton_envoy::envoy_config::to_yaml(&document).expect("yaml");
    let envoy = Envoy::start_with_bootstrap(scratch, &bootstrap).await;
    // The filter serves nothing cached before it has heard Baton's epoch (every 1 s): the rows then
    // test its own cache on hits, not only the sidecar's answers on misses.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    envoy
}

/// A `baton sts` with the shared issuer and key, answering wrongly as `answer` says.
async fn sts(scratch: &Scratch, key: &Path, name: &'static str, answer: Option<&'static str>) -> TokenService {
    let options = PeerOptions {
        answer,
        port: Some(free_port()),
        issuer: Some(ISSUER.to_owned()),
        signing_key_file: Some(key.to_path_buf()),
        name: Some(name),
        ..Default::default()
    };
    TokenService::start_with(Peer::BatonSts, scratch, options).await
}

/// A `token_services:` entry named `name` for `service`.
fn token_service_entry(scratch: &Scratch, name: &str, service: &TokenService) -> String {
    let body = basic_auth_to(scratch, &format!("token_endpoint: {}", service.token_endpoint));
    let body: String = body.lines().map(|line| format!("  {line}\n")).collect();
    format!("  {name}:\n{body}")
}

/// Rows of a misbehaving token service: (fault, what Envoy must answer: a status and a reason, or
/// a delegated token).
const FAULTS: &[(&str, u16, &str)] = &[
    ("subject_token", 503, "issued_token_is_subject_token"),
    ("subject_token_padded", 503, "issued_token_is_subject_token"),
    ("wrong_audience", 503, "issued_token_audience_mismatch"),
    ("extra_audience", 503, "issued_token_audience_mismatch"),
    ("no_audience", 503, "issued_token_audience_mismatch"),
    ("no_act", 503, "issued_token_actor_missing"),
    ("other_actor", 503, "issued_token_actor_missing"),
    ("extra_scope", 503, "issued_token_scope_exceeded"),
    ("extra_scope_claim", 503, "issued_token_scope_exceeded"),
    ("expired", 503, "issued_token_expired"),
    ("exp_string", 503, "issued_token_malformed"),
    ("crit_header", 503, "issued_token_malformed"),
    ("duplicate_audience", 503, "issued_token_malformed"),
    ("lenient_json", 503, "issued_token_malformed"),
    // A correct answer in an unusual form (RFC 7519 allows a fractional NumericDate): used.
    ("fractional_exp", 200, ""),
];

fn host_of(fault: &str) -> String {
    format!("{}.faults.example", fault.replace('_', "-"))
}

/// A misbehaving token service never gets its token to the destination, and its refusal is not
/// kept: the same request asks it again (so a fixed token service is used at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_token_service_never_gets_its_token_through() {
    let scratch = Scratch::new(BATON_BIN, "adversarial-tokens-faults");
    let key = sts_signing_key(&scratch, "shared");
    let good = sts(&scratch, &key, "good", None).await;
    let mut faulty = Vec::new();
    for (fault, _, _) in FAULTS {
        faulty.push(sts(&scratch, &key, fault, Some(fault)).await);
    }
    let actor = good.mint_with(&[("sub", ACTOR)]).await;
    leaks::secret(&actor);
    let actor_file = scratch.write("actor.jwt", &actor);

    let mut yaml = format!("actor:\n  token_file: {}\ntoken_services:\n", actor_file.display());
    yaml.push_str(&token_service_entry(&scratch, "default", &good));
    for ((fault, _, _), service) in FAULTS.iter().zip(&faulty) {
        yaml.push_str(&token_service_entry(&scratch, &format!("f-{fault}"), service));
    }
    yaml.push_str("cache:\n  max_entries: 1000\n  expiry_margin: 30s\n  negative_ttl: 60s\ndestinations:\n");
    yaml.push_str(&format!(
        "  - name: fine\n    hosts: [fine.example]\n    audience: {ORDERS}\n    scopes: [orders.read]\n"
    ));
    for (fault, _, _) in FAULTS {
        yaml.push_str(&format!(
            "  - name: f-{fault}\n    hosts: [{}]\n    audience: {ORDERS}\n    scopes: [orders.read]\n    token_service: f-{fault}\n",
            host_of(fault)
        ));
    }
    let baton = Baton::start_raw(&scratch, &yaml, "baton=debug,info").await;
    let upstream = Upstream::start().await;
    let user = good.mint("alice", "orders.read orders.write").await;
    let mut wrong = Vec::new();

    for api in APIS {
        let envoy = envoy(api, &scratch, &baton, &upstream).await;
        // The control row: a token service that behaves gets its token through, with the act chain.
        let reply = send(&envoy, "fine.example", "/control", Some(&bearer(&user))).await;
        let claims = jwt_claims(reply.upstream_token()).expect("JSON claims");
        assert_eq!(
            (&claims["aud"], &claims["act"]["sub"]),
            (&json!(ORDERS), &json!(ACTOR)),
            "{api:?}"
        );

        for ((fault, status, reason), service) in FAULTS.iter().zip(&faulty) {
            for attempt in 0..2 {
                let before = service.exchanges().await;
                let reply = send(&envoy, &host_of(fault), "/tokens", Some(&bearer(&user))).await;
                let row = format!("{api:?} {fault} (attempt {attempt})");
                if reply.status != *status {
                    wrong.push(format!("{row}: {} {}, not {status}", reply.status, reply.reason()));
                    continue;
                }
                if *status == 200 {
                    let token = reply.upstream_token();
                    assert!(token != user, "{row}");
                    assert_eq!(jwt_claims(token).expect("JSON claims")["aud"], json!(ORDERS), "{row}");
                    continue;
                }
                // Over HTTP a 503 reaches the client as Envoy's own (`Api::carries`).
                let (_, reason) = api.carries(*status, reason);
                if reply.reason() != reason {
                    wrong.push(format!("{row}: {}, not {reason}", reply.reason()));
                }
                assert!(
                    reply.body["authorization"].is_null(),
                    "{row}: nothing reached the upstream"
                );
                let after = service.exchanges().await;
                if after != before + 1 {
                    wrong.push(format!(
                        "{row}: {} exchanges, not 1: cached or remembered",
                        after - before
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "rows answered wrongly:\n{}", wrong.join("\n"));
}

/// Issue 12 section 4's examples: destinations with the same audience and different limits,
/// `alias-a` (depth 1) and `alias-b` (depth 0); `alias-c` (3 s lifetime) and `alias-d` (none).
async fn aliases(name: &str) -> (Scratch, TokenService, Baton, Upstream) {
    let scratch = Scratch::new(BATON_BIN, name);
    let key = sts_signing_key(&scratch, "shared");
    let service = sts(&scratch, &key, "cache-sts", None).await;
    let mut yaml = format!(
        "token_services:\n{}",
        token_service_entry(&scratch, "default", &service)
    );
    yaml.push_str(&format!(
        r#"cache:
  max_entries: 1000
  expiry_margin: 30s
destinations:
  - name: alias-a
    hosts: [alias-a.example]
    audience: {ORDERS}
    policy: {{max_delegation_depth: 1}}
  - name: alias-b
    hosts: [alias-b.example]
    audience: {ORDERS}
    policy: {{max_delegation_depth: 0}}
  - name: alias-c
    hosts: [alias-c.example]
    audience: {BILLING}
    policy: {{max_token_lifetime: 3s}}
  - name: alias-d
    hosts: [alias-d.example]
    audience: {BILLING}
"#
    ));
    let baton = Baton::start_raw(&scratch, &yaml, "baton=debug,info").await;
    let upstream = Upstream::start().await;
    (scratch, service, baton, upstream)
}

/// `alias-b` (depth 0) is never served the depth-1 token `alias-a` cached for the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_never_exceeds_the_asking_destination_s_depth() {
    let (scratch, service, baton, upstream) = aliases("adversarial-tokens-depth").await;
    for api in APIS {
        let envoy = envoy(api, &scratch, &baton, &upstream).await;
        // A user token that already carries a delegation (a gateway acted for the user): Baton does
        // not verify it here, so only the issued token's chain shows the depth.
        let claims = json!({"act": {"sub": "gateway"}}).to_string();
        let sub = format!("carol-{api:?}");
        let user = service
            .mint_with(&[("sub", sub.as_str()), ("claims", claims.as_str())])
            .await;
        let deep = send(&envoy, "alias-a.example", "/a", Some(&bearer(&user))).await;
        assert_eq!(
            jwt_claims(deep.upstream_token()).expect("JSON claims")["act"]["sub"],
            json!("gateway"),
            "{api:?}"
        );
        for attempt in 0..2 {
            let reply = send(&envoy, "alias-b.example", "/b", Some(&bearer(&user))).await;
            assert_eq!(
                (reply.status, reply.reason()),
                (403, "delegation_too_deep"),
                "{api:?} attempt {attempt}: alias-b was served alias-a's depth-1 token"
            );
        }
    }
}

/// `alias-c` (3 s) is never served the token `alias-d` cached 4 s earlier for the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_never_outlives_the_asking_destination_s_lifetime() {
    let (scratch, service, baton, upstream) = aliases("adversarial-tokens-lifetime").await;
    for api in APIS {
        let envoy = envoy(api, &scratch, &baton, &upstream).await;
        let user = service.mint(&format!("dave-{api:?}"), "orders.read").await;
        let long = send(&envoy, "alias-d.example", "/d", Some(&bearer(&user))).await;
        let long_token = long.upstream_token().to_owned();
        tokio::time::sleep(Duration::from_millis(4100)).await;
        let before = service.exchanges().await;
        let short = send(&envoy, "alias-c.example", "/c", Some(&bearer(&user))).await;
        let short_token = short.upstream_token();
        assert!(
            short_token != long_token,
            "{api:?}: alias-c (3 s) was served alias-d's token 4 s after its exchange"
        );
        let iat = jwt_claims(short_token).expect("JSON claims")["iat"]
            .as_u64()
            .expect("iat");
        assert!(
            unix_now().saturating_sub(iat) <= 3,
            "{api:?}: alias-c's token is too old"
        );
        assert_eq!(
            service.exchanges().await,
            before + 1,
            "{api:?}: alias-c exchanged its own"
        );
        let again = send(&envoy, "alias-d.example", "/d", Some(&bearer(&user))).await;
        assert!(
            again.upstream_token() == long_token,
            "{api:?}: alias-d keeps its cached token"
        );
    }
}

/// A subject token signed by the trusted issuer's key, with this JOSE header and these claims
/// (JSON text, so that odd forms are sent exactly as written).
fn signed(key: &Path, header: &str, claims: &str) -> String {
    let pem = std::fs::read(key).expect("signing key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("an EC key");
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256).expect("sign");
    format!("{input}.{signature}")
}

/// `baton sts` signing with `key`, the trusted issuer of subject tokens (audience `baton-sts`, 5 s
/// leeway) and the token service of a Baton whose one destination is `orders` (`extra`: further
/// top-level YAML), and an upstream.
async fn trusting(scratch: &Scratch, key: &Path, name: &'static str, extra: &str) -> (TokenService, Baton, Upstream) {
    let service = sts(scratch, key, name, None).await;
    let yaml = format!(
        "token_services:\n{}trusted_issuers:\n  - issuer: {ISSUER}\n    jwks_uri: {}\n    audiences: [baton-sts]\n    leeway: 5s\n{extra}destinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: {ORDERS}\n",
        token_service_entry(scratch, "default", &service),
        service.jwks_uri
    );
    let baton = Baton::start_raw(scratch, &yaml, "baton=debug,info").await;
    (service, baton, Upstream::start().await)
}

/// A hostile subject token: RFC 7515 `crit`, and time claims of every odd form. A fractional
/// NumericDate is valid and compared correctly; anything else is refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_subject_token_is_judged_by_the_jwt_rules() {
    let scratch = Scratch::new(BATON_BIN, "adversarial-tokens-subject");
    let key = sts_signing_key(&scratch, "shared");
    let (_service, baton, upstream) = trusting(&scratch, &key, "subject-sts", "").await;
    let now = unix_now();
    let header = r#"{"alg":"ES256","typ":"at+jwt"}"#;
    let claims = |extra: &str| {
        format!(
            r#"{{"iss":"{ISSUER}","sub":"erin","aud":"baton-sts","iat":{now},"exp":{},{extra}"jti":"j"}}"#,
            now + 600
        )
    };
    let times =
        |exp: &str, more: &str| format!(r#"{{"iss":"{ISSUER}","sub":"erin","aud":"baton-sts","exp":{exp}{more}}}"#);
    let malformed = (401, "subject_token_malformed");
    let crit = |value: &str| format!(r#"{{"alg":"ES256","crit":{value},"x-ext":1}}"#);
    let rows: Vec<(&str, String, String, (u16, &str))> = vec![
        ("control", header.into(), claims(""), (200, "")),
        (
            "crit names an extension",
            crit(r#"["x-ext"]"#),
            claims(""),
            (401, "subject_token_crit_unsupported"),
        ),
        (
            "crit names a registered claim",
            crit(r#"["exp"]"#),
            claims(""),
            (401, "subject_token_crit_unsupported"),
        ),
        (
            "crit names two",
            crit(r#"["x-ext","b64"]"#),
            claims(""),
            (401, "subject_token_crit_unsupported"),
        ),
        ("crit empty", crit("[]"), claims(""), malformed),
        ("crit a string", crit(r#""x-ext""#), claims(""), malformed),
        ("crit null", crit("null"), claims(""), malformed),
        ("crit numbers", crit("[1]"), claims(""), malformed),
        (
            "exp fractional, future",
            header.into(),
            times(&format!("{}.9", now + 600), ""),
            (200, ""),
        ),
        (
            "exp exponent form",
            header.into(),
            times(&format!("{}e0", now + 600), ""),
            (200, ""),
        ),
        (
            "exp fractional, past",
            header.into(),
            times(&format!("{}.5", now - 60), ""),
            (401, "subject_token_expired"),
        ),
        (
            "exp a string",
            header.into(),
            times(&format!("\"{}\"", now + 600), ""),
            malformed,
        ),
        ("exp true", header.into(), times("true", ""), malformed),
        ("exp null", header.into(), times("null", ""), malformed),
        ("exp negative", header.into(), times("-1", ""), malformed),
        ("exp 1e300", header.into(), times("1e300", ""), malformed),
        (
            "exp beyond i64",
            header.into(),
            times("9223372036854775808", ""),
            malformed,
        ),
        (
            "exp beyond u64",
            header.into(),
            times("18446744073709551616", ""),
            malformed,
        ),
        (
            "exp an array",
            header.into(),
            times(&format!("[{}]", now + 600), ""),
            malformed,
        ),
        (
            "nbf fractional, past",
            header.into(),
            times(&(now + 600).to_string(), &format!(r#","nbf":{}.5"#, now - 60)),
            (200, ""),
        ),
        (
            "nbf fractional, future",
            header.into(),
            times(&(now + 600).to_string(), &format!(r#","nbf":{}.5"#, now + 300)),
            (401, "subject_token_not_yet_valid"),
        ),
        (
            "nbf a string",
            header.into(),
            times(&(now + 600).to_string(), r#","nbf":"0""#),
            malformed,
        ),
        (
            "iat a string",
            header.into(),
            times(&(now + 600).to_string(), r#","iat":"yesterday""#),
            malformed,
        ),
        (
            "iat 1e300",
            header.into(),
            times(&(now + 600).to_string(), r#","iat":1e300"#),
            malformed,
        ),
        (
            "iat negative",
            header.into(),
            times(&(now + 600).to_string(), r#","iat":-5"#),
            malformed,
        ),
        // Claims that parsers read differently: each must refuse, never pick one.
        (
            "exp twice, past then future",
            header.into(),
            times(&(now - 60).to_string(), &format!(r#","exp":{}"#, now + 600)),
            malformed,
        ),
        (
            "aud twice",
            header.into(),
            times(&(now + 600).to_string(), r#","aud":"someone-else""#),
            malformed,
        ),
        (
            "nbf NaN",
            header.into(),
            times(&(now + 600).to_string(), r#","nbf":NaN"#),
            malformed,
        ),
        (
            "claims an array",
            header.into(),
            format!(r#"[{}]"#, times(&(now + 600).to_string(), "")),
            malformed,
        ),
    ];
    let mut wrong = Vec::new();
    for api in APIS {
        let envoy = envoy(api, &scratch, &baton, &upstream).await;
        for (name, header, claims, (status, reason)) in &rows {
            let token = signed(&key, header, claims);
            let reply = send(&envoy, "orders.example", "/subject", Some(&bearer(&token))).await;
            let row = format!("{api:?} {name}");
            if reply.status != *status {
                wrong.push(format!(
                    "{row}: {} {}, not {status} {reason}",
                    reply.status,
                    reply.reason()
                ));
            } else if *status == 200 {
                assert_eq!(
                    jwt_claims(reply.upstream_token()).expect("JSON claims")["sub"],
                    json!("erin"),
                    "{row}"
                );
            } else if reply.reason() != api.carries(*status, reason).1 {
                wrong.push(format!("{row}: {}, not {reason}", reply.reason()));
            }
        }
    }
    assert!(wrong.is_empty(), "rows answered wrongly:\n{}", wrong.join("\n"));
}

/// Without `trusted_issuers` Baton does not verify the subject token, but it still reads its `exp`
/// (to cap the cached token's life): a JWT that breaks the JWT rules is refused, never read as
/// "no exp", and never sent to the token service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_subject_token_is_still_held_to_the_jwt_rules() {
    let (scratch, service, baton, upstream) = aliases("adversarial-tokens-unverified").await;
    let unsigned = |header: &str, claims: &str| {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    };
    let now = unix_now();
    let header = r#"{"alg":"ES256"}"#;
    let malformed = "subject_token_malformed";
    let rows = [
        (
            "crit",
            r#"{"alg":"ES256","crit":["x-ext"],"x-ext":1}"#.to_owned(),
            format!(r#"{{"sub":"f","exp":{}}}"#, now + 600),
            "subject_token_crit_unsupported",
        ),
        (
            "crit empty",
            r#"{"alg":"ES256","crit":[]}"#.to_owned(),
            format!(r#"{{"sub":"f","exp":{}}}"#, now + 600),
            malformed,
        ),
        (
            "exp a string",
            header.to_owned(),
            format!(r#"{{"sub":"f","exp":"{}"}}"#, now + 600),
            malformed,
        ),
        (
            "exp 1e300",
            header.to_owned(),
            r#"{"sub":"f","exp":1e300}"#.to_owned(),
            malformed,
        ),
        (
            "exp negative",
            header.to_owned(),
            r#"{"sub":"f","exp":-1}"#.to_owned(),
            malformed,
        ),
        (
            "exp true",
            header.to_owned(),
            r#"{"sub":"f","exp":true}"#.to_owned(),
            malformed,
        ),
        (
            "iat a string",
            header.to_owned(),
            format!(r#"{{"sub":"f","exp":{},"iat":"x"}}"#, now + 600),
            malformed,
        ),
        (
            "exp fractional, past",
            header.to_owned(),
            format!(r#"{{"sub":"f","exp":{}.9}}"#, now - 10),
            "subject_token_expired",
        ),
    ];
    let mut wrong = Vec::new();
    for api in APIS {
        let envoy = envoy(api, &scratch, &baton, &upstream).await;
        for (name, header, claims, reason) in &rows {
            let before = service.exchanges().await;
            let token = unsigned(header, claims);
            let reply = send(&envoy, "alias-d.example", "/unverified", Some(&bearer(&token))).await;
            if (reply.status, reply.reason()) != (401, *reason) {
                wrong.push(format!(
                    "{api:?} {name}: {} {}, not 401 {reason}",
                    reply.status,
                    reply.reason()
                ));
            }
            if service.exchanges().await != before {
                wrong.push(format!("{api:?} {name}: sent to the token service"));
            }
        }
    }
    assert!(wrong.is_empty(), "rows answered wrongly:\n{}", wrong.join("\n"));
}

/// `token` with the signature's character at `at` replaced by another base64url character: the
/// same header and claims, a signature one byte off.
fn one_signature_character_changed(token: &str, at: usize) -> String {
    let dot = token.rfind('.').expect("a JWS");
    let mut bytes = token.as_bytes().to_vec();
    let i = dot + 1 + at;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ASCII")
}

/// The Wasm access-log line of the request to `path` (each path is sent once), within 5 s.
async fn wasm_line(envoy: &Envoy, path: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = envoy.access_log().into_iter().find(|l| l["path"] == path) {
            return line;
        }
        assert!(std::time::Instant::now() < deadline, "no access log line for {path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A forged token is never served what a valid one cached. A user's valid token is delegated and
/// cached (by Baton, and under the Wasm filter by the filter's per-worker cache too, keyed on the
/// digest of the whole token); then tokens that carry the same `sub` and claims but are not that
/// token are sent on the same connection, each right after the valid one was served from the cache.
/// Every forgery is refused with the reason ext_authz gives (under the filter: a miss, decided by
/// the sidecar's Decide), costs no exchange, and leaves the valid token's cached delegation as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_is_never_served_what_a_valid_one_cached() {
    let scratch = Scratch::new(BATON_BIN, "adversarial-tokens-forged");
    let key = sts_signing_key(&scratch, "shared");
    let other_key = sts_signing_key(&scratch, "other");
    let (service, baton, upstream) = trusting(
        &scratch,
        &key,
        "forged-sts",
        "cache:\n  max_entries: 1000\n  expiry_margin: 30s\n",
    )
    .await;
    let now = unix_now();
    let header = r#"{"alg":"ES256","typ":"at+jwt"}"#;
    let claims = |jti: &str| {
        format!(
            r#"{{"iss":"{ISSUER}","sub":"frank","aud":"baton-sts","iat":{now},"exp":{},"jti":"{jti}"}}"#,
            now + 600
        )
    };
    let valid = signed(&key, header, &claims("valid"));
    let valid_signature = valid.rsplit('.').next().expect("a signature").to_owned();
    let forgeries: Vec<(&str, String)> = vec![
        (
            "one signature character changed",
            one_signature_character_changed(&valid, 10),
        ),
        (
            "a signature character near the end changed",
            one_signature_character_changed(&valid, 84),
        ),
        (
            "the same claims, alg none",
            forge_jwt(r#"{"alg":"none","typ":"at+jwt"}"#, &claims("valid"), ""),
        ),
        (
            "the same claims, alg none, the valid signature kept",
            forge_jwt(r#"{"alg":"none","typ":"at+jwt"}"#, &claims("valid"), &valid_signature),
        ),
        (
            "the same claims, signed by another key",
            signed(&other_key, header, &claims("valid")),
        ),
        (
            "the same sub, another jti, the valid token's signature",
            forge_jwt(header, &claims("other"), &valid_signature),
        ),
    ];
    // The reason each forgery gets through ext_authz: every other filter must give the same.
    let mut reasons: Vec<String> = Vec::new();
    let mut wrong = Vec::new();
    for api in APIS {
        let envoy = envoy(api, &scratch, &baton, &upstream).await;
        let connection = Connection::to(&envoy, "orders.example");
        let first = connection.get(&format!("/{api:?}/first"), &bearer(&valid)).await;
        let cached = first.upstream_token().to_owned();
        assert_ne!(cached, valid, "{api:?}: the user's own token went upstream");
        let exchanges = service.exchanges().await;
        for (i, (name, forged)) in forgeries.iter().enumerate() {
            assert_ne!(forged, &valid, "{name}");
            let row = format!("{api:?} {name}");
            let control_path = format!("/{api:?}/control/{i}");
            let control = connection.get(&control_path, &bearer(&valid)).await;
            assert_eq!(
                control.upstream_token(),
                cached,
                "{row}: the valid token is served its cached token"
            );
            let forged_path = format!("/{api:?}/forged/{i}");
            let reply = connection.get(&forged_path, &bearer(forged)).await;
            if reply.status != 401 || !reply.reason().starts_with("subject_token_") {
                wrong.push(format!("{row}: {} {} {:?}", reply.status, reply.reason(), reply.body));
                continue;
            }
            assert!(reply.body["authorization"].is_null(), "{row}: reached the upstream");
            match api {
                Api::ExtAuthz => reasons.push(reply.reason().to_owned()),
                _ if reply.reason() != reasons[i] => wrong.push(format!(
                    "{row}: {}, not {} as through ext_authz",
                    reply.reason(),
                    reasons[i]
                )),
                _ => {}
            }
            if api == Api::Wasm {
                // The valid token was a hit in this worker's cache just before, and the forgery,
                // on the same connection, was not served from it: the sidecar refused it.
                let control = wasm_line(&envoy, &control_path).await;
                assert_eq!(control["baton_decision"], "hit", "{row}: {control}");
                let forged = wasm_line(&envoy, &forged_path).await;
                assert_eq!(
                    (&forged["baton_decision"], &forged["baton_reason"]),
                    (&json!("deny"), &json!(reasons[i])),
                    "{row}: {forged}"
                );
            }
        }
        let again = connection.get(&format!("/{api:?}/after"), &bearer(&valid)).await;
        assert_eq!(again.upstream_token(), cached, "{api:?}: the forgeries purged nothing");
        assert_eq!(
            service.exchanges().await,
            exchanges,
            "{api:?}: a forgery cost an exchange"
        );
    }
    assert!(wrong.is_empty(), "rows answered wrongly:\n{}", wrong.join("\n"));
}

/// What the application can put in `Authorization` itself, sent byte for byte (the raw request
/// line and headers, so duplicates, odd spacing and encodings reach Envoy as written): two
/// headers, other schemes and spellings, oversized, encoded or padded tokens, a token beside a
/// second credential. Each row is refused (or delegated) by every filter alike: the Wasm filter,
/// which judges the bearer rules itself before it asks the sidecar, gives the reason ext_authz
/// gives, and the user's own token never reaches the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_authorization_header_gets_the_same_answer_through_every_filter() {
    let scratch = Scratch::new(BATON_BIN, "adversarial-tokens-header");
    let key = sts_signing_key(&scratch, "shared");
    let (_service, baton, upstream) = trusting(&scratch, &key, "header-sts", "").await;
    let now = unix_now();
    let valid = signed(
        &key,
        r#"{"alg":"ES256","typ":"at+jwt"}"#,
        &format!(
            r#"{{"iss":"{ISSUER}","sub":"grace","aud":"baton-sts","iat":{now},"exp":{}}}"#,
            now + 600
        ),
    );
    leaks::secret(&valid);
    let percent_encoded: String = valid.replacen('.', "%2E", 1);
    let rows: Vec<(&str, Vec<String>)> = vec![
        ("control", vec![format!("Bearer {valid}")]),
        ("lower-case scheme", vec![format!("bearer {valid}")]),
        (
            "two headers, the same token",
            vec![format!("Bearer {valid}"), format!("Bearer {valid}")],
        ),
        (
            "two headers, another token second",
            vec![format!("Bearer {valid}"), "Bearer other".to_owned()],
        ),
        (
            "two tokens in one header",
            vec![format!("Bearer {valid}, Bearer {valid}")],
        ),
        (
            "a comma and a second credential",
            vec![format!("Bearer {valid}, Basic YWxpY2U6cHc=")],
        ),
        ("two spaces", vec![format!("Bearer  {valid}")]),
        ("a tab", vec![format!("Bearer\t{valid}")]),
        ("a trailing space", vec![format!("Bearer {valid} ")]),
        ("no token", vec!["Bearer".to_owned()]),
        ("no token, a space", vec!["Bearer ".to_owned()]),
        ("the token alone", vec![valid.clone()]),
        ("Basic", vec!["Basic YWxpY2U6cHc=".to_owned()]),
        ("DPoP scheme", vec![format!("DPoP {valid}")]),
        ("percent-encoded dot", vec![format!("Bearer {percent_encoded}")]),
        ("base64 padding", vec![format!("Bearer {valid}==")]),
        ("a quoted token", vec![format!("Bearer \"{valid}\"")]),
        ("oversized", vec![format!("Bearer {}", "a".repeat(17 * 1024))]),
        (
            "oversized, valid prefix",
            vec![format!("Bearer {valid}.{}", "a".repeat(17 * 1024))],
        ),
        ("non-ASCII", vec![format!("Bearer {valid}\u{e9}")]),
        ("an empty header", vec![String::new()]),
    ];
    // What each row got through ext_authz: (status, reason or the delegated token's subject).
    let mut through_ext_authz: Vec<(u16, String)> = Vec::new();
    let mut wrong = Vec::new();
    for api in APIS {
        let envoy = envoy(api, &scratch, &baton, &upstream).await;
        for (i, (name, values)) in rows.iter().enumerate() {
            let mut head = format!("GET /header/{i} HTTP/1.1\r\nhost: orders.example");
            for value in values {
                leaks::credential(value);
                head.push_str(&format!("\r\nauthorization: {value}"));
            }
            head.push_str("\r\nconnection: close\r\n\r\n");
            let (status, body) = client::raw(&envoy, &head).await;
            let received = body["authorization"].as_str().unwrap_or_default();
            assert!(
                !received.contains(&valid),
                "{api:?} {name}: the user's own token went upstream"
            );
            let seen = match status {
                200 => {
                    let token = received.strip_prefix("Bearer ").unwrap_or(received);
                    let sub = jwt_claims(token).map(|c| c["sub"].to_string()).unwrap_or_default();
                    (200, format!("delegated {sub}"))
                }
                _ => (status, body["error"].as_str().unwrap_or("<no error field>").to_owned()),
            };
            if api == Api::ExtAuthz {
                through_ext_authz.push(seen);
            } else if seen != through_ext_authz[i] {
                wrong.push(format!(
                    "{api:?} {name}: {seen:?}, ext_authz {:?}",
                    through_ext_authz[i]
                ));
            }
        }
    }
    eprintln!("through ext_authz:");
    for ((name, _), seen) in rows.iter().zip(&through_ext_authz) {
        eprintln!("  {name}: {seen:?}");
    }
    // RFC 7235's scheme is case-insensitive and RFC 6750's separator is one or more spaces: those
    // rows are the user's token, delegated; every other row is refused (401).
    const DELEGATED: [&str; 4] = ["control", "lower-case scheme", "two spaces", "a trailing space"];
    for ((name, _), (status, what)) in rows.iter().zip(&through_ext_authz) {
        match DELEGATED.contains(name) {
            true => assert_eq!((*status, what.as_str()), (200, "delegated \"grace\""), "{name}"),
            false => assert_eq!(*status, 401, "{name}: {what}"),
        }
    }
    assert!(wrong.is_empty(), "rows answered differently:\n{}", wrong.join("\n"));
}
