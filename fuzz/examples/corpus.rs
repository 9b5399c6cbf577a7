//! Writes the protobuf seeds of `fuzz/corpus/check_request/`: CheckRequests shaped as Envoy sends
//! them (ext_authz with folded headers, and with `encode_raw_headers` lines) and ext_proc
//! request-headers messages. `fuzz/make-corpus` runs it; the bearer token is argv[1] (a JWT from
//! `baton sts mint`), the output folder argv[2].

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderMap, HeaderValue, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use prost::Message as _;

fn main() {
    let mut args = std::env::args().skip(1);
    let token = args.next().expect("usage: corpus TOKEN DIR");
    let dir = std::path::PathBuf::from(args.next().expect("usage: corpus TOKEN DIR"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bearer = format!("Bearer {token}");
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).expect("write");

    let common = [
        (":authority", "orders.example"),
        (":method", "GET"),
        (":path", "/orders/42?expand=items"),
        (":scheme", "http"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "4f1c7b9e-1d2a-4c8e-9a51-0b6e2f3d7a10"),
    ];
    let with_auth = |auth: &[&str]| {
        let mut headers: Vec<(String, String)> =
            common.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        headers.extend(auth.iter().map(|v| ("authorization".to_owned(), (*v).to_owned())));
        headers
    };

    write(
        "authz_folded.pb",
        check(&with_auth(&[&bearer]), Some("orders"), false).encode_to_vec(),
    );
    write(
        "authz_lines.pb",
        check(&with_auth(&[&bearer]), Some("orders"), true).encode_to_vec(),
    );
    write(
        "authz_by_host.pb",
        check(&with_auth(&[&bearer]), None, false).encode_to_vec(),
    );
    write(
        "authz_no_token.pb",
        check(&with_auth(&[]), Some("orders"), false).encode_to_vec(),
    );
    write(
        "authz_two_lines.pb",
        check(&with_auth(&["Bearer a", "Bearer b"]), None, true).encode_to_vec(),
    );
    write(
        "authz_folded_two.pb",
        check(&with_auth(&["Bearer a,Bearer b"]), None, false).encode_to_vec(),
    );
    write(
        "authz_basic.pb",
        check(&with_auth(&["Basic ZGVtbzpkZW1v"]), Some("orders"), false).encode_to_vec(),
    );
    write("authz_empty.pb", CheckRequest::default().encode_to_vec());

    let mut processing = ProcessingRequest {
        request: Some(Phase::RequestHeaders(HttpHeaders {
            headers: Some(header_map(&with_auth(&[&bearer]))),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    };
    let principal = Value {
        kind: Some(value::Kind::StringValue(
            "spiffe://cluster.local/ns/shop/sa/frontend".into(),
        )),
    };
    processing.attributes.insert(
        "envoy.filters.http.ext_proc".into(),
        Struct {
            fields: [("source.principal".to_owned(), principal)].into(),
        },
    );
    write("proc_headers.pb", processing.encode_to_vec());
    let body = ProcessingRequest {
        request: Some(Phase::RequestBody(HttpBody {
            body: b"{}".to_vec(),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    };
    write("proc_body.pb", body.encode_to_vec());
}

fn address(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(Kind::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port),
            ),
            ..Default::default()
        })),
    })
}

/// An ext_authz CheckRequest as Envoy 1.40 sends one: peers, the HTTP request with its parsed
/// fields, the headers folded into a map (or as lines with `encode_raw_headers`), and the route's
/// `context_extensions`.
/// Headers as Envoy sends them raw (`header_map`, values as bytes).
fn header_map(headers: &[(String, String)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.clone(),
                raw_value: v.clone().into_bytes(),
                ..Default::default()
            })
            .collect(),
    }
}

fn check(headers: &[(String, String)], route: Option<&str>, raw: bool) -> CheckRequest {
    let mut http = HttpRequest {
        id: "9264858893451243761".into(),
        method: "GET".into(),
        path: "/orders/42?expand=items".into(),
        host: "orders.example".into(),
        scheme: "http".into(),
        protocol: "HTTP/1.1".into(),
        ..Default::default()
    };
    if raw {
        http.header_map = Some(header_map(headers));
    } else {
        let mut folded: HashMap<String, String> = HashMap::new();
        for (k, v) in headers {
            folded
                .entry(k.clone())
                .and_modify(|old| {
                    old.push(',');
                    old.push_str(v);
                })
                .or_insert_with(|| v.clone());
        }
        http.headers = folded;
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: address("127.0.0.1", 43512),
                principal: "spiffe://cluster.local/ns/shop/sa/frontend".into(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: address("127.0.0.1", 15001),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: route
                .map(|r| ("baton.destination".to_owned(), r.to_owned()))
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }
}
