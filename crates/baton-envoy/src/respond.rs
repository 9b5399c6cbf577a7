//! The one place a decision becomes an Envoy reply, for both APIs. A denial is a reply that Envoy
//! sends to the application (ext_authz: a CheckResponse with a DeniedHttpResponse; ext_proc: an
//! ImmediateResponse), with the status and a JSON body carrying the stable reason code, never a gRPC
//! error, so Envoy answers with it instead of treating Baton as failed. Both APIs share the headers
//! and the body, so they answer alike.
//!
//! What Envoy learns about a decision besides the verdict is here too: `dynamic_metadata` on the
//! reply, which its access log can print, e.g. `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:audience)%`.
//! Only with `telemetry.dynamic_metadata: true` (it costs every request). ext_authz stores a
//! CheckResponse's under its own name; ext_proc stores each top-level key of a ProcessingResponse's
//! as a namespace (and only those its `metadata_options.receiving_namespaces` allows), so Baton puts
//! its keys under `envoy.filters.http.ext_proc` there. Keys: `decision`, `destination`, `audience`,
//! `cache`, `reason`, `jti`; a key without a value is left out. Never a token.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as ProcessingReply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingResponse,
    TrailersResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use baton_core::decision::{Allow, Destination, decision_name};
use baton_core::telemetry::Api;
use baton_decide::reason::{Class, Denial, Reason};

// === ext_authz ===

/// The Check reply, carrying Baton's dynamic metadata when there is some (see `dynamic_metadata`).
pub fn check_reply(outcome: &Result<Allow, Denial>, metadata: Option<Struct>) -> CheckResponse {
    CheckResponse {
        dynamic_metadata: metadata,
        ..check_response(outcome)
    }
}

pub fn check_response(outcome: &Result<Allow, Denial>) -> CheckResponse {
    match outcome {
        Ok(allow) => allowed(allow),
        Err(denial) => denied(denial),
    }
}

fn allowed(allow: &Allow) -> CheckResponse {
    let (headers, headers_to_remove) = authorization_mutation(allow);
    let ok = OkHttpResponse {
        headers,
        headers_to_remove,
        ..Default::default()
    };
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
    let denied = DeniedHttpResponse {
        status: Some(http_status(class)),
        headers: denial_headers(denial),
        body: error_body(denial),
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code(class) as i32,
            message: denial.reason.as_str().to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        ..Default::default()
    }
}

// === ext_proc ===

/// ext_proc's reply to the request-headers message, carrying Baton's dynamic metadata when there is
/// some (see `dynamic_metadata`).
pub fn request_headers_reply(outcome: &Result<Allow, Denial>, metadata: Option<Struct>) -> ProcessingResponse {
    ProcessingResponse {
        dynamic_metadata: metadata,
        ..request_headers_response(outcome)
    }
}

/// ext_proc's answer to the request-headers message: continue with `Authorization` set (or removed),
/// or an ImmediateResponse that denies, with the same status, headers and body as ext_authz's.
pub fn request_headers_response(outcome: &Result<Allow, Denial>) -> ProcessingResponse {
    let reply = match outcome {
        Ok(allow) => {
            let (set, remove) = authorization_mutation(allow);
            let header_mutation = (!set.is_empty() || !remove.is_empty()).then(|| HeaderMutation {
                set_headers: set.into_iter().map(raw).collect(),
                remove_headers: remove,
            });
            ProcessingReply::RequestHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation,
                    ..Default::default()
                }),
            })
        }
        Err(denial) => ProcessingReply::ImmediateResponse(ImmediateResponse {
            status: Some(http_status(denial.reason.class())),
            headers: Some(HeaderMutation {
                set_headers: denial_headers(denial).into_iter().map(raw).collect(),
                remove_headers: Vec::new(),
            }),
            body: error_body(denial).into_bytes(),
            grpc_status: None,
            details: denial.reason.as_str().to_owned(),
        }),
    };
    ProcessingResponse {
        response: Some(reply),
        ..Default::default()
    }
}

