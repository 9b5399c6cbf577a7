//! Shared Signals delivery into Baton: `POST /ssf/push` (RFC 8935) on the admin listener, and the
//! RFC 8936 poll loop started once for the process (`spawn_poll`), each handing the SETs to the
//! current configuration's `baton_core::ssf::Receiver` and its revocations to `Authz::revoke`.
//! The push endpoint is off (404) without `ssf.push`, and admits only the transmitter's bearer
//! secret. It never logs or echoes a SET.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse as _, Response};

use baton_core::authz::{Authz, Current};
use baton_core::ssf::receiver::MAX_SET_BYTES;

/// RFC 8417's media type of a SET.
const SET_MEDIA_TYPE: &str = "application/secevent+jwt";

/// The route, mounted on the admin router.
pub fn router(authz: Current) -> axum::Router {
    axum::Router::new().route(
        "/ssf/push",
        axum::routing::post(move |headers, body| push(authz.load_full(), headers, body)),
    )
}

/// An RFC 8935 error answer: 400 (or `status`) with `{"err": .., "description": ..}`.
fn error(status: StatusCode, err: &str, description: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "err": err, "description": description })),
    )
        .into_response()
}

/// `POST /ssf/push`: 202 when the SET was verified and its events applied (or ignored); 400 with
/// an RFC 8935 error code when it is refused, nothing changed; 503 when it could not be handled now
/// (the transmitter's keys unreachable, the `jti` memory or the revocation store full), so the
/// transmitter sends it again.
async fn push(authz: Arc<Authz>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let Some(receiver) = authz.ssf().filter(|r| r.settings().push_secret.is_some()).cloned() else {
        return error(StatusCode::NOT_FOUND, "not_found", "ssf.push is not configured");
    };
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !receiver
        .settings()
        .push_secret
        .as_ref()
        .is_some_and(|s| s.admits_bearer(presented))
    {
        receiver.count("none", "authentication_failed");
        return error(
            StatusCode::BAD_REQUEST,
            "authentication_failed",
            "POST /ssf/push needs `Authorization: Bearer` with the transmitter's secret",
        );
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|m| m.eq_ignore_ascii_case(SET_MEDIA_TYPE)) {
        receiver.count("none", "invalid_request");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the Content-Type must be application/secevent+jwt",
        );
    }
    // One byte past the bound is enough to know it is too long.
    let Ok(bytes) = axum::body::to_bytes(body, MAX_SET_BYTES + 1).await else {
        receiver.count("none", "invalid_request");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("the SET is longer than {MAX_SET_BYTES} bytes"),
        );
    };
    let Ok(set) = std::str::from_utf8(&bytes) else {
        receiver.count("none", "invalid_request");
        return error(StatusCode::BAD_REQUEST, "invalid_request", "the SET is not text");
    };
    match receiver.receive(set.trim()).await {
        Ok((jti, signals)) => {
            if receiver.apply(&jti, &signals, |event, selector| authz.revoke(event, selector)) {
                StatusCode::ACCEPTED.into_response()
            } else {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the revocation store is full: send it again later",
                )
            }
        }
        Err(e) if e.retry => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            &e.description,
        ),
        Err(e) => {
            tracing::warn!(err = e.err, description = %e.description, "pushed SET refused");
            error(StatusCode::BAD_REQUEST, e.err, &e.description)
        }
    }
}

/// On shutdown: delete the stream this Baton created, if any (bounded to 2 s; a failure is logged).
pub async fn delete_stream(authz: &Current) {
    let Some(receiver) = authz.load().ssf().cloned() else {
        return;
    };
    let deleted = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        baton_core::ssf::poll::delete_stream(&receiver),
    )
    .await;
    match deleted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the SSF stream was not deleted"),
        Err(_) => tracing::warn!("the SSF stream was not deleted within 2s"),
    }
}

/// Start the poll loop for the life of the process: each round uses the receiver of the
/// configuration in use, so a reload that adds, changes or removes `ssf.poll` takes effect.
pub fn spawn_poll(authz: Current) -> tokio::task::JoinHandle<()> {
    let revoking = authz.clone();
    tokio::spawn(baton_core::ssf::poll::run(
        move || authz.load().ssf().cloned(),
        move |event, selector| revoking.load().revoke(event, selector),
    ))
}
