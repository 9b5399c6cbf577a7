//! What Baton reports, read back from real receivers: one trace linking the real Envoy's spans,
//! Baton's decision span and its token-exchange span (OTLP/gRPC to `fake-opentelemetry-collector`,
//! Envoy's own OpenTelemetry tracer included); OTLP/HTTP export; `/metrics` counters that move by
//! exactly the requests made; the audit log and Envoy's access log (Baton's `dynamic_metadata`),
//! line by line against those requests; the Grafana dashboard against `/metrics`; and the leak
//! detector the harness runs over everything Baton and Envoy emit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use baton_envoy::broker::pb::ExchangeRequest;
use baton_envoy::broker::pb::delegation_broker_client::DelegationBrokerClient;
use baton_test_support::promql::{label_names, metric_names};
use baton_test_support::*;
use fake_opentelemetry_collector::ExportedSpan;
use serde_json::Value;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

// === Helpers ===

/// A W3C `traceparent` for request `n` of a test, sampled.
fn traceparent(test: u8, n: u8) -> (String, String) {
    let trace_id = format!("{test:02x}{n:02x}{}", "ab".repeat(14));
    (format!("00-{trace_id}-{:016x}-01", u64::from(n) + 1), trace_id)
}

/// OpenMetrics text -> `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// How much every series moved; series that did not move are left out.
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// The sum of the moves of every series of `name` whose labels contain all of `labels`.
fn sum(deltas: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    deltas
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(&format!("{l}\""))))
        .map(|(_, v)| v)
        .sum()
}

/// The strings of an array attribute.
fn attr_list(span: &ExportedSpan, key: &str) -> Vec<String> {
    let debug = span.attributes.get(key).cloned().unwrap_or_default();
    debug
        .split("StringValue(\"")
        .skip(1)
        .filter_map(|s| s.split("\")").next().map(str::to_owned))
        .collect()
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&json).expect("JSON claims")
}

/// An HTTP front for a token endpoint that records the `traceparent` of each request and forwards it
/// unchanged to the real token service.
async fn recording_front(token_endpoint: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let (recorded, token_endpoint) = (recorded.clone(), token_endpoint.clone());
        async move {
            if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                recorded.lock().expect("lock").push(tp.to_owned());
            }
            let mut forward = http().post(&token_endpoint).body(body);
            for name in ["authorization", "content-type", "accept"] {
                if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                    forward = forward.header(name, v);
                }
            }
            let answer = forward.send().await.expect("forward to the token service");
            let status = axum::http::StatusCode::from_u16(answer.status().as_u16()).expect("status");
            let body = answer.bytes().await.expect("body");
            (status, [("content-type", "application/json")], body)
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://127.0.0.1:{port}/token"), seen)
}

/// The harness's bootstrap with Envoy's OpenTelemetry tracer exporting to `collector` (OTLP/gRPC),
/// sampling every request and flushing every 100 ms.
fn traced_bootstrap(baton_grpc: u16, upstream: u16, collector: &str) -> String {
    let port = collector.rsplit(':').next().expect("collector port");
    let bootstrap = envoy_bootstrap(free_port(), baton_grpc, upstream);
    let tracing = r#"          stat_prefix: outbound
          tracing:
            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: envoy-outbound
                grpc_service:
                  envoy_grpc: { cluster_name: otel }
                  timeout: 1s
"#;
    let mut traced = bootstrap.replacen("          stat_prefix: outbound\n", tracing, 1);
    assert_ne!(traced, bootstrap, "the bootstrap has the outbound connection manager");
    traced.push_str(&format!(
        r#"  - name: otel
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: otel
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.flush_interval_ms: 100
      tracing.opentelemetry.min_flush_spans: 1
"#
    ));
    traced
}

// === Traces ===

