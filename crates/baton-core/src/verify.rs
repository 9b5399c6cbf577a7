//! Verifying the subject token before anything is exchanged: a trusted issuer, a signature by one of
//! its keys (JWKS, by `kid`, refetched on an unknown `kid` at a bounded rate and periodically), an
//! allowed asymmetric algorithm, `exp`/`nbf` with leeway, and an accepted audience. A verified
//! token's claims are cached by token digest until its `exp`, so a hit does not pay the signature
//! check again. It never accepts `alg: none` or an HMAC algorithm, and keeps serving the last good
//! keys when an issuer's JWKS is unreachable. The sections that say how (`trusted_issuers:`,
//! `opaque_tokens:`, `introspection:`, `subject_token:`) are validated here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use crate::cache::{Expiring, Key, at_unix};
use crate::clock::unix_now;
use crate::http::read_bounded;
use crate::metrics::OutcomeLabels;
use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use baton_decide::reason::{Denial, Reason};
use baton_decide::settings::{Errors, duration, http_url};

/// The counter of JWKS fetches, from `telemetry::Metrics::jwks_refreshes`.
pub type JwksRefreshes =
    prometheus_client::metrics::family::Family<OutcomeLabels, prometheus_client::metrics::counter::Counter>;

// === Configuration ===

/// `trusted_issuers[]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: String,
    /// Where its keys are; without it, found by RFC 8414 / OpenID discovery from `issuer`.
    pub jwks_uri: Option<String>,
    /// The subject token must name one of these in `aud`: it was meant for this workload.
    pub audiences: Vec<String>,
    /// Default: every asymmetric algorithm (RS*, PS*, ES256, ES384, EdDSA). HMAC is never allowed.
    pub algorithms: Vec<String>,
    pub leeway: Option<String>,
    /// How often the keys are refreshed (default 5m).
    pub jwks_refresh: Option<String>,
    /// Least time between two fetches caused by an unknown `kid` (default 10s).
    pub jwks_min_refetch: Option<String>,
}

/// What to do with a subject token that is not a JWT (it names no issuer to verify it with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpaqueTokens {
    /// Refuse with 401 `subject_token_opaque`.
    #[default]
    Reject,
    /// Let the token service judge it (no local checks, no claims for policy).
    Forward,
    /// Ask the `introspection:` endpoint (RFC 7662); its answer's claims feed the policy.
    Introspect,
}

/// `introspection:`, for `opaque_tokens: introspect`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIntrospection {
    pub endpoint: String,
    /// The token service whose client credentials authenticate the call (default `default`).
    pub token_service: Option<String>,
    /// How long an answer is reused at most (default 30s); never past the token's `exp`.
    pub cache_ttl: Option<String>,
}

#[derive(Debug)]
pub struct IntrospectionConfig {
    pub endpoint: Url,
    pub token_service: String,
    pub cache_ttl: Duration,
}

impl RawIntrospection {
    pub fn validate(self, errors: &mut Errors) -> Option<IntrospectionConfig> {
        let endpoint = http_url(&self.endpoint, "introspection.endpoint", errors);
        let cache_ttl = duration(
            self.cache_ttl.as_deref(),
            "introspection.cache_ttl",
            Duration::from_secs(30),
            errors,
        );
        let token_service = self
            .token_service
            .unwrap_or_else(|| crate::token_service::DEFAULT_TOKEN_SERVICE.to_owned());
        Some(IntrospectionConfig {
            endpoint: endpoint?,
            token_service,
            cache_ttl,
        })
    }
}

/// The `introspection:` section, which `opaque_tokens: introspect` needs and no other mode uses.
pub(crate) fn introspection(
    opaque_tokens: OpaqueTokens,
    raw: Option<RawIntrospection>,
    errors: &mut Errors,
) -> Option<IntrospectionConfig> {
    match (opaque_tokens, raw) {
        (OpaqueTokens::Introspect, Some(raw)) => raw.validate(errors),
        (OpaqueTokens::Introspect, None) => {
            errors.add("introspection", "is required with `opaque_tokens: introspect`");
            None
        }
        (_, Some(_)) => {
            errors.add("introspection", "is used only with `opaque_tokens: introspect`");
            None
        }
        (_, None) => None,
    }
}

/// Every audience a trusted issuer's tokens may carry.
pub(crate) fn audiences(issuers: &[IssuerConfig]) -> Vec<&str> {
    issuers
        .iter()
        .flat_map(|i| i.audiences.iter().map(String::as_str))
        .collect()
}

/// RFC 7662 introspection, ready to use.
#[derive(Debug)]
pub struct Introspection {
    endpoint: Url,
    service: Arc<crate::exchange::TokenService>,
    answers: Expiring<Arc<Subject>>,
    cache_ttl: Duration,
}

