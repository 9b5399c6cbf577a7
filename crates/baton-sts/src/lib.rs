//! `baton sts`: a small token service for development, demos and fault-injection tests. It speaks
//! RFC 8693 token exchange (and client_credentials), publishes its JWKS and RFC 8414 metadata, and
//! mints user tokens on request (`/dev/mint`). It is not a production authorization server: it has
//! no users, no consent and no persistence. It never logs a token. Subject tokens are its own, or
//! (`trusted_subject_issuers`, for the edge shape) another issuer's, verified by Baton's verifier.

mod keys;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use baton_core::clock::unix_now;
use baton_core::http::random_id;
use baton_core::oauth::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use baton_core::secret::Secret;
use baton_core::verify::{IssuerConfig, OpaqueTokens, RawIssuer, Verified, Verifier};
use baton_decide::settings::{Errors, parse_duration};
pub use keys::SigningKey;

const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";

// === Configuration ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStsConfig {
    pub listen: Option<String>,
    pub issuer: Option<String>,
    pub token_lifetime: Option<String>,
    pub signing_key_file: Option<PathBuf>,
    pub clients: Vec<RawClient>,
    pub dev_mint: Option<bool>,
    /// Other issuers whose access tokens it accepts as subject tokens (the edge shape: an external
    /// identity provider's token exchanged for one of this service's). Actor tokens stay its own.
    pub trusted_subject_issuers: Vec<RawIssuer>,
    pub faults: RawFaults,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClient {
    pub client_id: String,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    /// Audiences (or resources) this client may ask tokens for.
    pub audiences: Vec<String>,
    /// Scopes it may ask for; empty means any.
    pub scopes: Vec<String>,
}

/// Deliberate misbehaviour, for tests of what Baton does when a token service misbehaves.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFaults {
    /// Wait this long before answering a token request.
    pub delay: Option<String>,
    /// Answer every token request with this HTTP status and an RFC 6749 `server_error` body.
    pub status: Option<u16>,
    /// Answer a successful token exchange wrongly, in this way.
    pub answer: Option<AnswerFault>,
}

/// Ways to answer a token exchange that a client must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerFault {
    /// 200 with an HTML page.
    Html,
    /// 200 with JSON cut off in the middle.
    TruncatedJson,
    /// 200 with a 10 MiB body.
    HugeBody,
    /// The token response without `expires_in`.
    NoExpiresIn,
    /// `expires_in: 0`.
    ExpiresInZero,
    /// `expires_in: -60`.
    ExpiresInNegative,
    /// `expires_in: 10^12`.
    ExpiresInHuge,
    // Tokens a misbehaving token service issues (issue 12 section 5); a client must refuse them.
    /// The subject token itself, as if it were the issued one.
    SubjectToken,
    /// The subject token with `=` padding appended: the same token to a destination.
    SubjectTokenPadded,
    /// `aud` names another audience than the one asked for.
    WrongAudience,
    /// `aud` names the audience asked for and another one.
    ExtraAudience,
    /// No `aud` at all.
    NoAudience,
    /// An actor token was presented, yet no `act`: the user impersonated instead of delegated.
    NoAct,
    /// `act` names someone other than the actor token's subject.
    OtherActor,
    /// The answer's `scope` grants one more scope than asked.
    ExtraScope,
    /// No `scope` in the answer, and the token's `scope` claim grants one more than asked.
    ExtraScopeClaim,
    /// `exp` a minute ago (while `expires_in` still says 300).
    Expired,
    /// `exp` as a string.
    ExpString,
    /// A JOSE header with `crit: ["x-baton-test"]`, an extension nobody understands.
    CritHeader,
    /// A fractional `exp` (RFC 7519 allows it): a correct answer, which must be used.
    FractionalExp,
    /// `aud` twice in the claims, another audience first (parsers differ on which one counts).
    DuplicateAudience,
    /// Claims that only a lenient parser reads (`"exp": NaN`), signed.
    LenientJson,
    /// `token_type: DPoP` and a `cnf.jkt` naming a key that is not the client's (RFC 9449).
    BoundToAnotherKey,
}

/// The thumbprint `AnswerFault::BoundToAnotherKey` binds to: no client's key.
pub const ANOTHER_KEYS_THUMBPRINT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

