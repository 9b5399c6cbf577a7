//! Identity chaining across trust domains (draft-ietf-oauth-identity-chaining): a token service
//! with `profile: identity_chaining` is a foreign authorization server (AS-B) that trusts grants
//! from the home one (AS-A, the token service `identity_chaining.home` names). One exchange is two
//! steps: RFC 8693 at the home service for a JWT authorization grant whose audience is AS-B, then
//! that grant presented to AS-B with the RFC 7523 jwt-bearer grant for the destination's token.
//!
//! This module owns the grant cache (bounded, keyed on every
//! input of step 1 and the subject token's digest, never past the grant's expiry; concurrent
//! misses make one call) and the checks on the grant; the section is
//! `token_service::identity_chaining`'s. It never logs or reports a token, and never
//! judges the grant's signature: AS-B does, and Baton holds no AS-A key for it.

use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt as _;
use serde_json::Value;

use super::{ExchangeError, Issued, Target, TokenService};
use crate::cache::{CacheStatus, Key, digest, key, params_digest};
use crate::clock::unix_now;
use crate::oauth::TOKEN_TYPE_JWT;
use crate::secret::{Secret, fingerprint};
use crate::token_service::identity_chaining::Settings;
use baton_decide::reason::{Denial, Reason};

/// A grant is not served this close to its expiry: AS-B must still find it valid when it arrives.
pub const GRANT_EXPIRY_MARGIN: u64 = 10;

// === Errors ===

/// Which of the two steps failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Step 1: RFC 8693 at the home service for the grant.
    Grant,
    /// Step 2: the grant presented to the foreign service (RFC 7523 jwt-bearer).
    Assertion,
}

impl Step {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Assertion => "assertion",
        }
    }
}

/// Why an identity chaining exchange produced no token: the step, the token service asked, and
/// what went wrong there. Names the step, never a token.
#[derive(Debug, thiserror::Error)]
#[error("identity chaining, step {}: {kind}", self.step_label())]
pub struct ChainError {
    pub step: Step,
    pub service: String,
    pub kind: ChainErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ChainErrorKind {
    #[error("{0}")]
    Exchange(ExchangeError),
    /// The grant the home service issued is not one AS-B can take (step 1 only).
    #[error("the grant is unusable: {0}")]
    GrantInvalid(&'static str),
}

impl ChainError {
    fn step_label(&self) -> String {
        match self.step {
            Step::Grant => format!("1 (grant from token service `{}`)", self.service),
            Step::Assertion => format!("2 (assertion at token service `{}`)", self.service),
        }
    }
}

impl From<&ChainError> for Denial {
    fn from(e: &ChainError) -> Self {
        let label = e.step_label();
        match &e.kind {
            ChainErrorKind::GrantInvalid(why) => Denial::new(
                Reason::ChainingGrantInvalid,
                format!("identity chaining, step {label}: the grant is unusable: {why}"),
            ),
            ChainErrorKind::Exchange(inner) => {
                let denial = Denial::from(inner);
                let reason = match (e.step, inner) {
                    // Baton's own credentials keep their reason: a deployment problem at that service.
                    (_, ExchangeError::Refused { error, .. }) if error == "invalid_client" => denial.reason,
                    // The destination's scope or target at AS-B keep theirs too.
                    (Step::Assertion, ExchangeError::Refused { error, .. })
                        if matches!(error.as_str(), "invalid_scope" | "invalid_target") =>
                    {
                        denial.reason
                    }
                    (Step::Grant, ExchangeError::Refused { .. }) => Reason::ChainingGrantRefused,
                    (Step::Grant, ExchangeError::BadResponse(_) | ExchangeError::Status(_)) => {
                        Reason::ChainingGrantFailed
                    }
                    (Step::Assertion, ExchangeError::Refused { .. }) => Reason::ChainingAssertionRefused,
                    // Unreachable, timeout, busy, circuit open: the service's own reason (503).
                    _ => denial.reason,
                };
                Denial {
                    reason,
                    description: format!("identity chaining, step {label}: {}", denial.description).into(),
                    retry_after: denial.retry_after,
                }
            }
        }
    }
}

fn grant_error(home: &TokenService, kind: ChainErrorKind) -> Arc<ChainError> {
    Arc::new(ChainError {
        step: Step::Grant,
        service: home.name().to_owned(),
        kind,
    })
}

// === The two steps ===

/// A grant the home service issued, checked, until `expires_at` (Unix seconds), with whose it is
/// (the subject token's `iss`, `sub`, `sid`, read unverified) so a revocation can purge it.
#[derive(Debug)]
struct Grant {
    token: Secret,
    expires_at: u64,
    iss: Option<Box<str>>,
    sub: Option<Box<str>>,
    sid: Option<Box<str>>,
}

type Slot = Result<Arc<Grant>, Arc<ChainError>>;

/// The identity chaining of one foreign token service: its settings, the home service (wired by
/// `TokenServices::new`) and the grants it holds.
pub struct Chaining {
    settings: Settings,
    home: OnceLock<Arc<TokenService>>,
    /// Shared with the chaining this one replaced on a reload, when its settings are the same.
    grants: Arc<quick_cache::sync::Cache<Key, Slot>>,
}

impl std::fmt::Debug for Chaining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaining")
            .field("home", &self.settings.home)
            .field("grants", &self.grants.len())
            .finish()
    }
}

