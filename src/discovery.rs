//! Finding the token endpoint from the issuer: RFC 8414 authorization-server metadata, then OpenID
//! Connect discovery. It runs in the background until it succeeds (readiness waits for it) and
//! accepts only metadata whose `issuer` is the configured one (RFC 8414 section 3.3).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::exchange::read_bounded;

#[derive(Deserialize)]
struct RawMetadata {
    issuer: String,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
}

/// What Baton uses of an issuer's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub token_endpoint: Option<Url>,
    pub jwks_uri: Option<Url>,
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
            jwks_uri: http_url("jwks_uri", metadata.jwks_uri)?,
        });
    }
    Err(last)
}

/// Retry discovery (1 s, doubling to 30 s) until the endpoint is known.
pub async fn run(http: reqwest::Client, issuer: Url, endpoint: Arc<OnceLock<Url>>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let found = discover(&http, &issuer).await.and_then(|m| {
            m.token_endpoint
                .ok_or_else(|| "the issuer's metadata has no token_endpoint".to_owned())
        });
        match found {
            Ok(url) => {
                tracing::info!(token_endpoint = %url, "token endpoint discovered");
                let _ = endpoint.set(url);
                return;
            }
            Err(e) => tracing::warn!(issuer = %issuer, error = %e, retry_in = ?backoff, "discovery failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
