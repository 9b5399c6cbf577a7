//! Baton's configuration: the YAML shape (`Raw*`, serde with defaults), then `validate`, which turns
//! it into typed values and reports every problem at once, each with the path of the field. Secrets
//! are read here (from a file or the environment) and never appear in an error or a log line.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::files::{parse_yaml, read_file, read_secret};
use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use crate::secret::Secret;
use crate::settings::{ConfigError, Errors};
use crate::settings::{duration, http_url, is_loopback, is_scope_token};

// === The YAML shape ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub listen: RawListen,
    /// The token service named `default`; `token_services` may add (or be) others.
    pub token_service: Option<RawTokenService>,
    pub token_services: BTreeMap<String, RawTokenService>,
    pub cache: RawCache,
    pub subject_token: RawSubjectToken,
    pub unknown_destination: UnknownDestination,
    pub missing_token: MissingToken,
    pub destinations: Vec<RawDestination>,
    pub shutdown_grace: Option<String>,
    pub trusted_issuers: Vec<crate::verify::RawIssuer>,
    pub opaque_tokens: crate::verify::OpaqueTokens,
    pub introspection: Option<crate::verify::RawIntrospection>,
    pub workload: RawWorkload,
    pub actor: Option<crate::actor::RawActor>,
    /// Absent: the broker API is off.
    pub broker: Option<RawBroker>,
    pub reload: RawReload,
    pub telemetry: RawTelemetry,
    pub audit: RawAudit,
}

/// `reload:`: how the configuration file is watched (SIGHUP always reloads it).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawReload {
    /// How often the file is checked for a change (default 2s); `0s`: only on SIGHUP.
    pub poll_interval: Option<String>,
}

/// `workload:`: who this Baton acts for, in sidecar mode.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWorkload {
    /// The calling workload's identity (e.g. its SPIFFE ID), used as the policy's `source` when
    /// Envoy reports no source principal.
    pub identity: Option<String>,
}