impl Chaining {
    pub fn new(settings: Settings) -> Self {
        let grants = Arc::new(quick_cache::sync::Cache::new(
            usize::try_from(settings.max_grants).unwrap_or(usize::MAX),
        ));
        Self {
            settings,
            home: OnceLock::new(),
            grants,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The name of the home token service.
    pub fn home_name(&self) -> &str {
        &self.settings.home
    }

    /// On a reload, keep the grants `previous` holds when the settings are the same (a grant's key
    /// holds the home service's name, URL and client, so a changed home service misses anyway).
    pub(crate) fn keep_grants_of(&mut self, previous: &Chaining) {
        if previous.settings == self.settings {
            self.grants = previous.grants.clone();
        }
    }

    /// Wire the home service (once; configuration validation saw that it exists).
    pub(crate) fn set_home(&self, home: Arc<TokenService>) {
        let _ = self.home.set(home);
    }

    /// Grants held, expired ones included until replaced or evicted.
    pub fn grants_held(&self) -> usize {
        self.grants.len()
    }

    /// Forget every grant whose subject `revoked` names (a scan, at revocation time); how many.
    pub fn purge(&self, revoked: impl Fn(&crate::revocation::Holder<'_>) -> bool) -> usize {
        let purged = std::sync::atomic::AtomicUsize::new(0);
        self.grants.retain(|_, slot| match slot {
            Ok(grant) => {
                let holder = crate::revocation::Holder {
                    iss: grant.iss.as_deref(),
                    sub: grant.sub.as_deref(),
                    sid: grant.sid.as_deref(),
                    iat: None,
                    claims: None,
                };
                let hit = revoked(&holder);
                if hit {
                    purged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                !hit
            }
            Err(_) => true,
        });
        purged.into_inner()
    }

    /// Both steps: the grant (cached), then the destination's token from `foreign` (AS-B).
    pub(crate) async fn exchange(
        &self,
        foreign: &TokenService,
        subject_token: &str,
        target: &Target,
    ) -> Result<Issued, ExchangeError> {
        let home = self.home.get().ok_or(ExchangeError::BadResponse(
            "identity chaining: the home token service is not configured",
        ))?;
        let (grant, status, key) = match self.grant(home, subject_token, target).await {
            Ok(found) => found,
            Err(e) => {
                step_event(Step::Grant, home.name(), None, Some(Denial::from(&*e).reason));
                return Err(ExchangeError::Chaining(Box::new(clone_error(&e))));
            }
        };
        step_event(Step::Grant, home.name(), Some(status), None);
        tracing::debug!(
            step = "grant",
            token_service = home.name(),
            cache = status.as_str(),
            grant = %fingerprint(grant.token.expose()),
            "identity chaining: grant ready"
        );
        let result = foreign.call(grant.token.expose(), target).await.map_err(|e| {
            ExchangeError::Chaining(Box::new(ChainError {
                step: Step::Assertion,
                service: foreign.name().to_owned(),
                kind: ChainErrorKind::Exchange(e),
            }))
        });
        match &result {
            Ok(_) => step_event(Step::Assertion, foreign.name(), None, None),
            Err(e) => {
                // AS-B refused this grant (expired by its clock, revoked at AS-A, ...): it is not
                // presented again; the next miss asks AS-A for a fresh one.
                if let ExchangeError::Chaining(chain) = e
                    && matches!(chain.kind, ChainErrorKind::Exchange(ExchangeError::Refused { .. }))
                {
                    self.grants
                        .remove_if(&key, |slot| slot.as_ref().is_ok_and(|g| Arc::ptr_eq(g, &grant)));
                }
                step_event(Step::Assertion, foreign.name(), None, Some(Denial::from(e).reason));
            }
        }
        result
    }

    /// The grant for this subject token and step-1 target: cached, or asked of `home` once for all
    /// concurrent callers. A failure reaches every waiter and is not kept.
    async fn grant(
        &self,
        home: &TokenService,
        subject_token: &str,
        target: &Target,
    ) -> Result<(Arc<Grant>, CacheStatus, Key), Arc<ChainError>> {
        let s = &self.settings;
        let actor = target.actor.as_ref().map(|(t, _)| hex(&digest(t.expose())));
        let params = params_digest(&[
            "identity_chaining.grant",
            home.name(),
            home.locator(),
            home.client_id(),
            &s.grant_audience,
            s.grant_resource.as_deref().unwrap_or(""),
            s.grant_scope.as_deref().unwrap_or(""),
            s.grant_issuer.as_deref().unwrap_or(""),
            target.subject_token_type,
            actor.as_deref().unwrap_or(""),
        ]);
        let key = key(&params, "", &digest(subject_token));
        let fresh = |g: &Grant| unix_now() < g.expires_at;
        if let Some(Ok(hit)) = self.grants.get(&key)
            && fresh(&hit)
        {
            return Ok((hit, CacheStatus::Hit, key));
        }
        loop {
            match self.grants.get_value_or_guard_async(&key).await {
                Ok(Ok(grant)) if fresh(&grant) => return Ok((grant, CacheStatus::Coalesced, key)),
                Ok(Ok(stale)) => {
                    self.grants
                        .remove_if(&key, |slot| slot.as_ref().is_ok_and(|g| Arc::ptr_eq(g, &stale)));
                }
                Ok(Err(failure)) => return Err(failure),
                Err(guard) => {
                    let slot: Slot = self.ask(home, subject_token, target).await;
                    let _ = guard.insert(slot.clone());
                    // The waiters have it; keep only a grant that may be used again.
                    if !slot.as_ref().is_ok_and(|g| fresh(g)) {
                        self.grants.remove_if(&key, |held| match (held, &slot) {
                            (Ok(a), Ok(b)) => Arc::ptr_eq(a, b),
                            (Err(a), Err(b)) => Arc::ptr_eq(a, b),
                            _ => false,
                        });
                    }
                    return slot.map(|g| (g, CacheStatus::Miss, key));
                }
            }
        }
    }

    /// Step 1, uncached: RFC 8693 at the home service, then the checks on the grant.
    async fn ask(&self, home: &TokenService, subject_token: &str, target: &Target) -> Slot {
        let s = &self.settings;
        let grant_target = Target {
            audience: Some(s.grant_audience.clone()),
            resource: s.grant_resource.clone(),
            scope: s.grant_scope.clone(),
            requested_token_type: Some(TOKEN_TYPE_JWT.to_owned()),
            subject_token_type: target.subject_token_type,
            actor: target.actor.clone(),
        };
        // `call`, not `exchange`: the home service speaks plain RFC 8693 (validation saw to it).
        let issued = home
            .call(subject_token, &grant_target)
            .await
            .map_err(|e| grant_error(home, ChainErrorKind::Exchange(e)))?;
        let now = unix_now();
        let expires_at = check_grant(&issued, s, subject_token, target, now)
            .map_err(|why| grant_error(home, ChainErrorKind::GrantInvalid(why)))?;
        let subject = crate::jwt::Unverified::read(subject_token).unwrap_or_default();
        let text = |v: &Option<Value>| {
            v.as_ref()
                .and_then(Value::as_str)
                .filter(|t| t.len() <= crate::jwt::MAX_CLAIM_LEN)
                .map(Box::from)
        };
        Ok(Arc::new(Grant {
            token: issued.access_token,
            expires_at,
            iss: text(&subject.iss),
            sub: text(&subject.sub),
            sid: text(&subject.sid),
        }))
    }
}

/// The checks on a grant before it is sent to AS-B or kept: a JWT (the draft's JWT authorization
/// grant), not the subject token, for AS-B's audience, from the expected issuer, with an `exp`
/// still ahead. When it stops being used (Unix seconds): its `exp`, `expires_in` and the subject
/// token's `exp` (when it is a JWT), the earliest, less the margin.
fn check_grant(
    issued: &Issued,
    settings: &Settings,
    subject_token: &str,
    target: &Target,
    now: u64,
) -> Result<u64, &'static str> {
    let token = issued.access_token.expose();
    if issued.issued_token_type.as_deref().is_some_and(|t| t != TOKEN_TYPE_JWT) {
        return Err("the home token service did not issue a JWT (issued_token_type)");
    }
    if token == subject_token || target.actor.as_ref().is_some_and(|(a, _)| a.expose() == token) {
        return Err("the home token service answered with the subject (or actor) token");
    }
    let claims = match crate::jwt::Unverified::parse(token) {
        Ok(Some(claims)) => claims,
        Ok(None) => return Err("it is not a JWT"),
        Err(_) => return Err("it breaks a JWT rule"),
    };
    let audience_ok = match &claims.aud {
        Some(Value::String(one)) => *one == settings.grant_audience,
        Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(&settings.grant_audience)),
        _ => false,
    };
    if !audience_ok {
        return Err("its aud does not name the foreign authorization server (grant_audience)");
    }
    if let Some(issuer) = &settings.grant_issuer
        && claims.issuer() != Some(issuer.as_str())
    {
        return Err("its iss is not grant_issuer");
    }
    let Some(exp) = claims.exp() else {
        return Err("it has no exp");
    };
    let exp = u64::try_from(exp).unwrap_or(0);
    if exp <= now {
        return Err("it has expired");
    }
    let mut until = exp;
    if let Some(lifetime) = issued.expires_in {
        until = until.min(now.saturating_add(lifetime));
    }
    if let Some(subject_exp) = crate::jwt::unverified_exp(subject_token) {
        until = until.min(u64::try_from(subject_exp).unwrap_or(0));
    }
    // A grant with less than the margin left is used once and not kept.
    Ok(until.saturating_sub(GRANT_EXPIRY_MARGIN).max(now.min(until)))
}

/// A span event on the current span (the exchange's client span): which step, at which token
/// service, the grant's cache status, and the reason when it failed.
fn step_event(step: Step, service: &str, cache: Option<CacheStatus>, failed: Option<Reason>) {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    let mut attributes = vec![
        KeyValue::new("baton.chaining.step", step.as_str()),
        KeyValue::new("baton.token_service", service.to_owned()),
        KeyValue::new("baton.chaining.outcome", failed.map_or("ok", Reason::as_str)),
    ];
    if let Some(cache) = cache {
        attributes.push(KeyValue::new("baton.cache", cache.as_str()));
    }
    span.add_event(format!("baton.chaining.{}", step.as_str()), attributes);
}

/// A waiter's copy of the leader's failure (`ExchangeError` is not `Clone`): the same step,
/// service, reason and retry hint.
fn clone_error(e: &ChainError) -> ChainError {
    let kind = match &e.kind {
        ChainErrorKind::GrantInvalid(why) => ChainErrorKind::GrantInvalid(why),
        ChainErrorKind::Exchange(inner) => ChainErrorKind::Exchange(inner.duplicate()),
    };
    ChainError {
        step: e.step,
        service: e.service.clone(),
        kind,
    }
}

fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const AS_B: &str = "https://as-b.example";

    fn jwt(claims: &Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.c2ln",
            enc(&serde_json::json!({"alg": "ES256", "typ": "JWT"})),
            enc(claims)
        )
    }

