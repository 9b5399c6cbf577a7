//! Revocation: the subjects (`iss`, `sub`) and sessions (`sid`) whose authority ended, each with
//! when, remembered for `revocation.remember` so a token issued before then is refused
//! (`subject_revoked`) instead of exchanged again; the `revocation:` section; the operator's
//! request (`POST /revoke`) read into a `Selector`. It owns no cache: `authz::Authz::revoke` purges
//! those. It never holds a token or the admin secret in anything it reports.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::files::read_secret;
use crate::secret::Secret;
use baton_decide::settings::{Errors, duration};

// === The `revocation:` section ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    /// How long a revocation is remembered (default 24h): longer than any subject token it covers lives.
    pub remember: Option<String>,
    /// How many revocations are remembered at most (default 10000).
    pub max_entries: Option<usize>,
    /// A file holding the bearer secret of `POST /revoke` on the admin listener; absent: the
    /// endpoint is off (404).
    pub admin_secret_file: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Settings {
    pub remember: Duration,
    pub max_entries: usize,
    /// `None`: no operator endpoint.
    pub admin_secret: Option<Secret>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            remember: DEFAULT_REMEMBER,
            max_entries: DEFAULT_MAX_ENTRIES,
            admin_secret: None,
        }
    }
}

const DEFAULT_REMEMBER: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// Past this, one entry per subject would be a memory problem rather than a bound.
const MAX_MAX_ENTRIES: usize = 10_000_000;

impl Raw {
    /// The `revocation:` section, its problems added to `errors`.
    pub(crate) fn validate(self, errors: &mut Errors) -> Settings {
        let remember = duration(
            self.remember.as_deref(),
            "revocation.remember",
            DEFAULT_REMEMBER,
            errors,
        );
        if remember.is_zero() {
            errors.add("revocation.remember", "must be longer than 0s");
        }
        let max_entries = self.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
        if max_entries == 0 || max_entries > MAX_MAX_ENTRIES {
            errors.add(
                "revocation.max_entries",
                format!("must be between 1 and {MAX_MAX_ENTRIES}"),
            );
        }
        let admin_secret = self
            .admin_secret_file
            .as_deref()
            .and_then(|path| read_secret(path, "revocation.admin_secret_file", errors));
        Settings {
            remember,
            max_entries,
            admin_secret,
        }
    }
}

impl Settings {
    /// Does `presented` (the request's `Authorization` value) carry the admin secret?
    pub fn admits(&self, presented: Option<&str>) -> bool {
        self.admin_secret.as_ref().is_some_and(|s| s.admits_bearer(presented))
    }
}

// === What a revocation names ===

/// Whose authority a revocation ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// A subject; without an issuer, that `sub` from every issuer.
    Subject { issuer: Option<String>, sub: String },
    /// One session (`sid`), whoever its subject.
    Session { sid: String },
    /// Every token issued until now.
    All,
    /// Every delegated token cached for one destination: a purge, nothing remembered, no user's
    /// authority ends (their next request there is exchanged again).
    Destination { name: String },
    /// The one cached token that served a request the destination answered with a 401
    /// `invalid_token` (ext_proc): a purge of that entry, nothing remembered.
    Served { destination: String },
    /// One deferred job's grants (`deferred`), whoever its user: refused at Redeem (`job_revoked`).
    Job { job: String },
    /// A user by e-mail address (a Shared Signals `email` subject), matched against the verified
    /// `email` claim, ASCII case-insensitively; held lower-cased.
    Email { email: String },
}

