//! What Envoy learns about a decision besides the verdict: `dynamic_metadata` on the reply, which
//! Envoy stores under the filter's name (`envoy.filters.http.ext_authz`, or `envoy.filters.http.ext_proc`)
//! so its access log can print it, e.g. `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:audience)%`.
//! Keys: `decision`, `destination`, `audience`, `cache`, `reason`, `jti`; a key without a value is left out.
//! Never a token.

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use crate::authz::{Allow, Route};
use crate::reason::Denial;

/// The metadata for `outcome`; `destination` is the resolved destination when the outcome does not
/// carry it (a denial after the destination was known).
pub fn dynamic_metadata(outcome: &Result<Allow, Denial>, destination: Option<&Route>) -> Struct {
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
            if let Some(jti) = &token.claims.jti {
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
