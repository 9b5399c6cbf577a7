//! The whole configuration file: the decision's sections (`baton_core::config`) and the serving ones
//! (`listen:`, `reload:`, `shutdown_grace:`), in one YAML document. `Config::from_file` reads it
//! (bounded), refuses unknown keys at every level, and reports every problem at once, each with the
//! path of its field: a parse error is one error at `(yaml)`, then validation reports them all.
//! It owns no section's insides, and never logs a secret.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use baton_core::files::{parse_yaml, read_file, template_hint};
use baton_decide::settings::{ConfigError, Errors, duration};

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
    pub token_service: Option<baton_core::token_service::Raw>,
    pub token_services: BTreeMap<String, baton_core::token_service::Raw>,
    pub cache: baton_core::cache::Raw,
    pub subject_token: baton_core::verify::RawSubjectToken,
    pub unknown_destination: baton_core::config::UnknownDestination,
    pub missing_token: baton_core::config::MissingToken,
    pub destinations: Vec<baton_core::destination::Raw>,
    pub trusted_issuers: Vec<baton_core::verify::RawIssuer>,
    pub opaque_tokens: baton_core::verify::OpaqueTokens,
    pub introspection: Option<baton_core::verify::RawIntrospection>,
    pub workload: baton_core::config::RawWorkload,
    pub actor: Option<baton_core::actor::RawActor>,
    /// Absent: the broker API is off.
    pub broker: Option<baton_core::callers::Raw>,
    pub telemetry: baton_core::telemetry::settings::RawTelemetry,
    pub audit: baton_core::telemetry::settings::RawAudit,
    pub revocation: baton_core::revocation::Raw,
    /// Absent: `POST /backchannel-logout` is off.
    pub backchannel_logout: Option<baton_core::logout::Raw>,
    /// Absent: Defer and Redeem are off.
    pub deferred: Option<baton_core::deferred::Raw>,
    pub ssf: Option<baton_core::ssf::Raw>,
    pub dpop: baton_core::dpop::Raw,
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
    pub decision: baton_core::config::Config,
    /// `wasm_plugin::decision_digest` of this file: what `InProxy/Epoch` tells the Wasm filter, so
    /// that a filter generated from another file serves nothing cached. Set by `from_yaml`.
    pub plugin_digest: Vec<u8>,
}

