//! The token service client: one exchange request (RFC 8693, or Entra ID on-behalf-of), with client
//! authentication, an overall deadline, bounded retries on connection errors and 5xx, a
//! response-size bound, and a strict parse of the answer. It never follows a redirect, never logs a
//! token, and never retries a definite refusal. Calls to the token endpoint go through the
//! service's circuit breaker (`crate::breaker`, which says what counts and why). Identity chaining's
//! two-step exchange is `chaining`.

pub mod chaining;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::breaker::{Breaker, Outcome};
use crate::clock::{unix_ms, unix_now};
use crate::credentials::{self, Watched};
use crate::http::{BodyError, error_chain, http_client_builder, random_id, read_bounded};
use crate::oauth::{CLIENT_ASSERTION_TYPE, GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE};
use crate::secret::Secret;
use crate::token_service::{ClientAuth, Endpoint, Profile, Settings as TokenServiceConfig};
use baton_decide::reason::{Denial, Reason};
use baton_decide::request::is_b64token;

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
    /// Rate limited (HTTP 429), or still inside the pause it asked for; with how long is left of
    /// it, when it said.
    #[error("token service is rate limiting (HTTP 429)")]
    Busy(Option<Duration>),
    #[error("too many calls in flight towards the token service")]
    Saturated,
    #[error("token service answer unusable: {0}")]
    BadResponse(&'static str),
    #[error("token endpoint not yet discovered from the issuer")]
    NotDiscovered,
    #[error("the circuit breaker is open: the token service failed too often lately")]
    CircuitOpen(Duration),
    /// One of the two steps of identity chaining failed (`exchange::chaining`), named there.
    #[error("{0}")]
    Chaining(Box<chaining::ChainError>),
}

impl From<BodyError> for ExchangeError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => Self::BadResponse("the answer is larger than max_response_bytes"),
            BodyError::Read(why) => Self::Unreachable(why),
        }
    }
}

/// Signing Baton's own client assertion failed: a local problem, not the service's answer.
const CANNOT_SIGN: &str = "cannot sign the client assertion";
/// Signing a DPoP proof failed: a local problem too.
const CANNOT_SIGN_PROOF: &str = "cannot sign the DPoP proof";

impl ExchangeError {
    /// What this says about the token service's health, for its circuit breaker.
    fn health(&self) -> Outcome {
        match self {
            Self::Unreachable(_) | Self::Timeout(_) | Self::Status(500..=599) => Outcome::Failed,
            Self::BadResponse(why) if *why != CANNOT_SIGN && *why != CANNOT_SIGN_PROOF => Outcome::Failed,
            // An answer from a service that works: a refusal, a 4xx, a redirect.
            Self::Refused { .. } | Self::Status(_) => Outcome::Healthy,
            // Baton's own bounds, a pause the service asked for, or no call at all.
            Self::Busy(_) | Self::Saturated | Self::BadResponse(_) | Self::NotDiscovered | Self::CircuitOpen(_) => {
                Outcome::Neutral
            }
            // Each step was counted by the breaker of the service it called.
            Self::Chaining(_) => Outcome::Neutral,
        }
    }

    /// The denial for a call the service's bounds held back (its open breaker, a pause it asked
    /// for, the in-flight bound), whatever the call was for: callers that name other failures in
    /// their own terms (introspection) name these as an exchange does, with the `Retry-After`.
    pub fn held_back(&self) -> Option<Denial> {
        matches!(self, Self::CircuitOpen(_) | Self::Busy(_) | Self::Saturated).then(|| Denial::from(self))
    }

    /// The same error, for each caller that waited on one identity chaining grant.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Refused { status, error } => Self::Refused {
                status: *status,
                error: error.clone(),
            },
            Self::Unreachable(why) => Self::Unreachable(why.clone()),
            Self::Timeout(d) => Self::Timeout(*d),
            Self::Status(s) => Self::Status(*s),
            Self::Busy(d) => Self::Busy(*d),
            Self::Saturated => Self::Saturated,
            Self::BadResponse(why) => Self::BadResponse(why),
            Self::NotDiscovered => Self::NotDiscovered,
            Self::CircuitOpen(d) => Self::CircuitOpen(*d),
            Self::Chaining(e) => Self::Chaining(Box::new(chaining::ChainError {
                step: e.step,
                service: e.service.clone(),
                kind: match &e.kind {
                    chaining::ChainErrorKind::Exchange(inner) => chaining::ChainErrorKind::Exchange(inner.duplicate()),
                    chaining::ChainErrorKind::GrantInvalid(why) => chaining::ChainErrorKind::GrantInvalid(why),
                },
            })),
        }
    }
}

