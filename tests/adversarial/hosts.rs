//! Section 3 of issue 12: one canonical authority, in Baton and in the routes `baton envoy-config`
//! writes. Raw HTTP/1.1 requests through the real Envoy (ext_authz and ext_proc; generated and
//! hand-written configurations) with hostile `Host` headers and request targets: other spellings of
//! a port, trailing dots, userinfo, percent-encoding, IPv6 literals with and without brackets,
//! several colons, absolute-form URLs, duplicate `Host`, oversized names; and a route naming a
//! destination for a host it does not claim. Baton runs `unknown_destination: passthrough`, its
//! riskiest setting: an unknown host keeps the user's token (as configured), a malformed one must
//! never (`authority_malformed`).

use std::sync::Arc;

use crate::paths::{STACKS, Shape, TokenServiceAudiences, envoy, raw};
use baton_test_support::*;

use crate::BATON_BIN;

const ADMIN: &str = "https://admin.example";

const DESTINATIONS: &str = r#"
unknown_destination: passthrough
destinations:
  - name: orders
    hosts: ["orders.local", "api.orders.example"]
    audience: https://orders.example
  - name: admin
    hosts: ["orders.local:8443"]
    audience: https://admin.example
  - name: billing
    hosts: ["*.billing.example"]
    audience: https://billing.example
"#;

const AM: &str = "authority_malformed";
const DHM: &str = "destination_host_mismatch";

/// One attack: the request's head (request line and `Host`), which shapes it runs in (`None`:
/// both), and every acceptable outcome (a reason code, `envoy`, `passthrough` for an unknown host,
/// `delegate:<destination>`).
struct Row {
    what: &'static str,
    head: String,
    only: Option<Shape>,
    ok: &'static [&'static str],
}