/// Envoy's span, Baton's Check span and Baton's exchange span share one trace id; the exchange span
/// is the Check span's child and its `traceparent` reaches the token service; the Check span carries
/// the delegation's attributes (subject hashed, as configured). A cache hit has no exchange span; a
/// denial carries its reason; a broker call is a span of its own with its exchange as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_envoy_baton_and_the_token_exchange() {
    let scratch = Scratch::new(BATON_BIN, "traces");
    let collector = leaks::SpanSink::start().await;
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let (front, traceparents) = recording_front(service.token_endpoint.clone()).await;
    let baton = Baton::start(
        &scratch,
        &front,
        &format!(
            "broker:\n  callers: any\ntelemetry:\n  service_name: baton-test\n  tracing:\n    endpoint: {}\n    sampler_ratio: 1.0\n    subject: hashed\n",
            collector.endpoint
        ),
    )
    .await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start_with_bootstrap(
        &scratch,
        &traced_bootstrap(baton.grpc, upstream.port, &collector.endpoint),
    )
    .await;
    let alice = service.mint("alice", "orders.read").await;

    let (tp1, t1) = traceparent(1, 1);
    let reply = send_with(
        &envoy,
        "orders.example",
        "/t/1",
        Some(&bearer(&alice)),
        &[("traceparent", &tp1)],
    )
    .await;
    let issued = jwt_claims(reply.upstream_token());
    let (tp2, t2) = traceparent(1, 2);
    send_with(
        &envoy,
        "orders.example",
        "/t/2",
        Some(&bearer(&alice)),
        &[("traceparent", &tp2)],
    )
    .await
    .upstream_token();
    let (tp3, t3) = traceparent(1, 3);
    let denied = send_with(
        &envoy,
        "orders.example",
        "/t/3",
        Some("Bearer not a token"),
        &[("traceparent", &tp3)],
    )
    .await;
    assert_eq!(denied.status, 401);

    let bob = service.mint("bob", "billing.read").await;
    let (tp4, t4) = traceparent(1, 4);
    let mut client = DelegationBrokerClient::connect(format!("http://127.0.0.1:{}", baton.grpc))
        .await
        .expect("connect to the broker");
    let mut request = tonic::Request::new(ExchangeRequest {
        subject_token: bob.clone(),
        destination: "billing".into(),
        scopes: Vec::new(),
    });
    request
        .metadata_mut()
        .insert("traceparent", tp4.parse().expect("ascii"));
    let brokered = client.exchange(request).await.expect("broker exchange").into_inner();
    leaks::secret(&brokered.access_token);

    let in_trace = |spans: &[ExportedSpan], trace: &str, name: &str| -> Option<ExportedSpan> {
        spans.iter().find(|s| s.trace_id == trace && s.name == name).cloned()
    };
    let spans = eventually("Envoy's and Baton's spans of all four traces", || {
        let spans = collector.spans();
        let envoy_spans = spans
            .iter()
            .filter(|s| s.trace_id == t1 && !s.name.starts_with("baton."))
            .count();
        let ready = envoy_spans >= 2
            && in_trace(&spans, &t1, "baton.exchange").is_some()
            && in_trace(&spans, &t2, "baton.check").is_some()
            && in_trace(&spans, &t3, "baton.check").is_some()
            && in_trace(&spans, &t4, "baton.exchange").is_some();
        ready.then_some(spans)
    })
    .await;

    // Trace 1: Envoy -> Baton's Check -> the exchange, one trace id.
    let check = in_trace(&spans, &t1, "baton.check").expect("Baton's Check span in trace 1");
    let exchange = in_trace(&spans, &t1, "baton.exchange").expect("the exchange span in trace 1");
    let envoy_spans: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == t1 && !s.name.starts_with("baton."))
        .collect();
    // The application's span -> Envoy's request span -> Envoy's span for its Check call -> Baton.
    let (client_span, _) = traceparent(1, 1);
    let client_span = client_span.split('-').nth(2).expect("span id").to_owned();
    let ingress = envoy_spans
        .iter()
        .find(|s| s.parent_span_id == client_span)
        .unwrap_or_else(|| panic!("Envoy's request span continues the caller's trace: {envoy_spans:#?}"));
    let authz_call = envoy_spans
        .iter()
        .find(|s| s.span_id == check.parent_span_id)
        .unwrap_or_else(|| panic!("Baton's Check span is a child of an Envoy span: {check:?} / {envoy_spans:#?}"));
    assert!(authz_call.name.contains("Authorization.Check"), "{authz_call:?}");
    assert_eq!(authz_call.parent_span_id, ingress.span_id, "{envoy_spans:#?}");
    assert_eq!(check.kind, "SPAN_KIND_SERVER");
    assert_eq!(
        exchange.parent_span_id, check.span_id,
        "the exchange is the Check's child"
    );
    assert_eq!(exchange.kind, "SPAN_KIND_CLIENT");
    let sent: Vec<String> = traceparents.lock().expect("lock").clone();
    assert!(
        sent.contains(&format!("00-{t1}-{}-01", exchange.span_id)),
        "the token service received the exchange span's traceparent: {sent:?}"
    );
    let a = |k: &str| span_attr(&check, k);
    assert_eq!(a("baton.api").as_deref(), Some("check"));
    assert_eq!(a("baton.decision").as_deref(), Some("delegate"));
    assert_eq!(a("baton.cache").as_deref(), Some("miss"));
    assert_eq!(a("baton.destination").as_deref(), Some("orders"));
    assert_eq!(a("baton.audience").as_deref(), Some(ORDERS));
    assert_eq!(attr_list(&check, "baton.scopes.requested"), ["orders.read"]);
    assert_eq!(a("baton.subject.iss").as_deref(), Some(service.issuer.as_str()));
    assert_eq!(
        a("baton.subject.sub"),
        Some(baton_core::secret::fingerprint("alice")),
        "subject: hashed"
    );
    assert_eq!(a("baton.issued.jti").as_deref(), issued["jti"].as_str());
    assert_eq!(a("baton.issued.exp"), issued["exp"].as_i64().map(|e| e.to_string()));
    assert_eq!(a("baton.delegation.depth").as_deref(), Some("0"));
    assert_eq!(span_attr(&exchange, "baton.exchange.outcome").as_deref(), Some("ok"));
    assert_eq!(span_attr(&exchange, "baton.destination").as_deref(), Some("orders"));
    assert_eq!(span_attr(&exchange, "baton.token_service").as_deref(), Some("default"));
    assert_eq!(span_attr(&exchange, "url.full").as_deref(), Some(front.as_str()));

    // Trace 2: a cache hit; trace 3: a denial.
    let hit = in_trace(&spans, &t2, "baton.check").expect("trace 2");
    assert_eq!(span_attr(&hit, "baton.cache").as_deref(), Some("hit"));
    assert_eq!(span_attr(&hit, "baton.issued.jti").as_deref(), issued["jti"].as_str());
    assert!(
        in_trace(&spans, &t2, "baton.exchange").is_none(),
        "a hit exchanges nothing"
    );
    let deny = in_trace(&spans, &t3, "baton.check").expect("trace 3");
    assert_eq!(span_attr(&deny, "baton.decision").as_deref(), Some("deny"));
    assert_eq!(span_attr(&deny, "baton.reason").as_deref(), Some("malformed_token"));

    // Trace 4: the broker.
    let broker = in_trace(&spans, &t4, "baton.broker").expect("the broker span");
    let broker_exchange = in_trace(&spans, &t4, "baton.exchange").expect("its exchange");
    assert_eq!(broker.parent_span_id, format!("{:016x}", 5), "the caller's span");
    assert_eq!(broker_exchange.parent_span_id, broker.span_id);
    assert_eq!(span_attr(&broker, "baton.api").as_deref(), Some("broker"));
    assert_eq!(span_attr(&broker, "baton.destination").as_deref(), Some("billing"));
    assert_eq!(
        span_attr(&broker, "baton.issued.jti").as_deref(),
        jwt_claims(&brokered.access_token)["jti"].as_str()
    );

    // Not one token in any attribute, Envoy's included.
    let exported = serde_json::to_string(&collector.spans()).expect("json");
    leaks::assert_none(&[("the spans of this test".to_owned(), exported)]);
}