/// ext_proc's answer to a message for a phase Baton does not process (its filter should be
/// configured not to send them): continue, unchanged.
pub fn continue_response(phase: &Phase) -> ProcessingResponse {
    let reply = match phase {
        Phase::RequestHeaders(_) => ProcessingReply::RequestHeaders(HeadersResponse::default()),
        Phase::ResponseHeaders(_) => ProcessingReply::ResponseHeaders(HeadersResponse::default()),
        Phase::RequestBody(_) => ProcessingReply::RequestBody(BodyResponse::default()),
        Phase::ResponseBody(_) => ProcessingReply::ResponseBody(BodyResponse::default()),
        Phase::RequestTrailers(_) => ProcessingReply::RequestTrailers(TrailersResponse::default()),
        Phase::ResponseTrailers(_) => ProcessingReply::ResponseTrailers(TrailersResponse::default()),
    };
    ProcessingResponse {
        response: Some(reply),
        ..Default::default()
    }
}

/// ext_proc reads a mutation's value from `raw_value` (bytes); ext_authz from `value`.
fn raw(mut option: HeaderValueOption) -> HeaderValueOption {
    if let Some(h) = option.header.as_mut() {
        h.raw_value = std::mem::take(&mut h.value).into_bytes();
    }
    option
}

// === Shared by both APIs ===

/// What an allowed request's `Authorization` becomes: (headers to set, headers to remove).
fn authorization_mutation(allow: &Allow) -> (Vec<HeaderValueOption>, Vec<String>) {
    match allow {
        // DPoP-bound (RFC 9449 §7.1): the token under the DPoP scheme with this request's proof,
        // which replaces any the caller sent.
        Allow::Delegate { bound: Some(bound), .. } => (
            vec![
                header(
                    "authorization",
                    bound.authorization.expose(),
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                ),
                header("dpop", bound.proof.expose(), HeaderAppendAction::OverwriteIfExistsOrAdd),
            ],
            Vec::new(),
        ),
        // A caller's own `DPoP` proof is for its own token, never for the one Baton sets: removed.
        Allow::Delegate { token, .. } => (
            vec![header(
                "authorization",
                token.authorization.expose(),
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            )],
            vec!["dpop".to_owned()],
        ),
        Allow::Strip => (Vec::new(), vec!["authorization".to_owned()]),
        Allow::Passthrough => (Vec::new(), Vec::new()),
    }
}

