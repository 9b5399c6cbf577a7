//! A circuit breaker for one token service: when most recent calls failed, Baton answers 503
//! `token_service_circuit_open` at once instead of piling more calls onto a service that is down,
//! and after `open_for` lets a single probe through to learn whether it is back. This module owns
//! the state and the rolling count of outcomes; it never sleeps, spawns a task or holds its lock
//! across an await: time is read on the request path.
//!
//! What counts (decided in `exchange::TokenService`): every call to the token service, that is
//! token exchanges, client_credentials grants (actor tokens) and RFC 7662 introspection (of opaque
//! subject tokens and of job grants), one outcome per call with its retries. They go to one
//! authorization server, so they share its health, and an open breaker holds back each of them.
//! A failure is what says the service is unhealthy (unreachable, timeout, 5xx, an unusable answer);
//! any answer a healthy service gives (an OAuth refusal, another 4xx) is a success; Baton's own
//! bounds and a service's request to pause (429, `Retry-After`) count for nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::time::Instant;

use crate::metrics::{CircuitStateLabels, CircuitTransitionLabels, Metrics};
use baton_decide::settings::{Errors, optional_duration};

/// The rolling window is kept as this many buckets, each a tenth of it: outcomes leave the count
/// a bucket at a time.
const BUCKETS: usize = 10;

/// `token_service.circuit_breaker:` (and each `token_services.<name>.circuit_breaker:`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Default true.
    pub enabled: Option<bool>,
    /// Open when at least this share of the window's outcomes failed (default 0.5).
    pub failure_ratio: Option<f64>,
    /// ... and the window holds at least this many outcomes (default 20).
    pub min_requests: Option<u32>,
    /// How far back outcomes count (default 10s).
    pub window: Option<String>,
    /// How long to answer at once before a probe (default 5s).
    pub open_for: Option<String>,
}

/// When a breaker opens, and for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }
}

impl RawCircuitBreaker {
    /// The settings, or `None` when the breaker is turned off; errors go to `errors` under `at`.
    pub fn validate(self, at: &str, errors: &mut Errors) -> Option<Settings> {
        let defaults = Settings::default();
        let failure_ratio = self.failure_ratio.unwrap_or(defaults.failure_ratio);
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            errors.add(format!("{at}.failure_ratio"), "must be more than 0 and at most 1");
        }
        let min_requests = self.min_requests.unwrap_or(defaults.min_requests);
        if !(1..=10_000).contains(&min_requests) {
            errors.add(format!("{at}.min_requests"), "must be between 1 and 10000");
        }
        let mut span = |text: Option<String>, field: &str, default: Duration| {
            let path = format!("{at}.{field}");
            match optional_duration(text.as_deref(), &path, errors) {
                None => default,
                Some(d) if (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&d) => d,
                Some(_) => {
                    errors.add(path, "must be between 100ms and 10m");
                    default
                }
            }
        };
        let window = span(self.window, "window", defaults.window);
        let open_for = span(self.open_for, "open_for", defaults.open_for);
        self.enabled.unwrap_or(true).then_some(Settings {
            failure_ratio,
            min_requests,
            window,
            open_for,
        })
    }
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are refused at once, until `open_for` has passed.
    Open,
    /// One probe is (or may be) on its way; every other call is refused at once.
    HalfOpen,
}

impl State {
    pub const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// How one call went, as far as the service's health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The service answered as a healthy one does (a token or a refusal).
    Healthy,
    /// Unreachable, too slow, 5xx, or an answer that cannot be used.
    Failed,
    /// Says nothing about the service (a local bound, a pause it asked for): not counted.
    Neutral,
}

/// The breaker is open (or probing): the call was not made. `retry_in`: until it lets a probe
/// through (while a probe is out, `PROBE_WAIT`), for the caller's `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub retry_in: Duration,
}

/// What a rejected caller is told to wait while a probe is out: its answer decides soon.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// One token service's circuit breaker. A disabled one lets every call through and counts nothing.
#[derive(Debug)]
pub struct Breaker {
    token_service: Arc<str>,
    settings: Option<Settings>,
    inner: Mutex<Inner>,
    report: OnceLock<Report>,
    /// Replaced by a reload's breaker: its transitions no longer move the shared series.
    retired: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped at every transition: an outcome admitted under an earlier one is not counted.
    generation: u64,
    window: Window,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What a transition reports once the lock is released.
#[derive(Debug)]
struct Transition {
    to: State,
    failed: u32,
    total: u32,
    /// Decided by the half-open probe.
    probe: bool,
}

impl Breaker {
    /// `settings: None` is a breaker that is turned off.
    pub fn new(token_service: &str, settings: Option<Settings>) -> Self {
        let bucket = settings
            .as_ref()
            .map_or(Duration::from_secs(1), |s| s.window / BUCKETS as u32);
        Self {
            token_service: Arc::from(token_service),
            settings,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                generation: 0,
                window: Window::new(Instant::now(), bucket),
            }),
            report: OnceLock::new(),
            retired: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.is_some()
    }

