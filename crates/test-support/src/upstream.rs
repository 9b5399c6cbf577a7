//! The in-process upstream behind Envoy: it echoes the Authorization it received.

/// An HTTP server that answers every request with the Authorization header it received, as JSON
/// `{"authorization": "..." | null, "authorization_count": n, "path": "..."}`.
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
        let app = axum::Router::new().fallback(|uri: axum::http::Uri, headers: HeaderMap| async move {
            let all: Vec<&str> = headers
                .get_all("authorization")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            axum::Json(serde_json::json!({
                "authorization": all.first(),
                "authorization_count": all.len(),
                "path": uri.path(),
            }))
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, _task: task }
    }
}