impl From<&ExchangeError> for Denial {
    fn from(e: &ExchangeError) -> Self {
        match e {
            ExchangeError::Refused { error, .. } => match error.as_str() {
                // RFC 8693 2.2.2 answers an invalid subject (or actor) token with invalid_request;
                // many servers say invalid_grant.
                // Entra ID answers `interaction_required` when the user must sign in again
                // (conditional access, MFA): the subject token will not do.
                "invalid_grant" | "invalid_request" | "interaction_required" => Denial::new(
                    Reason::SubjectTokenRejected,
                    "the token service does not accept the subject token",
                ),
                // Entra ID says `invalid_resource` for a resource it does not know.
                "invalid_target" | "invalid_resource" => Denial::new(
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
            ExchangeError::Saturated => Denial::new(
                Reason::TokenServiceBusy,
                "too many calls (exchanges and introspections) are in flight towards the token service",
            ),
            ExchangeError::Busy(pause) => {
                let denial = Denial::new(Reason::TokenServiceBusy, "the token service is rate limiting");
                match pause {
                    Some(left) => denial.retry_after(*left),
                    None => denial,
                }
            }
            ExchangeError::BadResponse(why) => Denial::new(
                Reason::TokenServiceBadResponse,
                format!("the token service's answer is unusable: {why}"),
            ),
            ExchangeError::CircuitOpen(left) => Denial::new(
                Reason::TokenServiceCircuitOpen,
                "the token service failed too often lately; it is not called for a moment",
            )
            .retry_after(*left),
            ExchangeError::Chaining(e) => Denial::from(&**e),
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
    name: String,
    /// The configured token endpoint or issuer: with the name, what the cache keys on.
    locator: String,
    /// Rebuilt when the CA bundle or the client certificate files change.
    http: Watched<reqwest::Client>,
    endpoint: Arc<OnceLock<Url>>,
    client_id: String,
    auth: Auth,
    profile: Profile,
    timeout: Duration,
    retries: u32,
    max_response_bytes: usize,
    /// Exchanges in flight; `waiting` counts those queued for a permit (bounded by the same number).
    in_flight: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
    /// Until when (Unix ms) the service asked not to be called (`Retry-After` on 429/503).
    busy_until: std::sync::atomic::AtomicU64,
    /// Shared with the service this one replaced on a reload, when it guards the same endpoint.
    breaker: Arc<Breaker>,
    /// `profile: identity_chaining`: the home service and the grants (`exchange::chaining`).
    chaining: Option<chaining::Chaining>,
    /// The latest `DPoP-Nonce` it gave (RFC 9449 §8): one per service, at most `dpop::MAX_NONCE_LEN`.
    dpop_nonce: std::sync::Mutex<Option<String>>,
}

impl TokenService {
    pub fn new(config: &TokenServiceConfig) -> Result<Self, String> {
        let timeout = config.timeout;
        let ca_file = config.ca_file.clone();
        let identity = match &config.auth {
            ClientAuth::TlsClientAuth { cert_file, key_file } => Some((cert_file.clone(), key_file.clone())),
            _ => None,
        };
        let mut watched: Vec<_> = ca_file.iter().cloned().collect();
        watched.extend(identity.iter().flat_map(|(c, k)| [c.clone(), k.clone()]));
        let http = Watched::new(watched, move || {
            credentials::tls_client(
                http_client_builder(timeout),
                ca_file.as_deref(),
                identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )
        })?;
        let auth = match &config.auth {
            ClientAuth::None => Auth::None,
            ClientAuth::SecretBasic(secret) => Auth::SecretBasic(secret.clone()),
            ClientAuth::SecretPost(secret) => Auth::SecretPost(secret.clone()),
            ClientAuth::PrivateKeyJwt { key_pem, key_id } => Auth::PrivateKeyJwt {
                key_pem: key_pem.clone(),
                key_id: key_id.clone(),
            },
            ClientAuth::TlsClientAuth { .. } => Auth::Tls,
            ClientAuth::JwtBearerAssertionFile(path) => {
                let p = path.clone();
                Auth::AssertionFile(Watched::new(vec![path.clone()], move || {
                    credentials::read_assertion(&p)
                })?)
            }
        };
        let endpoint = Arc::new(OnceLock::new());
        let locator = match &config.endpoint {
            Endpoint::Token(url) => {
                let _ = endpoint.set(url.clone());
                url.to_string()
            }
            Endpoint::Discover { issuer } => issuer.to_string(),
        };
        Ok(Self {
            name: config.name.clone(),
            locator,
            http,
            endpoint,
            client_id: config.client_id.clone(),
            auth,
            profile: config.profile,
            timeout,
            retries: config.retries,
            max_response_bytes: config.max_response_bytes,
            in_flight: tokio::sync::Semaphore::new(config.max_concurrent_exchanges),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max_waiting: config.max_concurrent_exchanges,
            busy_until: std::sync::atomic::AtomicU64::new(0),
            breaker: Arc::new(Breaker::new(&config.name, config.circuit_breaker.clone())),
            chaining: config.chaining.clone().map(chaining::Chaining::new),
            dpop_nonce: std::sync::Mutex::new(None),
        })
    }

    /// Under `profile: identity_chaining`: the home service and the grants.
    pub fn chaining(&self) -> Option<&chaining::Chaining> {
        self.chaining.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured token endpoint or issuer URL.
    pub fn locator(&self) -> &str {
        &self.locator
    }

    /// Set once discovery has found the token endpoint; readiness waits on it.
    pub fn endpoint(&self) -> &Arc<OnceLock<Url>> {
        &self.endpoint
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// This service's circuit breaker (for its metrics).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// On a reload, take over `previous`'s circuit breaker if it guards the same endpoint with the
    /// same settings, so an open breaker stays open; else retire it from the metrics.
    pub fn succeed(&mut self, previous: &TokenService) {
        if previous.locator == self.locator && previous.breaker.settings() == self.breaker.settings() {
            self.breaker = previous.breaker.clone();
        } else {
            previous.breaker.retire();
        }
        if let (Some(chaining), Some(before)) = (&mut self.chaining, &previous.chaining) {
            chaining.keep_grants_of(before);
        }
    }

    /// Whether the client authenticates with mutual TLS (discovery then prefers RFC 8705 aliases).
    pub fn uses_mtls(&self) -> bool {
        matches!(self.auth, Auth::Tls)
    }

    /// The HTTP client with this service's TLS settings (for discovery, too).
    pub async fn http(&self) -> reqwest::Client {
        self.http.get().await
    }

    /// One token exchange, retried on connection errors and 5xx while the deadline allows. Under
    /// `profile: identity_chaining`, the two steps (`exchange::chaining`), each retried so.
    pub async fn exchange(&self, subject_token: &str, target: &Target) -> Result<Issued, ExchangeError> {
        if let Some(chaining) = &self.chaining {
            return chaining.exchange(self, subject_token, target).await;
        }
        self.call(subject_token, target).await
    }

    /// One call to this service's token endpoint in its profile's grant (under identity chaining,
    /// `subject_token` is the grant, presented as the jwt-bearer assertion).
    pub(crate) async fn call(&self, subject_token: &str, target: &Target) -> Result<Issued, ExchangeError> {
        let endpoint = self.endpoint.get().ok_or(ExchangeError::NotDiscovered)?;
        self.with_retries(|| self.attempt(endpoint, subject_token, target, None))
            .await
    }

    /// One token exchange with a DPoP proof of `key` (RFC 9449 §5), for a token bound to it: a
    /// `use_dpop_nonce` answer is retried once with the nonce it gave, and the latest nonce is
    /// kept for the next exchange. The answer may be `token_type` `DPoP`; whether the token is
    /// bound to `key` is the caller's check (`dpop::check_issued`).
    pub async fn exchange_bound(
        &self,
        subject_token: &str,
        target: &Target,
        key: &crate::dpop::SigningKey,
    ) -> Result<Issued, ExchangeError> {
        let endpoint = self.endpoint.get().ok_or(ExchangeError::NotDiscovered)?;
        self.with_retries(|| self.attempt(endpoint, subject_token, target, Some(key)))
            .await
    }

    /// Baton's own token (RFC 6749 4.4 client_credentials), e.g. to present as the actor.
    pub async fn client_credentials(
        &self,
        audience: Option<&str>,
        scope: Option<&str>,
    ) -> Result<Issued, ExchangeError> {
        let endpoint = self.endpoint.get().ok_or(ExchangeError::NotDiscovered)?;
        self.with_retries(|| async {
            let mut form = vec![("grant_type", "client_credentials")];
            form.extend(audience.map(|a| ("audience", a)));
            form.extend(scope.map(|s| ("scope", s)));
            let (status, body) = self.send_form(endpoint, form).await?;
            parse_response(status, &body)
        })
        .await
    }

    /// RFC 7662 introspection of `token` at `endpoint`, authenticated as this client: the raw
    /// answer, for the caller to judge. It is a call to this service like an exchange, so it is
    /// held to the same breaker, in-flight bound, pause and deadline (and, being read-only, retried
    /// as an exchange is).
    pub async fn introspect(&self, endpoint: &Url, token: &str) -> Result<serde_json::Value, ExchangeError> {
        self.with_retries(|| async {
            let form = vec![("token", token), ("token_type_hint", "access_token")];
            match self.send_form(endpoint, form).await? {
                (200, body) => serde_json::from_slice(&body)
                    .map_err(|_| ExchangeError::BadResponse("not a JSON introspection response")),
                (429, _) => Err(ExchangeError::Busy(None)),
                (status, _) => Err(ExchangeError::Status(status)),
            }
        })
        .await
    }

    /// One call to the token service (its token or introspection endpoint), if the circuit
    /// breaker allows it; its outcome is counted.
    async fn with_retries<T, F, Fut>(&self, call: F) -> Result<T, ExchangeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ExchangeError>>,
    {
        let ticket = self
            .breaker
            .admit()
            .map_err(|rejected| ExchangeError::CircuitOpen(rejected.retry_in))?;
        let result = self.bounded_retries(call).await;
        ticket.record(result.as_ref().map_or_else(ExchangeError::health, |_| Outcome::Healthy));
        result
    }

    async fn bounded_retries<T, F, Fut>(&self, mut call: F) -> Result<T, ExchangeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ExchangeError>>,
    {
        use std::sync::atomic::Ordering;
        if let Some(left) = self.paused() {
            return Err(ExchangeError::Busy(Some(left)));
        }
        let deadline = Instant::now() + self.timeout;
        // Bounded: the permits, then as many waiting for one within the timeout, then refusals.
        let _permit = match self.in_flight.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(ExchangeError::Saturated);
                }
                let permit = tokio::time::timeout_at(deadline, self.in_flight.acquire()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match permit {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(ExchangeError::Saturated),
                }
            }
        };
        let mut attempt = 0;
        loop {
            if let Some(left) = self.paused() {
                return Err(ExchangeError::Busy(Some(left)));
            }
            let result = match tokio::time::timeout_at(deadline, call()).await {
                // A 429 that came with Retry-After started a pause: say how long.
                Ok(Err(ExchangeError::Busy(None))) => Err(ExchangeError::Busy(self.paused())),
                Ok(result) => result,
                Err(_) => Err(ExchangeError::Timeout(self.timeout)),
            };
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
            tracing::debug!(attempt, ?backoff, error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(), "retrying a call to the token service");
            tokio::time::sleep(backoff).await;
        }
    }

    /// What is left of a pause the token service asked for (`Retry-After`), if one is running.
    fn paused(&self) -> Option<Duration> {
        let until = self.busy_until.load(std::sync::atomic::Ordering::Relaxed);
        until
            .checked_sub(unix_ms())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }

    async fn attempt(
        &self,
        endpoint: &Url,
        subject_token: &str,
        target: &Target,
        dpop: Option<&crate::dpop::SigningKey>,
    ) -> Result<Issued, ExchangeError> {
        let entra_scope;
        let form: Vec<(&str, &str)> = match self.profile {
            Profile::Rfc8693 => {
                let mut form = vec![
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
                form
            }
            Profile::EntraObo => {
                entra_scope = entra_obo_scope(target);
                vec![
                    ("grant_type", GRANT_JWT_BEARER),
                    ("assertion", subject_token),
                    ("requested_token_use", "on_behalf_of"),
                    ("scope", &entra_scope),
                ]
            }
            // RFC 7523 2.1 with the grant as the assertion; the destination's target and scope as
            // the draft's step 2 allows (RFC 8707 `resource`, `audience`, `scope`).
            Profile::IdentityChaining => {
                let mut form = vec![("grant_type", GRANT_JWT_BEARER), ("assertion", subject_token)];
                let optional = [
                    ("audience", &target.audience),
                    ("resource", &target.resource),
                    ("scope", &target.scope),
                ];
                form.extend(optional.iter().filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))));
                form
            }
        };
        let Some(key) = dpop else {
            let (status, body) = self.send_form(endpoint, form).await?;
            return parse_response(status, &body);
        };
        let mut htu = endpoint.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let mut retried = false;
        loop {
            let nonce = self.dpop_nonce.lock().ok().and_then(|n| n.clone());
            let proof = key
                .proof("POST", htu.as_str(), None, nonce.as_deref(), unix_now())
                .map_err(|_| ExchangeError::BadResponse(CANNOT_SIGN_PROOF))?;
            let (status, body, fresh) = self.send(endpoint, form.clone(), Some(&proof)).await?;
            let given = fresh.is_some();
            if let (Some(fresh), Ok(mut kept)) = (fresh, self.dpop_nonce.lock()) {
                *kept = Some(fresh);
            }
            // RFC 9449 §8: the server wants a nonce it just gave; once, so a server that keeps
            // asking cannot loop Baton.
            if status == 400 && given && !retried && oauth_error(&body).as_deref() == Some("use_dpop_nonce") {
                retried = true;
                continue;
            }
            return parse_response_as(status, &body, true);
        }
    }

    /// POST a form to this service, with client authentication as configured; the status and the
    /// size-bounded body.
    async fn send_form(&self, endpoint: &Url, form: Vec<(&str, &str)>) -> Result<(u16, Vec<u8>), ExchangeError> {
        let (status, body, _) = self.send(endpoint, form, None).await?;
        Ok((status, body))
    }

    /// `send_form` with a `DPoP` proof header, if any; also the `DPoP-Nonce` the answer carried
    /// (when it is a well-formed one).
    async fn send(
        &self,
        endpoint: &Url,
        form: Vec<(&str, &str)>,
        proof: Option<&str>,
    ) -> Result<(u16, Vec<u8>, Option<String>), ExchangeError> {
        let mut form = form;
        let http = self.http.get().await;
        let mut request = http.post(endpoint.clone()).header("accept", "application/json");
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        // W3C trace context of the current span (the exchange's), so the token service's spans join
        // the trace.
        if let Some(traceparent) = crate::http::current_traceparent() {
            request = request.header("traceparent", traceparent);
        }
        let assertion;
        match &self.auth {
            // RFC 8705 2: the certificate authenticates; client_id says which client it is.
            Auth::None | Auth::Tls => form.push(("client_id", &self.client_id)),
            Auth::SecretBasic(secret) => {
                request = request.header("authorization", basic_auth(&self.client_id, secret));
            }
            Auth::SecretPost(secret) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret.expose()));
            }
            Auth::PrivateKeyJwt { key_pem, key_id } => {
                assertion = client_assertion(&self.client_id, endpoint, key_pem, key_id.as_deref())
                    .map_err(|_| ExchangeError::BadResponse(CANNOT_SIGN))?;
                form.push(("client_id", &self.client_id));
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
                form.push(("client_assertion", &assertion));
            }
            Auth::AssertionFile(file) => {
                assertion = file.get().await.expose().to_owned();
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
                ExchangeError::Unreachable(error_chain(&e.without_url()))
            }
        })?;
        let status = response.status().as_u16();
        if matches!(status, 429 | 503)
            && let Some(seconds) = retry_after(response.headers())
        {
            // Respected, up to a minute: no call until then, each answered 503 at once.
            let until = unix_ms() + seconds.min(60) * 1000;
            self.busy_until.fetch_max(until, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(token_service = %self.name, retry_after = seconds, "the token service asked for a pause");
        }
        let nonce = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .filter(|v| crate::dpop::is_nonce(v))
            .map(str::to_owned);
        let body = read_bounded(response, self.max_response_bytes).await?;
        Ok((status, body, nonce))
    }
}

