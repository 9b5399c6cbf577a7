//! OpenID Connect Back-Channel Logout 1.0: the `backchannel_logout:` section, the request the
//! identity provider sends (`POST /backchannel-logout`, a form with one `logout_token`), the logout
//! token's verification (section 2.6: a trusted issuer, a signature by its JWKS through
//! `verify::Verifier`, `aud`, a fresh `iat`, `exp`, the event, `sub` and/or `sid`, no `nonce`, a
//! `jti` not seen before), and the bounded memory of `jti`s that makes a replay fail. What it yields
//! is the revocation `Selector`s; `authz::Authz::revoke` does the rest. It never keeps, logs or
//! reports a logout token, and it never revokes on a token it did not verify completely.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::revocation::Selector;
use crate::verify::{KeysError, Verifier};
use baton_decide::settings::{Errors, duration};

/// The event a logout token carries (section 2.4).
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// The longest request body read: a logout token is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// The longest `sub`, `sid` or `iss` acted on: what a cached entry keeps of its subject, so every
/// value a logout names can be purged.
const MAX_VALUE_LEN: usize = crate::jwt::MAX_CLAIM_LEN;
/// The longest `jti` remembered (it is remembered as a digest; this bounds the work).
const MAX_JTI_LEN: usize = 1024;

// === The `backchannel_logout:` section ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    /// Baton's client id at the identity provider: a logout token's `aud` must contain it.
    pub client_id: Option<String>,
    /// The issuers whose logout tokens are accepted; each is one of `trusted_issuers`, whose JWKS
    /// verifies its logout tokens.
    pub issuers: Vec<String>,
    /// How old a logout token's `iat` may be (default 2m).
    pub max_age: Option<String>,
    /// Clock skew allowed on `iat` and `exp` (default 30s).
    pub leeway: Option<String>,
    /// How many `jti`s are remembered at most against replay (default 10000).
    pub max_replay_entries: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub client_id: String,
    pub issuers: Vec<String>,
    pub max_age: Duration,
    pub leeway: Duration,
    pub max_replay_entries: usize,
}

const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_MAX_REPLAY_ENTRIES: usize = 10_000;
const MAX_MAX_REPLAY_ENTRIES: usize = 1_000_000;
/// Past this a logout token is no signal of a session ending now, and the replay memory would
/// have to hold its `jti` that long.
const MAX_MAX_AGE: Duration = Duration::from_secs(3600);
const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl Raw {
    /// The section, its problems added to `errors`; `trusted` names the `trusted_issuers`.
    pub(crate) fn validate(self, trusted: &[&str], errors: &mut Errors) -> Option<Settings> {
        let before = errors.0.len();
        let client_id = self.client_id.unwrap_or_default();
        if client_id.is_empty() {
            errors.add(
                "backchannel_logout.client_id",
                "is required: Baton's client id at the identity provider (the logout token's aud)",
            );
        }
        if self.issuers.is_empty() {
            errors.add(
                "backchannel_logout.issuers",
                "name at least one issuer from trusted_issuers",
            );
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            if !trusted.contains(&issuer.as_str()) {
                errors.add(
                    format!("backchannel_logout.issuers[{i}]"),
                    format!("`{issuer}` is not in trusted_issuers, whose keys verify its logout tokens"),
                );
            }
        }
        let max_age = duration(
            self.max_age.as_deref(),
            "backchannel_logout.max_age",
            DEFAULT_MAX_AGE,
            errors,
        );
        if max_age < Duration::from_secs(1) || max_age > MAX_MAX_AGE {
            errors.add("backchannel_logout.max_age", "must be between 1s and 1h");
        }
        let leeway = duration(
            self.leeway.as_deref(),
            "backchannel_logout.leeway",
            DEFAULT_LEEWAY,
            errors,
        );
        if leeway > MAX_LEEWAY {
            errors.add("backchannel_logout.leeway", "must be at most 5m");
        }
        let max_replay_entries = self.max_replay_entries.unwrap_or(DEFAULT_MAX_REPLAY_ENTRIES);
        if max_replay_entries == 0 || max_replay_entries > MAX_MAX_REPLAY_ENTRIES {
            errors.add(
                "backchannel_logout.max_replay_entries",
                format!("must be between 1 and {MAX_MAX_REPLAY_ENTRIES}"),
            );
        }
        (errors.0.len() == before).then_some(Settings {
            client_id,
            issuers: self.issuers,
            max_age,
            leeway,
            max_replay_entries,
        })
    }
}

