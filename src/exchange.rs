//! The token service client: one RFC 8693 token-exchange request, with client authentication,
//! an overall deadline, bounded retries on connection errors and 5xx, a response-size bound, and a
//! strict parse of the answer. It never follows a redirect, never logs a token, and never retries a
//! definite refusal.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::config::{ClientAuth, Endpoint, TokenService as TokenServiceConfig};
use crate::extract::is_b64token;
use crate::reason::{Denial, Reason};
use crate::secret::Secret;

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What is asked for one destination: everything the token service sees besides the tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub audience: Option<String>,
    pub resource: Option<String>,
    /// Space-separated, as sent.
    pub scope: Option<String>,
    pub requested_token_type: Option<String>,
    pub subject_token_type: &'static str,
    /// The workload's own token and its type (RFC 8693 section 4.1: it becomes the `act` claim).
    pub actor: Option<(Secret, String)>,
}

/// A token the token service issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub access_token: Secret,
    pub issued_token_type: Option<String>,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
}

/// Why an exchange produced no token.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The token service answered with an RFC 6749 error (`invalid_grant`, `invalid_target`, ...).
    #[error("token service refused the exchange: {error} (HTTP {status})")]
    Refused { status: u16, error: String },
    #[error("token service unreachable: {0}")]
    Unreachable(String),
    #[error("token service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("token service answered HTTP {0}")]
    Status(u16),
    #[error("token service is rate limiting (HTTP 429)")]
    Busy,
    #[error("token service answer unusable: {0}")]
    BadResponse(&'static str),
    #[error("token endpoint not yet discovered from the issuer")]
    NotDiscovered,
}

impl From<&ExchangeError> for Denial {
    fn from(e: &ExchangeError) -> Self {
        match e {
            ExchangeError::Refused { error, .. } => match error.as_str() {
                // RFC 8693 2.2.2 answers an invalid subject (or actor) token with invalid_request;
                // many servers say invalid_grant.
                "invalid_grant" | "invalid_request" => Denial::new(
                    Reason::SubjectTokenRejected,
                    "the token service does not accept the subject token",
                ),
                "invalid_target" => Denial::new(
                    Reason::TargetRefused,
                    "the token service will not issue a token for this destination",
                ),
                "unauthorized_client" => Denial::new(
                    Reason::ClientUnauthorized,
                    "this workload may not exchange tokens for this destination",
                ),
                "invalid_scope" => Denial::new(Reason::ScopeRefused, "the token service refused the requested scope"),
                "invalid_client" => Denial::new(
                    Reason::TokenServiceClientRejected,
                    "the token service rejected Baton's client credentials",
                ),
                _ => Denial::new(
                    Reason::TokenServiceError,
                    format!("the token service refused the exchange ({})", safe_code(error)),
                ),
            },
            ExchangeError::Unreachable(_) | ExchangeError::NotDiscovered => {
                Denial::new(Reason::TokenServiceUnavailable, "the token service is unreachable")
            }
            ExchangeError::Timeout(d) => Denial::new(
                Reason::TokenServiceTimeout,
                format!("the token service did not answer within {d:?}"),
            ),
            ExchangeError::Status(s) => Denial::new(
                Reason::TokenServiceError,
                format!("the token service answered HTTP {s}"),
            ),
            ExchangeError::Busy => Denial::new(Reason::TokenServiceBusy, "the token service is rate limiting"),
            ExchangeError::BadResponse(why) => Denial::new(
                Reason::TokenServiceBadResponse,
                format!("the token service's answer is unusable: {why}"),
            ),
        }
    }
}

/// An RFC 6749 error code is `1*( %x20-21 / %x23-5B / %x5D-7E )`; anything else is not echoed.
fn safe_code(code: &str) -> &str {
    if code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        code
    } else {
        "unrecognised error"
    }
}