/// OTLP over HTTP/protobuf, with the configured headers, to a receiver that decodes the request with
/// OpenTelemetry's own protobuf types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_export_over_otlp_http_with_the_configured_headers() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    let received: Arc<Mutex<Vec<(axum::http::HeaderMap, ExportTraceServiceRequest)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                sink.lock().expect("lock").push((headers, request));
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let scratch = Scratch::new(BATON_BIN, "otlp-http");
    let key = scratch.write("collector-key-secret", "collector-api-key-0123456789");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start(
        &scratch,
        &service.token_endpoint,
        &format!(
            "telemetry:\n  service_name: baton-http\n  tracing:\n    endpoint: http://127.0.0.1:{port}\n    protocol: http_protobuf\n    headers:\n      - name: X-Tenant\n        value: team-a\n      - name: x-api-key\n        value_file: {}\n",
            key.display()
        ),
    )
    .await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let user = service.mint("alice", "orders.read").await;
    let (tp, trace_id) = traceparent(2, 1);
    send_with(
        &envoy,
        "orders.example",
        "/h/1",
        Some(&bearer(&user)),
        &[("traceparent", &tp)],
    )
    .await
    .upstream_token();

    let (headers, request) = eventually("an OTLP/HTTP export with the Check span", || {
        let received = received.lock().expect("lock");
        received
            .iter()
            .find(|(_, r)| {
                r.resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .flat_map(|ss| &ss.spans)
                    .any(|s| s.name == "baton.check" && hex(&s.trace_id) == trace_id)
            })
            .cloned()
    })
    .await;
    assert_eq!(headers.get("x-tenant").and_then(|v| v.to_str().ok()), Some("team-a"));
    assert_eq!(
        headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        Some("collector-api-key-0123456789")
    );
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    let service_name = request.resource_spans[0]
        .resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{v:?}"));
    assert!(
        service_name.as_deref().is_some_and(|s| s.contains("baton-http")),
        "{service_name:?}"
    );
    drop(envoy);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === Metrics, audit log, access log ===

