//! Exchanged tokens, kept until shortly before they expire. The key is a SHA-256 digest over every
//! exchange input (the destination's parameters and the subject token), the destination's name and
//! every constraint it puts on the token it is served (`Constraints`), so a raw token is never a
//! key and a token for one destination is never served for another, not even for one with the same
//! audience. Concurrent misses for one key share one exchange. An entry is never served past
//! `min(expires_in, issued exp, subject exp) - margin`, nor to a destination whose constraints it
//! does not meet (checked again on every hit). The `cache:` section (`Raw`, validated into
//! `Settings`) is read here too.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::clock::unix_now;
use crate::jwt::DelegationClaims;
use crate::secret::Secret;
use baton_decide::reason::Denial;
use baton_decide::settings::{Errors, duration};

const BEARER: &str = "Bearer ";

/// SHA-256 over the exchange inputs, derived in the pure crate so an in-proxy filter derives the
/// same keys.
pub use baton_decide::key::{Key, digest, key, params_digest};

/// How a token was obtained, for logs, traces, audit and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// Waited for another request's exchange for the same key.
    Coalesced,
}

impl CacheStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
        }
    }
}

/// A token ready to hand to Envoy. An entry is kept small (see BENCHMARKS.md, "Memory"): the token is
/// kept once, inside the prebuilt header, and what only the broker, audit and traces read sits in
/// one box, absent when there is nothing beyond a `Bearer` token.
#[derive(Debug)]
pub struct Delegated {
    /// `Bearer <token>`, built once so a hit does not format it again; the token itself is the same
    /// bytes after the prefix.
    pub authorization: Secret,
    /// When the cache stops serving it (Unix seconds).
    pub expires_at: u64,
    /// From when a hit starts a background refresh (Unix seconds); `u64::MAX`: never.
    refresh_at: u64,
    /// How long it is kept, in seconds.
    ttl: u32,
    /// Set by the one hit that starts the refresh, so there is at most one per entry.
    refresh_claimed: AtomicBool,
    about: Option<Box<About>>,
    /// The destination it was exchanged for (its name, shared with the configuration), so an
    /// operator can purge one destination's tokens (`revocation::Selector::Destination`).
    destination: Option<Arc<str>>,
}

/// What the token service said besides the token, and what audit and traces report about it,
/// packed: every string in one allocation, the well-known token types as a byte (see BENCHMARKS.md,
/// "Memory").
#[derive(Debug, Default)]
struct About {
    /// The present fields' strings end to end, in `Field` order.
    text: Box<str>,
    /// Where each field ends in `text` (it starts where the one before ends).
    ends: [u32; FIELDS],
    /// Bit `f` set: field `f` is present (possibly empty).
    present: u16,
    /// The token types when well-known: an index into `KNOWN_TOKEN_TYPES` plus one; 0: in `text`
    /// (or absent).
    token_type: u8,
    issued_token_type: u8,
    /// The issued token's `exp`.
    exp: Option<i64>,
    /// The delegation chain in the issued token's `act`, current actor first.
    actors: Box<[Box<str>]>,
    /// The issued token's signature was verified (`verify_issued`), so `actors` is authenticated.
    chain_verified: bool,
}

/// The strings `About` keeps, in the order they sit in its `text`.
#[derive(Clone, Copy)]
enum Field {
    TokenType,
    IssuedTokenType,
    /// The scope the token service said it granted.
    Scope,
    SubjectIss,
    SubjectSub,
    Jti,
    /// The issued token's `scope` claim (kept only when the token service named no scope).
    ClaimScope,
    RequestedScope,
    /// The subject token's `sid`, for revoking a session (`revocation`).
    SubjectSid,
}
const FIELDS: usize = 9;

const KNOWN_TOKEN_TYPES: [&str; 4] = [
    "Bearer",
    crate::oauth::TOKEN_TYPE_ACCESS_TOKEN,
    crate::oauth::TOKEN_TYPE_JWT,
    "N_A",
];

fn known_token_type(value: &str) -> u8 {
    KNOWN_TOKEN_TYPES
        .iter()
        .position(|k| *k == value)
        .map_or(0, |i| i as u8 + 1)
}

impl About {
    fn get(&self, field: Field) -> Option<&str> {
        self.get_at(field as usize)
    }

    fn get_at(&self, f: usize) -> Option<&str> {
        if self.present & (1 << f) == 0 {
            return None;
        }
        let start = if f == 0 { 0 } else { self.ends[f - 1] as usize };
        self.text.get(start..self.ends[f] as usize)
    }

    fn token_type(&self, code: u8, field: Field) -> Option<&str> {
        match code {
            0 => self.get(field),
            known => KNOWN_TOKEN_TYPES.get(usize::from(known) - 1).copied(),
        }
    }

    /// Set some fields (`Some`), keeping the others; the strings are packed again.
    fn set(&mut self, changes: [Option<Option<&str>>; FIELDS]) {
        let mut fields: [Option<&str>; FIELDS] = Default::default();
        for (f, (field, change)) in fields.iter_mut().zip(changes).enumerate() {
            *field = match change {
                Some(new) => new,
                None => self.get_at(f),
            };
        }
        let mut text = String::with_capacity(fields.iter().flatten().map(|s| s.len()).sum());
        let (mut ends, mut present) = ([0u32; FIELDS], 0u16);
        for (f, field) in fields.iter().enumerate() {
            if let Some(value) = field {
                text.push_str(value);
                present |= 1 << f;
            }
            // Strings here are bounded (a token service answer, claims of at most MAX_CLAIM_LEN).
            ends[f] = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        self.text = text.into_boxed_str();
        self.ends = ends;
        self.present = present;
    }

    fn is_empty(&self) -> bool {
        self.present == 0
            && self.token_type == 0
            && self.issued_token_type == 0
            && self.exp.is_none()
            && self.actors.is_empty()
            && !self.chain_verified
    }
}

/// What audit and traces report about a delegation (`Delegated::claims`), borrowed from the entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claims<'a> {
    pub subject_iss: Option<&'a str>,
    pub subject_sub: Option<&'a str>,
    pub jti: Option<&'a str>,
    pub exp: Option<i64>,
    /// The issued token's `scope` claim, when the token service named no granted scope.
    pub scope: Option<&'a str>,
    /// The scope Baton asked for, when the policy narrowed the destination's.
    pub requested_scope: Option<&'a str>,
}

