//! The Envoy side of the first step of the data path: from Envoy's CheckRequest (ext_authz) or
//! request-headers ProcessingRequest (ext_proc) to the Envoy-neutral [`Outbound`]. It reads only the
//! headers the decision needs and borrows rather than copies; parsing the bearer token is
//! `request`'s, never this module's.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::google::protobuf::value::Kind;

use baton_decide::reason::{Denial, Reason};
use baton_decide::request::{HeaderLines, Headers, Outbound};
use baton_decide::route::CONTEXT_KEY;

/// The header that carries the subject token: the one request header the decision itself reads.
pub const AUTHORIZATION: &str = "authorization";

/// The pseudo-headers (and `host`) an ext_proc request-headers message must carry: ext_proc has no
/// parsed attributes, so the authority, method and path come from these lines.
pub const EXT_PROC_PSEUDO_HEADERS: [&str; 4] = [":authority", "host", ":method", ":path"];

/// Envoy's header lines, read in place as [`HeaderLines`].
#[derive(Clone, Copy, Debug)]
pub struct Lines<'r>(&'r [HeaderValue]);

impl<'r> Lines<'r> {
    pub fn new(lines: &'r [HeaderValue]) -> Self {
        Self(lines)
    }
}

impl HeaderLines for Lines<'_> {
    fn line(&self, index: usize) -> Option<(&str, Option<&str>)> {
        self.0.get(index).map(|h| (h.key.as_str(), line_value(h)))
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

/// An ext_authz CheckRequest, ready to be read as an [`Outbound`]. Made first and kept by the
/// caller, so that the `Outbound` can borrow its header lines without copying them.
#[derive(Clone, Copy, Debug)]
pub struct Check<'r> {
    request: &'r CheckRequest,
    lines: Lines<'r>,
}

impl<'r> Check<'r> {
    pub fn new(request: &'r CheckRequest) -> Self {
        let lines = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.header_map.as_ref())
            .map_or(&[][..], |m| m.headers.as_slice());
        Self {
            request,
            lines: Lines(lines),
        }
    }

    pub fn outbound(&self) -> Result<Outbound<'_>, Denial> {
        outbound(self.request, &self.lines)
    }
}

/// An ext_proc request-headers message, ready to be read as an [`Outbound`] (kept by the caller,
/// like [`Check`]). `route_destination` is what the route put in the stream's `baton-destination`
/// gRPC metadata (ext_proc has no `context_extensions`).
#[derive(Clone, Copy, Debug)]
pub struct Processing<'r> {
    request: &'r ProcessingRequest,
    route_destination: Option<&'r str>,
    lines: Option<Lines<'r>>,
}

impl<'r> Processing<'r> {
    pub fn new(request: &'r ProcessingRequest, route_destination: Option<&'r str>) -> Self {
        let lines = match &request.request {
            Some(Phase::RequestHeaders(h)) => h.headers.as_ref().map(|m| Lines(&m.headers)),
            _ => None,
        };
        Self {
            request,
            route_destination,
            lines,
        }
    }

    pub fn outbound(&self) -> Result<Outbound<'_>, Denial> {
        processing_outbound(self.request, self.route_destination, self.lines.as_ref())
    }
}

/// From an ext_authz CheckRequest; `lines` are its `header_map`'s.
fn outbound<'a>(request: &'a CheckRequest, lines: &'a Lines<'a>) -> Result<Outbound<'a>, Denial> {
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
    let headers = if lines.0.is_empty() {
        Headers::Folded(&http.headers)
    } else {
        Headers::Lines(lines)
    };
    Ok(Outbound {
        route_destination,
        authority: field_or_header(&http.host, headers, &[":authority", "host"]),
        method: field_or_header(&http.method, headers, &[":method"]),
        path: field_or_header(&http.path, headers, &[":path"]),
        source_principal,
        authorization: headers.one(AUTHORIZATION)?,
        headers,
    })
}