impl AnswerFault {
    /// Spoil the claims of an exchanged token as this fault says; `asked` is the audience asked for.
    fn spoil_claims(self, claims: &mut Value, asked: &str, now: u64) {
        match self {
            Self::WrongAudience => claims["aud"] = json!("https://wrong.example"),
            Self::ExtraAudience => claims["aud"] = json!([asked, "https://other.example"]),
            Self::NoAudience => drop(claims.as_object_mut().and_then(|c| c.remove("aud"))),
            Self::NoAct => drop(claims.as_object_mut().and_then(|c| c.remove("act"))),
            Self::OtherActor => claims["act"] = json!({ "sub": "someone-else" }),
            Self::ExtraScopeClaim => {
                let scope = claims["scope"].as_str().unwrap_or_default().to_owned();
                claims["scope"] = json!(format!("{scope} admin").trim());
            }
            Self::Expired => claims["exp"] = json!(now - 60),
            Self::ExpString => claims["exp"] = json!((now + 300).to_string()),
            Self::FractionalExp => claims["exp"] = json!(now as f64 + 300.5),
            Self::BoundToAnotherKey => claims["cnf"] = json!({ "jkt": ANOTHER_KEYS_THUMBPRINT }),
            _ => {}
        }
    }
}

#[derive(Debug)]
pub struct StsConfig {
    pub listen: SocketAddr,
    pub issuer: Option<String>,
    pub token_lifetime: Duration,
    pub key: SigningKey,
    pub clients: HashMap<String, Client>,
    pub dev_mint: bool,
    pub trusted_subject_issuers: Vec<IssuerConfig>,
    pub fault_delay: Duration,
    pub fault_status: Option<StatusCode>,
    pub fault_answer: Option<AnswerFault>,
}

#[derive(Debug)]
pub struct Client {
    secret: Secret,
    audiences: Vec<String>,
    scopes: Vec<String>,
}

impl RawStsConfig {
    /// Validate, reporting every problem at once.
    pub fn validate(self) -> Result<StsConfig, Vec<String>> {
        let mut errors = Vec::new();
        let listen = self.listen.as_deref().unwrap_or("127.0.0.1:9400");
        let listen = listen
            .parse()
            .map_err(|_| errors.push(format!("listen: `{listen}` is not an address")));
        let mut lifetime =
            |text: &Option<String>, field: &str, default: Duration| match text.as_deref().map(parse_duration) {
                None => default,
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    errors.push(format!("{field}: {e}"));
                    default
                }
            };
        let token_lifetime = lifetime(&self.token_lifetime, "token_lifetime", Duration::from_secs(300));
        let fault_delay = lifetime(&self.faults.delay, "faults.delay", Duration::ZERO);
        let fault_status = self.faults.status.map(|s| {
            StatusCode::from_u16(s).unwrap_or_else(|_| {
                errors.push(format!("faults.status: {s} is not an HTTP status"));
                StatusCode::INTERNAL_SERVER_ERROR
            })
        });
        let key = match &self.signing_key_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| SigningKey::from_pem(&pem)),
            None => SigningKey::generate(),
        }
        .map_err(|e| errors.push(format!("signing_key_file: {e}")));
        let mut clients = HashMap::new();
        for (i, c) in self.clients.into_iter().enumerate() {
            let secret = match (&c.secret_file, &c.secret_env) {
                (Some(path), None) => std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()),
                (None, Some(name)) => std::env::var(name).ok().map(|s| s.trim().to_owned()),
                _ => None,
            };
            match secret.filter(|s| !s.is_empty()) {
                Some(secret) if !c.client_id.is_empty() => {
                    clients.insert(
                        c.client_id,
                        Client {
                            secret: Secret::new(secret),
                            audiences: c.audiences,
                            scopes: c.scopes,
                        },
                    );
                }
                Some(_) => errors.push(format!("clients[{i}].client_id: is required")),
                None => errors.push(format!(
                    "clients[{i}]: set exactly one of `secret_file` or `secret_env`, and make it non-empty"
                )),
            }
        }
        if clients.is_empty() && errors.is_empty() {
            errors.push("clients: at least one client is required".into());
        }
        // Checked as Baton checks its own `trusted_issuers` (audiences required, no HMAC, ...).
        let mut issuer_errors = Errors::default();
        for (i, raw) in self.trusted_subject_issuers.iter().enumerate() {
            if self
                .issuer
                .as_deref()
                .is_some_and(|own| own.trim_end_matches('/') == raw.issuer)
            {
                issuer_errors.add(
                    format!("trusted_subject_issuers[{i}].issuer"),
                    "is this service's own issuer",
                );
            }
        }
        let trusted_subject_issuers: Vec<IssuerConfig> = self
            .trusted_subject_issuers
            .into_iter()
            .enumerate()
            .filter_map(|(i, raw)| raw.validate(&format!("trusted_subject_issuers[{i}]"), &mut issuer_errors))
            .collect();
        errors.extend(
            issuer_errors
                .0
                .into_iter()
                .map(|e| format!("{}: {}", e.path, e.message)),
        );
        match (listen, key) {
            (Ok(listen), Ok(key)) if errors.is_empty() => Ok(StsConfig {
                listen,
                issuer: self.issuer,
                token_lifetime,
                key,
                clients,
                dev_mint: self.dev_mint.unwrap_or(true),
                trusted_subject_issuers,
                fault_delay,
                fault_status,
                fault_answer: self.faults.answer,
            }),
            _ => Err(errors),
        }
    }
}