/// `broker:`: who may call `baton.v1.DelegationBroker`. Without this section the broker API
/// refuses every call (`broker_disabled`): a sidecar that only serves Envoy exposes no second way
/// to ask for tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBroker {
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
pub struct Broker {
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

impl RawBroker {
    /// `audiences`: every audience a trusted issuer's tokens may carry, which the caller's token
    /// is verified against before the rule is applied; `verified`: callers' tokens can be verified
    /// at all (trusted issuers or introspection).
    fn validate(self, audiences: &[&str], verified: bool, errors: &mut Errors) -> Broker {
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
        Broker {
            callers: self.callers,
            rule,
        }
    }
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

/// `listen:`. At least one of `grpc` and `grpc_uds`; neither has a default address.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawListen {
    /// TCP gRPC listener (opt-in). Plain text only on loopback, unless `insecure_plaintext`.
    pub grpc: Option<String>,
    /// Unix socket gRPC listener: the sidecar's transport.
    pub grpc_uds: Option<PathBuf>,
    /// The socket's permission bits, octal text (default "0660").
    pub grpc_uds_mode: Option<String>,
    /// A group name or numeric gid the socket is given to.
    pub grpc_uds_group: Option<String>,
    /// Mutual TLS on `grpc`.
    pub grpc_tls: Option<crate::tls::RawGrpcTls>,
    /// Allow plain-text `grpc` on a non-loopback address.
    pub insecure_plaintext: bool,
    pub admin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTokenService {
    pub token_endpoint: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub profile: Profile,
    pub auth: RawClientAuth,
    /// PEM CA bundle: the only roots trusted for this token service's TLS certificate.
    pub ca_file: Option<PathBuf>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub max_response_bytes: Option<usize>,
    /// Exchanges in flight at once towards this service (default 64); as many more may wait for a
    /// turn within the timeout, and any beyond that are refused at once with 503.
    pub max_concurrent_exchanges: Option<usize>,
    pub circuit_breaker: crate::breaker::RawCircuitBreaker,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClientAuth {
    pub method: AuthMethod,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    pub key_file: Option<PathBuf>,
    pub key_id: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub assertion_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    /// RFC 8705 mutual TLS with a CA-issued client certificate.
    TlsClientAuth,
    /// An RFC 7523 client assertion someone else signs and rotates in a file (a projected
    /// service-account token): workload identity federation, no static secret.
    JwtBearerAssertionFile,
    None,
}

/// How a token service is asked for a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// RFC 8693 token exchange.
    #[default]
    Rfc8693,
    /// Microsoft Entra ID on-behalf-of: the RFC 7523 JWT-bearer grant with
    /// `requested_token_use=on_behalf_of`.
    EntraObo,
}

impl Profile {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rfc8693 => "rfc8693",
            Self::EntraObo => "entra_obo",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    pub max_entries: Option<u64>,
    pub expiry_margin: Option<String>,
    pub negative_ttl: Option<String>,
    pub refresh_ahead: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSubjectToken {
    pub max_bytes: Option<usize>,
    /// `access_token` (default) or `jwt`: the `subject_token_type` sent to the token service.
    pub token_type: Option<String>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDestination {
    pub name: String,
    pub hosts: Vec<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scopes: Vec<String>,
    /// The scopes a broker caller may ask for at this destination (default: `scopes`). A broker
    /// call asking for any other scope is refused (`scope_not_allowed`).
    pub broker_allowed_scopes: Option<Vec<String>>,
    pub requested_token_type: Option<String>,
    pub policy: crate::policy::RawPolicy,
    pub actor: DestinationActor,
    /// The name of the token service this destination's tokens come from (default `default`).
    pub token_service: Option<String>,
}

// === The validated configuration ===

#[derive(Debug)]
pub struct Config {
    pub listen: Listen,
    /// At least one; names are unique.
    pub token_services: Vec<TokenService>,
    pub cache: Cache,
    pub subject_token: SubjectToken,
    pub unknown_destination: UnknownDestination,
    pub missing_token: MissingToken,
    pub destinations: Vec<Destination>,
    pub shutdown_grace: Duration,
    pub trusted_issuers: Vec<crate::verify::IssuerConfig>,
    pub opaque_tokens: crate::verify::OpaqueTokens,
    pub introspection: Option<crate::verify::IntrospectionConfig>,
    pub workload_identity: Option<String>,
    pub actor: Option<crate::actor::ActorToken>,
    /// `None`: the broker API refuses every call.
    pub broker: Option<Broker>,
    /// How often the file is checked for changes; `None`: only on SIGHUP.
    pub reload_interval: Option<Duration>,
    pub telemetry: Telemetry,
    pub audit: Audit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub grpc: Option<SocketAddr>,
    pub grpc_uds: Option<PathBuf>,
    /// Permission bits of the socket (never any for "others").
    pub grpc_uds_mode: u32,
    pub grpc_uds_group: Option<UdsGroup>,
    pub grpc_tls: Option<crate::tls::GrpcTls>,
    pub admin: Option<SocketAddr>,
}

/// The default `listen.grpc_uds_mode`: the owner and the group may connect, nobody else.
pub const DEFAULT_UDS_MODE: u32 = 0o660;

/// `listen.grpc_uds_group`: resolved when the socket is created (the file is checked where Baton runs,
/// not where `check-config` does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdsGroup {
    Id(u32),
    Name(String),
}

/// The name of the token service `token_service:` configures, and destinations use by default.
pub const DEFAULT_TOKEN_SERVICE: &str = "default";

#[derive(Debug)]
pub struct TokenService {
    pub name: String,
    pub endpoint: Endpoint,
    pub client_id: String,
    pub profile: Profile,
    pub auth: ClientAuth,
    /// Trust only these roots (PEM bundle, checked at load) for the token service's certificate.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub retries: u32,
    pub max_response_bytes: usize,
    pub max_concurrent_exchanges: usize,
    /// `None`: the circuit breaker is turned off.
    pub circuit_breaker: Option<crate::breaker::Settings>,
}

/// Where the token endpoint is: given, or found by RFC 8414 / OpenID discovery from the issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Token(Url),
    Discover { issuer: Url },
}

#[derive(Clone, Debug)]
pub enum ClientAuth {
    None,
    SecretBasic(Secret),
    SecretPost(Secret),
    /// RFC 7523 client assertion, signed with this PEM key (RSA or EC P-256).
    PrivateKeyJwt {
        key_pem: Secret,
        key_id: Option<String>,
    },
    /// RFC 8705 `tls_client_auth`: this certificate chain and key (PEM files, checked at load and
    /// re-read when they change).
    TlsClientAuth {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// A client assertion read from this file (checked at load, re-read when it changes).
    JwtBearerAssertionFile(PathBuf),
}

#[derive(Debug)]
pub struct Cache {
    pub max_entries: u64,
    pub expiry_margin: Duration,
    /// How long a definite refusal by the token service is remembered (0: not at all).
    pub negative_ttl: Duration,
    /// A hit this close to the cache expiry refreshes the token in the background (0: never).
    pub refresh_ahead: Duration,
}

#[derive(Debug)]
pub struct SubjectToken {
    pub max_bytes: usize,
    pub token_type: &'static str,
}

#[derive(Debug)]
pub struct Destination {
    pub name: String,
    pub hosts: Vec<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scopes: Vec<String>,
    /// What a broker call may ask for instead of `scopes` (a subset of it, never more).
    pub broker_allowed_scopes: Vec<String>,
    pub requested_token_type: Option<String>,
    pub policy: crate::policy::Policy,
    pub actor: DestinationActor,
    /// The name of one of `Config::token_services`.
    pub token_service: String,
}

// === Parsing and validation ===

impl Config {
    /// Parse YAML and validate it; every problem is reported, not only the first.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        parse_yaml::<RawConfig>(text)?.validate()
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::from_yaml(&read_file(path)?)
    }
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut errors = Errors::default();
        let listen = validate_listen(self.listen, &mut errors);
        if self.broker.as_ref().is_some_and(|b| b.callers == BrokerCallers::Mtls)
            && listen.as_ref().is_some_and(|l| l.grpc_tls.is_none())
        {
            errors.add(
                "broker.callers",
                "`mtls` takes the caller from its TLS client certificate: configure listen.grpc_tls",
            );
        }
        let token_services = validate_token_services(self.token_service, self.token_services, &mut errors);
        let cache = Cache {
            max_entries: self.cache.max_entries.unwrap_or(100_000),
            expiry_margin: duration(
                self.cache.expiry_margin.as_deref(),
                "cache.expiry_margin",
                Duration::from_secs(30),
                &mut errors,
            ),
            negative_ttl: duration(
                self.cache.negative_ttl.as_deref(),
                "cache.negative_ttl",
                Duration::from_secs(5),
                &mut errors,
            ),
            refresh_ahead: duration(
                self.cache.refresh_ahead.as_deref(),
                "cache.refresh_ahead",
                Duration::from_secs(60),
                &mut errors,
            ),
        };
        if cache.max_entries == 0 {
            errors.add("cache.max_entries", "must be at least 1");
        }
        let subject_token = SubjectToken {
            max_bytes: self.subject_token.max_bytes.unwrap_or(16 * 1024),
            token_type: match self.subject_token.token_type.as_deref() {
                None | Some("access_token") | Some(TOKEN_TYPE_ACCESS_TOKEN) => TOKEN_TYPE_ACCESS_TOKEN,
                Some("jwt") | Some(TOKEN_TYPE_JWT) => TOKEN_TYPE_JWT,
                Some(other) => {
                    errors.add(
                        "subject_token.token_type",
                        format!("`{other}` is not `access_token` or `jwt`"),
                    );
                    TOKEN_TYPE_ACCESS_TOKEN
                }
            },
        };
        if subject_token.max_bytes == 0 {
            errors.add("subject_token.max_bytes", "must be at least 1");
        }
        let trusted_issuers: Vec<_> = self
            .trusted_issuers
            .into_iter()
            .enumerate()
            .filter_map(|(i, raw)| raw.validate(&format!("trusted_issuers[{i}]"), &mut errors))
            .collect();
        let introspection = match (self.opaque_tokens, self.introspection) {
            (crate::verify::OpaqueTokens::Introspect, Some(raw)) => raw.validate(&mut errors).filter(|i| {
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
            }),
            (crate::verify::OpaqueTokens::Introspect, None) => {
                errors.add("introspection", "is required with `opaque_tokens: introspect`");
                None
            }
            (_, Some(_)) => {
                errors.add("introspection", "is used only with `opaque_tokens: introspect`");
                None
            }
            (_, None) => None,
        };
        // Claims the policy reads come from Baton's own verification or from introspection.
        let verified = !trusted_issuers.is_empty() || introspection.is_some();
        let actor = self.actor.and_then(|a| a.validate(&mut errors));
        let broker = self.broker.map(|b| {
            let audiences: Vec<&str> = trusted_issuers
                .iter()
                .flat_map(|i| i.audiences.iter().map(String::as_str))
                .collect();
            b.validate(&audiences, verified, &mut errors)
        });
        let destinations = validate_destinations(
            self.destinations,
            &token_services,
            verified,
            actor.is_some(),
            &mut errors,
        );
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
        let (telemetry, audit) = (
            validate_telemetry(self.telemetry, &mut errors),
            validate_audit(self.audit, &mut errors),
        );
        match (listen, token_services.valid()) {
            (Some(listen), Some(token_services)) if errors.0.is_empty() => Ok(Config {
                listen,
                token_services,
                cache,
                subject_token,
                unknown_destination: self.unknown_destination,
                missing_token: self.missing_token,
                destinations,
                shutdown_grace,
                trusted_issuers,
                opaque_tokens: self.opaque_tokens,
                introspection,
                workload_identity: self.workload.identity,
                actor,
                broker,
                reload_interval: Some(reload_interval).filter(|d| !d.is_zero()),
                telemetry,
                audit,
            }),
            _ => Err(ConfigError(errors.0)),
        }
    }
}

fn validate_listen(raw: RawListen, errors: &mut Errors) -> Option<Listen> {
    let grpc = raw
        .grpc
        .as_deref()
        .map(|g| socket_addr(g, "listen.grpc", errors).ok_or(()))
        .transpose();
    let admin = raw
        .admin
        .as_deref()
        .and_then(|a| socket_addr(a, "listen.admin", errors));
    if raw.grpc.is_none() && raw.grpc_uds.is_none() {
        errors.add(
            "listen",
            "Baton has no gRPC listener: add `grpc_uds: /var/run/baton/baton.sock` (the sidecar's Unix socket), \
             or `grpc: 127.0.0.1:9191` (TCP; with `grpc_tls` unless it is loopback)",
        );
    }
    if let Some(path) = &raw.grpc_uds
        && path.as_os_str().is_empty()
    {
        errors.add("listen.grpc_uds", "must be a path");
    }
    let grpc_uds_mode = match raw.grpc_uds_mode.as_deref() {
        None => DEFAULT_UDS_MODE,
        Some(text) => match uds_mode(text) {
            Ok(mode) => mode,
            Err(why) => {
                errors.add("listen.grpc_uds_mode", why);
                DEFAULT_UDS_MODE
            }
        },
    };
    let grpc_uds_group = raw.grpc_uds_group.as_deref().and_then(|g| match uds_group(g) {
        Ok(group) => Some(group),
        Err(why) => {
            errors.add("listen.grpc_uds_group", why);
            None
        }
    });
    if raw.grpc_uds.is_none() {
        for (set, field) in [
            (raw.grpc_uds_mode.is_some(), "listen.grpc_uds_mode"),
            (raw.grpc_uds_group.is_some(), "listen.grpc_uds_group"),
        ] {
            if set {
                errors.add(field, "applies to listen.grpc_uds, which is not set");
            }
        }
    }
    let grpc_tls = raw.grpc_tls.and_then(|t| t.validate(errors));
    if let Ok(Some(addr)) = grpc {
        if grpc_tls.is_none() && !raw.insecure_plaintext && !is_loopback(addr.ip()) {
            errors.add(
                "listen.grpc",
                format!(
                    "`{addr}` is not a loopback address, and plain text there lets anyone who reaches it ask for tokens: \
                     add `grpc_tls` (mutual TLS), use `grpc_uds`, or set `insecure_plaintext: true` if something else protects it"
                ),
            );
        }
    } else if grpc == Ok(None) && grpc_tls.is_some() {
        errors.add("listen.grpc_tls", "applies to listen.grpc, which is not set");
    }
    if let (Ok(Some(grpc)), Some(admin)) = (grpc, admin)
        && grpc.port() != 0
        && grpc == admin
    {
        errors.add("listen.admin", format!("`{admin}` is also listen.grpc"));
    }
    Some(Listen {
        grpc: grpc.ok()?,
        grpc_uds: raw.grpc_uds,
        grpc_uds_mode,
        grpc_uds_group,
        grpc_tls,
        admin,
    })
}

/// Octal permission bits (`"0660"`, `"660"`, `"0o660"`), none for others
/// (connecting to a Unix socket needs write permission; "others" is every local user).
fn uds_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|_| !digits.is_empty() && digits.len() <= 4)
        .ok_or_else(|| format!("`{text}` is not an octal mode like \"0660\""))?;
    if mode & !0o777 != 0 {
        return Err(format!("`{text}`: only permission bits (0o777) are allowed"));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "`{text}` lets every local user connect: give access through the group (`grpc_uds_group`) instead"
        ));
    }
    Ok(mode)
}