/// The lifetimes that bound a token's stay in the cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lifetimes {
    pub expires_in: Option<u64>,
    /// `exp` of the issued token, when it is a JWT.
    pub issued_exp: Option<i64>,
    /// `exp` of the subject token, when it is a JWT.
    pub subject_exp: Option<i64>,
    /// The destination's `max_token_lifetime`, in seconds.
    pub max: Option<u64>,
}

impl Delegated {
    /// `ttl = min(expires_in, issued exp, subject exp) - margin`, from `now` (Unix seconds). With no
    /// lifetime known at all the token is used once and not kept.
    pub fn new(
        token: Secret,
        token_type: String,
        issued_token_type: Option<String>,
        scope: Option<String>,
        lifetimes: Lifetimes,
        margin: Duration,
        now: u64,
    ) -> Self {
        let until_exp = |exp: i64| exp.saturating_sub(now as i64).max(0) as u64;
        let remaining = [
            lifetimes.expires_in,
            lifetimes.issued_exp.map(until_exp),
            lifetimes.subject_exp.map(until_exp),
            lifetimes.max,
        ]
        .into_iter()
        .flatten()
        .min();
        // Whole seconds, rounded down: an entry never outlives its lifetime.
        let ttl = remaining.map_or(0, |s| Duration::from_secs(s).saturating_sub(margin).as_secs());
        let ttl = u32::try_from(ttl).unwrap_or(u32::MAX);
        let mut header = String::with_capacity(BEARER.len() + token.expose().len());
        header.push_str(BEARER);
        header.push_str(token.expose());
        let mut delegated = Self {
            authorization: Secret::new(header),
            expires_at: now.saturating_add(u64::from(ttl)),
            refresh_at: u64::MAX,
            ttl,
            refresh_claimed: AtomicBool::new(false),
            about: None,
            destination: None,
        };
        let token_type = (token_type != "Bearer").then_some(token_type);
        if token_type.is_some() || issued_token_type.is_some() || scope.is_some() {
            let about = delegated.about_mut();
            let (code, issued_code) = (
                token_type.as_deref().map_or(0, known_token_type),
                issued_token_type.as_deref().map_or(0, known_token_type),
            );
            about.token_type = code;
            about.issued_token_type = issued_code;
            let mut changes: [Option<Option<&str>>; FIELDS] = Default::default();
            changes[Field::TokenType as usize] = Some(token_type.as_deref().filter(|_| code == 0));
            changes[Field::IssuedTokenType as usize] = Some(issued_token_type.as_deref().filter(|_| issued_code == 0));
            changes[Field::Scope as usize] = Some(scope.as_deref());
            about.set(changes);
        }
        delegated
    }