// === The service ===

#[derive(Debug)]
struct Sts {
    issuer: String,
    token_lifetime: Duration,
    key: SigningKey,
    clients: HashMap<String, Client>,
    dev_mint: bool,
    /// Verifies subject tokens of `trusted_subject_issuers` (their JWKS, fetched and refreshed).
    foreign: Option<Arc<Verifier>>,
    fault_delay: Duration,
    fault_status: Option<StatusCode>,
    fault_answer: Option<AnswerFault>,
    exchanges: AtomicU64,
    jwks_served: AtomicU64,
    /// Opaque (non-JWT) tokens minted for development, with their claims; bounded.
    opaque: std::sync::Mutex<HashMap<String, Value>>,
}

/// How many opaque tokens `/dev/mint` keeps.
const MAX_OPAQUE_TOKENS: usize = 10_000;

/// Where a running service can be reached.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoints {
    pub ready: bool,
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

/// Serve on `listener` until `shutdown`. The issuer defaults to `http://<bound address>`.
pub async fn serve(
    config: StsConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Endpoints),
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let issuer = config.issuer.unwrap_or_else(|| format!("http://{local}"));
    let issuer = issuer.trim_end_matches('/').to_owned();
    if config.trusted_subject_issuers.iter().any(|t| t.issuer == issuer) {
        return Err(std::io::Error::other(
            "trusted_subject_issuers: lists this service's own issuer",
        ));
    }
    let foreign = Verifier::new(
        config.trusted_subject_issuers,
        OpaqueTokens::Reject,
        None,
        MAX_OPAQUE_TOKENS as u64,
        Default::default(),
    )
    .map_err(std::io::Error::other)?;
    if let Some(verifier) = &foreign {
        verifier.spawn_refresh();
    }
    let endpoints = Endpoints {
        ready: true,
        token_endpoint: format!("{issuer}/token"),
        jwks_uri: format!("{issuer}/jwks"),
        issuer: issuer.clone(),
    };
    let sts = Arc::new(Sts {
        issuer,
        token_lifetime: config.token_lifetime,
        key: config.key,
        clients: config.clients,
        dev_mint: config.dev_mint,
        foreign,
        fault_delay: config.fault_delay,
        fault_status: config.fault_status,
        fault_answer: config.fault_answer,
        exchanges: AtomicU64::new(0),
        jwks_served: AtomicU64::new(0),
        opaque: std::sync::Mutex::new(HashMap::new()),
    });
    let metadata = Arc::new(json!({
        "issuer": endpoints.issuer,
        "token_endpoint": endpoints.token_endpoint,
        "jwks_uri": endpoints.jwks_uri,
        "introspection_endpoint": format!("{}/introspect", endpoints.issuer),
        "grant_types_supported": [GRANT_TOKEN_EXCHANGE, GRANT_CLIENT_CREDENTIALS],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": [],
    }));
    let router = Router::new()
        .route("/token", post(token))
        .route("/jwks", get(jwks))
        .route("/dev/mint", post(mint))
        .route("/dev/stats", get(stats))
        .route("/introspect", post(introspect))
        .route(
            "/.well-known/oauth-authorization-server",
            get({
                let m = metadata.clone();
                move || async move { Json((*m).clone()) }
            }),
        )
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { Json((*metadata).clone()) }),
        )
        .with_state(sts);
    on_ready(&endpoints);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// An RFC 6749 section 5.2 error.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
}