// === Refusals ===

/// Why a back-channel logout request was refused. `code` is the stable wire name (the
/// `error_description` starts with it, and it is the metric's `outcome`): never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    ContentTypeInvalid,
    BodyTooLarge,
    TokenMissing,
    RequestMalformed,
    Malformed,
    Unsigned,
    TypeInvalid,
    AlgorithmNotAllowed,
    CritUnsupported,
    IssuerUntrusted,
    KeyUnknown,
    SignatureInvalid,
    AudienceMismatch,
    Stale,
    IssuedInFuture,
    Expired,
    EventMissing,
    EventMalformed,
    NoncePresent,
    SubjectMissing,
    JtiMissing,
    Replayed,
    IssuerKeysUnavailable,
    ReplayMemoryFull,
    RevocationStoreFull,
}

impl Refusal {
    pub const ALL: [Self; 25] = [
        Self::ContentTypeInvalid,
        Self::BodyTooLarge,
        Self::TokenMissing,
        Self::RequestMalformed,
        Self::Malformed,
        Self::Unsigned,
        Self::TypeInvalid,
        Self::AlgorithmNotAllowed,
        Self::CritUnsupported,
        Self::IssuerUntrusted,
        Self::KeyUnknown,
        Self::SignatureInvalid,
        Self::AudienceMismatch,
        Self::Stale,
        Self::IssuedInFuture,
        Self::Expired,
        Self::EventMissing,
        Self::EventMalformed,
        Self::NoncePresent,
        Self::SubjectMissing,
        Self::JtiMissing,
        Self::Replayed,
        Self::IssuerKeysUnavailable,
        Self::ReplayMemoryFull,
        Self::RevocationStoreFull,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            Self::ContentTypeInvalid => "content_type_invalid",
            Self::BodyTooLarge => "body_too_large",
            Self::TokenMissing => "logout_token_missing",
            Self::RequestMalformed => "request_malformed",
            Self::Malformed => "logout_token_malformed",
            Self::Unsigned => "logout_token_unsigned",
            Self::TypeInvalid => "logout_token_type_invalid",
            Self::AlgorithmNotAllowed => "logout_token_algorithm_not_allowed",
            Self::CritUnsupported => "logout_token_crit_unsupported",
            Self::IssuerUntrusted => "logout_token_issuer_untrusted",
            Self::KeyUnknown => "logout_token_key_unknown",
            Self::SignatureInvalid => "logout_token_signature_invalid",
            Self::AudienceMismatch => "logout_token_audience_mismatch",
            Self::Stale => "logout_token_stale",
            Self::IssuedInFuture => "logout_token_issued_in_future",
            Self::Expired => "logout_token_expired",
            Self::EventMissing => "logout_token_event_missing",
            Self::EventMalformed => "logout_token_event_malformed",
            Self::NoncePresent => "logout_token_nonce_present",
            Self::SubjectMissing => "logout_token_subject_missing",
            Self::JtiMissing => "logout_token_jti_missing",
            Self::Replayed => "logout_token_replayed",
            Self::IssuerKeysUnavailable => "issuer_keys_unavailable",
            Self::ReplayMemoryFull => "replay_memory_full",
            Self::RevocationStoreFull => "revocation_store_full",
        }
    }

    /// 400 for a request or token at fault (the spec's answer); 503 when Baton cannot act now
    /// and the identity provider may try again.
    pub const fn status(self) -> u16 {
        match self {
            Self::IssuerKeysUnavailable | Self::ReplayMemoryFull | Self::RevocationStoreFull => 503,
            _ => 400,
        }
    }

    /// The human half of `error_description`.
    pub const fn message(self) -> &'static str {
        match self {
            Self::ContentTypeInvalid => "the body must be application/x-www-form-urlencoded",
            Self::BodyTooLarge => "the body is longer than Baton reads",
            Self::TokenMissing => "the form has no logout_token, or an empty one",
            Self::RequestMalformed => "the form is not one logout_token",
            Self::Malformed => {
                "the logout token is not a JWT Baton can read, or lacks iss or iat, or a claim has the wrong type or length"
            }
            Self::Unsigned => "the logout token is not signed (alg none)",
            Self::TypeInvalid => "the logout token's typ is neither logout+jwt nor JWT",
            Self::AlgorithmNotAllowed => "the logout token's algorithm is not one the issuer allows",
            Self::CritUnsupported => "the logout token marks a header parameter Baton does not understand as critical",
            Self::IssuerUntrusted => "the logout token's issuer is not one backchannel_logout.issuers names",
            Self::KeyUnknown => "no key of the issuer matches the logout token's kid",
            Self::SignatureInvalid => "the logout token's signature is invalid",
            Self::AudienceMismatch => "the logout token's aud does not contain backchannel_logout.client_id",
            Self::Stale => "the logout token's iat is older than backchannel_logout.max_age",
            Self::IssuedInFuture => "the logout token's iat is in the future",
            Self::Expired => "the logout token has expired",
            Self::EventMissing => "the logout token's events do not hold the back-channel logout event",
            Self::EventMalformed => "the logout token's events, or the back-channel logout event, is not a JSON object",
            Self::NoncePresent => "the logout token carries a nonce",
            Self::SubjectMissing => "the logout token names neither sub nor sid",
            Self::JtiMissing => "the logout token has no jti",
            Self::Replayed => "this logout token (its jti) was received before",
            Self::IssuerKeysUnavailable => "the issuer's signing keys could not be fetched",
            Self::ReplayMemoryFull => {
                "the replay memory is full: try again later, or raise backchannel_logout.max_replay_entries"
            }
            Self::RevocationStoreFull => "the revocation store is full: raise revocation.max_entries",
        }
    }
}

