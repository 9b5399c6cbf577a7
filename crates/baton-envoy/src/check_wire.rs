//! Envoy's `Authorization/Check` as Baton takes it off the wire: a CheckRequest decoded into
//! message types of Baton's own that hold only the fields `extract` reads (the route's
//! `context_extensions`, `source.principal`, and the HTTP request's method, path, host and headers),
//! with the field numbers of Envoy's `envoy.service.auth.v3` protos. prost skips every other field
//! (Envoy's peer addresses, the request id, time, scheme, protocol, size...) without building it,
//! and the result is moved into Envoy's own `CheckRequest` for `extract` (issue 15, §1).
//!
//! It owns the gRPC glue that serves the envoy-types `Authorization` trait with that decoding. It
//! must never read a field `extract` does not (a new reader adds its field here first, or `extract`
//! sees it empty), nor change what the reply is: the reply is Envoy's own `CheckResponse`.
//!
//! What it accepts: everything the full decoding accepts, read alike; and, in the fields it skips,
//! content the full decoding would have refused (a string that is not UTF-8, a field of the wrong
//! wire type). Those fields are never read, so nothing acts on them; a field Baton reads is refused
//! exactly as before. Size limits are tonic's, before any decoding, as before.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};

/// The one method served.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

// === the messages: Envoy's field numbers, Baton's fields ===

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireCheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<WireAttributes>,
}

/// `envoy.service.auth.v3.AttributeContext`: `source` (1), `request` (4), `context_extensions` (10).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireAttributes {
    #[prost(message, optional, tag = "1")]
    pub source: Option<WirePeer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<WireRequest>,
    #[prost(map = "string, string", tag = "10")]
    pub context_extensions: HashMap<String, String>,
}

/// `AttributeContext.Peer`: `principal` (4).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WirePeer {
    #[prost(string, tag = "4")]
    pub principal: String,
}

/// `AttributeContext.Request`: `http` (2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireRequest {
    #[prost(message, optional, tag = "2")]
    pub http: Option<WireHttp>,
}

/// `AttributeContext.HttpRequest`: `method` (2), `headers` (3), `path` (4), `host` (5),
/// `header_map` (13).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireHttp {
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

impl From<WireCheckRequest> for CheckRequest {
    fn from(wire: WireCheckRequest) -> Self {
        CheckRequest {
            attributes: wire.attributes.map(|a| AttributeContext {
                source: a.source.map(|s| Peer {
                    principal: s.principal,
                    ..Default::default()
                }),
                request: a.request.map(|r| Request {
                    http: r.http.map(|h| HttpRequest {
                        method: h.method,
                        headers: h.headers,
                        path: h.path,
                        host: h.host,
                        header_map: h.header_map,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: a.context_extensions,
                ..Default::default()
            }),
        }
    }
}

// === the service ===

/// `Authorization/Check` served from an envoy-types `Authorization`, decoding with the messages
/// above; otherwise as the generated `AuthorizationServer` (no compression, tonic's default sizes).
#[derive(Debug)]
pub struct CheckServer<T> {
    inner: Arc<T>,
}

impl<T> CheckServer<T> {
    pub fn new(inner: T) -> Self {
        Self { inner: Arc::new(inner) }
    }
}

impl<T> Clone for CheckServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> tonic::server::NamedService for CheckServer<T> {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<T, B> Service<http::Request<B>> for CheckServer<T>
where
    T: Authorization,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<CheckResponse, WireCheckRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(Unary(inner), request).await)
        })
    }
}

struct Unary<T>(Arc<T>);

