//! The token services Baton asks for tokens: the `token_service:` / `token_services:` sections
//! (endpoint or issuer to discover it from, client authentication, timeouts, retries, limits, the
//! circuit breaker), validated into `Settings` that `exchange` builds its clients from. Secrets are
//! read here (from a file or the environment) and never appear in an error or a log line.

pub mod identity_chaining;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::files::read_secret;
use crate::secret::Secret;
use baton_decide::settings::{Errors, duration, http_url};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
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
    /// Calls in flight at once towards this service (default 64): exchanges, client_credentials
    /// grants and introspections; as many more may wait for a turn within the timeout, and any
    /// beyond that are refused at once with 503.
    pub max_concurrent_exchanges: Option<usize>,
    pub circuit_breaker: crate::breaker::RawCircuitBreaker,
    /// `profile: identity_chaining`: the home token service and the grant (`exchange::chaining`).
    pub identity_chaining: Option<identity_chaining::Raw>,
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
    /// Identity chaining across trust domains (draft-ietf-oauth-identity-chaining): a grant from
    /// the home token service, presented here with the RFC 7523 JWT-bearer grant.
    IdentityChaining,
}

impl Profile {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rfc8693 => "rfc8693",
            Self::EntraObo => "entra_obo",
            Self::IdentityChaining => "identity_chaining",
        }
    }
}

/// The name of the token service `token_service:` configures, and destinations use by default.
pub const DEFAULT_TOKEN_SERVICE: &str = "default";

#[derive(Debug)]
pub struct Settings {
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
    /// Under `profile: identity_chaining` (and only then).
    pub chaining: Option<identity_chaining::Settings>,
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

/// The token services by name, as far as they validated: a name whose section has errors is still
/// known (`None`), so destinations naming it are not reported a second time.
#[derive(Debug)]
pub(crate) struct Checked(Vec<(String, Option<Settings>)>);

impl Checked {
    pub(crate) fn get(&self, name: &str) -> Option<&Option<Settings>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, ts)| ts)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn names(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        names.join(", ")
    }

    /// Every service, if every one validated.
    pub(crate) fn valid(self) -> Option<Vec<Settings>> {
        self.0.into_iter().map(|(_, ts)| ts).collect()
    }
}

/// `token_service:` is the service named `default`; `token_services:` names others (or `default`,
/// when `token_service:` is absent). At least one is required.
pub(crate) fn validate(single: Option<Raw>, named: BTreeMap<String, Raw>, errors: &mut Errors) -> Checked {
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
    check_chaining_homes(&out, errors);
    Checked(out)
}

/// Each identity chaining service names a home service that exists and speaks RFC 8693.
fn check_chaining_homes(services: &[(String, Option<Settings>)], errors: &mut Errors) {
    for (name, ts) in services {
        let Some(chaining) = ts.as_ref().and_then(|ts| ts.chaining.as_ref()) else {
            continue;
        };
        let at = if name == DEFAULT_TOKEN_SERVICE {
            "token_service.identity_chaining.home".to_owned()
        } else {
            format!("token_services.{name}.identity_chaining.home")
        };
        match services.iter().find(|(n, _)| *n == chaining.home) {
            _ if chaining.home == *name => errors.add(at, "must name another token service"),
            None => errors.add(at, format!("`{}` is not a configured token service", chaining.home)),
            Some((_, Some(home))) if home.profile != Profile::Rfc8693 => errors.add(
                at,
                format!("`{}` must use the rfc8693 profile: it issues the grant", chaining.home),
            ),
            Some(_) => {}
        }
    }
}

fn is_service_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn validate_token_service(name: &str, raw: Raw, at: &str, errors: &mut Errors) -> Option<Settings> {
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
    let chaining = match (raw.profile, raw.identity_chaining) {
        (Profile::IdentityChaining, Some(section)) => {
            section.validate(raw.issuer.as_deref(), &format!("{at}.identity_chaining"), errors)
        }
        (Profile::IdentityChaining, None) => {
            errors.add(
                format!("{at}.identity_chaining"),
                "is required by the identity_chaining profile (at least `home`)",
            );
            None
        }
        (_, Some(_)) => {
            errors.add(
                format!("{at}.identity_chaining"),
                "applies only to `profile: identity_chaining`",
            );
            None
        }
        (_, None) => None,
    };
    if raw.profile == Profile::IdentityChaining && chaining.is_none() {
        return None;
    }
    Some(Settings {
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
        chaining,
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
