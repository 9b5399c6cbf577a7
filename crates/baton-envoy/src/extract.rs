//! The first step of the data path: from Envoy's CheckRequest (ext_authz) or request-headers
//! ProcessingRequest (ext_proc) to what Baton needs (the route's destination name, the authority, the
//! caller's `Authorization`), and from `Authorization` to a subject token. It reads only those headers, borrows rather than copies, and refuses anything that
//! is not one well-formed RFC 6750 bearer token.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::google::protobuf::value::Kind;

use crate::reason::{Denial, Reason};
use crate::route::CONTEXT_KEY;

/// The parts of an outbound request that decide its delegation, whichever Envoy API asked.
#[derive(Debug)]
pub struct Outbound<'a> {
    /// The destination the Envoy route names: ext_authz `context_extensions["baton.destination"]`,
    /// or ext_proc's `baton-destination` gRPC metadata.
    pub route_destination: Option<&'a str>,
    /// The `:authority` (host) of the request.
    pub authority: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The calling workload as Envoy saw it (`source.principal`: a SPIFFE ID under mTLS), if any.
    pub source_principal: Option<&'a str>,
    pub authorization: Authorization<'a>,
    pub headers: Headers<'a>,
}

/// The `Authorization` header as Envoy sent it.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization<'a> {
    Missing,
    One(&'a str),
    Several,
}

/// Request headers as Envoy sent them: folded into a map (ext_authz's default, repeated headers
/// joined by ","), or every line (`header_map` with `encode_raw_headers`, and ext_proc). Keys are
/// lower-case in both.
#[derive(Clone, Copy, Debug)]
pub enum Headers<'a> {
    Folded(&'a HashMap<String, String>),
    Lines(&'a [HeaderValue]),
}

impl<'a> Headers<'a> {
    /// The one value of `name`: `Several` when the header appears more than once (or was folded).
    pub fn one(&self, name: &str) -> Result<Authorization<'a>, Denial> {
        match *self {
            Headers::Folded(map) => Ok(match map.get(name) {
                None => Authorization::Missing,
                Some(value) if value.contains(',') => Authorization::Several,
                Some(value) => Authorization::One(value),
            }),
            Headers::Lines(lines) => {
                let mut found = lines.iter().filter(|h| h.key.eq_ignore_ascii_case(name));
                match (found.next(), found.next()) {
                    (None, _) => Ok(Authorization::Missing),
                    (Some(_), Some(_)) => Ok(Authorization::Several),
                    (Some(h), None) => line_value(h)
                        .map(Authorization::One)
                        .ok_or_else(|| Denial::new(Reason::MalformedToken, "the Authorization header is not UTF-8")),
                }
            }
        }
    }

    /// The first value of `name`, if it is text.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        match *self {
            Headers::Folded(map) => map.get(name).map(String::as_str),
            Headers::Lines(lines) => lines
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .and_then(line_value),
        }
    }
}

/// A header line's value: Envoy sends `raw_value` bytes (newer) or `value` text (older).
fn line_value(h: &HeaderValue) -> Option<&str> {
    if h.raw_value.is_empty() {
        Some(&h.value)
    } else {
        std::str::from_utf8(&h.raw_value).ok()
    }
}

/// From an ext_authz CheckRequest.
pub fn outbound(request: &CheckRequest) -> Result<Outbound<'_>, Denial> {
    let attributes = request.attributes.as_ref();
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or_else(|| {
            Denial::new(
                Reason::CheckRequestMalformed,
                "the CheckRequest has no HTTP request attributes",
            )
        })?;
    let route_destination = attributes
        .and_then(|a| a.context_extensions.get(CONTEXT_KEY))
        .map(String::as_str)
        .filter(|name| !name.is_empty());
    let source_principal = attributes
        .and_then(|a| a.source.as_ref())
        .map(|s| s.principal.as_str())
        .filter(|p| !p.is_empty());
    let headers = match http.header_map.as_ref().filter(|m| !m.headers.is_empty()) {
        Some(map) => Headers::Lines(&map.headers),
        None => Headers::Folded(&http.headers),
    };
    Ok(Outbound {
        route_destination,
        authority: field_or_header(&http.host, headers, &[":authority", "host"]),
        method: field_or_header(&http.method, headers, &[":method"]),
        path: field_or_header(&http.path, headers, &[":path"]),
        source_principal,
        authorization: headers.one("authorization")?,
        headers,
    })
}