/// The headers of a denial: JSON, an RFC 6750 challenge on a 401, and `Retry-After` (RFC 9110
/// 10.2.3) when Baton knows when the same request may pass.
fn denial_headers(denial: &Denial) -> Vec<HeaderValueOption> {
    let mut headers = vec![header(
        "content-type",
        "application/json",
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    )];
    if denial.reason.class() == Class::Unauthenticated {
        headers.push(header(
            "www-authenticate",
            &www_authenticate(denial.reason),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    if let Some(seconds) = denial.retry_after {
        headers.push(header(
            "retry-after",
            &seconds.to_string(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    headers
}

/// The gRPC status of a refusal of this class (the broker's answer, and ext_authz's `status`).
pub fn grpc_code(class: Class) -> tonic::Code {
    match class {
        Class::Unauthenticated => tonic::Code::Unauthenticated,
        Class::PermissionDenied => tonic::Code::PermissionDenied,
        Class::Unavailable => tonic::Code::Unavailable,
    }
}

fn http_status(class: Class) -> HttpStatus {
    HttpStatus {
        code: i32::from(class.http_status()),
    }
}

/// `{"error":"<reason>","error_description":"..."}`, the RFC 6749 error shape.
fn error_body(denial: &Denial) -> String {
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

// === described, for a dry run ===

/// What Envoy would be told for a decision (`baton explain`), read from the ext_authz reply this
/// module builds: the HTTP status, the headers set and removed, a denial's body. A delegation's
/// token does not exist in a dry run: it is shown as `<exchanged token>`, and under `dpop` (`bound`)
/// its proof as `<proof for this request>`.
pub fn described(decision: &str, denial: Option<&Denial>, bound: bool) -> serde_json::Value {
    let reply = match (decision, denial) {
        (_, Some(denial)) => check_response(&Err(denial.clone())),
        ("strip", None) => check_response(&Ok(Allow::Strip)),
        ("passthrough", None) => check_response(&Ok(Allow::Passthrough)),
        _ if bound => {
            return serde_json::json!({
                "status": 200,
                "set_headers": {
                    "authorization": "DPoP <exchanged token>",
                    "dpop": "<proof for this request>",
                },
                "remove_headers": [],
            });
        }
        _ => {
            return serde_json::json!({
                "status": 200,
                "set_headers": { "authorization": "Bearer <exchanged token>" },
                "remove_headers": ["dpop"],
            });
        }
    };
    let headers = |options: &[HeaderValueOption]| -> serde_json::Map<String, serde_json::Value> {
        options
            .iter()
            .filter_map(|o| o.header.as_ref())
            .map(|h| (h.key.clone(), serde_json::Value::String(h.value.clone())))
            .collect()
    };
    match reply.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => serde_json::json!({
            "status": denied.status.map_or(403, |s| s.code),
            "set_headers": headers(&denied.headers),
            "body": serde_json::from_str::<serde_json::Value>(&denied.body).unwrap_or(serde_json::Value::String(denied.body)),
        }),
        Some(HttpResponse::OkResponse(ok)) => serde_json::json!({
            "status": 200,
            "set_headers": headers(&ok.headers),
            "remove_headers": ok.headers_to_remove,
        }),
        _ => serde_json::json!({}),
    }
}

// === dynamic metadata ===

/// The `dynamic_metadata` of a reply to `api` for `outcome`; `destination` is the resolved
/// destination when the outcome does not carry it (a denial after the destination was known).
pub fn dynamic_metadata(api: Api, outcome: &Result<Allow, Denial>, destination: Option<&Destination>) -> Struct {
    match api {
        Api::ExtProc => ext_proc_metadata(outcome, destination),
        Api::Check | Api::Broker | Api::InProxy | Api::ExtAuthzHttp => metadata(outcome, destination),
    }
}

/// The namespace Baton's ext_proc replies write (Envoy must list it in
/// `metadata_options.receiving_namespaces.untyped`).
pub const EXT_PROC_NAMESPACE: &str = "envoy.filters.http.ext_proc";

/// For a ProcessingResponse: `dynamic_metadata` under `EXT_PROC_NAMESPACE`.
fn ext_proc_metadata(outcome: &Result<Allow, Denial>, destination: Option<&Destination>) -> Struct {
    let inner = metadata(outcome, destination);
    let mut fields = std::collections::HashMap::with_capacity(1);
    fields.insert(
        EXT_PROC_NAMESPACE.to_owned(),
        Value {
            kind: Some(Kind::StructValue(inner)),
        },
    );
    Struct { fields }
}

/// The metadata for `outcome`, as ext_authz stores it.
fn metadata(outcome: &Result<Allow, Denial>, destination: Option<&Destination>) -> Struct {
    let mut fields = std::collections::HashMap::with_capacity(5);
    let mut put = |key: &str, value: &str| {
        fields.insert(
            key.to_owned(),
            Value {
                kind: Some(Kind::StringValue(value.to_owned())),
            },
        );
    };
    put("decision", decision_name(outcome));
    let route = match outcome {
        Ok(Allow::Delegate {
            destination,
            token,
            cache,
            ..
        }) => {
            put("cache", cache.as_str());
            if let Some(jti) = token.claims().jti {
                put("jti", jti);
            }
            Some(&**destination)
        }
        Err(denial) => {
            put("reason", denial.reason.as_str());
            destination
        }
        Ok(_) => destination,
    };
    if let Some(route) = route {
        put("destination", &route.name);
        if let Some(audience) = &route.target.audience {
            put("audience", audience);
        }
    }
    Struct { fields }
}

// === ext_authz over HTTP ===

/// The answer of Baton's HTTP authorization listener (`authz_http`), the same decision as a Check's
/// reply in Envoy's HTTP ext_authz protocol: 200 to allow, with the headers Envoy copies upstream
/// (`authorization_response.allowed_upstream_headers`) and those it must remove
/// ([`HEADERS_TO_REMOVE`]); else the denial's status, headers and body, which Envoy sends the
/// client. `metadata` adds Baton's dynamic-metadata keys as headers of their own
/// (`authorization_response.dynamic_metadata_from_headers`). Unlike a Check's reply, a header to
/// remove is named only when the request carries it (`carried`: Envoy sends the headers Baton may
/// remove, `dpop` among them): Envoy then neither parses nor applies a removal list on a plain hit.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Envoy's ext_authz HTTP client removes the request headers this response header lists
/// (comma-separated) before sending the request upstream.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The request headers an allowing answer may have Envoy remove (`authorization_mutation`): Envoy's
/// HTTP authorization request must carry them, as Baton names one only when the request has it.
pub const REMOVABLE: [&str; 2] = ["authorization", "dpop"];

/// The keys of Baton's dynamic metadata, each sent as a response header of that name when
/// `telemetry.dynamic_metadata` is on.
pub const METADATA_KEYS: [&str; 6] = ["decision", "destination", "audience", "cache", "reason", "jti"];

pub fn http_answer(
    outcome: &Result<Allow, Denial>,
    metadata: Option<Struct>,
    carried: impl Fn(&str) -> bool,
) -> HttpAnswer {
    let pair = |o: HeaderValueOption| o.header.map(|h| (h.key, h.value));
    let mut answer = match outcome {
        Ok(allow) => {
            let (set, mut remove) = authorization_mutation(allow);
            remove.retain(|name| carried(name));
            let mut headers: Vec<(String, String)> = set.into_iter().filter_map(pair).collect();
            if !remove.is_empty() {
                headers.push((HEADERS_TO_REMOVE.to_owned(), remove.join(",")));
            }
            HttpAnswer {
                status: 200,
                headers,
                body: String::new(),
            }
        }
        Err(denial) => HttpAnswer {
            status: denial.reason.class().http_status(),
            headers: denial_headers(denial).into_iter().filter_map(pair).collect(),
            body: error_body(denial),
        },
    };
    for (key, value) in metadata.into_iter().flat_map(|m| m.fields) {
        if let Some(Kind::StringValue(text)) = value.kind
            && METADATA_KEYS.contains(&key.as_str())
        {
            answer.headers.push((key, text));
        }
    }
    answer
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn denied_of(reason: Reason) -> (i32, u16, serde_json::Value, Vec<(String, String)>) {
        denied(Denial::new(reason, "because"))
    }

    fn denied(denial: Denial) -> (i32, u16, serde_json::Value, Vec<(String, String)>) {
        let response = check_response(&Err(denial));
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

        let (_, http, body, headers) = denied_of(Reason::TokenServiceTimeout);
        assert_eq!((http, body["error"].as_str()), (503, Some("token_service_timeout")));
        assert!(!headers.iter().any(|(k, _)| k == "retry-after"), "no hint: no header");

        let open =
            Denial::new(Reason::TokenServiceCircuitOpen, "later").retry_after(std::time::Duration::from_millis(2300));
        let (_, http, _, headers) = denied(open);
        assert_eq!(http, 503);
        assert!(
            headers.contains(&("retry-after".to_owned(), "3".to_owned())),
            "{headers:?}"
        );
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

    #[test]
    fn ext_proc_replies_match_ext_authz_ones() {
        let immediate = |reason: Reason| {
            let reply = request_headers_response(&Err(Denial::new(reason, "because")));
            let Some(ProcessingReply::ImmediateResponse(i)) = reply.response else {
                panic!("not an immediate response")
            };
            i
        };
        for reason in [
            Reason::SubjectTokenExpired,
            Reason::TargetRefused,
            Reason::TokenServiceTimeout,
        ] {
            let (_, http, body, headers) = denied_of(reason);
            let i = immediate(reason);
            assert_eq!(i.status.expect("status").code as u16, http);
            assert_eq!(i.details, reason.as_str());
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&i.body).expect("json"),
                body
            );
            let set: Vec<(String, String)> = i
                .headers
                .expect("headers")
                .set_headers
                .into_iter()
                .filter_map(|h| h.header)
                .map(|h| {
                    assert!(h.value.is_empty(), "ext_proc reads raw_value only");
                    (h.key, String::from_utf8(h.raw_value).expect("utf-8"))
                })
                .collect();
            assert_eq!(set, headers);
        }

        let Some(ProcessingReply::RequestHeaders(h)) = request_headers_response(&Ok(Allow::Strip)).response else {
            panic!("not a headers response")
        };
        let mutation = h.response.and_then(|c| c.header_mutation).expect("mutation");
        assert_eq!(mutation.remove_headers, ["authorization"]);
        let Some(ProcessingReply::RequestHeaders(h)) = request_headers_response(&Ok(Allow::Passthrough)).response
        else {
            panic!("not a headers response")
        };
        assert!(h.response.expect("common response").header_mutation.is_none());
    }

    #[test]
    fn other_phases_continue_unchanged() {
        use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, HttpTrailers};
        let reply = |phase| continue_response(&phase).response.expect("response");
        assert!(
            matches!(reply(Phase::ResponseHeaders(HttpHeaders::default())), ProcessingReply::ResponseHeaders(h) if h == HeadersResponse::default())
        );
        assert!(matches!(
            reply(Phase::RequestBody(HttpBody::default())),
            ProcessingReply::RequestBody(_)
        ));
        assert!(matches!(
            reply(Phase::ResponseBody(HttpBody::default())),
            ProcessingReply::ResponseBody(_)
        ));
        assert!(matches!(
            reply(Phase::RequestTrailers(HttpTrailers::default())),
            ProcessingReply::RequestTrailers(_)
        ));
        assert!(matches!(
            reply(Phase::ResponseTrailers(HttpTrailers::default())),
            ProcessingReply::ResponseTrailers(_)
        ));
    }

    /// The `orders` destination of a configuration, compiled by `Authz`.
    pub(crate) fn orders() -> std::sync::Arc<Destination> {
        use baton_core::exchange::{TokenService, TokenServices};
        let yaml = "token_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: c\n  auth:\n    method: none\ndestinations:\n  - name: orders\n    hosts: [orders]\n    audience: https://orders.example\n    scopes: [orders.read, orders.list]\n";
        let config = baton_core::config::Config::from_yaml(yaml).expect("valid");
        let services = config
            .token_services
            .iter()
            .map(|ts| TokenService::new(ts).expect("client"))
            .collect::<Vec<_>>();
        let authz = baton_core::authz::Authz::new(config, TokenServices::new(services), None);
        authz.route_for("orders", &[]).expect("route")
    }

    /// An issued token with the claims the metadata reads.
    pub(crate) fn delegated() -> std::sync::Arc<baton_core::cache::Delegated> {
        let claims = baton_core::jwt::DelegationClaims {
            jti: Some("jti-1".into()),
            ..Default::default()
        };
        let delegated = baton_core::cache::Delegated::new(
            baton_core::secret::Secret::new("issued.token.value"),
            "Bearer".into(),
            None,
            Some("orders.read".into()),
            baton_core::cache::Lifetimes {
                expires_in: Some(300),
                ..Default::default()
            },
            std::time::Duration::from_secs(30),
            1_700_000_000,
        )
        .with_claims(claims);
        std::sync::Arc::new(delegated)
    }

    fn text(s: &envoy_types::pb::google::protobuf::Struct, key: &str) -> Option<String> {
        match s.fields.get(key)?.kind.as_ref()? {
            envoy_types::pb::google::protobuf::value::Kind::StringValue(v) => Some(v.clone()),
            _ => None,
        }
    }

    #[test]
    fn envoy_metadata_names_the_delegation_and_never_the_token() {
        let route = orders();
        let outcome = Ok(Allow::Delegate {
            destination: route.clone(),
            token: delegated(),
            cache: baton_core::cache::CacheStatus::Hit,
            key: None,
            bound: None,
        });
        let m = metadata(&outcome, None);
        assert_eq!(text(&m, "decision").as_deref(), Some("delegate"));
        assert_eq!(text(&m, "destination").as_deref(), Some("orders"));
        assert_eq!(text(&m, "audience").as_deref(), Some("https://orders.example"));
        assert_eq!(text(&m, "cache").as_deref(), Some("hit"));
        assert_eq!(text(&m, "jti").as_deref(), Some("jti-1"));
        assert_eq!(text(&m, "reason"), None);
        assert!(!format!("{m:?}").contains("issued.token.value"));

        let denied = Err(Denial::new(Reason::TargetRefused, "no"));
        let m = metadata(&denied, Some(&route));
        assert_eq!(text(&m, "decision").as_deref(), Some("deny"));
        assert_eq!(text(&m, "reason").as_deref(), Some("target_refused"));
        assert_eq!(text(&m, "destination").as_deref(), Some("orders"));
        let m = metadata(&Ok(Allow::Strip), None);
        assert_eq!(m.fields.len(), 1, "{m:?}");
    }

    /// Over HTTP, an allowing answer names a header to remove only when the request carries it:
    /// a plain hit is `authorization` alone, a caller's `dpop` (or, on a strip, its
    /// `Authorization`) is still removed.
    #[test]
    fn an_http_answer_removes_only_what_the_request_carries() {
        let delegate = Ok(Allow::Delegate {
            destination: orders(),
            token: delegated(),
            cache: baton_core::cache::CacheStatus::Hit,
            key: None,
            bound: None,
        });
        let removed = |outcome: &Result<Allow, Denial>, carried: &[&str]| {
            let answer = http_answer(outcome, None, |name| carried.contains(&name));
            assert_eq!(answer.status, 200);
            answer
                .headers
                .into_iter()
                .filter(|(k, _)| k != "authorization")
                .collect::<Vec<_>>()
        };
        assert_eq!(removed(&delegate, &["authorization"]), []);
        assert_eq!(
            removed(&delegate, &["authorization", "dpop"]),
            [(HEADERS_TO_REMOVE.to_owned(), "dpop".to_owned())]
        );
        assert_eq!(removed(&Ok(Allow::Strip), &[]), []);
        assert_eq!(
            removed(&Ok(Allow::Strip), &["authorization"]),
            [(HEADERS_TO_REMOVE.to_owned(), "authorization".to_owned())]
        );
        // Every header an answer may remove is one Envoy is asked to send.
        for allow in [&delegate, &Ok(Allow::Strip)].into_iter().flatten() {
            for name in authorization_mutation(allow).1 {
                assert!(REMOVABLE.contains(&name.as_str()), "{name}");
            }
        }
    }

    /// A DPoP-bound delegation sets `Authorization: DPoP` and the request's proof (replacing the
    /// caller's); a Bearer one removes any proof the caller sent. The same through both APIs.
    #[test]
    fn a_bound_delegation_sets_the_dpop_scheme_and_its_proof() {
        let key = baton_core::dpop::SigningKey::generate().expect("key");
        let token = delegated();
        let bound = baton_core::dpop::bind(&key, token.token(), "GET", "https://orders.example/a", 1).expect("bound");
        let proof = bound.proof.expose().to_owned();
        for (bound, headers, removed) in [
            (
                Some(Box::new(bound)),
                vec![
                    ("authorization".to_owned(), "DPoP issued.token.value".to_owned()),
                    ("dpop".to_owned(), proof),
                ],
                Vec::<String>::new(),
            ),
            (
                None,
                vec![("authorization".to_owned(), "Bearer issued.token.value".to_owned())],
                vec!["dpop".to_owned()],
            ),
        ] {
            let outcome = Ok(Allow::Delegate {
                destination: orders(),
                token: token.clone(),
                cache: baton_core::cache::CacheStatus::Hit,
                key: None,
                bound,
            });
            let Some(HttpResponse::OkResponse(ok)) = check_response(&outcome).http_response else {
                panic!("not ok")
            };
            let set: Vec<(String, String)> = ok
                .headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            assert_eq!(set, headers);
            assert_eq!(ok.headers_to_remove, removed);
            let Some(ProcessingReply::RequestHeaders(h)) = request_headers_response(&outcome).response else {
                panic!("not a headers response")
            };
            let mutation = h.response.and_then(|c| c.header_mutation).expect("mutation");
            let set: Vec<(String, String)> = mutation
                .set_headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .map(|h| (h.key.clone(), String::from_utf8(h.raw_value.clone()).expect("utf8")))
                .collect();
            assert_eq!(set, headers);
            assert_eq!(mutation.remove_headers, removed);

            // `baton explain` describes the same headers, with placeholders for what a dry run lacks.
            let described = described("delegate", None, bound_reply(&outcome));
            let names: Vec<&str> = described["set_headers"]
                .as_object()
                .expect("set_headers")
                .keys()
                .map(String::as_str)
                .collect();
            let mut expected: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
            expected.sort_unstable();
            assert_eq!(names, expected);
            let scheme = headers[0].1.split(' ').next().expect("scheme");
            let authorization = described["set_headers"]["authorization"]
                .as_str()
                .expect("authorization");
            assert_eq!(authorization, format!("{scheme} <exchanged token>"));
            assert_eq!(described["remove_headers"], serde_json::json!(removed));
        }
    }

    fn bound_reply(outcome: &Result<Allow, Denial>) -> bool {
        matches!(outcome, Ok(Allow::Delegate { bound: Some(_), .. }))
    }
}
