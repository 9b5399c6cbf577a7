//! Section 2 of issue 12: a path policy is judged on the path the destination will act on. Raw
//! HTTP/1.1 request lines (an HTTP client would normalize them first) go through the real Envoy,
//! ext_authz and ext_proc, with the configuration `baton envoy-config` generates (which normalizes)
//! and with the hand-written harness one (which does not). Each row is a variant of the class: dot
//! segments raw, encoded, disguised with parameters or padding, separators raw and encoded, bad
//! escapes, overlong UTF-8, double encoding, forms that are not origin-form, oversized paths. Every
//! row checks that no delegated token reached the upstream for a path outside the policy, and the
//! refusal's reason code.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use baton_test_support::*;

use crate::BATON_BIN;

// === Shared by paths and hosts: raw requests and generated configurations ===

/// What came back for a raw request.
#[derive(Debug)]
pub(crate) struct Raw {
    pub status: u16,
    pub body: Value,
}

impl Raw {
    /// The reason code of a Baton denial, `envoy` for a refusal of Envoy's own (no Baton reason),
    /// `delegate:<audience>` / `strip` / `passthrough:<token>` for what reached the upstream.
    pub(crate) fn outcome(&self, user: &str, service: &TokenServiceAudiences) -> String {
        if self.status == 200 && self.body.get("authorization_count").is_some() {
            return match self.body["authorization"].as_str() {
                None => "strip".to_owned(),
                Some(a) if a == bearer(user) => "passthrough".to_owned(),
                Some(a) => format!("delegate:{}", service.audience_of(a)),
            };
        }
        match self.body["error"].as_str() {
            Some(reason) => reason.to_owned(),
            None => "envoy".to_owned(),
        }
    }
}

