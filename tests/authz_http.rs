//! Baton's HTTP authorization listener (`listen.authz_http`, ext_authz over HTTP) under attack: a
//! process that is not Envoy writes raw HTTP/1.1 to it (bodies, request smuggling shapes, duplicate
//! `host`, absolute-form, oversized or too many headers, non-UTF-8 and repeated `Authorization`),
//! and every answer is a refusal with a reason, never a delegation nor a hang. Then through the
//! real Envoy: a caller's repeated `Authorization`, its own `x-envoy-auth-headers-to-remove` and
//! `dpop` (removed), and the decision observed as `api: ext_authz_http` (audit line and metrics).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use baton_test_support::*;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// One HTTP/1.1 response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn reason(&self) -> &str {
        self.body["error"].as_str().unwrap_or("<no error field>")
    }
}

/// Read one response (head, then a `content-length` body) from `stream`; `None` if it closed first.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> Option<Answer> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buffer[head_end..]).unwrap_or(Value::Null);
    Some(Answer { status, headers, body })
}

/// Write `request` (raw bytes) on a new connection to Baton's HTTP listener and read the answer.
async fn ask(port: u16, request: &[u8]) -> (Option<Answer>, tokio::net::TcpStream) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to authz_http");
    stream.write_all(request).await.expect("write");
    let answer = read_answer(&mut stream).await;
    (answer, stream)
}

