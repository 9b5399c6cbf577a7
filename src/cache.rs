//! Exchanged tokens, kept until shortly before they expire. The key is a SHA-256 digest over every
//! exchange input (the destination's parameters and the subject token), so a raw token is never a
//! key and a token for one destination is never served for another. Concurrent misses for one key
//! share one exchange. An entry is never served past `min(expires_in, issued exp, subject exp) - margin`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use moka::Expiry;

use crate::secret::Secret;

const BEARER: &str = "Bearer ";

/// SHA-256 over the exchange inputs.
pub type Key = [u8; 32];

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

/// A token ready to hand to Envoy.
#[derive(Debug)]
pub struct Delegated {
    /// `Bearer <token>`, built once so a hit does not format it again; the token itself is the same
    /// bytes after the prefix (kept once: it is most of an entry's memory).
    pub authorization: Secret,
    pub issued_token_type: Option<String>,
    pub token_type: String,
    pub scope: Option<String>,
    /// When the cache stops serving it (Unix seconds).
    pub expires_at: u64,
    /// The delegation chain in the issued token's `act`, current actor first.
    pub actors: Vec<String>,
    /// Who it is for and what was asked and issued, for audit and traces; read once, at exchange time.
    pub claims: crate::jwt::DelegationClaims,
    ttl: Duration,
    /// From when a hit starts a background refresh (Unix seconds); `u64::MAX`: never.
    refresh_at: u64,
    /// Set by the one hit that starts the refresh, so there is at most one per entry.
    refresh_claimed: std::sync::atomic::AtomicBool,
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
        let ttl = remaining.map_or(Duration::ZERO, |s| Duration::from_secs(s).saturating_sub(margin));
        let authorization = Secret::new(format!("{BEARER}{}", token.expose()));
        Self {
            authorization,
            issued_token_type,
            token_type,
            scope,
            expires_at: now + ttl.as_secs(),
            actors: Vec::new(),
            claims: crate::jwt::DelegationClaims::default(),
            ttl,
            refresh_at: u64::MAX,
            refresh_claimed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Refresh ahead: a hit within `window` of the cache expiry (or, for a token kept less than
    /// that, past half its time) starts one background exchange, so a steady stream of requests
    /// never waits on one at expiry. A zero window turns it off.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        let ttl = self.ttl.as_secs();
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

    /// True for the one caller that should start this entry's refresh now.
    pub fn claim_refresh(&self, now: u64) -> bool {
        now >= self.refresh_at && !self.refresh_claimed.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    pub fn with_claims(mut self, claims: crate::jwt::DelegationClaims) -> Self {
        self.claims = claims;
        self
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
        self.ttl
    }
}

struct EntryTtl;

impl Expiry<Key, Arc<Delegated>> for EntryTtl {
    fn expire_after_create(&self, _key: &Key, value: &Arc<Delegated>, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    /// A refreshed token replacing the old one gets its own stay. (moka's default keeps the old
    /// entry's expiry, which dropped every refreshed token when the one it replaced expired.)
    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Arc<Delegated>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The bounded, coalescing token cache.
pub struct TokenCache {
    inner: moka::future::Cache<Key, Arc<Delegated>>,
    /// Definite refusals by the token service, remembered briefly so a client retrying a refused
    /// request does not hammer it.
    refusals: Option<moka::future::Cache<Key, crate::reason::Denial>>,
    max_entries: u64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.inner.entry_count())
            .finish()
    }
}

impl TokenCache {
    pub fn new(max_entries: u64, negative_ttl: Duration) -> Self {
        let inner = moka::future::Cache::builder()
            .max_capacity(max_entries)
            .expire_after(EntryTtl)
            .build();
        let refusals = (!negative_ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(negative_ttl)
                .build()
        });
        Self {
            inner,
            refusals,
            max_entries,
        }
    }

    /// Put a refreshed token in place of the old one.
    pub async fn replace(&self, key: Key, fresh: Arc<Delegated>) {
        self.inner.insert(key, fresh).await;
    }

    /// A refusal remembered for `key`, if any.
    pub async fn refused(&self, key: &Key) -> Option<crate::reason::Denial> {
        self.refusals.as_ref()?.get(key).await
    }

    /// Remember `denial` for `key` if it is a definite refusal (the same request would be refused
    /// again), not a failure that may pass.
    pub async fn remember_refusal(&self, key: Key, denial: &crate::reason::Denial) {
        if let Some(refusals) = &self.refusals
            && denial.reason.is_definite_refusal()
        {
            refusals.insert(key, denial.clone()).await;
        }
    }

    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// The cached token for `key`, or the one `exchange` produces. Concurrent callers with the same
    /// key wait for a single `exchange`; an error is returned to all of them and not cached.
    pub async fn get_or_exchange<E, F>(&self, key: Key, exchange: F) -> Result<(Arc<Delegated>, CacheStatus), Arc<E>>
    where
        F: Future<Output = Result<Arc<Delegated>, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(hit) = self.inner.get(&key).await {
            return Ok((hit, CacheStatus::Hit));
        }
        let entry = self.inner.entry(key).or_try_insert_with(exchange).await?;
        let status = if entry.is_fresh() {
            CacheStatus::Miss
        } else {
            CacheStatus::Coalesced
        };
        Ok((entry.into_value(), status))
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// The exact number of live entries, after applying pending evictions (for `/metrics`; not for the
    /// request path).
    pub async fn entries(&self) -> u64 {
        self.inner.run_pending_tasks().await;
        self.inner.entry_count()
    }
}

/// Digest of the parameters that, with the subject token, identify an exchange. Each field is
/// length-prefixed so no two inputs can collide by moving a boundary.
pub fn params_digest(fields: &[&str]) -> Key {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for field in fields {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    to_key(ctx.finish())
}

/// SHA-256 of a subject token: computed once per request, it keys both the verification cache
/// and (inside `key`) the token cache.
pub fn digest(subject_token: &str) -> Key {
    to_key(digest::digest(&digest::SHA256, subject_token.as_bytes()))
}

/// The cache key: the destination's parameter digest, the scope asked for when policy narrowed it
/// (else empty), then the subject token's digest.
pub fn key(params: &Key, scope: &str, subject_digest: &Key) -> Key {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(params);
    ctx.update(&(scope.len() as u64).to_be_bytes());
    ctx.update(scope.as_bytes());
    ctx.update(subject_digest);
    to_key(ctx.finish())
}

fn to_key(d: digest::Digest) -> Key {
    let mut key = [0u8; 32];
    key.copy_from_slice(d.as_ref());
    key
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const NOW: u64 = 1_700_000_000;

    fn delegated(lifetimes: Lifetimes, margin: u64) -> Delegated {
        Delegated::new(
            Secret::new("tok"),
            "Bearer".into(),
            None,
            None,
            lifetimes,
            Duration::from_secs(margin),
            NOW,
        )
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_exchange() {
        let cache = Arc::new(TokenCache::new(100, Duration::ZERO));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_exchange([7; 32], async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, std::convert::Infallible>(Arc::new(delegated(
                            Lifetimes {
                                expires_in: Some(600),
                                ..Default::default()
                            },
                            30,
                        )))
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
            .get_or_exchange([7; 32], async { Err::<Arc<Delegated>, _>("must not run") })
            .await
            .expect("hit");
        assert_eq!(again, CacheStatus::Hit);
    }

    #[tokio::test]
    async fn only_definite_refusals_are_remembered() {
        use crate::reason::{Denial, Reason};
        let cache = TokenCache::new(100, Duration::from_secs(60));
        cache
            .remember_refusal([1; 32], &Denial::new(Reason::TargetRefused, "no"))
            .await;
        cache
            .remember_refusal([2; 32], &Denial::new(Reason::TokenServiceTimeout, "slow"))
            .await;
        assert_eq!(
            cache.refused(&[1; 32]).await.map(|d| d.reason),
            Some(Reason::TargetRefused)
        );
        assert_eq!(
            cache.refused(&[2; 32]).await,
            None,
            "a failure to answer may pass next time"
        );
        let off = TokenCache::new(100, Duration::ZERO);
        off.remember_refusal([1; 32], &Denial::new(Reason::TargetRefused, "no"))
            .await;
        assert_eq!(off.refused(&[1; 32]).await, None);
    }

    #[tokio::test]
    async fn a_replaced_token_stays_for_its_own_lifetime() {
        let cache = TokenCache::new(100, Duration::ZERO);
        // Kept 2 s each (expires_in 32, margin 30).
        let kept_2s = || {
            Arc::new(delegated(
                Lifetimes {
                    expires_in: Some(32),
                    ..Default::default()
                },
                30,
            ))
        };
        cache
            .get_or_exchange([3; 32], async { Ok::<_, &str>(kept_2s()) })
            .await
            .expect("exchange");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        cache.replace([3; 32], kept_2s()).await;
        // Past the first token's expiry, within the second's.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, status) = cache
            .get_or_exchange([3; 32], async { Err::<Arc<Delegated>, _>("must not exchange") })
            .await
            .expect("the refreshed token is served");
        assert_eq!(status, CacheStatus::Hit);
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_expired_entries_are_not_served() {
        let cache = TokenCache::new(100, Duration::ZERO);
        let err = cache
            .get_or_exchange([1; 32], async { Err::<Arc<Delegated>, _>("down") })
            .await;
        assert_eq!(err.map(|_| ()).map_err(|e| *e), Err("down"));
        let short = || async {
            Ok::<_, &str>(Arc::new(delegated(
                Lifetimes {
                    expires_in: Some(31),
                    ..Default::default()
                },
                30,
            )))
        };
        let (_, first) = cache.get_or_exchange([1; 32], short()).await.expect("exchange");
        assert_eq!(first, CacheStatus::Miss);
        // A ttl of 1 s: gone after it, so the next call exchanges again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (_, second) = cache.get_or_exchange([1; 32], short()).await.expect("exchange");
        assert_eq!(second, CacheStatus::Miss);
        let zero = || async {
            Ok::<_, &str>(Arc::new(delegated(
                Lifetimes {
                    expires_in: Some(5),
                    ..Default::default()
                },
                30,
            )))
        };
        cache.get_or_exchange([2; 32], zero()).await.expect("exchange");
        let (_, again) = cache.get_or_exchange([2; 32], zero()).await.expect("exchange");
        assert_eq!(
            again,
            CacheStatus::Miss,
            "a token shorter than the margin is never served from the cache"
        );
    }
}
