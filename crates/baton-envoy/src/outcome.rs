//! The one path every Envoy question takes once its request is extracted, shared by ext_authz
//! Check (`server`) and ext_proc: observe -> decide -> log -> respond -> finish. It owns the order of
//! those steps and nothing else: the decision is `authz`'s, the reply `respond`'s (passed in, so
//! this module never builds an Envoy message itself), the reporting `telemetry`'s. It never logs a
//! token.

use std::sync::Arc;

use envoy_types::pb::google::protobuf::Struct;

use crate::respond;
use baton_core::authz::Authz;
use baton_core::decision::{Allow, Destination};
use baton_core::telemetry::trace::TraceContext;
use baton_core::telemetry::{Api, Decided};
use baton_decide::reason::Denial;
use baton_decide::request::Outbound;

/// One decision, from the extracted request (or why it could not be read) to the reply: observed
/// (span, metrics, audit line), logged, answered by `reply` (`respond::check_reply` or
/// `respond::request_headers_reply`, given the outcome and Baton's Envoy dynamic metadata) and
/// finished. `metadata` is the gRPC call's, where
/// Envoy puts the `traceparent` of its own span.
pub(crate) async fn decide<R>(
    authz: &Authz,
    api: Api,
    metadata: &tonic::metadata::MetadataMap,
    outbound: Result<&Outbound<'_>, &Denial>,
    reply: fn(&Result<Allow, Denial>, Option<Struct>) -> R,
) -> R {
    decide_traced(authz, api, || trace_context(metadata), outbound, reply).await
}

/// `decide`, with the trace context of the call read by `trace` (ext_authz over HTTP has no gRPC
/// metadata: Envoy's span context is among the request's headers).
pub(crate) async fn decide_traced<'m, R>(
    authz: &Authz,
    api: Api,
    trace: impl FnOnce() -> Option<TraceContext<'m>>,
    outbound: Result<&Outbound<'_>, &Denial>,
    reply: impl FnOnce(&Result<Allow, Denial>, Option<Struct>) -> R,
) -> R {
    let observation = authz.telemetry().observe(api, trace, outbound.ok().map(|o| o.headers));
    let outcome = match outbound {
        Ok(outbound) => observation.run(authz.decide(outbound)).await,
        Err(denial) => Err(denial.clone()),
    };
    log(api, &outcome);
    let destination = destination(authz, outbound.ok(), &outcome);
    let envoy_metadata = authz
        .telemetry()
        .dynamic_metadata()
        .then(|| respond::dynamic_metadata(api, &outcome, destination.map(|d| &**d)));
    let response = reply(&outcome, envoy_metadata);
    observation.finish(Decided {
        outcome: &outcome,
        destination,
        source: outbound
            .ok()
            .and_then(|o| o.source_principal)
            .or(authz.workload_identity()),
    });
    response
}

/// The trace context of a gRPC call: Envoy's span for its call to Baton, when Envoy traces (or the
/// broker caller's). Values that are not visible ASCII are ignored.
pub(crate) fn trace_context(metadata: &tonic::metadata::MetadataMap) -> Option<TraceContext<'_>> {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    Some(TraceContext {
        traceparent: text("traceparent")?,
        tracestate: text("tracestate"),
    })
}

/// Where the request was going: the delegated destination, or, for other outcomes, the configured
/// destination the request names (none for an unknown host).
fn destination<'a>(
    authz: &'a Authz,
    outbound: Option<&Outbound<'_>>,
    outcome: &'a Result<Allow, Denial>,
) -> Option<&'a Arc<Destination>> {
    match outcome {
        Ok(Allow::Delegate { destination, .. }) => Some(destination),
        _ => outbound.and_then(|o| authz.destination_of(o)),
    }
}

fn log(api: Api, outcome: &Result<Allow, Denial>) {
    let api = api.as_str();
    match outcome {
        Ok(Allow::Delegate {
            destination,
            token,
            cache,
            ..
        }) => {
            tracing::debug!(api, destination = %destination.name, cache = cache.as_str(), issued = %token.fingerprint(), "delegated");
        }
        Ok(Allow::Strip) => tracing::debug!(api, "unknown destination: authorization stripped"),
        Ok(Allow::Passthrough) => tracing::debug!(api, "passed through"),
        Err(denial) => tracing::info!(api, reason = denial.reason.as_str(), "denied: {}", denial.description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_calls_trace_context_is_read_from_its_metadata() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert!(trace_context(&metadata).is_none(), "no traceparent, no context");
        metadata.insert("tracestate", "vendor=1".parse().expect("ascii"));
        assert!(trace_context(&metadata).is_none(), "a tracestate alone is no context");
        metadata.insert("traceparent", TP.parse().expect("ascii"));
        let context = trace_context(&metadata).expect("context");
        assert_eq!((context.traceparent, context.tracestate), (TP, Some("vendor=1")));
        // Not visible ASCII: ignored, never an error.
        let opaque = tonic::metadata::MetadataValue::try_from(&b"00-\xff"[..]).expect("obs-text is a valid value");
        metadata.insert("traceparent", opaque);
        assert!(trace_context(&metadata).is_none());
    }
}