/// From an ext_proc request-headers message. `route_destination` is what the route put in the
/// stream's `baton-destination` gRPC metadata (ext_proc has no `context_extensions`); Envoy sends
/// the pseudo-headers (`:authority`, `:method`, `:path`) among the header lines.
pub fn processing_outbound<'a>(
    request: &'a ProcessingRequest,
    route_destination: Option<&'a str>,
) -> Result<Outbound<'a>, Denial> {
    let lines = match &request.request {
        Some(Phase::RequestHeaders(h)) => h.headers.as_ref().map(|m| m.headers.as_slice()),
        _ => None,
    }
    .ok_or_else(|| {
        Denial::new(
            Reason::CheckRequestMalformed,
            "the ProcessingRequest carries no request headers",
        )
    })?;
    let headers = Headers::Lines(lines);
    Ok(Outbound {
        route_destination: route_destination.filter(|name| !name.is_empty()),
        authority: field_or_header("", headers, &[":authority", "host"]),
        method: field_or_header("", headers, &[":method"]),
        path: field_or_header("", headers, &[":path"]),
        source_principal: attribute(request, "source.principal"),
        authorization: headers.one("authorization")?,
        headers,
    })
}

/// A text attribute Envoy was asked to send (`request_attributes`), under whichever filter name.
fn attribute<'a>(request: &'a ProcessingRequest, name: &str) -> Option<&'a str> {
    request
        .attributes
        .values()
        .filter_map(|s| s.fields.get(name))
        .find_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        })
}

/// Envoy's parsed attribute, or the first of these headers that is present.
fn field_or_header<'a>(field: &'a str, headers: Headers<'a>, names: &[&str]) -> &'a str {
    if !field.is_empty() {
        return field;
    }
    names.iter().find_map(|n| headers.get(n)).unwrap_or("")
}

/// The subject token from `Authorization: Bearer <token>`, or why there is none to use.
/// `Ok(None)` means no header at all: the caller's `missing_token` setting decides.
pub fn subject_token<'a>(authorization: &Authorization<'a>, max_bytes: usize) -> Result<Option<&'a str>, Denial> {
    let value = match authorization {
        Authorization::Missing => return Ok(None),
        Authorization::Several => {
            return Err(Denial::new(
                Reason::MultipleAuthorizationHeaders,
                "the request has more than one Authorization header",
            ));
        }
        Authorization::One(value) => value.trim_matches([' ', '\t']),
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denial::new(
            Reason::UnsupportedAuthorizationScheme,
            "the Authorization header does not use the Bearer scheme",
        ));
    }
    check_token(token.trim_start_matches(' '), max_bytes).map(Some)
}

/// A bearer token's own rules: present, within the size bound, RFC 6750 characters only.
pub fn check_token(token: &str, max_bytes: usize) -> Result<&str, Denial> {
    if token.is_empty() {
        return Err(Denial::new(Reason::EmptyToken, "the bearer token is empty"));
    }
    if token.len() > max_bytes {
        return Err(Denial::new(
            Reason::TokenTooLarge,
            format!("the bearer token is larger than {max_bytes} bytes"),
        ));
    }
    if !is_b64token(token) {
        return Err(Denial::new(
            Reason::MalformedToken,
            "the bearer token has characters outside RFC 6750's b64token",
        ));
    }
    Ok(token)
}

/// RFC 6750 2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| B64TOKEN[usize::from(b)])
}

