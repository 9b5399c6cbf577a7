//! The filter's plugin configuration: the JSON `baton envoy-config --api wasm` writes from Baton's
//! own file (the destinations' names, hosts and policies, the request-level settings; nothing
//! secret), parsed then validated with every error at once. This module owns that shape; it never
//! reads a file or the network.

use std::time::Duration;

use serde::Deserialize;

use baton_decide::key::{self, Key};
use baton_decide::policy::{Policy, RawPolicy};
use baton_decide::route::Routes;
use baton_decide::settings::{ConfigError, Errors, duration};

/// Default `max_entries`: tokens cached per Envoy worker.
pub const DEFAULT_MAX_ENTRIES: usize = 1024;
/// The most `max_entries` may be (each entry holds a token and up to 8 KiB of claims).
pub const MAX_ENTRIES: usize = 100_000;

/// The plugin configuration as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    pub destinations: Vec<RawDestination>,
    /// Whether the sidecar verifies subject tokens (`trusted_issuers`): the policies are compiled
    /// as the sidecar compiles them.
    pub verified: bool,
    /// `strip` (default), `passthrough` or `deny`, as the sidecar's `unknown_destination`.
    pub unknown_destination: Option<String>,
    /// `deny` (default) or `passthrough`, as the sidecar's `missing_token`.
    pub missing_token: Option<String>,
    /// `subject_token.max_bytes` (default 16384).
    pub max_token_bytes: Option<usize>,
    /// `workload_identity`: the calling workload the policies see.
    pub workload_identity: Option<String>,
    /// The Envoy cluster that reaches the Baton sidecar's gRPC listener.
    pub sidecar_cluster: String,
    /// How long a call to the sidecar may take (default 1s).
    pub timeout: Option<String>,
    /// How often the filter asks the sidecar's revocation epoch (default 1s).
    pub epoch_tick: Option<String>,
    pub max_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDestination {
    pub name: String,
    pub hosts: Vec<String>,
    pub policy: RawPolicy,
}

/// What happens to a request no destination matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    Strip,
    Passthrough,
    Deny,
}

/// A destination as the filter judges it.
#[derive(Debug)]
pub struct Destination {
    /// Shared with each verdict that names it (a reference count per request, not a copy).
    pub name: std::sync::Arc<str>,
    pub policy: Policy,
    /// The filter's share of its cache key (a digest of the destination's name).
    pub params: Key,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Settings {
    pub routes: Routes<Destination>,
    pub unknown: Unknown,
    pub missing_token_passthrough: bool,
    pub max_token_bytes: usize,
    pub source: Option<String>,
    pub sidecar_cluster: String,
    pub timeout: Duration,
    pub epoch_tick: Duration,
    pub max_entries: usize,
}

impl Settings {
    /// Parse the plugin configuration (JSON) and validate it.
    pub fn from_json(text: &[u8]) -> Result<Self, ConfigError> {
        let raw: Raw = serde_json::from_slice(text).map_err(|e| {
            ConfigError(vec![baton_decide::settings::FieldError {
                path: "plugin_config".to_owned(),
                message: e.to_string(),
            }])
        })?;
        raw.validate()
    }
}

impl Raw {
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let mut errors = Errors::default();
        let unknown = match self.unknown_destination.as_deref() {
            None | Some("strip") => Unknown::Strip,
            Some("passthrough") => Unknown::Passthrough,
            Some("deny") => Unknown::Deny,
            Some(other) => {
                errors.add(
                    "unknown_destination",
                    format!("`{other}` is not strip, passthrough or deny"),
                );
                Unknown::Strip
            }
        };
        let missing_token_passthrough = match self.missing_token.as_deref() {
            None | Some("deny") => false,
            Some("passthrough") => true,
            Some(other) => {
                errors.add("missing_token", format!("`{other}` is not deny or passthrough"));
                false
            }
        };
        // A cluster name goes into a GrpcService message the filter writes by hand (one length byte).
        if self.sidecar_cluster.is_empty()
            || self.sidecar_cluster.len() > 100
            || !self
                .sidecar_cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            errors.add(
                "sidecar_cluster",
                "must be an Envoy cluster name of 1-100 characters from [A-Za-z0-9_.:-]",
            );
        }
        let timeout = duration(self.timeout.as_deref(), "timeout", Duration::from_secs(1), &mut errors);
        let epoch_tick = duration(
            self.epoch_tick.as_deref(),
            "epoch_tick",
            Duration::from_secs(1),
            &mut errors,
        );
        for (field, value) in [("timeout", timeout), ("epoch_tick", epoch_tick)] {
            if value < Duration::from_millis(10) || value > Duration::from_secs(60) {
                errors.add(field, "must be between 10ms and 60s");
            }
        }
        let max_entries = self.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
        if max_entries == 0 || max_entries > MAX_ENTRIES {
            errors.add("max_entries", format!("must be between 1 and {MAX_ENTRIES}"));
        }
        let max_token_bytes = self.max_token_bytes.unwrap_or(key::PLUGIN_DEFAULT_MAX_TOKEN_BYTES);
        if max_token_bytes == 0 {
            errors.add("max_token_bytes", "must be at least 1");
        }
        let mut names = std::collections::HashSet::new();
        let mut entries = Vec::with_capacity(self.destinations.len());
        for (i, d) in self.destinations.into_iter().enumerate() {
            let at = format!("destinations[{i}]");
            if d.name.is_empty() || !names.insert(d.name.clone()) {
                errors.add(format!("{at}.name"), "must be a unique, non-empty name");
            }
            for (j, host) in d.hosts.iter().enumerate() {
                if let Err(e) = baton_decide::canonical::host_pattern(host) {
                    errors.add(format!("{at}.hosts[{j}]"), format!("`{host}`: {e}"));
                }
            }
            let policy = d.policy.compile(&format!("{at}.policy"), self.verified, &mut errors);
            let params = key::params_digest(&["baton.wasm", &d.name]);
            entries.push((
                d.name.clone(),
                d.hosts,
                Destination {
                    name: d.name.into(),
                    policy,
                    params,
                },
            ));
        }
        if !errors.0.is_empty() {
            return Err(ConfigError(errors.0));
        }
        Ok(Settings {
            routes: Routes::new(entries),
            unknown,
            missing_token_passthrough,
            max_token_bytes,
            source: self.workload_identity,
            sidecar_cluster: self.sidecar_cluster,
            timeout,
            epoch_tick,
            max_entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_reported_at_once_with_its_path() {
        let raw = br#"{"sidecar_cluster":"bad name","timeout":"forever","max_entries":0,
            "unknown_destination":"maybe","destinations":[{"name":"a","hosts":["*bad*"]},{"name":"a"}]}"#;
        let err = Settings::from_json(raw).expect_err("invalid");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "sidecar_cluster",
            "timeout",
            "max_entries",
            "unknown_destination",
            "destinations[0].hosts[0]",
            "destinations[1].name",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Settings::from_json(br#"{"sidecar_cluster":"baton","client_secret":"x"}"#).is_err());
    }
}