impl Introspection {
    pub fn new(config: IntrospectionConfig, service: Arc<crate::exchange::TokenService>, max_entries: u64) -> Self {
        Self {
            endpoint: config.endpoint,
            service,
            answers: Expiring::new(max_entries),
            cache_ttl: config.cache_ttl,
        }
    }

    async fn subject(&self, token: &str, digest: &Key) -> Result<Arc<Subject>, Denial> {
        if let Some(subject) = self.answers.get(digest, SystemTime::now()) {
            return Ok(subject);
        }
        // Refused as an exchange failing alike would be (timeout, 5xx, unusable answer, held back).
        let answer = self.service.introspect(&self.endpoint, token).await.map_err(|e| {
            tracing::warn!(endpoint = %self.endpoint, error = %e, "introspection failed");
            Denial::from(&e)
        })?;
        let Value::Object(mut claims) = answer else {
            return Err(Denial::new(
                Reason::TokenServiceBadResponse,
                "the introspection answer is not an object",
            ));
        };
        if claims.remove("active") != Some(Value::Bool(true)) {
            return Err(Denial::new(
                Reason::SubjectTokenInactive,
                "the subject token is not active",
            ));
        }
        let now = unix_now() as i64;
        let exp = match claims.get("exp") {
            None => now + 60,
            Some(exp) => crate::jwt::expiry(exp).map_err(|_| {
                Denial::new(
                    Reason::SubjectTokenMalformed,
                    "the introspection answer's exp is not a NumericDate",
                )
            })?,
        };
        if exp <= now {
            return Err(Denial::new(
                Reason::SubjectTokenExpired,
                "the subject token has expired",
            ));
        }
        let issuer = claims.get("iss").and_then(Value::as_str).unwrap_or("").to_owned();
        let subject = Arc::new(Subject { claims, issuer, exp });
        let until = at_unix(exp).min(SystemTime::now() + self.cache_ttl);
        self.answers.insert(*digest, subject.clone(), until);
        Ok(subject)
    }
}