// === The request ===

/// The logout token of a `POST /backchannel-logout` body with this `Content-Type`: a form
/// (`application/x-www-form-urlencoded`) with exactly one non-empty `logout_token`.
pub fn read_request<'a>(content_type: Option<&str>, body: &'a [u8]) -> Result<std::borrow::Cow<'a, str>, Refusal> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(Refusal::ContentTypeInvalid);
    }
    if body.len() > MAX_REQUEST_BYTES {
        return Err(Refusal::BodyTooLarge);
    }
    let mut tokens = url::form_urlencoded::parse(body).filter(|(name, _)| name == "logout_token");
    match (tokens.next(), tokens.next()) {
        (None, _) => Err(Refusal::TokenMissing),
        (Some(_), Some(_)) => Err(Refusal::RequestMalformed),
        (Some((_, token)), None) if token.is_empty() => Err(Refusal::TokenMissing),
        (Some((_, token)), None) => Ok(token),
    }
}

// === The token ===

/// A verified logout token: whose session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logout {
    pub issuer: String,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    pub iat: i64,
}

impl Logout {
    /// What to revoke: the session (`sid`), the subject of this issuer (`sub`), or both.
    pub fn selectors(&self) -> Vec<Selector> {
        let mut selectors = Vec::with_capacity(2);
        if let Some(sid) = &self.sid {
            selectors.push(Selector::Session { sid: sid.clone() });
        }
        if let Some(sub) = &self.sub {
            selectors.push(Selector::Subject {
                issuer: Some(self.issuer.clone()),
                sub: sub.clone(),
            });
        }
        selectors
    }
}