fn oauth_error(status: StatusCode, error: &'static str, description: &'static str) -> OAuthError {
    OAuthError {
        status,
        error,
        description,
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.error, "error_description": self.description }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = axum::http::HeaderValue::from_static("Basic realm=\"baton-sts\"");
            response.headers_mut().insert("www-authenticate", challenge);
        }
        response
    }
}

async fn jwks(State(sts): State<Arc<Sts>>) -> Json<Value> {
    sts.jwks_served.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "keys": [sts.key.jwk] }))
}

async fn stats(State(sts): State<Arc<Sts>>) -> Json<Value> {
    Json(json!({
        "token_exchange": sts.exchanges.load(Ordering::Relaxed),
        "jwks": sts.jwks_served.load(Ordering::Relaxed),
    }))
}

async fn token(State(sts): State<Arc<Sts>>, headers: HeaderMap, body: String) -> Response {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let grant_type = single(&params, "grant_type");
    if grant_type == Some(GRANT_TOKEN_EXCHANGE) {
        sts.exchanges.fetch_add(1, Ordering::Relaxed);
    }
    if !sts.fault_delay.is_zero() {
        tokio::time::sleep(sts.fault_delay).await;
    }
    if let Some(status) = sts.fault_status {
        let mut response = oauth_error(status, "server_error", "fault injected by configuration").into_response();
        if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            // Ask for a pause, as a loaded server would.
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("2"));
        }
        return response;
    }
    let (client_id, client) = match authenticate(&sts, &headers, &params) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let result = match grant_type {
        Some(GRANT_TOKEN_EXCHANGE) => match (exchange(&sts, client_id, client, &params).await, sts.fault_answer) {
            (Ok(response), Some(fault)) => Ok(answer_wrongly(response, fault).await),
            (result, _) => result,
        },
        Some(GRANT_CLIENT_CREDENTIALS) => client_credentials(&sts, client_id, client, &params),
        Some(_) => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "this service issues token-exchange and client_credentials grants",
        )),
        None => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is required",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A good token response, spoilt as `fault` says.
async fn answer_wrongly(response: Response, fault: AnswerFault) -> Response {
    let raw = |content_type: &'static str, body: Vec<u8>| {
        ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let expires_in = match fault {
        AnswerFault::Html => return raw("text/html", b"<html><body>Service Unavailable</body></html>".to_vec()),
        AnswerFault::TruncatedJson => return raw("application/json", br#"{"access_token":"eyJhbGciOi"#.to_vec()),
        AnswerFault::HugeBody => {
            let mut body = br#"{"padding":""#.to_vec();
            body.resize(10 * 1024 * 1024, b' ');
            body.extend_from_slice(br#"","access_token":"x","token_type":"Bearer"}"#);
            return raw("application/json", body);
        }
        AnswerFault::NoExpiresIn => None,
        AnswerFault::ExpiresInZero => Some(json!(0)),
        AnswerFault::ExpiresInNegative => Some(json!(-60)),
        AnswerFault::ExpiresInHuge => Some(json!(1_000_000_000_000u64)),
        // Its `cnf` was set when it was issued (`AnswerFault::spoil_claims`).
        AnswerFault::BoundToAnotherKey => {
            return edit_body(response, |body| drop(body.insert("token_type".into(), json!("DPoP")))).await;
        }
        // The token itself was spoilt when it was issued (`AnswerFault::spoil_claims`).
        _ => return response,
    };
    edit_body(response, |body| match expires_in {
        Some(value) => drop(body.insert("expires_in".into(), value)),
        None => drop(body.remove("expires_in")),
    })
    .await
}

/// A good JSON token response with its members changed by `edit`.
async fn edit_body(response: Response, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Response {
    let Ok(bytes) = axum::body::to_bytes(response.into_body(), 64 * 1024).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&bytes) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    edit(&mut body);
    Json(Value::Object(body)).into_response()
}

/// The one value of a parameter that may appear once.
fn single<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn authenticate<'a>(
    sts: &'a Sts,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<(&'a str, &'a Client), OAuthError> {
    let unauthorized = || {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    };
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        });
    let (id, secret) = match (basic, single(params, "client_secret")) {
        (Some(_), Some(_)) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "use one client authentication method",
            ));
        }
        (Some(encoded), None) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| unauthorized())?;
            let decoded = String::from_utf8(decoded).map_err(|_| unauthorized())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(unauthorized)?;
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            (dec(id).unwrap_or_default(), dec(secret).unwrap_or_default())
        }
        (None, Some(secret)) => (single(params, "client_id").unwrap_or("").to_owned(), secret.to_owned()),
        (None, None) => return Err(unauthorized()),
    };
    let (stored_id, client) = sts.clients.get_key_value(id.as_str()).ok_or_else(unauthorized)?;
    aws_lc_rs::constant_time::verify_slices_are_equal(client.secret.expose().as_bytes(), secret.as_bytes())
        .map_err(|_| unauthorized())?;
    Ok((stored_id.as_str(), client))
}