/// One request through Envoy and what Baton should report about it.
struct Case {
    host: &'static str,
    path: &'static str,
    authorization: Option<String>,
    status: u16,
    decision: &'static str,
    reason: Option<&'static str>,
    destination: Option<&'static str>,
    audience: Option<&'static str>,
    cache: Option<&'static str>,
}

/// Seven requests, one of each kind of decision: a miss, a hit, a routed miss, a strip, two
/// refusals before any exchange, and one the token service refuses.
fn cases(token: &str) -> Vec<Case> {
    let user = Some(bearer(token));
    let case =
        |host, path, authorization: Option<String>, status, decision, reason, destination, audience, cache| Case {
            host,
            path,
            authorization,
            status,
            decision,
            reason,
            destination,
            audience,
            cache,
        };
    vec![
        case(
            "orders.example",
            "/obs/1",
            user.clone(),
            200,
            "delegate",
            None,
            Some("orders"),
            Some(ORDERS),
            Some("miss"),
        ),
        case(
            "orders.example",
            "/obs/2",
            user.clone(),
            200,
            "delegate",
            None,
            Some("orders"),
            Some(ORDERS),
            Some("hit"),
        ),
        case(
            "routed.billing.example",
            "/routed/obs/3",
            user.clone(),
            200,
            "delegate",
            None,
            Some("billing"),
            Some(BILLING),
            Some("miss"),
        ),
        case(
            "elsewhere.example",
            "/obs/4",
            user.clone(),
            200,
            "strip",
            None,
            None,
            None,
            None,
        ),
        case(
            "orders.example",
            "/obs/5",
            None,
            401,
            "deny",
            Some("missing_token"),
            Some("orders"),
            Some(ORDERS),
            None,
        ),
        case(
            "orders.example",
            "/obs/6",
            Some("Bearer not a token".into()),
            401,
            "deny",
            Some("malformed_token"),
            Some("orders"),
            Some(ORDERS),
            None,
        ),
        case(
            "forbidden.example",
            "/obs/7",
            user,
            403,
            "deny",
            Some("target_refused"),
            Some("forbidden"),
            Some(FORBIDDEN),
            None,
        ),
    ]
}

/// Scrape, make the seven requests (each in a trace of its own), scrape again: the counters moved
/// by exactly those requests; each has one audit line and one access-log line that say the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_audit_and_access_log_match_the_requests_made() {
    observed_requests(Api::ExtAuthz, "check").await;
}

