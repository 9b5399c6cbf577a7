//! The one place a decision becomes an Envoy reply. A denial is a CheckResponse with a
//! DeniedHttpResponse (status, JSON body with the stable reason code), never a gRPC error, so Envoy
//! answers the application with it instead of treating Baton as failed.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc;

use crate::authz::Allow;
use crate::reason::{Class, Denial, Reason};

pub fn check_response(outcome: &Result<Allow, Denial>) -> CheckResponse {
    match outcome {
        Ok(allow) => allowed(allow),
        Err(denial) => denied(denial),
    }
}

fn allowed(allow: &Allow) -> CheckResponse {
    let mut ok = OkHttpResponse::default();
    match allow {
        Allow::Delegate { token, .. } => {
            ok.headers.push(header(
                "authorization",
                token.authorization.expose(),
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            ));
        }
        Allow::Strip => ok.headers_to_remove.push("authorization".to_owned()),
        Allow::Passthrough => {}
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(ok)),
        ..Default::default()
    }
}

fn denied(denial: &Denial) -> CheckResponse {
    let class = denial.reason.class();
    let mut headers = vec![header(
        "content-type",
        "application/json",
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    )];
    if class == Class::Unauthenticated {
        headers.push(header(
            "www-authenticate",
            &www_authenticate(denial.reason),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    let denied = DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(class.http_status()),
        }),
        headers,
        body: error_body(denial),
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: class.grpc_code() as i32,
            message: denial.reason.as_str().to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        ..Default::default()
    }
}

/// `{"error":"<reason>","error_description":"..."}`, the RFC 6749 error shape.
pub fn error_body(denial: &Denial) -> String {
    serde_json::json!({ "error": denial.reason.as_str(), "error_description": denial.description }).to_string()
}

/// RFC 6750 3.1: no error code when the request simply had no token.
fn www_authenticate(reason: Reason) -> String {
    match reason {
        Reason::MissingToken => "Bearer".to_owned(),
        other => format!("Bearer error=\"invalid_token\", error_description=\"{other}\""),
    }
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied_of(reason: Reason) -> (i32, u16, serde_json::Value, Vec<(String, String)>) {
        let response = check_response(&Err(Denial::new(reason, "because")));
        let code = response.status.expect("status").code;
        let Some(HttpResponse::DeniedResponse(d)) = response.http_response else {
            panic!("not denied")
        };
        let body = serde_json::from_str(&d.body).expect("json body");
        let headers = d
            .headers
            .into_iter()
            .filter_map(|h| h.header)
            .map(|h| (h.key, h.value))
            .collect();
        (code, d.status.expect("http status").code as u16, body, headers)
    }

    #[test]
    fn denials_carry_status_reason_and_json() {
        let (grpc, http, body, headers) = denied_of(Reason::SubjectTokenExpired);
        assert_eq!((grpc, http), (tonic::Code::Unauthenticated as i32, 401));
        assert_eq!(body["error"], "subject_token_expired");
        assert_eq!(body["error_description"], "because");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "www-authenticate" && v.contains("invalid_token"))
        );

        let (grpc, http, body, headers) = denied_of(Reason::TargetRefused);
        assert_eq!((grpc, http), (tonic::Code::PermissionDenied as i32, 403));
        assert_eq!(body["error"], "target_refused");
        assert!(!headers.iter().any(|(k, _)| k == "www-authenticate"));

        let (_, http, body, _) = denied_of(Reason::TokenServiceTimeout);
        assert_eq!((http, body["error"].as_str()), (503, Some("token_service_timeout")));
    }

    #[test]
    fn strip_removes_authorization_and_passthrough_changes_nothing() {
        let response = check_response(&Ok(Allow::Strip));
        assert_eq!(response.status.expect("status").code, 0);
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not ok")
        };
        assert_eq!(ok.headers_to_remove, vec!["authorization".to_owned()]);
        assert!(ok.headers.is_empty());

        let Some(HttpResponse::OkResponse(ok)) = check_response(&Ok(Allow::Passthrough)).http_response else {
            panic!("not ok")
        };
        assert!(ok.headers.is_empty() && ok.headers_to_remove.is_empty());
    }
}
