//! The decision's configuration: every section the decision reads (token services, cache, subject
//! token, destinations, trusted issuers, introspection, workload, actor, broker callers, telemetry,
//! audit), each parsed and validated by the module that owns it, gathered here with the checks that
//! span sections (a destination's or introspection's token service exists, the broker's caller
//! audience is one an issuer accepts). Every problem is reported at once, each with the path of its
//! field. It knows no section's insides, never reads a file, and never logs a secret. The whole file
//! (these sections and the serving ones) is `crate::file`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::files::parse_yaml;
use crate::settings::{ConfigError, Errors};

// === The YAML shape ===

/// The decision's sections, as YAML. `file::RawConfig` lists them again beside the serving ones
/// (`listen:`, `reload:`, `shutdown_grace:`) and moves them here.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// The token service named `default`; `token_services` may add (or be) others.
    pub token_service: Option<crate::token_service::Raw>,
    pub token_services: BTreeMap<String, crate::token_service::Raw>,
    pub cache: crate::cache::Raw,
    pub subject_token: crate::verify::RawSubjectToken,
    pub unknown_destination: UnknownDestination,
    pub missing_token: MissingToken,
    pub destinations: Vec<crate::destination::Raw>,
    pub trusted_issuers: Vec<crate::verify::RawIssuer>,
    pub opaque_tokens: crate::verify::OpaqueTokens,
    pub introspection: Option<crate::verify::RawIntrospection>,
    pub workload: RawWorkload,
    pub actor: Option<crate::actor::RawActor>,
    /// Absent: the broker API is off.
    pub broker: Option<crate::callers::Raw>,
    pub telemetry: crate::telemetry::settings::RawTelemetry,
    pub audit: crate::telemetry::settings::RawAudit,
}

/// `workload:`: who this Baton acts for, in sidecar mode.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWorkload {
    /// The calling workload's identity (e.g. its SPIFFE ID), used as the policy's `source` when
    /// Envoy reports no source principal.
    pub identity: Option<String>,
}

/// What to do with a request whose destination is not configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownDestination {
    /// Remove `Authorization` and let the request go: a user token never reaches an unlisted host.
    #[default]
    Strip,
    /// Refuse with 403 `destination_unknown`.
    Deny,
    /// Leave the request as it is (the user's token goes with it).
    Passthrough,
}

/// What to do with a request to a configured destination that carries no `Authorization`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingToken {
    /// Refuse with 401 `missing_token`.
    #[default]
    Deny,
    /// Let it go without a token.
    Passthrough,
}

// === The validated configuration ===

#[derive(Debug)]
pub struct Config {
    /// At least one; names are unique.
    pub token_services: Vec<crate::token_service::Settings>,
    pub cache: crate::cache::Settings,
    pub subject_token: crate::verify::SubjectToken,
    pub unknown_destination: UnknownDestination,
    pub missing_token: MissingToken,
    pub destinations: Vec<crate::destination::Settings>,
    pub trusted_issuers: Vec<crate::verify::IssuerConfig>,
    pub opaque_tokens: crate::verify::OpaqueTokens,
    pub introspection: Option<crate::verify::IntrospectionConfig>,
    pub workload_identity: Option<String>,
    pub actor: Option<crate::actor::ActorToken>,
    /// `None`: the broker API refuses every call.
    pub broker: Option<crate::callers::Settings>,
    pub telemetry: crate::telemetry::settings::Telemetry,
    pub audit: crate::telemetry::settings::Audit,
}

// === Parsing and validation ===

impl Config {
    /// The decision's sections alone (a file's other sections, such as `listen:`, are unknown
    /// keys here), parsed and validated; every problem is reported, not only the first.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        match parse_yaml::<RawConfig>(text)?.validate(&mut errors) {
            Some(config) if errors.0.is_empty() => Ok(config),
            _ => Err(ConfigError(errors.0)),
        }
    }
}

impl RawConfig {
    /// The decision's sections, their problems added to `errors`; `None` when a token service is
    /// invalid (the configuration is unusable then even if nothing else is wrong).
    pub fn validate(self, errors: &mut Errors) -> Option<Config> {
        let token_services = crate::token_service::validate(self.token_service, self.token_services, errors);
        let cache = self.cache.validate(errors);
        let subject_token = self.subject_token.validate(errors);
        let trusted_issuers: Vec<_> = self
            .trusted_issuers
            .into_iter()
            .enumerate()
            .filter_map(|(i, raw)| raw.validate(&format!("trusted_issuers[{i}]"), errors))
            .collect();
        let introspection = crate::verify::introspection(self.opaque_tokens, self.introspection, errors).filter(|i| {
            let known = token_services.get(&i.token_service).is_some();
            if !known {
                let names = token_services.names();
                errors.add(
                    "introspection.token_service",
                    format!(
                        "`{}` is not a configured token service (there are: {names})",
                        i.token_service
                    ),
                );
            }
            known
        });
        // Claims the policy reads come from Baton's own verification or from introspection.
        let verified = !trusted_issuers.is_empty() || introspection.is_some();
        let actor = self.actor.and_then(|a| a.validate(errors));
        let broker = self.broker.map(|b| {
            let audiences = crate::verify::audiences(&trusted_issuers);
            b.validate(&audiences, verified, errors)
        });
        let destinations = crate::destination::validate(self.destinations, verified, errors);
        check_token_services(&destinations, &token_services, actor.is_some(), errors);
        let (telemetry, audit) = (self.telemetry.validate(errors), self.audit.validate(errors));
        Some(Config {
            token_services: token_services.valid()?,
            cache,
            subject_token,
            unknown_destination: self.unknown_destination,
            missing_token: self.missing_token,
            destinations,
            trusted_issuers,
            opaque_tokens: self.opaque_tokens,
            introspection,
            workload_identity: self.workload.identity,
            actor,
            broker,
            telemetry,
            audit,
        })
    }
}

/// Each destination's token service is configured, and what it asks for that service can give
/// (spans `destinations:` and the token services).
fn check_token_services(
    destinations: &[crate::destination::Settings],
    services: &crate::token_service::Checked,
    has_actor: bool,
    errors: &mut Errors,
) {
    for (i, d) in destinations.iter().enumerate() {
        let at = |field: &str| format!("destinations[{i}].{field}");
        let token_service = &d.token_service;
        match services.get(token_service) {
            None if !services.is_empty() => errors.add(
                at("token_service"),
                format!(
                    "`{token_service}` is not a configured token service (there are: {})",
                    services.names()
                ),
            ),
            Some(Some(ts)) if ts.profile == crate::token_service::Profile::EntraObo => {
                if d.requested_token_type.is_some() {
                    errors.add(
                    at("requested_token_type"),
                    format!(
                        "token service `{token_service}` uses the entra_obo profile, which has no requested_token_type"
                    ),
                );
                }
                // Entra's on-behalf-of request has no actor token: say so rather than drop it.
                if has_actor && d.actor == crate::destination::DestinationActor::Inherit {
                    errors.add(
                    at("actor"),
                    format!(
                        "token service `{token_service}` uses the entra_obo profile, which cannot present an actor token: set `actor: none`"
                    ),
                );
                }
            }
            _ => {}
        }
    }
}
