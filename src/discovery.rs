//! Finding the token endpoint from the issuer: RFC 8414 authorization-server metadata, then OpenID
//! Connect discovery. It runs in the background until it succeeds (readiness waits for it) and
//! accepts only metadata whose `issuer` is the configured one (RFC 8414 section 3.3). A client that
//! authenticates with mutual TLS uses the metadata's `mtls_endpoint_aliases` token endpoint when
//! there is one (RFC 8705 section 5).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::exchange::{TokenService, read_bounded};

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    token_endpoint: Option<String>,
    mtls_endpoint_aliases: Option<Aliases>,
}

#[derive(Deserialize)]
struct Aliases {
    token_endpoint: Option<String>,
}

impl Metadata {
    fn token_endpoint(self, mtls: bool) -> Option<String> {
        let alias = self.mtls_endpoint_aliases.and_then(|a| a.token_endpoint);
        match alias {
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

/// One discovery attempt; `mtls`: the client authenticates with mutual TLS.
pub async fn discover(http: &reqwest::Client, issuer: &Url, mtls: bool) -> Result<Url, String> {
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
        let metadata: Metadata = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
        if metadata.issuer.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
            return Err(format!(
                "{url}: metadata names issuer {:?}, not the configured one",
                metadata.issuer
            ));
        }
        let endpoint = metadata
            .token_endpoint(mtls)
            .ok_or_else(|| format!("{url}: no token_endpoint"))?;
        return Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| format!("{url}: token_endpoint is not an http(s) URL"));
    }
    Err(last)
}

/// Retry discovery (1 s, doubling to 30 s) until the endpoint is known.
pub async fn run(service: Arc<TokenService>, issuer: Url) {
    let endpoint: &Arc<OnceLock<Url>> = service.endpoint();
    let mut backoff = Duration::from_secs(1);
    loop {
        match discover(&service.http().await, &issuer, service.uses_mtls()).await {
            Ok(url) => {
                tracing::info!(token_service = service.name(), token_endpoint = %url, "token endpoint discovered");
                let _ = endpoint.set(url);
                return;
            }
            Err(e) => {
                tracing::warn!(token_service = service.name(), issuer = %issuer, error = %e, retry_in = ?backoff, "discovery failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtls_clients_prefer_the_rfc_8705_alias() {
        let metadata = || -> Metadata {
            serde_json::from_str(
                r#"{"issuer":"https://as","token_endpoint":"https://as/token","mtls_endpoint_aliases":{"token_endpoint":"https://mtls.as/token"}}"#,
            )
            .expect("metadata")
        };
        assert_eq!(
            metadata().token_endpoint(true).as_deref(),
            Some("https://mtls.as/token")
        );
        assert_eq!(metadata().token_endpoint(false).as_deref(), Some("https://as/token"));
        let plain: Metadata =
            serde_json::from_str(r#"{"issuer":"https://as","token_endpoint":"https://as/token"}"#).expect("metadata");
        assert_eq!(plain.token_endpoint(true).as_deref(), Some("https://as/token"));
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
