//! Prometheus metrics, served on the admin listener at `/metrics` (OpenMetrics text). Every metric is
//! registered into the `Registry` passed to `Metrics::register`; there are no globals. Label values
//! come from configuration (destination names, the token service's address) or from fixed sets
//! (decisions, reason codes, cache results): never from a request, so cardinality stays bounded and
//! no user id or token can become a label.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// A Check, ext_proc or broker decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `check`, `ext_proc` or `broker`.
    pub api: &'static str,
    /// `delegate`, `strip`, `passthrough` or `deny`.
    pub decision: &'static str,
    /// A reason code, or `none` for an allowed request.
    pub reason: &'static str,
    pub destination: DestinationLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub api: &'static str,
    /// `hit`, `miss`, `coalesced`, ... or `none` when no token was delegated.
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    pub token_service: Arc<str>,
    /// `ok`, or the reason code the failure maps to (`token_service_timeout`, `target_refused`, ...).
    pub outcome: &'static str,
}

/// The `source` label of a source `telemetry.metric_sources` does not name (or of a request with none).
pub const OTHER_SOURCE: &str = "other";

/// The calling workload of a request: a source named in `telemetry.metric_sources`, or `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenServiceLabels {
    pub token_service: Arc<str>,
}

/// A token service's circuit breaker, in one of its states.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CircuitStateLabels {
    pub token_service: Arc<str>,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CircuitTransitionLabels {
    pub token_service: Arc<str>,
    /// The state entered: `closed`, `open` or `half_open`.
    pub to: &'static str,
}

/// One revocation signal: what it named, and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevocationLabels {
    /// Where the signal came from: `operator`, `invalid_token` (a destination's 401), ...
    pub event: &'static str,
    /// `subject`, `session`, `all`, `destination`, `served`, `job` (a deferred job) or `email`.
    pub kind: &'static str,
    /// `ok`, or `full` (the store is at `revocation.max_entries`: not remembered, nothing purged).
    pub outcome: &'static str,
}

/// One Shared Signals event (a SET, or one event of it) and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SsfEventLabels {
    /// The event type's short name (`session-revoked`, ...), `unknown` for one Baton does not act
    /// on, `none` for a SET refused before its events were read.
    pub event: &'static str,
    /// `revoked`, `ignored`, `replayed`, `full`, or an RFC 8935 error code (`invalid_key`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// A configured destination's name, or `unknown`: a route or host that names no configured
/// destination is never copied into a label.
#[derive(Clone, Debug)]
pub struct DestinationLabel(pub Option<Arc<str>>);

impl DestinationLabel {
    fn name(&self) -> &str {
        self.0.as_deref().unwrap_or("unknown")
    }
}

impl PartialEq for DestinationLabel {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for DestinationLabel {}

impl Hash for DestinationLabel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl EncodeLabelValue for DestinationLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.name(), encoder)
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric Baton exports. Cloning shares the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub decisions: Family<DecisionLabels, Counter>,
    pub decision_duration: Histograms<DurationLabels>,
    pub cache_requests: Family<CacheLabels, Counter>,
    pub cache_entries: Gauge,
    pub exchanges: Family<ExchangeLabels, Counter>,
    pub exchange_duration: Histograms<TokenServiceLabels>,
    /// Exchanges that issued a token, by the source whose request caused them.
    pub source_exchanges: Family<SourceLabels, Counter>,
    /// For the JWKS cache (subject-token verification) to count its fetches.
    pub jwks_refreshes: Family<OutcomeLabels, Counter>,
    /// For configuration reloads to count themselves.
    pub config_reloads: Family<OutcomeLabels, Counter>,
    /// 1 when the last configuration reload succeeded (or none was tried yet), 0 when it was refused:
    /// what an alert asks, which the reload counters cannot answer once both have moved.
    pub config_last_reload_ok: Gauge,
    pub audit_dropped: Counter,
    /// 1 for each token service's current circuit-breaker state, 0 for the others.
    pub circuit_state: Family<CircuitStateLabels, Gauge>,
    pub circuit_transitions: Family<CircuitTransitionLabels, Counter>,
    pub revocations: Family<RevocationLabels, Counter>,
    /// Revocations remembered, and their bound (`revocation.max_entries`).
    pub revocations_remembered: Gauge,
    pub revocations_max: Gauge,
    /// Back-channel logout requests by outcome: `ok`, or a `logout::Refusal` code.
    pub backchannel_logouts: Family<OutcomeLabels, Counter>,
    /// Shared Signals events received (`ssf`), by event type and outcome.
    pub ssf_events: Family<SsfEventLabels, Counter>,
    /// Shared Signals poll requests (RFC 8936), by outcome.
    pub ssf_polls: Family<OutcomeLabels, Counter>,
    /// The series every delegated decision updates, looked up once each.
    hot: Arc<HotSeries>,
}

