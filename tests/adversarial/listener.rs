//! Who may ask Baton (issue 12, section 1). Baton trusts a CheckRequest's attributes (source
//! principal, context extensions, path) only because the caller is an authenticated Envoy: on the
//! TCP listener a client certificate from the configured CA whose SAN is allow-listed, on the Unix
//! socket the file's mode and group. Every row is an attacker (or Envoy) trying to reach the
//! decision; refused rows must never get one, and the control rows prove the same setup serves the
//! caller it should, so a refusal is the listener's and not a broken test.
//!
//! In-proxy mode's `baton.v1.InProxy` (Decide, Epoch) is served by the same gRPC server on the same
//! listeners as Check: a forged Decide from a process that is not Envoy is the same exposure as a
//! forged Check, and meets the same rules (the rows below send both).
//!
//! The HTTP authorization listener (ext_authz over HTTP) has no TLS: `authz_http` is loopback only
//! unless `insecure_plaintext`, and `authz_http_uds` shares the gRPC socket's mode and group. Its
//! rows: what its socket lets another user do, what a process beside Envoy earns on loopback, and
//! which addresses `check-config` refuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_envoy::envoy_config::{ClientTls, transport_socket};
use futures_util::future::join_all;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use baton_test_support::*;

use crate::BATON_BIN;

const ENVOY_ID: &str = "spiffe://cluster.local/ns/shop/sa/envoy";
const BATON_NAME: &str = "baton.test";
const ALLOWED: &str = "[\"spiffe://cluster.local/ns/shop/sa/*\", \"*.shop.svc.cluster.local\"]";

// === Certificates made for the test ===

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    file: PathBuf,
}

#[derive(Clone)]
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Validity {
    Now,
    Expired,
    NotYet,
}

fn new_ca(scratch: &Scratch, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let file = scratch.write(&format!("{name}.crt"), &issuer.pem());
    Ca { issuer, file }
}

fn san(name: &str) -> SanType {
    let ia5 = rcgen::string::Ia5String::try_from(name).expect("ia5");
    if name.contains("://") {
        SanType::URI(ia5)
    } else {
        SanType::DnsName(ia5)
    }
}

/// A certificate for `sans`, signed by `ca` (self-signed when `None`).
fn leaf(
    scratch: &Scratch,
    file: &str,
    ca: Option<&Ca>,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    validity: Validity,
) -> Leaf {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect();
    params.distinguished_name.push(DnType::CommonName, file);
    params.extended_key_usages = vec![usage];
    match validity {
        Validity::Now => {}
        Validity::Expired => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Validity::NotYet => {
            params.not_before = rcgen::date_time_ymd(2090, 1, 1);
            params.not_after = rcgen::date_time_ymd(2091, 1, 1);
        }
    }
    let key = KeyPair::generate().expect("key");
    let cert = match ca {
        Some(ca) => params.signed_by(&key, &ca.issuer).expect("sign"),
        None => params.self_signed(&key).expect("self-sign"),
    };
    // The subject CN may be an identity (a row tries that); the file name must not hold its `/`.
    let file = file.replace(['/', ':'], "_");
    Leaf {
        cert: scratch.write(&format!("{file}.crt"), &cert.pem()),
        key: scratch.write(&format!("{file}.key"), &key.serialize_pem()),
        der: cert.der().to_vec(),
    }
}

fn client_cert(scratch: &Scratch, file: &str, ca: &Ca, sans: &[&str]) -> Leaf {
    leaf(
        scratch,
        file,
        Some(ca),
        sans,
        ExtendedKeyUsagePurpose::ClientAuth,
        Validity::Now,
    )
}

/// The `listen:` lines of a Baton with mutual TLS on `grpc`.
fn tls_listen(server: &Leaf, client_ca: &Path) -> String {
    format!(
        "  grpc_tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n    allowed_callers: {ALLOWED}\n",
        server.cert.display(),
        server.key.display(),
        client_ca.display()
    )
}

/// A test Envoy bootstrap whose `baton` cluster carries `transport_socket` (what `baton
/// envoy-config` writes for a TLS Baton, possibly edited into an attacker's variant).
fn bootstrap_with_tls(api: Api, baton: u16, upstream: u16, socket: &serde_json::Value) -> String {
    let plain = envoy_bootstrap_for(api, free_port(), baton, upstream);
    let cluster = "  - name: baton\n    type: STATIC\n";
    assert!(plain.contains(cluster), "the test bootstrap's baton cluster moved");
    plain.replacen(
        cluster,
        &format!("  - name: baton\n    transport_socket: {socket}\n    type: STATIC\n"),
        1,
    )
}

// === Envoy with and without the right client certificate ===

enum Expect {
    /// A delegated token reached the upstream.
    Delegated,
    /// Envoy could not get a decision: an error of Envoy's own, never Baton's, nothing upstream.
    Refused,
}