async fn exchange(
    sts: &Sts,
    client_id: &str,
    client: &Client,
    params: &[(String, String)],
) -> Result<Response, OAuthError> {
    let bad_request =
        |error: &'static str, description: &'static str| oauth_error(StatusCode::BAD_REQUEST, error, description);
    let subject_token =
        single(params, "subject_token").ok_or_else(|| bad_request("invalid_request", "subject_token is required"))?;
    let subject_type = single(params, "subject_token_type")
        .ok_or_else(|| bad_request("invalid_request", "subject_token_type is required"))?;
    if subject_type != TOKEN_TYPE_ACCESS_TOKEN && subject_type != TOKEN_TYPE_JWT {
        return Err(bad_request(
            "invalid_request",
            "subject_token_type must be access_token or jwt",
        ));
    }
    let issued_type = match single(params, "requested_token_type") {
        None | Some(TOKEN_TYPE_ACCESS_TOKEN) => TOKEN_TYPE_ACCESS_TOKEN,
        Some(TOKEN_TYPE_JWT) => TOKEN_TYPE_JWT,
        Some(_) => {
            return Err(bad_request(
                "invalid_request",
                "requested_token_type must be access_token or jwt",
            ));
        }
    };
    // RFC 8693 2.1: several audience/resource values may be given; this service issues one token
    // for exactly one target.
    let targets: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "audience" || k == "resource")
        .map(|(_, v)| v.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let audience = match targets.as_slice() {
        [one] => *one,
        [] => return Err(bad_request("invalid_request", "audience or resource is required")),
        _ => {
            return Err(bad_request(
                "invalid_target",
                "this service issues a token for one audience at a time",
            ));
        }
    };
    if !client.audiences.iter().any(|a| a == audience) {
        return Err(bad_request(
            "invalid_target",
            "this client may not obtain tokens for that audience",
        ));
    }
    let subject = sts
        .verify_subject(subject_token)
        .await
        .map_err(|_| bad_request("invalid_grant", "the subject token is invalid or expired"))?;
    let scope = requested_scope(client, single(params, "scope"))
        .map_err(|_| bad_request("invalid_scope", "the requested scope is not allowed for this client"))?
        .or_else(|| subject.get("scope").and_then(Value::as_str).map(str::to_owned));

    let mut act = None;
    if let Some(actor_token) = single(params, "actor_token") {
        if single(params, "actor_token_type").is_none() {
            return Err(bad_request(
                "invalid_request",
                "actor_token_type is required with actor_token",
            ));
        }
        let actor = sts
            .verify(actor_token)
            .map_err(|_| bad_request("invalid_grant", "the actor token is invalid or expired"))?;
        let actor_sub = actor.get("sub").cloned().unwrap_or(Value::Null);
        // RFC 8693 4.4: a subject that names who may act for it is obeyed.
        if let Some(may_act) = subject.get("may_act")
            && may_act.get("sub") != Some(&actor_sub)
        {
            return Err(bad_request(
                "invalid_grant",
                "the subject token's may_act does not name this actor",
            ));
        }
        // RFC 8693 4.1: the current actor outermost, earlier actors nested inside.
        let mut chain = json!({ "sub": actor_sub });
        if let Some(prior) = subject.get("act") {
            chain["act"] = prior.clone();
        }
        act = Some(chain);
    } else if let Some(prior) = subject.get("act") {
        // An exchange without a new actor keeps the delegation chain it was given.
        act = Some(prior.clone());
    }

    let now = unix_now();
    let mut exp = now + sts.token_lifetime.as_secs();
    if let Some(subject_exp) = subject.get("exp").and_then(Value::as_u64) {
        exp = exp.min(subject_exp);
    }
    // Baton's deferred jobs: a grant asked for with `baton:max_age:<seconds>` lives exactly that
    // long, past the user's own token (a revocation, not an expiry, ends a job early).
    if let Some(max_age) = scope.as_deref().and_then(grant_max_age) {
        exp = now + max_age;
    }
    let mut claims = json!({
        "iss": sts.issuer,
        "sub": subject.get("sub").cloned().unwrap_or(Value::Null),
        "aud": audience,
        "iat": now,
        "exp": exp,
        "jti": random_id(),
        "client_id": client_id,
    });
    if let Some(scope) = &scope {
        claims["scope"] = json!(scope);
    }
    if let Some(act) = act {
        claims["act"] = act;
    }
    let fault = sts.fault_answer;
    if let Some(fault) = fault {
        fault.spoil_claims(&mut claims, audience, now);
    }
    let crit = fault == Some(AnswerFault::CritHeader);
    let raw = |claims: String| {
        sts.sign_text(&claims)
            .map_err(|_| oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "cannot sign"))
    };
    let token = match fault {
        Some(AnswerFault::SubjectToken) => subject_token.to_owned(),
        Some(AnswerFault::SubjectTokenPadded) => format!("{subject_token}="),
        Some(AnswerFault::DuplicateAudience) => raw(format!(
            r#"{{"aud":"https://wrong.example",{}"#,
            &claims.to_string()[1..]
        ))?,
        Some(AnswerFault::LenientJson) => raw(format!(r#"{{"nbf":NaN,{}"#, &claims.to_string()[1..]))?,
        _ => sts
            .sign_with(&claims, crit)
            .map_err(|_| oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "cannot sign"))?,
    };
    tracing::info!(client = client_id, audience, issued = %baton_core::secret::fingerprint(&token), "token exchanged");
    let scope = match (fault, scope) {
        (Some(AnswerFault::ExtraScope), scope) => {
            Some(format!("{} admin", scope.unwrap_or_default()).trim().to_owned())
        }
        (Some(AnswerFault::ExtraScopeClaim), _) => None,
        (_, scope) => scope,
    };
    Ok(token_response(
        &token,
        issued_type,
        exp.saturating_sub(now),
        scope.as_deref(),
    ))
}

