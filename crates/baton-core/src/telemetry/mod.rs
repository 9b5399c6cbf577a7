//! Observability: what Baton tells operators and security teams about each delegation, never a token.
//! One `Telemetry` handle, built from the `telemetry:` and `audit:` sections, travels with `Authz`.
//! Each API that decides (Check, ext_proc, the broker) calls `observe` when a request arrives, runs
//! the decision inside `Observation::run`, and calls `Observation::finish` once with the outcome:
//! the span, the metrics and the audit line are all fed from that one call, so they cannot disagree.
//! `Telemetry::exchange` wraps each token exchange in a client span and its metrics.
//! `outcome::decide` (Check and ext_proc) and `broker` show the pattern. It never names Envoy's
//! types: the dynamic metadata Envoy reads is built by `respond`.

pub mod audit;
mod revocation_span;
pub mod settings;
pub mod trace;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::Either;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use prometheus_client::registry::Registry;

use self::settings::SubjectMode;
use crate::cache::Delegated;
use crate::decision::{Allow, Destination, decision_name};
use crate::secret::fingerprint;
use baton_decide::reason::{Class, Denial};
use baton_decide::request::Headers;

use crate::cache::CacheStatus;
use crate::metrics::{
    self, DecisionLabels, DestinationLabel, ExchangeLabels, Metrics, OTHER_SOURCE, SourceLabels, TokenServiceLabels,
};
use prometheus_client::metrics::counter::Counter;

/// Which API asked for the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// Envoy's ext_authz `Authorization/Check`.
    Check,
    /// Envoy's ext_proc `ExternalProcessor/Process` (one decision per stream).
    ExtProc,
    /// `baton.v1.DelegationBroker/Exchange`.
    Broker,
    /// `baton.v1.InProxy/Decide`: a miss of the in-proxy filter (`baton.wasm`).
    InProxy,
    /// Envoy's ext_authz over HTTP (`http_service`): Baton's HTTP authorization listener.
    ExtAuthzHttp,
}

// Every Api has its slot in the decision-duration series (an Api past the last slot panicked there).
const _: () = assert!((Api::ExtAuthzHttp as usize) < crate::metrics::API_SLOTS);

impl Api {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::ExtProc => "ext_proc",
            Self::Broker => "broker",
            Self::InProxy => "in_proxy",
            Self::ExtAuthzHttp => "ext_authz_http",
        }
    }

    const fn span_name(self) -> &'static str {
        match self {
            Self::Check => "baton.check",
            Self::ExtProc => "baton.ext_proc",
            Self::Broker => "baton.broker",
            Self::InProxy => "baton.in_proxy",
            Self::ExtAuthzHttp => "baton.ext_authz_http",
        }
    }
}

/// The handle every part of Baton reports through. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    metrics: Metrics,
    tracing: Option<trace::Tracing>,
    audit: Option<audit::Audit>,
    /// `telemetry.dynamic_metadata`: Envoy metadata on every reply.
    dynamic_metadata: bool,
    /// `telemetry.metric_sources`, each with its `baton_source_exchanges_total` series, and the
    /// series of every other source.
    sources: Vec<(String, Counter)>,
    other_source: Counter,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::off()
    }
}