/// Tells a delegated token's audience (by what the upstream received, compared with tokens minted
/// for each audience through the same stack on a plain request first).
#[derive(Debug, Default)]
pub(crate) struct TokenServiceAudiences(pub Vec<(String, &'static str)>);

impl TokenServiceAudiences {
    fn audience_of(&self, authorization: &str) -> String {
        let token = authorization.strip_prefix("Bearer ").unwrap_or(authorization);
        self.0
            .iter()
            .find(|(t, _)| t == token)
            .map_or_else(|| "other".to_owned(), |(_, name)| (*name).to_owned())
    }
}

/// Send `head` (a request line and headers, without the final blank line) as is, with the
/// bearer token, and read the whole answer (`Connection: close`).
pub(crate) async fn raw(envoy: &Envoy, head: &str, authorization: Option<&str>) -> Raw {
    let mut request = head.to_owned();
    if let Some(a) = authorization {
        leaks::credential(a);
        request.push_str(&format!("\r\nauthorization: {a}"));
    }
    request.push_str("\r\nconnection: close\r\n\r\n");
    let (status, body) = client::raw(envoy, &request).await;
    Raw { status, body }
}

/// Which Envoy configuration a stack runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// What `baton envoy-config` writes for Baton's configuration (outbound cluster pointed at the
    /// test upstream).
    Generated,
    /// The harness's hand-written bootstrap: no path normalization, `/routed/` names `billing`.
    Hand,
}

/// The real Envoy in `shape` for `api`, in front of `baton`.
pub(crate) async fn envoy(scratch: &Scratch, baton: &Baton, upstream: &Upstream, api: Api, shape: Shape) -> Envoy {
    let port = free_port();
    let bootstrap = match shape {
        Shape::Hand => envoy_bootstrap_for(api, port, baton.grpc, upstream.port),
        Shape::Generated => generated(scratch, api, port, upstream.port),
    };
    let dir = Scratch::new(BATON_BIN, &format!("{}-{api:?}-{shape:?}", scratch_name(scratch)));
    let envoy = Envoy::start_with_bootstrap(&dir, &bootstrap).await;
    if api == Api::Wasm {
        // The filter serves its cache only once it has heard Baton's epoch (every 1 s): the rows
        // then test its own judgement on hits, not only the sidecar's on misses.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    envoy
}

fn scratch_name(scratch: &Scratch) -> String {
    scratch
        .0
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(24).collect())
        .unwrap_or_default()
}

/// `baton envoy-config` for the Baton started in `scratch` (its `baton.yaml`).
fn generated(scratch: &Scratch, api: Api, port: u16, upstream: u16) -> String {
    let mut command = std::process::Command::new(BATON_BIN);
    command.arg("envoy-config");
    let api = match api {
        Api::ExtAuthz => "ext_authz",
        Api::ExtProc => "ext_proc",
        Api::Wasm => {
            command.arg("--wasm-module").arg(wasm_module());
            "wasm"
        }
        Api::ExtAuthzHttp => "ext_authz_http",
    };
    let out = command
        .arg("--config")
        .arg(scratch.0.join("baton.yaml"))
        .args(["--api", api, "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run baton envoy-config");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut bootstrap: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    to_test_upstream(&mut bootstrap, upstream);
    baton_envoy::envoy_config::to_yaml(&bootstrap).expect("yaml")
}

/// Every (api, shape) pair a row runs through.
/// The Wasm filter runs with the configuration generated from Baton's file only (its hand-written
/// plugin configuration names the standard test destinations, not these).
pub(crate) const STACKS: [(Api, Shape); 5] = [
    (Api::ExtAuthz, Shape::Generated),
    (Api::ExtAuthz, Shape::Hand),
    (Api::ExtProc, Shape::Generated),
    (Api::ExtProc, Shape::Hand),
    (Api::Wasm, Shape::Generated),
];

// === The path rows ===

const POLICY: &str = r#"
unknown_destination: deny
destinations:
  - name: orders
    hosts: ["orders.example"]
    audience: https://orders.example
    policy:
      paths: ["/orders/", "/items/*/price"]
  - name: billing
    hosts: ["*.billing.example"]
    audience: https://billing.example
    policy:
      when: 'request.path.startsWith("/invoices/")'
"#;

/// Whether the path the upstream received is one the policy allows, read the way a lenient
/// server reads it (decoded, `\` as `/`, `;` parameters cut, dot segments resolved).
fn inside_policy(host: &str, received: &str) -> bool {
    let read = lenient(received);
    if host.ends_with(".billing.example") {
        return read.starts_with("/invoices/");
    }
    let segments: Vec<&str> = read.split('/').collect();
    read.starts_with("/orders/") || (segments.len() == 4 && segments[1] == "items" && segments[3] == "price")
}

fn lenient(path: &str) -> String {
    let mut bytes = Vec::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                bytes.push(u8::try_from(h << 4 | l).unwrap_or(0));
                i += 3;
            }
            (c, _, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for s in decoded.split('/').skip(1) {
        match s.split(';').next().unwrap_or(s) {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = if decoded.ends_with('/') { "/" } else { "" };
    format!("/{}{trailing}", out.join("/"))
}

/// One attack: the request line's target (and method), the host, and what may happen. `ok` lists
/// every acceptable outcome: a reason code, `envoy` (Envoy refused it itself), or `delegate` (a
/// token reached the upstream: then the path it received must be inside the policy).
struct Row {
    what: &'static str,
    method: &'static str,
    target: String,
    host: &'static str,
    ok: &'static [&'static str],
}

fn row(what: &'static str, target: &str, ok: &'static [&'static str]) -> Row {
    Row {
        what,
        method: "GET",
        target: target.to_owned(),
        host: "orders.example",
        ok,
    }
}

const PNA: &str = "path_not_allowed";
const PNC: &str = "path_not_canonical";

fn rows() -> Vec<Row> {
    let mut rows = vec![
        // Inside the policy, for contrast.
        row("plain", "/orders/1", &["delegate"]),
        row("query with dot segments", "/orders/1?next=/../admin", &["delegate"]),
        row("glob", "/items/7/price", &["delegate"]),
        row("dot segment inside", "/orders/./1", &["delegate"]),
        row("merged slashes inside", "//orders//1", &["delegate"]),
        // Issue 12's examples.
        row("raw dot-dot", "/orders/../admin", &[PNA]),
        row("raw dot-dot in a glob", "/items/../price", &[PNA]),
        row("encoded dot-dot", "/orders/%2e%2e/admin", &[PNC, PNA]),
        row("encoded slash", "/orders/..%2fadmin", &[PNC, "envoy"]),
        // Dot segments, encoded and mixed case.
        row("upper-case encoded dots", "/orders/%2E%2E/admin", &[PNC, PNA]),
        row("half-encoded dots", "/orders/.%2e/admin", &[PNC, PNA]),
        row("half-encoded dots, other half", "/orders/%2e./admin", &[PNC, PNA]),
        row("deep raw dot-dot", "/orders/1/../../admin", &[PNA]),
        row("dot-dot at the end", "/orders/..", &[PNA]),
        row("encoded dot-dot at the end", "/orders/%2e%2e", &[PNC, PNA]),
        row("dot-dot past the root", "/orders/../../../../admin", &[PNA]),
        // Separators.
        row("upper-case encoded slash", "/orders/..%2Fadmin", &[PNC, "envoy"]),
        row("encoded slashes only", "/orders%2f..%2f..%2fadmin", &[PNC, "envoy"]),
        row("raw backslash", "/orders/..\\admin", &[PNC, PNA, "envoy"]),
        row("encoded backslash", "/orders/..%5cadmin", &[PNC, "envoy"]),
        row("encoded backslash upper-case", "/orders/..%5Cadmin", &[PNC, "envoy"]),
        row("empty segment before dot-dot", "/orders//../admin", &[PNC, "delegate"]),
        // Parameters and padding some servers read as dot segments.
        // (Envoy's normalization resolves `..;` as `..`: then the policy refuses `/admin`.)
        row("dot-dot with an empty parameter", "/orders/..;/admin", &[PNC, PNA]),
        row("dot-dot with a parameter", "/orders/..;jsessionid=1/admin", &[PNC, PNA]),
        row("dot with a parameter", "/orders/.;x/../../admin", &[PNC, PNA]),
        row("encoded semicolon", "/orders/..%3b/admin", &[PNC]),
        row("parameter-only segment in a glob", "/items/;x/price", &[PNC]),
        row("three dots", "/orders/.../admin", &[PNC]),
        row("dots and an encoded space", "/orders/..%20/admin", &[PNC]),
        // Escapes.
        row("encoded NUL", "/orders/%00/x", &[PNC, "envoy"]),
        row("encoded newline", "/orders/%0d%0aX-Injected:%201", &[PNC, "envoy"]),
        row("encoded DEL", "/orders/%7f", &[PNC, "envoy"]),
        row("malformed escape", "/orders/%zz", &[PNC, "envoy"]),
        row("lone percent", "/orders/%", &[PNC, "envoy"]),
        row("short escape", "/orders/%4", &[PNC, "envoy"]),
        row("IIS %u escape", "/orders/%u002e%u002e/admin", &[PNC, "envoy"]),
        row("double-encoded dots", "/orders/%252e%252e/admin", &[PNC]),
        row("double-encoded slash", "/orders/..%252fadmin", &[PNC]),
        row("overlong dot", "/orders/%c0%ae%c0%ae/admin", &[PNC]),
        row("overlong slash", "/orders/..%c0%afadmin", &[PNC]),
        row("three-byte overlong dot", "/orders/%e0%80%ae%e0%80%ae/admin", &[PNC]),
        row("invalid UTF-8", "/orders/%ff", &[PNC]),
        // Not origin-form.
        row("asterisk-form", "*", &[PNC, "envoy"]),
        row(
            "absolute-form with dot-dot",
            "http://orders.example/orders/../admin",
            &[PNA, "envoy"],
        ),
        row(
            "absolute-form with encoded dots",
            "http://orders.example/orders/%2e%2e/admin",
            &[PNC, PNA, "envoy"],
        ),
        row("path without a slash", "orders/1", &[PNC, "envoy"]),
        row(
            "fragment in the request line",
            "/orders/1#/../../admin",
            &[PNC, "delegate", "envoy"],
        ),
        row(
            "oversized path",
            &format!("/orders/{}", "a".repeat(9000)),
            &[PNC, "envoy"],
        ),
        // Outside by case or by prefix.
        row("other case", "/ORDERS/1", &[PNA]),
        row("prefix without its slash", "/orders", &[PNA]),
        row("unreserved escapes leave the glob", "/items/7/pric%65/x", &[PNA]),
    ];
    let mut cel = |what, target: &str, ok| {
        rows.push(Row {
            what,
            method: "GET",
            target: target.to_owned(),
            host: "eu.billing.example",
            ok,
        })
    };
    // CEL's request.path is the same canonical path.
    cel("CEL plain", "/invoices/1", &["delegate"]);
    cel("CEL raw dot-dot", "/invoices/../admin", &["policy_expression_false"]);
    cel(
        "CEL encoded dot-dot",
        "/invoices/%2e%2e/admin",
        &[PNC, "policy_expression_false"],
    );
    cel("CEL encoded slash", "/invoices/..%2fadmin", &[PNC, "envoy"]);
    cel(
        "CEL parameters",
        "/invoices/..;/admin",
        &[PNC, "policy_expression_false"],
    );
    cel("CEL query", "/admin?/invoices/", &["policy_expression_false"]);
    rows.push(Row {
        what: "CONNECT",
        method: "CONNECT",
        target: "orders.example:443".to_owned(),
        host: "orders.example:443",
        ok: &[PNC, PNA, "envoy"],
    });
    rows.push(Row {
        what: "OPTIONS *",
        method: "OPTIONS",
        target: "*".to_owned(),
        host: "orders.example",
        ok: &[PNC, "envoy"],
    });
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_policy_never_get_a_token() {
    let scratch = Arc::new(Scratch::new(BATON_BIN, "adv-paths"));
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
    let baton = Baton::start_raw(
        &scratch,
        &format!("token_service:\n{token_service}\n{POLICY}"),
        "baton=debug,info",
    )
    .await;
    let upstream = Upstream::start().await;
    let user = service.mint("alice", "orders.read").await;
    let mut failures = Vec::new();
    for (api, shape) in STACKS {
        let envoy = envoy(&scratch, &baton, &upstream, api, shape).await;
        // The delegated tokens, to tell them from the user's own.
        let mut audiences = TokenServiceAudiences::default();
        for (host, path, name) in [
            ("orders.example", "/orders/0", "orders"),
            ("eu.billing.example", "/invoices/0", "billing"),
        ] {
            let reply = send(&envoy, host, path, Some(&bearer(&user))).await;
            audiences.0.push((reply.upstream_token().to_owned(), name));
        }
        for row in rows() {
            let head = format!("{} {} HTTP/1.1\r\nhost: {}", row.method, row.target, row.host);
            let reply = raw(&envoy, &head, Some(&bearer(&user))).await;
            let outcome = reply.outcome(&user, &audiences);
            let label = format!("{api:?}/{shape:?} {}: {:.80}", row.what, row.target);
            match outcome.strip_prefix("delegate:") {
                Some(_) => {
                    let received: String = reply.body["path"].as_str().unwrap_or("").chars().take(80).collect();
                    if !row.ok.contains(&"delegate") {
                        failures.push(format!("{label}: a token reached the upstream for {received:?}"));
                    } else if !inside_policy(row.host, reply.body["path"].as_str().unwrap_or("")) {
                        failures.push(format!(
                            "{label}: the upstream received {received:?}, outside the policy"
                        ));
                    }
                }
                None if outcome == "passthrough" => {
                    failures.push(format!("{label}: the user's own token reached the upstream"))
                }
                None if !row.ok.contains(&outcome.as_str()) => failures.push(format!(
                    "{label}: {outcome} ({}), expected one of {:?}",
                    reply.status, row.ok
                )),
                None => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