/// Talks to one token service.
#[derive(Debug)]
pub struct TokenService {
    http: reqwest::Client,
    endpoint: Arc<OnceLock<Url>>,
    client_id: String,
    auth: ClientAuth,
    timeout: Duration,
    retries: u32,
    max_response_bytes: usize,
}

impl TokenService {
    pub fn new(config: &TokenServiceConfig) -> Result<Self, reqwest::Error> {
        let http = http_client(config.timeout)?;
        let endpoint = Arc::new(OnceLock::new());
        if let Endpoint::Token(url) = &config.endpoint {
            let _ = endpoint.set(url.clone());
        }
        Ok(Self {
            http,
            endpoint,
            client_id: config.client_id.clone(),
            auth: config.auth.clone(),
            timeout: config.timeout,
            retries: config.retries,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// Set once discovery has found the token endpoint; readiness waits on it.
    pub fn endpoint(&self) -> &Arc<OnceLock<Url>> {
        &self.endpoint
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// One token exchange, retried on connection errors and 5xx while the deadline allows.
    pub async fn exchange(&self, subject_token: &str, target: &Target) -> Result<Issued, ExchangeError> {
        let endpoint = self.endpoint.get().ok_or(ExchangeError::NotDiscovered)?;
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let result = tokio::time::timeout_at(deadline, self.attempt(endpoint, subject_token, target))
                .await
                .unwrap_or(Err(ExchangeError::Timeout(self.timeout)));
            let retryable = matches!(
                result,
                Err(ExchangeError::Unreachable(_) | ExchangeError::Status(500..=599))
            );
            if !retryable || attempt >= self.retries {
                return result;
            }
            attempt += 1;
            let backoff = jittered_backoff(attempt);
            if Instant::now() + backoff >= deadline {
                return result;
            }
            tracing::debug!(attempt, ?backoff, error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(), "retrying token exchange");
            tokio::time::sleep(backoff).await;
        }
    }

    async fn attempt(&self, endpoint: &Url, subject_token: &str, target: &Target) -> Result<Issued, ExchangeError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", target.subject_token_type),
        ];
        let optional = [
            ("audience", &target.audience),
            ("resource", &target.resource),
            ("scope", &target.scope),
            ("requested_token_type", &target.requested_token_type),
        ];
        form.extend(optional.iter().filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))));
        if let Some((token, token_type)) = &target.actor {
            form.push(("actor_token", token.expose()));
            form.push(("actor_token_type", token_type));
        }

        let mut request = self.http.post(endpoint.clone()).header("accept", "application/json");
        let assertion;
        match &self.auth {
            ClientAuth::None => form.push(("client_id", &self.client_id)),
            ClientAuth::SecretBasic(secret) => {
                request = request.header("authorization", basic_auth(&self.client_id, secret));
            }
            ClientAuth::SecretPost(secret) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret.expose()));
            }
            ClientAuth::PrivateKeyJwt { key_pem, key_id } => {
                assertion = client_assertion(&self.client_id, endpoint, key_pem, key_id.as_deref())
                    .map_err(|_| ExchangeError::BadResponse("cannot sign the client assertion"))?;
                form.push(("client_id", &self.client_id));
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
                form.push(("client_assertion", &assertion));
            }
        }
        let response = request.form(&form).send().await.map_err(|e| {
            if e.is_timeout() {
                ExchangeError::Timeout(self.timeout)
            } else {
                // reqwest errors name the URL and the cause, never the form body.
                ExchangeError::Unreachable(e.without_url().to_string())
            }
        })?;
        let status = response.status().as_u16();
        let body = read_bounded(response, self.max_response_bytes).await?;
        parse_response(status, &body)
    }
}