/// Verify a logout token (section 2.6) at `now` (Unix seconds), with the keys of its issuer as
/// `verifier` holds them. Nothing is remembered here: the caller claims the `jti` (`Replays`).
pub async fn verify(
    settings: &Settings,
    verifier: Option<&Verifier>,
    token: &str,
    now: i64,
) -> Result<Logout, Refusal> {
    let header = crate::verify::jwt_header(token).ok_or(Refusal::Malformed)?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(Refusal::Unsigned);
    }
    match header.all.get("typ") {
        None => {}
        Some(Value::String(typ)) if is_logout_type(typ) => {}
        Some(_) => return Err(Refusal::TypeInvalid),
    }
    crate::jwt::check_crit(&header.all).map_err(jwt_refusal)?;
    let unverified = crate::jwt::Unverified::parse(token)
        .map_err(jwt_refusal)?
        .ok_or(Refusal::Malformed)?;
    let issuer = unverified.issuer().ok_or(Refusal::Malformed)?.to_owned();
    if !settings.issuers.contains(&issuer) {
        return Err(Refusal::IssuerUntrusted);
    }
    let verifier = verifier.ok_or(Refusal::IssuerUntrusted)?;
    let (alg, keys) = verifier
        .keys_for(&issuer, &header.alg, header.kid.as_deref())
        .await
        .map_err(|e| match e {
            KeysError::IssuerUntrusted => Refusal::IssuerUntrusted,
            KeysError::AlgorithmNotAllowed => Refusal::AlgorithmNotAllowed,
            KeysError::KeysUnavailable => Refusal::IssuerKeysUnavailable,
            KeysError::KeyUnknown => Refusal::KeyUnknown,
        })?;
    let mut last = Refusal::SignatureInvalid;
    for key in &keys {
        match decode(token, key, alg, &issuer, settings) {
            Ok(claims) => return check_claims(settings, issuer, &claims, now),
            Err(Refusal::SignatureInvalid) => last = Refusal::SignatureInvalid,
            Err(refusal) => return Err(refusal),
        }
    }
    Err(last)
}

/// `logout+jwt` (section 2.4), its media-type spelling, or a plain `JWT`.
fn is_logout_type(typ: &str) -> bool {
    let typ = typ.strip_prefix("application/").unwrap_or(typ);
    typ.eq_ignore_ascii_case("logout+jwt") || typ.eq_ignore_ascii_case("jwt")
}

fn jwt_refusal(e: crate::jwt::JwtError) -> Refusal {
    match e {
        crate::jwt::JwtError::CritUnsupported => Refusal::CritUnsupported,
        _ => Refusal::Malformed,
    }
}

/// The signature, `iss`, `aud` and (if present) `exp`, by jsonwebtoken.
fn decode(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
    issuer: &str,
    settings: &Settings,
) -> Result<Map<String, Value>, Refusal> {
    use jsonwebtoken::errors::ErrorKind;
    let mut validation = Validation::new(alg);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[settings.client_id.as_str()]);
    // `exp` is optional in a logout token (section 2.4); checked when present.
    validation.set_required_spec_claims(&["iss", "aud"]);
    jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Refusal::SignatureInvalid,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::ImmatureSignature => Refusal::IssuedInFuture,
            ErrorKind::InvalidAudience => Refusal::AudienceMismatch,
            ErrorKind::InvalidIssuer => Refusal::IssuerUntrusted,
            ErrorKind::InvalidAlgorithm => Refusal::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Refusal::AudienceMismatch,
            _ => Refusal::Malformed,
        })
}

