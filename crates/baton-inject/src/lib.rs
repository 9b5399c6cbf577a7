//! `baton inject`: a mutating admission webhook (HTTPS, AdmissionReview v1) that adds Baton and Envoy
//! to pods annotated `baton.dev/inject: "true"`. It owns the review in and the answer out; the patch
//! itself is built in [`patch`]. It never calls the Kubernetes API, never logs the pod it is shown,
//! and answers bad input with an error, never a panic.
//!
//! Answers (the choice is deliberate, see k8s/README.md):
//! - a body that is not an AdmissionReview v1 with a request and a uid: HTTP 400, a plain-text
//!   message starting with a reason code. There is no uid to answer to, so the API server counts it
//!   as a failed call and applies the webhook's `failurePolicy` (Fail: the pod is refused).
//! - a body over `max_body_bytes`: HTTP 413; one that does not arrive in time: HTTP 408.
//! - a review whose pod cannot be injected (bad annotation, name collision) or does not decode:
//!   `allowed: false` with a status code and message, so the user sees why.
//! - anything else: `allowed: true`, with a JSONPatch when the pod asked for Baton.

pub mod config;
pub mod patch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::{InjectConfig, RawInjectConfig};
pub use patch::{Plan, Refusal};

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";
/// How long a client may take to send its whole request body.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

// === AdmissionReview v1 ===
// k8s-openapi has no admission.k8s.io types (they are not in the API server's OpenAPI document), so
// the fields this webhook reads and writes are declared here, as the API defines them.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    api_version: String,
    kind: String,
    request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionRequest {
    uid: String,
    kind: GroupVersionKind,
    operation: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    version: String,
    kind: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewAnswer {
    api_version: &'static str,
    kind: &'static str,
    response: AdmissionResponse,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionResponse {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// The JSONPatch, base64 (the API's `[]byte`).
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

// === The decision ===

/// A request the webhook cannot answer with an AdmissionReview.
#[derive(Debug, thiserror::Error)]
enum BadRequest {
    #[error("admission_review_malformed: {0}")]
    Malformed(String),
    #[error("admission_review_version: expected apiVersion {API_VERSION} and kind {KIND}, got `{0}` `{1}`")]
    Version(String, String),
    #[error("admission_review_no_request: the review has no `request`")]
    NoRequest,
    #[error("admission_review_no_uid: the request has an empty `uid`")]
    NoUid,
}

/// Answer one AdmissionReview body.
fn review(body: &[u8], sidecar: &config::Sidecar) -> Result<ReviewAnswer, BadRequest> {
    let review: AdmissionReview = serde_json::from_slice(body).map_err(|e| BadRequest::Malformed(e.to_string()))?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(BadRequest::Version(short(&review.api_version), short(&review.kind)));
    }
    let request = review.request.ok_or(BadRequest::NoRequest)?;
    if request.uid.is_empty() {
        return Err(BadRequest::NoUid);
    }
    let namespace = request.namespace.as_deref().unwrap_or("");
    let uid = request.uid.clone();
    let response = match decide(&request, sidecar) {
        Decision::Allow(why) => {
            tracing::debug!(%uid, namespace, outcome = why, "admitted unchanged");
            allowed(request.uid, None)
        }
        Decision::Patch(ops) => {
            tracing::info!(%uid, namespace, operations = ops.len(), "injected");
            let json = serde_json::to_vec(&ops).unwrap_or_default();
            allowed(
                request.uid,
                Some(base64::engine::general_purpose::STANDARD.encode(json)),
            )
        }
        Decision::Deny { reason, message } => {
            tracing::info!(%uid, namespace, reason, "refused: {message}");
            AdmissionResponse {
                uid: request.uid,
                allowed: false,
                status: Some(Status {
                    code: Some(400),
                    message: Some(format!("baton inject: {message}")),
                    reason: Some("BadRequest".into()),
                    status: Some("Failure".into()),
                    ..Default::default()
                }),
                patch_type: None,
                patch: None,
            }
        }
    };
    Ok(ReviewAnswer {
        api_version: API_VERSION,
        kind: KIND,
        response,
    })
}

enum Decision {
    Allow(&'static str),
    Patch(Vec<Value>),
    Deny { reason: &'static str, message: String },
}

fn decide(request: &AdmissionRequest, sidecar: &config::Sidecar) -> Decision {
    let gvk = &request.kind;
    // The webhook is registered for pod CREATE only; anything else is not ours to change.
    if !(gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Pod") || request.operation != "CREATE" {
        return Decision::Allow("not_a_pod_create");
    }
    let Some(object) = &request.object else {
        return Decision::Deny {
            reason: "pod_missing",
            message: "the review carries no pod object".into(),
        };
    };
    // The decode error is not echoed: it may quote a value from the pod (an env var, say).
    let Ok(pod) = Pod::deserialize(object) else {
        return Decision::Deny {
            reason: "pod_malformed",
            message: "the object in the review does not decode as a v1 Pod".into(),
        };
    };
    match patch::plan(&pod, sidecar) {
        Ok(Plan::Leave(why)) => Decision::Allow(why),
        Ok(Plan::Patch(ops)) => Decision::Patch(ops),
        Err(refusal) => Decision::Deny {
            reason: refusal.as_str(),
            message: format!("{}: {refusal}", refusal.as_str()),
        },
    }
}

fn allowed(uid: String, patch: Option<String>) -> AdmissionResponse {
    AdmissionResponse {
        uid,
        allowed: true,
        status: None,
        patch_type: patch.is_some().then_some("JSONPatch"),
        patch,
    }
}

/// A value from the request, cut short before it goes into a message.
fn short(value: &str) -> String {
    value.chars().take(64).collect()
}

// === The server ===

#[derive(Debug)]
struct Shared {
    sidecar: config::Sidecar,
    max_body_bytes: usize,
}

/// The webhook's routes: `POST /mutate`, `GET /healthz`.
pub fn router(config: &InjectConfig) -> Router {
    let shared = Arc::new(Shared {
        sidecar: config.sidecar.clone(),
        max_body_bytes: config.max_body_bytes,
    });
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
}

async fn mutate(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    let plain = |status: StatusCode, message: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            message + "\n",
        )
            .into_response()
    };
    let bytes = match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, shared.max_body_bytes)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            tracing::info!(reason = "admission_review_too_large", "refused a request");
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "admission_review_too_large: the body is over {} bytes, or was cut off",
                    shared.max_body_bytes
                ),
            );
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                "admission_review_timeout: the body did not arrive in time".into(),
            );
        }
    };
    match review(&bytes, &shared.sidecar) {
        Ok(answer) => Json(answer).into_response(),
        Err(bad) => {
            tracing::info!(error = %bad, "refused a request");
            plain(StatusCode::BAD_REQUEST, bad.to_string())
        }
    }
}