/// A numeric gid, or a group name (POSIX portable characters).
fn uds_group(text: &str) -> Result<UdsGroup, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(UdsGroup::Id)
            .map_err(|_| format!("`{text}` is not a valid gid"));
    }
    let portable = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if text.is_empty() || text.len() > 64 || text.starts_with('-') || !text.bytes().all(portable) {
        return Err(format!("`{text}` is neither a group name nor a numeric gid"));
    }
    Ok(UdsGroup::Name(text.to_owned()))
}

/// The token services by name, as far as they validated: a name whose section has errors is still
/// known (`None`), so destinations naming it are not reported a second time.
struct TokenServices(Vec<(String, Option<TokenService>)>);

impl TokenServices {
    fn get(&self, name: &str) -> Option<&Option<TokenService>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, ts)| ts)
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        names.join(", ")
    }

    /// Every service, if every one validated.
    fn valid(self) -> Option<Vec<TokenService>> {
        self.0.into_iter().map(|(_, ts)| ts).collect()
    }
}

/// `token_service:` is the service named `default`; `token_services:` names others (or `default`,
/// when `token_service:` is absent). At least one is required.
fn validate_token_services(
    single: Option<RawTokenService>,
    named: BTreeMap<String, RawTokenService>,
    errors: &mut Errors,
) -> TokenServices {
    let mut out = Vec::with_capacity(named.len() + 1);
    if single.is_none() && named.is_empty() {
        errors.add(
            "token_service",
            "is required (or `token_services`, a map of named ones)",
        );
    }
    if let Some(raw) = single {
        if named.contains_key(DEFAULT_TOKEN_SERVICE) {
            errors.add(
                format!("token_services.{DEFAULT_TOKEN_SERVICE}"),
                "`token_service` already is the one named `default`",
            );
        }
        let ts = validate_token_service(DEFAULT_TOKEN_SERVICE, raw, "token_service", errors);
        out.push((DEFAULT_TOKEN_SERVICE.to_owned(), ts));
    }
    for (name, raw) in named {
        let at = format!("token_services.{name}");
        if !is_service_name(&name) {
            errors.add(&at, "a name is 1 to 64 of A-Z a-z 0-9 _ . -");
        }
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let ts = validate_token_service(&name, raw, &at, errors);
        out.push((name, ts));
    }
    TokenServices(out)
}

