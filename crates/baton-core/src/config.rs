//! The decision's configuration: every section the decision reads (token services, cache, subject
//! token, destinations, trusted issuers, introspection, workload, actor, broker callers, telemetry,
//! audit), each parsed and validated by the module that owns it, gathered here with the checks that
//! span sections (a destination's or introspection's token service exists, the broker's caller
//! audience is one an issuer accepts). Every problem is reported at once, each with the path of its
//! field. It knows no section's insides, never reads a file, and never logs a secret. The whole file
//! (these sections and the serving ones) is `baton_envoy::file`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::files::parse_yaml;
use baton_decide::settings::{ConfigError, Errors};

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
    pub revocation: crate::revocation::Raw,
    /// Absent: `POST /backchannel-logout` is off (404).
    pub backchannel_logout: Option<crate::logout::Raw>,
    /// Absent: Defer and Redeem are off.
    pub deferred: Option<crate::deferred::Raw>,
    /// Absent: no Shared Signals receiver.
    pub ssf: Option<crate::ssf::Raw>,
    /// The DPoP key (`binding: dpop` destinations) and `bound_subject_tokens`.
    pub dpop: crate::dpop::Raw,
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
    pub revocation: crate::revocation::Settings,
    pub backchannel_logout: Option<crate::logout::Settings>,
    /// `None`: Defer and Redeem refuse every call.
    pub deferred: Option<crate::deferred::Settings>,
    pub ssf: Option<crate::ssf::Settings>,
    pub dpop: crate::dpop::Settings,
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
        let revocation = self.revocation.validate(errors);
        let backchannel_logout = self.backchannel_logout.and_then(|raw| {
            let trusted: Vec<&str> = trusted_issuers.iter().map(|i| i.issuer.as_str()).collect();
            raw.validate(&trusted, errors)
        });
        let deferred = self.deferred.map(|d| {
            let around = crate::deferred::Around {
                trusted_issuers: &trusted_issuers,
                token_services: &token_services,
                broker: broker.as_ref(),
                remember: revocation.remember,
                destinations: &destinations,
                opaque_tokens: self.opaque_tokens,
            };
            d.validate(&around, errors)
        });
        let ssf = self
            .ssf
            .and_then(|s| s.validate(errors))
            .map(|s| s.matching_emails(verified));
        let dpop = self.dpop.validate(errors);
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
            revocation,
            backchannel_logout,
            deferred,
            ssf,
            dpop: dpop?,
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
            // The jwt-bearer grant of identity chaining's second step has no requested_token_type.
            Some(Some(ts))
                if ts.profile == crate::token_service::Profile::IdentityChaining
                    && d.requested_token_type.is_some() =>
            {
                errors.add(
                    at("requested_token_type"),
                    format!("token service `{token_service}` uses the identity_chaining profile, which has no requested_token_type"),
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::callers::{BrokerCallers, CallerRule, Settings as Broker};
    use crate::token_service::{ClientAuth, Profile};
    use std::time::Duration;

    pub(crate) fn secret_file() -> (tempfile_path::TempPath, String) {
        let path = tempfile_path::TempPath::new("secret", "s3cr3t-value\n");
        let p = path.0.display().to_string();
        (path, p)
    }

    /// A file removed when the test ends, without a crate for it.
    pub(crate) mod tempfile_path {
        pub(crate) struct TempPath(pub(crate) std::path::PathBuf);
        impl TempPath {
            pub(crate) fn new(name: &str, contents: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "baton-test-{}-{name}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::write(&path, contents).expect("write temp file");
                Self(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn host_patterns_are_canonical_and_two_spellings_of_one_conflict() {
        let yaml = r#"
token_service: { token_endpoint: http://127.0.0.1:9/token, client_id: c, auth: { method: none } }
destinations:
  - name: orders
    hosts: ["Orders.Local.:8443", "*.Svc.Local."]
    audience: a
  - name: admin
    hosts: ["orders.local:8443", "orders:08443", "[::1", "user@orders"]
    audience: b
"#;
        let err = Config::from_yaml(yaml).expect_err("conflict and malformed patterns");
        let found: Vec<(&str, &str)> = err.0.iter().map(|e| (e.path.as_str(), e.message.as_str())).collect();
        for (path, says) in [
            ("destinations[1].hosts[0]", "claimed by an earlier destination"),
            ("destinations[1].hosts[1]", "port"),
            ("destinations[1].hosts[2]", "IPv6"),
            ("destinations[1].hosts[3]", "character"),
        ] {
            assert!(
                found.iter().any(|(p, m)| *p == path && m.contains(says)),
                "{path}: {says} in {found:?}"
            );
        }
        let ok = Config::from_yaml(&yaml.replace(
            r#"["orders.local:8443", "orders:08443", "[::1", "user@orders"]"#,
            "[admin]",
        ))
        .expect("valid");
        assert_eq!(ok.destinations[0].hosts, ["orders.local:8443", "*.svc.local"]);
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let yaml = "token_service:\n  token_endpoint: http://x/token\n  client_id: c\n  auth:\n    method: client_secret_basic\n    secret_env: BATON_TEST_UNSET_SECRET_VAR\ndestinations:\n  - name: a\n    audience: ''\n";
        let err = Config::from_yaml(yaml).expect_err("invalid").to_string();
        assert!(err.contains("BATON_TEST_UNSET_SECRET_VAR"), "{err}");
        let (_guard, secret) = secret_file();
        let yaml = format!(
            "token_service:\n  token_endpoint: http://x/token\n  client_id: c\n  auth:\n    method: client_secret_basic\n    secret_file: {secret}\ncache:\n  expiry_margin: nope\n"
        );
        let err = Config::from_yaml(&yaml).expect_err("invalid").to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn secret_files_are_read_within_a_bound() {
        let big = tempfile_path::TempPath::new("big-secret", &"s".repeat(64 * 1024 + 1));
        for (path, why) in [
            (big.0.display().to_string(), "larger than 65536 bytes"),
            ("/dev/zero".to_owned(), "larger than 65536 bytes"),
        ] {
            let yaml = format!(
                "token_service:\n  token_endpoint: http://x/token\n  client_id: c\n  auth:\n    method: client_secret_basic\n    secret_file: {path}\n"
            );
            let err = Config::from_yaml(&yaml).expect_err("too large").to_string();
            assert!(
                err.contains("token_service.auth.secret_file") && err.contains(why),
                "{err}"
            );
            assert!(!err.contains("sss"), "{err}");
        }
    }

    #[test]
    fn several_token_services_each_serve_the_destinations_that_name_them() {
        let (_guard, secret) = secret_file();
        let yaml = format!(
            r#"
token_service:
  token_endpoint: http://127.0.0.1:9400/token
  client_id: sidecar
  auth: {{method: client_secret_basic, secret_file: {secret}}}
token_services:
  entra:
    issuer: https://login.microsoftonline.com/tenant/v2.0
    client_id: 00000000-0000-0000-0000-000000000001
    profile: entra_obo
    auth: {{method: client_secret_post, secret_file: {secret}}}
destinations:
  - name: orders
    hosts: [orders]
    audience: https://orders.example
  - name: graph
    hosts: [graph.microsoft.com]
    audience: https://graph.microsoft.com
    token_service: entra
"#
        );
        let config = Config::from_yaml(&yaml).expect("valid");
        let names: Vec<&str> = config.token_services.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["default", "entra"]);
        assert_eq!(config.token_services[1].profile, Profile::EntraObo);
        assert_eq!(config.destinations[0].token_service, "default");
        assert_eq!(config.destinations[1].token_service, "entra");

        // Only `token_services:`: a destination must name one that exists, or `default` must exist.
        let yaml = r#"
token_services:
  a: {token_endpoint: "http://a/token", client_id: x, auth: {method: none}}
  "bad name": {token_endpoint: "http://b/token", client_id: y, auth: {method: none}}
destinations:
  - {name: one, hosts: [one], audience: one, token_service: a}
  - {name: two, hosts: [two], audience: two, token_service: nope}
  - {name: three, hosts: [three], audience: three}
"#;
        let err = Config::from_yaml(yaml).expect_err("unknown names");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "token_services.bad name",
                "destinations[1].token_service",
                "destinations[2].token_service"
            ],
            "{err}"
        );
        assert!(
            err.to_string().contains("`nope` is not a configured token service"),
            "{err}"
        );
    }

    #[test]
    fn token_service_errors_carry_the_service_name_and_default_is_taken_once() {
        let (_guard, secret) = secret_file();
        let yaml = format!(
            r#"
token_service:
  token_endpoint: http://127.0.0.1:9400/token
  client_id: sidecar
  auth: {{method: client_secret_basic, secret_file: {secret}}}
token_services:
  default: {{token_endpoint: "http://a/token", client_id: x, auth: {{method: none}}}}
  entra:
    token_endpoint: http://entra/token
    profile: entra_obo
    auth: {{method: tls_client_auth}}
    timeout: 0s
  files:
    token_endpoint: http://files/token
    client_id: f
    ca_file: /nonexistent/ca.pem
    auth: {{method: jwt_bearer_assertion_file, assertion_file: /nonexistent/token}}
destinations:
  - name: graph
    hosts: [graph]
    audience: https://graph.microsoft.com
    requested_token_type: urn:ietf:params:oauth:token-type:jwt
    token_service: entra
"#
        );
        let err = Config::from_yaml(&yaml).expect_err("invalid");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "token_services.default",
            "token_services.entra.client_id",
            "token_services.entra.auth",
            "token_services.entra.timeout",
            "token_services.files.auth.assertion_file",
            "token_services.files.ca_file",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
        let err = Config::from_yaml(
            "token_services: {}
",
        )
        .expect_err("none");
        assert!(err.0.iter().any(|e| e.path == "token_service"), "{err}");
    }

    #[test]
    fn each_token_service_has_its_own_circuit_breaker_settings() {
        let yaml = r#"
token_service:
  token_endpoint: http://127.0.0.1:9400/token
  client_id: sidecar
  auth: {method: none}
token_services:
  quiet:
    token_endpoint: http://quiet/token
    client_id: q
    auth: {method: none}
    circuit_breaker: {enabled: false}
  tuned:
    token_endpoint: http://tuned/token
    client_id: t
    auth: {method: none}
    circuit_breaker: {failure_ratio: 0.25, min_requests: 5, window: 30s, open_for: 1s}
"#;
        let config = Config::from_yaml(yaml).expect("valid");
        let breaker = |name: &str| {
            config
                .token_services
                .iter()
                .find(|ts| ts.name == name)
                .expect("service")
                .circuit_breaker
                .clone()
        };
        assert_eq!(breaker("default"), Some(crate::breaker::Settings::default()));
        assert_eq!(breaker("quiet"), None);
        assert_eq!(
            breaker("tuned").map(|s| (s.min_requests, s.open_for)),
            Some((5, Duration::from_secs(1)))
        );
        let err = Config::from_yaml(
            &yaml
                .replace("failure_ratio: 0.25", "failure_ratio: 2")
                .replace("open_for: 1s", "open_for: 1h"),
        )
        .expect_err("invalid");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "token_services.tuned.circuit_breaker.failure_ratio",
                "token_services.tuned.circuit_breaker.open_for",
            ]
        );
        let err = Config::from_yaml(&yaml.replace("enabled: false", "enable: false")).expect_err("unknown field");
        assert!(err.to_string().contains("enable"), "{err}");
    }

    #[test]
    fn entra_obo_has_no_requested_token_type() {
        let yaml = r#"
token_service:
  token_endpoint: http://entra/token
  client_id: app
  profile: entra_obo
  auth: {method: none}
destinations:
  - {name: graph, hosts: [graph], audience: "https://graph", requested_token_type: "urn:ietf:params:oauth:token-type:jwt"}
"#;
        let err = Config::from_yaml(yaml).expect_err("invalid");
        assert_eq!(err.0[0].path, "destinations[0].requested_token_type", "{err}");

        // Nor an actor token: a destination must opt out of `actor:` explicitly.
        let (_guard, token) = secret_file();
        let yaml = |actor: &str| {
            format!(
                "actor: {{token_file: {token}}}\ntoken_service: {{token_endpoint: 'http://entra/token', client_id: app, profile: entra_obo, auth: {{method: none}}}}\ndestinations:\n  - {{name: graph, hosts: [graph], audience: 'https://graph'{actor}}}\n"
            )
        };
        let err = Config::from_yaml(&yaml("")).expect_err("actor with entra_obo");
        assert_eq!(err.0[0].path, "destinations[0].actor", "{err}");
        Config::from_yaml(&yaml(", actor: none")).expect("actor: none");
        let err = Config::from_yaml(
            "token_service: {profile: obo}
",
        )
        .expect_err("bad profile");
        assert!(err.to_string().contains("obo"), "{err}");
    }

    #[test]
    fn mutual_tls_files_are_checked_at_load() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["baton.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let cert_file = tempfile_path::TempPath::new("cert.pem", &cert.pem());
        let key_file = tempfile_path::TempPath::new("key.pem", &key.serialize_pem());
        let other_key = rcgen::KeyPair::generate().expect("key");
        let other_key_file = tempfile_path::TempPath::new("other-key.pem", &other_key.serialize_pem());
        let yaml = |key: &std::path::Path, ca: &std::path::Path| {
            format!(
                "token_service:
  token_endpoint: https://as.example/token
  client_id: c
  ca_file: {}
  auth:
    method: tls_client_auth
    cert_file: {}
    key_file: {}
",
                ca.display(),
                cert_file.0.display(),
                key.display()
            )
        };
        let config = Config::from_yaml(&yaml(&key_file.0, &cert_file.0)).expect("valid");
        assert!(matches!(
            config.token_services[0].auth,
            ClientAuth::TlsClientAuth { .. }
        ));
        assert_eq!(config.token_services[0].ca_file.as_deref(), Some(cert_file.0.as_path()));

        let err = Config::from_yaml(&yaml(&other_key_file.0, &key_file.0)).expect_err("mismatch");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["token_service.auth.cert_file", "token_service.ca_file"],
            "{err}"
        );
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
    }

    // === broker: ===

    fn with_broker(secret: &str, broker: &str) -> String {
        format!(
            r#"
token_service:
  token_endpoint: http://127.0.0.1:9400/token
  client_id: sidecar
  auth: {{method: client_secret_basic, secret_file: {secret}}}
trusted_issuers:
  - issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [frontend, baton-broker]
destinations:
  - name: orders
    audience: https://orders.example
    scopes: [orders.read]
  - name: billing
    audience: https://billing.example
    scopes: [invoices.read]
    broker_allowed_scopes: [invoices.read, invoices.write]
{broker}"#
        )
    }

    fn broker_error_paths(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml) {
            Ok(_) => Vec::new(),
            Err(err) => err.0.into_iter().map(|e| e.path).collect(),
        }
    }

    #[test]
    fn the_broker_is_off_without_its_section() {
        let (_guard, secret) = secret_file();
        let config = Config::from_yaml(&with_broker(&secret, "")).expect("valid");
        assert_eq!(config.broker, None);
    }

    #[test]
    fn authenticated_callers_need_a_rule_that_tells_workloads_from_users() {
        let (_guard, secret) = secret_file();
        for broker in [
            "broker: {}",
            "broker:
  callers: authenticated",
            "broker:
  caller_client_ids: []",
        ] {
            let err = Config::from_yaml(&with_broker(&secret, broker)).expect_err(broker);
            assert!(err.0.iter().any(|e| e.path == "broker"), "{broker}: {err}");
            assert!(err.to_string().contains("caller_audience"), "{err}");
        }
        let config = Config::from_yaml(&with_broker(
            &secret,
            "broker:\n  caller_audience: baton-broker\n  caller_client_ids: [batch-worker]",
        ))
        .expect("valid");
        assert_eq!(
            config.broker,
            Some(Broker {
                callers: BrokerCallers::Authenticated,
                rule: CallerRule {
                    audience: Some("baton-broker".into()),
                    client_ids: vec!["batch-worker".into()],
                },
            })
        );
        let config = Config::from_yaml(&with_broker(&secret, "broker: { callers: any }")).expect("any");
        assert_eq!(config.broker.map(|b| b.callers), Some(BrokerCallers::Any));
    }

    #[test]
    fn a_caller_rule_that_can_never_match_is_an_error() {
        let (_guard, secret) = secret_file();
        for (broker, path) in [
            // No trusted issuer accepts this audience: no caller's token would ever verify.
            ("broker: { caller_audience: elsewhere }", "broker.caller_audience"),
            ("broker: { caller_audience: '' }", "broker.caller_audience"),
            ("broker: { caller_client_ids: [''] }", "broker.caller_client_ids[0]"),
            // A rule under `any` would look like protection and be none.
            ("broker: { callers: any, caller_client_ids: [job] }", "broker"),
        ] {
            let paths = broker_error_paths(&with_broker(&secret, broker));
            assert!(paths.iter().any(|p| p == path), "{broker}: {paths:?}");
        }
        // Without any verification, `authenticated` cannot authenticate anyone.
        let yaml = format!(
            "token_service:\n  token_endpoint: http://x/token\n  client_id: c\n  auth: {{method: client_secret_basic, secret_file: {secret}}}\nbroker: {{ caller_client_ids: [job] }}\n"
        );
        assert_eq!(broker_error_paths(&yaml), ["broker.callers"]);
    }

    #[test]
    fn broker_allowed_scopes_default_to_the_destination_scopes() {
        let (_guard, secret) = secret_file();
        let config = Config::from_yaml(&with_broker(&secret, "")).expect("valid");
        assert_eq!(config.destinations[0].broker_allowed_scopes, ["orders.read"]);
        assert_eq!(
            config.destinations[1].broker_allowed_scopes,
            ["invoices.read", "invoices.write"]
        );
        let yaml = with_broker(&secret, "").replace("invoices.write]", "'two words']");
        assert_eq!(broker_error_paths(&yaml), ["destinations[1].broker_allowed_scopes[1]"]);
    }
}