/// Handles to the decision-duration and cache-result series, filled on first use (so a series
/// still appears only once it has a value). `Family::get_or_create` hashes the label set under a
/// lock on every call; a cache hit would pay that twice for labels from a fixed set.
#[derive(Debug, Default)]
struct HotSeries {
    /// By `api` (check, ext_proc, broker, in_proxy, ext_authz_http), then `cache` (none, hit, miss, coalesced).
    durations: [[OnceLock<Histogram>; 4]; API_SLOTS],
    /// By result: hit, miss, coalesced.
    cache_requests: [OnceLock<Counter>; 3],
}

/// The decision-duration series' slots by API: one per `telemetry::Api` (checked where it is declared).
pub const API_SLOTS: usize = 5;

/// 10 us to 2.5 s: a cache hit is microseconds, a miss is an exchange.
fn decision_histogram() -> Histogram {
    Histogram::new([
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5,
    ])
}

/// 1 ms to 10 s: a token exchange over the network, bounded by `token_service.timeout`.
fn exchange_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    /// Register every metric into `registry` (names get the registry's prefix, `baton_` in Baton).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            decisions: Family::default(),
            decision_duration: Family::new_with_constructor(decision_histogram),
            cache_requests: Family::default(),
            cache_entries: Gauge::default(),
            exchanges: Family::default(),
            exchange_duration: Family::new_with_constructor(exchange_histogram),
            source_exchanges: Family::default(),
            jwks_refreshes: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_ok: Gauge::default(),
            audit_dropped: Counter::default(),
            circuit_state: Family::default(),
            circuit_transitions: Family::default(),
            revocations: Family::default(),
            revocations_remembered: Gauge::default(),
            revocations_max: Gauge::default(),
            backchannel_logouts: Family::default(),
            ssf_events: Family::default(),
            ssf_polls: Family::default(),
            hot: Arc::default(),
        };
        registry.register(
            "checks",
            "Delegation decisions (Check, ext_proc, broker) by decision, reason code and destination",
            metrics.decisions.clone(),
        );
        registry.register_with_unit(
            "check_duration",
            "Time to decide, from the request's arrival to the answer",
            Unit::Seconds,
            metrics.decision_duration.clone(),
        );
        registry.register(
            "cache_requests",
            "Token lookups by result: hit, miss (this request exchanged), coalesced (waited for another's exchange)",
            metrics.cache_requests.clone(),
        );
        registry.register(
            "cache_entries",
            "Tokens in the cache (approximate)",
            metrics.cache_entries.clone(),
        );
        registry.register(
            "exchanges",
            "Token exchanges by token service and outcome (ok or a reason code)",
            metrics.exchanges.clone(),
        );
        registry.register_with_unit(
            "exchange_duration",
            "Time of one token exchange, retries included",
            Unit::Seconds,
            metrics.exchange_duration.clone(),
        );
        registry.register(
            "source_exchanges",
            "Token exchanges that issued a token, by the calling workload (named in telemetry.metric_sources, else other)",
            metrics.source_exchanges.clone(),
        );
        registry.register(
            "jwks_refreshes",
            "JWKS fetches by outcome",
            metrics.jwks_refreshes.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by outcome",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried yet), 0 if it was refused",
            metrics.config_last_reload_ok.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit records dropped because the writer could not keep up or failed",
            metrics.audit_dropped.clone(),
        );
        registry.register(
            "circuit_breaker_state",
            "1 for each token service's current circuit-breaker state (closed, open, half_open), 0 for the others",
            metrics.circuit_state.clone(),
        );
        registry.register(
            "circuit_breaker_transitions",
            "Circuit-breaker state changes by token service and the state entered",
            metrics.circuit_transitions.clone(),
        );
        registry.register(
            "revocations",
            "Revocation signals by event (operator, invalid_token, ...), kind (subject, session, all, destination, served) and outcome (ok, full)",
            metrics.revocations.clone(),
        );
        registry.register(
            "revocations_remembered",
            "Revocations remembered, each until revocation.remember has passed",
            metrics.revocations_remembered.clone(),
        );
        registry.register(
            "revocations_max",
            "The most revocations remembered at once (revocation.max_entries)",
            metrics.revocations_max.clone(),
        );
        registry.register(
            "backchannel_logouts",
            "OpenID Connect back-channel logout requests by outcome (ok, or the refusal's code)",
            metrics.backchannel_logouts.clone(),
        );
        registry.register(
            "ssf_events",
            "Shared Signals events (SETs) received by event type (session-revoked, ..., unknown, none) and outcome (revoked, ignored, replayed, full, or the RFC 8935 error code)",
            metrics.ssf_events.clone(),
        );
        registry.register(
            "ssf_polls",
            "Shared Signals poll requests to the transmitter by outcome (ok, error)",
            metrics.ssf_polls.clone(),
        );
        registry.register(
            "build",
            "Baton's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        // Present at zero from the start, so a dashboard or an alert sees them before the first event.
        for outcome in ["ok", "error"] {
            let _ = metrics.jwks_refreshes.get_or_create(&OutcomeLabels { outcome });
            let _ = metrics.config_reloads.get_or_create(&OutcomeLabels { outcome });
        }
        let _ = metrics.source_exchanges.get_or_create(&SourceLabels {
            source: Arc::from(OTHER_SOURCE),
        });
        // The configuration Baton started with is good: it would not have started otherwise.
        metrics.config_last_reload_ok.set(1);
        metrics
    }
}