/// How Baton authenticates to one token service, ready to use.
#[derive(Debug)]
enum Auth {
    None,
    SecretBasic(Secret),
    SecretPost(Secret),
    PrivateKeyJwt {
        key_pem: Secret,
        key_id: Option<String>,
    },
    /// The client certificate is in the HTTP client.
    Tls,
    AssertionFile(Watched<Secret>),
}

/// Entra ID's `scope`: the destination's scopes as configured (full scope URIs there, such as
/// `api://orders/Orders.Read`), else `<resource>/.default` (every permission the app was granted
/// on that resource), the resource being `resource`, else `audience`.
pub fn entra_obo_scope(target: &Target) -> String {
    if let Some(scope) = &target.scope {
        return scope.clone();
    }
    let resource = target
        .resource
        .as_deref()
        .or(target.audience.as_deref())
        .unwrap_or_default();
    format!("{}/.default", resource.trim_end_matches('/'))
}

/// Every configured token service, by name.
#[derive(Debug, Default)]
pub struct TokenServices {
    by_name: HashMap<String, Arc<TokenService>>,
}

impl TokenServices {
    pub fn new(services: impl IntoIterator<Item = TokenService>) -> Self {
        let by_name: HashMap<String, Arc<TokenService>> =
            services.into_iter().map(|s| (s.name.clone(), Arc::new(s))).collect();
        // Identity chaining: each foreign service gets its home one (validation saw that it exists
        // and is not itself a chaining one, so there is no cycle).
        for service in by_name.values() {
            if let Some(chaining) = &service.chaining
                && let Some(home) = by_name.get(chaining.home_name())
            {
                chaining.set_home(home.clone());
            }
        }
        Self { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<TokenService>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<TokenService>> {
        self.by_name.values()
    }

    /// Forget the identity chaining grants of every subject `revoked` names; how many.
    pub fn purge_grants(&self, revoked: impl Fn(&crate::revocation::Holder<'_>) -> bool) -> usize {
        self.by_name
            .values()
            .filter_map(|s| s.chaining.as_ref())
            .map(|c| c.purge(&revoked))
            .sum()
    }

    /// Ready when every token service's endpoint is known.
    pub fn ready(&self) -> bool {
        self.by_name.values().all(|s| s.endpoint().get().is_some())
    }
}

/// `Retry-After` in delta-seconds (RFC 9110 10.2.3); an HTTP-date is not honoured.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
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

/// The OAuth `error` code of an error answer, if it is one.
fn oauth_error(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body).ok().map(|e| e.error)
}

/// Turn the token service's HTTP answer into a token or a precise error.
pub fn parse_response(status: u16, body: &[u8]) -> Result<Issued, ExchangeError> {
    parse_response_as(status, body, false)
}

/// `parse_response`; `bound`: a DPoP proof was sent, so `token_type` may also be `DPoP`.
pub fn parse_response_as(status: u16, body: &[u8], bound: bool) -> Result<Issued, ExchangeError> {
    match status {
        200 => {}
        429 => return Err(ExchangeError::Busy(None)),
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
    let allowed = token_type.eq_ignore_ascii_case("bearer")
        || token_type.eq_ignore_ascii_case("n_a")
        || (bound && token_type.eq_ignore_ascii_case("dpop"));
    if !allowed {
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
    let now = unix_now();
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

/// 25 ms, 50 ms, 100 ms, ... each scaled by a random factor in [0.5, 1.0).
fn jittered_backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(25) * 2u32.saturating_pow(attempt.saturating_sub(1).min(6));
    base.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
pub(crate) mod tests {
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
    fn entra_answers_map_to_the_same_reasons() {
        let reason =
            |status: u16, body: &str| Denial::from(&parse_response(status, body.as_bytes()).expect_err("error")).reason;
        assert_eq!(
            reason(400, r#"{"error":"invalid_resource","error_codes":[500011]}"#),
            Reason::TargetRefused
        );
        assert_eq!(
            reason(400, r#"{"error":"interaction_required","suberror":"basic_action"}"#),
            Reason::SubjectTokenRejected
        );
        // Entra's success answer: no issued_token_type, extra fields ignored.
        let issued = ok(r#"{"token_type":"Bearer","scope":"https://graph.microsoft.com/User.Read","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0.eyJ1.c2ln","refresh_token":"r"}"#)
            .expect("parses");
        assert_eq!(issued.expires_in, Some(3599));
        assert_eq!(issued.issued_token_type, None);
    }

    #[test]
    fn the_entra_scope_is_the_configured_one_or_the_resource_default() {
        let target = |audience: Option<&str>, resource: Option<&str>, scope: Option<&str>| Target {
            audience: audience.map(str::to_owned),
            resource: resource.map(str::to_owned),
            scope: scope.map(str::to_owned),
            requested_token_type: None,
            subject_token_type: crate::oauth::TOKEN_TYPE_ACCESS_TOKEN,
            actor: None,
        };
        assert_eq!(
            entra_obo_scope(&target(Some("api://orders"), None, None)),
            "api://orders/.default"
        );
        assert_eq!(
            entra_obo_scope(&target(Some("a"), Some("https://orders.example/"), None)),
            "https://orders.example/.default"
        );
        assert_eq!(
            entra_obo_scope(&target(Some("api://orders"), None, Some("api://orders/Orders.Read"))),
            "api://orders/Orders.Read"
        );
    }

    #[test]
    fn only_an_unhealthy_service_trips_the_breaker() {
        let health = |status: u16, body: &str| parse_response(status, body.as_bytes()).expect_err("error").health();
        assert_eq!(health(500, "{}"), Outcome::Failed);
        assert_eq!(health(503, "{}"), Outcome::Failed);
        assert_eq!(health(200, "<html>"), Outcome::Failed);
        assert_eq!(health(400, r#"{"error":"invalid_grant"}"#), Outcome::Healthy);
        assert_eq!(health(401, r#"{"error":"invalid_client"}"#), Outcome::Healthy);
        assert_eq!(health(404, ""), Outcome::Healthy);
        assert_eq!(health(429, "{}"), Outcome::Neutral);
        assert_eq!(ExchangeError::Unreachable("refused".into()).health(), Outcome::Failed);
        assert_eq!(ExchangeError::Timeout(Duration::from_secs(1)).health(), Outcome::Failed);
        assert_eq!(ExchangeError::Saturated.health(), Outcome::Neutral);
        assert_eq!(ExchangeError::BadResponse(CANNOT_SIGN).health(), Outcome::Neutral);
        let open = Denial::from(&ExchangeError::CircuitOpen(Duration::from_millis(1500)));
        assert_eq!(
            (open.reason, open.retry_after),
            (Reason::TokenServiceCircuitOpen, Some(2))
        );
        let paused = Denial::from(&ExchangeError::Busy(Some(Duration::from_millis(10))));
        assert_eq!((paused.reason, paused.retry_after), (Reason::TokenServiceBusy, Some(1)));
        assert_eq!(Denial::from(&ExchangeError::Busy(None)).retry_after, None);
        assert_eq!(Denial::from(&ExchangeError::Saturated).retry_after, None);
    }

    /// A token service at `127.0.0.1:port` without client authentication or retries, plus `extra`.
    pub(crate) fn local_config(port: u16, extra: &str) -> TokenServiceConfig {
        let raw = crate::files::parse_yaml(&format!(
            "  token_endpoint: http://127.0.0.1:{port}/token\n  client_id: c\n  auth:\n    method: none\n  retries: 0\n{extra}"
        ))
        .expect("yaml");
        let mut errors = baton_decide::settings::Errors::default();
        let checked = crate::token_service::validate(Some(raw), Default::default(), &mut errors);
        assert!(errors.0.is_empty(), "{errors:?}");
        checked.valid().and_then(|s| s.into_iter().next()).expect("config")
    }

    pub(crate) fn local_service(port: u16, extra: &str) -> TokenService {
        TokenService::new(&local_config(port, extra)).expect("service")
    }

    /// A token endpoint on loopback that counts the connections it accepts and answers each with
    /// `answer` after reading the request, or drops it at once when there is none.
    pub(crate) async fn counting_endpoint(
        answer: Option<&'static str>,
    ) -> (u16, Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>) {
        serving_endpoint(answer.map_or(Serve::Drop, Serve::Answer)).await
    }

    /// A whole HTTP/1.1 answer with `status` (e.g. `500 Internal Server Error`) and `body`, for
    /// `Serve::Answer` (leaked: a test's few answers live as long as the test binary).
    pub(crate) fn answer(status: &str, body: &str) -> &'static str {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .leak()
    }

    /// What a stand-in endpoint does with each connection it accepts.
    #[derive(Clone, Copy)]
    pub(crate) enum Serve {
        Drop,
        Answer(&'static str),
        /// Reads the request and never answers (the socket is held until the server is aborted).
        Hang,
    }

    pub(crate) async fn serving_endpoint(
        serve: Serve,
    ) -> (u16, Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match serve {
                    Serve::Drop => {}
                    Serve::Answer(answer) => {
                        let mut request = [0u8; 4096];
                        let _ = socket.read(&mut request).await;
                        let _ = socket.write_all(answer.as_bytes()).await;
                    }
                    Serve::Hang => held.push(socket),
                }
            }
        });
        (port, accepted, server)
    }

    fn audience_a() -> Target {
        Target {
            audience: Some("a".into()),
            resource: None,
            scope: None,
            requested_token_type: None,
            subject_token_type: crate::oauth::TOKEN_TYPE_ACCESS_TOKEN,
            actor: None,
        }
    }

    /// A service whose endpoint answers every call 429 with `Retry-After: 3`; its port, the
    /// connections it accepted, and the endpoint's task.
    async fn pausing_service() -> (
        TokenService,
        u16,
        Arc<std::sync::atomic::AtomicU64>,
        tokio::task::JoinHandle<()>,
    ) {
        let answer =
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let (port, accepted, server) = counting_endpoint(Some(answer)).await;
        (local_service(port, ""), port, accepted, server)
    }

    /// A token endpoint that answers 429 with `Retry-After: 3`: the refusal says how long is left,
    /// and so does every call during the pause, which is answered without calling the service.
    #[tokio::test]
    async fn a_pause_asked_for_is_kept_and_told() {
        let (service, _port, accepted, _server) = pausing_service().await;
        let target = audience_a();
        for _ in 0..3 {
            let e = service.exchange("user", &target).await.expect_err("busy");
            let ExchangeError::Busy(Some(left)) = e else {
                panic!("a pause with its length, got {e}")
            };
            assert!(
                left > Duration::from_secs(2) && left <= Duration::from_secs(3),
                "{left:?}"
            );
            assert_eq!(Denial::from(&e).retry_after, Some(3));
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "no call during the pause"
        );
    }

    /// A token endpoint that accepts connections and drops them: after `min_requests` failures the
    /// breaker answers at once and no further connection is made.
    #[tokio::test]
    async fn an_open_breaker_stops_calling_the_service() {
        let (port, accepted, server) = counting_endpoint(None).await;
        let config = local_config(port, "  circuit_breaker:\n    min_requests: 3\n    open_for: 1m\n");
        let service = TokenService::new(&config).expect("service");
        let target = audience_a();
        for _ in 0..3 {
            let e = service.exchange("user", &target).await.expect_err("dropped");
            assert!(matches!(e, ExchangeError::Unreachable(_)), "{e}");
        }
        let seen = accepted.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..5 {
            let e = service.exchange("user", &target).await.expect_err("open");
            assert!(matches!(e, ExchangeError::CircuitOpen(_)), "{e}");
            let e = service.client_credentials(None, None).await.expect_err("open");
            assert!(matches!(e, ExchangeError::CircuitOpen(_)), "{e}");
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            seen,
            "no call while open"
        );

        // A reload that leaves the service as it was keeps its breaker open; one that changes the
        // breaker's settings starts afresh.
        let mut reloaded = TokenService::new(&config).expect("service");
        reloaded.succeed(&service);
        let e = reloaded.exchange("user", &target).await.expect_err("still open");
        assert!(matches!(e, ExchangeError::CircuitOpen(_)), "{e}");
        let changed = local_config(port, "  circuit_breaker:\n    min_requests: 4\n");
        let mut reloaded = TokenService::new(&changed).expect("service");
        reloaded.succeed(&service);
        let e = reloaded.exchange("user", &target).await.expect_err("dropped");
        assert!(matches!(e, ExchangeError::Unreachable(_)), "{e}");
        server.abort();
    }

    fn introspection_endpoint(port: u16) -> Url {
        Url::parse(&format!("http://127.0.0.1:{port}/introspect")).expect("url")
    }

    fn connections(accepted: &std::sync::atomic::AtomicU64) -> u64 {
        accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Introspection goes to the same service as exchanges: an open breaker refuses it at once,
    /// without a connection, as it refuses an exchange.
    #[tokio::test]
    async fn an_open_breaker_stops_introspection_too() {
        let (port, accepted, server) = counting_endpoint(None).await;
        let service = local_service(port, "  circuit_breaker:\n    min_requests: 3\n    open_for: 1m\n");
        for _ in 0..3 {
            let e = service.exchange("user", &audience_a()).await.expect_err("dropped");
            assert!(matches!(e, ExchangeError::Unreachable(_)), "{e}");
        }
        let seen = connections(&accepted);
        for _ in 0..5 {
            let e = service
                .introspect(&introspection_endpoint(port), "opaque")
                .await
                .expect_err("open");
            assert!(matches!(e, ExchangeError::CircuitOpen(_)), "{e}");
        }
        assert_eq!(connections(&accepted), seen, "no introspection while open");
        server.abort();
    }

    /// Introspection's outcomes count as an exchange's do: a dropped connection, a 5xx or no
    /// answer within the timeout is ill health, and three open the breaker (exchanges then stop
    /// too); a 4xx or an inactive token is a working service's answer, and opens nothing.
    #[tokio::test]
    async fn introspection_failures_count_toward_the_breaker() {
        let status = |code: &str| answer(code, "");
        let inactive = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{\"active\":false}";
        for (serve, opens) in [
            (Serve::Drop, true),
            (Serve::Answer(status("500 Internal Server Error")), true),
            (Serve::Hang, true),
            (Serve::Answer(status("401 Unauthorized")), false),
            (Serve::Answer(inactive), false),
        ] {
            let (port, accepted, server) = serving_endpoint(serve).await;
            let service = local_service(
                port,
                "  timeout: 200ms\n  circuit_breaker:\n    min_requests: 3\n    open_for: 1m\n",
            );
            for _ in 0..3 {
                let _ = service.introspect(&introspection_endpoint(port), "opaque").await;
            }
            assert_eq!(connections(&accepted), 3, "one connection each");
            let next = service.introspect(&introspection_endpoint(port), "opaque").await;
            let exchange = service.exchange("user", &audience_a()).await;
            let open = |e: Option<&ExchangeError>| matches!(e, Some(ExchangeError::CircuitOpen(_)));
            assert_eq!(
                (open(next.as_ref().err()), open(exchange.as_ref().err())),
                (opens, opens),
                "introspection {next:?}, then exchange {:?}",
                exchange.as_ref().err()
            );
            server.abort();
        }
    }

    /// With one exchange in flight and one waiting, a third introspection is refused `Saturated`
    /// at once, while the first hangs: introspection shares the service's in-flight bound.
    #[tokio::test]
    async fn introspection_shares_the_in_flight_bound() {
        let (port, accepted, server) = serving_endpoint(Serve::Hang).await;
        let service = Arc::new(local_service(port, "  timeout: 5s\n  max_concurrent_exchanges: 1\n"));
        let hanging: Vec<_> = (0..2)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { service.introspect(&introspection_endpoint(port), "opaque").await })
            })
            .collect();
        // The first at the service, the second waiting for its turn.
        let settled = async {
            while connections(&accepted) == 0 || service.waiting.load(std::sync::atomic::Ordering::Acquire) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), settled)
            .await
            .expect("one in flight, one waiting");
        let third = tokio::time::timeout(
            Duration::from_secs(1),
            service.introspect(&introspection_endpoint(port), "opaque"),
        )
        .await
        .expect("refused at once, not after the timeout");
        assert!(matches!(third, Err(ExchangeError::Saturated)), "{third:?}");
        assert_eq!(connections(&accepted), 1, "only the first reached the service");
        hanging.iter().for_each(tokio::task::JoinHandle::abort);
        server.abort();
    }

    /// A 429 with `Retry-After` to an introspection starts the service's pause, and inside it
    /// introspections and exchanges are refused `Busy` without a connection.
    #[tokio::test]
    async fn introspection_keeps_the_pause_asked_for() {
        let (service, port, accepted, server) = pausing_service().await;
        for _ in 0..3 {
            let e = service
                .introspect(&introspection_endpoint(port), "opaque")
                .await
                .expect_err("busy");
            assert!(matches!(e, ExchangeError::Busy(Some(_))), "{e}");
        }
        let e = service.exchange("user", &audience_a()).await.expect_err("busy");
        assert!(matches!(e, ExchangeError::Busy(Some(_))), "{e}");
        assert_eq!(connections(&accepted), 1, "no call during the pause");
        server.abort();
    }

    /// A server that answers every proof with `use_dpop_nonce` gets one retry with its nonce, not a
    /// loop; the nonce is kept for the next exchange.
    #[tokio::test]
    async fn use_dpop_nonce_is_retried_once() {
        let answer = "HTTP/1.1 400 Bad Request\r\ndpop-nonce: n1\r\ncontent-type: application/json\r\ncontent-length: 26\r\nconnection: close\r\n\r\n{\"error\":\"use_dpop_nonce\"}";
        let (port, accepted, server) = counting_endpoint(Some(answer)).await;
        let service = local_service(port, "");
        let key = crate::dpop::SigningKey::generate().expect("key");
        let e = service
            .exchange_bound("user", &audience_a(), &key)
            .await
            .expect_err("refused");
        assert!(
            matches!(&e, ExchangeError::Refused { status: 400, error } if error == "use_dpop_nonce"),
            "{e}"
        );
        assert_eq!(Denial::from(&e).reason, Reason::TokenServiceError);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "one retry");
        assert_eq!(service.dpop_nonce.lock().expect("lock").as_deref(), Some("n1"));
        server.abort();
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