impl Telemetry {
    /// Metrics only, in a registry of its own; nothing exported, nothing audited.
    pub fn off() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let metrics = Metrics::register(&mut registry);
        let other_source = source_counter(&metrics, OTHER_SOURCE);
        Self {
            inner: Arc::new(Inner {
                registry,
                metrics,
                tracing: None,
                audit: None,
                dynamic_metadata: false,
                sources: Vec::new(),
                other_source,
            }),
        }
    }

    /// Everything the configuration asks for: the metrics registry, the OTLP exporter (when
    /// `telemetry.tracing` is set), the audit writer (when `audit.sink` is not `off`). Must run in the
    /// Tokio runtime.
    pub fn start(telemetry: &settings::Telemetry, audit: &settings::Audit) -> Result<Self, String> {
        let mut registry = Registry::with_prefix("baton");
        let metrics = Metrics::register(&mut registry);
        let tracing = trace::start(telemetry)?;
        let audit = audit::Audit::start(audit, metrics.audit_dropped.clone())?;
        let sources = telemetry
            .metric_sources
            .iter()
            .map(|name| (name.clone(), source_counter(&metrics, name)))
            .collect();
        let other_source = source_counter(&metrics, OTHER_SOURCE);
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                metrics,
                tracing,
                audit,
                dynamic_metadata: telemetry.dynamic_metadata,
                sources,
                other_source,
            }),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// One revocation signal: its counter, the gauges of the store, its audit record, its span
    /// (`baton.revocation`, a root span). The selector is shown in the audit as `audit.subject`
    /// says (a session id only as a fingerprint).
    pub fn revocation(
        &self,
        event: &'static str,
        selector: &crate::revocation::Selector,
        outcome: &'static str,
        purged: usize,
        store: &crate::revocation::Store,
    ) {
        self.revocation_in(None, event, selector, outcome, purged, store);
    }

    /// `revocation`, its span a child of `parent` (the trace of the request that caused it).
    pub fn revocation_in(
        &self,
        parent: Option<trace::TraceContext<'_>>,
        event: &'static str,
        selector: &crate::revocation::Selector,
        outcome: &'static str,
        purged: usize,
        store: &crate::revocation::Store,
    ) {
        let metrics = &self.inner.metrics;
        metrics
            .revocations
            .get_or_create(&crate::metrics::RevocationLabels {
                event,
                kind: selector.kind(),
                outcome,
            })
            .inc();
        self.revocation_span(parent, event, selector, outcome, purged);
        self.revocations_held(store);
        if let Some(audit) = &self.inner.audit {
            audit.record_revocation(audit::Revoked {
                time: SystemTime::now(),
                event,
                selector: selector.clone(),
                outcome,
                purged,
            });
        }
    }

    /// The revocation store's size and bound, as gauges (also set on each scrape).
    pub fn revocations_held(&self, store: &crate::revocation::Store) {
        let metrics = &self.inner.metrics;
        metrics
            .revocations_remembered
            .set(i64::try_from(store.len()).unwrap_or(i64::MAX));
        metrics
            .revocations_max
            .set(i64::try_from(store.max_entries()).unwrap_or(i64::MAX));
    }

    /// `/metrics`: the registry as OpenMetrics text.
    pub fn encode_metrics(&self) -> String {
        metrics::encode(&self.inner.registry)
    }

    /// `telemetry.dynamic_metadata`: whether replies carry Baton's Envoy dynamic metadata (built by
    /// `respond`; it costs every request).
    pub fn dynamic_metadata(&self) -> bool {
        self.inner.dynamic_metadata
    }

    /// Start observing one decision: the clock, and the span (a child of the request's trace
    /// context: the gRPC call's (`grpc`, read only when tracing or audit is on), else the request
    /// headers') when tracing is on.
    pub fn observe<'m>(
        &self,
        api: Api,
        grpc: impl FnOnce() -> Option<trace::TraceContext<'m>>,
        headers: Option<Headers<'_>>,
    ) -> Observation<'_> {
        let started = Instant::now();
        let inner = &*self.inner;
        if inner.tracing.is_none() && inner.audit.is_none() {
            // Nothing would use the trace context: do not parse it.
            return Observation {
                telemetry: self,
                api,
                started,
                cx: None,
                trace_id: None,
                job: None,
            };
        }
        let parent = trace::parent(grpc(), headers);
        let (cx, trace_id) = match &inner.tracing {
            Some(tracing) => {
                let parent_cx = match parent {
                    Some(sc) => Context::new().with_remote_span_context(sc),
                    None => Context::new(),
                };
                let span = tracing
                    .tracer
                    .span_builder(api.span_name())
                    .with_kind(SpanKind::Server)
                    .start_with_context(&tracing.tracer, &parent_cx);
                let trace_id = span.span_context().trace_id();
                (Some(parent_cx.with_span(span)), Some(trace_id))
            }
            None => (None, parent.map(|sc| sc.trace_id())),
        };
        Observation {
            telemetry: self,
            api,
            started,
            cx,
            trace_id,
            job: None,
        }
    }

    /// One token exchange, in a client span (child of the decision's span) and counted by outcome;
    /// `exchange::TokenService` puts this span's `traceparent` on its request.
    pub async fn exchange<F, T, E>(&self, route: &Destination, exchange: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        for<'e> Denial: From<&'e E>,
    {
        let started = Instant::now();
        let inner = &*self.inner;
        let service = &route.token_service;
        let result = match &inner.tracing {
            None => exchange.await,
            Some(tracing) => {
                let parent = Context::current();
                let mut attributes = vec![
                    KeyValue::new("baton.destination", route.name.to_string()),
                    KeyValue::new("baton.token_service", service.name().to_owned()),
                    KeyValue::new("url.full", service.locator().to_owned()),
                ];
                attributes.extend(target_attributes(route, None));
                let span = tracing
                    .tracer
                    .span_builder("baton.exchange")
                    .with_kind(SpanKind::Client)
                    .with_attributes(attributes)
                    .start_with_context(&tracing.tracer, &parent);
                let cx = parent.with_span(span);
                let result = exchange.with_context(cx.clone()).await;
                let span = cx.span();
                match &result {
                    Ok(_) => span.set_attribute(KeyValue::new("baton.exchange.outcome", "ok")),
                    Err(e) => {
                        let reason = Denial::from(e).reason.as_str();
                        span.set_attribute(KeyValue::new("baton.exchange.outcome", reason));
                        span.set_status(Status::error(reason));
                    }
                }
                span.end();
                result
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => Denial::from(e).reason.as_str(),
        };
        let m = &inner.metrics;
        let token_service: Arc<str> = Arc::from(service.name());
        m.exchanges
            .get_or_create(&ExchangeLabels {
                token_service: token_service.clone(),
                outcome,
            })
            .inc();
        m.exchange_duration
            .get_or_create(&TokenServiceLabels { token_service })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Export the queued spans and write the queued audit records, each bounded by `grace` (the
    /// exporter also by its own timeout). Blocking: call it from `spawn_blocking` or after serving.
    pub fn shutdown(&self, grace: Duration) {
        if let Some(audit) = &self.inner.audit {
            audit.shutdown(grace);
        }
        if let Some(tracing) = &self.inner.tracing {
            tracing.shutdown();
        }
    }
}

/// The `baton_source_exchanges_total` series of `source`, present (at zero) from the start.
fn source_counter(metrics: &Metrics, source: &str) -> Counter {
    metrics
        .source_exchanges
        .get_or_create(&SourceLabels {
            source: Arc::from(source),
        })
        .clone()
}

impl Inner {
    /// The series a source's exchanges count in: its own if `telemetry.metric_sources` names it.
    fn source_exchanges(&self, source: Option<&str>) -> &Counter {
        source
            .and_then(|s| self.sources.iter().find(|(name, _)| name == s))
            .map_or(&self.other_source, |(_, counter)| counter)
    }
}

/// What `finish` reports: the outcome and the facts around it that it does not carry itself.
#[derive(Debug)]
pub struct Decided<'a> {
    pub outcome: &'a Result<Allow, Denial>,
    /// The configured destination the request was for, when known (see `destination`).
    pub destination: Option<&'a Arc<Destination>>,
    /// The calling workload (Envoy's `source.principal`), if any.
    pub source: Option<&'a str>,
}

/// One decision being observed; `finish` it exactly once.
#[derive(Debug)]
#[must_use = "an observation reports nothing until `finish` is called"]
pub struct Observation<'t> {
    telemetry: &'t Telemetry,
    api: Api,
    started: Instant,
    /// The context holding this decision's span, when tracing.
    cx: Option<Context>,
    trace_id: Option<TraceId>,
    /// The deferred job this decision is for (Defer, Redeem): in the audit record and the span.
    job: Option<Box<str>>,
}

impl Observation<'_> {
    /// Name the deferred job this decision is for (`job` in the audit record, `baton.job` on the span).
    pub fn with_job(mut self, job: &str) -> Self {
        if let (Some(cx), true) = (&self.cx, !job.is_empty()) {
            cx.span().set_attribute(KeyValue::new("baton.job", job.to_owned()));
        }
        self.job = Some(Box::from(job));
        self
    }

    /// Run the decision inside this observation's span, so an exchange it makes is a child span.
    pub fn run<F: Future>(&self, decision: F) -> impl Future<Output = F::Output> {
        match &self.cx {
            Some(cx) => Either::Left(decision.with_context(cx.clone())),
            None => Either::Right(decision),
        }
    }

    /// The trace this decision belongs to, if it arrived with one or is traced.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace_id
    }

    /// Record the decision: metrics always, the span and the audit line when they are on.
    pub fn finish(self, decided: Decided<'_>) {
        let inner = &*self.telemetry.inner;
        let elapsed = self.started.elapsed();
        let decision = decision_name(decided.outcome);
        let (reason, delegated, cache) = match decided.outcome {
            Ok(Allow::Delegate { token, cache, .. }) => (None, Some(token), Some(*cache)),
            Ok(_) => (None, None, None),
            Err(denial) => (Some(denial.reason), None, None),
        };
        let m = &inner.metrics;
        m.decisions
            .get_or_create(&DecisionLabels {
                api: self.api.as_str(),
                decision,
                reason: reason.map_or("none", |r| r.as_str()),
                destination: DestinationLabel(decided.destination.map(|d| d.name.clone())),
            })
            .inc();
        // Indexes in declaration order: Api check, ext_proc, broker, in_proxy, ext_authz_http; CacheStatus hit, miss, coalesced.
        let api = (self.api as usize, self.api.as_str());
        let cache_label = cache.map_or((0, "none"), |c| (c as usize + 1, c.as_str()));
        m.decision_duration(api, cache_label).observe(elapsed.as_secs_f64());
        if let Some(cache) = cache {
            m.cache_request((cache as usize, cache.as_str())).inc();
            if cache == CacheStatus::Miss {
                inner.source_exchanges(decided.source).inc();
            }
        }
        if let (Some(cx), Some(tracing)) = (&self.cx, &inner.tracing) {
            let span = cx.span();
            if span.is_recording() {
                let mut attributes = vec![
                    KeyValue::new("baton.api", self.api.as_str()),
                    KeyValue::new("baton.decision", decision),
                ];
                if let Some(reason) = reason {
                    attributes.push(KeyValue::new("baton.reason", reason.as_str()));
                }
                if let Some(cache) = cache {
                    attributes.push(KeyValue::new("baton.cache", cache.as_str()));
                }
                if let Some(source) = decided.source {
                    attributes.push(KeyValue::new("baton.source", source.to_owned()));
                }
                if let Some(route) = decided.destination {
                    attributes.push(KeyValue::new("baton.destination", route.name.to_string()));
                    attributes.push(KeyValue::new(
                        "baton.token_service",
                        route.token_service.name().to_owned(),
                    ));
                    attributes.extend(target_attributes(route, delegated.map(|d| &**d)));
                }
                if let Some(d) = delegated {
                    attributes.extend(delegated_attributes(d, tracing.subject));
                }
                span.set_attributes(attributes);
                if reason.is_some_and(|r| r.class() == Class::Unavailable) {
                    span.set_status(Status::error(reason.map_or("", |r| r.as_str())));
                }
            }
            span.end();
        }
        if let Some(audit) = &inner.audit {
            audit.record(audit::Entry {
                time: SystemTime::now(),
                api: self.api.as_str(),
                decision,
                reason,
                trace_id: self.trace_id,
                source: decided.source.map(str::to_owned),
                destination: decided.destination.cloned(),
                delegated: delegated.cloned(),
                cache,
                job: self.job.clone(),
            });
        }
    }
}