/// The same through Envoy's ext_proc filter (one stream per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_audit_and_access_log_match_the_requests_made_through_ext_proc() {
    observed_requests(Api::ExtProc, "ext_proc").await;
}

/// Off by default: without `telemetry.dynamic_metadata` the reply carries none, so the access log's
/// Baton keys are null (through both filters) while the request is delegated all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dynamic_metadata_the_access_log_has_no_baton_keys() {
    let scratch = Scratch::new(BATON_BIN, "no-metadata");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    // A `telemetry:` section of its own, so the harness adds neither tracing nor the metadata.
    let baton = Baton::start(&scratch, &service.token_endpoint, "telemetry:\n  service_name: baton\n").await;
    let upstream = Upstream::start().await;
    let alice = service.mint("alice", "orders.read").await;
    for api in [Api::ExtAuthz, Api::ExtProc] {
        let envoy = Envoy::start_for(api, &scratch, baton.port_for(api), upstream.port).await;
        let path = "/quiet/1";
        let reply = send_with(&envoy, "orders.example", path, Some(&bearer(&alice)), &[]).await;
        assert_eq!(reply.status, 200, "{api:?}: {:?}", reply.body);
        assert_eq!(jwt_claims(reply.upstream_token())["aud"], ORDERS, "{api:?}");
        let line = eventually("the access-log line", || {
            envoy.access_log().into_iter().find(|l| l["path"] == path)
        })
        .await;
        for key in ["baton_decision", "baton_destination", "baton_cache", "baton_jti"] {
            assert_eq!(line[key], Value::Null, "{api:?}: {key} in {line}");
        }
    }
}

