//! A test service in a chain of services (gateway -> A -> B -> C): it keeps what it received
//! (Authorization, traceparent, Host, path) and, unless it is the last hop, calls the next service
//! through its own outbound Envoy, forwarding the Authorization and the `traceparent` it received
//! (as an application that propagates context does), then answers with the next hop's status and
//! body. A stand-in for an application: no real part plays one.
//!
//! Which host it calls: `next_host`, or the value of the request's `x-relay-<name>-calls` header,
//! so one test can point hop B at several destinations of its Baton. Every `x-relay-*` header is
//! passed on.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::{Value, json};

/// What one hop received.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub host: Option<String>,
    pub path: String,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
}

impl Received {
    /// The bearer token it received, if any.
    pub fn token(&self) -> Option<&str> {
        self.authorization.as_deref()?.strip_prefix("Bearer ")
    }
}

#[derive(Debug)]
pub struct Relay {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

/// Where a relay calls: its outbound Envoy's port and the default host.
#[derive(Clone, Debug)]
struct Next {
    envoy_port: u16,
    host: String,
}

impl Relay {
    /// The last hop: it records and answers 200 with what it received.
    pub async fn last(name: &str) -> Self {
        Self::start(name, None).await
    }

    /// A hop that calls `next_host` through the outbound Envoy on `envoy_port`.
    pub async fn calling(name: &str, envoy_port: u16, next_host: &str) -> Self {
        Self::start(
            name,
            Some(Next {
                envoy_port,
                host: next_host.to_owned(),
            }),
        )
        .await
    }

    async fn start(name: &str, next: Option<Next>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let route_header = format!("x-relay-{name}-calls");
        let name = name.to_owned();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .expect("relay http client");
        let kept = received.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (kept, next, http, route_header, name) = (
                kept.clone(),
                next.clone(),
                http.clone(),
                route_header.clone(),
                name.clone(),
            );
            async move {
                let text = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let got = Received {
                    host: text("host"),
                    path: uri.path().to_owned(),
                    authorization: text("authorization"),
                    traceparent: text("traceparent"),
                };
                // The harness's readiness probe of the Envoy in front (`Envoy::start`): answered, not kept.
                if got.host.as_deref() == Some("probe.invalid") {
                    return (StatusCode::OK, axum::Json(json!({ "hop": name, "probe": true })));
                }
                kept.lock().unwrap_or_else(|e| e.into_inner()).push(got.clone());
                let Some(next) = next else {
                    return (
                        StatusCode::OK,
                        axum::Json(json!({ "hop": name, "authorization": got.authorization })),
                    );
                };
                let host = text(&route_header).unwrap_or(next.host);
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                let mut request = http
                    .get(format!("http://127.0.0.1:{}{path}", next.envoy_port))
                    .header("host", host);
                for (k, v) in &headers {
                    let forwarded = matches!(k.as_str(), "authorization" | "traceparent" | "tracestate")
                        || k.as_str().starts_with("x-relay-");
                    if forwarded {
                        request = request.header(k, v);
                    }
                }
                match request.send().await {
                    Ok(response) => {
                        let status =
                            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                        let bytes = response.bytes().await.unwrap_or_default();
                        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        (status, axum::Json(body))
                    }
                    Err(e) => (
                        StatusCode::BAD_GATEWAY,
                        axum::Json(json!({ "hop": name, "error": e.without_url().to_string() })),
                    ),
                }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            port,
            received,
            _task: task,
        }
    }

    /// Everything it received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