fn is_service_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn validate_token_service(name: &str, raw: RawTokenService, at: &str, errors: &mut Errors) -> Option<TokenService> {
    let endpoint = match (&raw.token_endpoint, &raw.issuer) {
        (Some(url), None) => http_url(url, &format!("{at}.token_endpoint"), errors).map(Endpoint::Token),
        (None, Some(url)) => http_url(url, &format!("{at}.issuer"), errors).map(|issuer| Endpoint::Discover { issuer }),
        (Some(_), Some(_)) => {
            errors.add(at, "set `token_endpoint` or `issuer`, not both");
            None
        }
        (None, None) => {
            errors.add(at, "set `token_endpoint`, or `issuer` for discovery");
            None
        }
    };
    let client_id = raw.client_id.unwrap_or_default();
    if client_id.is_empty() {
        errors.add(format!("{at}.client_id"), "is required");
    }
    let auth = validate_auth(raw.auth, &format!("{at}.auth"), errors);
    let ca_file = raw.ca_file.filter(|path| match crate::credentials::ca_bundle(path) {
        Ok(_) => true,
        Err(e) => {
            errors.add(format!("{at}.ca_file"), e);
            false
        }
    });
    let timeout = duration(
        raw.timeout.as_deref(),
        &format!("{at}.timeout"),
        Duration::from_secs(2),
        errors,
    );
    if timeout.is_zero() {
        errors.add(format!("{at}.timeout"), "must be more than 0");
    }
    let retries = raw.retries.unwrap_or(2);
    if retries > 5 {
        errors.add(format!("{at}.retries"), "at most 5: retries share the timeout");
    }
    let max_concurrent_exchanges = raw.max_concurrent_exchanges.unwrap_or(64);
    if !(1..=10_000).contains(&max_concurrent_exchanges) {
        errors.add(format!("{at}.max_concurrent_exchanges"), "must be between 1 and 10000");
    }
    let circuit_breaker = raw.circuit_breaker.validate(&format!("{at}.circuit_breaker"), errors);
    let max_response_bytes = raw.max_response_bytes.unwrap_or(64 * 1024);
    if !(1024..=1024 * 1024).contains(&max_response_bytes) {
        errors.add(format!("{at}.max_response_bytes"), "must be between 1024 and 1048576");
    }
    Some(TokenService {
        name: name.to_owned(),
        endpoint: endpoint?,
        client_id,
        profile: raw.profile,
        auth: auth?,
        ca_file,
        timeout,
        retries,
        max_response_bytes,
        max_concurrent_exchanges,
        circuit_breaker,
    })
}

