//! Finding the token endpoint from the issuer: RFC 8414 authorization-server metadata, then OpenID
//! Connect discovery. It runs in the background until it succeeds (readiness waits for it) and
//! accepts only metadata whose `issuer` is the configured one (RFC 8414 section 3.3). A client that
//! authenticates with mutual TLS uses the metadata's `mtls_endpoint_aliases` token endpoint when
//! there is one (RFC 8705 section 5).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::exchange::TokenService;
use crate::http::read_bounded;

#[derive(Deserialize)]
struct RawMetadata {
    issuer: String,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    mtls_endpoint_aliases: Option<RawAliases>,
}

#[derive(Deserialize)]
struct RawAliases {
    token_endpoint: Option<String>,
}

/// What Baton uses of an issuer's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub token_endpoint: Option<Url>,
    /// RFC 8705 `mtls_endpoint_aliases.token_endpoint`.
    pub mtls_token_endpoint: Option<Url>,
    pub jwks_uri: Option<Url>,
}

impl Metadata {
    /// The token endpoint a client uses: the mutual-TLS alias when it authenticates with mTLS and
    /// there is one.
    pub fn token_endpoint_for(self, mtls: bool) -> Option<Url> {
        match self.mtls_token_endpoint {
            Some(alias) if mtls => Some(alias),
            _ => self.token_endpoint,
        }
    }
}

/// The metadata URLs to try, in order: RFC 8414 inserts the well-known segment before the issuer's
/// path; OpenID Connect appends it.
pub fn metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    vec![rfc8414, oidc]
}

/// One discovery attempt.
pub async fn discover(http: &reqwest::Client, issuer: &Url) -> Result<Metadata, String> {
    let mut last = String::new();
    for url in metadata_urls(issuer) {
        let response = match http.get(url.clone()).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                last = format!("{url}: HTTP {}", r.status().as_u16());
                continue;
            }
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        let body = read_bounded(response, 256 * 1024).await.map_err(|e| e.to_string())?;
        let metadata: RawMetadata = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
        if metadata.issuer.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
            return Err(format!(
                "{url}: metadata names issuer {:?}, not the configured one",
                metadata.issuer
            ));
        }
        let http_url = |field: &str, value: Option<String>| -> Result<Option<Url>, String> {
            value
                .map(|v| {
                    Url::parse(&v)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https"))
                        .ok_or_else(|| format!("{url}: {field} is not an http(s) URL"))
                })
                .transpose()
        };
        return Ok(Metadata {
            token_endpoint: http_url("token_endpoint", metadata.token_endpoint)?,
            mtls_token_endpoint: http_url(
                "mtls_endpoint_aliases.token_endpoint",
                metadata.mtls_endpoint_aliases.and_then(|a| a.token_endpoint),
            )?,
            jwks_uri: http_url("jwks_uri", metadata.jwks_uri)?,
        });
    }
    Err(last)
}

/// Retry discovery (1 s, doubling to 30 s) until the token service's endpoint is known. Each
/// attempt uses the service's HTTP client (its CA bundle and client certificate).
pub async fn run(service: std::sync::Weak<TokenService>, issuer: Url) {
    let mut backoff = Duration::from_secs(1);
    // Until found, or until a reload drops the service.
    while let Some(service) = service.upgrade() {
        let found = discover(&service.http().await, &issuer).await.and_then(|m| {
            m.token_endpoint_for(service.uses_mtls())
                .ok_or_else(|| "the issuer's metadata has no token_endpoint".to_owned())
        });
        match found {
            Ok(url) => {
                tracing::info!(token_service = service.name(), token_endpoint = %url, "token endpoint discovered");
                let _ = service.endpoint().set(url);
                return;
            }
            Err(e) => {
                tracing::warn!(token_service = service.name(), issuer = %issuer, error = %e, retry_in = ?backoff, "discovery failed");
            }
        }
        drop(service);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtls_clients_prefer_the_rfc_8705_alias() {
        let url = |u: &str| Some(Url::parse(u).expect("url"));
        let metadata = Metadata {
            token_endpoint: url("https://as/token"),
            mtls_token_endpoint: url("https://mtls.as/token"),
            jwks_uri: None,
        };
        assert_eq!(metadata.clone().token_endpoint_for(true), url("https://mtls.as/token"));
        assert_eq!(metadata.token_endpoint_for(false), url("https://as/token"));
        let plain = Metadata {
            token_endpoint: url("https://as/token"),
            mtls_token_endpoint: None,
            jwks_uri: None,
        };
        assert_eq!(plain.token_endpoint_for(true), url("https://as/token"));
    }

    #[test]
    fn well_known_urls_follow_both_specs() {
        let urls = |issuer: &str| {
            metadata_urls(&Url::parse(issuer).expect("url"))
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            urls("https://as.example"),
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            urls("https://as.example/tenant/"),
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant",
                "https://as.example/tenant/.well-known/openid-configuration"
            ]
        );
    }
}