fn client_credentials(
    sts: &Sts,
    client_id: &str,
    client: &Client,
    params: &[(String, String)],
) -> Result<Response, OAuthError> {
    let audience = match single(params, "audience").or_else(|| single(params, "resource")) {
        Some(a) if client.audiences.iter().any(|x| x == a) => a.to_owned(),
        Some(_) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "this client may not obtain tokens for that audience",
            ));
        }
        None => sts.issuer.clone(),
    };
    let scope = requested_scope(client, single(params, "scope")).map_err(|_| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "the requested scope is not allowed for this client",
        )
    })?;
    let now = unix_now();
    let exp = now + sts.token_lifetime.as_secs();
    let mut claims = json!({"iss": sts.issuer, "sub": client_id, "aud": audience, "iat": now, "exp": exp, "jti": random_id(), "client_id": client_id});
    if let Some(scope) = &scope {
        claims["scope"] = json!(scope);
    }
    let token = sts
        .sign(&claims)
        .map_err(|_| oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "cannot sign"))?;
    Ok(token_response(
        &token,
        TOKEN_TYPE_ACCESS_TOKEN,
        exp - now,
        scope.as_deref(),
    ))
}

/// The `baton:max_age:<seconds>` a deferred job's grant is asked for with (digits, 1 to 10^9).
fn grant_max_age(scope: &str) -> Option<u64> {
    scope
        .split(' ')
        .filter_map(|s| s.strip_prefix("baton:max_age:"))
        .find(|v| !v.is_empty() && v.len() <= 9 && !v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
}

/// The requested scope if the client may have all of it; `Ok(None)` when none was requested.
fn requested_scope(client: &Client, requested: Option<&str>) -> Result<Option<String>, ()> {
    let Some(requested) = requested else { return Ok(None) };
    if client.scopes.is_empty() || requested.split(' ').all(|s| client.scopes.iter().any(|c| c == s)) {
        Ok(Some(requested.to_owned()))
    } else {
        Err(())
    }
}

fn token_response(token: &str, issued_type: &str, expires_in: u64, scope: Option<&str>) -> Response {
    let mut body = json!({
        "access_token": token,
        "issued_token_type": issued_type,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(scope) = scope {
        body["scope"] = json!(scope);
    }
    let mut response = Json(body).into_response();
    // RFC 6749 5.1: token responses are not cached.
    response
        .headers_mut()
        .insert("cache-control", axum::http::HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
struct MintRequest {
    sub: String,
    aud: Option<String>,
    scope: Option<String>,
    expires_in: Option<i64>,
    may_act: Option<String>,
    /// Seconds from now before which the token is not valid (`nbf`).
    not_before: Option<i64>,
    /// More claims, as a JSON object (e.g. `{"tenant":"acme"}`); they cannot replace the ones above.
    claims: Option<String>,
    /// `true`: an opaque token (not a JWT) whose claims only `/introspect` reveals.
    opaque: Option<bool>,
}

/// Development helper: a user token signed by this service, as its (absent) login would issue.
async fn mint(State(sts): State<Arc<Sts>>, axum::Form(request): axum::Form<MintRequest>) -> Response {
    if !sts.dev_mint {
        return StatusCode::NOT_FOUND.into_response();
    }
    if request.sub.is_empty() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "sub is required").into_response();
    }
    let now = unix_now() as i64;
    let expires_in = request.expires_in.unwrap_or(3600);
    let mut claims = json!({
        "iss": sts.issuer,
        "sub": request.sub,
        "aud": request.aud.unwrap_or_else(|| "baton-sts".into()),
        "iat": now,
        "exp": now + expires_in,
        "jti": random_id(),
    });
    if let Some(scope) = request.scope.filter(|s| !s.is_empty()) {
        claims["scope"] = json!(scope);
    }
    if let Some(actor) = request.may_act {
        claims["may_act"] = json!({ "sub": actor });
    }
    if let Some(seconds) = request.not_before {
        claims["nbf"] = json!(now + seconds);
    }
    if let Some(extra) = request.claims {
        let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(&extra) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "claims must be a JSON object",
            )
            .into_response();
        };
        for (name, value) in extra {
            if claims.get(&name).is_none() {
                claims[name] = value;
            }
        }
    }
    if request.opaque == Some(true) {
        let token = format!("opq_{}{}", random_id(), random_id());
        let Ok(mut opaque) = sts.opaque.lock() else {
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "opaque token store unavailable",
            )
            .into_response();
        };
        if opaque.len() >= MAX_OPAQUE_TOKENS {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many opaque tokens",
            )
            .into_response();
        }
        opaque.insert(token.clone(), claims);
        return Json(json!({ "access_token": token, "expires_in": expires_in })).into_response();
    }
    match sts.sign(&claims) {
        Ok(token) => Json(json!({ "access_token": token, "expires_in": expires_in })).into_response(),
        Err(_) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "cannot sign").into_response(),
    }
}