#[derive(Debug)]
pub struct IssuerConfig {
    pub issuer: String,
    pub jwks_uri: Option<Url>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub refresh: Duration,
    pub min_refetch: Duration,
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl RawIssuer {
    pub fn validate(self, at: &str, errors: &mut Errors) -> Option<IssuerConfig> {
        let mut ok = true;
        if self.issuer.is_empty() {
            errors.add(format!("{at}.issuer"), "is required");
            ok = false;
        }
        let jwks_uri = match self.jwks_uri.as_deref() {
            None => {
                if Url::parse(&self.issuer).is_err() {
                    errors.add(
                        format!("{at}.jwks_uri"),
                        "is required when `issuer` is not a URL to discover it from",
                    );
                    ok = false;
                }
                None
            }
            Some(text) => {
                let url = http_url(text, &format!("{at}.jwks_uri"), errors);
                ok &= url.is_some();
                url
            }
        };
        if self.audiences.is_empty() {
            errors.add(
                format!("{at}.audiences"),
                "name the audiences a subject token must carry (this workload's)",
            );
            ok = false;
        }
        let mut algorithms = Vec::new();
        for (i, name) in self.algorithms.iter().enumerate() {
            match name.parse::<Algorithm>() {
                Ok(alg) if ASYMMETRIC.contains(&alg) => algorithms.push(alg),
                Ok(_) => {
                    errors.add(
                        format!("{at}.algorithms[{i}]"),
                        format!("`{name}` is symmetric: only asymmetric algorithms verify against a JWKS"),
                    );
                    ok = false;
                }
                Err(_) => {
                    errors.add(
                        format!("{at}.algorithms[{i}]"),
                        format!("`{name}` is not a JWS algorithm"),
                    );
                    ok = false;
                }
            }
        }
        if algorithms.is_empty() {
            algorithms = ASYMMETRIC.to_vec();
        }
        let before = errors.0.len();
        let mut span = |text: &Option<String>, field: &str, default: Duration| {
            duration(text.as_deref(), &format!("{at}.{field}"), default, errors)
        };
        let leeway = span(&self.leeway, "leeway", Duration::from_secs(30));
        let refresh = span(&self.jwks_refresh, "jwks_refresh", Duration::from_secs(300));
        let min_refetch = span(&self.jwks_min_refetch, "jwks_min_refetch", Duration::from_secs(10));
        ok &= errors.0.len() == before;
        // Each paces fetches from the issuer: zero would fetch in a loop (refresh) or once per
        // token with an unknown kid (a flood of them would become one on the issuer).
        for (value, field) in [(refresh, "jwks_refresh"), (min_refetch, "jwks_min_refetch")] {
            if value < Duration::from_secs(1) {
                errors.add(format!("{at}.{field}"), "must be at least 1s");
                ok = false;
            }
        }
        ok.then_some(IssuerConfig {
            issuer: self.issuer,
            jwks_uri,
            audiences: self.audiences,
            algorithms,
            leeway,
            refresh,
            min_refetch,
        })
    }
}

// === Verified subjects ===

/// A verified subject token.
#[derive(Debug)]
pub struct Subject {
    pub claims: Map<String, Value>,
    pub issuer: String,
    pub exp: i64,
}

impl Subject {
    pub fn sub(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }
}

// === The verifier ===

#[derive(Debug)]
struct KeySet {
    /// (kid, key, the key's own `alg` if it names one).
    keys: Vec<(Option<String>, DecodingKey, Option<Algorithm>)>,
    fetched: bool,
}

struct Issuer {
    config: IssuerConfig,
    /// `baton_jwks_refreshes_total`, by outcome.
    refreshes: JwksRefreshes,
    keys: ArcSwap<KeySet>,
    jwks_uri: tokio::sync::OnceCell<Url>,
    /// When keys were last fetched; held while fetching, so concurrent unknown kids fetch once.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

pub struct Verifier {
    issuers: HashMap<String, Arc<Issuer>>,
    /// Verified subjects by token digest, each until its `exp`.
    verified: Expiring<Arc<Subject>>,
    opaque: OpaqueTokens,
    introspection: Option<Introspection>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The outcome of verification.
#[derive(Debug)]
pub enum Verified {
    /// A JWT from a trusted issuer, checked.
    Subject(Arc<Subject>),
    /// An opaque token under `opaque_tokens: forward`: the token service will judge it.
    Forwarded,
}

impl Verifier {
    /// Forget every verified subject and introspection answer whose holder `revoked` names (a
    /// scan, at revocation time); how many.
    pub fn purge(&self, revoked: impl Fn(&crate::revocation::Holder<'_>) -> bool) -> usize {
        let matches = |s: &Arc<Subject>| revoked(&crate::revocation::Holder::of_claims(&s.claims));
        self.verified.purge(matches) + self.introspection.as_ref().map_or(0, |i| i.answers.purge(matches))
    }

    /// `None` when no issuer is trusted (verification off: the token service judges).
    pub fn new(
        issuers: Vec<IssuerConfig>,
        opaque: OpaqueTokens,
        introspection: Option<Introspection>,
        max_entries: u64,
        refreshes: JwksRefreshes,
    ) -> Result<Option<Arc<Self>>, String> {
        if issuers.is_empty() && introspection.is_none() {
            return Ok(None);
        }
        let http = crate::http::http_client(Duration::from_secs(5)).map_err(|e| format!("JWKS client: {e}"))?;
        let issuers = issuers
            .into_iter()
            .map(|config| {
                let jwks_uri = tokio::sync::OnceCell::new_with(config.jwks_uri.clone());
                let issuer = Issuer {
                    keys: ArcSwap::from_pointee(KeySet {
                        keys: Vec::new(),
                        fetched: false,
                    }),
                    jwks_uri,
                    last_fetch: tokio::sync::Mutex::new(None),
                    refreshes: refreshes.clone(),
                    config,
                };
                (issuer.config.issuer.clone(), Arc::new(issuer))
            })
            .collect();
        let verified = Expiring::new(max_entries);
        Ok(Some(Arc::new(Self {
            issuers,
            verified,
            opaque,
            introspection,
            http,
        })))
    }

    /// Fetch every issuer's keys now, then refresh them periodically, in the background, for as
    /// long as this verifier is in use.
    pub fn spawn_refresh(self: &Arc<Self>) {
        for issuer in self.issuers.values() {
            // Weak: when a reload replaces this verifier, its refresh loops end.
            let (issuer, http) = (Arc::downgrade(issuer), self.http.clone());
            tokio::spawn(async move {
                while let Some(live) = issuer.upgrade() {
                    live.refetch(&http, Duration::ZERO).await;
                    let pause = live.config.refresh;
                    drop(live);
                    tokio::time::sleep(pause).await;
                }
            });
        }
    }

    /// Verify `token` (whose SHA-256 is `digest`).
    pub async fn verify(&self, token: &str, digest: &Key) -> Result<Verified, Denial> {
        if let Some(subject) = self.verified.get(digest, SystemTime::now()) {
            return Ok(Verified::Subject(subject));
        }
        // Introspection alone (no issuer to verify JWTs locally): every token is introspected.
        if let (true, Some(introspection)) = (self.issuers.is_empty(), &self.introspection) {
            return introspection.subject(token, digest).await.map(Verified::Subject);
        }
        let Some(header) = jwt_header(token) else {
            return match (self.opaque, &self.introspection) {
                (OpaqueTokens::Forward, _) => Ok(Verified::Forwarded),
                (OpaqueTokens::Introspect, Some(introspection)) => {
                    introspection.subject(token, digest).await.map(Verified::Subject)
                }
                _ => Err(Denial::new(
                    Reason::SubjectTokenOpaque,
                    "the subject token is not a JWT",
                )),
            };
        };
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(Denial::new(
                Reason::SubjectTokenUnsigned,
                "the subject token is not signed (alg none)",
            ));
        }
        // jsonwebtoken ignores `crit` and reads a fractional or absurd `exp` its own way: both are
        // judged here first, by the rules every JWT reader in Baton shares.
        crate::jwt::check_crit(&header.all).map_err(subject_jwt_error)?;
        let unverified = match crate::jwt::Unverified::parse(token) {
            Ok(Some(claims)) => claims,
            Ok(None) => {
                return Err(Denial::new(
                    Reason::SubjectTokenMalformed,
                    "the subject token's claims are not JSON",
                ));
            }
            Err(e) => return Err(subject_jwt_error(e)),
        };
        let issuer_name = unverified
            .issuer()
            .map(str::to_owned)
            .ok_or_else(|| Denial::new(Reason::SubjectTokenMalformed, "the subject token has no issuer"))?;
        let issuer = self.issuers.get(&issuer_name).ok_or_else(|| {
            Denial::new(
                Reason::SubjectTokenIssuerUntrusted,
                "the subject token's issuer is not trusted",
            )
        })?;
        let alg = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| issuer.config.algorithms.contains(a))
            .ok_or_else(|| {
                Denial::new(
                    Reason::SubjectTokenAlgorithmNotAllowed,
                    "the subject token's algorithm is not allowed",
                )
            })?;
        let subject = issuer.verify(&self.http, token, alg, header.kid.as_deref()).await?;
        let subject = Arc::new(subject);
        self.verified.insert(*digest, subject.clone(), at_unix(subject.exp));
        Ok(Verified::Subject(subject))
    }
}

// === Other JWTs a trusted issuer signs ===

/// Why no key of a trusted issuer can check a JWT other than a subject token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeysError {
    /// The issuer is not in `trusted_issuers`.
    IssuerUntrusted,
    /// The JWT's `alg` is not one the issuer allows (HMAC and `none` never are).
    AlgorithmNotAllowed,
    /// The issuer's keys could never be fetched.
    KeysUnavailable,
    /// No key has the JWT's `kid`, even after a refetch.
    KeyUnknown,
}

impl Verifier {
    /// The algorithm and the keys of the trusted issuer `issuer` that may have signed a JWT with
    /// this header `alg` and `kid`: the same JWKS, fetched and refetched (at most once per
    /// `jwks_min_refetch`) as for subject tokens, so a back-channel logout token needs no second
    /// key fetcher. The caller checks the claims its kind of JWT has.
    pub async fn keys_for(
        &self,
        issuer: &str,
        alg: &str,
        kid: Option<&str>,
    ) -> Result<(Algorithm, Vec<DecodingKey>), KeysError> {
        let issuer = self.issuers.get(issuer).ok_or(KeysError::IssuerUntrusted)?;
        let alg = alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| issuer.config.algorithms.contains(a))
            .ok_or(KeysError::AlgorithmNotAllowed)?;
        let mut keys = issuer.keys.load_full();
        if !keys.has(kid, alg) {
            issuer.refetch(&self.http, issuer.config.min_refetch).await;
            keys = issuer.keys.load_full();
            if !keys.fetched {
                return Err(KeysError::KeysUnavailable);
            }
        }
        let candidates: Vec<DecodingKey> = keys.candidates(kid, alg).cloned().collect();
        if candidates.is_empty() {
            return Err(KeysError::KeyUnknown);
        }
        Ok((alg, candidates))
    }
}