    fn settings() -> Settings {
        Settings {
            home: "home".into(),
            grant_audience: AS_B.into(),
            grant_resource: None,
            grant_scope: None,
            grant_issuer: Some("https://as-a.example".into()),
            max_grants: 10,
        }
    }

    fn issued(token: String, token_type: Option<&str>, expires_in: Option<u64>) -> Issued {
        Issued {
            access_token: Secret::new(token),
            issued_token_type: token_type.map(str::to_owned),
            token_type: "N_A".into(),
            expires_in,
            scope: None,
        }
    }

    fn target() -> Target {
        Target {
            audience: Some("https://orders.example".into()),
            resource: None,
            scope: None,
            requested_token_type: None,
            subject_token_type: crate::oauth::TOKEN_TYPE_ACCESS_TOKEN,
            actor: None,
        }
    }

    #[test]
    fn a_grant_for_as_b_from_as_a_is_kept_until_shortly_before_it_expires() {
        let now = 1_000_000;
        let grant =
            jwt(&serde_json::json!({"iss": "https://as-a.example", "aud": AS_B, "exp": now + 300, "sub": "alice"}));
        let subject = jwt(&serde_json::json!({"exp": now + 100}));
        let until = check_grant(
            &issued(grant.clone(), Some(TOKEN_TYPE_JWT), Some(600)),
            &settings(),
            &subject,
            &target(),
            now,
        );
        assert_eq!(
            until,
            Ok(now + 100 - GRANT_EXPIRY_MARGIN),
            "capped by the subject token's exp"
        );
        let until = check_grant(
            &issued(grant.clone(), None, Some(60)),
            &settings(),
            "opaque",
            &target(),
            now,
        );
        assert_eq!(until, Ok(now + 60 - GRANT_EXPIRY_MARGIN), "capped by expires_in");
        // Less than the margin left: used once, not kept.
        let short = jwt(&serde_json::json!({"iss": "https://as-a.example", "aud": [AS_B, "x"], "exp": now + 5}));
        assert_eq!(
            check_grant(&issued(short, None, None), &settings(), "opaque", &target(), now),
            Ok(now)
        );
    }

