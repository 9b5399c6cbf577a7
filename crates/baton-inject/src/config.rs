//! The injector's configuration: the YAML shape (serde with defaults), then `validate`, which turns
//! it into typed values and reports every problem at once with the path of the field, as Baton's own
//! configuration does. The TLS key is read by the server at start, never here, and never logged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use baton_decide::settings::{ConfigError, FieldError};

// === The YAML shape ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawInjectConfig {
    /// HTTPS listen address of the webhook (default 0.0.0.0:8443).
    pub listen: Option<String>,
    pub tls: RawTls,
    /// Larger AdmissionReview bodies are refused with 413 (default 2 MiB).
    pub max_body_bytes: Option<usize>,
    pub baton: RawBaton,
    pub envoy: RawEnvoy,
    /// `Always`, `IfNotPresent` (default) or `Never`, for both injected containers.
    pub image_pull_policy: Option<String>,
    /// Replaced by `baton.run_as_user`, `envoy.run_as_user` and `socket_group`: refused with a
    /// message that says so, rather than as an unknown field.
    pub run_as_user: Option<i64>,
    /// The GID of Baton's Unix socket: the `runAsGroup` of both injected containers (so Envoy may
    /// connect to the socket, mode 0660), and of no other container in the pod (default 65532). The
    /// pod's `baton.yaml` sets `listen.grpc_uds_group` to it.
    pub socket_group: Option<i64>,
    /// The emptyDir mount that holds Baton's Unix socket, in both containers.
    pub socket_dir: Option<String>,
    pub actor_token: RawActorToken,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBaton {
    /// Required: the Baton image.
    pub image: Option<String>,
    /// Baton's UID (default 65532); never Envoy's, so Envoy cannot read Baton's secret and token.
    pub run_as_user: Option<i64>,
    /// The port of `listen.admin` in the pod's Baton configuration (probes), default 9901.
    pub admin_port: Option<i32>,
    /// The ConfigMap (key `baton.yaml`) used when the pod has no `baton.dev/config` annotation.
    pub default_config: Option<String>,
    /// The Secret (key `client-secret`) used when the pod has no `baton.dev/client-secret`.
    pub default_client_secret: Option<String>,
    pub resources: RawResources,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawEnvoy {
    pub image: Option<String>,
    /// Envoy's UID (default 65533).
    pub run_as_user: Option<i64>,
    /// The ConfigMap (key `envoy.yaml`) with Envoy's bootstrap, in the pod's namespace.
    pub bootstrap_config_map: Option<String>,
    /// The port of the bootstrap's health listener (probes), default 15021.
    pub health_port: Option<i32>,
    pub resources: RawResources,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawResources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawActorToken {
    /// The audience of the projected service-account token (the workload's actor token).
    pub audience: Option<String>,
    /// Its lifetime; the kubelet refreshes it at 80% (default 3600, at least 600).
    pub expiration_seconds: Option<i64>,
}

// === The validated configuration ===

#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub max_body_bytes: usize,
    pub sidecar: Sidecar,
}

/// Everything the patch needs to build the two containers and their volumes.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub baton_image: String,
    pub envoy_image: String,
    pub image_pull_policy: String,
    pub baton_user: i64,
    pub envoy_user: i64,
    /// Both sidecars' `runAsGroup`, and the group of Baton's socket.
    pub socket_group: i64,
    pub socket_dir: String,
    pub admin_port: i32,
    pub envoy_health_port: i32,
    pub default_config: String,
    pub default_client_secret: String,
    pub envoy_bootstrap: String,
    pub baton_resources: Resources,
    pub envoy_resources: Resources,
    pub actor_audience: String,
    pub actor_expiration_seconds: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

pub const DEFAULT_ENVOY_IMAGE: &str = "envoyproxy/envoy:v1.40.0";

impl InjectConfig {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        baton_core::files::parse_yaml::<RawInjectConfig>(text)?.validate()
    }

    /// The file at `path` (read with the configuration file's size bound), with `listen`
    /// overriding the file's address when given (the command line's `--listen`).
    pub fn from_file(path: &std::path::Path, listen: Option<String>) -> Result<Self, ConfigError> {
        let mut raw = baton_core::files::parse_yaml::<RawInjectConfig>(&baton_core::files::read_file(path)?)?;
        if listen.is_some() {
            raw.listen = listen;
        }
        raw.validate()
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl RawInjectConfig {
    pub fn validate(self) -> Result<InjectConfig, ConfigError> {
        let mut errors = Errors::default();
        let listen_text = self.listen.as_deref().unwrap_or("0.0.0.0:8443");
        let listen = listen_text.parse::<SocketAddr>().ok();
        if listen.is_none() {
            errors.add("listen", format!("`{listen_text}` is not an address like 0.0.0.0:8443"));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(2 * 1024 * 1024);
        if !(4096..=16 * 1024 * 1024).contains(&max_body_bytes) {
            errors.add("max_body_bytes", "must be between 4096 and 16777216");
        }
        let baton_image = self.baton.image.unwrap_or_default();
        if baton_image.trim().is_empty() {
            errors.add("baton.image", "is required (the Baton image to inject)");
        }
        let envoy_image = self.envoy.image.unwrap_or_else(|| DEFAULT_ENVOY_IMAGE.into());
        if envoy_image.trim().is_empty() {
            errors.add("envoy.image", "must not be empty");
        }
        let image_pull_policy = self.image_pull_policy.unwrap_or_else(|| "IfNotPresent".into());
        if !matches!(image_pull_policy.as_str(), "Always" | "IfNotPresent" | "Never") {
            errors.add(
                "image_pull_policy",
                format!("`{image_pull_policy}` is not Always, IfNotPresent or Never"),
            );
        }
        if self.run_as_user.is_some() {
            errors.add(
                "run_as_user",
                "is replaced by baton.run_as_user, envoy.run_as_user and socket_group: Baton and Envoy no longer \
                 share a UID, only the socket's group",
            );
        }
        let id = |value: Option<i64>, default: i64, field: &str, errors: &mut Errors| {
            let id = value.unwrap_or(default);
            if !(1..=2_147_483_647).contains(&id) {
                errors.add(field, "must be a non-root ID (1 to 2147483647)");
            }
            id
        };
        let baton_user = id(self.baton.run_as_user, 65532, "baton.run_as_user", &mut errors);
        let envoy_user = id(self.envoy.run_as_user, 65533, "envoy.run_as_user", &mut errors);
        let socket_group = id(self.socket_group, 65532, "socket_group", &mut errors);
        if baton_user == envoy_user {
            errors.add(
                "envoy.run_as_user",
                "is also baton.run_as_user: Envoy would then read Baton's client secret and tokens",
            );
        }
        let socket_dir = self.socket_dir.unwrap_or_else(|| "/var/run/baton".into());
        if !socket_dir.starts_with('/') || socket_dir.contains(':') || socket_dir.len() > 80 {
            errors.add(
                "socket_dir",
                "must be an absolute path without `:`, short enough for a Unix socket path",
            );
        }
        let port = |value: Option<i32>, default: i32, field: &str, errors: &mut Errors| {
            let port = value.unwrap_or(default);
            if !(1..=65535).contains(&port) {
                errors.add(field, "must be a port between 1 and 65535");
            }
            port
        };
        let admin_port = port(self.baton.admin_port, 9901, "baton.admin_port", &mut errors);
        let envoy_health_port = port(self.envoy.health_port, 15021, "envoy.health_port", &mut errors);
        if admin_port == envoy_health_port {
            errors.add("envoy.health_port", "is also baton.admin_port");
        }
        let name = |value: Option<String>, default: &str, field: &str, errors: &mut Errors| {
            let name = value.unwrap_or_else(|| default.into());
            if let Err(why) = check_object_name(&name) {
                errors.add(field, format!("`{name}` {why}"));
            }
            name
        };
        let default_config = name(self.baton.default_config, "baton", "baton.default_config", &mut errors);
        let default_client_secret = name(
            self.baton.default_client_secret,
            "baton-client",
            "baton.default_client_secret",
            &mut errors,
        );
        let envoy_bootstrap = name(
            self.envoy.bootstrap_config_map,
            "baton-envoy",
            "envoy.bootstrap_config_map",
            &mut errors,
        );
        let baton_resources = resources(self.baton.resources, "baton.resources", &mut errors);
        let envoy_resources = resources(self.envoy.resources, "envoy.resources", &mut errors);
        let actor_audience = self.actor_token.audience.unwrap_or_else(|| "baton".into());
        if actor_audience.trim().is_empty() {
            errors.add("actor_token.audience", "must not be empty");
        }
        let actor_expiration_seconds = self.actor_token.expiration_seconds.unwrap_or(3600);
        if !(600..=86_400).contains(&actor_expiration_seconds) {
            errors.add(
                "actor_token.expiration_seconds",
                "must be between 600 (the API's minimum) and 86400",
            );
        }
        match listen {
            Some(listen) if errors.0.is_empty() => Ok(InjectConfig {
                listen,
                cert_file: self
                    .tls
                    .cert_file
                    .unwrap_or_else(|| "/etc/baton-inject/tls/tls.crt".into()),
                key_file: self
                    .tls
                    .key_file
                    .unwrap_or_else(|| "/etc/baton-inject/tls/tls.key".into()),
                max_body_bytes,
                sidecar: Sidecar {
                    baton_image,
                    envoy_image,
                    image_pull_policy,
                    baton_user,
                    envoy_user,
                    socket_group,
                    socket_dir,
                    admin_port,
                    envoy_health_port,
                    default_config,
                    default_client_secret,
                    envoy_bootstrap,
                    baton_resources,
                    envoy_resources,
                    actor_audience,
                    actor_expiration_seconds,
                },
            }),
            _ => Err(ConfigError(errors.0)),
        }
    }
}

/// Defaults that keep an injected pod schedulable under a LimitRange that demands them.
fn resources(raw: RawResources, field: &str, errors: &mut Errors) -> Resources {
    let mut out = Resources {
        requests: raw.requests,
        limits: raw.limits,
    };
    if out.requests.is_empty() {
        out.requests = BTreeMap::from([("cpu".into(), "50m".into()), ("memory".into(), "64Mi".into())]);
    }
    if out.limits.is_empty() {
        out.limits = BTreeMap::from([("memory".into(), "256Mi".into())]);
    }
    for (section, map) in [("requests", &out.requests), ("limits", &out.limits)] {
        for (name, value) in map {
            let at = format!("{field}.{section}.{name}");
            if !matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                errors.add(&at, "is not cpu, memory or ephemeral-storage");
            } else if !is_quantity(value) {
                errors.add(&at, format!("`{value}` is not a Kubernetes quantity like 100m or 64Mi"));
            }
        }
    }
    out
}

/// A ConfigMap or Secret name: an RFC 1123 subdomain (lower-case alphanumerics, `-`, `.`), at most
/// 253 characters, starting and ending with an alphanumeric.
pub fn check_object_name(name: &str) -> Result<(), &'static str> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => Err("is empty"),
        _ if bytes.len() > 253 => Err("is longer than 253 characters"),
        (Some(&first), Some(&last)) if !alnum(first) || !alnum(last) => {
            Err("must start and end with a lower-case letter or digit")
        }
        _ if !bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'.') => {
            Err("may hold only lower-case letters, digits, `-` and `.`")
        }
        _ => Ok(()),
    }
}