    pub fn settings(&self) -> Option<&Settings> {
        self.settings.as_ref()
    }

    /// A reload replaced or removed this breaker: calls still in flight may finish here, but it
    /// no longer moves the series (all states 0, until a successor reports its own).
    pub fn retire(&self) {
        let _inner = self.lock();
        self.retired.store(true, Ordering::Relaxed);
        if let Some(report) = self.report.get() {
            for gauge in &report.state {
                gauge.set(0);
            }
        }
    }

    /// Report the state and the transitions into `metrics` (the first call wins). A disabled
    /// breaker has no series.
    pub fn report_to(&self, metrics: &Metrics) {
        if !self.enabled() {
            return;
        }
        let state = |s: State| {
            metrics.circuit_state.get_or_create(&CircuitStateLabels {
                token_service: self.token_service.clone(),
                state: s.as_str(),
            })
        };
        let transition = |s: State| {
            metrics.circuit_transitions.get_or_create(&CircuitTransitionLabels {
                token_service: self.token_service.clone(),
                to: s.as_str(),
            })
        };
        let report = Report {
            state: State::ALL.map(|s| state(s).clone()),
            transitions: State::ALL.map(|s| transition(s).clone()),
        };
        let inner = self.lock();
        report.set_state(inner.phase.state());
        let _ = self.report.set(report);
    }

    /// The current state, as of `now` (an elapsed `open_for` reads as half-open).
    pub fn state_at(&self, now: Instant) -> State {
        match self.lock().phase {
            Phase::Open { until } if now >= until => State::HalfOpen,
            phase => phase.state(),
        }
    }