/// The HTTP client every token-service call uses: rustls, pooled, no redirects, bounded waits.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Read at most `max` bytes of body; a longer one is an error, not a truncation.
pub async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, ExchangeError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(ExchangeError::BadResponse(
            "the answer is larger than max_response_bytes",
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ExchangeError::Unreachable(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > max {
            return Err(ExchangeError::BadResponse(
                "the answer is larger than max_response_bytes",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    issued_token_type: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Turn the token service's HTTP answer into a token or a precise error.
pub fn parse_response(status: u16, body: &[u8]) -> Result<Issued, ExchangeError> {
    match status {
        200 => {}
        429 => return Err(ExchangeError::Busy),
        400 | 401 | 403 => {
            return match serde_json::from_slice::<ErrorBody>(body) {
                Ok(e) => Err(ExchangeError::Refused { status, error: e.error }),
                Err(_) => Err(ExchangeError::Status(status)),
            };
        }
        other => return Err(ExchangeError::Status(other)),
    }
    let parsed: SuccessBody =
        serde_json::from_slice(body).map_err(|_| ExchangeError::BadResponse("not a JSON token response"))?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(ExchangeError::BadResponse("no access_token"))?;
    // It goes into an HTTP header: anything but a bearer token's characters could split the header.
    if !is_b64token(&access_token) {
        return Err(ExchangeError::BadResponse(
            "access_token has characters a bearer token cannot have",
        ));
    }
    let token_type = parsed.token_type.ok_or(ExchangeError::BadResponse("no token_type"))?;
    if !token_type.eq_ignore_ascii_case("bearer") && !token_type.eq_ignore_ascii_case("n_a") {
        return Err(ExchangeError::BadResponse("token_type is neither Bearer nor N_A"));
    }
    let expires_in = match parsed.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(seconds(n.as_f64())),
        // Some servers send it as a string.
        Some(serde_json::Value::String(s)) => Some(seconds(s.trim().parse::<f64>().ok())),
        Some(_) => return Err(ExchangeError::BadResponse("expires_in is not a number")),
    };
    Ok(Issued {
        access_token: Secret::new(access_token),
        issued_token_type: parsed.issued_token_type,
        token_type,
        expires_in,
        scope: parsed.scope,
    })
}

/// A lifetime in whole seconds: negative, NaN or unparsable means "already expired" (0); absurd
/// values are capped at one year so arithmetic on them cannot overflow.
fn seconds(value: Option<f64>) -> u64 {
    match value {
        Some(v) if v.is_finite() && v > 0.0 => v.min(365.0 * 24.0 * 3600.0) as u64,
        _ => 0,
    }
}

/// RFC 6749 2.3.1: client id and secret are form-urlencoded before they are joined and encoded.
fn basic_auth(client_id: &str, secret: &Secret) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret.expose())))
    )
}

/// RFC 7523 client assertion: a short-lived JWT about this client, for this token endpoint.
fn client_assertion(
    client_id: &str,
    endpoint: &Url,
    key_pem: &Secret,
    key_id: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = key_pem.expose().as_bytes();
    let (key, alg) = match EncodingKey::from_ec_pem(pem) {
        Ok(key) => (key, Algorithm::ES256),
        Err(_) => (EncodingKey::from_rsa_pem(pem)?, Algorithm::RS256),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": endpoint.as_str(),
        "iat": now,
        "exp": now + 60,
        "jti": random_id(),
    });
    let mut header = Header::new(alg);
    header.kid = key_id.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key)
}