/// The claims a signature does not vouch for being a logout: `iat`, the event, `nonce`, `sub`
/// and/or `sid`, `jti` (section 2.6, steps 4 to 8).
fn check_claims(settings: &Settings, issuer: String, claims: &Map<String, Value>, now: i64) -> Result<Logout, Refusal> {
    let iat = claims
        .get("iat")
        .ok_or(Refusal::Malformed)
        .and_then(|v| crate::jwt::numeric_date(v, "iat").map_err(|_| Refusal::Malformed))?
        .floor() as i64;
    let (max_age, leeway) = (settings.max_age.as_secs() as i64, settings.leeway.as_secs() as i64);
    if iat > now + leeway {
        return Err(Refusal::IssuedInFuture);
    }
    if iat < now - max_age - leeway {
        return Err(Refusal::Stale);
    }
    match claims.get("events") {
        None => return Err(Refusal::EventMissing),
        Some(Value::Object(events)) => match events.get(EVENT) {
            None => return Err(Refusal::EventMissing),
            Some(Value::Object(_)) => {}
            Some(_) => return Err(Refusal::EventMalformed),
        },
        Some(_) => return Err(Refusal::EventMalformed),
    }
    if claims.contains_key("nonce") {
        return Err(Refusal::NoncePresent);
    }
    let text = |name: &str| -> Result<Option<String>, Refusal> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_VALUE_LEN => Ok(Some(s.clone())),
            Some(_) => Err(Refusal::Malformed),
        }
    };
    let (sub, sid) = (text("sub")?, text("sid")?);
    if sub.is_none() && sid.is_none() {
        return Err(Refusal::SubjectMissing);
    }
    let jti = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_LEN => jti.clone(),
        Some(Value::String(jti)) if !jti.is_empty() => return Err(Refusal::Malformed),
        _ => return Err(Refusal::JtiMissing),
    };
    if issuer.len() > MAX_VALUE_LEN {
        return Err(Refusal::Malformed);
    }
    Ok(Logout {
        issuer,
        sub,
        sid,
        jti,
        iat,
    })
}

// === Replays ===

/// The `jti`s of the logout tokens acted on, per issuer, each until its token would be refused as
/// stale anyway; at most `max_replay_entries`. Kept as digests (32 bytes each, whatever a `jti`'s
/// length). Shared across reloads by whoever serves the endpoint.
#[derive(Debug, Default)]
pub struct Replays {
    /// digest(iss, jti) -> when it may be forgotten (Unix seconds).
    seen: Mutex<HashMap<[u8; 32], i64>>,
}