fn validate_auth(raw: RawClientAuth, at: &str, errors: &mut Errors) -> Option<ClientAuth> {
    let field = |name: &str| format!("{at}.{name}");
    let secret = |errors: &mut Errors| -> Option<Secret> {
        match (&raw.secret_file, &raw.secret_env) {
            (Some(path), None) => read_secret(path, &field("secret_file"), errors),
            (None, Some(name)) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                _ => {
                    errors.add(field("secret_env"), format!("`{name}` is not set or empty"));
                    None
                }
            },
            (Some(_), Some(_)) => {
                errors.add(at, "set `secret_file` or `secret_env`, not both");
                None
            }
            (None, None) => {
                errors.add(at, "this method needs `secret_file` or `secret_env`");
                None
            }
        }
    };
    match raw.method {
        AuthMethod::None => Some(ClientAuth::None),
        AuthMethod::ClientSecretBasic => secret(errors).map(ClientAuth::SecretBasic),
        AuthMethod::ClientSecretPost => secret(errors).map(ClientAuth::SecretPost),
        AuthMethod::PrivateKeyJwt => {
            let Some(path) = &raw.key_file else {
                errors.add(field("key_file"), "is required for private_key_jwt");
                return None;
            };
            let key_pem = read_secret(path, &field("key_file"), errors)?;
            if jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.expose().as_bytes()).is_err()
                && jsonwebtoken::EncodingKey::from_ec_pem(key_pem.expose().as_bytes()).is_err()
            {
                errors.add(field("key_file"), "is not a PEM RSA or EC private key");
                return None;
            }
            Some(ClientAuth::PrivateKeyJwt {
                key_pem,
                key_id: raw.key_id,
            })
        }
        AuthMethod::TlsClientAuth => {
            let (Some(cert_file), Some(key_file)) = (&raw.cert_file, &raw.key_file) else {
                errors.add(at, "tls_client_auth needs `cert_file` and `key_file`");
                return None;
            };
            if let Err(e) = crate::credentials::client_identity(cert_file, key_file) {
                errors.add(field("cert_file"), e);
                return None;
            }
            Some(ClientAuth::TlsClientAuth {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            })
        }
        AuthMethod::JwtBearerAssertionFile => {
            let Some(path) = &raw.assertion_file else {
                errors.add(field("assertion_file"), "is required for jwt_bearer_assertion_file");
                return None;
            };
            if let Err(e) = crate::credentials::read_assertion(path) {
                errors.add(field("assertion_file"), e);
                return None;
            }
            Some(ClientAuth::JwtBearerAssertionFile(path.clone()))
        }
    }
}