impl Selector {
    /// Low-cardinality, for metrics and the audit record.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Subject { .. } => "subject",
            Self::Session { .. } => "session",
            Self::All => "all",
            Self::Destination { .. } => "destination",
            Self::Served { .. } => "served",
            Self::Job { .. } => "job",
            Self::Email { .. } => "email",
        }
    }

    /// Is it remembered, so a later request is refused (`subject_revoked`)? Only what names
    /// whose authority ends; a destination's purges are not.
    pub fn is_remembered(&self) -> bool {
        match self {
            Self::Subject { .. } | Self::Session { .. } | Self::All | Self::Job { .. } | Self::Email { .. } => true,
            Self::Destination { .. } | Self::Served { .. } => false,
        }
    }

    /// Does it name the holder of a token with these claims?
    fn names(&self, holder: &Holder<'_>) -> bool {
        match self {
            Self::Subject { issuer, sub } => {
                holder.sub == Some(sub.as_str())
                    && (issuer.is_none() || holder.iss.is_none() || issuer.as_deref() == holder.iss)
            }
            Self::Session { sid } => holder.sid == Some(sid.as_str()),
            Self::All => true,
            Self::Destination { .. } | Self::Served { .. } => false,
            // Baton caches nothing for a job (Redeem exchanges every time): no entry to purge.
            Self::Job { .. } => false,
            Self::Email { email } => holder.email().is_some_and(|e| e.eq_ignore_ascii_case(email)),
        }
    }
}

/// The longest request body `POST /revoke` reads.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// The longest issuer, subject or session id a revocation may name: what a cached entry keeps of
/// its subject (longer claims are not kept), so every one a revocation can name can be purged.
const MAX_VALUE_LEN: usize = crate::jwt::MAX_CLAIM_LEN;

/// Why a revocation request was refused; `code` is the stable wire name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> RequestError {
    RequestError {
        code,
        message: message.into(),
    }
}

/// The body of `POST /revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    issuer: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    all: Option<bool>,
    destination: Option<String>,
    job: Option<String>,
    email: Option<String>,
}

impl Selector {
    /// `{"issuer":..,"sub":..}` (issuer optional), `{"sid":..}`, `{"all":true}` or
    /// `{"destination":..}`: exactly one.
    pub fn from_json(body: &[u8]) -> Result<Self, RequestError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(refuse(
                "body_too_large",
                format!("the body is longer than {MAX_REQUEST_BYTES} bytes"),
            ));
        }
        let raw: RawRequest = serde_json::from_slice(body)
            .map_err(|e| refuse("malformed_body", format!("the body is not a revocation request: {e}")))?;
        for (name, value) in [
            ("issuer", &raw.issuer),
            ("sub", &raw.sub),
            ("sid", &raw.sid),
            ("destination", &raw.destination),
            ("job", &raw.job),
            ("email", &raw.email),
        ] {
            match value {
                Some(v) if v.is_empty() => return Err(refuse("empty_value", format!("`{name}` is empty"))),
                Some(v) if v.len() > MAX_VALUE_LEN => {
                    return Err(refuse(
                        "value_too_long",
                        format!("`{name}` is longer than {MAX_VALUE_LEN} bytes"),
                    ));
                }
                _ => {}
            }
        }
        let named = [
            raw.sub.is_some(),
            raw.sid.is_some(),
            raw.all.is_some(),
            raw.destination.is_some(),
            raw.job.is_some(),
            raw.email.is_some(),
        ];
        if named.iter().filter(|n| **n).count() > 1 {
            return Err(refuse(
                "ambiguous_selector",
                "name one of `sub` (with an optional `issuer`), `sid`, `job`, `email`, `all` or `destination`",
            ));
        }
        if let Some(name) = raw.destination {
            if raw.issuer.is_some() {
                return Err(refuse("issuer_without_sub", "`issuer` needs a `sub`"));
            }
            return Ok(Self::Destination { name });
        }
        if let Some(job) = raw.job {
            // A deferred job's id is of this alphabet (`deferred`): anything else names no grant.
            if !job
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(refuse("malformed_job", "`job` is a job id: A-Z a-z 0-9 . _ -"));
            }
            return match raw.issuer {
                None => Ok(Self::Job { job }),
                Some(_) => Err(refuse("issuer_without_sub", "`issuer` needs a `sub`")),
            };
        }
        if let Some(email) = raw.email {
            // An addr-spec's shape only (RFC 5322 is looser): one `@` between two non-empty
            // parts, printable ASCII, no space. Matched case-insensitively, held lower-cased.
            let parts = email.split_once('@');
            let printable = email.bytes().all(|b| b.is_ascii_graphic());
            if !printable || !parts.is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@')) {
                return Err(refuse("malformed_email", "`email` is an e-mail address: local@domain"));
            }
            return match raw.issuer {
                None => Ok(Self::Email {
                    email: email.to_ascii_lowercase(),
                }),
                Some(_) => Err(refuse("issuer_without_sub", "`issuer` needs a `sub`")),
            };
        }
        match (raw.issuer, raw.sub, raw.sid, raw.all) {
            (issuer, Some(sub), None, None) => Ok(Self::Subject { issuer, sub }),
            (None, None, Some(sid), None) => Ok(Self::Session { sid }),
            (None, None, None, Some(true)) => Ok(Self::All),
            (None, None, None, Some(false)) => Err(refuse("malformed_body", "`all` must be true")),
            (Some(_), None, _, _) => Err(refuse("issuer_without_sub", "`issuer` needs a `sub`")),
            _ => Err(refuse(
                "no_selector",
                "name one of `sub` (with an optional `issuer`), `sid` or `all`",
            )),
        }
    }
}

