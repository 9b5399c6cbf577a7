//! `baton policy test` and `baton explain`: the example suite, what a mismatch and a bad test file
//! do, the JUnit report read back by an XML parser, what an explanation shows; and the agreement
//! test: for many requests, what `policy test` and `explain` predict is what a running Baton does
//! through the real Envoy (ext_authz and ext_proc), with `baton sts` as issuer and token service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_test_support::*;
use serde_json::Value;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

const WORKLOAD: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/policies")
        .join(name)
}

/// What a `baton` command did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `baton ARGS`, within 60 s.
async fn baton(args: &[&str]) -> Ran {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BATON_BIN)
            .args(args)
            .env("BATON_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("baton {args:?} did not finish within 60 s"))
    .expect("run baton");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A JUnit report read back with an XML parser of its own: (tests, failures) of `<testsuites>`,
/// the `<testcase>` elements, the `<failure>` elements and their messages. Malformed XML panics.
fn read_junit(xml: &str) -> (u64, u64, usize, Vec<String>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut tests, mut failures, mut cases, mut messages) = (None, None, 0, Vec::new());
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) | Event::Empty(e) => {
                let attribute = |name: &str| {
                    e.attributes()
                        .map(|a| a.expect("attribute"))
                        .find(|a| a.key.as_ref() == name.as_bytes())
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                };
                match e.name().as_ref() {
                    b"testsuites" => {
                        tests = attribute("tests").and_then(|t| t.parse().ok());
                        failures = attribute("failures").and_then(|t| t.parse().ok());
                    }
                    b"testcase" => cases += 1,
                    b"failure" => messages.push(attribute("message").unwrap_or_default()),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (
        tests.expect("testsuites tests="),
        failures.expect("testsuites failures="),
        cases,
        messages,
    )
}

#[tokio::test]
async fn the_example_suite_passes_and_reports_junit() {
    let scratch = Scratch::new(BATON_BIN, "policy-example");
    let junit = scratch.0.join("report.xml");
    let tests = example("tests.yaml");
    let ran = baton(&[
        "policy",
        "test",
        tests.to_str().expect("utf-8"),
        "--junit",
        junit.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("11 passed, 0 failed"), "{}", ran.stdout);
    assert_eq!(ran.stdout.matches("\n  ok ").count(), 11, "{}", ran.stdout);
    let xml = std::fs::read_to_string(&junit).expect("the JUnit report");
    assert_eq!(read_junit(&xml), (11, 0, 11, Vec::new()), "{xml}");
}

#[tokio::test]
async fn a_wrong_expectation_exits_1_naming_the_case_and_both_outcomes() {
    let scratch = Scratch::new(BATON_BIN, "policy-mismatch");
    let original = std::fs::read_to_string(example("tests.yaml")).expect("example tests");
    let wrong = original.replacen("deny: method_not_allowed", "deny: path_not_allowed", 1);
    assert_ne!(wrong, original);
    // Elsewhere, with the configuration given by --config rather than `config:`.
    let file = scratch.write("wrong.yaml", &wrong);
    let junit = scratch.0.join("report.xml");
    let config = example("baton.yaml");
    let ran = baton(&[
        "policy",
        "test",
        file.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "--junit",
        junit.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(ran.code, 1, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains(
            "MISMATCH  DELETE is not an allowed method: expected deny path_not_allowed, got deny method_not_allowed"
        ),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("10 passed, 1 failed"), "{}", ran.stdout);
    let (tests, failures, cases, messages) = read_junit(&std::fs::read_to_string(&junit).expect("report"));
    assert_eq!((tests, failures, cases), (11, 1, 11));
    assert_eq!(
        messages,
        ["expected deny path_not_allowed, got deny method_not_allowed"]
    );

    // A delegation expected with another audience: both sides are shown.
    let wrong = original.replacen(
        "delegate: { audience: https://orders.shop, scopes: [orders.read] }",
        "delegate: { audience: https://billing.shop, scopes: [orders.read] }",
        1,
    );
    let file = scratch.write("wrong-audience.yaml", &wrong);
    let ran = baton(&[
        "policy",
        "test",
        file.to_str().expect("utf-8"),
        "-c",
        config.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(ran.code, 1, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("MISMATCH  a buyer reads an order with the scope she holds: expected delegate (audience https://billing.shop, scopes [orders.read]), got delegate (audience https://orders.shop, scopes [orders.read])"), "{}", ran.stdout);
}

#[tokio::test]
async fn a_malformed_test_file_exits_2_with_a_clear_error() {
    let scratch = Scratch::new(BATON_BIN, "policy-malformed");
    let config = example("baton.yaml");
    let case = |body: &str| format!("config: {}\ncases:\n  - name: one\n{body}", config.display());
    let request = "    request: { host: orders.shop }\n";
    for (name, text, says) in [
        (
            "unknown-key.yaml",
            case(&format!("{request}    expekt: strip\n")),
            "expekt",
        ),
        (
            "unknown-reason.yaml",
            case(&format!("{request}    expect: {{ deny: path_not_alowed }}\n")),
            "cases[0] (`one`): expect.deny: `path_not_alowed` is not a reason code",
        ),
        (
            "unknown-request-key.yaml",
            case("    request: { hots: orders.shop }\n    expect: strip\n"),
            "hots",
        ),
        (
            "no-host.yaml",
            case("    request: { path: / }\n    expect: strip\n"),
            "cases[0] (`one`): request: give `host`",
        ),
        (
            "authorization.yaml",
            case("    request: { host: orders.shop, headers: { Authorization: Bearer abc } }\n    expect: strip\n"),
            "describe the subject token with `claims`",
        ),
        ("not-yaml.yaml", "cases: [".to_owned(), "not-yaml.yaml"),
        (
            "no-config.yaml",
            format!("cases:\n  - name: one\n{request}    expect: strip\n"),
            "no `config:`",
        ),
        (
            "bad-config.yaml",
            format!(
                "config: {}\ncases:\n  - name: one\n{request}    expect: strip\n",
                scratch.0.join("missing.yaml").display()
            ),
            "missing.yaml",
        ),
    ] {
        let file = scratch.write(name, &text);
        let ran = baton(&["policy", "test", file.to_str().expect("utf-8")]).await;
        assert_eq!(ran.code, 2, "{name}: {}{}", ran.stdout, ran.stderr);
        assert!(ran.stderr.contains(says), "{name}: {:?} not in {}", says, ran.stderr);
        assert!(
            ran.stderr.contains(name) || name == "bad-config.yaml",
            "{name}: the error names the file: {}",
            ran.stderr
        );
        assert!(!ran.stderr.contains("panicked"), "{name}: {}", ran.stderr);
    }
}

#[tokio::test]
async fn explain_shows_the_match_the_rules_the_canonical_path_and_the_exchange() {
    let config = example("baton.yaml");
    let config = config.to_str().expect("utf-8");
    let claims = r#"{"sub":"alice","tenant":"acme","scope":"orders.read profile"}"#;
    // Allowed: a non-default port picks the `host:port` pattern; `.` and an escaped digit are
    // canonicalized before the path rules judge.
    let ran = baton(&[
        "explain",
        "--config",
        config,
        "--url",
        "http://Orders.Shop:8443/v1/orders/./%34%32?x=1",
        "--claims",
        claims,
    ])
    .await;
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    for shown in [
        "destination  orders (matched by host, pattern `orders.shop:8443`)",
        "  authority  orders.shop:8443",
        "  path       /v1/orders/42 (canonical)",
        "  pass       methods: [GET, POST]",
        "  pass       paths: [/v1/orders/, /v1/items/*/price]",
        "  pass       require_claims.tenant: one of [\"acme\"]",
        "  audience   https://orders.shop",
        "  scope      orders.read",
        "  cache key  sha256 over destination=orders",
        "narrowed_scope=orders.read",
        "decision     delegate",
        "\"authorization\":\"Bearer <exchanged token>\"",
        "not checked  the subject token itself",
    ] {
        assert!(ran.stdout.contains(shown), "{shown:?} not in:\n{}", ran.stdout);
    }

    // Refused: every rule's verdict, the first refusal decides, and what Envoy answers.
    let ran = baton(&[
        "explain",
        "-c",
        config,
        "-X",
        "DELETE",
        "--url",
        "http://orders.shop/v1/orders/../admin",
        "--claims",
        r#"{"sub":"mallory","tenant":"evil"}"#,
        "--json",
    ])
    .await;
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    let json: Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["reason"], "method_not_allowed");
    assert_eq!(json["request"]["canonical_path"], "/v1/admin");
    assert_eq!(json["destination"]["pattern"], "orders.shop");
    let verdicts: Vec<(&str, &str)> = json["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| (r["rule"].as_str().unwrap_or(""), r["verdict"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("methods", "refuse"),
            ("canonical_path", "pass"),
            ("paths", "refuse"),
            ("require_claims.tenant", "refuse"),
            ("scopes_from_subject", "refuse"),
        ]
    );
    assert_eq!(json["envoy"]["status"], 403);
    assert_eq!(json["envoy"]["body"]["error"], "method_not_allowed");
    assert!(json.get("exchange").is_none(), "nothing exchanged on a denial");

    // An unlisted host: stripped, no destination.
    let ran = baton(&[
        "explain",
        "-c",
        config,
        "--url",
        "http://tracking.example/",
        "--claims",
        "{}",
        "--json",
    ])
    .await;
    let json: Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(json["decision"], "strip");
    assert_eq!(json["envoy"]["remove_headers"], serde_json::json!(["authorization"]));

    // A token cannot be given, so none can be printed: an Authorization header is refused.
    let secret = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
    let ran = baton(&[
        "explain",
        "-c",
        config,
        "--url",
        "http://orders.shop/v1/orders/1",
        "-H",
        &format!("Authorization: Bearer {secret}"),
    ])
    .await;
    assert_eq!(ran.code, 2, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("claims"), "{}", ran.stderr);
    assert!(!ran.stdout.contains(secret) && !ran.stderr.contains(secret));
    // Bad flags are clear errors, not panics.
    for (args, says) in [
        (vec!["--url", "orders.shop/x"], "expected http://"),
        (vec!["--url", "http://orders.shop/", "--claims", "[1]"], "JSON object"),
        (vec!["--url", "http://orders.shop/", "-H", "no-colon"], "name: value"),
    ] {
        let mut all = vec!["explain", "-c", config];
        all.extend(args);
        let ran = baton(&all).await;
        assert_eq!(ran.code, 2, "{all:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{all:?}: {}", ran.stderr);
    }
}

/// Loading a configuration for a dry run contacts nothing: its token service (found by discovery),
/// its trusted issuer's JWKS and its trace exporter all point at a listener that must see no
/// connection, while `explain` and `policy test` still answer and say what they could not check.
#[tokio::test]
async fn a_dry_run_sends_nothing() {
    let scratch = Scratch::new(BATON_BIN, "policy-offline");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let here = format!("http://{}", listener.local_addr().expect("addr"));
    let config = scratch.write(
        "baton.yaml",
        &format!(
            r#"listen:
  grpc: 127.0.0.1:9
token_service:
  issuer: {here}
  client_id: sidecar
  auth: {{ method: none }}
trusted_issuers:
  - issuer: {here}
    jwks_uri: {here}/jwks
    audiences: [frontend]
telemetry:
  tracing:
    endpoint: {here}
destinations:
  - name: orders
    hosts: [orders.example]
    audience: https://orders.example
    policy:
      require_claims: {{ tenant: acme }}
"#
        ),
    );
    let config = config.to_str().expect("utf-8");
    let ran = baton(&[
        "explain",
        "-c",
        config,
        "--url",
        "http://orders.example/x",
        "--claims",
        r#"{"sub":"alice","tenant":"acme"}"#,
    ])
    .await;
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("decision     delegate"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains(&format!(
            "not checked  token service `default`: its endpoint comes from {here}"
        )),
        "{}",
        ran.stdout
    );
    let tests = scratch.write(
        "tests.yaml",
        "config: baton.yaml\ncases:\n  - name: other tenant\n    request: { host: orders.example, claims: { tenant: evil } }\n    expect: { deny: claim_requirement_failed }\n",
    );
    let ran = baton(&["policy", "test", tests.to_str().expect("utf-8")]).await;
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    let contacted = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
    assert!(contacted.is_err(), "a dry run opened a connection: {contacted:?}");
}

// === Agreement with a running Baton ===

/// One request of the agreement test.
struct Probe {
    name: &'static str,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    /// The destination the hand-written Envoy route names (`/routed/` names `billing`).
    route: Option<&'static str>,
    /// The user's mint parameters; `None`: no Authorization header.
    user: Option<Vec<(&'static str, &'static str)>>,
}

/// What a request through Envoy came back with, in `baton policy test`'s words.
#[derive(Debug, PartialEq)]
enum Seen {
    Delegate { audience: String, scopes: Vec<String> },
    Strip,
    Passthrough,
    Deny(String),
}

/// Send a request line as is (HTTP clients normalize paths), read the answer within 10 s.
async fn raw(envoy: &Envoy, method: &str, host: &str, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n");
    if let Some(a) = authorization {
        leaks::credential(a);
        request.push_str(&format!("authorization: {a}\r\n"));
    }
    request.push_str("\r\n");
    client::raw(envoy, &request).await
}

/// The audit line of the delegation that issued the token `jti`, within 5 s.
async fn audited(log: &Path, jti: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["jti"] == jti)
        {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no audit line for jti {jti} in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_agree_with_a_running_baton_through_envoy() {
    let scratch = Scratch::new(BATON_BIN, "policy-agreement");
    let idp = TokenService::start(Peer::BatonSts, &scratch).await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", idp.token_endpoint));
    let body = format!(
        r#"token_service:
{token_service}
trusted_issuers:
  - issuer: {issuer}
    audiences: [frontend]
workload:
  identity: {WORKLOAD}
destinations:
  - name: orders
    hosts: [orders.example]
    audience: {ORDERS}
    scopes: [orders.read, orders.write]
    policy:
      scopes_from_subject: intersect
      methods: [GET, POST]
      paths: ["/orders/", "/items/*/price"]
      require_claims: {{ tenant: acme }}
  - name: billing
    hosts: ["*.billing.example"]
    audience: {BILLING}
    policy:
      when: 'request.method == "GET" || subject.role == "admin"'
  - name: ledger
    hosts: [ledger.example]
    audience: {BILLING}
    policy:
      allowed_sources: ["spiffe://cluster.local/ns/billing/*"]
"#,
        issuer = idp.issuer
    );
    let baton_run = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
    let upstream = Upstream::start().await;
    // Both Envoy APIs ask the same Baton: each must answer as predicted.
    let envoys = [
        (
            Api::ExtAuthz,
            Envoy::start_for(Api::ExtAuthz, &scratch, baton_run.grpc, upstream.port).await,
        ),
        (
            Api::ExtProc,
            Envoy::start_for(Api::ExtProc, &scratch, baton_run.grpc, upstream.port).await,
        ),
    ];
    let config = scratch.0.join("baton.yaml");

    let alice = || {
        vec![
            ("sub", "alice"),
            ("scope", "orders.read profile"),
            ("claims", r#"{"tenant":"acme","role":"buyer"}"#),
        ]
    };
    let probes = vec![
        Probe {
            name: "orders, read scope narrowed",
            method: "GET",
            host: "orders.example",
            path: "/orders/1",
            route: None,
            user: Some(alice()),
        },
        Probe {
            name: "orders on another port",
            method: "GET",
            host: "orders.example:8080",
            path: "/orders/2?x=1",
            route: None,
            user: Some(alice()),
        },
        Probe {
            name: "orders, both scopes, glob path",
            method: "POST",
            host: "orders.example",
            path: "/items/9/price",
            route: None,
            user: Some(vec![
                ("sub", "alice"),
                ("scope", "orders.read orders.write"),
                ("claims", r#"{"tenant":"acme"}"#),
            ]),
        },
        Probe {
            name: "path outside the rules",
            method: "GET",
            host: "orders.example",
            path: "/admin",
            route: None,
            user: Some(alice()),
        },
        Probe {
            name: "dot segment",
            method: "GET",
            host: "orders.example",
            path: "/orders/../admin",
            route: None,
            user: Some(alice()),
        },
        Probe {
            name: "encoded dot segment",
            method: "GET",
            host: "orders.example",
            path: "/orders/%2e%2e/admin",
            route: None,
            user: Some(alice()),
        },
        Probe {
            name: "method",
            method: "DELETE",
            host: "orders.example",
            path: "/orders/1",
            route: None,
            user: Some(alice()),
        },
        Probe {
            name: "other tenant",
            method: "GET",
            host: "orders.example",
            path: "/orders/1",
            route: None,
            user: Some(vec![
                ("sub", "bob"),
                ("scope", "orders.read"),
                ("claims", r#"{"tenant":"evil"}"#),
            ]),
        },
        Probe {
            name: "no scope held",
            method: "GET",
            host: "orders.example",
            path: "/orders/1",
            route: None,
            user: Some(vec![
                ("sub", "carol"),
                ("scope", "profile"),
                ("claims", r#"{"tenant":"acme"}"#),
            ]),
        },
        Probe {
            name: "no token",
            method: "GET",
            host: "orders.example",
            path: "/orders/1",
            route: None,
            user: None,
        },
        Probe {
            name: "billing by the route's name",
            method: "GET",
            host: "invoices.billing.example",
            path: "/routed/7",
            route: Some("billing"),
            user: Some(alice()),
        },
        Probe {
            name: "billing write by a buyer",
            method: "POST",
            host: "eu.billing.example",
            path: "/x",
            route: None,
            user: Some(alice()),
        },
        Probe {
            name: "billing write by an admin",
            method: "POST",
            host: "eu.billing.example",
            path: "/x",
            route: None,
            user: Some(vec![
                ("sub", "dave"),
                ("scope", "profile"),
                ("claims", r#"{"role":"admin"}"#),
            ]),
        },
        Probe {
            name: "ledger from another namespace",
            method: "GET",
            host: "ledger.example",
            path: "/",
            route: None,
            user: Some(alice()),
        },
        Probe {
            name: "unlisted host",
            method: "GET",
            host: "elsewhere.example",
            path: "/",
            route: None,
            user: Some(alice()),
        },
    ];

    let mut cases = String::new();
    let mut seen_all = Vec::new();
    for probe in &probes {
        // The user's token, and the claims it carries (what explain and the test file are given).
        let (token, claims) = match &probe.user {
            Some(form) => {
                let mut form = form.clone();
                form.push(("aud", "frontend"));
                let token = idp.mint_with(&form).await;
                let claims = jwt_claims(&token).expect("a JWT");
                (Some(token), Some(claims))
            }
            None => (None, None),
        };
        // What the running Baton does, through Envoy (each API).
        let authorization = token.as_deref().map(bearer);
        let mut answers = Vec::new();
        for (api, envoy) in &envoys {
            let (status, reply) = raw(envoy, probe.method, probe.host, probe.path, authorization.as_deref()).await;
            let seen = match status {
                200 => match reply["authorization"].as_str() {
                    None => Seen::Strip,
                    Some(a) if Some(a) == authorization.as_deref() => Seen::Passthrough,
                    Some(a) => {
                        // The audience the token was issued for; the scopes Baton asked for, as its
                        // audit line for this token (by `jti`) records them (the token service may
                        // grant others when none are asked: baton sts then grants the subject's).
                        let issued = idp.verify(a.strip_prefix("Bearer ").expect("bearer")).await;
                        let jti = issued["jti"].as_str().expect("jti").to_owned();
                        let mut scopes: Vec<String> =
                            audited(&scratch.0.join("audit.log"), &jti).await["scopes_requested"]
                                .as_array()
                                .expect("scopes_requested")
                                .iter()
                                .filter_map(|s| s.as_str().map(str::to_owned))
                                .collect();
                        scopes.sort();
                        Seen::Delegate {
                            audience: audiences(&issued).join(" "),
                            scopes,
                        }
                    }
                },
                _ => Seen::Deny(reply["error"].as_str().unwrap_or("<no reason>").to_owned()),
            };
            answers.push((*api, status, seen));
        }
        let (_, status, seen) = answers.remove(0);
        for (api, other_status, other) in answers {
            assert_eq!(
                (other_status, &other),
                (status, &seen),
                "{}: {api:?} answered otherwise than ext_authz",
                probe.name
            );
        }

        // What explain predicts for the same request.
        let mut args = vec![
            "explain".to_owned(),
            "-c".into(),
            config.display().to_string(),
            "-X".into(),
            probe.method.into(),
            "--host".into(),
            probe.host.into(),
            "--path".into(),
            probe.path.into(),
            "--json".into(),
        ];
        if let Some(route) = probe.route {
            args.extend(["--destination".into(), route.into()]);
        }
        if let Some(claims) = &claims {
            args.extend(["--claims".into(), claims.to_string()]);
        }
        let ran = baton(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(ran.code, 0, "{}: {}", probe.name, ran.stderr);
        let explained: Value = serde_json::from_str(&ran.stdout).expect("explain JSON");
        let predicted = match explained["decision"].as_str() {
            Some("delegate") => {
                let mut scopes: Vec<String> = explained["exchange"]["scope"]
                    .as_str()
                    .unwrap_or("")
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                scopes.sort();
                Seen::Delegate {
                    audience: explained["exchange"]["audience"].as_str().unwrap_or("").to_owned(),
                    scopes,
                }
            }
            Some("strip") => Seen::Strip,
            Some("passthrough") => Seen::Passthrough,
            _ => Seen::Deny(explained["reason"].as_str().unwrap_or("").to_owned()),
        };
        assert_eq!(
            predicted, seen,
            "{}: explain disagrees with Baton through Envoy",
            probe.name
        );
        if let Seen::Deny(reason) = &seen {
            assert_eq!(
                explained["envoy"]["status"], status,
                "{}: the status Envoy answered",
                probe.name
            );
            assert_eq!(explained["envoy"]["body"]["error"], reason.as_str());
        }

        // The same request as a policy test case, expecting what Baton did.
        let expect = match &seen {
            Seen::Delegate { audience, scopes } => {
                format!(
                    "{{ delegate: {{ audience: \"{audience}\", scopes: [{}] }} }}",
                    scopes.join(", ")
                )
            }
            Seen::Strip => "strip".to_owned(),
            Seen::Passthrough => "passthrough".to_owned(),
            Seen::Deny(reason) => format!("{{ deny: {reason} }}"),
        };
        cases.push_str(&format!(
            "  - name: \"{}\"\n    request:\n      host: \"{}\"\n      method: {}\n      path: \"{}\"\n",
            probe.name, probe.host, probe.method, probe.path
        ));
        if let Some(route) = probe.route {
            cases.push_str(&format!("      destination: {route}\n"));
        }
        if let Some(claims) = &claims {
            cases.push_str(&format!("      claims: {claims}\n"));
        }
        cases.push_str(&format!("    expect: {expect}\n"));
        seen_all.push(seen);
    }

    // Not a vacuous agreement: the requests met every outcome and many reasons.
    let delegated = seen_all.iter().filter(|s| matches!(s, Seen::Delegate { .. })).count();
    let mut reasons: Vec<&str> = seen_all
        .iter()
        .filter_map(|s| match s {
            Seen::Deny(r) => Some(r.as_str()),
            _ => None,
        })
        .collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert!(delegated >= 4, "{seen_all:?}");
    assert!(seen_all.contains(&Seen::Strip), "{seen_all:?}");
    assert!(reasons.len() >= 7, "{reasons:?}");

    let file = scratch.write("agreement.yaml", &format!("config: baton.yaml\ncases:\n{cases}"));
    let ran = baton(&["policy", "test", file.to_str().expect("utf-8")]).await;
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains(&format!("{} passed, 0 failed", probes.len())),
        "{}",
        ran.stdout
    );
    eprintln!(
        "policy agreement: {} requests, {delegated} delegated, reasons {reasons:?}",
        probes.len()
    );
    drop(envoys);
    drop(baton_run);
}