fn validate_destinations(
    raw: Vec<RawDestination>,
    services: &TokenServices,
    verified: bool,
    has_actor: bool,
    errors: &mut Errors,
) -> Vec<Destination> {
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
            let host = match crate::canonical::host_pattern(host) {
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
        let token_service = d.token_service.unwrap_or_else(|| DEFAULT_TOKEN_SERVICE.to_owned());
        match services.get(&token_service) {
            None if !services.0.is_empty() => errors.add(
                at("token_service"),
                format!(
                    "`{token_service}` is not a configured token service (there are: {})",
                    services.names()
                ),
            ),
            Some(Some(ts)) if ts.profile == Profile::EntraObo => {
                if d.requested_token_type.is_some() {
                    errors.add(
                        at("requested_token_type"),
                        format!(
                            "token service `{token_service}` uses the entra_obo profile, which has no requested_token_type"
                        ),
                    );
                }
                // Entra's on-behalf-of request has no actor token: say so rather than drop it.
                if has_actor && d.actor == DestinationActor::Inherit {
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
        out.push(Destination {
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
        });
    }
    out
}

fn socket_addr(text: &str, field: &str, errors: &mut Errors) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.add(field, format!("`{text}` is not an address like 127.0.0.1:9191"));
            None
        }
    }
}