// === The store ===

/// Who a subject token speaks for, as a revocation matches it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Holder<'a> {
    pub iss: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub sid: Option<&'a str>,
    /// When the token was issued (Unix seconds); `None`: unknown, so older than any revocation.
    pub iat: Option<i64>,
    /// The verified claims, read only when an e-mail revocation is held (`email`), so a decision
    /// pays nothing for it otherwise.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl<'a> Holder<'a> {
    /// From claims (verified, introspected, or a JWT payload decoded unverified).
    pub fn of_claims(claims: &'a serde_json::Map<String, serde_json::Value>) -> Self {
        let text = |name: &str| claims.get(name).and_then(serde_json::Value::as_str);
        Self {
            iss: text("iss"),
            sub: text("sub"),
            sid: text("sid"),
            iat: claims
                .get("iat")
                .and_then(|v| crate::jwt::numeric_date(v, "iat").ok())
                .map(|v| v.floor() as i64),
            claims: Some(claims),
        }
    }

    /// The verified `email` claim, if the holder came from claims.
    pub fn email(&self) -> Option<&'a str> {
        self.claims?.get("email")?.as_str()
    }
}

/// Why a revocation was not remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `max_entries` revocations are remembered: refused, nothing purged (fail closed means the
    /// operator learns it; `{"all": true}` always fits, and replaces every older entry).
    #[error("the revocation store is full ({0} entries): revoke all, or raise revocation.max_entries")]
    Full(usize),
}

/// The revocations remembered, bounded by `max_entries`, each for `remember`. `is_empty` is one
/// atomic load: what every decision pays while nothing is revoked.
#[derive(Debug)]
pub struct Store {
    /// Entries held (`all` counts as one); 0 lets a decision skip the lock.
    held: AtomicUsize,
    inner: RwLock<Inner>,
    /// Seconds; both set again by a reload (`configure`), which keeps the store itself.
    remember: AtomicU64,
    max_entries: AtomicUsize,
    /// Bumped on every revocation, purge and reload (`bump`): what an in-proxy filter polls to
    /// drop its own cache (`generation`).
    generation: AtomicU64,
}

/// The issuers a `sub` is revoked for (`None`: every issuer), each with when.
type Issuers = Vec<(Option<Box<str>>, u64)>;

#[derive(Debug, Default, Clone)]
struct Inner {
    /// sub -> (issuer, or `None` for every issuer; when): looked up by the borrowed `sub`, no
    /// allocation on a decision.
    subjects: HashMap<Box<str>, Issuers, Hasher>,
    subject_entries: usize,
    sessions: HashMap<Box<str>, u64, Hasher>,
    all: Option<u64>,
    /// Deferred jobs whose grants are refused (`Selector::Job`), each with when.
    jobs: HashMap<Box<str>, u64, Hasher>,
    /// Lower-cased e-mail address -> when; looked at only when not empty.
    emails: HashMap<Box<str>, u64, Hasher>,
}