    /// Refresh ahead: a hit within `window` of the cache expiry (or, for a token kept less than
    /// that, past half its time) starts one background exchange, so a steady stream of requests
    /// never waits on one at expiry. A zero window turns it off.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        let ttl = u64::from(self.ttl);
        if window.is_zero() || ttl == 0 {
            return self;
        }
        let kept_from = self.expires_at - ttl;
        self.refresh_at = if ttl > window.as_secs() {
            self.expires_at - window.as_secs()
        } else {
            kept_from + ttl / 2
        };
        self
    }

    /// When it was exchanged (Unix seconds): where its time in the cache started.
    pub fn issued_at(&self) -> u64 {
        self.expires_at.saturating_sub(u64::from(self.ttl))
    }

    /// True for the one caller that should start this entry's refresh now.
    pub fn claim_refresh(&self, now: u64) -> bool {
        now >= self.refresh_at && !self.refresh_claimed.swap(true, Ordering::AcqRel)
    }

    /// Still servable at `now` (Unix seconds).
    fn fresh(&self, now: u64) -> bool {
        now < self.expires_at
    }

    pub fn with_claims(mut self, claims: DelegationClaims) -> Self {
        // The issued token's `scope` claim is read only when the token service named no scope.
        let claim_scope = claims.scope.as_deref().filter(|_| self.scope().is_none());
        let mut changes: [Option<Option<&str>>; FIELDS] = Default::default();
        changes[Field::SubjectIss as usize] = Some(claims.subject_iss.as_deref());
        changes[Field::SubjectSub as usize] = Some(claims.subject_sub.as_deref());
        changes[Field::Jti as usize] = Some(claims.jti.as_deref());
        changes[Field::ClaimScope as usize] = Some(claim_scope);
        changes[Field::RequestedScope as usize] = Some(claims.requested_scope.as_deref());
        let about = self.about_mut();
        about.set(changes);
        about.exp = claims.exp;
        self.drop_empty_about();
        self
    }

    /// The subject token's session (`sid`), so a revoked session's entries can be found.
    pub fn with_subject_sid(mut self, sid: Option<&str>) -> Self {
        if sid.is_none() {
            return self;
        }
        let mut changes: [Option<Option<&str>>; FIELDS] = Default::default();
        changes[Field::SubjectSid as usize] = Some(sid);
        self.about_mut().set(changes);
        self
    }

    /// The destination it is for (see `destination`).
    pub fn with_destination(mut self, name: Arc<str>) -> Self {
        self.destination = Some(name);
        self
    }

    pub fn destination(&self) -> Option<&str> {
        self.destination.as_deref()
    }

    /// Whose entry it is, as a revocation matches it.
    pub fn holder(&self) -> crate::revocation::Holder<'_> {
        let Some(a) = self.about.as_deref() else {
            return crate::revocation::Holder::default();
        };
        crate::revocation::Holder {
            iss: a.get(Field::SubjectIss),
            sub: a.get(Field::SubjectSub),
            sid: a.get(Field::SubjectSid),
            iat: None,
            claims: None,
        }
    }

    pub fn with_actors(mut self, actors: Vec<String>) -> Self {
        self.about_mut().actors = actors.into_iter().map(String::into_boxed_str).collect();
        self.drop_empty_about();
        self
    }

    /// The issued token's signature was verified (`verify_issued`): its chain is authenticated.
    pub fn with_chain_verified(mut self, verified: bool) -> Self {
        if verified {
            self.about_mut().chain_verified = true;
        }
        self
    }

    /// Whether the chain in `actors` was read from a token whose signature was verified.
    pub fn chain_verified(&self) -> bool {
        self.about.as_ref().is_some_and(|a| a.chain_verified)
    }

    fn about_mut(&mut self) -> &mut About {
        self.about.get_or_insert_with(Box::default)
    }

    /// A bare token keeps no `About` at all.
    fn drop_empty_about(&mut self) {
        if self.about.as_ref().is_some_and(|a| a.is_empty()) {
            self.about = None;
        }
    }

    /// The issued token.
    pub fn token(&self) -> &str {
        &self.authorization.expose()[BEARER.len()..]
    }

    /// The issued token's fingerprint, for logs.
    pub fn fingerprint(&self) -> String {
        crate::secret::fingerprint(self.token())
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl))
    }

    /// `token_type` as the token service answered it.
    pub fn token_type(&self) -> &str {
        self.about
            .as_ref()
            .and_then(|a| a.token_type(a.token_type, Field::TokenType))
            .unwrap_or("Bearer")
    }

    pub fn issued_token_type(&self) -> Option<&str> {
        let about = self.about.as_ref()?;
        about.token_type(about.issued_token_type, Field::IssuedTokenType)
    }

    /// The scope the token service said it granted, if it said.
    pub fn scope(&self) -> Option<&str> {
        self.about.as_ref()?.get(Field::Scope)
    }

    /// The delegation chain in the issued token's `act`, current actor first.
    pub fn actors(&self) -> &[Box<str>] {
        self.about.as_ref().map_or(&[], |a| &a.actors)
    }

    /// Who it is for and what was asked and issued, for audit and traces. Without what they read
    /// elsewhere: `scope` when `Delegated::scope` is known, `requested_scope` when it is the
    /// destination's own.
    pub fn claims(&self) -> Claims<'_> {
        let Some(a) = self.about.as_deref() else {
            return Claims::default();
        };
        Claims {
            subject_iss: a.get(Field::SubjectIss),
            subject_sub: a.get(Field::SubjectSub),
            jti: a.get(Field::Jti),
            exp: a.exp,
            scope: a.get(Field::ClaimScope),
            requested_scope: a.get(Field::RequestedScope),
        }
    }
}

/// What a destination demands of a token beyond what its exchange asks for: the judgments Baton
/// makes on the token the token service issued. Issue 12 section 4: a token is served for a
/// destination only when it meets every one of them. Both layers hold it:
/// - covered by the key: `Constraints::fields` goes into the cache key with the destination's
///   name and its exchange parameters (audience, resource, scopes, token type, actor use), so two
///   destinations never share an entry, and a reload that tightens a constraint starts afresh;
/// - checked on each hit (`permits`): whatever produced the key, a token that breaks one of these
///   is not served, and is exchanged again instead.
///
/// The key alone would do today; the check on each hit keeps it so if a later change lets two
/// destinations share a key (the broker's `route_for`, a refresh, a reload). Both destructure this
/// struct, so a new constraint does not compile until it is keyed and checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    /// The longest `act` chain the destination accepts in the token it receives.
    pub max_delegation_depth: Option<usize>,
    /// How long (seconds) after its exchange the destination may still be handed a token.
    pub max_token_lifetime: Option<u64>,
}

impl Constraints {
    /// The constraints as text fields, for the cache key (`params_digest`).
    pub fn fields(&self) -> [String; 2] {
        let Self {
            max_delegation_depth,
            max_token_lifetime,
        } = self;
        let text = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        [
            format!("max_delegation_depth={}", text(max_delegation_depth.map(|d| d as u64))),
            format!("max_token_lifetime={}", text(*max_token_lifetime)),
        ]
    }

    /// Whether `token` may be handed, at `now`, to a destination with these constraints.
    pub fn permits(&self, token: &Delegated, now: u64) -> bool {
        let Self {
            max_delegation_depth,
            max_token_lifetime,
        } = self;
        let depth_ok = max_delegation_depth.is_none_or(|max| token.actors().len() <= max);
        // Age since the exchange, against the cap: `max_token_lifetime` bounds how long after its
        // exchange a token is handed out, whichever destination's request exchanged it.
        let age_ok = max_token_lifetime.is_none_or(|max| now.saturating_sub(token.issued_at()) < max);
        depth_ok && age_ok
    }
}

/// What the cache holds for a key: a token, or, for the moment it takes to hand it to the requests
/// that waited on the same exchange, that exchange's failure (never kept).
type Slot = Result<Arc<Delegated>, Arc<Denial>>;

/// The bounded, coalescing token cache. `quick_cache` holds the entries (its per-entry bookkeeping
/// is a fraction of moka's, see BENCHMARKS.md) and makes concurrent misses for one key wait on one
/// exchange; expiry is checked on every read, so an entry is never served past `expires_at`.
pub struct TokenCache {
    inner: quick_cache::sync::Cache<Key, Slot>,
    /// Definite refusals by the token service, remembered briefly so a client retrying a refused
    /// request does not hammer it.
    refusals: Option<Expiring<Denial>>,
    negative_ttl: Duration,
    max_entries: u64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.inner.len())
            .finish()
    }
}