/// 128 random bits, base64url.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// 25 ms, 50 ms, 100 ms, ... each scaled by a random factor in [0.5, 1.0).
fn jittered_backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(25) * 2u32.saturating_pow(attempt.saturating_sub(1).min(6));
    base.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Result<Issued, ExchangeError> {
        parse_response(200, body.as_bytes())
    }

    #[test]
    fn a_full_rfc_8693_answer_parses() {
        let issued = ok(r#"{"access_token":"abc.def.ghi","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":300,"scope":"orders.read"}"#)
            .expect("parses");
        assert_eq!(issued.access_token.expose(), "abc.def.ghi");
        assert_eq!(issued.expires_in, Some(300));
        assert_eq!(issued.scope.as_deref(), Some("orders.read"));
        assert_eq!(
            ok(r#"{"access_token":"a","token_type":"N_A","expires_in":"60"}"#)
                .expect("string lifetime")
                .expires_in,
            Some(60)
        );
        assert_eq!(
            ok(r#"{"access_token":"a","token_type":"bearer"}"#)
                .expect("no lifetime")
                .expires_in,
            None
        );
    }

    #[test]
    fn odd_lifetimes_never_extend_a_token() {
        for (body, want) in [("0", 0), ("-5", 0), ("1e30", 365 * 24 * 3600), ("\"soon\"", 0)] {
            let issued = ok(&format!(
                r#"{{"access_token":"a","token_type":"Bearer","expires_in":{body}}}"#
            ))
            .expect("parses");
            assert_eq!(issued.expires_in, Some(want), "{body}");
        }
        assert!(matches!(
            ok(r#"{"access_token":"a","token_type":"Bearer","expires_in":[1]}"#),
            Err(ExchangeError::BadResponse(_))
        ));
    }

    #[test]
    fn unusable_answers_are_refused() {
        for body in [
            "<html>oops</html>",
            r#"{"access_token":"abc","token_type":"Bear"#,
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":"","token_type":"Bearer"}"#,
            r#"{"access_token":"abc"}"#,
            r#"{"access_token":"abc","token_type":"DPoP"}"#,
            r#"{"access_token":"abc\r\nx-evil: 1","token_type":"Bearer"}"#,
        ] {
            assert!(matches!(ok(body), Err(ExchangeError::BadResponse(_))), "{body}");
        }
    }

    #[test]
    fn oauth_errors_map_to_stable_reasons() {
        let reason =
            |status: u16, body: &str| Denial::from(&parse_response(status, body.as_bytes()).expect_err("error")).reason;
        assert_eq!(
            reason(400, r#"{"error":"invalid_grant"}"#),
            Reason::SubjectTokenRejected
        );
        assert_eq!(
            reason(400, r#"{"error":"invalid_target","error_description":"no"}"#),
            Reason::TargetRefused
        );
        assert_eq!(
            reason(400, r#"{"error":"unauthorized_client"}"#),
            Reason::ClientUnauthorized
        );
        assert_eq!(reason(400, r#"{"error":"invalid_scope"}"#), Reason::ScopeRefused);
        assert_eq!(
            reason(401, r#"{"error":"invalid_client"}"#),
            Reason::TokenServiceClientRejected
        );
        assert_eq!(
            reason(400, r#"{"error":"invalid_request"}"#),
            Reason::SubjectTokenRejected
        );
        assert_eq!(
            reason(400, r#"{"error":"unsupported_grant_type"}"#),
            Reason::TokenServiceError
        );
        assert_eq!(reason(400, "not json"), Reason::TokenServiceError);
        assert_eq!(reason(500, "{}"), Reason::TokenServiceError);
        assert_eq!(reason(429, "{}"), Reason::TokenServiceBusy);
        assert_eq!(reason(302, ""), Reason::TokenServiceError);
    }

    #[test]
    fn a_hostile_error_code_is_not_echoed() {
        let err = parse_response(400, br#"{"error":"eyJhbGciOi.secret.token"}"#).expect_err("error");
        let denial = Denial::from(&err);
        assert!(!denial.description.contains("secret"), "{denial}");
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        let header = basic_auth("my client", &Secret::new("p@ss:word"));
        let decoded = STANDARD.decode(header.trim_start_matches("Basic ")).expect("base64");
        assert_eq!(String::from_utf8(decoded).expect("utf8"), "my+client:p%40ss%3Aword");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..10 {
            let d = jittered_backoff(attempt);
            assert!(d <= Duration::from_millis(25 * 64), "{d:?}");
            assert!(d >= Duration::from_millis(12), "{d:?}");
        }
    }
}