impl Verifier {
    /// `verify_issued`: the signature, issuer, algorithm and expiry of a token a token service
    /// issued, against the keys of the trusted issuer it names, fetched and rotated by the same
    /// code as for subject tokens (no second fetcher). Its `aud` is the destination's, which
    /// `crate::issued` checks, not this workload's, so it is not held to `audiences` here.
    pub async fn verify_issued(&self, token: &str) -> Result<(), Denial> {
        let fail = |why: &str| {
            Denial::new(
                Reason::IssuedTokenSignatureInvalid,
                format!("the issued token cannot be verified: {why}"),
            )
        };
        let header = jwt_header(token).ok_or_else(|| fail("it is not a JWT"))?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(fail("it is not signed (alg none)"));
        }
        let unverified = crate::jwt::Unverified::parse(token)
            .ok()
            .flatten()
            .ok_or_else(|| fail("its claims cannot be read"))?;
        let name = unverified.issuer().ok_or_else(|| fail("it has no iss"))?;
        let issuer = self
            .issuers
            .get(name)
            .ok_or_else(|| fail("its issuer is not in trusted_issuers"))?;
        let alg = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| issuer.config.algorithms.contains(a))
            .ok_or_else(|| fail("its algorithm is not allowed for its issuer"))?;
        issuer
            .check(&self.http, token, alg, header.kid.as_deref(), false)
            .await
            .map(|_| ())
            .map_err(|denial| {
                fail(match denial.reason {
                    Reason::IssuerKeysUnavailable => "the issuer's keys could not be fetched",
                    Reason::SubjectTokenKeyUnknown => "no key of the issuer matches its kid",
                    Reason::SubjectTokenExpired => "it has expired",
                    Reason::SubjectTokenSignatureInvalid => "its signature is invalid",
                    _ => "it does not decode as a signed JWT of its issuer",
                })
            })
    }
}