/// The caches' hasher: a lookup on a decision costs less than with SipHash.
type Hasher = quick_cache::DefaultHashBuilder;

impl Inner {
    fn len(&self) -> usize {
        self.subject_entries
            + self.sessions.len()
            + usize::from(self.all.is_some())
            + self.jobs.len()
            + self.emails.len()
    }

    /// Forget what was revoked before `since`.
    fn forget_before(&mut self, since: u64) {
        self.subjects.retain(|_, issuers| {
            issuers.retain(|(_, at)| *at >= since);
            !issuers.is_empty()
        });
        self.subject_entries = self.subjects.values().map(Vec::len).sum();
        self.sessions.retain(|_, at| *at >= since);
        self.emails.retain(|_, at| *at >= since);
        self.all = self.all.filter(|at| *at >= since);
        self.jobs.retain(|_, at| *at >= since);
    }
}

impl Store {
    pub fn new(settings: &Settings) -> Self {
        Self {
            held: AtomicUsize::new(0),
            inner: RwLock::new(Inner::default()),
            remember: AtomicU64::new(settings.remember.as_secs().max(1)),
            max_entries: AtomicUsize::new(settings.max_entries),
            generation: AtomicU64::new(0),
        }
    }

    /// How many times anything cached may have been invalidated (a revocation, a purge, a
    /// reload): an in-proxy filter (`baton.wasm`) that sees it change drops everything it caches.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Something cached elsewhere may no longer be served: a new `generation`.
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Take a reloaded configuration's `remember` and `max_entries`. The store itself is shared by
    /// the old and the new configuration, so no revocation is lost across a reload, not even one
    /// made while it happens. Past a lowered bound every entry is kept, and new revocations are
    /// refused until the store is below the bound again.
    pub fn configure(&self, settings: &Settings) {
        self.remember
            .store(settings.remember.as_secs().max(1), Ordering::Release);
        self.max_entries.store(settings.max_entries, Ordering::Release);
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries.load(Ordering::Acquire)
    }