// === Telemetry and audit (the YAML shape, the validated values, validation; used by src/telemetry) ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTelemetry {
    /// `service.name` of Baton's spans (default `baton`).
    pub service_name: Option<String>,
    /// OTLP trace export; absent = no tracing (the default).
    pub tracing: Option<RawTracing>,
    /// Envoy `dynamic_metadata` on every reply, for the access log; off by default, like the audit
    /// log and traces (it costs every request, see BENCHMARKS.md).
    pub dynamic_metadata: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTracing {
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub headers: Vec<RawHeader>,
    pub sampler_ratio: Option<f64>,
    pub timeout: Option<String>,
    pub subject: SubjectMode,
}

/// A header sent with every export; a value that is a credential comes from a file or the environment.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHeader {
    pub name: String,
    pub value: Option<String>,
    pub value_file: Option<PathBuf>,
    pub value_env: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// How the subject's `sub` is written: as it is, or as `sha256:<fingerprint>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectMode {
    #[default]
    Plain,
    Hashed,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAudit {
    pub sink: AuditSinkKind,
    pub path: Option<PathBuf>,
    pub max_bytes: Option<u64>,
    pub max_files: Option<u32>,
    pub buffer: Option<usize>,
    pub subject: SubjectMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSinkKind {
    #[default]
    Off,
    Stdout,
    File,
}

#[derive(Debug)]
pub struct Telemetry {
    pub service_name: String,
    pub tracing: Option<Tracing>,
    pub dynamic_metadata: bool,
}

#[derive(Debug)]
pub struct Tracing {
    pub endpoint: Url,
    pub protocol: OtlpProtocol,
    /// Lower-case names; values are secrets (an API key is common).
    pub headers: Vec<(String, Secret)>,
    /// For traces that do not arrive with a sampling decision (no sampled `traceparent`).
    pub sampler_ratio: f64,
    pub timeout: Duration,
    pub subject: SubjectMode,
}

#[derive(Debug)]
pub struct Audit {
    pub sink: AuditSink,
    /// Records queued for the writer; past this a record is dropped and counted, never waited for.
    pub buffer: usize,
    pub subject: SubjectMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    Off,
    Stdout,
    /// Rotated when the next line would pass `max_bytes`: `path` becomes `path.1`, and so on up to
    /// `path.<max_files>`.
    File {
        path: PathBuf,
        max_bytes: u64,
        max_files: u32,
    },
}

fn validate_telemetry(raw: RawTelemetry, errors: &mut Errors) -> Telemetry {
    let service_name = raw.service_name.unwrap_or_else(|| "baton".to_owned());
    if service_name.trim().is_empty() {
        errors.add("telemetry.service_name", "must not be empty");
    }
    let tracing = raw.tracing.and_then(|t| {
        let endpoint = match &t.endpoint {
            Some(url) => http_url(url, "telemetry.tracing.endpoint", errors),
            None => {
                errors.add("telemetry.tracing.endpoint", "is required to export traces");
                None
            }
        };
        let mut headers = Vec::with_capacity(t.headers.len());
        for (i, h) in t.headers.into_iter().enumerate() {
            let at = |field: &str| format!("telemetry.tracing.headers[{i}].{field}");
            let name = h.name.to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                errors.add(at("name"), format!("`{}` is not a header name", h.name));
            }
            let value = match (h.value, &h.value_file, &h.value_env) {
                (Some(v), None, None) => Some(Secret::new(v)),
                (None, Some(path), None) => read_secret(path, &at("value_file"), errors),
                (None, None, Some(var)) => match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                    _ => {
                        errors.add(at("value_env"), format!("`{var}` is not set or empty"));
                        None
                    }
                },
                _ => {
                    errors.add(at("value"), "set exactly one of `value`, `value_file`, `value_env`");
                    None
                }
            };
            if let Some(v) = value {
                if v.expose().bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                    headers.push((name, v));
                } else {
                    errors.add(at("value"), "must be visible ASCII");
                }
            }
        }
        let sampler_ratio = t.sampler_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sampler_ratio) {
            errors.add("telemetry.tracing.sampler_ratio", "must be between 0 and 1");
        }
        let timeout = duration(
            t.timeout.as_deref(),
            "telemetry.tracing.timeout",
            Duration::from_secs(5),
            errors,
        );
        if timeout.is_zero() {
            errors.add("telemetry.tracing.timeout", "must be more than 0");
        }
        Some(Tracing {
            endpoint: endpoint?,
            protocol: t.protocol,
            headers,
            sampler_ratio,
            timeout,
            subject: t.subject,
        })
    });
    Telemetry {
        service_name,
        tracing,
        dynamic_metadata: raw.dynamic_metadata,
    }
}