impl Metrics {
    /// `check_duration` for `api` (its index in check, ext_proc, broker, in_proxy, ext_authz_http) and `cache` (none, hit,
    /// miss, coalesced: its index and label).
    pub fn decision_duration(&self, api: (usize, &'static str), cache: (usize, &'static str)) -> &Histogram {
        self.hot.durations[api.0][cache.0].get_or_init(|| {
            self.decision_duration
                .get_or_create(&DurationLabels {
                    api: api.1,
                    cache: cache.1,
                })
                .clone()
        })
    }

    /// `cache_requests` for a cache result (its index in hit, miss, coalesced, and its label).
    pub fn cache_request(&self, result: (usize, &'static str)) -> &Counter {
        self.hot.cache_requests[result.0].get_or_init(|| {
            self.cache_requests
                .get_or_create(&CacheLabels { result: result.1 })
                .clone()
        })
    }
}

/// The registry's text: OpenMetrics 1.0, which Prometheus scrapes.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_units_and_labels_are_as_documented() {
        let mut registry = Registry::with_prefix("baton");
        let metrics = Metrics::register(&mut registry);
        metrics
            .decisions
            .get_or_create(&DecisionLabels {
                api: "check",
                decision: "deny",
                reason: "missing_token",
                destination: DestinationLabel(None),
            })
            .inc();
        metrics
            .decision_duration
            .get_or_create(&DurationLabels {
                api: "check",
                cache: "hit",
            })
            .observe(0.00002);
        let text = encode(&registry);
        for line in [
            "baton_checks_total{api=\"check\",decision=\"deny\",reason=\"missing_token\",destination=\"unknown\"} 1",
            "baton_check_duration_seconds_bucket{le=\"0.000025\",api=\"check\",cache=\"hit\"} 1",
            "baton_jwks_refreshes_total{outcome=\"ok\"} 0",
            "baton_build_info{version=\"",
            "baton_cache_entries 0",
            "baton_config_last_reload_successful 1",
            "baton_source_exchanges_total{source=\"other\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
