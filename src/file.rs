//! The whole configuration file: the decision's sections (`crate::config`) and the serving ones
//! (`listen:`, `reload:`, `shutdown_grace:`), in one YAML document. `Config::from_file` reads it
//! (bounded), refuses unknown keys at every level, and reports every problem at once, each with the
//! path of its field: a parse error is one error at `(yaml)`, then validation reports them all.
//! It owns no section's insides, and never logs a secret.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::files::{parse_yaml, read_file};
use crate::settings::{ConfigError, Errors, duration};

/// The file's YAML shape. The decision's fields are listed here again, not flattened: serde's
/// `flatten` cannot refuse unknown keys, and a misspelt key must be an error, not a default.
/// `validate` moves each into `config::RawConfig` by name, so a section added there and not here
/// does not compile.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub listen: crate::listen::Raw,
    pub reload: RawReload,
    pub shutdown_grace: Option<String>,
    /// The token service named `default`; `token_services` may add (or be) others.
    pub token_service: Option<crate::token_service::Raw>,
    pub token_services: BTreeMap<String, crate::token_service::Raw>,
    pub cache: crate::cache::Raw,
    pub subject_token: crate::verify::RawSubjectToken,
    pub unknown_destination: crate::config::UnknownDestination,
    pub missing_token: crate::config::MissingToken,
    pub destinations: Vec<crate::destination::Raw>,
    pub trusted_issuers: Vec<crate::verify::RawIssuer>,
    pub opaque_tokens: crate::verify::OpaqueTokens,
    pub introspection: Option<crate::verify::RawIntrospection>,
    pub workload: crate::config::RawWorkload,
    pub actor: Option<crate::actor::RawActor>,
    /// Absent: the broker API is off.
    pub broker: Option<crate::callers::Raw>,
    pub telemetry: crate::telemetry::settings::RawTelemetry,
    pub audit: crate::telemetry::settings::RawAudit,
}

/// `reload:`: how the configuration file is watched (SIGHUP always reloads it).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawReload {
    /// How often the file is checked for a change (default 2s); `0s`: only on SIGHUP.
    pub poll_interval: Option<String>,
}

/// A validated configuration file.
#[derive(Debug)]
pub struct Config {
    pub listen: crate::listen::Settings,
    /// How often the file is checked for changes; `None`: only on SIGHUP.
    pub reload_interval: Option<Duration>,
    pub shutdown_grace: Duration,
    /// What the decision is built from (`app::build`).
    pub decision: crate::config::Config,
}