/// A JOSE header: what Baton reads from it, and all of it (for `crit`).
pub(crate) struct Header {
    pub(crate) alg: String,
    pub(crate) kid: Option<String>,
    pub(crate) all: Map<String, Value>,
}

/// The JOSE header of a compact JWS, if `token` is one. (jsonwebtoken's own parser refuses
/// `alg: none` as an unknown algorithm; Baton wants to name it.)
pub(crate) fn jwt_header(token: &str) -> Option<Header> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (header, _, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let Value::Object(all) = serde_json::from_slice(&json).ok()? else {
        return None;
    };
    let alg = all.get("alg")?.as_str()?.to_owned();
    let kid = match all.get("kid") {
        None | Some(Value::Null) => None,
        Some(kid) => Some(kid.as_str()?.to_owned()),
    };
    Some(Header { alg, kid, all })
}

/// A subject token that breaks a JWT rule of `crate::jwt`.
pub(crate) fn subject_jwt_error(e: crate::jwt::JwtError) -> Denial {
    use crate::jwt::JwtError;
    match e {
        JwtError::CritUnsupported => Denial::new(
            Reason::SubjectTokenCritUnsupported,
            "the subject token marks a header parameter Baton does not understand as critical",
        ),
        JwtError::CritMalformed => Denial::new(
            Reason::SubjectTokenMalformed,
            "the subject token's crit header is not a non-empty list of names",
        ),
        JwtError::NotAnObject => Denial::new(
            Reason::SubjectTokenMalformed,
            "the subject token's header or claims are not a JSON object",
        ),
        JwtError::TooLarge => Denial::new(
            Reason::SubjectTokenMalformed,
            "the subject token's claims are larger than Baton reads",
        ),
        JwtError::BadNumericDate(_) => Denial::new(
            Reason::SubjectTokenMalformed,
            "the subject token's exp, nbf or iat is not a NumericDate",
        ),
    }
}