    /// May a call be made now? The ticket records how it went.
    pub fn admit(&self) -> Result<Ticket<'_>, Rejected> {
        self.admit_at(Instant::now())
    }

    pub fn admit_at(&self, now: Instant) -> Result<Ticket<'_>, Rejected> {
        if self.settings.is_none() {
            return Ok(self.ticket(0, false));
        }
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => Ok(self.ticket(inner.generation, false)),
            Phase::Open { until } if now < until => Err(Rejected { retry_in: until - now }),
            Phase::Open { .. } => {
                let generation = self.enter(&mut inner, Phase::HalfOpen { probing: true });
                drop(inner);
                tracing::info!(token_service = %self.token_service, "circuit half-open: probing the token service");
                Ok(self.ticket(generation, true))
            }
            Phase::HalfOpen { probing: true } => Err(Rejected { retry_in: PROBE_WAIT }),
            Phase::HalfOpen { probing: false } => {
                inner.phase = Phase::HalfOpen { probing: true };
                Ok(self.ticket(inner.generation, true))
            }
        }
    }

    fn ticket(&self, generation: u64, probe: bool) -> Ticket<'_> {
        Ticket {
            breaker: self,
            generation,
            probe,
            recorded: false,
        }
    }

    fn record_at(&self, generation: u64, probe: bool, outcome: Outcome, now: Instant) {
        let Some(settings) = &self.settings else { return };
        let mut inner = self.lock();
        if inner.generation != generation {
            // Admitted before the last transition: its outcome belongs to a state that is gone.
            return;
        }
        let transition = match (inner.phase, outcome) {
            (Phase::HalfOpen { .. }, Outcome::Neutral) if probe => {
                // The probe learned nothing: the next call probes.
                inner.phase = Phase::HalfOpen { probing: false };
                None
            }
            (Phase::HalfOpen { .. }, Outcome::Healthy) if probe => {
                self.enter(&mut inner, Phase::Closed);
                Some(Transition {
                    to: State::Closed,
                    failed: 0,
                    total: 1,
                    probe: true,
                })
            }
            (Phase::HalfOpen { .. }, Outcome::Failed) if probe => {
                self.enter(
                    &mut inner,
                    Phase::Open {
                        until: now + settings.open_for,
                    },
                );
                Some(Transition {
                    to: State::Open,
                    failed: 1,
                    total: 1,
                    probe: true,
                })
            }
            (Phase::Closed, Outcome::Healthy) => {
                inner.window.add(now, false);
                None
            }
            (Phase::Closed, Outcome::Failed) => {
                inner.window.add(now, true);
                let (failed, total) = inner.window.totals(now);
                if total >= settings.min_requests && f64::from(failed) >= settings.failure_ratio * f64::from(total) {
                    self.enter(
                        &mut inner,
                        Phase::Open {
                            until: now + settings.open_for,
                        },
                    );
                    Some(Transition {
                        to: State::Open,
                        failed,
                        total,
                        probe: false,
                    })
                } else {
                    None
                }
            }
            _ => None,
        };
        drop(inner);
        if let Some(t) = transition {
            self.log(&t, settings);
        }
    }

    /// An unrecorded probe (its call was dropped): let the next call probe.
    fn abandon(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation && matches!(inner.phase, Phase::HalfOpen { .. }) {
            inner.phase = Phase::HalfOpen { probing: false };
        }
    }

    /// Move to `phase`, with a fresh window and generation; the metrics follow under the lock, so
    /// the state gauge never lags a later transition.
    fn enter(&self, inner: &mut Inner, phase: Phase) -> u64 {
        inner.phase = phase;
        inner.generation += 1;
        inner.window.clear();
        if let Some(report) = self.report.get()
            && !self.retired.load(Ordering::Relaxed)
        {
            let to = phase.state();
            report.set_state(to);
            report.transitions[to as usize].inc();
        }
        inner.generation
    }

    fn log(&self, t: &Transition, settings: &Settings) {
        match t.to {
            State::Open if t.probe => tracing::warn!(
                token_service = %self.token_service,
                open_for = ?settings.open_for,
                "circuit open again: the probe failed"
            ),
            State::Open => tracing::warn!(
                token_service = %self.token_service,
                failed = t.failed,
                of = t.total,
                window = ?settings.window,
                open_for = ?settings.open_for,
                "circuit open: the token service is failing, calls are refused at once"
            ),
            State::Closed => {
                tracing::info!(token_service = %self.token_service, "circuit closed: the token service answered the probe")
            }
            State::HalfOpen => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a few plain values, consistent after any panic: a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Phase {
    const fn state(self) -> State {
        match self {
            Self::Closed => State::Closed,
            Self::Open { .. } => State::Open,
            Self::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

/// Leave to make one call; say how it went with `record`. Dropped unrecorded, it counts for
/// nothing (and frees the probe's turn).
#[derive(Debug)]
#[must_use = "record the call's outcome"]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    generation: u64,
    probe: bool,
    recorded: bool,
}

impl Ticket<'_> {
    pub fn record(self, outcome: Outcome) {
        self.record_at(outcome, Instant::now());
    }

    pub fn record_at(mut self, outcome: Outcome, now: Instant) {
        self.recorded = true;
        self.breaker.record_at(self.generation, self.probe, outcome, now);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.abandon(self.generation);
        }
    }
}

// === Window ===

/// Outcomes of the last `BUCKETS` buckets: (epoch, failed, total) each, epoch being the bucket's
/// number since `start`.
#[derive(Debug)]
struct Window {
    start: Instant,
    bucket: Duration,
    buckets: [(u64, u32, u32); BUCKETS],
}

impl Window {
    fn new(start: Instant, bucket: Duration) -> Self {
        Self {
            start,
            bucket: bucket.max(Duration::from_millis(1)),
            buckets: [(0, 0, 0); BUCKETS],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_nanos() / self.bucket.as_nanos()) as u64
    }

    fn add(&mut self, now: Instant, failed: bool) {
        let epoch = self.epoch(now);
        let slot = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if slot.0 != epoch {
            *slot = (epoch, 0, 0);
        }
        slot.1 = slot.1.saturating_add(u32::from(failed));
        slot.2 = slot.2.saturating_add(1);
    }

    /// (failed, total) in the window ending at `now`.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let epoch = self.epoch(now);
        self.buckets
            .iter()
            .filter(|(e, ..)| *e <= epoch && epoch - *e < BUCKETS as u64)
            .fold((0, 0), |(f, t), (_, failed, total)| {
                (f.saturating_add(*failed), t.saturating_add(*total))
            })
    }

    fn clear(&mut self) {
        self.buckets = [(0, 0, 0); BUCKETS];
    }
}

// === Metrics ===

/// The breaker's series, one per state, resolved once.
#[derive(Debug)]
struct Report {
    state: [Gauge; 3],
    transitions: [Counter; 3],
}

impl Report {
    fn set_state(&self, current: State) {
        for s in State::ALL {
            self.state[s as usize].set(i64::from(s == current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            failure_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }

    fn call(b: &Breaker, outcome: Outcome, at: Instant) -> Result<(), Rejected> {
        b.admit_at(at)?.record_at(outcome, at);
        Ok(())
    }

    #[test]
    fn opens_at_the_failure_ratio_once_enough_outcomes_are_seen() {
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        // Three failures: 100 %, but fewer than min_requests.
        for _ in 0..3 {
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        assert_eq!(b.state_at(t0), State::Closed);
        // A success: 3 of 4 failed, still closed until the next failure is recorded.
        call(&b, Outcome::Healthy, t0).expect("closed");
        assert_eq!(b.state_at(t0), State::Closed);
        call(&b, Outcome::Failed, t0).expect("closed");
        assert_eq!(b.state_at(t0), State::Open);
        let open_for = Duration::from_secs(5);
        assert_eq!(b.admit_at(t0).map(drop), Err(Rejected { retry_in: open_for }));
    }

    #[test]
    fn below_the_ratio_it_stays_closed() {
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        for _ in 0..10 {
            call(&b, Outcome::Healthy, t0).expect("closed");
            call(&b, Outcome::Healthy, t0).expect("closed");
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        assert_eq!(b.state_at(t0), State::Closed);
    }

    #[test]
    fn refusals_and_local_bounds_do_not_count() {
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        for _ in 0..50 {
            call(&b, Outcome::Neutral, t0).expect("closed");
        }
        // Neutral outcomes add nothing to min_requests: three failures are still too few.
        for _ in 0..3 {
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        assert_eq!(b.state_at(t0), State::Closed);
    }

    #[test]
    fn failures_leave_the_window() {
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        for _ in 0..3 {
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        // Eleven seconds later those three are out of the 10 s window: one more is 1 of 1.
        let later = t0 + Duration::from_secs(11);
        call(&b, Outcome::Failed, later).expect("closed");
        assert_eq!(b.state_at(later), State::Closed);
        // Within the window they add up.
        for _ in 0..3 {
            call(&b, Outcome::Failed, later + Duration::from_secs(1)).expect("closed");
        }
        assert_eq!(b.state_at(later + Duration::from_secs(1)), State::Open);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_closes_on_its_success() {
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        for _ in 0..4 {
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        let almost = t0 + Duration::from_millis(4999);
        let retry_in = Duration::from_millis(1);
        assert_eq!(b.admit_at(almost).map(drop), Err(Rejected { retry_in }), "open for 5 s");
        let after = t0 + Duration::from_secs(5);
        assert_eq!(b.state_at(after), State::HalfOpen);
        let probe = b.admit_at(after).expect("the probe");
        let probing = Rejected { retry_in: PROBE_WAIT };
        assert_eq!(b.admit_at(after).map(drop), Err(probing), "one probe at a time");
        probe.record_at(Outcome::Healthy, after);
        assert_eq!(b.state_at(after), State::Closed);
        // Closed again with an empty window: old failures do not reopen it.
        call(&b, Outcome::Failed, after).expect("closed");
        assert_eq!(b.state_at(after), State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_open_for() {
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        for _ in 0..4 {
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        let t1 = t0 + Duration::from_secs(6);
        call(&b, Outcome::Failed, t1).expect("the probe goes");
        assert_eq!(b.state_at(t1), State::Open);
        let retry_in = Duration::from_millis(1);
        assert_eq!(
            b.admit_at(t1 + Duration::from_millis(4999)).map(drop),
            Err(Rejected { retry_in })
        );
        call(&b, Outcome::Healthy, t1 + Duration::from_secs(5)).expect("the next probe");
        assert_eq!(b.state_at(t1 + Duration::from_secs(5)), State::Closed);
    }

    #[test]
    fn a_probe_that_learns_nothing_or_is_dropped_passes_the_turn() {
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        for _ in 0..4 {
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        let t1 = t0 + Duration::from_secs(5);
        call(&b, Outcome::Neutral, t1).expect("the probe");
        assert_eq!(b.state_at(t1), State::HalfOpen);
        drop(b.admit_at(t1).expect("the next probe"));
        assert_eq!(b.state_at(t1), State::HalfOpen);
        call(&b, Outcome::Healthy, t1).expect("a third probe");
        assert_eq!(b.state_at(t1), State::Closed);
    }

    #[test]
    fn outcomes_admitted_before_a_transition_are_ignored() {
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        // A slow call admitted while closed...
        let slow = b.admit_at(t0).expect("closed");
        for _ in 0..4 {
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        let t1 = t0 + Duration::from_secs(5);
        let probe = b.admit_at(t1).expect("the probe");
        // ... ends while the probe is out: neither closes nor reopens the breaker.
        slow.record_at(Outcome::Healthy, t1);
        assert_eq!(b.state_at(t1), State::HalfOpen);
        let probing = Rejected { retry_in: PROBE_WAIT };
        assert_eq!(b.admit_at(t1).map(drop), Err(probing), "the probe still has the turn");
        probe.record_at(Outcome::Failed, t1);
        assert_eq!(b.state_at(t1), State::Open);
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        let t0 = Instant::now();
        let b = Breaker::new("default", None);
        for _ in 0..100 {
            call(&b, Outcome::Failed, t0).expect("always admitted");
        }
        assert_eq!(b.state_at(t0), State::Closed);
    }

    #[test]
    fn transitions_are_reported_as_metrics() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("baton");
        let metrics = Metrics::register(&mut registry);
        let t0 = Instant::now();
        let b = Breaker::new("default", Some(settings()));
        b.report_to(&metrics);
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains("baton_circuit_breaker_state{token_service=\"default\",state=\"closed\"} 1"),
            "{text}"
        );
        for _ in 0..4 {
            call(&b, Outcome::Failed, t0).expect("closed");
        }
        let text = crate::metrics::encode(&registry);
        for line in [
            "baton_circuit_breaker_state{token_service=\"default\",state=\"open\"} 1",
            "baton_circuit_breaker_state{token_service=\"default\",state=\"closed\"} 0",
            "baton_circuit_breaker_transitions_total{token_service=\"default\",to=\"open\"} 1",
            "baton_circuit_breaker_transitions_total{token_service=\"default\",to=\"closed\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        call(&b, Outcome::Healthy, t0 + Duration::from_secs(5)).expect("the probe");
        let text = crate::metrics::encode(&registry);
        for line in [
            "baton_circuit_breaker_state{token_service=\"default\",state=\"closed\"} 1",
            "baton_circuit_breaker_transitions_total{token_service=\"default\",to=\"half_open\"} 1",
            "baton_circuit_breaker_transitions_total{token_service=\"default\",to=\"closed\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn a_retired_breaker_leaves_the_series_to_its_successor() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("baton");
        let metrics = Metrics::register(&mut registry);
        let t0 = Instant::now();
        let old = Breaker::new("default", Some(settings()));
        old.report_to(&metrics);
        let slow = old.admit_at(t0).expect("closed");
        old.retire();
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains("baton_circuit_breaker_state{token_service=\"default\",state=\"closed\"} 0"),
            "{text}"
        );
        let new = Breaker::new("default", Some(settings()));
        new.report_to(&metrics);
        // The old one still counts its calls in flight, and may even open, but says nothing.
        slow.record_at(Outcome::Failed, t0);
        for _ in 0..3 {
            call(&old, Outcome::Failed, t0).expect("closed");
        }
        assert_eq!(old.state_at(t0), State::Open);
        let text = crate::metrics::encode(&registry);
        for line in [
            "baton_circuit_breaker_state{token_service=\"default\",state=\"closed\"} 1",
            "baton_circuit_breaker_state{token_service=\"default\",state=\"open\"} 0",
            "baton_circuit_breaker_transitions_total{token_service=\"default\",to=\"open\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn settings_validate_with_field_paths() {
        let parse = |yaml: &str| {
            let raw: RawCircuitBreaker = crate::files::parse_yaml(yaml).expect("yaml");
            let mut errors = Errors::default();
            let settings = raw.validate("token_service.circuit_breaker", &mut errors);
            (settings, errors.0.into_iter().map(|e| e.path).collect::<Vec<_>>())
        };
        assert_eq!(parse("{}"), (Some(Settings::default()), vec![]));
        assert_eq!(parse("enabled: false"), (None, vec![]));
        let (_, paths) = parse("failure_ratio: 0\nmin_requests: 0\nwindow: 10ms\nopen_for: soon");
        assert_eq!(
            paths,
            [
                "token_service.circuit_breaker.failure_ratio",
                "token_service.circuit_breaker.min_requests",
                "token_service.circuit_breaker.window",
                "token_service.circuit_breaker.open_for",
            ]
        );
        assert_eq!(
            parse("failure_ratio: 0.25\nmin_requests: 5\nwindow: 30s\nopen_for: 1s").0,
            Some(Settings {
                failure_ratio: 0.25,
                min_requests: 5,
                window: Duration::from_secs(30),
                open_for: Duration::from_secs(1),
            })
        );
    }
}