/// A cache that never holds more than `max` entries. quick_cache splits its capacity evenly over
/// shards and rounds each share up (500 over 8 shards held 504); here each share is rounded down,
/// with shards of at least 32 entries as quick_cache itself prefers.
fn bounded<V: Clone>(max: usize) -> quick_cache::sync::Cache<Key, V> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut shards = cores.saturating_mul(4).next_power_of_two();
    while shards > 1 && max / shards < 32 {
        shards /= 2;
    }
    let capacity = (max / shards).max(1) * shards;
    let options = quick_cache::OptionsBuilder::new()
        .shards(shards)
        .estimated_items_capacity(capacity)
        .weight_capacity(u64::try_from(capacity).unwrap_or(u64::MAX))
        .build()
        .expect("both capacities are set");
    quick_cache::sync::Cache::with_options(
        options,
        quick_cache::UnitWeighter,
        quick_cache::DefaultHashBuilder::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    )
}

impl TokenCache {
    pub fn new(max_entries: u64, negative_ttl: Duration) -> Self {
        let inner = bounded(usize::try_from(max_entries).unwrap_or(usize::MAX));
        let refusals = (!negative_ttl.is_zero()).then(|| Expiring::new(max_entries));
        Self {
            inner,
            refusals,
            negative_ttl,
            max_entries,
        }
    }

    /// Put a refreshed token in place of the old one.
    pub fn replace(&self, key: Key, fresh: Arc<Delegated>) {
        self.inner.insert(key, Ok(fresh));
    }

    /// Take out `token` if it is still the one held for `key`.
    pub fn forget(&self, key: &Key, token: &Arc<Delegated>) {
        self.inner
            .remove_if(key, |slot| slot.as_ref().is_ok_and(|t| Arc::ptr_eq(t, token)));
    }

    /// The token held for `key`, fresh or not (what an in-proxy `Purge` names by key and
    /// fingerprint); never exchanges.
    pub fn held(&self, key: &Key) -> Option<Arc<Delegated>> {
        self.inner.get(key).and_then(Result::ok)
    }

    /// Take out `token` if it is still the one held for `key`: whether it was (the purge of the one
    /// entry that served a request its destination refused, `invalid_token`).
    pub fn take(&self, key: &Key, token: &Arc<Delegated>) -> bool {
        self.inner
            .remove_if(key, |slot| slot.as_ref().is_ok_and(|t| Arc::ptr_eq(t, token)))
            .is_some()
    }

    /// Remove every token exchanged for the destination named `name` (a scan); how many. Its
    /// remembered refusals stay: they only ever refuse, for `negative_ttl`.
    pub fn purge_destination(&self, name: &str) -> usize {
        let purged = std::sync::atomic::AtomicUsize::new(0);
        self.inner.retain(|_, slot| match slot {
            Ok(token) if token.destination() == Some(name) => {
                purged.fetch_add(1, Ordering::Relaxed);
                false
            }
            _ => true,
        });
        purged.into_inner()
    }

    /// A refusal remembered for `key`, if any.
    pub fn refused(&self, key: &Key) -> Option<Denial> {
        self.refusals.as_ref()?.get(key, SystemTime::now())
    }

    /// Remember `denial` for `key` if it is a definite refusal (the same request would be refused
    /// again), not a failure that may pass.
    pub fn remember_refusal(&self, key: Key, denial: &Denial) {
        if let Some(refusals) = &self.refusals
            && denial.reason.is_definite_refusal()
        {
            refusals.insert(key, denial.clone(), SystemTime::now() + self.negative_ttl);
        }
    }

    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// The cached token for `key`, or the one `exchange` produces. Concurrent callers with the same
    /// key wait for a single `exchange`; an error is returned to all of them and not cached.
    /// A token is served only while fresh and while it meets `constraints` (the asking
    /// destination's); one that does not is dropped and exchanged again.
    pub async fn get_or_exchange<F>(
        &self,
        key: Key,
        constraints: &Constraints,
        exchange: F,
    ) -> Result<(Arc<Delegated>, CacheStatus), Arc<Denial>>
    where
        F: Future<Output = Result<Arc<Delegated>, Denial>>,
    {
        let servable = |token: &Delegated| {
            let now = unix_now();
            token.fresh(now) && constraints.permits(token, now)
        };
        if let Some(Ok(hit)) = self.inner.get(&key)
            && servable(&hit)
        {
            return Ok((hit, CacheStatus::Hit));
        }
        loop {
            match self.inner.get_value_or_guard_async(&key).await {
                Ok(Ok(token)) if servable(&token) => return Ok((token, CacheStatus::Coalesced)),
                // Expired, or not for this destination: drop it (unless another caller already put
                // a new one) and ask again.
                Ok(Ok(stale)) => {
                    self.inner
                        .remove_if(&key, |slot| slot.as_ref().is_ok_and(|t| Arc::ptr_eq(t, &stale)));
                }
                Ok(Err(failure)) => return Err(failure),
                Err(guard) => {
                    let slot = exchange.await.map_err(Arc::new);
                    let _ = guard.insert(slot.clone());
                    // The waiters have it now; keep only a token that may be served later.
                    if !slot.as_ref().is_ok_and(|t| t.fresh(unix_now())) {
                        self.inner.remove_if(&key, |held| same_slot(held, &slot));
                    }
                    return slot.map(|token| (token, CacheStatus::Miss));
                }
            }
        }
    }

    /// The number of entries held, expired ones included until they are replaced or evicted.
    pub fn entry_count(&self) -> u64 {
        self.inner.len() as u64
    }