impl Issuer {
    async fn verify(
        &self,
        http: &reqwest::Client,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Subject, Denial> {
        self.check(http, token, alg, kid, true).await
    }

    /// `verify`, with the `audiences` check only when `audience` (an issued token's audience is
    /// the destination's, judged elsewhere).
    async fn check(
        &self,
        http: &reqwest::Client,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        audience: bool,
    ) -> Result<Subject, Denial> {
        let mut keys = self.keys.load_full();
        if !keys.has(kid, alg) {
            // Rotation, or our first use: fetch, at most once per `min_refetch`.
            self.refetch(http, self.config.min_refetch).await;
            keys = self.keys.load_full();
            if !keys.fetched {
                return Err(Denial::new(
                    Reason::IssuerKeysUnavailable,
                    "the issuer's signing keys could not be fetched",
                ));
            }
        }
        let mut last = Denial::new(
            Reason::SubjectTokenKeyUnknown,
            "no key of the issuer matches the subject token's kid",
        );
        for key in keys.candidates(kid, alg) {
            match decode(token, key, alg, &self.config, audience) {
                Ok(claims) => {
                    // Required, and already checked to be a NumericDate (`jwt::Unverified::parse`).
                    let exp = claims.get("exp").and_then(|e| crate::jwt::expiry(e).ok()).unwrap_or(0);
                    return Ok(Subject {
                        claims,
                        issuer: self.config.issuer.clone(),
                        exp,
                    });
                }
                Err(denial) if denial.reason == Reason::SubjectTokenSignatureInvalid && kid.is_none() => last = denial,
                Err(denial) => return Err(denial),
            }
        }
        Err(last)
    }

    /// Fetch the keys unless the last fetch was less than `min_interval` ago. Failures keep the
    /// last good keys.
    async fn refetch(&self, http: &reqwest::Client, min_interval: Duration) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < min_interval) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch(http).await {
            Ok(keys) => {
                tracing::debug!(issuer = %self.config.issuer, keys = keys.keys.len(), "JWKS fetched");
                self.keys.store(Arc::new(keys));
                self.refreshes.get_or_create(&OutcomeLabels { outcome: "ok" }).inc();
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "JWKS fetch failed; keeping the last good keys");
                self.refreshes.get_or_create(&OutcomeLabels { outcome: "error" }).inc();
            }
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<KeySet, String> {
        let uri = self
            .jwks_uri
            .get_or_try_init(|| async {
                let issuer = Url::parse(&self.config.issuer).map_err(|e| e.to_string())?;
                crate::discovery::discover(http, &issuer)
                    .await?
                    .jwks_uri
                    .ok_or_else(|| "the issuer's metadata has no jwks_uri".to_owned())
            })
            .await?;
        let response = http
            .get(uri.clone())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("{uri}: HTTP {}", response.status().as_u16()));
        }
        let body = read_bounded(response, 256 * 1024).await.map_err(|e| e.to_string())?;
        let set: Value = serde_json::from_slice(&body).map_err(|e| format!("{uri}: {e}"))?;
        let keys = set["keys"]
            .as_array()
            .ok_or_else(|| format!("{uri}: no keys"))?
            .iter()
            .take(64)
            // A key of a type this library does not know is skipped, not fatal.
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|jwk| {
                !matches!(
                    jwk.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                )
            })
            .filter_map(|jwk| {
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok());
                DecodingKey::from_jwk(&jwk)
                    .ok()
                    .map(|key| (jwk.common.key_id.clone(), key, alg))
            })
            .collect();
        Ok(KeySet { keys, fetched: true })
    }
}

impl KeySet {
    fn has(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        self.candidates(kid, alg).next().is_some()
    }

    /// Keys that may have signed a token with this `kid` and `alg`: the one with that kid, or
    /// without a kid every key that does not name another algorithm.
    fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |(k, _, key_alg)| key_alg.is_none_or(|a| a == alg) && (kid.is_none() || k.as_deref() == kid))
            .map(|(_, key, _)| key)
    }
}

fn decode(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
    config: &IssuerConfig,
    audience: bool,
) -> Result<Map<String, Value>, Denial> {
    use jsonwebtoken::errors::ErrorKind;
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[&config.issuer]);
    if audience {
        validation.set_audience(&config.audiences);
    } else {
        validation.validate_aud = false;
    }
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::ExpiredSignature => Denial::new(Reason::SubjectTokenExpired, "the subject token has expired"),
            ErrorKind::ImmatureSignature => Denial::new(
                Reason::SubjectTokenNotYetValid,
                "the subject token is not valid yet (nbf)",
            ),
            ErrorKind::InvalidAudience => Denial::new(
                Reason::SubjectTokenAudienceMismatch,
                "the subject token was not issued for this workload (aud)",
            ),
            ErrorKind::InvalidIssuer => Denial::new(
                Reason::SubjectTokenIssuerUntrusted,
                "the subject token's issuer is not trusted",
            ),
            ErrorKind::InvalidAlgorithm => Denial::new(
                Reason::SubjectTokenAlgorithmNotAllowed,
                "the subject token's algorithm does not fit the issuer's key",
            ),
            ErrorKind::InvalidSignature => Denial::new(
                Reason::SubjectTokenSignatureInvalid,
                "the subject token's signature is invalid",
            ),
            ErrorKind::MissingRequiredClaim(_) => {
                Denial::new(Reason::SubjectTokenMalformed, "the subject token lacks exp, iss or aud")
            }
            _ => Denial::new(Reason::SubjectTokenMalformed, "the subject token cannot be decoded"),
        }),
    }
}

// === Keys of another signer ===

/// One party's JWKS, fetched, refreshed and refetched on an unknown `kid` exactly as a trusted
/// issuer's are (the same code), for JWTs that are not subject tokens: Shared Signals SETs (`ssf`).
/// It hands out keys; the caller decodes with its own rules.
pub struct KeySource {
    issuer: Arc<Issuer>,
    http: reqwest::Client,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("issuer", &self.issuer.config.issuer)
            .finish_non_exhaustive()
    }
}