impl Config {
    /// Parse YAML and validate it; every problem is reported, not only the first.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        parse_yaml::<RawConfig>(text)?.validate()
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_yaml(&read_file(path)?)
    }
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut errors = Errors::default();
        let listen = self.listen.validate(&mut errors);
        // Spans a serving section and a decision one: the caller's identity comes from the listener.
        if self
            .broker
            .as_ref()
            .is_some_and(|b| b.callers == crate::callers::BrokerCallers::Mtls)
            && listen.as_ref().is_some_and(|l| l.grpc_tls.is_none())
        {
            errors.add(
                "broker.callers",
                "`mtls` takes the caller from its TLS client certificate: configure listen.grpc_tls",
            );
        }
        let decision = crate::config::RawConfig {
            token_service: self.token_service,
            token_services: self.token_services,
            cache: self.cache,
            subject_token: self.subject_token,
            unknown_destination: self.unknown_destination,
            missing_token: self.missing_token,
            destinations: self.destinations,
            trusted_issuers: self.trusted_issuers,
            opaque_tokens: self.opaque_tokens,
            introspection: self.introspection,
            workload: self.workload,
            actor: self.actor,
            broker: self.broker,
            telemetry: self.telemetry,
            audit: self.audit,
        }
        .validate(&mut errors);
        let reload_interval = duration(
            self.reload.poll_interval.as_deref(),
            "reload.poll_interval",
            Duration::from_secs(2),
            &mut errors,
        );
        let shutdown_grace = duration(
            self.shutdown_grace.as_deref(),
            "shutdown_grace",
            Duration::from_secs(10),
            &mut errors,
        );
        match (listen, decision) {
            (Some(listen), Some(decision)) if errors.0.is_empty() => Ok(Config {
                listen,
                reload_interval: Some(reload_interval).filter(|d| !d.is_zero()),
                shutdown_grace,
                decision,
            }),
            _ => Err(ConfigError(errors.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callers::{BrokerCallers, CallerRule, Settings as Broker};
    use crate::config::UnknownDestination;
    use crate::listen::UdsGroup;
    use crate::token_service::{ClientAuth, Profile};

    fn secret_file() -> (tempfile_path::TempPath, String) {
        let path = tempfile_path::TempPath::new("secret", "s3cr3t-value\n");
        let p = path.0.display().to_string();
        (path, p)
    }

    /// A file removed when the test ends, without a crate for it.
    mod tempfile_path {
        pub(super) struct TempPath(pub(super) std::path::PathBuf);
        impl TempPath {
            pub(super) fn new(name: &str, contents: &str) -> Self {
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
    fn the_documented_example_parses() {
        let (_guard, secret) = secret_file();
        let yaml = format!(
            r#"
listen:
  grpc: 127.0.0.1:9191
  grpc_uds: /var/run/baton/baton.sock
  admin: 127.0.0.1:9901
token_service:
  token_endpoint: http://127.0.0.1:9400/token
  client_id: sidecar
  auth:
    method: client_secret_basic
    secret_file: {secret}
  timeout: 2s
cache:
  max_entries: 100000
  expiry_margin: 30s
unknown_destination: strip
missing_token: deny
destinations:
  - name: orders
    hosts: ["orders.default.svc.cluster.local", "Orders", "orders:8080", "*.orders.example"]
    audience: https://orders.example
    resource: https://orders.example/api
    scopes: [orders.read]
    requested_token_type: urn:ietf:params:oauth:token-type:access_token
"#
        );
        let config = Config::from_yaml(&yaml).expect("valid");
        assert_eq!(config.listen.grpc, Some("127.0.0.1:9191".parse().expect("addr")));
        let ts = &config.decision.token_services[0];
        assert_eq!((ts.name.as_str(), ts.profile), ("default", Profile::Rfc8693));
        assert_eq!(ts.timeout, Duration::from_secs(2));
        assert!(matches!(&ts.auth, ClientAuth::SecretBasic(s) if s.expose() == "s3cr3t-value"));
        assert_eq!(config.decision.destinations[0].token_service, "default");
        assert_eq!(config.decision.cache.expiry_margin, Duration::from_secs(30));
        assert_eq!(
            config.decision.destinations[0].hosts[1], "orders",
            "hosts are lower-cased"
        );
        assert_eq!(config.decision.subject_token.max_bytes, 16 * 1024);
        assert_eq!(config.decision.unknown_destination, UnknownDestination::Strip);
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_path() {
        let yaml = r#"
listen:
  grpc: not-an-address
token_service:
  token_endpoint: ftp://example
  auth:
    method: client_secret_post
  timeout: fast
cache:
  max_entries: 0
destinations:
  - name: orders
    hosts: ["orders", "*bad*"]
  - name: orders
    hosts: ["ORDERS"]
    audience: a
    scopes: ["two words"]
"#;
        let err = Config::from_yaml(yaml).expect_err("invalid");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "listen.grpc",
            "token_service.token_endpoint",
            "token_service.client_id",
            "token_service.auth",
            "token_service.timeout",
            "cache.max_entries",
            "destinations[0].hosts[1]",
            "destinations[0].audience",
            "destinations[1].name",
            "destinations[1].hosts[0]",
            "destinations[1].scopes[0]",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn host_patterns_are_canonical_and_two_spellings_of_one_conflict() {
        let yaml = r#"
listen: { grpc: 127.0.0.1:9191 }
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
        assert_eq!(ok.decision.destinations[0].hosts, ["orders.local:8443", "*.svc.local"]);
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_errors() {
        let err = Config::from_yaml("token_servise: {}\n").expect_err("typo");
        assert!(err.to_string().contains("token_servise"), "{err}");
        let err = Config::from_yaml("unknown_destination: drop\n").expect_err("bad enum");
        assert!(err.to_string().contains("drop"), "{err}");
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
listen:
  grpc: 127.0.0.1:0
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
        let names: Vec<&str> = config.decision.token_services.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["default", "entra"]);
        assert_eq!(config.decision.token_services[1].profile, Profile::EntraObo);
        assert_eq!(config.decision.destinations[0].token_service, "default");
        assert_eq!(config.decision.destinations[1].token_service, "entra");

        // Only `token_services:`: a destination must name one that exists, or `default` must exist.
        let yaml = r#"
listen:
  grpc: 127.0.0.1:0
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
listen:
  grpc: 127.0.0.1:0
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
                .decision
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
listen:
  grpc: 127.0.0.1:0
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
                "listen:\n  grpc: 127.0.0.1:0\nactor: {{token_file: {token}}}\ntoken_service: {{token_endpoint: 'http://entra/token', client_id: app, profile: entra_obo, auth: {{method: none}}}}\ndestinations:\n  - {{name: graph, hosts: [graph], audience: 'https://graph'{actor}}}\n"
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
                "listen:
  grpc: 127.0.0.1:0
token_service:
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
            config.decision.token_services[0].auth,
            ClientAuth::TlsClientAuth { .. }
        ));
        assert_eq!(
            config.decision.token_services[0].ca_file.as_deref(),
            Some(cert_file.0.as_path())
        );

        let err = Config::from_yaml(&yaml(&other_key_file.0, &key_file.0)).expect_err("mismatch");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["token_service.auth.cert_file", "token_service.ca_file"],
            "{err}"
        );
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn admin_and_grpc_cannot_share_an_address() {
        let yaml = "listen:\n  grpc: 127.0.0.1:9191\n  admin: 127.0.0.1:9191\n";
        let err = Config::from_yaml(yaml).expect_err("same address");
        assert!(err.0.iter().any(|e| e.path == "listen.admin"), "{err}");
    }

    /// The listener rules of issue 12: no default TCP listener, plain text only on loopback unless
    /// the file says `insecure_plaintext`, a socket mode that never lets "others" in.
    #[test]
    fn listeners_are_opt_in_and_plain_text_stays_on_loopback() {
        const TS: &str = "token_service: {token_endpoint: http://x/token, client_id: c, auth: {method: none}}\n";
        let listen = |body: &str| Config::from_yaml(&format!("listen:\n{body}{TS}")).map(|c| c.listen);
        let errors = |body: &str| {
            let err = listen(body).expect_err(body);
            err.0
                .iter()
                .map(|e| (e.path.clone(), e.message.clone()))
                .collect::<Vec<_>>()
        };

        // Neither listener: an error that says what to add.
        let err = Config::from_yaml(TS).expect_err("no listener");
        assert!(
            err.0
                .iter()
                .any(|e| e.path == "listen" && e.message.contains("grpc_uds:")),
            "{err}"
        );
        assert!(errors("  admin: 127.0.0.1:9901\n").iter().any(|(p, _)| p == "listen"));

        // A Unix socket alone: no TCP listener, mode 0660 by default.
        let l = listen("  grpc_uds: /run/baton.sock\n").expect("uds");
        assert_eq!((l.grpc, l.grpc_uds_mode, l.grpc_uds_group), (None, 0o660, None));
        let l =
            listen("  grpc_uds: /run/baton.sock\n  grpc_uds_mode: \"0600\"\n  grpc_uds_group: envoy\n").expect("uds");
        assert_eq!(
            (l.grpc_uds_mode, l.grpc_uds_group),
            (0o600, Some(UdsGroup::Name("envoy".into())))
        );
        let l = listen("  grpc_uds: /run/baton.sock\n  grpc_uds_group: \"1337\"\n").expect("uds");
        assert_eq!(l.grpc_uds_group, Some(UdsGroup::Id(1337)));
        for bad in [
            "\"0666\"",
            "\"0661\"",
            "\"0777\"",
            "\"4660\"",
            "\"rw\"",
            "\"\"",
            "\"0o1777\"",
            "\"99\"",
        ] {
            let errs = errors(&format!("  grpc_uds: /s\n  grpc_uds_mode: {bad}\n"));
            assert!(errs.iter().any(|(p, _)| p == "listen.grpc_uds_mode"), "{bad}: {errs:?}");
        }
        for bad in ["\"\"", "\"-x\"", "\"a:b\"", "\"a b\"", "\"99999999999\""] {
            let errs = errors(&format!("  grpc_uds: /s\n  grpc_uds_group: {bad}\n"));
            assert!(
                errs.iter().any(|(p, _)| p == "listen.grpc_uds_group"),
                "{bad}: {errs:?}"
            );
        }
        assert!(
            errors("  grpc: 127.0.0.1:1\n  grpc_uds_mode: \"0600\"\n")
                .iter()
                .any(|(p, _)| p == "listen.grpc_uds_mode")
        );

        // Plain text: loopback (127.0.0.0/8, ::1) only, unless insecure_plaintext.
        for ok in ["127.0.0.1:9191", "127.1.2.3:9191", "\"[::1]:9191\""] {
            listen(&format!("  grpc: {ok}\n")).expect(ok);
        }
        for bad in [
            "0.0.0.0:9191",
            "10.0.0.7:9191",
            "\"[::]:9191\"",
            "\"[::ffff:127.0.0.1]:9191\"",
            "192.168.1.1:1",
        ] {
            let errs = errors(&format!("  grpc: {bad}\n"));
            let (_, message) = errs.iter().find(|(p, _)| p == "listen.grpc").expect(bad);
            assert!(
                message.contains("grpc_tls") && message.contains("insecure_plaintext"),
                "{message}"
            );
            listen(&format!("  grpc: {bad}\n  insecure_plaintext: true\n")).expect(bad);
        }

        // grpc_tls: every file, a non-empty allow-list of valid patterns, and a TCP listener.
        let tls = "  grpc_tls:\n    cert_file: /c\n    key_file: /k\n    client_ca_file: /ca\n    allowed_callers: [\"spiffe://td/ns/a/sa/*\", envoy.example]\n";
        let l = listen(&format!("  grpc: 0.0.0.0:9191\n{tls}")).expect("tls on any address");
        assert_eq!(l.grpc_tls.expect("tls").allowed_callers.len(), 2);
        assert!(errors(tls).iter().any(|(p, _)| p == "listen.grpc_tls"));
        let errs = errors("  grpc: 0.0.0.0:1\n  grpc_tls: {allowed_callers: []}\n");
        for field in ["cert_file", "key_file", "client_ca_file", "allowed_callers"] {
            assert!(
                errs.iter().any(|(p, _)| *p == format!("listen.grpc_tls.{field}")),
                "{field}: {errs:?}"
            );
        }
        let errs = errors(
            "  grpc: 127.0.0.1:1\n  grpc_tls: {cert_file: /c, key_file: /k, client_ca_file: /ca, allowed_callers: [\"*\"]}\n",
        );
        assert!(
            errs.iter().any(|(p, _)| p == "listen.grpc_tls.allowed_callers[0]"),
            "{errs:?}"
        );

        // broker.callers: mtls needs the TLS listener.
        let err = Config::from_yaml(&format!(
            "listen:\n  grpc: 127.0.0.1:1\nbroker: {{callers: mtls}}\n{TS}"
        ))
        .expect_err("mtls");
        assert!(err.0.iter().any(|e| e.path == "broker.callers"), "{err}");
        let config = Config::from_yaml(&format!(
            "listen:\n  grpc: 127.0.0.1:1\n{tls}broker: {{callers: mtls}}\n{TS}"
        ))
        .expect("mtls with grpc_tls");
        assert_eq!(config.decision.broker.map(|b| b.callers), Some(BrokerCallers::Mtls));
    }

    // === broker: ===

    fn with_broker(secret: &str, broker: &str) -> String {
        format!(
            r#"
listen: {{grpc: 127.0.0.1:9191}}
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
        assert_eq!(config.decision.broker, None);
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
            config.decision.broker,
            Some(Broker {
                callers: BrokerCallers::Authenticated,
                rule: CallerRule {
                    audience: Some("baton-broker".into()),
                    client_ids: vec!["batch-worker".into()],
                },
            })
        );
        let config = Config::from_yaml(&with_broker(&secret, "broker: { callers: any }")).expect("any");
        assert_eq!(config.decision.broker.map(|b| b.callers), Some(BrokerCallers::Any));
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
            "listen: {{grpc: 127.0.0.1:9191}}\ntoken_service:\n  token_endpoint: http://x/token\n  client_id: c\n  auth: {{method: client_secret_basic, secret_file: {secret}}}\nbroker: {{ caller_client_ids: [job] }}\n"
        );
        assert_eq!(broker_error_paths(&yaml), ["broker.callers"]);
    }

    #[test]
    fn broker_allowed_scopes_default_to_the_destination_scopes() {
        let (_guard, secret) = secret_file();
        let config = Config::from_yaml(&with_broker(&secret, "")).expect("valid");
        assert_eq!(config.decision.destinations[0].broker_allowed_scopes, ["orders.read"]);
        assert_eq!(
            config.decision.destinations[1].broker_allowed_scopes,
            ["invoices.read", "invoices.write"]
        );
        let yaml = with_broker(&secret, "").replace("invoices.write]", "'two words']");
        assert_eq!(broker_error_paths(&yaml), ["destinations[1].broker_allowed_scopes[1]"]);
    }
}