/// Errors that stop the webhook from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read tls.cert_file {0}: {1}")]
    Cert(String, std::io::Error),
    #[error("cannot read tls.key_file {0}: {1}")]
    Key(String, std::io::Error),
    #[error("tls.cert_file / tls.key_file: {0}")]
    Tls(std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
}

/// Serve HTTPS on `config.listen` until `shutdown`; `on_ready` gets the bound address. In-flight
/// reviews get a few seconds to finish.
pub async fn serve(
    config: InjectConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), StartError> {
    let cert = tokio::fs::read(&config.cert_file)
        .await
        .map_err(|e| StartError::Cert(config.cert_file.display().to_string(), e))?;
    let key = tokio::fs::read(&config.key_file)
        .await
        .map_err(|e| StartError::Key(config.key_file.display().to_string(), e))?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert, key)
        .await
        .map_err(StartError::Tls)?;
    let listener = std::net::TcpListener::bind(config.listen).map_err(|e| StartError::Bind(config.listen, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| StartError::Bind(config.listen, e))?;
    let local = listener.local_addr().map_err(|e| StartError::Bind(config.listen, e))?;
    let server = axum_server::from_tcp_rustls(listener, tls).map_err(|e| StartError::Bind(config.listen, e))?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight reviews");
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    tracing::info!(listen = %local, "baton inject serving");
    on_ready(local);
    server
        .handle(handle)
        .serve(router(&config).into_make_service())
        .await
        .map_err(StartError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sidecar() -> config::Sidecar {
        InjectConfig::from_yaml("baton:\n  image: registry.example/baton:test\n")
            .expect("config")
            .sidecar
    }

    fn body(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND, "request": request})).expect("json")
    }

    fn pod_request(pod: Value) -> Value {
        json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "object": pod,
        })
    }

    #[test]
    fn the_answer_echoes_the_uid_and_carries_a_base64_patch() {
        let pod = json!({"metadata": {"annotations": {"baton.dev/inject": "true"}}, "spec": {"containers": [{"name": "app"}]}});
        let answer = review(&body(pod_request(pod)), &sidecar()).expect("answer");
        let answer = serde_json::to_value(answer).expect("json");
        assert_eq!(answer["apiVersion"], API_VERSION);
        assert_eq!(answer["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().expect("patch"))
            .expect("base64");
        let ops: Vec<Value> = serde_json::from_slice(&patch).expect("patch json");
        assert!(!ops.is_empty());
    }

    #[test]
    fn malformed_reviews_are_bad_requests() {
        let s = sidecar();
        for (input, reason) in [
            (b"not json".to_vec(), "admission_review_malformed"),
            (b"{}".to_vec(), "admission_review_malformed"),
            (
                serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": KIND})).expect("json"),
                "admission_review_version",
            ),
            (
                serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND})).expect("json"),
                "admission_review_no_request",
            ),
            (
                body(json!({"uid": "", "kind": {"version": "v1", "kind": "Pod"}, "operation": "CREATE"})),
                "admission_review_no_uid",
            ),
            (
                body(json!({"uid": 7, "kind": {"version": "v1", "kind": "Pod"}, "operation": "CREATE"})),
                "admission_review_malformed",
            ),
        ] {
            let err = review(&input, &s).expect_err("bad request");
            assert!(err.to_string().starts_with(reason), "{err} / {reason}");
        }
    }

    #[test]
    fn an_undecodable_pod_is_refused_without_echoing_it() {
        let pod = json!({"metadata": {"annotations": {"baton.dev/inject": "true"}}, "spec": {"containers": [{"name": "app", "env": [{"name": "X", "value": {"secret": "hunter2"}}]}]}});
        let answer = serde_json::to_value(review(&body(pod_request(pod)), &sidecar()).expect("answer")).expect("json");
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["code"], 400);
        assert!(!answer.to_string().contains("hunter2"));
    }

    #[test]
    fn other_kinds_and_operations_pass_unchanged() {
        let mut request = pod_request(
            json!({"metadata": {"annotations": {"baton.dev/inject": "true"}}, "spec": {"containers": [{"name": "app"}]}}),
        );
        request["operation"] = json!("UPDATE");
        let answer = serde_json::to_value(review(&body(request), &sidecar()).expect("answer")).expect("json");
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
    }
}