/// Kubernetes' quantity grammar: a non-negative decimal number, then a binary suffix (Ki..Ei), a
/// decimal suffix (n, u, m, k, M..E) or a decimal exponent (e3, E-2).
pub fn is_quantity(text: &str) -> bool {
    let text = text.strip_prefix('+').unwrap_or(text);
    let number_end = text
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let digits_ok =
        !number.is_empty() && number.matches('.').count() <= 1 && number.bytes().any(|b| b.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
        .is_some_and(|exp| !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit()));
    digits_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: `baton inject` read its file with `read_to_string`, with no bound.
    #[test]
    fn the_file_is_read_with_a_bound_and_listen_overrides_it() {
        let dir = std::env::temp_dir().join(format!("baton-inject-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("inject.yaml");
        std::fs::write(&path, "baton:\n  image: registry.example/baton:0.1.0\n").expect("write");
        let config = InjectConfig::from_file(&path, Some("127.0.0.1:0".into())).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:0");
        let huge = format!(
            "baton:\n  image: registry.example/baton:0.1.0\n#{}\n",
            "x".repeat(5 * 1024 * 1024)
        );
        std::fs::write(&path, huge).expect("write");
        let err = InjectConfig::from_file(&path, None).expect_err("too large");
        assert!(err.to_string().contains("larger than"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn defaults_need_only_the_baton_image() {
        let config = InjectConfig::from_yaml("baton:\n  image: registry.example/baton:0.1.0\n").expect("valid");
        assert_eq!(config.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(config.sidecar.default_config, "baton");
        assert_eq!(config.sidecar.envoy_image, DEFAULT_ENVOY_IMAGE);
        assert_eq!(config.sidecar.baton_resources.requests["memory"], "64Mi");
        let sidecar = &config.sidecar;
        assert_eq!(
            (sidecar.baton_user, sidecar.envoy_user, sidecar.socket_group),
            (65532, 65533, 65532)
        );
    }

    #[test]
    fn baton_and_envoy_share_a_group_never_a_user() {
        let yaml = "baton:\n  image: b\n  run_as_user: 7000\nenvoy:\n  run_as_user: 7000\nsocket_group: 0\n";
        let err = InjectConfig::from_yaml(yaml).expect_err("shared UID, root group");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["socket_group", "envoy.run_as_user"], "{err}");
        // The old shared-UID key says what replaced it.
        let err = InjectConfig::from_yaml("baton:\n  image: b\nrun_as_user: 65532\n").expect_err("old key");
        assert!(err.to_string().contains("socket_group"), "{err}");
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let yaml = r#"
listen: nowhere
max_body_bytes: 10
image_pull_policy: Sometimes
run_as_user: 0
socket_dir: relative
baton:
  admin_port: 70000
  default_config: Not_A_Name
  resources:
    requests: { cpu: lots, memroy: 1Gi }
envoy:
  bootstrap_config_map: "-x"
actor_token:
  audience: ""
  expiration_seconds: 60
"#;
        let err = InjectConfig::from_yaml(yaml).expect_err("invalid");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "listen",
            "max_body_bytes",
            "baton.image",
            "image_pull_policy",
            "run_as_user",
            "socket_dir",
            "baton.admin_port",
            "baton.default_config",
            "baton.resources.requests.cpu",
            "baton.resources.requests.memroy",
            "envoy.bootstrap_config_map",
            "actor_token.audience",
            "actor_token.expiration_seconds",
        ] {
            assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = InjectConfig::from_yaml("baton:\n  image: x\n  imgae: y\n").expect_err("typo");
        assert!(err.to_string().contains("imgae"), "{err}");
    }

    #[test]
    fn quantities() {
        for ok in ["1", "100m", "0.5", "64Mi", "1Gi", "2e3", "1E-2", "+1", ".5", "10k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1mi", "1.2.3", "-1", "1 Gi", "1e", "lots", "1GB"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn object_names() {
        for ok in ["baton", "baton-config", "a.b-c", "0"] {
            assert!(check_object_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Baton", "-a", "a-", "a_b", "a/b", &"a".repeat(254)] {
            assert!(check_object_name(bad).is_err(), "{bad}");
        }
    }
}
