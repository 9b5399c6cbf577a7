//! The in-process upstreams behind Envoy: one echoes the Authorization it received; a stand-in
//! destination also refuses by path (401 `invalid_token`, 401, 403).

/// The echo: the first Authorization header received, how many there were, the path, and the
/// first `dpop` header (a proof that must not reach a destination with another token).
fn echo(path: &str, headers: &axum::http::HeaderMap) -> axum::Json<serde_json::Value> {
    let all: Vec<&str> = headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    axum::Json(serde_json::json!({
        "authorization": all.first(),
        "authorization_count": all.len(),
        "path": path,
        "dpop": headers.get("dpop").and_then(|v| v.to_str().ok()),
    }))
}

/// An HTTP server that answers every request with the Authorization header it received, as JSON
/// `{"authorization": "..." | null, "authorization_count": n, "path": "...", "dpop": "..." | null}`.
#[derive(Debug)]
pub struct Upstream {
    pub port: u16,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        use axum::http::HeaderMap;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new()
            .fallback(|uri: axum::http::Uri, headers: HeaderMap| async move { echo(uri.path(), &headers) });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, _task: task }
    }
}

/// A resource server stand-in behind Envoy: `/refuse` answers 401 with an RFC 6750
/// `invalid_token` challenge, `/login` a 401 with a challenge and no error, `/forbid` a 403
/// `insufficient_scope`; any other path 200 with the Authorization it received (echoed as the
/// `Upstream` does). For the tests and benchmarks of a destination's `invalid_token` (issue 14).
#[derive(Debug)]
pub struct StandInDestination {
    pub port: u16,
    _task: tokio::task::JoinHandle<()>,
}

impl StandInDestination {
    pub async fn start() -> Self {
        use axum::http::{HeaderMap, StatusCode, Uri, header};
        use axum::response::IntoResponse as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().fallback(|uri: Uri, headers: HeaderMap| async move {
            let challenge = |value: &'static str| [(header::WWW_AUTHENTICATE, value)];
            let body = axum::Json(serde_json::json!({ "error": "refused by the destination" }));
            match uri.path() {
                "/refuse" => (
                    StatusCode::UNAUTHORIZED,
                    challenge(r#"Basic realm="x", Bearer realm="orders", error="invalid_token", error_description="The access token expired""#),
                    body,
                )
                    .into_response(),
                "/login" => (StatusCode::UNAUTHORIZED, challenge(r#"Bearer realm="orders""#), body).into_response(),
                "/forbid" => (
                    StatusCode::FORBIDDEN,
                    challenge(r#"Bearer error="insufficient_scope", scope="orders.write""#),
                    body,
                )
                    .into_response(),
                path => echo(path, &headers).into_response(),
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, _task: task }
    }
}
