//! `POST /backchannel-logout` on the admin listener: the identity provider's OpenID Connect
//! back-channel logout request, answered as the spec says (200 with `Cache-Control: no-store`; 400
//! `invalid_request` with a stable code at the head of `error_description`; 503 when Baton cannot
//! act now). The reading and verifying is `baton_core::logout`'s, the revoking
//! `baton_core::authz::Authz::revoke`'s; this only serves it, counts it and keeps the replay memory
//! across reloads. It never logs or echoes the logout token.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use baton_core::authz::Authz;
use baton_core::logout::{self, MAX_REQUEST_BYTES, Refusal, Replays};
use baton_core::metrics::OutcomeLabels;

/// One request, from the body to the answer.
pub(crate) async fn logout(
    authz: Arc<Authz>,
    replays: Arc<Replays>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Some((settings, verifier)) = authz.backchannel_logout() else {
        return answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "error_description": "backchannel_logout is not configured"}),
        );
    };
    let outcome = async {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        // One byte past the bound is enough to know it is too long.
        let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES + 1)
            .await
            .map_err(|_| Refusal::BodyTooLarge)?;
        let token = logout::read_request(content_type, &bytes)?;
        let now = baton_core::clock::unix_now() as i64;
        let logout = logout::verify(settings, verifier, &token, now).await?;
        replays.claim(settings, &logout, now)?;
        for selector in logout.selectors() {
            if authz.revoke("backchannel_logout", &selector).is_err() {
                // Given back, so the identity provider's retry is not taken for a replay. A
                // selector revoked before this one stays revoked: that only fails closed.
                replays.release(&logout);
                return Err(Refusal::RevocationStoreFull);
            }
        }
        Ok(())
    }
    .await;
    let code = match outcome {
        Ok(()) => "ok",
        Err(refusal) => refusal.code(),
    };
    authz
        .telemetry()
        .metrics()
        .backchannel_logouts
        .get_or_create(&OutcomeLabels { outcome: code })
        .inc();
    match outcome {
        Ok(()) => (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response(),
        Err(refusal) => {
            tracing::warn!(reason = refusal.code(), "back-channel logout refused");
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let error = if status == StatusCode::BAD_REQUEST {
                "invalid_request"
            } else {
                "temporarily_unavailable"
            };
            answer(
                status,
                serde_json::json!({
                    "error": error,
                    "error_description": format!("{}: {}", refusal.code(), refusal.message()),
                }),
            )
        }
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}