/// The characters of a b64token body, as a table: this check runs over every byte of every token on
/// every request, and one lookup per byte costs a fraction of the comparisons.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

    fn check(headers: &[(&str, &str)], host: &str, route: Option<&str>) -> CheckRequest {
        let http = HttpRequest {
            host: host.into(),
            headers: headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            ..Default::default()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                context_extensions: route.map(|r| (CONTEXT_KEY.into(), r.into())).into_iter().collect(),
                ..Default::default()
            }),
        }
    }

    fn token_of(header: &str) -> Result<Option<&str>, Reason> {
        subject_token(&Authorization::One(header), 64).map_err(|d| d.reason)
    }

    #[test]
    fn reads_route_host_and_authorization() {
        let req = check(&[("authorization", "Bearer abc")], "orders:8080", Some("orders"));
        let out = outbound(&req).expect("extract");
        assert_eq!(out.route_destination, Some("orders"));
        assert_eq!(out.authority, "orders:8080");
        assert_eq!(out.authorization, Authorization::One("Bearer abc"));
        assert_eq!((out.method, out.path, out.source_principal), ("", "", None));

        let req = check(
            &[(":method", "POST"), (":path", "/orders?x=1"), ("host", "h")],
            "",
            None,
        );
        let out = outbound(&req).expect("extract");
        assert_eq!((out.authority, out.method, out.path), ("h", "POST", "/orders?x=1"));
        assert_eq!(out.headers.get("host"), Some("h"));
    }

    #[test]
    fn falls_back_to_the_authority_header_and_ignores_an_empty_route() {
        let req = check(&[(":authority", "billing")], "", Some(""));
        let out = outbound(&req).expect("extract");
        assert_eq!(out.route_destination, None);
        assert_eq!(out.authority, "billing");
        assert_eq!(out.authorization, Authorization::Missing);
    }

    #[test]
    fn folded_or_repeated_headers_count_as_several() {
        let req = check(&[("authorization", "Bearer a,Bearer b")], "x", None);
        assert_eq!(outbound(&req).expect("extract").authorization, Authorization::Several);

        let mut req = check(&[], "x", None);
        let http = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .expect("http");
        let line = |v: &str| HeaderValue {
            key: "Authorization".into(),
            raw_value: v.as_bytes().to_vec(),
            ..Default::default()
        };
        http.header_map = Some(HeaderMap {
            headers: vec![line("Bearer a"), line("Bearer b")],
        });
        assert_eq!(outbound(&req).expect("extract").authorization, Authorization::Several);
        let http = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .expect("http");
        http.header_map = Some(HeaderMap {
            headers: vec![line("Bearer a")],
        });
        assert_eq!(
            outbound(&req).expect("extract").authorization,
            Authorization::One("Bearer a")
        );
    }

    #[test]
    fn a_request_without_http_attributes_is_refused() {
        let err = outbound(&CheckRequest::default()).expect_err("no attributes");
        assert_eq!(err.reason, Reason::CheckRequestMalformed);
    }

    #[test]
    fn bearer_parsing_follows_rfc_6750() {
        assert_eq!(token_of("Bearer abc.DEF-_~+/=="), Ok(Some("abc.DEF-_~+/==")));
        assert_eq!(token_of("bearer abc"), Ok(Some("abc")));
        assert_eq!(token_of("BEARER   abc"), Ok(Some("abc")));
        assert_eq!(
            subject_token(&Authorization::Missing, 64).map_err(|d| d.reason),
            Ok(None)
        );
        assert_eq!(
            subject_token(&Authorization::Several, 64).map_err(|d| d.reason),
            Err(Reason::MultipleAuthorizationHeaders)
        );
        assert_eq!(
            token_of("Basic dXNlcjpwYXNz"),
            Err(Reason::UnsupportedAuthorizationScheme)
        );
        assert_eq!(token_of("Bearer"), Err(Reason::EmptyToken));
        assert_eq!(token_of("Bearer "), Err(Reason::EmptyToken));
        assert_eq!(token_of("Bearer a b"), Err(Reason::MalformedToken));
        assert_eq!(token_of("Bearer a\r\nX-Evil: 1"), Err(Reason::MalformedToken));
        assert_eq!(token_of("Bearer ==="), Err(Reason::MalformedToken));
        assert_eq!(token_of("Bearer a=b"), Err(Reason::MalformedToken));
        assert_eq!(
            token_of(&format!("Bearer {}", "a".repeat(65))),
            Err(Reason::TokenTooLarge)
        );
        assert_eq!(
            token_of(&format!("Bearer {}", "a".repeat(64))).map(|t| t.map(str::len)),
            Ok(Some(64))
        );
    }

    #[test]
    fn reads_an_ext_proc_request_headers_message() {
        use envoy_types::pb::envoy::service::ext_proc::v3::HttpHeaders;
        use envoy_types::pb::google::protobuf::{Struct, Value};
        let line = |k: &str, v: &str| HeaderValue {
            key: k.into(),
            raw_value: v.as_bytes().to_vec(),
            ..Default::default()
        };
        let mut request = ProcessingRequest {
            request: Some(Phase::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: vec![
                        line(":authority", "orders:8080"),
                        line(":method", "GET"),
                        line(":path", "/a?b"),
                        line("authorization", "Bearer abc"),
                    ],
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let principal = Value {
            kind: Some(Kind::StringValue("spiffe://cluster.local/ns/a/sa/b".into())),
        };
        request.attributes.insert(
            "envoy.filters.http.ext_proc".into(),
            Struct {
                fields: [("source.principal".to_owned(), principal)].into(),
            },
        );
        let out = processing_outbound(&request, Some("orders")).expect("extract");
        assert_eq!(out.route_destination, Some("orders"));
        assert_eq!((out.authority, out.method, out.path), ("orders:8080", "GET", "/a?b"));
        assert_eq!(out.source_principal, Some("spiffe://cluster.local/ns/a/sa/b"));
        assert_eq!(out.authorization, Authorization::One("Bearer abc"));
        assert_eq!(
            processing_outbound(&request, Some(""))
                .expect("extract")
                .route_destination,
            None
        );

        if let Some(Phase::RequestHeaders(h)) = request.request.as_mut() {
            h.headers
                .as_mut()
                .expect("headers")
                .headers
                .push(line("Authorization", "Bearer def"));
        }
        let out = processing_outbound(&request, None).expect("extract");
        assert_eq!(out.authorization, Authorization::Several);

        let body_only = ProcessingRequest {
            request: Some(Phase::RequestBody(Default::default())),
            ..Default::default()
        };
        let err = processing_outbound(&body_only, None).expect_err("no headers");
        assert_eq!(err.reason, Reason::CheckRequestMalformed);
    }
}
