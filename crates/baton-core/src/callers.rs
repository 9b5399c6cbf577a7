//! Who may call the broker API (`baton.v1.DelegationBroker`): the `broker:` section and the rule
//! that tells a workload's token from a user's. The decision reads it (`Authz` refuses a caller the
//! rule does not accept), so it lives in the core, not with the gRPC service that serves the API.
//! It never reads a token itself: it only says what a verified caller must carry.

use serde::Deserialize;

use baton_decide::settings::Errors;

/// `broker:`: who may call `baton.v1.DelegationBroker`. Without this section the broker API
/// refuses every call (`broker_disabled`): a sidecar that only serves Envoy exposes no second way
/// to ask for tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    pub callers: BrokerCallers,
    /// `callers: authenticated`: the caller's token must carry this audience in `aud`, one that
    /// names the broker and that user tokens never carry.
    pub caller_audience: Option<String>,
    /// `callers: authenticated`: the caller's token must name one of these clients in `azp` or
    /// `client_id` (a token with neither is not a caller's).
    pub caller_client_ids: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerCallers {
    /// A bearer token in the call's `authorization` metadata, verified against `trusted_issuers`
    /// and accepted only if it meets the caller rule (`caller_audience`, `caller_client_ids`);
    /// its `sub` is the caller (the policy's `source`).
    #[default]
    Authenticated,
    /// Anyone who can reach the listener (development, or a listener only the workload can reach).
    Any,
    /// The verified identity of the caller's TLS client certificate (`listen.grpc_tls`); calls that
    /// did not come over that listener are refused.
    Mtls,
}

/// The validated `broker:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub callers: BrokerCallers,
    /// What tells a workload's token from a user's, under `callers: authenticated`.
    pub rule: CallerRule,
}

/// Both parts that are set must hold: a caller's token carries `audience` (when set) and names a
/// listed client in `azp`/`client_id` (when the list is not empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallerRule {
    pub audience: Option<String>,
    pub client_ids: Vec<String>,
}

impl Raw {
    /// `audiences`: every audience a trusted issuer's tokens may carry, which the caller's token
    /// is verified against before the rule is applied; `verified`: callers' tokens can be verified
    /// at all (trusted issuers or introspection).
    pub(crate) fn validate(self, audiences: &[&str], verified: bool, errors: &mut Errors) -> Settings {
        let rule = CallerRule {
            audience: self.caller_audience,
            client_ids: self.caller_client_ids,
        };
        if let Some(aud) = &rule.audience {
            if aud.is_empty() {
                errors.add("broker.caller_audience", "must not be empty");
            } else if self.callers == BrokerCallers::Authenticated
                && !audiences.is_empty()
                && !audiences.contains(&aud.as_str())
            {
                // The caller's token is verified like a subject token first: an audience no issuer
                // accepts would refuse every caller.
                errors.add(
                    "broker.caller_audience",
                    format!("`{aud}` must also be in a trusted_issuers[].audiences, or no caller's token verifies"),
                );
            }
        }
        for (i, id) in rule.client_ids.iter().enumerate() {
            if id.is_empty() {
                errors.add(format!("broker.caller_client_ids[{i}]"), "must not be empty");
            }
        }
        match self.callers {
            BrokerCallers::Authenticated if !verified => errors.add(
                "broker.callers",
                "`authenticated` verifies each caller's token: configure trusted_issuers (or introspection)",
            ),
            BrokerCallers::Authenticated if rule.audience.is_none() && rule.client_ids.is_empty() => errors.add(
                "broker",
                "`callers: authenticated` needs a rule that tells workloads from users: set `caller_audience` \
                 (an audience only callers' tokens carry), `caller_client_ids` (the clients allowed, by azp or \
                 client_id), or both",
            ),
            // Any other mode (`any`, or a transport identity) never reads a bearer token: a rule
            // there would look like protection and be none.
            callers if callers != BrokerCallers::Authenticated && rule != CallerRule::default() => errors.add(
                "broker",
                "`caller_audience` and `caller_client_ids` apply only to `callers: authenticated`, which reads \
                 the caller's bearer token",
            ),
            _ => {}
        }
        Settings {
            callers: self.callers,
            rule,
        }
    }
}