    /// Remove every token whose holder `revoked` names (a scan: revocation time, never a hit), and
    /// with `everything`, the remembered refusals too (they are keyed by digest, so a subject's
    /// own cannot be told apart; they only ever refuse, for `negative_ttl`). The tokens removed.
    pub fn purge(&self, revoked: impl Fn(&crate::revocation::Holder<'_>) -> bool, everything: bool) -> usize {
        let purged = std::sync::atomic::AtomicUsize::new(0);
        self.inner.retain(|_, slot| match slot {
            Ok(token) if revoked(&token.holder()) => {
                purged.fetch_add(1, Ordering::Relaxed);
                false
            }
            _ => true,
        });
        if everything && let Some(refusals) = &self.refusals {
            refusals.purge(|_| true);
        }
        purged.into_inner()
    }
}

/// A bounded map from a digest to what was learned about it (a verified subject, a refusal), each
/// entry until its own expiry. Expiry is checked on every read, and an expired entry is removed
/// then; until read again or evicted it holds its slot. Nothing here waits or coalesces.
pub struct Expiring<V> {
    inner: quick_cache::sync::Cache<Key, (SystemTime, V)>,
}

impl<V: Clone> std::fmt::Debug for Expiring<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expiring").field("entries", &self.inner.len()).finish()
    }
}

impl<V: Clone> Expiring<V> {
    pub fn new(max_entries: u64) -> Self {
        Self {
            inner: bounded(usize::try_from(max_entries).unwrap_or(usize::MAX)),
        }
    }

    /// The value for `key` if it has not expired at `now`.
    pub fn get(&self, key: &Key, now: SystemTime) -> Option<V> {
        let (expires_at, value) = self.inner.get(key)?;
        if now < expires_at {
            return Some(value);
        }
        self.inner.remove_if(key, |(at, _)| *at == expires_at);
        None
    }

    /// Keep `value` until `expires_at`; one already expired is not kept.
    pub fn insert(&self, key: Key, value: V, expires_at: SystemTime) {
        if SystemTime::now() < expires_at {
            self.inner.insert(key, (expires_at, value));
        }
    }

    pub fn entry_count(&self) -> usize {
        self.inner.len()
    }

    /// Remove every entry `matches` (a scan); how many.
    pub fn purge(&self, matches: impl Fn(&V) -> bool) -> usize {
        let purged = std::sync::atomic::AtomicUsize::new(0);
        self.inner.retain(|_, (_, value)| {
            let hit = matches(value);
            if hit {
                purged.fetch_add(1, Ordering::Relaxed);
            }
            !hit
        });
        purged.into_inner()
    }
}