/// Through the real Envoy, ext_authz and ext_proc: only an Envoy presenting an allow-listed
/// identity from the configured CA gets a decision. The test fails on a Baton that serves plain
/// text or skips any of the checks: each refused row is one check. The Wasm filter's calls to
/// `InProxy` go through the same cluster and its `transport_socket`: a few rows (one Envoy with a
/// V8 VM per worker each) show they meet the same listener, and that a refused handshake is the
/// filter's own `sidecar_unavailable` (it answers locally when the sidecar gives no answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_envoy_with_an_allowed_client_certificate_gets_a_decision() {
    let scratch = Scratch::new(BATON_BIN, "adv-listener-mtls");
    let ca = new_ca(&scratch, "mesh-ca");
    let rogue = new_ca(&scratch, "rogue-ca");
    let server = leaf(
        &scratch,
        "baton",
        Some(&ca),
        &[BATON_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
        Validity::Now,
    );
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start_listening(&scratch, &service.token_endpoint, &tls_listen(&server, &ca.file), "").await;
    let upstream = Upstream::start().await;
    let user = service.mint("alice", "orders.read").await;

    let s = &scratch;
    let client = |file: &str, ca: Option<&Ca>, sans: &[&str], usage, validity| leaf(s, file, ca, sans, usage, validity);
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let rows: Vec<(&str, Option<Leaf>, Expect)> = vec![
        (
            "allowed SPIFFE ID",
            Some(client("envoy", Some(&ca), &[ENVOY_ID], ClientAuth, Validity::Now)),
            Expect::Delegated,
        ),
        (
            "allowed DNS name",
            Some(client(
                "envoy-dns",
                Some(&ca),
                &["envoy.shop.svc.cluster.local"],
                ClientAuth,
                Validity::Now,
            )),
            Expect::Delegated,
        ),
        ("no client certificate", None, Expect::Refused),
        (
            "allowed ID from an unknown CA",
            Some(client("rogue", Some(&rogue), &[ENVOY_ID], ClientAuth, Validity::Now)),
            Expect::Refused,
        ),
        (
            "allowed ID, self-signed",
            Some(client("selfie", None, &[ENVOY_ID], ClientAuth, Validity::Now)),
            Expect::Refused,
        ),
        (
            "identity not allowed",
            Some(client(
                "other-ns",
                Some(&ca),
                &["spiffe://cluster.local/ns/other/sa/envoy"],
                ClientAuth,
                Validity::Now,
            )),
            Expect::Refused,
        ),
        (
            "extra path segment",
            Some(client(
                "deeper",
                Some(&ca),
                &["spiffe://cluster.local/ns/shop/sa/envoy/x"],
                ClientAuth,
                Validity::Now,
            )),
            Expect::Refused,
        ),
        (
            "dot segments",
            Some(client(
                "dots",
                Some(&ca),
                &["spiffe://cluster.local/ns/shop/sa/../../other/sa/x"],
                ClientAuth,
                Validity::Now,
            )),
            Expect::Refused,
        ),
        (
            "other trust domain",
            Some(client(
                "td",
                Some(&ca),
                &["spiffe://evil.local/ns/shop/sa/envoy"],
                ClientAuth,
                Validity::Now,
            )),
            Expect::Refused,
        ),
        (
            "DNS suffix without a label boundary",
            Some(client(
                "suffix",
                Some(&ca),
                &["evilshop.svc.cluster.local"],
                ClientAuth,
                Validity::Now,
            )),
            Expect::Refused,
        ),
        (
            "two DNS labels for one `*`",
            Some(client(
                "labels",
                Some(&ca),
                &["a.b.shop.svc.cluster.local"],
                ClientAuth,
                Validity::Now,
            )),
            Expect::Refused,
        ),
        (
            "identity only in the subject CN",
            Some(client(
                "spiffe://cluster.local/ns/shop/sa/cn",
                Some(&ca),
                &[],
                ClientAuth,
                Validity::Now,
            )),
            Expect::Refused,
        ),
        (
            "expired certificate",
            Some(client("expired", Some(&ca), &[ENVOY_ID], ClientAuth, Validity::Expired)),
            Expect::Refused,
        ),
        (
            "certificate not yet valid",
            Some(client("future", Some(&ca), &[ENVOY_ID], ClientAuth, Validity::NotYet)),
            Expect::Refused,
        ),
        (
            "server-only certificate",
            Some(client("server-eku", Some(&ca), &[ENVOY_ID], ServerAuth, Validity::Now)),
            Expect::Refused,
        ),
        ("Baton's own server certificate", Some(server.clone()), Expect::Refused),
    ];

    const WASM_ROWS: [&str; 4] = [
        "allowed SPIFFE ID",
        "no client certificate",
        "allowed ID from an unknown CA",
        "identity not allowed",
    ];
    for api in [Api::ExtAuthz, Api::ExtProc, Api::Wasm] {
        let rows_of_api = rows
            .iter()
            .filter(|(variant, _, _)| api != Api::Wasm || WASM_ROWS.contains(variant));
        let outcomes = join_all(rows_of_api.map(|(variant, cert, expect)| {
            let (baton, upstream, user, ca_file) = (baton.grpc, upstream.port, user.clone(), ca.file.clone());
            async move {
                let scratch = Scratch::new(BATON_BIN, "adv-listener-envoy");
                let tls = ClientTls {
                    cert_file: cert
                        .as_ref()
                        .map_or_else(|| PathBuf::from("/nonexistent"), |c| c.cert.clone()),
                    key_file: cert
                        .as_ref()
                        .map_or_else(|| PathBuf::from("/nonexistent"), |c| c.key.clone()),
                    ca_file,
                    server_name: BATON_NAME.to_owned(),
                };
                let mut socket = transport_socket(&tls);
                if cert.is_none() {
                    let context = &mut socket["typed_config"]["common_tls_context"];
                    context.as_object_mut().expect("context").remove("tls_certificates");
                }
                let envoy =
                    Envoy::start_with_bootstrap(&scratch, &bootstrap_with_tls(api, baton, upstream, &socket)).await;
                let reply = send(&envoy, "orders.example", "/orders/1", Some(&bearer(&user))).await;
                (*variant, expect, reply)
            }
        }))
        .await;
        for (variant, expect, reply) in outcomes {
            match expect {
                Expect::Delegated => {
                    let token = reply.upstream_token();
                    assert_ne!(token, user, "{api:?} {variant}: the user's own token went upstream");
                    assert!(
                        audiences(&service.verify(token).await).contains(&ORDERS.to_owned()),
                        "{api:?} {variant}"
                    );
                }
                Expect::Refused if api == Api::Wasm => {
                    assert_eq!(
                        (reply.status, reply.reason()),
                        (503, "sidecar_unavailable"),
                        "{api:?} {variant}: {:?}",
                        reply.body
                    );
                }
                Expect::Refused => {
                    assert_ne!(reply.status, 200, "{api:?} {variant}: reached the upstream");
                    assert_eq!(
                        reply.reason(),
                        "<no error field>",
                        "{api:?} {variant}: Baton decided ({})",
                        reply.status
                    );
                }
            }
        }
    }
    let log = std::fs::read_to_string(scratch.0.join("baton.log")).expect("baton.log");
    assert!(log.contains("TLS handshake refused"), "refusals are logged");
    for presented in ["spiffe://cluster.local/ns/other/sa/envoy", "evilshop.svc.cluster.local"] {
        assert!(
            log.contains(presented),
            "a refused identity is logged with what it presented: {presented}"
        );
    }
    assert!(
        log.contains("does not verify against"),
        "a certificate of another CA is logged as such"
    );
}