async fn observed_requests(api: Api, api_label: &str) {
    let scratch = Scratch::new(BATON_BIN, &format!("observed-{api_label}"));
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    // The harness's defaults: audit to audit.log, spans to its own receiver.
    let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start_for(api, &scratch, baton.port_for(api), upstream.port).await;
    let alice = service.mint("alice", "orders.read billing.read").await;
    let cases = cases(&alice);

    let before = samples(&baton.metrics().await);
    let exchanges_before = service.exchanges().await;
    let mut jtis = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        let (tp, _) = traceparent(3, i as u8);
        let reply = send_with(
            &envoy,
            case.host,
            case.path,
            case.authorization.as_deref(),
            &[("traceparent", &tp)],
        )
        .await;
        assert_eq!(reply.status, case.status, "{}: {:?}", case.path, reply.body);
        if case.decision == "delegate" {
            let claims = jwt_claims(reply.upstream_token());
            jtis.insert(case.path, claims);
        }
    }
    let after = samples(&baton.metrics().await);
    let deltas = moved(&before, &after);

    // Counters: exactly the seven requests.
    let checks = |labels: &[&str]| sum(&deltas, "baton_checks_total", labels);
    assert_eq!(checks(&[]), 7.0, "{deltas:#?}");
    let api_is = format!("api=\"{api_label}");
    assert_eq!(checks(&[&api_is]), 7.0, "{deltas:#?}");
    assert_eq!(
        checks(&[&api_is, "decision=\"delegate", "reason=\"none", "destination=\"orders"]),
        2.0
    );
    assert_eq!(checks(&["decision=\"delegate", "destination=\"billing"]), 1.0);
    assert_eq!(checks(&["decision=\"strip", "destination=\"unknown"]), 1.0);
    assert_eq!(
        checks(&["decision=\"deny", "reason=\"missing_token", "destination=\"orders"]),
        1.0
    );
    assert_eq!(
        checks(&["decision=\"deny", "reason=\"malformed_token", "destination=\"orders"]),
        1.0
    );
    assert_eq!(
        checks(&["decision=\"deny", "reason=\"target_refused", "destination=\"forbidden"]),
        1.0
    );
    assert_eq!(sum(&deltas, "baton_check_duration_seconds_count", &[]), 7.0);
    assert_eq!(
        sum(&deltas, "baton_check_duration_seconds_count", &["cache=\"hit"]),
        1.0
    );
    assert_eq!(sum(&deltas, "baton_cache_requests_total", &["result=\"hit"]), 1.0);
    assert_eq!(sum(&deltas, "baton_cache_requests_total", &["result=\"miss"]), 2.0);
    assert_eq!(sum(&deltas, "baton_cache_requests_total", &[]), 3.0);
    assert_eq!(sum(&deltas, "baton_exchanges_total", &["outcome=\"ok"]), 2.0);
    assert_eq!(
        sum(&deltas, "baton_exchanges_total", &["outcome=\"target_refused"]),
        1.0
    );
    assert_eq!(sum(&deltas, "baton_exchange_duration_seconds_count", &[]), 3.0);
    assert_eq!(
        service.exchanges().await - exchanges_before,
        3,
        "the token service agrees: three exchanges"
    );
    let label = "token_service=\"default";
    assert_eq!(sum(&deltas, "baton_exchanges_total", &[label]), 3.0, "{deltas:#?}");
    assert!(
        after.get("baton_cache_entries").copied().unwrap_or(0.0) >= 2.0,
        "{after:#?}"
    );
    assert!(after.keys().any(|k| k.starts_with("baton_build_info{version=")));
    // No label carries a request's own data: only configured names and fixed words.
    for series in after.keys() {
        assert!(!series.contains("alice") && !series.contains("elsewhere"), "{series}");
    }

    // The audit log: one line per request, found by its trace id, saying what happened.
    let audit_path = scratch.0.join("audit.log");
    let lines = eventually("seven audit lines", || {
        let text = std::fs::read_to_string(&audit_path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        let ours: Vec<Value> = (0..cases.len())
            .filter_map(|i| {
                let (_, trace_id) = traceparent(3, i as u8);
                lines.iter().find(|l| l["trace_id"] == trace_id.as_str()).cloned()
            })
            .collect();
        (ours.len() == cases.len()).then_some(ours)
    })
    .await;
    for (case, line) in cases.iter().zip(&lines) {
        let at = case.path;
        assert_eq!(line["api"], api_label, "{at}: {line}");
        assert_eq!(line["decision"], case.decision, "{at}: {line}");
        assert_eq!(line["reason"].as_str(), case.reason, "{at}: {line}");
        assert_eq!(line["destination"].as_str(), case.destination, "{at}: {line}");
        assert_eq!(line["audience"].as_str(), case.audience, "{at}: {line}");
        assert_eq!(line["cache"].as_str(), case.cache, "{at}: {line}");
        assert!(
            line["time"]
                .as_str()
                .is_some_and(|t| humantime::parse_rfc3339(t).is_ok()),
            "{at}: {line}"
        );
        assert_eq!(line["source"], Value::Null, "no mTLS here: {line}");
        match jtis.get(at) {
            Some(claims) => {
                assert_eq!(line["subject"]["iss"], service.issuer.as_str(), "{at}: {line}");
                assert_eq!(line["subject"]["sub"], "alice", "{at}: {line}");
                assert_eq!(line["jti"], claims["jti"], "{at}: {line}");
                assert_eq!(line["exp"], claims["exp"], "{at}: {line}");
                assert_eq!(line["actors"], serde_json::json!([]), "{at}: {line}");
                assert_eq!(line["delegation_depth"], 0, "{at}: {line}");
                let granted: Vec<&str> = claims["scope"].as_str().unwrap_or("").split_whitespace().collect();
                assert_eq!(line["scopes_granted"], serde_json::json!(granted), "{at}: {line}");
            }
            None => {
                for field in ["subject", "jti", "exp", "scopes_granted"] {
                    assert_eq!(line[field], Value::Null, "{at}: {field} in {line}");
                }
            }
        }
    }
    assert_eq!(lines[0]["scopes_requested"], serde_json::json!(["orders.read"]));
    assert_eq!(lines[2]["scopes_requested"], serde_json::json!([]));
    assert_eq!(lines[0]["jti"], lines[1]["jti"], "the hit served the miss's token");

    // Envoy's access log prints Baton's dynamic_metadata: one line per request, by path.
    let access = eventually("seven access-log lines", || {
        let log = envoy.access_log();
        let ours: Vec<Value> = cases
            .iter()
            .filter_map(|c| log.iter().find(|l| l["path"] == c.path).cloned())
            .collect();
        (ours.len() == cases.len()).then_some(ours)
    })
    .await;
    // JSON access logs print a missing value as null (text formats print `-`).
    let null_or = |v: Option<&str>| serde_json::json!(v);
    for (case, line) in cases.iter().zip(&access) {
        let at = case.path;
        assert_eq!(line["status"].as_u64(), Some(u64::from(case.status)), "{at}: {line}");
        assert_eq!(line["baton_decision"], case.decision, "{at}: {line}");
        assert_eq!(line["baton_reason"], null_or(case.reason), "{at}: {line}");
        assert_eq!(line["baton_destination"], null_or(case.destination), "{at}: {line}");
        assert_eq!(line["baton_audience"], null_or(case.audience), "{at}: {line}");
        assert_eq!(line["baton_cache"], null_or(case.cache), "{at}: {line}");
        let jti = jtis.get(at).and_then(|c| c["jti"].as_str());
        assert_eq!(line["baton_jti"], null_or(jti), "{at}: {line}");
    }

    // The harness's OTLP receiver saw these decisions, so its leak scan covers span attributes.
    let (_, first_trace) = traceparent(3, 0);
    eventually("the harness's receiver to have the first decision's span", || {
        baton
            .exported_spans()
            .iter()
            .any(|s| s.name == format!("baton.{api_label}") && s.trace_id == first_trace)
            .then_some(())
    })
    .await;
}