fn strings(values: impl Iterator<Item = String>) -> Value {
    Value::Array(Array::String(values.map(StringValue::from).collect()))
}

fn split_scopes(scope: Option<&str>) -> impl Iterator<Item = String> + '_ {
    scope
        .into_iter()
        .flat_map(|s| s.split(' '))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// What is asked for a destination: audience, resource, scopes (as asked, when a token was: the
/// policy may narrow the configured ones).
fn target_attributes(route: &Destination, delegated: Option<&Delegated>) -> Vec<KeyValue> {
    let t = &route.target;
    let scope = delegated
        .and_then(|d| d.claims().requested_scope)
        .or(t.scope.as_deref());
    let mut out = Vec::with_capacity(3);
    if let Some(audience) = &t.audience {
        out.push(KeyValue::new("baton.audience", audience.clone()));
    }
    if let Some(resource) = &t.resource {
        out.push(KeyValue::new("baton.resource", resource.clone()));
    }
    out.push(KeyValue::new("baton.scopes.requested", strings(split_scopes(scope))));
    out
}

/// Who and what: subject, the delegation chain, the issued token's `jti` and `exp`.
fn delegated_attributes(d: &Delegated, subject: SubjectMode) -> Vec<KeyValue> {
    let c = d.claims();
    let actors = d.actors();
    let mut out = Vec::with_capacity(8);
    if let Some(iss) = c.subject_iss {
        out.push(KeyValue::new("baton.subject.iss", iss.to_string()));
    }
    if let Some(sub) = c.subject_sub {
        let sub = match subject {
            SubjectMode::Plain => sub.to_string(),
            SubjectMode::Hashed => fingerprint(sub),
        };
        out.push(KeyValue::new("baton.subject.sub", sub));
    }
    out.push(KeyValue::new(
        "baton.delegation.actors",
        strings(actors.iter().map(|a| a.to_string())),
    ));
    out.push(KeyValue::new("baton.delegation.depth", actors.len() as i64));
    out.push(KeyValue::new("baton.delegation.chain_verified", d.chain_verified()));
    out.push(KeyValue::new(
        "baton.scopes.granted",
        strings(split_scopes(d.scope().or(c.scope))),
    ));
    if let Some(jti) = c.jti {
        out.push(KeyValue::new("baton.issued.jti", jti.to_string()));
    }
    if let Some(exp) = c.exp {
        out.push(KeyValue::new("baton.issued.exp", exp));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::settings::{AuditSink, OtlpProtocol};
    use super::*;
    use crate::cache::{CacheStatus, Lifetimes};
    use crate::exchange::{Target, TokenService};
    use crate::jwt::DelegationClaims;
    use crate::secret::Secret;
    use baton_decide::reason::Reason;

    const BASE: &str = "token_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: c\n  auth:\n    method: none\ndestinations:\n  - name: orders\n    hosts: [orders]\n    audience: https://orders.example\n    scopes: [orders.read, orders.list]\n";

    fn config(extra: &str) -> Result<crate::config::Config, baton_decide::settings::ConfigError> {
        crate::config::Config::from_yaml(&format!("{BASE}{extra}"))
    }

    #[test]
    fn telemetry_and_audit_are_off_by_default() {
        let config = config("").expect("valid");
        assert!(config.telemetry.tracing.is_none());
        assert_eq!(config.telemetry.service_name, "baton");
        assert_eq!(config.audit.sink, AuditSink::Off);
        assert!(!config.telemetry.dynamic_metadata);
    }

    #[test]
    fn replies_carry_envoy_metadata_only_when_configured() {
        for (extra, on) in [
            ("", false),
            ("telemetry:\n  dynamic_metadata: false\n", false),
            ("telemetry:\n  dynamic_metadata: true\n", true),
        ] {
            let config = config(extra).expect("valid");
            let telemetry = Telemetry::start(&config.telemetry, &config.audit).expect("start");
            assert_eq!(telemetry.dynamic_metadata(), on, "{extra:?}");
        }
        assert!(config("telemetry:\n  dynamic_metadata: sometimes\n").is_err());
    }

    #[test]
    fn the_documented_telemetry_sections_parse() {
        let key_file = std::env::temp_dir().join(format!("baton-otlp-key-{}", std::process::id()));
        std::fs::write(&key_file, "k3y-from-a-file\n").expect("write");
        let config = config(&format!(
            r#"telemetry:
  service_name: baton-orders
  tracing:
    endpoint: http://otel-collector:4318
    protocol: http_protobuf
    headers:
      - name: X-Tenant
        value: team-a
      - name: authorization
        value_file: {}
    sampler_ratio: 0.25
    timeout: 3s
    subject: hashed
audit:
  sink: file
  path: /var/log/baton/audit.log
  max_bytes: 10485760
  max_files: 3
  subject: plain
"#,
            key_file.display()
        ))
        .expect("valid");
        let _ = std::fs::remove_file(&key_file);
        let t = config.telemetry.tracing.expect("tracing");
        assert_eq!(config.telemetry.service_name, "baton-orders");
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.sampler_ratio, 0.25);
        assert_eq!(t.timeout, Duration::from_secs(3));
        assert_eq!(t.subject, SubjectMode::Hashed);
        assert_eq!(t.headers[0].0, "x-tenant");
        assert_eq!(t.headers[1].1.expose(), "k3y-from-a-file");
        assert_eq!(
            config.audit.sink,
            AuditSink::File {
                path: "/var/log/baton/audit.log".into(),
                max_bytes: 10_485_760,
                max_files: 3
            }
        );
    }

    #[test]
    fn every_telemetry_error_is_reported_with_its_path() {
        let err = config(
            r#"telemetry:
  service_name: ""
  tracing:
    sampler_ratio: 1.5
    timeout: 0s
    headers:
      - name: "bad header"
        value: x
      - name: x-key
        value: a
        value_env: B
      - name: x-other
        value_env: BATON_TEST_SURELY_UNSET_VARIABLE
audit:
  sink: file
  max_files: 0
  max_bytes: 10
  buffer: 0
"#,
        )
        .expect_err("invalid");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "telemetry.service_name",
            "telemetry.tracing.endpoint",
            "telemetry.tracing.sampler_ratio",
            "telemetry.tracing.timeout",
            "telemetry.tracing.headers[0].name",
            "telemetry.tracing.headers[1].value",
            "telemetry.tracing.headers[2].value_env",
            "audit.path",
            "audit.max_files",
            "audit.max_bytes",
            "audit.buffer",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
        let err = config("telemetry:\n  tracing:\n    endpoint: http://c:4317\n    protocol: thrift\n")
            .expect_err("bad enum");
        assert!(err.to_string().contains("thrift"), "{err}");
    }

    #[test]
    fn header_values_never_appear_in_errors() {
        let err = config(
            "telemetry:\n  tracing:\n    endpoint: nope\n    headers:\n      - name: authorization\n        value: \"Bearer sup3r-s3cret\\x7f\"\n",
        )
        .expect_err("invalid");
        assert!(!err.to_string().contains("sup3r"), "{err}");
        assert!(err.to_string().contains("telemetry.tracing.headers[0].value"), "{err}");
    }

    /// The `orders` destination of `BASE`, compiled as `authz` does.
    fn orders() -> Arc<Destination> {
        let config = config("").expect("valid");
        let service = TokenService::new(&config.token_services[0]).expect("client");
        let d = &config.destinations[0];
        let target = Target {
            audience: d.audience.clone(),
            resource: None,
            scope: Some(d.scopes.join(" ")),
            requested_token_type: None,
            subject_token_type: config.subject_token.token_type,
            actor: None,
        };
        Arc::new(Destination::new(
            d.name.as_str().into(),
            target,
            d.scopes.clone(),
            Arc::new(baton_decide::policy::Policy::default()),
            false,
            Arc::new(service),
        ))
    }

    fn delegated() -> Arc<Delegated> {
        let claims = DelegationClaims {
            subject_iss: Some("https://idp.example".into()),
            subject_sub: Some("alice".into()),
            jti: Some("jti-1".into()),
            exp: Some(1_700_000_300),
            scope: None,
            requested_scope: Some("orders.read".into()),
        };
        let delegated = Delegated::new(
            Secret::new("issued.token.value"),
            "Bearer".into(),
            None,
            Some("orders.read".into()),
            Lifetimes {
                expires_in: Some(300),
                ..Default::default()
            },
            Duration::from_secs(30),
            1_700_000_000,
        )
        .with_claims(claims)
        .with_actors(vec!["spiffe://cluster/ns/a/sa/frontend".into()]);
        Arc::new(delegated)
    }

    #[tokio::test]
    async fn a_finished_observation_moves_the_metrics_once() {
        let telemetry = &Telemetry::off();
        let route = orders();
        for cache in [CacheStatus::Miss, CacheStatus::Hit, CacheStatus::Hit] {
            let observation = telemetry.observe(Api::Check, || None, None);
            let outcome = Ok(Allow::Delegate {
                destination: route.clone(),
                token: delegated(),
                cache,
                key: None,
                bound: None,
            });
            observation.finish(Decided {
                outcome: &outcome,
                destination: Some(&route),
                source: None,
            });
        }
        let observation = telemetry.observe(Api::Broker, || None, None);
        observation.finish(Decided {
            outcome: &Err(Denial::new(Reason::MalformedToken, "no")),
            destination: None,
            source: None,
        });
        let text = telemetry.encode_metrics();
        for line in [
            "baton_checks_total{api=\"check\",decision=\"delegate\",reason=\"none\",destination=\"orders\"} 3",
            "baton_checks_total{api=\"broker\",decision=\"deny\",reason=\"malformed_token\",destination=\"unknown\"} 1",
            "baton_cache_requests_total{result=\"hit\"} 2",
            "baton_cache_requests_total{result=\"miss\"} 1",
            "baton_check_duration_seconds_count{api=\"check\",cache=\"hit\"} 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    /// Exchanges (cache misses) count by the source named in `telemetry.metric_sources`; any other
    /// source, or none, counts as `other` and never becomes a label.
    #[tokio::test]
    async fn exchanges_count_by_listed_source_and_others_as_other() {
        let frontend = "spiffe://c/ns/shop/sa/frontend";
        let config = config(&format!("telemetry:\n  metric_sources: [\"{frontend}\"]\n")).expect("valid");
        let telemetry = &Telemetry::start(&config.telemetry, &config.audit).expect("start");
        let before = telemetry.encode_metrics();
        assert!(
            before.contains(&format!("baton_source_exchanges_total{{source=\"{frontend}\"}} 0")),
            "{before}"
        );
        let route = orders();
        let stranger = "spiffe://c/ns/elsewhere/sa/stranger";
        for (cache, source) in [
            (CacheStatus::Miss, Some(frontend)),
            (CacheStatus::Hit, Some(frontend)),
            (CacheStatus::Coalesced, Some(frontend)),
            (CacheStatus::Miss, Some(stranger)),
            (CacheStatus::Miss, None),
        ] {
            let observation = telemetry.observe(Api::Check, || None, None);
            let outcome = Ok(Allow::Delegate {
                destination: route.clone(),
                token: delegated(),
                cache,
                key: None,
                bound: None,
            });
            observation.finish(Decided {
                outcome: &outcome,
                destination: Some(&route),
                source,
            });
        }
        let text = telemetry.encode_metrics();
        for line in [
            format!("baton_source_exchanges_total{{source=\"{frontend}\"}} 1"),
            "baton_source_exchanges_total{source=\"other\"} 2".to_owned(),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(!text.contains(stranger), "{text}");
    }
}
