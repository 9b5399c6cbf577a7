//! The HTTP client side every outbound call shares (token services, discovery, JWKS, introspection,
//! the development token service's tests): one client configuration (rustls, pooled, no redirects,
//! bounded waits), a body read that never goes past its bound, errors with their causes, and random
//! ids. It knows nothing of OAuth or of any one caller's errors, and never logs a body.

use std::time::Duration;

use base64::Engine as _;

/// The HTTP client every token-service call uses: rustls, pooled, no redirects, bounded waits.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    http_client_builder(timeout).build()
}

/// `http_client`'s settings, for a caller that adds TLS roots or a client certificate.
pub(crate) fn http_client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Longer than the bound: an error, never a truncation.
    #[error("the answer is larger than max_response_bytes")]
    TooLarge,
    /// The connection failed while reading (the URL left out).
    #[error("{0}")]
    Read(String),
}

/// Read at most `max` bytes of body; a longer one is an error, not a truncation.
pub async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes ("error sending request: ... : invalid peer certificate"), so a TLS
/// failure says why. For reqwest errors, never the form body.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// 128 random bits, base64url.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The `traceparent` for an outgoing call made in the current span (the exchange span, while a token
/// exchange runs), if there is one. `exchange` sends it to the token service.
pub fn current_traceparent() -> Option<String> {
    let cx = opentelemetry::Context::current();
    let span = opentelemetry::trace::TraceContextExt::span(&cx);
    let sc = span.span_context();
    sc.is_valid()
        .then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}