/// Whether the server closed `stream` (EOF within 2 s).
async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_envoys_request_is_refused() {
    let scratch = Scratch::new(BATON_BIN, "authz-http-raw");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
    let port = baton.authz_http;
    let user = service.mint("alice", "orders.read").await;

    // Envoy's shape, twice on one connection (keep-alive): a delegation, with what Envoy must
    // remove and Baton's metadata as headers.
    let request = format!(
        "GET /orders/1?x=1 HTTP/1.1\r\nhost: orders.example\r\ncontent-length: 0\r\nauthorization: Bearer {user}\r\nx-envoy-internal: true\r\n\r\n"
    );
    let (answer, mut stream) = ask(port, request.as_bytes()).await;
    let answer = answer.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    let issued = answer
        .header("authorization")
        .expect("the new Authorization")
        .to_owned();
    assert!(issued.starts_with("Bearer ") && !issued.contains(&user));
    // Nothing to remove: the request carries no `dpop` (a plain hit's answer stays small).
    assert_eq!(answer.header("x-envoy-auth-headers-to-remove"), None);
    assert_eq!(
        (
            answer.header("decision"),
            answer.header("destination"),
            answer.header("cache")
        ),
        (Some("delegate"), Some("orders"), Some("miss"))
    );
    stream.write_all(request.as_bytes()).await.expect("write again");
    let again = read_answer(&mut stream)
        .await
        .expect("a second answer on the same connection");
    assert_eq!(
        (again.status, again.header("authorization"), again.header("cache")),
        (200, Some(issued.as_str()), Some("hit"))
    );
    // A caller's own proof is named for removal: never sent with Baton's token.
    let with_proof = request.replace("x-envoy-internal", "dpop: caller.proof\r\nx-envoy-internal");
    stream.write_all(with_proof.as_bytes()).await.expect("write a third");
    let third = read_answer(&mut stream).await.expect("a third answer");
    assert_eq!(
        (third.status, third.header("x-envoy-auth-headers-to-remove")),
        (200, Some("dpop"))
    );

    // Denials: the same status, JSON body and challenge as a Check's.
    let (answer, _) = ask(
        port,
        b"GET / HTTP/1.1\r\nhost: orders.example\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let answer = answer.expect("an answer");
    assert_eq!((answer.status, answer.reason()), (401, "missing_token"), "{answer:?}");
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let (answer, _) = ask(
        port,
        b"GET / HTTP/1.1\r\nhost: elsewhere.example\r\ncontent-length: 0\r\nauthorization: Bearer abc\r\n\r\n",
    )
    .await;
    let answer = answer.expect("an answer");
    assert_eq!(
        (
            answer.status,
            answer.header("x-envoy-auth-headers-to-remove"),
            answer.header("authorization")
        ),
        (200, Some("authorization"), None),
        "an unknown destination strips"
    );

    // Repeated Authorization, folded by Envoy or as two lines; not UTF-8; a caller's header named
    // like a metadata key changes nothing.
    for (headers, reason) in [
        (
            &b"authorization: Bearer a,Bearer b\r\n"[..],
            "multiple_authorization_headers",
        ),
        (
            &b"authorization: Bearer a\r\nauthorization: Bearer b\r\n"[..],
            "multiple_authorization_headers",
        ),
        (&b"authorization: Bearer \xff\xfe\r\n"[..], "malformed_token"),
        (&b"destination: orders\r\ndecision: delegate\r\n"[..], "missing_token"),
    ] {
        let mut request = b"GET / HTTP/1.1\r\nhost: orders.example\r\ncontent-length: 0\r\n".to_vec();
        request.extend_from_slice(headers);
        request.extend_from_slice(b"\r\n");
        let (answer, _) = ask(port, &request).await;
        let answer = answer.expect("an answer");
        assert_eq!(
            (answer.status, answer.reason()),
            (401, reason),
            "{}: {answer:?}",
            String::from_utf8_lossy(headers)
        );
        assert_eq!(answer.header("decision"), Some("deny"));
    }

    // Not a request Envoy sends: refused `check_request_malformed`, never delegated.
    let token = format!("authorization: Bearer {user}\r\n");
    let malformed = [
        format!("POST / HTTP/1.1\r\nhost: orders.example\r\n{token}content-length: 5\r\n\r\nhello"),
        format!(
            "POST / HTTP/1.1\r\nhost: orders.example\r\n{token}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        format!("GET / HTTP/1.1\r\nhost: orders.example\r\nhost: evil.example\r\n{token}content-length: 0\r\n\r\n"),
        format!("GET http://orders.example/ HTTP/1.1\r\nhost: orders.example\r\n{token}content-length: 0\r\n\r\n"),
    ];
    for request in &malformed {
        let (answer, mut stream) = ask(port, request.as_bytes()).await;
        let answer = answer.expect("an answer");
        assert_eq!(
            (answer.status, answer.reason()),
            (403, "check_request_malformed"),
            "{request:?}: {answer:?}"
        );
        assert!(answer.header("authorization").is_none(), "{request:?}");
        if request.starts_with("POST") {
            assert!(
                closed(&mut stream).await,
                "{request:?}: a body Baton did not read closes the connection"
            );
        }
    }
    // Request smuggling shapes hyper refuses itself (400), and a second request hidden in a body.
    for request in [
        format!(
            "POST / HTTP/1.1\r\nhost: orders.example\r\n{token}content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nhost: orders.example\r\n{token}\r\n"
        ),
        format!("POST / HTTP/1.1\r\nhost: orders.example\r\n{token}content-length: 1\r\ncontent-length: 2\r\n\r\nab"),
        format!(
            "GET / HTTP/1.1\r\nhost: orders.example\r\n{token}transfer-encoding: gzip, chunked, identity\r\n\r\n0\r\n\r\n"
        ),
    ] {
        let (answer, mut stream) = ask(port, request.as_bytes()).await;
        let answer = answer.expect("an answer");
        assert!(matches!(answer.status, 400 | 403), "{request:?}: {answer:?}");
        assert!(answer.header("authorization").is_none(), "{request:?}");
        assert!(
            closed(&mut stream).await,
            "{request:?}: nothing after it is read as a request"
        );
    }

    // Bounds: a head over 64 KiB, and more than 64 header lines: 431, never a decision.
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: orders.example\r\nauthorization: Bearer {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many: String = (0..100).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nhost: orders.example\r\n{token}{many}\r\n");
    for request in [huge, many] {
        let (answer, _) = ask(port, request.as_bytes()).await;
        assert_eq!(answer.map(|a| a.status), Some(431));
    }
    // Baton still answers.
    let (answer, _) = ask(
        port,
        b"GET / HTTP/1.1\r\nhost: orders.example\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.map(|a| a.status), Some(401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_a_callers_headers_change_nothing_and_the_api_is_observed() {
    let stack = Stack::start_for(BATON_BIN, Api::ExtAuthzHttp, Peer::BatonSts, "authz-http-envoy").await;
    let user = stack.service.mint("alice", "orders.read").await;

    // Two Authorization headers reach Baton folded into one line: refused.
    let reply = send_with(
        &stack.envoy,
        "orders.example",
        "/",
        Some(&bearer(&user)),
        &[("authorization", "Bearer other")],
    )
    .await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "multiple_authorization_headers"),
        "{:?}",
        reply.body
    );
    // A caller's own `x-envoy-auth-headers-to-remove` and metadata-named headers are not Baton's
    // answer: the delegation happens as usual.
    let reply = send_with(
        &stack.envoy,
        "orders.example",
        "/",
        Some(&bearer(&user)),
        &[
            ("x-envoy-auth-headers-to-remove", "authorization"),
            ("decision", "strip"),
        ],
    )
    .await;
    let claims = stack.service.verify(reply.upstream_token()).await;
    assert_eq!(audiences(&claims), [ORDERS]);
    assert_eq!(reply.body["authorization_count"], 1);
    // A caller's own DPoP proof never reaches the destination beside Baton's token.
    let reply = send_with(
        &stack.envoy,
        "orders.example",
        "/",
        Some(&bearer(&user)),
        &[("dpop", "caller.proof.junk")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.reason());
    assert_eq!(
        reply.body["dpop"],
        Value::Null,
        "the caller's proof reached the destination"
    );

    // Observed as its own API: the audit line and the metrics.
    let metrics = stack.baton.metrics().await;
    assert!(metrics.contains("api=\"ext_authz_http\""), "{metrics}");
    let audit = wait_for_audit(&stack.scratch.0.join("audit.log")).await;
    assert!(audit.contains("\"api\":\"ext_authz_http\""), "{audit}");
    // Envoy's access log has Baton's metadata, from the answer's headers.
    let delegated = |l: &Value| l["baton_decision"] == "delegate" && l["baton_destination"] == "orders";
    for _ in 0..50 {
        if stack.envoy.access_log().iter().any(delegated) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged = stack.envoy.access_log();
    assert!(logged.iter().any(delegated), "{logged:?}");
}

async fn wait_for_audit(path: &std::path::Path) -> String {
    for _ in 0..50 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains("ext_authz_http") {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::read_to_string(path).unwrap_or_default()
}