fn host(what: &'static str, host: &str, ok: &'static [&'static str]) -> Row {
    Row {
        what,
        head: format!("GET /x HTTP/1.1\r\nhost: {host}"),
        only: None,
        ok,
    }
}

fn head(what: &'static str, head: &str, only: Option<Shape>, ok: &'static [&'static str]) -> Row {
    Row {
        what,
        head: head.to_owned(),
        only,
        ok,
    }
}

fn rows() -> Vec<Row> {
    vec![
        // One host, its spellings.
        host("plain", "orders.local", &["delegate:orders"]),
        host("upper case", "ORDERS.Local", &["delegate:orders"]),
        host("trailing dot", "orders.local.", &["delegate:orders"]),
        host("any port", "orders.local:80", &["delegate:orders"]),
        host("other name", "api.orders.example", &["delegate:orders"]),
        host("ported pattern", "orders.local:8443", &["delegate:admin"]),
        // Issue 12's examples: a spelling of `orders.local:8443` must never reach `orders`.
        host("trailing dot and port", "orders.local.:8443", &["delegate:admin"]),
        host("upper case, dot and port", "ORDERS.LOCAL.:8443", &["delegate:admin"]),
        host("leading zero", "orders.local:08443", &[AM]),
        host("leading zeros", "orders.local:008443", &[AM]),
        host("letters for a port", "orders.local:abc", &[AM]),
        host("a host after the port", "orders.local:8080.evil.example", &[AM]),
        host("a host for a port", "api.orders.example:evil.example", &[AM]),
        // Ports.
        host("port zero", "orders.local:0", &[AM]),
        host("port 65536", "orders.local:65536", &[AM]),
        host("port overflowing u32", "orders.local:4294975739", &[AM]),
        host("negative port", "orders.local:-1", &[AM, "envoy"]),
        host("signed port", "orders.local:+8443", &[AM, "envoy"]),
        host("port with a dot", "orders.local:8443.", &[AM]),
        host("empty port", "orders.local:", &[AM, "envoy"]),
        host("two ports", "orders.local:8443:8443", &[AM, "envoy"]),
        host("port with a space", "orders.local: 8443", &[AM, "envoy"]),
        // Names.
        host("two trailing dots", "orders.local..", &[AM]),
        host("two trailing dots and a port", "orders.local..:8443", &[AM]),
        host("leading dot", ".orders.local", &[AM]),
        host("empty label", "orders..local", &[AM]),
        host("userinfo", "user@orders.local", &[AM, "envoy"]),
        host("userinfo with a password", "user:pw@orders.local:8443", &[AM, "envoy"]),
        host("percent-encoded dot", "orders%2elocal", &[AM, "envoy"]),
        host("percent-encoded colon", "orders.local%3a8443", &[AM, "envoy"]),
        host("space inside", "orders .local", &[AM, "envoy"]),
        host("backslash", "orders.local\\@evil.example", &[AM, "envoy"]),
        host("slash", "orders.local/evil", &[AM, "envoy"]),
        host("non-ASCII", "ordérs.local", &[AM, "envoy"]),
        host("wildcard", "*.billing.example", &[AM, "envoy"]),
        host(
            "oversized",
            &format!("{}.billing.example", "a".repeat(300)),
            &[AM, "envoy"],
        ),
        host(
            "oversized label count",
            &format!("{}billing.example", "a.".repeat(200)),
            &[AM, "envoy"],
        ),
        // Wildcards.
        host("wildcard match", "eu.billing.example", &["delegate:billing"]),
        host(
            "wildcard match, upper case, dot, port",
            "EU.BILLING.EXAMPLE.:443",
            &["delegate:billing"],
        ),
        host("wildcard needs a label", "billing.example", &["passthrough"]),
        host("wildcard with two trailing dots", "eu.billing.example..", &[AM]),
        host("wildcard with a bad port", "eu.billing.example:0443", &[AM]),
        host("unknown", "evil.example", &["passthrough"]),
        host("suffix of a known host", "orders.local.evil.example", &["passthrough"]),
        // IPv6 literals.
        host("unbracketed IPv6", "::1", &[AM, "envoy"]),
        host("unbracketed IPv6 and port", "::1:8443", &[AM, "envoy"]),
        host("unclosed bracket", "[::1", &[AM, "envoy"]),
        host("garbage after the bracket", "[::1]x", &[AM, "envoy"]),
        host("bracketed IPv6 with a leading-zero port", "[::1]:08443", &[AM, "envoy"]),
        host("zone identifier", "[fe80::1%25eth0]:8443", &[AM, "envoy"]),
        host("IPvFuture", "[v1.orders.local]", &[AM, "envoy"]),
        host("a name in brackets", "[orders.local]:8443", &[AM, "envoy"]),
        host("empty brackets", "[]", &[AM, "envoy"]),
        host("IPv6 unknown", "[::1]:8443", &["passthrough"]),
        // Missing and duplicate.
        host("empty host", "", &[AM, "envoy"]),
        head(
            "duplicate Host",
            "GET /x HTTP/1.1\r\nhost: orders.local\r\nhost: orders.local:8443",
            None,
            &[AM, "envoy"],
        ),
        // Absolute-form: the URL's authority is the request's.
        head(
            "absolute-form, leading-zero port",
            "GET http://orders.local:08443/x HTTP/1.1\r\nhost: orders.local",
            None,
            &[AM, "envoy"],
        ),
        head(
            "absolute-form, port after the host",
            "GET http://orders.local:8080.evil.example/x HTTP/1.1\r\nhost: orders.local",
            None,
            &[AM, "envoy"],
        ),
        head(
            "absolute-form with userinfo",
            "GET http://user@orders.local:8443/x HTTP/1.1\r\nhost: orders.local:8443",
            None,
            // Envoy drops the userinfo: the request goes to `orders.local:8443`, admin's host.
            &[AM, "envoy", "delegate:admin"],
        ),
        head(
            "absolute-form, other authority than Host",
            "GET http://orders.local:8443/x HTTP/1.1\r\nhost: orders.local",
            None,
            &["delegate:admin", "envoy"],
        ),
        head(
            "CONNECT",
            "CONNECT orders.local:08443 HTTP/1.1\r\nhost: orders.local:08443",
            None,
            &[AM, "envoy"],
        ),
        // A route naming a destination (the hand configuration's `/routed/` names billing).
        head(
            "route names billing for a host billing does not claim",
            "GET /routed/x HTTP/1.1\r\nhost: orders.local",
            Some(Shape::Hand),
            &[DHM],
        ),
        head(
            "route names billing for an unknown host",
            "GET /routed/x HTTP/1.1\r\nhost: evil.example",
            Some(Shape::Hand),
            &[DHM],
        ),
        head(
            "route names billing for a malformed host",
            "GET /routed/x HTTP/1.1\r\nhost: eu.billing.example:0443",
            Some(Shape::Hand),
            &[AM],
        ),
        head(
            "route names billing for one of its hosts",
            "GET /routed/x HTTP/1.1\r\nhost: eu.billing.example",
            Some(Shape::Hand),
            &["delegate:billing"],
        ),
    ]
}

/// `baton sts` (issuing for the three audiences), Baton with `destinations`, and the upstream.
async fn start(name: &str, destinations: &str) -> (Arc<Scratch>, TokenService, Baton, Upstream) {
    let scratch = Arc::new(Scratch::new(BATON_BIN, name));
    let options = PeerOptions {
        audiences: vec![ORDERS.to_owned(), BILLING.to_owned(), ADMIN.to_owned()],
        ..PeerOptions::default()
    };
    let service = TokenService::start_with(Peer::BatonSts, &scratch, options).await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
    let body = format!("token_service:\n{token_service}\n{destinations}");
    let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
    (scratch, service, baton, Upstream::start().await)
}

/// Every row that went wrong, at once.
fn no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_canonical_authority_reaches_a_destination() {
    let (scratch, service, baton, upstream) = start("adv-hosts", DESTINATIONS).await;
    let user = service.mint("alice", "orders.read").await;
    let mut failures = Vec::new();
    for (api, shape) in STACKS {
        let envoy = envoy(&scratch, &baton, &upstream, api, shape).await;
        let mut audiences = TokenServiceAudiences::default();
        for (host, name) in [
            ("orders.local", "orders"),
            ("orders.local:8443", "admin"),
            ("eu.billing.example", "billing"),
        ] {
            let reply = send(&envoy, host, "/", Some(&bearer(&user))).await;
            audiences.0.push((reply.upstream_token().to_owned(), name));
        }
        for row in rows() {
            if row.only.is_some_and(|only| only != shape) {
                continue;
            }
            let reply = raw(&envoy, &row.head, Some(&bearer(&user))).await;
            let outcome = reply.outcome(&user, &audiences);
            if !row.ok.contains(&outcome.as_str()) {
                failures.push(format!(
                    "{api:?}/{shape:?} {}: {outcome} ({}), expected one of {:?}",
                    row.what, reply.status, row.ok
                ));
            }
        }
    }
    no_failures(&failures);
}

/// Under `unknown_destination: strip` (the default) a malformed authority reaches no destination
/// either: the request goes on without the user's token, never with it, never delegated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_authority_is_stripped_under_strip() {
    let destinations = DESTINATIONS.replace("unknown_destination: passthrough", "unknown_destination: strip");
    let (scratch, service, baton, upstream) = start("adv-hosts-strip", &destinations).await;
    let user = service.mint("alice", "orders.read").await;
    let audiences = TokenServiceAudiences::default();
    let mut failures = Vec::new();
    for (api, shape) in STACKS {
        let envoy = envoy(&scratch, &baton, &upstream, api, shape).await;
        for authority in [
            "orders.local:08443",
            "orders.local:abc",
            "orders.local:8080.evil.example",
            "api.orders.example:evil.example",
            "orders.local..",
            "orders.local:0",
        ] {
            let reply = raw(
                &envoy,
                &format!("GET /x HTTP/1.1\r\nhost: {authority}"),
                Some(&bearer(&user)),
            )
            .await;
            let outcome = reply.outcome(&user, &audiences);
            if outcome != "strip" {
                failures.push(format!("{api:?}/{shape:?} {authority}: {outcome} ({})", reply.status));
            }
        }
    }
    no_failures(&failures);
}

/// HTTP/2: `:authority` is the request's authority; a `host` header beside it (naming admin's
/// `orders.local:8443`) must not change where the token goes, nor which token it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_host_header_does_not_override_the_authority() {
    let (scratch, service, baton, upstream) = start("adv-hosts-h2", DESTINATIONS).await;
    let user = service.mint("alice", "orders.read").await;
    let authorization = bearer(&user);
    leaks::credential(&authorization);
    for (api, shape) in STACKS {
        let envoy = envoy(&scratch, &baton, &upstream, api, shape).await;
        let admin = send(&envoy, "orders.local:8443", "/", Some(&authorization)).await;
        let admin_token = admin.upstream_token().to_owned();
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .resolve("eu.billing.example", ([127, 0, 0, 1], envoy.port).into())
            .build()
            .expect("an HTTP/2 client");
        let reply = client
            .get(format!("http://eu.billing.example:{}/x", envoy.port))
            .header("host", "orders.local:8443")
            .header("authorization", &authorization)
            .send()
            .await
            .expect("an HTTP/2 request through envoy");
        assert_eq!(reply.version(), reqwest::Version::HTTP_2, "{api:?}/{shape:?}");
        let status = reply.status().as_u16();
        let bytes = reply.bytes().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let received = body["authorization"].as_str().unwrap_or("");
        if !received.is_empty() {
            leaks::credential(received);
        }
        assert!(
            status != 200 || (received != authorization && received != format!("Bearer {admin_token}")),
            "{api:?}/{shape:?}: {status} {body}"
        );
        if status == 200 {
            let claims = service.verify(received.trim_start_matches("Bearer ")).await;
            assert_eq!(
                audiences(&claims),
                [BILLING],
                "{api:?}/{shape:?}: the :authority's destination"
            );
        }
    }
}