    #[test]
    fn a_grant_as_b_cannot_take_is_refused() {
        let now = 1_000_000;
        let good = serde_json::json!({"iss": "https://as-a.example", "aud": AS_B, "exp": now + 300});
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            match v {
                Value::Null => {
                    c.as_object_mut().expect("object").remove(k);
                }
                v => c[k] = v,
            }
            jwt(&c)
        };
        let cases = [
            (
                issued(with("aud", "https://elsewhere.example".into()), None, None),
                "aud",
            ),
            (issued(with("aud", Value::Null), None, None), "aud"),
            (issued(with("iss", "https://rogue.example".into()), None, None), "iss"),
            (issued(with("exp", (now - 1).into()), None, None), "expired"),
            (issued(with("exp", Value::Null), None, None), "no exp"),
            (issued(with("exp", "soon".into()), None, None), "JWT rule"),
            (issued("opaque-grant".into(), None, None), "not a JWT"),
            (
                issued(jwt(&good), Some(crate::oauth::TOKEN_TYPE_ACCESS_TOKEN), None),
                "issued_token_type",
            ),
            (issued("the-subject".into(), None, None), "subject"),
        ];
        for (issued, why) in cases {
            let err = check_grant(&issued, &settings(), "the-subject", &target(), now).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn each_step_reports_its_own_reason_and_names_itself() {
        let denial = |step, kind| {
            Denial::from(&ChainError {
                step,
                service: "as-x".into(),
                kind,
            })
        };
        let refused = |error: &str| {
            ChainErrorKind::Exchange(ExchangeError::Refused {
                status: 400,
                error: error.into(),
            })
        };
        let d = denial(Step::Grant, refused("invalid_grant"));
        assert_eq!(d.reason, Reason::ChainingGrantRefused);
        assert!(
            d.description.contains("step 1 (grant from token service `as-x`)"),
            "{d}"
        );
        assert_eq!(
            denial(
                Step::Grant,
                ChainErrorKind::Exchange(ExchangeError::BadResponse("no access_token"))
            )
            .reason,
            Reason::ChainingGrantFailed
        );
        assert_eq!(
            denial(Step::Grant, ChainErrorKind::GrantInvalid("it has expired")).reason,
            Reason::ChainingGrantInvalid
        );
        let d = denial(Step::Assertion, refused("invalid_grant"));
        assert_eq!(d.reason, Reason::ChainingAssertionRefused);
        assert!(
            d.description.contains("step 2 (assertion at token service `as-x`)"),
            "{d}"
        );
        assert_eq!(
            denial(Step::Assertion, refused("invalid_scope")).reason,
            Reason::ScopeRefused
        );
        assert_eq!(
            denial(Step::Grant, refused("invalid_client")).reason,
            Reason::TokenServiceClientRejected
        );
        let d = denial(
            Step::Grant,
            ChainErrorKind::Exchange(ExchangeError::Unreachable("connection refused".into())),
        );
        assert_eq!(d.reason, Reason::TokenServiceUnavailable);
        assert!(d.description.contains("step 1"), "{d}");
        let d = denial(
            Step::Assertion,
            ChainErrorKind::Exchange(ExchangeError::CircuitOpen(std::time::Duration::from_secs(2))),
        );
        assert_eq!((d.reason, d.retry_after), (Reason::TokenServiceCircuitOpen, Some(2)));
    }

    #[test]
    fn a_revocation_purges_the_grants_of_the_subjects_it_names() {
        let chaining = Chaining::new(settings());
        for (i, sub) in ["alice", "bob"].into_iter().enumerate() {
            let grant = Grant {
                token: Secret::new(format!("grant-{sub}")),
                expires_at: u64::MAX,
                iss: Some("https://as-a.example".into()),
                sub: Some(sub.into()),
                sid: None,
            };
            chaining.grants.insert([i as u8; 32], Ok(Arc::new(grant)));
        }
        assert_eq!(chaining.purge(|h| h.sub == Some("alice")), 1);
        assert_eq!(chaining.grants_held(), 1);
        assert_eq!(chaining.purge(|_| true), 1);
        assert_eq!(chaining.grants_held(), 0);
    }

    #[test]
    fn a_reload_keeps_the_grants_only_under_the_same_settings() {
        let before = Chaining::new(settings());
        let grant = Grant {
            token: Secret::new("grant"),
            expires_at: u64::MAX,
            iss: None,
            sub: None,
            sid: None,
        };
        before.grants.insert([0; 32], Ok(Arc::new(grant)));
        let mut same = Chaining::new(settings());
        same.keep_grants_of(&before);
        assert_eq!(same.grants_held(), 1);
        let mut changed = Chaining::new(Settings {
            grant_audience: "https://as-c.example".into(),
            ..settings()
        });
        changed.keep_grants_of(&before);
        assert_eq!(changed.grants_held(), 0);
    }

    /// A home token endpoint stand-in on loopback (a real one is in `tests/identity_chaining.rs`):
    /// counts the connections it accepts and answers each with `status` and `body` after `delay`.
    async fn home_endpoint(
        status: u16,
        body: String,
    ) -> (
        Arc<TokenService>,
        Arc<std::sync::atomic::AtomicU64>,
        tokio::task::JoinHandle<()>,
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 8192];
                    let _ = socket.read(&mut request).await;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        let raw = crate::files::parse_yaml(&format!(
            "  token_endpoint: http://127.0.0.1:{port}/token\n  client_id: c\n  auth:\n    method: none\n  retries: 0\n"
        ))
        .expect("yaml");
        let mut errors = baton_decide::settings::Errors::default();
        let checked = crate::token_service::validate(Some(raw), Default::default(), &mut errors);
        assert!(errors.0.is_empty(), "{errors:?}");
        let config = checked.valid().and_then(|s| s.into_iter().next()).expect("config");
        (Arc::new(TokenService::new(&config).expect("service")), accepted, server)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_grant_misses_make_one_call_and_a_failure_is_shared_not_kept() {
        let now = unix_now();
        let grant = jwt(&serde_json::json!({"iss": "https://as-a.example", "aud": AS_B, "exp": now + 300}));
        let body = format!(
            r#"{{"access_token":"{grant}","issued_token_type":"{TOKEN_TYPE_JWT}","token_type":"N_A","expires_in":300}}"#
        );
        let (home, calls, server) = home_endpoint(200, body).await;
        let chaining = Arc::new(Chaining::new(settings()));
        let ask = |subject: &'static str| {
            let (chaining, home) = (chaining.clone(), home.clone());
            tokio::spawn(async move {
                chaining
                    .grant(&home, subject, &target())
                    .await
                    .map(|(_, status, _)| status)
            })
        };
        let statuses: Vec<CacheStatus> = futures_util::future::join_all((0..16).map(|_| ask("alice")))
            .await
            .into_iter()
            .map(|r| r.expect("task").expect("grant"))
            .collect();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == CacheStatus::Miss).count(), 1);
        assert!(statuses.contains(&CacheStatus::Coalesced), "{statuses:?}");
        assert_eq!(ask("alice").await.expect("task").expect("grant"), CacheStatus::Hit);
        assert_eq!(ask("bob").await.expect("task").expect("grant"), CacheStatus::Miss);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "another subject, another grant"
        );
        server.abort();

        let (home, calls, server) = home_endpoint(400, r#"{"error":"invalid_grant"}"#.into()).await;
        let chaining = Arc::new(Chaining::new(settings()));
        let ask = |subject: &'static str| {
            let (chaining, home) = (chaining.clone(), home.clone());
            tokio::spawn(async move { chaining.grant(&home, subject, &target()).await.map(|_| ()) })
        };
        for refused in futures_util::future::join_all((0..8).map(|_| ask("alice"))).await {
            let e = refused.expect("task").expect_err("refused");
            assert_eq!(Denial::from(&*e).reason, Reason::ChainingGrantRefused);
        }
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one call for all waiters"
        );
        assert!(ask("alice").await.expect("task").is_err());
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "a failure is not kept"
        );
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grant_the_foreign_server_refused_is_not_presented_again() {
        let now = unix_now();
        let grant = jwt(&serde_json::json!({"iss": "https://as-a.example", "aud": AS_B, "exp": now + 300}));
        let body = format!(r#"{{"access_token":"{grant}","token_type":"N_A","expires_in":300}}"#);
        let (home, home_calls, home_server) = home_endpoint(200, body).await;
        let (foreign, foreign_calls, foreign_server) = home_endpoint(400, r#"{"error":"invalid_grant"}"#.into()).await;
        let chaining = Chaining::new(settings());
        chaining.set_home(home);
        for _ in 0..2 {
            let e = chaining
                .exchange(&foreign, "alice", &target())
                .await
                .expect_err("refused");
            assert_eq!(Denial::from(&e).reason, Reason::ChainingAssertionRefused);
        }
        let calls = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            (calls(&home_calls), calls(&foreign_calls)),
            (2, 2),
            "a fresh grant each time"
        );
        home_server.abort();
        foreign_server.abort();
    }

    fn config(services: &str) -> Result<crate::config::Config, baton_decide::settings::ConfigError> {
        crate::config::Config::from_yaml(&format!(
            "token_services:\n{services}\ndestinations:\n  - {{name: partner, hosts: [partner], audience: 'https://api.b.example', token_service: b}}\n"
        ))
    }

    #[test]
    fn the_profile_names_a_home_service_and_the_grant_audience() {
        let valid = config(
            "  a: {token_endpoint: 'http://as-a/token', client_id: c, auth: {method: none}}\n  b: {issuer: 'https://as-b.example', client_id: c, auth: {method: none}, profile: identity_chaining, identity_chaining: {home: a}}\n",
        )
        .expect("valid");
        let b = valid.token_services.iter().find(|t| t.name == "b").expect("b");
        let chaining = b.chaining.as_ref().expect("chaining");
        assert_eq!((chaining.home.as_str(), chaining.grant_audience.as_str()), ("a", AS_B));

        for (services, path, why) in [
            (
                "  b: {token_endpoint: 'http://as-b/token', client_id: c, auth: {method: none}, profile: identity_chaining}\n",
                "token_services.b.identity_chaining",
                "is required",
            ),
            (
                "  b: {token_endpoint: 'http://as-b/token', client_id: c, auth: {method: none}, profile: identity_chaining, identity_chaining: {home: a}}\n",
                "token_services.b.identity_chaining.grant_audience",
                "is required",
            ),
            (
                "  b: {token_endpoint: 'http://as-b/token', client_id: c, auth: {method: none}, profile: identity_chaining, identity_chaining: {home: nowhere, grant_audience: x}}\n",
                "token_services.b.identity_chaining.home",
                "not a configured token service",
            ),
            (
                "  b: {token_endpoint: 'http://as-b/token', client_id: c, auth: {method: none}, profile: identity_chaining, identity_chaining: {home: b, grant_audience: x}}\n",
                "token_services.b.identity_chaining.home",
                "another token service",
            ),
            (
                "  a: {token_endpoint: 'http://as-a/token', client_id: c, auth: {method: none}, profile: entra_obo}\n  b: {token_endpoint: 'http://as-b/token', client_id: c, auth: {method: none}, profile: identity_chaining, identity_chaining: {home: a, grant_audience: x}}\n",
                "token_services.b.identity_chaining.home",
                "rfc8693",
            ),
            (
                "  a: {token_endpoint: 'http://as-a/token', client_id: c, auth: {method: none}}\n  b: {token_endpoint: 'http://as-b/token', client_id: c, auth: {method: none}, profile: identity_chaining, identity_chaining: {home: a, grant_audience: x, grant_resource: 'urn:x#frag'}}\n",
                "token_services.b.identity_chaining.grant_resource",
                "without a fragment",
            ),
            (
                "  b: {token_endpoint: 'http://as-b/token', client_id: c, auth: {method: none}, identity_chaining: {home: a}}\n",
                "token_services.b.identity_chaining",
                "applies only",
            ),
        ] {
            let err = config(services).expect_err(path).to_string();
            assert!(err.contains(path) && err.contains(why), "{path}: {err}");
        }
    }
}