// === Dashboard ===

/// Every metric the Grafana dashboard queries is a series Baton's `/metrics` serves (after one of
/// each kind of decision), and every label it filters or groups by is one that series has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_baton_exports() {
    let path = repo().join("dashboards/baton.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboards/baton.json")).expect("JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 4, "the dashboard has its panels' queries: {exprs:?}");

    let scratch = Scratch::new(BATON_BIN, "dashboard");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let alice = service.mint("alice", "orders.read").await;
    for case in cases(&alice) {
        send(&envoy, case.host, case.path, case.authorization.as_deref()).await;
    }
    let text = baton.metrics().await;
    // series name -> label names it has
    let mut series: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for sample in samples(&text).keys() {
        let (name, labels) = sample.split_once('{').unwrap_or((sample, ""));
        let names = series.entry(name.to_owned()).or_default();
        for pair in labels.trim_end_matches('}').split("\",") {
            if let Some((label, _)) = pair.split_once('=') {
                names.push(label.to_owned());
            }
        }
    }
    for expr in &exprs {
        let used = metric_names(expr);
        assert!(!used.is_empty(), "no Baton metric in {expr}");
        for name in &used {
            let labels = series
                .get(name)
                .unwrap_or_else(|| panic!("the dashboard queries {name}, which /metrics does not serve:\n{text}"));
            for label in label_names(expr) {
                // `le` is a histogram's; `job` and `instance` are added by Prometheus when it scrapes.
                let implicit = ["le", "job", "instance"].contains(&label.as_str());
                assert!(
                    implicit || used.iter().any(|n| series[n].contains(&label)),
                    "{expr}: label {label} is not on {name} ({labels:?})"
                );
            }
        }
    }
    drop(envoy);
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

// === The leak detector itself ===

/// The harness's scan fails on a registered token in any output, and registers what the tests send
/// and receive.
#[test]
fn the_leak_scan_finds_a_planted_token() {
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlLW9mLXRoZS1wbGFudGVkLXRva2VuLTAxMjM0NTY3";
    leaks::credential(&bearer(token));
    let clean = vec![("log".to_owned(), "sha256:abc decision=delegate".to_owned())];
    leaks::assert_none(&clean);
    for leaked in [
        format!("token={token}"),
        // The signature alone is enough to call it a leak.
        format!("sig={}", token.rsplit('.').next().unwrap_or_default()),
    ] {
        let outputs = vec![("log".to_owned(), leaked)];
        let caught = std::panic::catch_unwind(|| leaks::assert_none(&outputs));
        assert!(caught.is_err(), "a planted token was not found");
    }
    let pem =
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
    leaks::secret_file(pem);
    let outputs = vec![(
        "log".to_owned(),
        "key MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg".to_owned(),
    )];
    assert!(std::panic::catch_unwind(|| leaks::assert_none(&outputs)).is_err());
}