impl KeySource {
    /// `config.jwks_uri` absent: found by discovery from `config.issuer`, or set later (`set_jwks_uri`).
    pub fn new(config: IssuerConfig, refreshes: JwksRefreshes) -> Result<Self, String> {
        let http = crate::http::http_client(Duration::from_secs(5)).map_err(|e| format!("JWKS client: {e}"))?;
        let jwks_uri = tokio::sync::OnceCell::new_with(config.jwks_uri.clone());
        let issuer = Arc::new(Issuer {
            keys: ArcSwap::from_pointee(KeySet {
                keys: Vec::new(),
                fetched: false,
            }),
            jwks_uri,
            last_fetch: tokio::sync::Mutex::new(None),
            refreshes,
            config,
        });
        Ok(Self { issuer, http })
    }

    /// Refresh the keys every `jwks_refresh` in the background, once their URL is known (so a key
    /// the signer withdrew stops verifying), for as long as this source is in use.
    pub fn spawn_refresh(&self) {
        let (issuer, http) = (Arc::downgrade(&self.issuer), self.http.clone());
        tokio::spawn(async move {
            while let Some(live) = issuer.upgrade() {
                if live.jwks_uri.initialized() {
                    live.refetch(&http, Duration::ZERO).await;
                }
                let pause = live.config.refresh;
                drop(live);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// Where the keys are, when another document names it (an SSF transmitter's configuration);
    /// ignored once known.
    pub fn set_jwks_uri(&self, uri: Url) {
        let _ = self.issuer.jwks_uri.set(uri);
    }

    /// The keys that may have signed a JWS with this `kid` and `alg` (an allowed one: checked here),
    /// fetching at most once per `jwks_min_refetch` when none is known. `Err` with a reason when
    /// the algorithm is not allowed, or no keys could be fetched.
    pub async fn keys(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<DecodingKey>, Reason> {
        if !self.issuer.config.algorithms.contains(&alg) {
            return Err(Reason::SubjectTokenAlgorithmNotAllowed);
        }
        let mut keys = self.issuer.keys.load_full();
        if !keys.has(kid, alg) {
            self.issuer.refetch(&self.http, self.issuer.config.min_refetch).await;
            keys = self.issuer.keys.load_full();
            if !keys.fetched {
                return Err(Reason::IssuerKeysUnavailable);
            }
        }
        Ok(keys.candidates(kid, alg).cloned().collect())
    }
}

// === The `subject_token:` section ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSubjectToken {
    pub max_bytes: Option<usize>,
    /// `access_token` (default) or `jwt`: the `subject_token_type` sent to the token service.
    pub token_type: Option<String>,
}

#[derive(Debug)]
pub struct SubjectToken {
    pub max_bytes: usize,
    pub token_type: &'static str,
}

impl RawSubjectToken {
    /// The `subject_token:` section, its problems added to `errors`.
    pub(crate) fn validate(self, errors: &mut Errors) -> SubjectToken {
        let subject_token = SubjectToken {
            max_bytes: self.max_bytes.unwrap_or(16 * 1024),
            token_type: match self.token_type.as_deref() {
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
        subject_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An introspection the token service's breaker holds back is refused as an exchange would
    /// be: `token_service_circuit_open`, with the time left, not `token_service_unavailable`.
    #[tokio::test]
    async fn an_open_breaker_refuses_introspection_as_it_refuses_an_exchange() {
        use crate::exchange::tests::{counting_endpoint, local_service};
        let (port, _accepted, server) = counting_endpoint(None).await;
        let service = local_service(port, "  circuit_breaker:\n    min_requests: 1\n    open_for: 1m\n");
        let config = IntrospectionConfig {
            endpoint: Url::parse(&format!("http://127.0.0.1:{port}/introspect")).expect("url"),
            token_service: service.name().to_owned(),
            cache_ttl: Duration::from_secs(60),
        };
        let introspection = Introspection::new(config, Arc::new(service), 16);
        let digest: Key = [0; 32];
        let first = introspection.subject("opaque", &digest).await.expect_err("dropped");
        assert_eq!(first.reason, Reason::TokenServiceUnavailable);
        let open = introspection.subject("opaque", &digest).await.expect_err("open");
        assert_eq!(
            (open.reason, open.retry_after.is_some()),
            (Reason::TokenServiceCircuitOpen, true)
        );
        server.abort();
    }

    /// An introspection that fails is refused with the reason an exchange failing alike gets
    /// (operations.md's table): no answer within the timeout is `token_service_timeout`, a 5xx
    /// `token_service_error`, an answer that is not JSON `token_service_bad_response`, and only a
    /// connection that fails `token_service_unavailable`.
    #[tokio::test]
    async fn a_failed_introspection_gets_the_reason_a_failed_exchange_gets() {
        use crate::exchange::tests::{Serve, answer, local_service, serving_endpoint};
        for (serve, reason) in [
            (Serve::Hang, Reason::TokenServiceTimeout),
            (
                Serve::Answer(answer("500 Internal Server Error", "")),
                Reason::TokenServiceError,
            ),
            (
                Serve::Answer(answer("200 OK", "<html>")),
                Reason::TokenServiceBadResponse,
            ),
            (Serve::Drop, Reason::TokenServiceUnavailable),
        ] {
            let (port, _accepted, server) = serving_endpoint(serve).await;
            let config = IntrospectionConfig {
                endpoint: Url::parse(&format!("http://127.0.0.1:{port}/introspect")).expect("url"),
                token_service: "test".to_owned(),
                cache_ttl: Duration::from_secs(60),
            };
            let service = local_service(port, "  timeout: 200ms\n");
            let introspection = Introspection::new(config, Arc::new(service), 16);
            let denial = introspection.subject("opaque", &[0; 32]).await.expect_err("refused");
            assert_eq!(denial.reason, reason, "{}", denial.description);
            server.abort();
        }
    }

    #[test]
    fn jwks_fetches_are_paced_by_at_least_a_second() {
        let yaml = "issuer: https://idp.example\njwks_refresh: 0s\njwks_min_refetch: 500ms\n";
        let raw: RawIssuer = crate::files::parse_yaml(yaml).expect("yaml");
        let mut errors = Errors::default();
        assert!(
            raw.validate("trusted_issuers[0]", &mut errors).is_none(),
            "unpaced JWKS fetches"
        );
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        for expected in ["trusted_issuers[0].jwks_refresh", "trusted_issuers[0].jwks_min_refetch"] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    /// What jsonwebtoken does on its own with the JWT forms of issue 12 section 6, beside Baton's
    /// rules (`jwt::Unverified::parse`, run before it): it ignores `crit`, accepts an `exp` past
    /// `i64` and never looks at `iat`, so Baton's own reader must refuse those; a fractional `exp`
    /// it accepts (rounded), and so does Baton (cut to the whole second).
    #[test]
    fn baton_s_jwt_rules_cover_what_jsonwebtoken_lets_through() {
        use crate::jwt::{JwtError, Unverified};
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

        let pair = rcgen::KeyPair::generate().expect("a P-256 key");
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("signing key");
        let verifying = DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes()).expect("public key");
        let config = IssuerConfig {
            issuer: "https://idp.example".into(),
            jwks_uri: None,
            audiences: vec!["me".into()],
            algorithms: vec![Algorithm::ES256],
            leeway: Duration::from_secs(5),
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(10),
        };
        let sign = |header: &str, claims: &str| {
            let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
            let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &signing, Algorithm::ES256).expect("sign");
            format!("{input}.{signature}")
        };
        let now = unix_now();
        let claims = |exp: &str, more: &str| format!(r#"{{"iss":"https://idp.example","aud":"me","exp":{exp}{more}}}"#);
        let plain = r#"{"alg":"ES256"}"#;
        let future = (now + 600).to_string();
        /// (header, claims, jsonwebtoken accepts it, what Baton's reader says of `exp`).
        type Row<'a> = (&'a str, String, bool, Result<Option<i64>, JwtError>);
        let rows: [Row<'_>; 6] = [
            (plain, claims(&future, ""), true, Ok(Some(now as i64 + 600))),
            (
                r#"{"alg":"ES256","crit":["x"],"x":1}"#,
                claims(&future, ""),
                true,
                Err(JwtError::CritUnsupported),
            ),
            (
                plain,
                claims(&format!("{future}.9"), ""),
                true,
                Ok(Some(now as i64 + 600)),
            ),
            (
                plain,
                claims("10000000000000000000", ""),
                true,
                Err(JwtError::BadNumericDate("exp")),
            ),
            (
                plain,
                claims(&future, r#","iat":"yesterday""#),
                true,
                Err(JwtError::BadNumericDate("iat")),
            ),
            (plain, claims("1e300", ""), false, Err(JwtError::BadNumericDate("exp"))),
        ];
        for (header, claims, library_accepts, baton) in rows {
            let token = sign(header, &claims);
            assert_eq!(
                decode(&token, &verifying, Algorithm::ES256, &config, true).is_ok(),
                library_accepts,
                "jsonwebtoken on {header} {claims}"
            );
            assert_eq!(
                Unverified::parse(&token).map(|u| u.and_then(|u| u.exp())),
                baton,
                "Baton on {header} {claims}"
            );
        }
    }
}