fn validate_audit(raw: RawAudit, errors: &mut Errors) -> Audit {
    let max_bytes = raw.max_bytes.unwrap_or(100 * 1024 * 1024);
    let max_files = raw.max_files.unwrap_or(5);
    let sink = match (raw.sink, raw.path) {
        (AuditSinkKind::Off, _) => AuditSink::Off,
        (AuditSinkKind::Stdout, None) => AuditSink::Stdout,
        (AuditSinkKind::Stdout, Some(_)) => {
            errors.add("audit.path", "is only for `sink: file`");
            AuditSink::Stdout
        }
        (AuditSinkKind::File, None) => {
            errors.add("audit.path", "is required for `sink: file`");
            AuditSink::Off
        }
        (AuditSinkKind::File, Some(path)) => {
            if path.as_os_str().is_empty() || path.file_name().is_none() {
                errors.add("audit.path", "must be a file path");
            }
            AuditSink::File {
                path,
                max_bytes,
                max_files,
            }
        }
    };
    if max_bytes < 4096 {
        errors.add("audit.max_bytes", "must be at least 4096");
    }
    if !(1..=100).contains(&max_files) {
        errors.add("audit.max_files", "must be between 1 and 100");
    }
    let buffer = raw.buffer.unwrap_or(8192);
    if !(1..=1_000_000).contains(&buffer) {
        errors.add("audit.buffer", "must be between 1 and 1000000");
    }
    Audit {
        sink,
        buffer,
        subject: raw.subject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let ts = &config.token_services[0];
        assert_eq!((ts.name.as_str(), ts.profile), ("default", Profile::Rfc8693));
        assert_eq!(ts.timeout, Duration::from_secs(2));
        assert!(matches!(&ts.auth, ClientAuth::SecretBasic(s) if s.expose() == "s3cr3t-value"));
        assert_eq!(config.destinations[0].token_service, "default");
        assert_eq!(config.cache.expiry_margin, Duration::from_secs(30));
        assert_eq!(config.destinations[0].hosts[1], "orders", "hosts are lower-cased");
        assert_eq!(config.subject_token.max_bytes, 16 * 1024);
        assert_eq!(config.unknown_destination, UnknownDestination::Strip);
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
        assert_eq!(ok.destinations[0].hosts, ["orders.local:8443", "*.svc.local"]);
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
        let names: Vec<&str> = config.token_services.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["default", "entra"]);
        assert_eq!(config.token_services[1].profile, Profile::EntraObo);
        assert_eq!(config.destinations[0].token_service, "default");
        assert_eq!(config.destinations[1].token_service, "entra");

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
        assert_eq!(config.broker.map(|b| b.callers), Some(BrokerCallers::Mtls));
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
            "listen: {{grpc: 127.0.0.1:9191}}\ntoken_service:\n  token_endpoint: http://x/token\n  client_id: c\n  auth: {{method: client_secret_basic, secret_file: {secret}}}\nbroker: {{ caller_client_ids: [job] }}\n"
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