/// From an ext_proc request-headers message; `lines` are its headers, if it carries any. Envoy
/// sends the pseudo-headers (`:authority`, `:method`, `:path`) among the header lines.
fn processing_outbound<'a>(
    request: &'a ProcessingRequest,
    route_destination: Option<&'a str>,
    lines: Option<&'a Lines<'a>>,
) -> Result<Outbound<'a>, Denial> {
    let lines = lines.ok_or_else(|| {
        Denial::new(
            Reason::CheckRequestMalformed,
            "the ProcessingRequest carries no request headers",
        )
    })?;
    let headers = Headers::Lines(lines);
    Ok(Outbound {
        route_destination: route_destination.filter(|name| !name.is_empty()),
        authority: field_or_header("", headers, &EXT_PROC_PSEUDO_HEADERS[..2]),
        method: field_or_header("", headers, &EXT_PROC_PSEUDO_HEADERS[2..3]),
        path: field_or_header("", headers, &EXT_PROC_PSEUDO_HEADERS[3..]),
        source_principal: attribute(request, "source.principal"),
        authorization: headers.one(AUTHORIZATION)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_decide::request::Authorization;
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

    #[test]
    fn reads_route_host_and_authorization() {
        let req = check(&[("authorization", "Bearer abc")], "orders:8080", Some("orders"));
        let extracted = Check::new(&req);
        let out = extracted.outbound().expect("extract");
        assert_eq!(out.route_destination, Some("orders"));
        assert_eq!(out.authority, "orders:8080");
        assert_eq!(out.authorization, Authorization::One("Bearer abc"));
        assert_eq!((out.method, out.path, out.source_principal), ("", "", None));

        let req = check(
            &[(":method", "POST"), (":path", "/orders?x=1"), ("host", "h")],
            "",
            None,
        );
        let extracted = Check::new(&req);
        let out = extracted.outbound().expect("extract");
        assert_eq!((out.authority, out.method, out.path), ("h", "POST", "/orders?x=1"));
        assert_eq!(out.headers.get("host"), Some("h"));
    }

    #[test]
    fn falls_back_to_the_authority_header_and_ignores_an_empty_route() {
        let req = check(&[(":authority", "billing")], "", Some(""));
        let extracted = Check::new(&req);
        let out = extracted.outbound().expect("extract");
        assert_eq!(out.route_destination, None);
        assert_eq!(out.authority, "billing");
        assert_eq!(out.authorization, Authorization::Missing);
    }

    #[test]
    fn folded_or_repeated_headers_count_as_several() {
        let req = check(&[("authorization", "Bearer a,Bearer b")], "x", None);
        assert_eq!(
            Check::new(&req).outbound().expect("extract").authorization,
            Authorization::Several
        );

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
        assert_eq!(
            Check::new(&req).outbound().expect("extract").authorization,
            Authorization::Several
        );
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
            Check::new(&req).outbound().expect("extract").authorization,
            Authorization::One("Bearer a")
        );
    }

    #[test]
    fn a_request_without_http_attributes_is_refused() {
        let err = Check::new(&CheckRequest::default())
            .outbound()
            .expect_err("no attributes");
        assert_eq!(err.reason, Reason::CheckRequestMalformed);
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
        let processing = Processing::new(&request, Some("orders"));
        let out = processing.outbound().expect("extract");
        assert_eq!(out.route_destination, Some("orders"));
        assert_eq!((out.authority, out.method, out.path), ("orders:8080", "GET", "/a?b"));
        assert_eq!(out.source_principal, Some("spiffe://cluster.local/ns/a/sa/b"));
        assert_eq!(out.authorization, Authorization::One("Bearer abc"));
        assert_eq!(
            Processing::new(&request, Some(""))
                .outbound()
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
        let processing = Processing::new(&request, None);
        let out = processing.outbound().expect("extract");
        assert_eq!(out.authorization, Authorization::Several);

        let body_only = ProcessingRequest {
            request: Some(Phase::RequestBody(Default::default())),
            ..Default::default()
        };
        let err = Processing::new(&body_only, None).outbound().expect_err("no headers");
        assert_eq!(err.reason, Reason::CheckRequestMalformed);
    }
}