    fn remember(&self) -> u64 {
        self.remember.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (each change is one insert).
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remember `selector` as revoked at `now` (Unix seconds). Forgets first what is older than
    /// `remember`; an `All` replaces every entry it covers.
    pub fn revoke(&self, selector: &Selector, now: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.forget_before(now.saturating_sub(self.remember()));
        let max_entries = self.max_entries();
        let fits = |inner: &Inner, new: bool| !new || inner.len() < max_entries;

        match selector {
            Selector::Subject { issuer, sub } => {
                let known = inner
                    .subjects
                    .get(sub.as_str())
                    .and_then(|issuers| issuers.iter().position(|(i, _)| i.as_deref() == issuer.as_deref()));
                match known {
                    Some(at) => {
                        if let Some(issuers) = inner.subjects.get_mut(sub.as_str()) {
                            issuers[at].1 = now;
                        }
                    }
                    None if !fits(&inner, true) => {
                        self.held.store(inner.len(), Ordering::Release);
                        return Err(StoreError::Full(max_entries));
                    }
                    None => {
                        let issuer = issuer.as_deref().map(Box::from);
                        inner
                            .subjects
                            .entry(Box::from(sub.as_str()))
                            .or_default()
                            .push((issuer, now));
                        inner.subject_entries += 1;
                    }
                }
            }
            Selector::Session { sid } => {
                let key = Box::from(sid.as_str());
                if !fits(&inner, !inner.sessions.contains_key(&key)) {
                    self.held.store(inner.len(), Ordering::Release);
                    return Err(StoreError::Full(max_entries));
                }
                inner.sessions.insert(key, now);
            }
            Selector::Email { email } => {
                let key = Box::from(email.to_ascii_lowercase().as_str());
                if !fits(&inner, !inner.emails.contains_key(&key)) {
                    self.held.store(inner.len(), Ordering::Release);
                    return Err(StoreError::Full(max_entries));
                }
                inner.emails.insert(key, now);
            }
            Selector::All => {
                // Every entry up to now is covered by this one (the rule compares with the latest).
                inner.subjects.clear();
                inner.subject_entries = 0;
                inner.sessions.clear();
                inner.jobs.clear();
                inner.emails.clear();
                inner.all = Some(now);
            }
            // Purges only: nothing to remember.
            Selector::Destination { .. } | Selector::Served { .. } => {}
            Selector::Job { job } => {
                let key = Box::from(job.as_str());
                if !fits(&inner, !inner.jobs.contains_key(&key)) {
                    self.held.store(inner.len(), Ordering::Release);
                    return Err(StoreError::Full(max_entries));
                }
                inner.jobs.insert(key, now);
            }
        }
        self.held.store(inner.len(), Ordering::Release);
        Ok(())
    }

    /// Forget what is older than `remember` (also done by every `revoke`); the entries held.
    pub fn expire(&self, now: u64) -> usize {
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.forget_before(now.saturating_sub(self.remember()));
        let held = inner.len();
        self.held.store(held, Ordering::Release);
        held
    }

    /// Is a token of `holder` refused? Yes when its subject, its session, or everything was revoked
    /// (within `remember` of `now`) no earlier than the token was issued, or its issue time is
    /// unknown. A token issued after the revocation (the user signed in again) passes.
    pub fn is_revoked(&self, holder: &Holder<'_>, now: u64) -> bool {
        if self.is_empty() {
            return false;
        }
        let inner = self.read();
        let since = now.saturating_sub(self.remember());
        let mut latest = inner.all;
        if let Some(issuers) = holder.sub.and_then(|sub| inner.subjects.get(sub)) {
            for (issuer, at) in issuers {
                // A holder whose issuer is unknown is matched by every issuer's revocation.
                if issuer.is_none() || holder.iss.is_none() || issuer.as_deref() == holder.iss {
                    latest = latest.max(Some(*at));
                }
            }
        }
        if let Some(sid) = holder.sid {
            latest = latest.max(inner.sessions.get(sid).copied());
        }
        if !inner.emails.is_empty()
            && let Some(email) = holder.email()
        {
            latest = latest.max(inner.emails.get(email.to_ascii_lowercase().as_str()).copied());
        }
        match latest.filter(|at| *at >= since) {
            None => false,
            // Seconds: a token issued in the revocation's own second is refused (fail closed).
            Some(at) => holder
                .iat
                .is_none_or(|iat| iat <= i64::try_from(at).unwrap_or(i64::MAX)),
        }
    }
}

impl Store {
    /// Is a grant of deferred job `job`, issued at `iat`, refused? Yes when the job was revoked
    /// (within `remember` of `now`) no earlier than the grant was issued, or `iat` is unknown. Its
    /// user's revocation is `is_revoked`'s, with the grant's holder.
    pub fn is_job_revoked(&self, job: &str, iat: Option<i64>, now: u64) -> bool {
        if self.is_empty() {
            return false;
        }
        let inner = self.read();
        let since = now.saturating_sub(self.remember());
        match inner.jobs.get(job).copied().filter(|at| *at >= since) {
            None => false,
            Some(at) => iat.is_none_or(|iat| iat <= i64::try_from(at).unwrap_or(i64::MAX)),
        }
    }
}

/// Does `selector` name the holder of a cached entry (for the purge)? Entries hold no `iat`:
/// every entry of a named subject or session predates the revocation.
pub fn names(selector: &Selector, holder: &Holder<'_>) -> bool {
    selector.names(holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn store(max: usize) -> Store {
        Store::new(&Settings {
            remember: Duration::from_secs(3600),
            max_entries: max,
            admin_secret: None,
        })
    }

    fn alice(iat: Option<i64>) -> Holder<'static> {
        Holder {
            iss: Some("https://idp"),
            sub: Some("alice"),
            sid: Some("s-1"),
            iat,
            claims: None,
        }
    }

    fn subject(issuer: Option<&str>, sub: &str) -> Selector {
        Selector::Subject {
            issuer: issuer.map(str::to_owned),
            sub: sub.into(),
        }
    }

    #[test]
    fn a_revoked_subject_is_refused_until_it_signs_in_again() {
        let s = store(10);
        let before = Some(NOW as i64 - 10);
        assert!(s.is_empty());
        assert!(!s.is_revoked(&alice(before), NOW));
        s.revoke(&subject(Some("https://idp"), "alice"), NOW).expect("fits");
        assert!(!s.is_empty());
        assert!(s.is_revoked(&alice(before), NOW + 1));
        assert!(
            s.is_revoked(&alice(Some(NOW as i64)), NOW + 1),
            "the same second is refused"
        );
        assert!(s.is_revoked(&alice(None), NOW + 1), "no iat: older than anything");
        assert!(
            !s.is_revoked(&alice(Some(NOW as i64 + 1)), NOW + 1),
            "a later sign-in passes"
        );
        let bob = Holder {
            sub: Some("bob"),
            sid: Some("s-2"),
            ..alice(before)
        };
        assert!(!s.is_revoked(&bob, NOW + 1));
        let other_issuer = Holder {
            iss: Some("https://other"),
            ..alice(before)
        };
        assert!(
            !s.is_revoked(&other_issuer, NOW + 1),
            "alice of another issuer is someone else"
        );
    }

    #[test]
    fn a_subject_without_issuer_a_session_and_all() {
        let before = Some(NOW as i64 - 10);
        let s = store(10);
        s.revoke(&subject(None, "alice"), NOW).expect("fits");
        let other_issuer = Holder {
            iss: Some("https://other"),
            ..alice(before)
        };
        assert!(s.is_revoked(&other_issuer, NOW));

        let s = store(10);
        s.revoke(&Selector::Session { sid: "s-1".into() }, NOW).expect("fits");
        assert!(s.is_revoked(&alice(before), NOW));
        let other_session = Holder {
            sid: Some("s-2"),
            ..alice(before)
        };
        assert!(!s.is_revoked(&other_session, NOW));

        let s = store(10);
        s.revoke(&subject(None, "bob"), NOW - 5).expect("fits");
        s.revoke(&Selector::All, NOW).expect("fits");
        assert_eq!(s.len(), 1, "all replaces the entries it covers");
        assert!(s.is_revoked(&Holder::default(), NOW));
        assert!(!s.is_revoked(&alice(Some(NOW as i64 + 1)), NOW + 1));
    }

    #[test]
    fn an_email_matches_the_verified_email_claim_only() {
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"iss":"https://idp","sub":"alice","email":"Alice@Example.com","iat":1799999990}"#)
                .expect("claims");
        let s = store(10);
        let email = Selector::Email {
            email: "alice@example.COM".into(),
        };
        s.revoke(&email, NOW).expect("fits");
        assert_eq!(email.kind(), "email");
        assert!(s.is_revoked(&Holder::of_claims(&claims), NOW), "case-insensitive");
        assert!(names(&email, &Holder::of_claims(&claims)));
        assert!(
            !s.is_revoked(&alice(Some(NOW as i64 - 10)), NOW),
            "a holder without verified claims has no e-mail to match"
        );
        let bob: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"sub":"bob","email":"bob@example.com","iat":1799999990}"#).expect("claims");
        assert!(!s.is_revoked(&Holder::of_claims(&bob), NOW));
        s.revoke(&Selector::All, NOW + 1).expect("fits");
        assert_eq!(s.len(), 1, "all replaces the e-mail entry");
    }

    #[test]
    fn remembered_for_remember_only_and_bounded() {
        let before = Some(NOW as i64 - 10);
        let s = store(2);
        s.revoke(&subject(None, "alice"), NOW).expect("fits");
        assert!(s.is_revoked(&alice(before), NOW + 3600), "remembered for `remember`");
        assert!(!s.is_revoked(&alice(before), NOW + 3601), "then forgotten");
        s.revoke(&subject(None, "bob"), NOW).expect("fits");
        s.revoke(&subject(None, "bob"), NOW + 1).expect("fits");
        assert_eq!(s.revoke(&subject(None, "carol"), NOW + 1), Err(StoreError::Full(2)));
        assert!(
            !s.is_revoked(
                &Holder {
                    sub: Some("carol"),
                    ..alice(before)
                },
                NOW + 1
            ),
            "a refused revocation changes nothing"
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s.expire(NOW + 3601), 1, "alice forgotten, bob kept");
        s.revoke(&subject(None, "carol"), NOW + 3601).expect("fits");
        s.revoke(&Selector::All, NOW + 3602).expect("fits");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_reload_keeps_what_was_revoked() {
        let s = store(10);
        s.revoke(&subject(None, "alice"), NOW).expect("fits");
        s.revoke(&subject(None, "bob"), NOW).expect("fits");
        s.configure(&Settings {
            max_entries: 1,
            ..Settings::default()
        });
        assert!(
            s.is_revoked(&alice(None), NOW + 3601),
            "remembered for the new `remember`"
        );
        assert_eq!((s.len(), s.max_entries()), (2, 1), "a lowered bound forgets nothing");
        assert_eq!(s.revoke(&subject(None, "carol"), NOW), Err(StoreError::Full(1)));
    }

    #[test]
    fn requests_are_one_selector_or_a_clear_refusal() {
        let ok = |body: &str| Selector::from_json(body.as_bytes());
        assert_eq!(
            ok(r#"{"issuer":"https://idp","sub":"alice"}"#),
            Ok(subject(Some("https://idp"), "alice"))
        );
        assert_eq!(ok(r#"{"sub":"alice"}"#), Ok(subject(None, "alice")));
        assert_eq!(ok(r#"{"sid":"s-1"}"#), Ok(Selector::Session { sid: "s-1".into() }));
        assert_eq!(ok(r#"{"all":true}"#), Ok(Selector::All));
        assert_eq!(
            ok(r#"{"job":"report-7"}"#),
            Ok(Selector::Job { job: "report-7".into() })
        );
        assert_eq!(
            ok(r#"{"email":"Alice@Example.COM"}"#),
            Ok(Selector::Email {
                email: "alice@example.com".into()
            })
        );
        let long = format!(r#"{{"sub":"{}"}}"#, "a".repeat(MAX_VALUE_LEN + 1));
        let huge = format!(r#"{{"sub":"{}"}}"#, "a".repeat(MAX_REQUEST_BYTES));
        for (body, code) in [
            ("", "malformed_body"),
            ("not json", "malformed_body"),
            ("[]", "malformed_body"),
            (r#"{"sub":"alice","extra":1}"#, "malformed_body"),
            (r#"{"sub":1}"#, "malformed_body"),
            (r#"{"all":false}"#, "malformed_body"),
            ("{}", "no_selector"),
            (r#"{"issuer":"https://idp"}"#, "issuer_without_sub"),
            (r#"{"sub":"alice","sid":"s-1"}"#, "ambiguous_selector"),
            (r#"{"sub":"alice","all":true}"#, "ambiguous_selector"),
            (r#"{"sid":"s-1","job":"j"}"#, "ambiguous_selector"),
            (r#"{"issuer":"https://idp","job":"j"}"#, "issuer_without_sub"),
            (r#"{"job":""}"#, "empty_value"),
            (r#"{"job":"a b"}"#, "malformed_job"),
            (r#"{"job":"x\u0000"}"#, "malformed_job"),
            (r#"{"email":"alice"}"#, "malformed_email"),
            (r#"{"email":"@example.com"}"#, "malformed_email"),
            (r#"{"email":"alice@"}"#, "malformed_email"),
            (r#"{"email":"a@b@c"}"#, "malformed_email"),
            (r#"{"email":"al ice@example.com"}"#, "malformed_email"),
            (r#"{"email":"alice@example.com\n"}"#, "malformed_email"),
            (r#"{"email":"al\u00e9@example.com"}"#, "malformed_email"),
            (r#"{"email":""}"#, "empty_value"),
            (r#"{"email":"a@b","sub":"alice"}"#, "ambiguous_selector"),
            (r#"{"issuer":"https://idp","email":"a@b"}"#, "issuer_without_sub"),
            (r#"{"issuer":"https://idp","sid":"s-1"}"#, "issuer_without_sub"),
            (r#"{"sub":""}"#, "empty_value"),
            (&long, "value_too_long"),
            (&huge, "body_too_large"),
        ] {
            assert_eq!(ok(body).map_err(|e| e.code), Err(code), "{body:.60}");
        }
    }

    #[test]
    fn only_the_admin_secret_is_admitted() {
        let settings = Settings {
            admin_secret: Some(Secret::new("s3cret")),
            ..Settings::default()
        };
        assert!(settings.admits(Some("Bearer s3cret")));
        assert!(settings.admits(Some("bearer s3cret")));
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
            Some("Bearer "),
        ] {
            assert!(!settings.admits(wrong), "{wrong:?}");
        }
        assert!(!Settings::default().admits(Some("Bearer s3cret")), "no secret: nobody");
    }

    #[test]
    fn the_section_reports_every_error() {
        let mut errors = Errors::default();
        let raw = Raw {
            remember: Some("0s".into()),
            max_entries: Some(0),
            admin_secret_file: Some("/nonexistent/baton-admin-secret".into()),
        };
        raw.validate(&mut errors);
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "revocation.remember",
                "revocation.max_entries",
                "revocation.admin_secret_file"
            ]
        );
        let mut errors = Errors::default();
        let settings = Raw::default().validate(&mut errors);
        assert!(errors.0.is_empty());
        assert_eq!(settings.remember, DEFAULT_REMEMBER);
        assert!(settings.admin_secret.is_none());
    }

    #[test]
    fn a_destination_is_a_purge_never_remembered() {
        // Everything that ends someone's authority is remembered (a match, so a new selector must
        // say which it is: a job and an e-mail address were once left out by a merge).
        for revocation in [
            Selector::Job { job: "report-1".into() },
            Selector::Email {
                email: "alice@example.com".into(),
            },
            Selector::Session { sid: "s-1".into() },
            Selector::All,
        ] {
            assert!(revocation.is_remembered(), "{revocation:?}");
        }
        let ok = |body: &str| Selector::from_json(body.as_bytes());
        let orders = Selector::Destination { name: "orders".into() };
        assert_eq!(ok(r#"{"destination":"orders"}"#), Ok(orders.clone()));
        for (body, code) in [
            (r#"{"destination":"orders","sub":"alice"}"#, "ambiguous_selector"),
            (r#"{"destination":"orders","all":true}"#, "ambiguous_selector"),
            (
                r#"{"destination":"orders","issuer":"https://idp"}"#,
                "issuer_without_sub",
            ),
            (r#"{"destination":""}"#, "empty_value"),
            (r#"{"destination":7}"#, "malformed_body"),
        ] {
            assert_eq!(ok(body).map_err(|e| e.code), Err(code), "{body}");
        }
        let s = store(1);
        for purge in [
            orders,
            Selector::Served {
                destination: "orders".into(),
            },
        ] {
            assert!(!purge.is_remembered());
            assert!(!names(&purge, &alice(None)), "names no holder");
            s.revoke(&purge, NOW).expect("nothing to hold");
            assert!(s.is_empty());
            assert!(!s.is_revoked(&alice(None), NOW));
        }
        assert_eq!(
            (
                Selector::All.kind(),
                Selector::Served {
                    destination: String::new()
                }
                .kind()
            ),
            ("all", "served")
        );
    }
}
