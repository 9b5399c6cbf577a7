//! Clients of what the harness starts: HTTP through Envoy (`send`, `Reply`), scrapes of Prometheus
//! text and a process's memory. Every credential sent or received is registered for the leak scans.

use serde_json::Value;

use crate::envoy::Envoy;
use crate::leaks;

/// A process's resident set (`VmRSS` in /proc/<pid>/status), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The value of an unlabelled sample in Prometheus text (`name value`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub use crate::scratch::http;

/// What a request through Envoy came back with.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The Authorization the upstream received (`None` if it got none).
    pub fn upstream_authorization(&self) -> Option<&str> {
        assert_eq!(
            self.status, 200,
            "expected the request to reach the upstream: {:?}",
            self.body
        );
        self.body["authorization"].as_str()
    }

    /// The token the upstream received.
    pub fn upstream_token(&self) -> &str {
        let header = self
            .upstream_authorization()
            .expect("the upstream received an Authorization header");
        header.strip_prefix("Bearer ").expect("a bearer token")
    }

    /// The reason code of a denial.
    pub fn reason(&self) -> &str {
        self.body["error"].as_str().unwrap_or("<no error field>")
    }

    /// A response header, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(envoy: &Envoy, host: &str, path: &str, authorization: Option<&str>) -> Reply {
    send_with(envoy, host, path, authorization, &[]).await
}

/// Like `send`, with extra request headers (e.g. `traceparent`).
pub async fn send_with(
    envoy: &Envoy,
    host: &str,
    path: &str,
    authorization: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = http().get(envoy.url(path)).header("host", host);
    if let Some(a) = authorization {
        leaks::credential(a);
        request = request.header("authorization", a);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    reply(request.send().await.expect("request through envoy")).await
}

/// Requests to one host through Envoy, all over one connection (HTTP/2 without TLS, which Envoy's
/// listeners accept), so all on the same Envoy worker: what a test of the Wasm filter's per-worker
/// cache needs. An HTTP/1 client cannot promise that: a request that starts before the previous
/// one's connection is back in its pool opens a second connection (likely on a loaded machine),
/// and Envoy may hand that one to its other worker. The authority is `host:port` (HTTP/2 has no
/// `Host` header to set apart from the URL).
#[derive(Debug)]
pub struct Connection {
    client: reqwest::Client,
    base: String,
}

impl Connection {
    pub fn to(envoy: &Envoy, host: &str) -> Connection {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .resolve(host, ([127, 0, 0, 1], envoy.port).into())
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .expect("an HTTP/2 client");
        Connection {
            client,
            base: format!("http://{host}:{}", envoy.port),
        }
    }

    /// GET `path` with `authorization` (registered for the leak scans).
    pub async fn get(&self, path: &str, authorization: &str) -> Reply {
        leaks::credential(authorization);
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .header("authorization", authorization);
        reply(request.send().await.expect("request through envoy")).await
    }
}

/// What came back, its body as JSON when it is; a received `authorization` is registered for the
/// leak scans.
async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body: Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    if let Some(received) = body["authorization"].as_str() {
        leaks::credential(received);
    }
    Reply { status, headers, body }
}

/// Send `request` (a whole HTTP/1.1 request, headers ended, `Connection: close`) to Envoy byte for
/// byte, as HTTP clients would not (they normalize paths), and read the answer within 10 s: its
/// status and its body (de-chunked; JSON when it is). A received `authorization` is registered for
/// the leak scans; register what you send with `leaks::credential`.
pub async fn raw(envoy: &Envoy, request: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", envoy.port))
        .await
        .expect("connect to envoy");
    stream.write_all(request.as_bytes()).await.expect("write the request");
    let mut answer = Vec::new();
    // A reset after the answer (Envoy closing on a request it refused) keeps what was read.
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "envoy did not answer {request:?} within 10 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
    if let Some(received) = body["authorization"].as_str() {
        leaks::credential(received);
    }
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