// === A process that is not Envoy sends its own Check ===

/// What a direct caller of the TCP listener sends after connecting.
enum Attacker {
    /// A tonic client's own Check, in plain text: a forged source principal and route destination,
    /// and a user token the attacker holds.
    ForgedCheck,
    /// The same as the Wasm filter's miss: a tonic client's own `InProxy/Decide`, in plain text.
    ForgedDecide,
    /// A tonic client's `InProxy/Epoch` in plain text (what the filter polls).
    ForgedEpoch,
    /// Plain-text HTTP/2 (what a tonic client without TLS speaks).
    PlainText,
    /// TLS, with this client certificate (or none).
    Tls(Option<Leaf>),
}

/// Whether the connection reached the gRPC server: it answers the HTTP/2 preface with a SETTINGS
/// frame. A forged Check needs that much; a refused connection never gets it.
async fn speaks_grpc<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    if stream.write_all(PREFACE).await.is_err() || stream.flush().await.is_err() {
        return false;
    }
    let mut frame = [0u8; 9];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut frame)).await,
        Ok(Ok(_)) if frame[3] == 0x04
    )
}

/// Send the forged Check with tonic; true if Baton answered it (whatever the decision).
async fn forged_check(port: u16, user: &str) -> bool {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer as AttrPeer, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let headers = [
        (":authority", "orders.example"),
        (":method", "GET"),
        (":path", "/orders/1"),
        ("authorization", &bearer(user)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(AttrPeer {
                principal: ENVOY_ID.to_owned(),
                ..Default::default()
            }),
            context_extensions: [("baton.destination".to_owned(), "orders".to_owned())].into(),
            request: Some(Request {
                http: Some(HttpRequest {
                    host: "orders.example".into(),
                    method: "GET".into(),
                    path: "/orders/1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(channel) = endpoint.timeout(Duration::from_secs(5)).connect().await else {
        return false;
    };
    AuthorizationClient::new(channel).check(request).await.is_ok()
}

/// Send the forged Decide (or an Epoch) with tonic; true if Baton answered it.
async fn forged_in_proxy(port: u16, user: &str, decide: bool) -> bool {
    use baton_envoy::broker::pb::in_proxy_client::InProxyClient;
    use baton_envoy::broker::pb::{DecideRequest, EpochRequest, Header};
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(channel) = endpoint.timeout(Duration::from_secs(5)).connect().await else {
        return false;
    };
    let mut client = InProxyClient::new(channel);
    if !decide {
        return client.epoch(EpochRequest {}).await.is_ok();
    }
    let request = DecideRequest {
        authority: "orders.example".to_owned(),
        method: "GET".to_owned(),
        path: "/orders/1".to_owned(),
        headers: vec![Header {
            key: "authorization".to_owned(),
            value: bearer(user),
        }],
    };
    client.decide(request).await.is_ok()
}

fn rustls_client(server_ca: &Path, cert: Option<&Leaf>) -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(server_ca).expect("ca") {
        roots.add(ca.expect("ca")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&leaf.cert)
                    .expect("cert")
                    .collect::<Result<_, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_file(&leaf.key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Connect with TLS; the certificate Baton presented, and whether gRPC was then served.
async fn tls_connect(port: u16, server_ca: &Path, cert: Option<&Leaf>) -> (Option<Vec<u8>>, bool) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(rustls_client(server_ca, cert)));
    let name = ServerName::try_from(BATON_NAME).expect("name");
    match connector.connect(name, tcp).await {
        Ok(stream) => {
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            (presented, speaks_grpc(stream).await)
        }
        Err(_) => (None, false),
    }
}

/// The headline bypass: a process beside Envoy connects to Baton's TCP listener itself, to send a
/// Check with a forged source principal and destination. On a TLS listener it gets no gRPC at all
/// without an allowed certificate (the control row with one is served).
#[tokio::test]
async fn a_direct_caller_without_an_allowed_certificate_never_reaches_grpc() {
    let scratch = Scratch::new(BATON_BIN, "adv-listener-direct");
    let ca = new_ca(&scratch, "mesh-ca");
    let rogue = new_ca(&scratch, "rogue-ca");
    let server = leaf(
        &scratch,
        "baton",
        Some(&ca),
        &[BATON_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
        Validity::Now,
    );
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start_listening(&scratch, &service.token_endpoint, &tls_listen(&server, &ca.file), "").await;
    let user = service.mint("alice", "orders.read").await;
    // Idle connections that never start a handshake hold a slot each for at most 10 s; they must
    // not keep anyone else out meanwhile.
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", baton.grpc))
                .await
                .expect("connect"),
        );
    }
    let rows = [
        ("tonic client, forged Check in plain text", Attacker::ForgedCheck, false),
        (
            "tonic client, forged InProxy/Decide in plain text",
            Attacker::ForgedDecide,
            false,
        ),
        (
            "tonic client, InProxy/Epoch in plain text",
            Attacker::ForgedEpoch,
            false,
        ),
        ("plain-text HTTP/2", Attacker::PlainText, false),
        ("TLS without a client certificate", Attacker::Tls(None), false),
        (
            "TLS with a certificate of another CA",
            Attacker::Tls(Some(client_cert(&scratch, "rogue", &rogue, &[ENVOY_ID]))),
            false,
        ),
        (
            "TLS with an identity not allowed",
            Attacker::Tls(Some(client_cert(
                &scratch,
                "app",
                &ca,
                &["spiffe://cluster.local/ns/shop-app/sa/app"],
            ))),
            false,
        ),
        (
            "control: TLS with Envoy's certificate",
            Attacker::Tls(Some(client_cert(&scratch, "envoy", &ca, &[ENVOY_ID]))),
            true,
        ),
    ];
    for (variant, attacker, served) in rows {
        let reached = match attacker {
            Attacker::ForgedCheck => forged_check(baton.grpc, &user).await,
            Attacker::ForgedDecide => forged_in_proxy(baton.grpc, &user, true).await,
            Attacker::ForgedEpoch => forged_in_proxy(baton.grpc, &user, false).await,
            Attacker::PlainText => {
                speaks_grpc(
                    tokio::net::TcpStream::connect(("127.0.0.1", baton.grpc))
                        .await
                        .expect("connect"),
                )
                .await
            }
            Attacker::Tls(cert) => tls_connect(baton.grpc, &ca.file, cert.as_ref()).await.1,
        };
        assert_eq!(reached, served, "{variant}");
    }
    drop(idle);
}

// === The HTTP authorization listener on loopback: what a process beside Envoy gets ===

/// One HTTP/1.1 request, written raw on a new connection to `port` (loopback) and closed after the
/// answer: its status and head (hyper writes header names in lower case).
async fn ask_http(port: u16, host: &str, headers: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request =
        format!("GET /orders/1 HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered within 5 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {answer:?}"));
    (status, answer)
}

/// `listen.authz_http` serves plain text on loopback (nothing beyond it, unless
/// `insecure_plaintext`: `check_config_refuses_a_listener_anyone_could_reach`), so any process in
/// the pod can send it Envoy's request. It earns what the same request through Envoy would and no
/// more: the listener reads no route and no source principal, the caller is `workload.identity`,
/// and the destination is the `host`'s. Headers that name a destination or an identity change
/// nothing; the control rows show the same setup delegates.
#[tokio::test]
async fn a_process_beside_envoy_on_the_http_listener_earns_only_what_envoys_request_would() {
    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    const REPORTER: &str = "spiffe://cluster.local/ns/jobs/sa/reporter";
    let scratch = Scratch::new(BATON_BIN, "adv-listener-http");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let body = format!(
        "token_service:\n{}\nworkload:\n  identity: {FRONTEND}\ndestinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: {ORDERS}\n    policy:\n      allowed_sources: [\"{FRONTEND}\"]\n  - name: billing\n    hosts: [billing.example]\n    audience: {BILLING}\n    policy:\n      allowed_sources: [\"{REPORTER}\"]\n",
        basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint))
    );
    let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
    let user = service.mint("alice", "orders.read billing.read").await;
    let token = format!("authorization: {}\r\n", bearer(&user));
    let xfcc = format!("x-forwarded-client-cert: By={FRONTEND};URI={REPORTER}\r\n");
    let peer = format!("x-envoy-peer-metadata-id: {REPORTER}\r\nx-baton-source: {REPORTER}\r\n");
    let route = "baton-destination: orders\r\nx-baton-destination: orders\r\nx-envoy-original-host: orders.example\r\n";

    enum Want {
        /// 200 with a token for this audience.
        Delegated(&'static str),
        /// The caller's token removed, none sent.
        Stripped,
        /// Refused with this reason.
        Denied(u16, &'static str),
    }
    let rows: Vec<(&str, &str, String, Want)> = vec![
        (
            "control: the workload's own destination",
            "orders.example",
            token.clone(),
            Want::Delegated(ORDERS),
        ),
        (
            "control: a destination only another workload may reach",
            "billing.example",
            token.clone(),
            Want::Denied(403, "source_not_allowed"),
        ),
        (
            "that destination, with a forwarded client certificate naming the allowed source",
            "billing.example",
            format!("{token}{xfcc}"),
            Want::Denied(403, "source_not_allowed"),
        ),
        (
            "that destination, with headers naming the allowed source as the peer",
            "billing.example",
            format!("{token}{peer}"),
            Want::Denied(403, "source_not_allowed"),
        ),
        (
            "an unlisted host, with headers naming a destination",
            "elsewhere.example",
            format!("{token}{route}"),
            Want::Stripped,
        ),
        (
            "another destination's host, with headers naming this workload's destination",
            "billing.example",
            format!("{token}{route}"),
            Want::Denied(403, "source_not_allowed"),
        ),
    ];
    for (variant, host, headers, want) in rows {
        let (status, head) = ask_http(baton.authz_http, host, &headers).await;
        let issued = head
            .lines()
            .find_map(|l| l.strip_prefix("authorization: Bearer "))
            .map(str::trim);
        match want {
            Want::Delegated(audience) => {
                assert_eq!(status, 200, "{variant}: {head}");
                let issued = issued.unwrap_or_else(|| panic!("{variant}: no token: {head}"));
                assert_ne!(issued, user, "{variant}: the user's own token");
                assert_eq!(audiences(&service.verify(issued).await), [audience], "{variant}");
            }
            Want::Stripped => {
                assert_eq!(status, 200, "{variant}: {head}");
                assert!(issued.is_none(), "{variant}: a token for an unlisted host: {head}");
                assert!(
                    head.contains("x-envoy-auth-headers-to-remove: authorization"),
                    "{variant}: {head}"
                );
            }
            Want::Denied(code, reason) => {
                assert_eq!(status, code, "{variant}: {head}");
                assert!(issued.is_none(), "{variant}: {head}");
                assert!(head.contains(&format!("\"{reason}\"")), "{variant}: {head}");
            }
        }
    }
}

/// Certificate rotation: Baton's certificate and key files are replaced (as cert-manager does, a
/// rename over each); new handshakes present the new certificate, and a broken file keeps the last
/// good one.
#[tokio::test]
async fn a_rotated_server_certificate_is_presented_to_new_connections() {
    let scratch = Scratch::new(BATON_BIN, "adv-listener-rotate");
    let ca = new_ca(&scratch, "mesh-ca");
    let first = leaf(
        &scratch,
        "baton-1",
        Some(&ca),
        &[BATON_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
        Validity::Now,
    );
    let second = leaf(
        &scratch,
        "baton-2",
        Some(&ca),
        &[BATON_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
        Validity::Now,
    );
    let live = Leaf {
        cert: scratch.0.join("live.crt"),
        key: scratch.0.join("live.key"),
        der: first.der.clone(),
    };
    std::fs::copy(&first.cert, &live.cert).expect("copy");
    std::fs::copy(&first.key, &live.key).expect("copy");
    let envoy = client_cert(&scratch, "envoy", &ca, &[ENVOY_ID]);
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start_listening(&scratch, &service.token_endpoint, &tls_listen(&live, &ca.file), "").await;

    let (presented, served) = tls_connect(baton.grpc, &ca.file, Some(&envoy)).await;
    assert_eq!(presented.as_deref(), Some(first.der.as_slice()));
    assert!(served);

    for (from, to) in [(&second.cert, &live.cert), (&second.key, &live.key)] {
        let next = to.with_extension("next");
        std::fs::copy(from, &next).expect("copy");
        std::fs::rename(&next, to).expect("rename");
    }
    let (presented, served) = tls_connect(baton.grpc, &ca.file, Some(&envoy)).await;
    assert_eq!(presented.as_deref(), Some(second.der.as_slice()), "the new certificate");
    assert!(served);

    std::fs::write(&live.cert, "not a certificate").expect("break");
    let (presented, served) = tls_connect(baton.grpc, &ca.file, Some(&envoy)).await;
    assert_eq!(
        presented.as_deref(),
        Some(second.der.as_slice()),
        "a broken file keeps the last good one"
    );
    assert!(served);
    let log = std::fs::read_to_string(scratch.0.join("baton.log")).expect("baton.log");
    assert!(
        log.contains("cannot re-read credential files"),
        "a broken file is logged"
    );
}

// === The Unix socket: only its owner and group may connect ===

/// Root ignores file modes, so the attacker runs as `nobody` (uid 65534) with the gid of the row,
/// through `setpriv`, and tries to open the socket with curl. curl exits 7 when it cannot connect.
/// On the gRPC socket (HTTP/2 prior knowledge, a gRPC POST) each row asks Check and in-proxy mode's
/// `InProxy/Decide` and `InProxy/Epoch`, and a served call answers HTTP 200; on the HTTP
/// authorization socket (`authz_http_uds`, ext_authz over HTTP, which shares the gRPC socket's mode
/// and group) it sends Envoy's shape without a token, and a served call is Baton's 401. The
/// socket's rules hold for all four, and for the HTTP socket alone.
#[tokio::test]
async fn only_the_sockets_owner_and_group_may_connect() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    const GROUP: u32 = 4242;
    let scratch = Scratch::new(BATON_BIN, "adv-listener-uds");
    // The socket's directory must be traversable by the attacker, as an emptyDir shared by two
    // containers is: only the socket's own mode then stands between it and Baton.
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    // (variant, grpc_uds_mode, the attacker's gid, served, with a gRPC socket beside the HTTP one)
    let rows: [(&str, Option<&str>, u32, bool, bool); 5] = [
        (
            "another user, not in the socket's group (default mode)",
            None,
            65534,
            false,
            true,
        ),
        ("control: another user in the socket's group", None, GROUP, true, true),
        ("a group member, mode 0600", Some("0600"), GROUP, false, true),
        (
            "the HTTP socket alone: another user, not in its group",
            None,
            65534,
            false,
            false,
        ),
        (
            "the HTTP socket alone: a group member, mode 0600",
            Some("0600"),
            GROUP,
            false,
            false,
        ),
    ];
    for (i, (variant, mode, gid, served, grpc)) in rows.into_iter().enumerate() {
        let run = Scratch::new(BATON_BIN, "adv-listener-uds-run");
        std::fs::set_permissions(&run.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let grpc_socket = grpc.then(|| run.0.join(format!("baton-{i}.sock")));
        let http_socket = run.0.join(format!("baton-http-{i}.sock"));
        let mode_line = mode.map(|m| format!("  grpc_uds_mode: \"{m}\"\n")).unwrap_or_default();
        let grpc_line = grpc_socket
            .as_ref()
            .map(|s| format!("  grpc_uds: {}\n", s.display()))
            .unwrap_or_default();
        let listen = format!(
            "{grpc_line}  authz_http_uds: {}\n{mode_line}  grpc_uds_group: \"{GROUP}\"\n",
            http_socket.display()
        );
        let baton = Baton::start_listening(&run, &service.token_endpoint, &listen, "").await;

        let expected_mode = mode.map_or(0o660, |m| u32::from_str_radix(m, 8).expect("octal"));
        for socket in grpc_socket.iter().chain([&http_socket]) {
            let meta = std::fs::symlink_metadata(socket).expect("the socket");
            assert_eq!(meta.mode() & 0o7777, expected_mode, "{variant}: mode of {socket:?}");
            assert_eq!(meta.gid(), GROUP, "{variant}: group of {socket:?}");
        }

        // (socket, path, curl's arguments, a served call's status)
        let mut calls: Vec<(&Path, &str, &[&str], &str)> = Vec::new();
        if let Some(socket) = &grpc_socket {
            let grpc_post: &[&str] = &[
                "--http2-prior-knowledge",
                "-X",
                "POST",
                "-H",
                "content-type: application/grpc",
            ];
            for method in [
                "envoy.service.auth.v3.Authorization/Check",
                "baton.v1.InProxy/Decide",
                "baton.v1.InProxy/Epoch",
            ] {
                calls.push((socket, method, grpc_post, "200"));
            }
        }
        // What Envoy's ext_authz HTTP client sends, without a token: Baton's answer is 401.
        calls.push((&http_socket, "orders/1", &["-H", "host: orders.example"], "401"));
        for (socket, path, args, answer) in calls {
            let out = tokio::process::Command::new("setpriv")
                .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups", "curl"])
                .args(["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(args)
                .arg("--unix-socket")
                .arg(socket)
                .arg(format!("http://baton/{path}"))
                .output()
                .await
                .expect("run setpriv curl");
            let stdout = String::from_utf8_lossy(&out.stdout);
            if served {
                assert_eq!(
                    (out.status.code(), stdout.as_ref()),
                    (Some(0), answer),
                    "{variant} {path}: {out:?}"
                );
            } else {
                assert_eq!(out.status.code(), Some(7), "{variant} {path}: connected: {out:?}");
            }
        }
        drop(baton);
    }
}

// === broker.callers: mtls ===

/// One `DelegationBroker/Exchange` over mutual TLS, as `cert`; a bearer `authorization` is sent too
/// when given (it must not become the caller). The token, or the gRPC error message.
async fn broker_exchange(
    port: u16,
    ca: &Path,
    cert: &Leaf,
    bearer_token: Option<&str>,
    subject: &str,
) -> Result<String, String> {
    use prost::Message as _;
    let mut identity = std::fs::read(&cert.cert).expect("cert");
    identity.extend(std::fs::read(&cert.key).expect("key"));
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(ca).expect("ca")).expect("ca")])
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .resolve(BATON_NAME, ([127, 0, 0, 1], port).into())
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let message = baton_envoy::broker::pb::ExchangeRequest {
        subject_token: subject.to_owned(),
        destination: "orders".to_owned(),
        scopes: Vec::new(),
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend(u32::try_from(message.len()).expect("len").to_be_bytes());
    body.extend(message);
    let mut request = client
        .post(format!(
            "https://{BATON_NAME}:{port}/baton.v1.DelegationBroker/Exchange"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body);
    if let Some(token) = bearer_token {
        request = request.header("authorization", bearer(token));
    }
    let response = request.send().await.map_err(|e| format!("transport: {e}"))?;
    // A refusal is a trailers-only response: its status is in the headers.
    if let Some(status) = response.headers().get("grpc-status").filter(|s| *s != "0") {
        let message = response
            .headers()
            .get("grpc-message")
            .map(|m| m.to_str().unwrap_or("").to_owned());
        return Err(format!("{status:?} {}", message.unwrap_or_default()));
    }
    let bytes = response.bytes().await.map_err(|e| format!("body: {e}"))?;
    let reply = baton_envoy::broker::pb::ExchangeResponse::decode(bytes.get(5..).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    Ok(reply.access_token)
}

/// (variant, client certificate, bearer sent alongside, Ok or the reason code of the refusal)
type BrokerRow<'a> = (&'a str, &'a Leaf, Option<&'a str>, Result<(), &'a str>);

/// `broker.callers: mtls`: the broker's caller (the policy's `source`) is the verified identity of
/// the TLS client certificate, never a bearer token sent alongside (a user's token is not a caller
/// credential).
#[tokio::test]
async fn under_callers_mtls_the_broker_caller_is_the_certificates_identity() {
    const REPORTER: &str = "spiffe://cluster.local/ns/jobs/sa/reporter";
    let scratch = Scratch::new(BATON_BIN, "adv-listener-broker-mtls");
    let ca = new_ca(&scratch, "mesh-ca");
    let server = leaf(
        &scratch,
        "baton",
        Some(&ca),
        &[BATON_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
        Validity::Now,
    );
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let listen = format!(
        "  grpc_tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n    allowed_callers: [\"{REPORTER}\", \"spiffe://cluster.local/ns/shop/sa/*\"]\n",
        server.cert.display(),
        server.key.display(),
        ca.file.display()
    );
    let body = format!(
        "{listen}token_service:\n{}\nbroker:\n  callers: mtls\ndestinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: {ORDERS}\n    scopes: [orders.read]\n    policy:\n      allowed_sources: [\"{REPORTER}\"]\n",
        basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint))
    );
    let baton = Baton::start_raw(&scratch, &body, "baton=debug,info").await;
    let user = service.mint("alice", "orders.read").await;
    let reporter = client_cert(&scratch, "reporter", &ca, &[REPORTER]);
    let envoy = client_cert(&scratch, "envoy", &ca, &[ENVOY_ID]);
    // A token whose `sub` is the allowed source: sent as a bearer, it must not make the caller.
    let impostor = service.mint(REPORTER, "orders.read").await;

    let rows: [BrokerRow<'_>; 3] = [
        ("the allowed source's certificate", &reporter, None, Ok(())),
        (
            "an allowed caller that is not an allowed source",
            &envoy,
            None,
            Err("source_not_allowed"),
        ),
        (
            "the same, with the source's token as a bearer",
            &envoy,
            Some(&impostor),
            Err("source_not_allowed"),
        ),
    ];
    for (variant, cert, bearer_token, expected) in rows {
        let outcome = broker_exchange(baton.grpc, &ca.file, cert, bearer_token, &user).await;
        match (expected, outcome) {
            (Ok(()), Ok(token)) => {
                assert_ne!(token, user, "{variant}");
                assert_eq!(audiences(&service.verify(&token).await), [ORDERS], "{variant}");
            }
            (Err(reason), Err(message)) => assert!(message.contains(reason), "{variant}: {message}"),
            (expected, outcome) => panic!("{variant}: expected {expected:?}, got {:?}", outcome.map(|_| "a token")),
        }
    }
}

// === check-config: the listener a file asks for ===

/// (variant, `listen:` section, Ok or words the error must contain)
type ConfigRow = (&'static str, &'static str, Result<(), &'static [&'static str]>);

/// `baton check-config` (which `run` shares) refuses the listeners an attacker beside the pod could
/// reach, and says what to change. Before issue 12 every refused row here was accepted: `grpc`
/// defaulted to 127.0.0.1:9191 and any address was served in plain text.
#[test]
fn check_config_refuses_a_listener_anyone_could_reach() {
    let scratch = Scratch::new(BATON_BIN, "adv-listener-check-config");
    let ts = "token_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: c\n  auth: { method: none }\n";
    let rows: [ConfigRow; 18] = [
        (
            "no listener at all",
            "listen:\n  admin: 127.0.0.1:9901\n",
            Err(&["listen:", "grpc_uds"]),
        ),
        (
            "plain text on every address",
            "listen:\n  grpc: 0.0.0.0:9191\n",
            Err(&["listen.grpc", "grpc_tls", "insecure_plaintext"]),
        ),
        (
            "plain text on every IPv6 address",
            "listen:\n  grpc: \"[::]:9191\"\n",
            Err(&["listen.grpc"]),
        ),
        (
            "plain text on a pod address",
            "listen:\n  grpc: 10.1.2.3:9191\n",
            Err(&["listen.grpc"]),
        ),
        (
            "plain text on an IPv4-mapped loopback",
            "listen:\n  grpc: \"[::ffff:127.0.0.1]:9191\"\n",
            Err(&["listen.grpc"]),
        ),
        (
            "a socket every local user may open",
            "listen:\n  grpc_uds: /run/b.sock\n  grpc_uds_mode: \"0666\"\n",
            Err(&["listen.grpc_uds_mode"]),
        ),
        (
            "an allow-list pattern matching everyone",
            "listen:\n  grpc: 0.0.0.0:9191\n  grpc_tls: {cert_file: /c, key_file: /k, client_ca_file: /ca, allowed_callers: [\"*\"]}\n",
            Err(&["allowed_callers[0]"]),
        ),
        (
            "TLS files that do not exist",
            "listen:\n  grpc: 0.0.0.0:9191\n  grpc_tls: {cert_file: /nonexistent/c, key_file: /nonexistent/k, client_ca_file: /nonexistent/ca, allowed_callers: [envoy.example]}\n",
            Err(&["listen.grpc_tls", "/nonexistent/c"]),
        ),
        ("plain text on loopback", "listen:\n  grpc: 127.0.0.1:9191\n", Ok(())),
        (
            "plain text elsewhere, said out loud",
            "listen:\n  grpc: 0.0.0.0:9191\n  insecure_plaintext: true\n",
            Ok(()),
        ),
        // The HTTP authorization listener (ext_authz over HTTP) has no TLS: loopback or a socket.
        (
            "HTTP authorization on every address",
            "listen:\n  authz_http: 0.0.0.0:9192\n",
            Err(&["listen.authz_http", "authz_http_uds", "insecure_plaintext"]),
        ),
        (
            "HTTP authorization on every IPv6 address",
            "listen:\n  authz_http: \"[::]:9192\"\n",
            Err(&["listen.authz_http"]),
        ),
        (
            "HTTP authorization on a pod address, beside the gRPC socket",
            "listen:\n  grpc_uds: /run/b.sock\n  authz_http: 10.1.2.3:9192\n",
            Err(&["listen.authz_http"]),
        ),
        (
            "HTTP authorization on an IPv4-mapped loopback",
            "listen:\n  authz_http: \"[::ffff:127.0.0.1]:9192\"\n",
            Err(&["listen.authz_http"]),
        ),
        (
            "an HTTP authorization socket every local user may open",
            "listen:\n  authz_http_uds: /run/b-http.sock\n  grpc_uds_mode: \"0666\"\n",
            Err(&["listen.grpc_uds_mode"]),
        ),
        (
            "one socket for both APIs",
            "listen:\n  grpc_uds: /run/b.sock\n  authz_http_uds: /run/b.sock\n",
            Err(&["listen.authz_http_uds", "listen.grpc_uds"]),
        ),
        (
            "HTTP authorization on loopback",
            "listen:\n  authz_http: 127.0.0.1:9192\n",
            Ok(()),
        ),
        (
            "HTTP authorization elsewhere, said out loud",
            "listen:\n  authz_http: 0.0.0.0:9192\n  insecure_plaintext: true\n",
            Ok(()),
        ),
    ];
    for (i, (variant, listen, expected)) in rows.into_iter().enumerate() {
        let file = scratch.write(&format!("config-{i}.yaml"), &format!("{listen}{ts}"));
        let out = std::process::Command::new(BATON_BIN)
            .arg("check-config")
            .arg(&file)
            .output()
            .expect("run check-config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match expected {
            Ok(()) => assert!(out.status.success(), "{variant}: {stderr}"),
            Err(words) => {
                assert_eq!(out.status.code(), Some(1), "{variant}: accepted");
                for word in words {
                    assert!(stderr.contains(word), "{variant}: `{word}` missing from {stderr}");
                }
            }
        }
    }
}