impl Config {
    /// Parse YAML and validate it; every problem is reported, not only the first. A refused file
    /// that still holds `{{name}}` placeholders is told it looks like a template
    /// ([`template_hint`], which `parse_yaml` adds to a parse error itself).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let mut config = parse_yaml::<RawConfig>(text)?.validate().map_err(|mut e| {
            if let Some(hint) = template_hint(text) {
                e.0.insert(0, hint);
            }
            e
        })?;
        config.plugin_digest = crate::wasm_plugin::decision_digest(&config.decision, text);
        Ok(config)
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
            .is_some_and(|b| b.callers == baton_core::callers::BrokerCallers::Mtls)
            && listen.as_ref().is_some_and(|l| l.grpc_tls.is_none())
        {
            errors.add(
                "broker.callers",
                "`mtls` takes the caller from its TLS client certificate: configure listen.grpc_tls",
            );
        }
        // Spans a serving section and a decision one: the operator's endpoint is on the admin listener.
        if self.revocation.admin_secret_file.is_some() && listen.as_ref().is_some_and(|l| l.admin.is_none()) {
            errors.add(
                "revocation.admin_secret_file",
                "`POST /revoke` is served on the admin listener: configure listen.admin",
            );
        }
        // Spans a serving section and a decision one: the identity provider posts to the admin listener.
        if self.backchannel_logout.is_some() && listen.as_ref().is_some_and(|l| l.admin.is_none()) {
            errors.add(
                "backchannel_logout",
                "`POST /backchannel-logout` is served on the admin listener: configure listen.admin",
            );
        }
        // Spans a serving section and a decision one: SETs are pushed to the admin listener.
        if self.ssf.as_ref().is_some_and(|s| s.push.is_some()) && listen.as_ref().is_some_and(|l| l.admin.is_none()) {
            errors.add(
                "ssf.push",
                "`POST /ssf/push` is served on the admin listener: configure listen.admin",
            );
        }
        let decision = baton_core::config::RawConfig {
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
            revocation: self.revocation,
            backchannel_logout: self.backchannel_logout,
            deferred: self.deferred,
            ssf: self.ssf,
            dpop: self.dpop,
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
                plugin_digest: Vec::new(),
            }),
            _ => Err(ConfigError(errors.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::UdsGroup;
    use baton_core::callers::BrokerCallers;
    use baton_core::config::UnknownDestination;
    use baton_core::token_service::{ClientAuth, Profile};

    /// A client secret file, removed when the guard drops.
    fn secret_file() -> (Removed, String) {
        let path = std::env::temp_dir().join(format!(
            "baton-file-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, "s3cr3t-value\n").expect("write");
        let shown = path.display().to_string();
        (Removed(path), shown)
    }

    struct Removed(std::path::PathBuf);

    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
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
    fn unknown_fields_and_bad_enums_are_errors() {
        let err = Config::from_yaml("token_servise: {}\n").expect_err("typo");
        assert!(err.to_string().contains("token_servise"), "{err}");
        let err = Config::from_yaml("unknown_destination: drop\n").expect_err("bad enum");
        assert!(err.to_string().contains("drop"), "{err}");
    }

    #[test]
    fn admin_and_grpc_cannot_share_an_address() {
        let yaml = "listen:\n  grpc: 127.0.0.1:9191\n  admin: 127.0.0.1:9191\n";
        let err = Config::from_yaml(yaml).expect_err("same address");
        assert!(err.0.iter().any(|e| e.path == "listen.admin"), "{err}");
    }

    /// `POST /backchannel-logout` lives on the admin listener, and a logout token's issuer must be
    /// a trusted one (its keys verify it): each is reported at its field, with the others.
    #[test]
    fn the_backchannel_logout_endpoint_needs_the_admin_listener_and_a_trusted_issuer() {
        const TS: &str = "token_service: {token_endpoint: http://x/token, client_id: c, auth: {method: none}}\n";
        const TRUSTED: &str = "trusted_issuers:\n  - issuer: https://idp.example\n    audiences: [app]\n";
        let with = |listen: &str, issuer: &str| {
            Config::from_yaml(&format!(
                "listen:\n  grpc: 127.0.0.1:9191\n{listen}{TS}{TRUSTED}backchannel_logout:\n  client_id: app\n  issuers: [{issuer}]\n"
            ))
        };
        let config = with("  admin: 127.0.0.1:9192\n", "https://idp.example").expect("valid");
        let section = config.decision.backchannel_logout.expect("the section");
        assert_eq!((section.client_id.as_str(), section.issuers.len()), ("app", 1));
        let paths = |r: Result<Config, ConfigError>| -> Vec<String> {
            r.expect_err("refused").0.into_iter().map(|e| e.path).collect()
        };
        assert_eq!(
            paths(with("", "https://stranger.example")),
            ["backchannel_logout", "backchannel_logout.issuers[0]"]
        );
        let absent = Config::from_yaml(&format!("listen:\n  grpc: 127.0.0.1:9191\n{TS}")).expect("valid");
        assert!(absent.decision.backchannel_logout.is_none());
    }

    /// `POST /revoke` lives on the admin listener: its secret without one is an error, and a
    /// secret file that is missing or empty is reported at its field.
    #[test]
    fn the_revocation_endpoint_needs_the_admin_listener_and_a_secret() {
        const TS: &str = "token_service: {token_endpoint: http://x/token, client_id: c, auth: {method: none}}\n";
        let dir = std::env::temp_dir().join(format!("baton-file-revocation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret-for-a-unit-test\n").expect("secret");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").expect("empty");
        let with = |listen: &str, file: &std::path::Path| {
            Config::from_yaml(&format!(
                "listen:\n  grpc: 127.0.0.1:9191\n{listen}{TS}revocation:\n  admin_secret_file: {}\n",
                file.display()
            ))
        };
        let config = with("  admin: 127.0.0.1:9192\n", &secret).expect("valid");
        assert!(config.decision.revocation.admin_secret.is_some());
        let paths = |r: Result<Config, ConfigError>| -> Vec<String> {
            r.expect_err("refused").0.into_iter().map(|e| e.path).collect()
        };
        assert_eq!(paths(with("", &secret)), ["revocation.admin_secret_file"]);
        assert_eq!(
            paths(with("  admin: 127.0.0.1:9192\n", &empty)),
            ["revocation.admin_secret_file"]
        );
        let err = with("  admin: 127.0.0.1:9192\n", &empty).expect_err("empty");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
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

    #[test]
    fn a_refused_template_is_named_first_with_its_placeholders() {
        // Refused when parsed (a flow mapping where a string belongs), and when validated.
        for template in [
            "listen:\n  grpc: 127.0.0.1:{{grpc_port}}\ntoken_service:\n  token_endpoint: {{token_endpoint}}\n",
            "listen:\n  grpc: 127.0.0.1:{{grpc_port}}\ntoken_service:\n  token_endpoint: \"{{token_endpoint}}\"\n",
        ] {
            let e = Config::from_yaml(template).expect_err("a template");
            assert_eq!(e.0[0].path, "(template)", "{e}");
            assert_eq!(e.0.iter().filter(|f| f.path == "(template)").count(), 1, "{e}");
            let hint = &e.0[0].message;
            assert!(
                hint.contains("placeholders {{grpc_port}}, {{token_endpoint}};"),
                "{hint}"
            );
            assert!(e.0.len() > 1, "the file's own errors follow: {e}");
        }
    }

    /// `POST /ssf/push` lives on the admin listener too; poll needs no listener.
    #[test]
    fn the_ssf_push_endpoint_needs_the_admin_listener() {
        const TS: &str = "token_service: {token_endpoint: http://x/token, client_id: c, auth: {method: none}}\n";
        let dir = std::env::temp_dir().join(format!("baton-file-ssf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "ssf-push-secret-for-a-unit-test\n").expect("secret");
        let with = |listen: &str, delivery: &str| {
            Config::from_yaml(&format!(
                "listen:\n  grpc: 127.0.0.1:9191\n{listen}{TS}ssf:\n  issuer: https://tx.example\n  audience: https://baton.example/ssf\n{delivery}"
            ))
        };
        let push = format!("  push:\n    secret_file: {}\n", secret.display());
        let config = with("  admin: 127.0.0.1:9192\n", &push).expect("valid");
        assert!(config.decision.ssf.is_some_and(|s| s.push_secret.is_some()));
        let err = with("", &push).expect_err("no admin listener");
        let paths: Vec<_> = err.0.into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["ssf.push"]);
        assert!(with("", "  poll: {}\n").is_ok(), "poll calls out: no listener needed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
