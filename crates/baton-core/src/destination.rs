//! A destination: the `destinations:` section (the hosts it answers for, what is asked for it, its
//! policy, its token service, whether the workload's actor token goes along), validated into
//! `Settings`. Host patterns are checked in the canonical form requests are matched in, so two
//! spellings of one host cannot hide a conflict. Whether a named token service exists is checked
//! by `config`, which sees both sections.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::token_service::DEFAULT_TOKEN_SERVICE;
use baton_decide::settings::{Errors, is_scope_token};

/// `destinations[].binding`: how the delegated token is presented to the destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// A DPoP-bound token (RFC 9449): `Authorization: DPoP <token>` and a fresh `DPoP` proof signed
    /// with the workload's key (`dpop:`) on every request.
    Dpop,
}

/// `destinations[].actor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationActor {
    /// Present the workload's actor token when `actor:` is configured.
    #[default]
    Inherit,
    /// Never present an actor token to this destination's exchanges.
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    pub name: String,
    pub hosts: Vec<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scopes: Vec<String>,
    /// The scopes a broker caller may ask for at this destination (default: `scopes`). A broker
    /// call asking for any other scope is refused (`scope_not_allowed`).
    pub broker_allowed_scopes: Option<Vec<String>>,
    pub requested_token_type: Option<String>,
    pub policy: baton_decide::policy::RawPolicy,
    pub actor: DestinationActor,
    /// The name of the token service this destination's tokens come from (default `default`).
    pub token_service: Option<String>,
    /// Verify the issued token's signature against its issuer's keys (`trusted_issuers`) before
    /// it is used, so the chain audited is authenticated (docs/delegation-chains.md).
    pub verify_issued: bool,
    pub binding: Binding,
    /// The scheme the destination sees (`http` or `https`, default `https`): the `htu` of each
    /// request's DPoP proof (`binding: dpop`), which Envoy may have moved to TLS on the way.
    pub upstream_scheme: Option<String>,
}

#[derive(Debug)]
pub struct Settings {
    pub name: String,
    pub hosts: Vec<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scopes: Vec<String>,
    /// What a broker call may ask for instead of `scopes` (a subset of it, never more).
    pub broker_allowed_scopes: Vec<String>,
    pub requested_token_type: Option<String>,
    pub policy: baton_decide::policy::Policy,
    pub actor: DestinationActor,
    /// The name of one of `Config::token_services`.
    pub token_service: String,
    pub verify_issued: bool,
    pub binding: Binding,
    /// `http` or `https`.
    pub upstream_scheme: &'static str,
}

/// Every destination, its problems added to `errors`; `verified`: the subject token's claims are
/// verified (trusted issuers or introspection), so a policy may read them.
pub(crate) fn validate(raw: Vec<Raw>, verified: bool, errors: &mut Errors) -> Vec<Settings> {
    let mut names = HashSet::new();
    let mut hosts = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, d) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("destinations[{i}].{field}");
        if d.name.is_empty() {
            errors.add(at("name"), "is required");
        } else if !names.insert(d.name.clone()) {
            errors.add(at("name"), format!("`{}` is used by an earlier destination", d.name));
        }
        let mut lowered = Vec::with_capacity(d.hosts.len());
        for (j, host) in d.hosts.iter().enumerate() {
            // The same canonical form requests are matched in (lower-case, no trailing dot, one
            // spelling of the port), so two spellings of one host cannot hide a conflict.
            let host = match baton_decide::canonical::host_pattern(host) {
                Ok(pattern) => pattern.to_string(),
                Err(why) => {
                    errors.add(at(&format!("hosts[{j}]")), format!("`{host}` {why}"));
                    continue;
                }
            };
            if !hosts.insert(host.clone()) {
                errors.add(
                    at(&format!("hosts[{j}]")),
                    format!("`{host}` is claimed by an earlier destination"),
                );
            }
            lowered.push(host);
        }
        if d.audience.is_none() && d.resource.is_none() {
            errors.add(at("audience"), "set `audience`, `resource`, or both");
        }
        if d.audience.as_deref() == Some("") {
            errors.add(at("audience"), "must not be empty");
        }
        if let Some(resource) = &d.resource {
            // RFC 8707: an absolute URI without a fragment.
            match Url::parse(resource) {
                Ok(url) if url.fragment().is_none() => {}
                _ => errors.add(at("resource"), "must be an absolute URI without a fragment"),
            }
        }
        for (j, scope) in d.scopes.iter().enumerate() {
            if !is_scope_token(scope) {
                errors.add(at(&format!("scopes[{j}]")), "is not a valid scope token (RFC 6749 3.3)");
            }
        }
        for (j, scope) in d.broker_allowed_scopes.iter().flatten().enumerate() {
            if !is_scope_token(scope) {
                errors.add(
                    at(&format!("broker_allowed_scopes[{j}]")),
                    "is not a valid scope token (RFC 6749 3.3)",
                );
            }
        }
        if let Some(t) = &d.requested_token_type
            && !t.starts_with("urn:")
        {
            errors.add(
                at("requested_token_type"),
                "must be a token type URN (urn:ietf:params:oauth:token-type:...)",
            );
        }
        let policy = d.policy.compile(&at("policy"), verified, errors);
        if d.verify_issued && !verified {
            errors.add(
                at("verify_issued"),
                "verifies with the keys of a trusted issuer: list the token service's issuer in trusted_issuers",
            );
        }
        let upstream_scheme = match d.upstream_scheme.as_deref() {
            None | Some("https") => "https",
            Some("http") => "http",
            Some(_) => {
                errors.add(at("upstream_scheme"), "must be `http` or `https`");
                "https"
            }
        };
        if d.upstream_scheme.is_some() && d.binding != Binding::Dpop {
            errors.add(
                at("upstream_scheme"),
                "is the `htu` of a DPoP proof: set `binding: dpop`",
            );
        }
        let token_service = d.token_service.unwrap_or_else(|| DEFAULT_TOKEN_SERVICE.to_owned());
        out.push(Settings {
            name: d.name,
            hosts: lowered,
            audience: d.audience,
            resource: d.resource,
            broker_allowed_scopes: d.broker_allowed_scopes.unwrap_or_else(|| d.scopes.clone()),
            scopes: d.scopes,
            requested_token_type: d.requested_token_type,
            policy,
            actor: d.actor,
            token_service,
            verify_issued: d.verify_issued,
            binding: d.binding,
            upstream_scheme,
        });
    }
    out
}