/// `secs` since the Unix epoch, as a time (a claim's `exp`); before the epoch reads as the epoch.
pub fn at_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn same_slot(a: &Slot, b: &Slot) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => Arc::ptr_eq(a, b),
        (Err(a), Err(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// The first half of a destination's cache keys: its name, its `constraints` and what its
/// exchanges send (`exchange`, each field as text). Two destinations never share a key, whatever
/// their audiences.
pub fn destination_key(name: &str, constraints: &Constraints, exchange: &[&str]) -> Key {
    let [depth, lifetime] = constraints.fields();
    let mut fields = vec!["destination", name, &depth, &lifetime];
    fields.extend_from_slice(exchange);
    params_digest(&fields)
}

// === The `cache:` section ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    pub max_entries: Option<u64>,
    pub expiry_margin: Option<String>,
    pub negative_ttl: Option<String>,
    pub refresh_ahead: Option<String>,
}

#[derive(Debug)]
pub struct Settings {
    pub max_entries: u64,
    pub expiry_margin: Duration,
    /// How long a definite refusal by the token service is remembered (0: not at all).
    pub negative_ttl: Duration,
    /// A hit this close to the cache expiry refreshes the token in the background (0: never).
    pub refresh_ahead: Duration,
}

impl Raw {
    /// The `cache:` section, its problems added to `errors`.
    pub(crate) fn validate(self, errors: &mut Errors) -> Settings {
        let settings = Settings {
            max_entries: self.max_entries.unwrap_or(100_000),
            expiry_margin: duration(
                self.expiry_margin.as_deref(),
                "cache.expiry_margin",
                Duration::from_secs(30),
                errors,
            ),
            negative_ttl: duration(
                self.negative_ttl.as_deref(),
                "cache.negative_ttl",
                Duration::from_secs(5),
                errors,
            ),
            refresh_ahead: duration(
                self.refresh_ahead.as_deref(),
                "cache.refresh_ahead",
                Duration::from_secs(60),
                errors,
            ),
        };
        if settings.max_entries == 0 {
            errors.add("cache.max_entries", "must be at least 1");
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const NOW: u64 = 1_700_000_000;

    fn down(why: &'static str) -> Denial {
        Denial::new(baton_decide::reason::Reason::TokenServiceTimeout, why)
    }

    fn delegated(lifetimes: Lifetimes, margin: u64) -> Delegated {
        issued_at(NOW, lifetimes, margin)
    }

    fn issued_at(now: u64, lifetimes: Lifetimes, margin: u64) -> Delegated {
        Delegated::new(
            Secret::new("tok"),
            "Bearer".into(),
            None,
            None,
            lifetimes,
            Duration::from_secs(margin),
            now,
        )
    }

    /// A token exchanged now (the cache checks expiry against the clock), kept `ttl` seconds.
    fn kept_for(ttl: u64) -> Arc<Delegated> {
        let lifetimes = Lifetimes {
            expires_in: Some(ttl + 30),
            ..Default::default()
        };
        Arc::new(issued_at(unix_now(), lifetimes, 30))
    }

    #[test]
    fn ttl_is_the_shortest_lifetime_minus_the_margin() {
        let l = |expires_in, issued, subject| Lifetimes {
            expires_in,
            issued_exp: issued,
            subject_exp: subject,
            max: None,
        };
        let secs = |d: Delegated| d.ttl().as_secs();
        assert_eq!(secs(delegated(l(Some(300), None, None), 30)), 270);
        assert_eq!(secs(delegated(l(Some(300), Some(NOW as i64 + 100), None), 30)), 70);
        assert_eq!(
            secs(delegated(
                l(Some(300), Some(NOW as i64 + 100), Some(NOW as i64 + 50)),
                30
            )),
            20
        );
        assert_eq!(
            secs(delegated(l(Some(20), None, None), 30)),
            0,
            "shorter than the margin: not kept"
        );
        assert_eq!(
            secs(delegated(l(None, None, Some(NOW as i64 - 10)), 0)),
            0,
            "subject already expired"
        );
        assert_eq!(
            secs(delegated(l(None, None, None), 30)),
            0,
            "no lifetime known: not kept"
        );
        let capped = Lifetimes {
            max: Some(60),
            ..l(Some(300), None, None)
        };
        assert_eq!(secs(delegated(capped, 30)), 30, "max_token_lifetime caps it");
        let d = delegated(l(Some(300), None, None), 30);
        assert_eq!(d.expires_at, NOW + 270);
        assert_eq!(d.authorization.expose(), "Bearer tok");
    }

    #[test]
    fn what_the_token_service_said_and_the_claims_read_back_as_given() {
        let issued = |token_type: &str, issued_token_type: Option<&str>, scope: Option<&str>| {
            Delegated::new(
                Secret::new("tok".to_owned()),
                token_type.to_owned(),
                issued_token_type.map(str::to_owned),
                scope.map(str::to_owned),
                Lifetimes::default(),
                Duration::ZERO,
                NOW,
            )
        };
        let bare = issued("Bearer", None, None)
            .with_claims(DelegationClaims::default())
            .with_actors(Vec::new());
        assert!(bare.about.is_none(), "a bare token keeps nothing beside it");
        assert_eq!(
            (bare.token_type(), bare.issued_token_type(), bare.scope()),
            ("Bearer", None, None)
        );
        assert_eq!(bare.claims(), Claims::default());

        let jwt = "urn:ietf:params:oauth:token-type:jwt";
        let d = issued("DPoP", Some(jwt), Some("")).with_actors(vec!["svc-b".into(), "svc-a".into()]);
        assert_eq!(d.token_type(), "DPoP", "an unknown type is kept as text");
        assert_eq!(d.issued_token_type(), Some(jwt), "a known one as a byte");
        assert_eq!(d.scope(), Some(""), "an empty scope is not an absent one");
        let claims = DelegationClaims {
            subject_iss: Some("https://idp".into()),
            subject_sub: Some("alice".into()),
            jti: Some("j-1".into()),
            exp: Some(1_700_000_000),
            scope: Some("not kept: the token service named the scope".into()),
            requested_scope: Some("orders.read".into()),
        };
        let d = d.with_claims(claims);
        assert_eq!(
            d.claims(),
            Claims {
                subject_iss: Some("https://idp"),
                subject_sub: Some("alice"),
                jti: Some("j-1"),
                exp: Some(1_700_000_000),
                scope: None,
                requested_scope: Some("orders.read"),
            }
        );
        assert_eq!(
            (d.token_type(), d.issued_token_type(), d.scope()),
            ("DPoP", Some(jwt), Some(""))
        );
        assert_eq!(d.actors(), ["svc-b".into(), "svc-a".into()] as [Box<str>; 2]);

        let claim_scope = DelegationClaims {
            scope: Some("orders.read".into()),
            ..Default::default()
        };
        assert_eq!(
            issued("Bearer", None, None).with_claims(claim_scope).claims().scope,
            Some("orders.read"),
            "the issued token's scope claim stands in when the token service named none"
        );
    }

    #[test]
    fn a_refresh_is_claimed_once_inside_the_window() {
        let kept = |ttl_source: u64| {
            delegated(
                Lifetimes {
                    expires_in: Some(ttl_source),
                    ..Default::default()
                },
                30,
            )
        };
        // Kept 270 s with a 60 s window: refresh from 210 s on, by one caller only.
        let d = kept(300).refresh_ahead(Duration::from_secs(60));
        assert!(!d.claim_refresh(NOW + 209));
        assert!(d.claim_refresh(NOW + 210));
        assert!(!d.claim_refresh(NOW + 211), "only one refresh per entry");
        // Kept 10 s, shorter than the window: from half its time.
        let short = kept(40).refresh_ahead(Duration::from_secs(60));
        assert!(!short.claim_refresh(NOW + 4));
        assert!(short.claim_refresh(NOW + 5));
        // Off, and never for a token that is not kept.
        assert!(!kept(300).refresh_ahead(Duration::ZERO).claim_refresh(NOW + 1000));
        assert!(
            !kept(20)
                .refresh_ahead(Duration::from_secs(60))
                .claim_refresh(NOW + 1000)
        );
    }

    #[test]
    fn keys_differ_for_every_input() {
        let a = params_digest(&["client", "aud-a", "", "scope"]);
        let b = params_digest(&["client", "aud-b", "", "scope"]);
        let shifted = params_digest(&["client", "aud-a", "scope", ""]);
        assert_ne!(a, b);
        assert_ne!(a, shifted, "length prefixes keep fields apart");
        let (alice, bob) = (digest("alice-token"), digest("bob-token"));
        assert_ne!(key(&a, "", &alice), key(&b, "", &alice));
        assert_ne!(key(&a, "", &alice), key(&a, "", &bob));
        assert_ne!(
            key(&a, "", &alice),
            key(&a, "orders.read", &alice),
            "a narrowed scope is another token"
        );
        assert_eq!(key(&a, "", &alice), key(&a, "", &alice));
    }

    #[tokio::test]
    async fn never_holds_more_than_max_entries() {
        for max in [1, 31, 500, 1000] {
            let cache = TokenCache::new(max, Duration::ZERO);
            for i in 0..3 * max {
                let key = digest(&format!("user {i}"));
                cache
                    .get_or_exchange(key, &Constraints::default(), async { Ok(kept_for(60)) })
                    .await
                    .expect("exchange");
                assert!(
                    cache.entry_count() <= max,
                    "{} held by a cache of {max}",
                    cache.entry_count()
                );
            }
            assert!(
                cache.entry_count() >= max * 9 / 10,
                "{} held by a cache of {max}",
                cache.entry_count()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_exchange() {
        let cache = Arc::new(TokenCache::new(100, Duration::ZERO));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_exchange([7; 32], &Constraints::default(), async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Denial>(kept_for(570))
                    })
                    .await
                    .map(|(_, status)| status)
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.expect("task").expect("exchange"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(statuses.iter().filter(|s| **s == CacheStatus::Miss).count(), 1);
        let (_, again) = cache
            .get_or_exchange([7; 32], &Constraints::default(), async { Err(down("must not run")) })
            .await
            .expect("hit");
        assert_eq!(again, CacheStatus::Hit);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_failure() {
        let cache = Arc::new(TokenCache::new(100, Duration::ZERO));
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_exchange([9; 32], &Constraints::default(), async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err(down("down"))
                        })
                        .await
                        .is_err()
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.expect("task"), "every waiter gets the failure");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.entry_count(), 0, "a failure is not kept");
    }

    #[tokio::test]
    async fn only_definite_refusals_are_remembered() {
        use baton_decide::reason::Reason;
        let cache = TokenCache::new(100, Duration::from_secs(60));
        cache.remember_refusal([1; 32], &Denial::new(Reason::TargetRefused, "no"));
        cache.remember_refusal([2; 32], &Denial::new(Reason::TokenServiceTimeout, "slow"));
        assert_eq!(cache.refused(&[1; 32]).map(|d| d.reason), Some(Reason::TargetRefused));
        assert_eq!(cache.refused(&[2; 32]), None, "a failure to answer may pass next time");
        let off = TokenCache::new(100, Duration::ZERO);
        off.remember_refusal([1; 32], &Denial::new(Reason::TargetRefused, "no"));
        assert_eq!(off.refused(&[1; 32]), None);
    }

    #[test]
    fn expiring_entries_are_served_until_their_own_expiry_only() {
        let cache = Expiring::new(100);
        let now = SystemTime::now();
        let later = now + Duration::from_secs(10);
        cache.insert([1; 32], "kept", later);
        cache.insert([2; 32], "already expired", now - Duration::from_secs(1));
        assert_eq!(cache.get(&[1; 32], now), Some("kept"));
        assert_eq!(cache.get(&[2; 32], now), None);
        assert_eq!(cache.entry_count(), 1, "an expired value is not kept");
        assert_eq!(cache.get(&[1; 32], later), None, "not at its expiry");
        assert_eq!(cache.entry_count(), 0, "removed when read expired");
        assert_eq!(at_unix(-5), UNIX_EPOCH);
        assert_eq!(at_unix(7), UNIX_EPOCH + Duration::from_secs(7));
    }

    #[tokio::test]
    async fn a_replaced_token_stays_for_its_own_lifetime() {
        let cache = TokenCache::new(100, Duration::ZERO);
        // By whole seconds of the wall clock: the first, kept 3 s, is gone within (2 s, 3 s]; the
        // one that replaces it 1 s later, kept 5 s, stays until past 5 s from the start.
        cache
            .get_or_exchange([3; 32], &Constraints::default(), async { Ok(kept_for(3)) })
            .await
            .expect("exchange");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        cache.replace([3; 32], kept_for(5));
        tokio::time::sleep(Duration::from_millis(2050)).await;
        let (_, status) = cache
            .get_or_exchange([3; 32], &Constraints::default(), async {
                Err(down("must not exchange"))
            })
            .await
            .expect("the refreshed token is served");
        assert_eq!(status, CacheStatus::Hit);
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_expired_entries_are_not_served() {
        let cache = TokenCache::new(100, Duration::ZERO);
        let err = cache
            .get_or_exchange([1; 32], &Constraints::default(), async { Err(down("down")) })
            .await;
        assert_eq!(err.map(|_| ()).map_err(|e| e.description.clone()), Err("down".into()));
        let short = || async { Ok::<_, Denial>(kept_for(1)) };
        let (_, first) = cache
            .get_or_exchange([1; 32], &Constraints::default(), short())
            .await
            .expect("exchange");
        assert_eq!(first, CacheStatus::Miss);
        // A ttl of 1 s: gone after it, so the next call exchanges again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (_, second) = cache
            .get_or_exchange([1; 32], &Constraints::default(), short())
            .await
            .expect("exchange");
        assert_eq!(second, CacheStatus::Miss);
        let zero = || async {
            let lifetimes = Lifetimes {
                expires_in: Some(5),
                ..Default::default()
            };
            Ok::<_, Denial>(Arc::new(issued_at(unix_now(), lifetimes, 30)))
        };
        cache
            .get_or_exchange([2; 32], &Constraints::default(), zero())
            .await
            .expect("exchange");
        let (_, again) = cache
            .get_or_exchange([2; 32], &Constraints::default(), zero())
            .await
            .expect("exchange");
        assert_eq!(
            again,
            CacheStatus::Miss,
            "a token shorter than the margin is never served from the cache"
        );
    }

    // === Issue 12 section 4: no destination is served a token that breaks its constraints ===

    /// A destination of the property test: an audience shared with others, and its limits.
    #[derive(Clone, Debug)]
    struct Dest {
        audience: &'static str,
        constraints: Constraints,
    }

    /// Which layer keeps tokens where they belong in a run.
    #[derive(Clone, Copy, Debug)]
    enum Layers {
        /// What Baton does: the key covers the destination, and each hit is checked.
        Both,
        /// Keys by audience only (as before issue 12), the check on each hit alone.
        CheckOnly,
        /// The key alone, no check on a hit.
        KeyOnly,
    }

    /// One step: a request by a user for a destination (a miss exchanges now, a token `depth`
    /// deep), or, with `earlier`, what that destination's exchange (or refresh ahead) `age` seconds
    /// ago left in the cache: the clock moves only through the entries' ages.
    #[derive(Clone, Debug)]
    struct Step {
        dest: usize,
        user: usize,
        age: u64,
        depth: usize,
        earlier: bool,
    }

    fn dest_strategy() -> impl proptest::strategy::Strategy<Value = Dest> {
        use proptest::prelude::*;
        (
            prop::sample::select(vec!["https://a.example", "https://b.example"]),
            prop::option::of(0usize..3),
            prop::option::of(1u64..8),
        )
            .prop_map(|(audience, max_delegation_depth, max_token_lifetime)| Dest {
                audience,
                constraints: Constraints {
                    max_delegation_depth,
                    max_token_lifetime,
                },
            })
    }

    fn step_strategy(dests: usize) -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        (0..dests, 0usize..2, 0u64..10, 0usize..4, prop::bool::weighted(0.2)).prop_map(
            |(dest, user, age, depth, earlier)| Step {
                dest,
                user,
                age,
                depth,
                earlier,
            },
        )
    }

    /// What the exchange for `dest` does (as `Authz::exchange`): a token deeper than the
    /// destination allows is refused, and its stay is capped by `max_token_lifetime`.
    fn exchanged(dest: &Dest, step: &Step, age: u64) -> Result<Arc<Delegated>, Denial> {
        if dest
            .constraints
            .max_delegation_depth
            .is_some_and(|max| step.depth > max)
        {
            return Err(Denial::new(baton_decide::reason::Reason::DelegationTooDeep, "too deep"));
        }
        let lifetimes = Lifetimes {
            expires_in: Some(300),
            max: dest.constraints.max_token_lifetime,
            ..Default::default()
        };
        let token = issued_at(unix_now() - age, lifetimes, 0).with_actors(vec!["svc".into(); step.depth]);
        Ok(Arc::new(token))
    }

    /// The rule, written out on its own (not `Constraints::permits`): the chain no longer than
    /// the destination's depth, the token younger than its lifetime.
    fn meets(dest: &Dest, token: &Delegated, now: u64) -> bool {
        let c = dest.constraints;
        c.max_delegation_depth.is_none_or(|max| token.actors().len() <= max)
            && c.max_token_lifetime.is_none_or(|max| now - token.issued_at() < max)
    }

    async fn run(dests: &[Dest], steps: &[Step], layers: Layers) -> Result<(), String> {
        let cache = TokenCache::new(1000, Duration::ZERO);
        for step in steps {
            let dest = &dests[step.dest];
            let params = match layers {
                Layers::CheckOnly => params_digest(&[dest.audience]),
                Layers::Both | Layers::KeyOnly => {
                    destination_key(&format!("dest-{}", step.dest), &dest.constraints, &[dest.audience])
                }
            };
            let key = key(&params, "", &digest(&format!("user-{}", step.user)));
            let constraints = match layers {
                Layers::KeyOnly => Constraints::default(),
                Layers::Both | Layers::CheckOnly => dest.constraints,
            };
            if step.earlier {
                if let Ok(earlier) = exchanged(dest, step, step.age) {
                    cache.replace(key, earlier);
                }
                continue;
            }
            // Judged as of before the request: a served token was servable then or later.
            let now = unix_now();
            if let Ok((token, status)) = cache
                .get_or_exchange(key, &constraints, async { exchanged(dest, step, 0) })
                .await
                && !meets(dest, &token, now)
            {
                return Err(format!(
                    "{step:?} ({status:?}) served a token of depth {} issued at {} to {dest:?}",
                    token.actors().len(),
                    token.issued_at()
                ));
            }
        }
        Ok(())
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Random destinations sharing audiences with different limits, random request orders:
        /// with the key and the check on each hit, and with either layer alone, no destination is
        /// ever served a token that breaks its constraints.
        #[test]
        fn no_destination_is_served_a_token_that_breaks_its_constraints(
            (dests, steps) in proptest::collection::vec(dest_strategy(), 2..6)
                .prop_flat_map(|dests| {
                    let n = dests.len();
                    (proptest::strategy::Just(dests), proptest::collection::vec(step_strategy(n), 1..40))
                })
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
            for layers in [Layers::Both, Layers::CheckOnly, Layers::KeyOnly] {
                let outcome = runtime.block_on(run(&dests, &steps, layers));
                if let Err(wrong) = outcome {
                    proptest::prop_assert!(false, "{layers:?}: {wrong}");
                }
            }
        }
    }

    /// The property test's premise: with keys by audience and no check, as before issue 12, a
    /// destination is served another's token (so the property can fail).
    #[tokio::test]
    async fn without_either_layer_a_shared_audience_leaks_limits() {
        let dests = [
            Dest {
                audience: "https://a.example",
                constraints: Constraints::default(),
            },
            Dest {
                audience: "https://a.example",
                constraints: Constraints {
                    max_delegation_depth: Some(0),
                    max_token_lifetime: Some(3),
                },
            },
        ];
        let cache = TokenCache::new(100, Duration::ZERO);
        let key = key(&params_digest(&["https://a.example"]), "", &digest("user"));
        let step = Step {
            dest: 0,
            user: 0,
            age: 5,
            depth: 1,
            earlier: true,
        };
        // a's token, exchanged 5 s ago.
        cache.replace(key, exchanged(&dests[0], &step, step.age).expect("a"));
        let (served, status) = cache
            .get_or_exchange(key, &Constraints::default(), async { exchanged(&dests[1], &step, 0) })
            .await
            .expect("b");
        assert_eq!(status, CacheStatus::Hit);
        assert!(
            !meets(&dests[1], &served, unix_now()),
            "the unguarded cache hands b a's token"
        );
        let (served, _) = cache
            .get_or_exchange(key, &dests[1].constraints, async {
                exchanged(&dests[1], &Step { depth: 0, ..step }, 0)
            })
            .await
            .expect("b, checked");
        assert!(
            meets(&dests[1], &served, unix_now()),
            "checked on the hit: exchanged again"
        );
    }
}