impl Sts {
    fn sign(&self, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_with(claims, false)
    }

    /// Sign claims given as text, exactly as written (for faults no serializer would write).
    fn sign_text(&self, claims: &str) -> Result<String, jsonwebtoken::errors::Error> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg": "ES256", "kid": self.key.kid, "typ": "at+jwt"}).to_string();
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &self.key.encoding, Algorithm::ES256)?;
        Ok(format!("{input}.{signature}"))
    }

    /// Sign `claims`; with `crit`, the header marks an extension nobody implements as critical
    /// (the `crit_header` fault).
    fn sign_with(&self, claims: &Value, crit: bool) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("at+jwt".into());
        if crit {
            header.crit = Some(vec!["x-baton-test".into()]);
            header.extras.insert("x-baton-test", "1");
        }
        jsonwebtoken::encode(&header, claims, &self.key.encoding)
    }

    /// A subject token: one this service issued, or one of a `trusted_subject_issuers` issuer,
    /// verified by Baton's verifier (issuer, JWKS key by `kid`, algorithm, `aud`, `exp`/`nbf`).
    async fn verify_subject(&self, token: &str) -> Result<Value, ()> {
        let foreign = self.foreign.as_ref().filter(|_| {
            baton_core::jwt::Unverified::parse(token)
                .ok()
                .flatten()
                .and_then(|claims| claims.issuer().map(|iss| iss != self.issuer))
                .unwrap_or(false)
        });
        let Some(verifier) = foreign else {
            return self.verify(token);
        };
        match verifier.verify(token, &baton_core::cache::digest(token)).await {
            Ok(Verified::Subject(subject)) => Ok(Value::Object(subject.claims.clone())),
            Ok(Verified::Forwarded) | Err(_) => Err(()),
        }
    }

    /// A token this service issued: an opaque one it still holds, or a JWT with its signature,
    /// issuer and expiry (no leeway).
    fn verify(&self, token: &str) -> Result<Value, ()> {
        let opaque = self.opaque.lock().ok().and_then(|o| o.get(token).cloned());
        if let Some(claims) = opaque {
            let live = claims
                .get("exp")
                .and_then(Value::as_i64)
                .is_some_and(|exp| exp > unix_now() as i64);
            return if live { Ok(claims) } else { Err(()) };
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        validation.leeway = 0;
        jsonwebtoken::decode::<Value>(token, &self.key.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|_| ())
    }
}