fn replay_key(issuer: &str, jti: &str) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(&(issuer.len() as u64).to_be_bytes());
    context.update(issuer.as_bytes());
    context.update(jti.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

impl Replays {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], i64>> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claim `logout`'s `jti` at `now`: refused if it was claimed before (a replay) or if the
    /// memory holds `max_replay_entries` live ones (nothing is evicted early: a forgotten `jti`
    /// could be replayed while its token is still fresh).
    pub fn claim(&self, settings: &Settings, logout: &Logout, now: i64) -> Result<(), Refusal> {
        let key = replay_key(&logout.issuer, &logout.jti);
        // A token is refused as stale after this, so its jti need not be kept longer.
        let forget_at = logout.iat + settings.max_age.as_secs() as i64 + settings.leeway.as_secs() as i64 + 1;
        let mut seen = self.lock();
        if seen.get(&key).is_some_and(|at| *at >= now) {
            return Err(Refusal::Replayed);
        }
        if seen.len() >= settings.max_replay_entries {
            seen.retain(|_, at| *at >= now);
            if seen.len() >= settings.max_replay_entries {
                return Err(Refusal::ReplayMemoryFull);
            }
        }
        seen.insert(key, forget_at);
        Ok(())
    }

    /// Give back a claim whose revocation failed, so the identity provider's retry is accepted.
    pub fn release(&self, logout: &Logout) {
        self.lock().remove(&replay_key(&logout.issuer, &logout.jti));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const IDP: &str = "https://idp.example";

    fn settings() -> Settings {
        Settings {
            client_id: "baton".into(),
            issuers: vec![IDP.into()],
            max_age: Duration::from_secs(120),
            leeway: Duration::from_secs(30),
            max_replay_entries: 2,
        }
    }

    fn claims(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    fn good() -> Value {
        serde_json::json!({
            "iss": IDP, "aud": "baton", "iat": NOW, "jti": "j-1", "sub": "alice", "sid": "s-1",
            "events": { EVENT: {} },
        })
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> Result<Logout, Refusal> {
        let mut c = claims(good());
        change(&mut c);
        check_claims(&settings(), IDP.into(), &c, NOW)
    }

    #[test]
    fn a_good_token_names_its_session_and_subject() {
        let logout = with(|_| {}).expect("good");
        assert_eq!(
            logout.selectors(),
            [
                Selector::Session { sid: "s-1".into() },
                Selector::Subject {
                    issuer: Some(IDP.into()),
                    sub: "alice".into()
                }
            ]
        );
        let only_sid = with(|c| {
            c.remove("sub");
        })
        .expect("sid alone");
        assert_eq!(only_sid.selectors(), [Selector::Session { sid: "s-1".into() }]);
    }

    #[test]
    fn every_claim_rule_has_its_refusal() {
        type Change = Box<dyn FnOnce(&mut Map<String, Value>)>;
        let rows: Vec<(&str, Change, Refusal)> = vec![
            (
                "stale",
                Box::new(|c| drop(c.insert("iat".into(), (NOW - 151).into()))),
                Refusal::Stale,
            ),
            (
                "future",
                Box::new(|c| drop(c.insert("iat".into(), (NOW + 31).into()))),
                Refusal::IssuedInFuture,
            ),
            ("no iat", Box::new(|c| drop(c.remove("iat"))), Refusal::Malformed),
            (
                "iat text",
                Box::new(|c| drop(c.insert("iat".into(), "now".into()))),
                Refusal::Malformed,
            ),
            (
                "no events",
                Box::new(|c| drop(c.remove("events"))),
                Refusal::EventMissing,
            ),
            (
                "events array",
                Box::new(|c| drop(c.insert("events".into(), serde_json::json!([EVENT])))),
                Refusal::EventMalformed,
            ),
            (
                "other event",
                Box::new(|c| drop(c.insert("events".into(), serde_json::json!({"x": {}})))),
                Refusal::EventMissing,
            ),
            (
                "event not an object",
                Box::new(|c| drop(c.insert("events".into(), serde_json::json!({EVENT: true})))),
                Refusal::EventMalformed,
            ),
            (
                "nonce",
                Box::new(|c| drop(c.insert("nonce".into(), "n".into()))),
                Refusal::NoncePresent,
            ),
            (
                "neither sub nor sid",
                Box::new(|c| {
                    c.remove("sub");
                    c.remove("sid");
                }),
                Refusal::SubjectMissing,
            ),
            (
                "sub a number",
                Box::new(|c| drop(c.insert("sub".into(), 7.into()))),
                Refusal::Malformed,
            ),
            (
                "sid too long",
                Box::new(|c| drop(c.insert("sid".into(), "s".repeat(MAX_VALUE_LEN + 1).into()))),
                Refusal::Malformed,
            ),
            ("no jti", Box::new(|c| drop(c.remove("jti"))), Refusal::JtiMissing),
            (
                "empty jti",
                Box::new(|c| drop(c.insert("jti".into(), "".into()))),
                Refusal::JtiMissing,
            ),
            (
                "jti a number",
                Box::new(|c| drop(c.insert("jti".into(), 1.into()))),
                Refusal::JtiMissing,
            ),
        ];
        for (what, change, refusal) in rows {
            assert_eq!(with(change), Err(refusal), "{what}");
        }
        assert!(
            with(|c| drop(c.insert("iat".into(), (NOW - 150).into()))).is_ok(),
            "max_age + leeway"
        );
    }

    #[test]
    fn a_jti_is_accepted_once_and_the_memory_is_bounded() {
        let (s, replays) = (settings(), Replays::new());
        let logout = |jti: &str, iat: i64| Logout {
            issuer: IDP.into(),
            sub: Some("alice".into()),
            sid: None,
            jti: jti.into(),
            iat,
        };
        replays.claim(&s, &logout("a", NOW), NOW).expect("first");
        assert_eq!(replays.claim(&s, &logout("a", NOW), NOW + 10), Err(Refusal::Replayed));
        let other_issuer = Logout {
            issuer: "https://other".into(),
            ..logout("a", NOW)
        };
        replays.claim(&s, &other_issuer, NOW).expect("another issuer's jti");
        assert_eq!(
            replays.claim(&s, &logout("b", NOW), NOW),
            Err(Refusal::ReplayMemoryFull),
            "full of live jtis: fail closed"
        );
        replays.release(&other_issuer);
        replays.claim(&s, &logout("b", NOW), NOW).expect("room again");
        // Past max_age + leeway the tokens are stale: their jtis may go.
        replays
            .claim(&s, &logout("c", NOW + 200), NOW + 200)
            .expect("expired ones forgotten");
        assert_eq!(replays.len(), 1);
    }

    #[test]
    fn the_request_is_one_form_field() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(read_request(form, b"logout_token=a.b.c").as_deref(), Ok("a.b.c"));
        assert_eq!(
            read_request(
                Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
                b"x=1&logout_token=t"
            )
            .as_deref(),
            Ok("t")
        );
        let big = vec![b'a'; MAX_REQUEST_BYTES + 1];
        for (content_type, body, refusal) in [
            (Some("application/json"), &b"{}"[..], Refusal::ContentTypeInvalid),
            (None, b"logout_token=t", Refusal::ContentTypeInvalid),
            (form, b"", Refusal::TokenMissing),
            (form, b"logout_token=", Refusal::TokenMissing),
            (form, b"token=t", Refusal::TokenMissing),
            (form, b"logout_token=a&logout_token=b", Refusal::RequestMalformed),
            (form, &big, Refusal::BodyTooLarge),
        ] {
            assert_eq!(read_request(content_type, body), Err(refusal), "{content_type:?}");
        }
    }

    #[test]
    fn typ_is_logout_jwt_or_jwt() {
        for ok in ["logout+jwt", "application/logout+jwt", "JWT", "jwt"] {
            assert!(is_logout_type(ok), "{ok}");
        }
        for bad in ["at+jwt", "secevent+jwt", "JOSE", ""] {
            assert!(!is_logout_type(bad), "{bad}");
        }
    }

    #[test]
    fn the_section_reports_every_error() {
        let raw = Raw {
            client_id: None,
            issuers: vec!["https://stranger".into()],
            max_age: Some("0s".into()),
            leeway: Some("1h".into()),
            max_replay_entries: Some(0),
        };
        let mut errors = Errors::default();
        assert!(raw.validate(&[IDP], &mut errors).is_none());
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "backchannel_logout.client_id",
                "backchannel_logout.issuers[0]",
                "backchannel_logout.max_age",
                "backchannel_logout.leeway",
                "backchannel_logout.max_replay_entries"
            ]
        );
        let raw = Raw {
            client_id: Some("baton".into()),
            issuers: vec![IDP.into()],
            ..Raw::default()
        };
        let mut errors = Errors::default();
        let s = raw.validate(&[IDP], &mut errors).expect("valid");
        assert!(errors.0.is_empty());
        assert_eq!(
            (s.max_age, s.leeway, s.max_replay_entries),
            (DEFAULT_MAX_AGE, DEFAULT_LEEWAY, 10_000)
        );
    }

    /// docs/operations.md lists every code the endpoint answers with, so an identity provider's
    /// operator can look each one up.
    #[test]
    fn every_code_is_in_the_operations_doc() {
        let operations = include_str!("../../../docs/operations.md");
        let missing: Vec<_> = Refusal::ALL
            .iter()
            .map(|r| r.code())
            .filter(|code| !operations.contains(&format!("`{code}`")))
            .collect();
        assert!(missing.is_empty(), "codes not in docs/operations.md: {missing:?}");
        let mut codes: Vec<_> = Refusal::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Refusal::ALL.len(), "codes are unique");
    }
}
