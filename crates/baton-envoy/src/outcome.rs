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
    let observation = authz
        .telemetry()
        .observe(api, metadata, outbound.ok().map(|o| o.headers));
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
        }) => {
            tracing::debug!(api, destination = %destination.name, cache = cache.as_str(), issued = %token.fingerprint(), "delegated");
        }
        Ok(Allow::Strip) => tracing::debug!(api, "unknown destination: authorization stripped"),
        Ok(Allow::Passthrough) => tracing::debug!(api, "passed through"),
        Err(denial) => tracing::info!(api, reason = denial.reason.as_str(), "denied: {}", denial.description),
    }
}