/// RFC 7662 token introspection, for authenticated clients.
async fn introspect(State(sts): State<Arc<Sts>>, headers: HeaderMap, body: String) -> Response {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    if let Err(e) = authenticate(&sts, &headers, &params) {
        return e.into_response();
    }
    let Some(token) = single(&params, "token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required").into_response();
    };
    match sts.verify(token) {
        Ok(Value::Object(mut claims)) => {
            claims.insert("active".into(), Value::Bool(true));
            Json(Value::Object(claims)).into_response()
        }
        _ => Json(json!({ "active": false })).into_response(),
    }
}

// === Command-line helpers ===

/// `baton sts mint`: ask a running service's `/dev/mint` for a user token.
pub async fn mint_remote(url: &str, form: &[(&str, String)]) -> Result<String, String> {
    let base = url.trim_end_matches('/');
    let response = reqwest::Client::new()
        .post(format!("{base}/dev/mint"))
        .form(form)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("unexpected answer: {e}"))?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))?;
    match body.get("access_token").and_then(Value::as_str) {
        Some(token) if status.is_success() => Ok(token.to_owned()),
        _ => Err(format!("{base} answered {status}: {body}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `yaml` with one client whose secret is in a file, validated.
    fn validate(extra: &str) -> Result<StsConfig, Vec<String>> {
        let secret = std::env::temp_dir().join(format!("baton-sts-test-secret-{}", std::process::id()));
        std::fs::write(&secret, "secret").expect("write secret");
        let yaml = format!(
            "issuer: http://sts.internal\nclients:\n  - client_id: edge\n    secret_file: {}\n    audiences: [https://orders.internal]\n{extra}",
            secret.display()
        );
        let raw: RawStsConfig = baton_core::files::parse_yaml(&yaml).expect("yaml");
        raw.validate()
    }

    #[test]
    fn trusted_subject_issuers_are_checked_like_batons_trusted_issuers() {
        let config = validate(
            "trusted_subject_issuers:\n  - issuer: https://idp.example\n    jwks_uri: https://idp.example/jwks\n    audiences: [https://api.example]\n",
        )
        .expect("valid");
        assert_eq!(config.trusted_subject_issuers.len(), 1);
        assert_eq!(config.trusted_subject_issuers[0].issuer, "https://idp.example");

        // Every error at once, each at its field's path.
        let errors = validate(
            "trusted_subject_issuers:\n  - issuer: https://idp.example\n    algorithms: [HS256]\n  - issuer: http://sts.internal\n    audiences: [x]\n    jwks_uri: not a url\n",
        )
        .expect_err("invalid");
        let joined = errors.join("\n");
        for expected in [
            "trusted_subject_issuers[0].audiences:",
            "trusted_subject_issuers[0].algorithms[0]:",
            "trusted_subject_issuers[1].jwks_uri:",
            "trusted_subject_issuers[1].issuer: is this service's own issuer",
        ] {
            assert!(joined.contains(expected), "{expected} not in:\n{joined}");
        }
    }

    #[test]
    fn a_job_grant_lives_its_max_age_and_nothing_else_sets_a_lifetime() {
        assert_eq!(
            grant_max_age("baton:job:j baton:dest:orders baton:max_age:600"),
            Some(600)
        );
        assert_eq!(grant_max_age("baton:max_age:1"), Some(1));
        for scope in [
            "",
            "orders.read",
            "baton:max_age:",
            "baton:max_age:0",
            "baton:max_age:060",
            "baton:max_age:-5",
            "baton:max_age:1e3",
            "baton:max_age:1000000000",
            "Baton:max_age:60",
        ] {
            assert_eq!(grant_max_age(scope), None, "{scope:?}");
        }
    }
}
