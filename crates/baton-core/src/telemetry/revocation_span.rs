//! The `baton.revocation` span: one per revocation signal, beside its audit record and its counter
//! (`Telemetry::revocation`). It says where the signal came from, what kind of selector it named,
//! what became of it and how many entries it purged, and, for a destination's purges, which
//! destination (a configured name). It never carries a token, a subject or a session id: who was
//! revoked is the audit record's to say, as `audit.subject` allows.

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};

use super::Telemetry;
use super::trace::{self, TraceContext};
use crate::revocation::Selector;

impl Telemetry {
    /// Export the span of one revocation signal (when tracing is on): a child of `parent` when the
    /// signal came with a trace context (a request the destination refused), else a root span.
    pub(super) fn revocation_span(
        &self,
        parent: Option<TraceContext<'_>>,
        event: &'static str,
        selector: &Selector,
        outcome: &'static str,
        purged: usize,
    ) {
        let Some(tracing) = &self.inner.tracing else {
            return;
        };
        let parent_cx = match trace::parent(parent, None) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("baton.revocation.event", event),
            KeyValue::new("baton.revocation.kind", selector.kind()),
            KeyValue::new("baton.revocation.outcome", outcome),
            KeyValue::new("baton.revocation.purged", i64::try_from(purged).unwrap_or(i64::MAX)),
        ];
        if let Selector::Destination { name: destination } | Selector::Served { destination } = selector {
            attributes.push(KeyValue::new("baton.destination", destination.clone()));
        }
        let mut span = tracing
            .tracer
            .span_builder("baton.revocation")
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(&tracing.tracer, &parent_cx);
        if outcome != "ok" {
            span.set_status(Status::error(outcome));
        }
        span.end();
    }
}
