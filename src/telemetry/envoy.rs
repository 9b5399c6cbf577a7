//! What Envoy learns about a decision besides the verdict: `dynamic_metadata` on the reply, which
//! its access log can print, e.g. `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:audience)%`. Only
//! with `telemetry.dynamic_metadata: true` (`Telemetry::envoy_metadata`): it costs every request.
//! ext_authz stores a CheckResponse's under its own name; ext_proc stores each top-level key of a
//! ProcessingResponse's as a namespace (and only those its `metadata_options.receiving_namespaces`
//! allows), so Baton puts its keys under `envoy.filters.http.ext_proc` there. Keys: `decision`,
//! `destination`, `audience`, `cache`, `reason`, `jti`; a key without a value is left out. Never a
//! token.

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use crate::decision::{Allow, Destination};
use crate::reason::Denial;

/// The namespace Baton's ext_proc replies write (Envoy must list it in
/// `metadata_options.receiving_namespaces.untyped`).
pub const EXT_PROC_NAMESPACE: &str = "envoy.filters.http.ext_proc";

/// For a ProcessingResponse: `dynamic_metadata` under `EXT_PROC_NAMESPACE`.
pub fn ext_proc_metadata(outcome: &Result<Allow, Denial>, destination: Option<&Destination>) -> Struct {
    let inner = dynamic_metadata(outcome, destination);
    let mut fields = std::collections::HashMap::with_capacity(1);
    fields.insert(
        EXT_PROC_NAMESPACE.to_owned(),
        Value {
            kind: Some(Kind::StructValue(inner)),
        },
    );
    Struct { fields }
}

/// The metadata for `outcome`; `destination` is the resolved destination when the outcome does not
/// carry it (a denial after the destination was known).
pub fn dynamic_metadata(outcome: &Result<Allow, Denial>, destination: Option<&Destination>) -> Struct {
    let mut fields = std::collections::HashMap::with_capacity(5);
    let mut put = |key: &str, value: &str| {
        fields.insert(
            key.to_owned(),
            Value {
                kind: Some(Kind::StringValue(value.to_owned())),
            },
        );
    };
    put("decision", super::decision_name(outcome));
    let route = match outcome {
        Ok(Allow::Delegate {
            destination,
            token,
            cache,
        }) => {
            put("cache", cache.as_str());
            if let Some(jti) = token.claims().jti {
                put("jti", jti);
            }
            Some(&**destination)
        }
        Err(denial) => {
            put("reason", denial.reason.as_str());
            destination
        }
        Ok(_) => destination,
    };
    if let Some(route) = route {
        put("destination", &route.name);
        if let Some(audience) = &route.target.audience {
            put("audience", audience);
        }
    }
    Struct { fields }
}