impl<T: Authorization> tonic::server::UnaryService<WireCheckRequest> for Unary<T> {
    type Response = CheckResponse;
    type Future = BoxFuture<tonic::Response<CheckResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<WireCheckRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.check(request.map(CheckRequest::from)).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValue, SocketAddress, address};
    use proptest::prelude::*;
    use prost::Message as _;

    /// What `extract` can see of a fully decoded request: the fields the wire types keep.
    fn kept(full: CheckRequest) -> CheckRequest {
        let mut projected = full;
        if let Some(a) = projected.attributes.as_mut() {
            a.destination = None;
            a.metadata_context = None;
            a.route_metadata_context = None;
            a.tls_session = None;
            if let Some(s) = a.source.as_mut() {
                *s = Peer {
                    principal: std::mem::take(&mut s.principal),
                    ..Default::default()
                };
            }
            if let Some(r) = a.request.as_mut() {
                r.time = None;
                if let Some(h) = r.http.as_mut() {
                    *h = HttpRequest {
                        method: std::mem::take(&mut h.method),
                        headers: std::mem::take(&mut h.headers),
                        path: std::mem::take(&mut h.path),
                        host: std::mem::take(&mut h.host),
                        header_map: h.header_map.take(),
                        ..Default::default()
                    };
                }
            }
        }
        projected
    }

    fn full_request(
        strings: [String; 8],
        headers: Vec<(String, String)>,
        lines: Vec<(String, Vec<u8>)>,
        size: i64,
    ) -> CheckRequest {
        let [method, path, host, principal, route, id, scheme, address_text] = strings;
        let peer = |principal: String| Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: address_text.clone(),
                    ..Default::default()
                })),
            }),
            service: "svc".into(),
            labels: [("app".to_owned(), "orders".to_owned())].into(),
            principal,
            certificate: "-----BEGIN CERTIFICATE-----".into(),
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer(principal)),
                destination: Some(peer("spiffe://dest".into())),
                request: Some(Request {
                    time: Some(envoy_types::pb::google::protobuf::Timestamp {
                        seconds: size,
                        nanos: 7,
                    }),
                    http: Some(HttpRequest {
                        id,
                        method,
                        headers: headers.into_iter().collect(),
                        header_map: (!lines.is_empty()).then(|| HeaderMap {
                            headers: lines
                                .into_iter()
                                .map(|(key, raw_value)| HeaderValue {
                                    key,
                                    raw_value,
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                        path,
                        host,
                        scheme,
                        query: "q=1".into(),
                        size,
                        protocol: "HTTP/1.1".into(),
                        body: "body".into(),
                        raw_body: b"raw".to_vec(),
                        ..Default::default()
                    }),
                }),
                context_extensions: [("baton-destination".to_owned(), route)].into(),
                ..Default::default()
            }),
        }
    }

    proptest! {
        /// Every request the full decoding reads, the wire decoding reads alike (field by field,
        /// what `extract` sees), whatever Envoy put in the fields Baton skips.
        #[test]
        fn both_decodings_give_the_same_request(
            strings in proptest::array::uniform8(".{0,24}"),
            headers in proptest::collection::vec(("[a-z:-]{1,12}", ".{0,20}"), 0..6),
            lines in proptest::collection::vec(("[a-zA-Z:-]{1,12}", proptest::collection::vec(any::<u8>(), 0..20)), 0..6),
            size in any::<i64>(),
        ) {
            let full = full_request(strings, headers, lines, size);
            let projected = kept(full.clone());
            let bytes = full.encode_to_vec();
            let wire = WireCheckRequest::decode(bytes.as_slice()).expect("wire decoding");
            let decoded = CheckRequest::decode(bytes.as_slice()).expect("full decoding");
            prop_assert_eq!(decoded, full);
            prop_assert_eq!(CheckRequest::from(wire), projected);
        }

        /// Any bytes the full decoding accepts, the wire decoding accepts, and reads alike.
        #[test]
        fn what_the_full_decoding_accepts_reads_alike(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(full) = CheckRequest::decode(bytes.as_slice()) {
                let wire = WireCheckRequest::decode(bytes.as_slice());
                prop_assert!(wire.is_ok(), "refused what the full decoding accepted");
                let wire = wire.expect("checked");
                prop_assert_eq!(CheckRequest::from(wire), kept(full));
            }
        }
    }

    /// Damage in a field Baton reads is refused by both decodings.
    #[test]
    fn malformed_fields_baton_reads_are_refused_as_before() {
        let good = full_request(
            [
                "GET",
                "/orders/1",
                "orders.example",
                "spiffe://a",
                "orders",
                "id",
                "http",
                "127.0.0.1",
            ]
            .map(str::to_owned),
            vec![("authorization".into(), "Bearer abc".into())],
            vec![("authorization".into(), b"Bearer abc".to_vec())],
            1,
        )
        .encode_to_vec();
        let both_refuse = |bytes: &[u8], what: &str| {
            assert!(
                CheckRequest::decode(bytes).is_err(),
                "{what}: the full decoding accepted it"
            );
            assert!(
                WireCheckRequest::decode(bytes).is_err(),
                "{what}: the wire decoding accepted it"
            );
        };
        // Cut anywhere inside the message: every prefix that ends inside a field is refused.
        for cut in [1, 2, 3, good.len() / 2, good.len() - 1] {
            both_refuse(&good[..cut], &format!("truncated at {cut}"));
        }
        // A varint that never ends, and a length past the end.
        both_refuse(
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            "varint",
        );
        both_refuse(&[0x0a, 0x7f, 0x00], "length past the end");
        // The wrong wire type for `attributes` (a varint where a message is).
        both_refuse(&[0x08, 0x01], "wire type");
        // The host (attributes.request.http.host) not UTF-8.
        let http = [0x2a, 0x02, 0xc3, 0x28]; // field 5, length 2, invalid UTF-8
        let request = [&[0x12, http.len() as u8][..], &http].concat(); // Request.http (2)
        let attributes = [&[0x22, request.len() as u8][..], &request].concat(); // AttributeContext.request (4)
        let check = [&[0x0a, attributes.len() as u8][..], &attributes].concat();
        both_refuse(&check, "host not UTF-8");
        // A header line's key not UTF-8 (HeaderMap.headers (1) -> HeaderValue.key (1)).
        let line = [0x0a, 0x01, 0xff];
        let map = [&[0x0a, line.len() as u8][..], &line].concat();
        let http = [&[0x6a, map.len() as u8][..], &map].concat(); // header_map (13)
        let request = [&[0x12, http.len() as u8][..], &http].concat();
        let attributes = [&[0x22, request.len() as u8][..], &request].concat();
        let check = [&[0x0a, attributes.len() as u8][..], &attributes].concat();
        both_refuse(&check, "header key not UTF-8");
    }

    /// A field repeated on the wire: the last string wins, maps and messages merge, in both.
    #[test]
    fn repeated_fields_merge_alike() {
        let one = |host: &str, route: &str| {
            full_request(
                ["GET", "/a", host, "p", route, "i", "http", "::1"].map(str::to_owned),
                vec![(host.to_owned(), route.to_owned())],
                vec![("authorization".into(), host.as_bytes().to_vec())],
                2,
            )
            .encode_to_vec()
        };
        let bytes = [one("first", "r1"), one("second", "r2")].concat();
        let full = CheckRequest::decode(bytes.as_slice()).expect("full");
        let wire = WireCheckRequest::decode(bytes.as_slice()).expect("wire");
        let http = full
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        assert_eq!(http.map(|h| h.host.as_str()), Some("second"));
        assert_eq!(
            http.and_then(|h| h.header_map.as_ref()).map(|m| m.headers.len()),
            Some(2)
        );
        assert_eq!(CheckRequest::from(wire), kept(full));
    }

    struct AllowAll;

    #[tonic::async_trait]
    impl Authorization for AllowAll {
        async fn check(
            &self,
            _: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            Ok(tonic::Response::new(CheckResponse::default()))
        }
    }

    /// The HTTP status and the gRPC status in the headers (a refusal before the method runs is a
    /// trailers-only answer) of one call to `service` with `body` on `path`.
    async fn answer<S>(mut service: S, path: &str, body: Vec<u8>) -> (u16, Option<String>)
    where
        S: Service<http::Request<axum::body::Body>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    {
        let request = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(axum::body::Body::from(body))
            .expect("request");
        let response = service.call(request).await.expect("infallible");
        let grpc = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (response.status().as_u16(), grpc)
    }

    /// Served, the wire decoding answers every one of these as Envoy's generated server does: a
    /// valid request, damaged protobuf, a message over tonic's 4 MiB limit, a compressed frame
    /// (compression is off), a cut frame, another method.
    #[tokio::test]
    async fn served_it_refuses_what_the_generated_server_refuses() {
        use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
        let frame = |compressed: u8, payload: &[u8]| {
            let len = u32::try_from(payload.len()).expect("len");
            [&[compressed][..], &len.to_be_bytes(), payload].concat()
        };
        let valid = full_request(
            ["GET", "/a", "orders", "p", "orders", "i", "http", "::1"].map(str::to_owned),
            vec![("authorization".into(), "Bearer abc".into())],
            Vec::new(),
            3,
        )
        .encode_to_vec();
        let bad_host = [0x0a, 0x08, 0x22, 0x06, 0x12, 0x04, 0x2a, 0x02, 0xc3, 0x28];
        let oversized = vec![0u8; 4 * 1024 * 1024 + 1];
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            ("valid", CHECK_PATH, frame(0, &valid)),
            ("empty", CHECK_PATH, frame(0, &[])),
            ("truncated protobuf", CHECK_PATH, frame(0, &valid[..valid.len() / 2])),
            ("host not UTF-8", CHECK_PATH, frame(0, &bad_host)),
            ("oversized", CHECK_PATH, frame(0, &oversized)),
            ("compressed", CHECK_PATH, frame(1, &valid)),
            ("cut frame", CHECK_PATH, frame(0, &valid)[..7].to_vec()),
            (
                "other method",
                "/envoy.service.auth.v3.Authorization/Other",
                frame(0, &valid),
            ),
        ];
        for (what, path, body) in cases {
            let generated = answer(AuthorizationServer::new(AllowAll), path, body.clone()).await;
            let wire = answer(CheckServer::new(AllowAll), path, body).await;
            assert_eq!(wire, generated, "{what}");
            if what != "valid" && what != "empty" {
                assert!(
                    generated.1.as_deref().is_some_and(|c| c != "0") || generated.0 != 200,
                    "{what}: refused, {generated:?}"
                );
            }
        }
    }
}
