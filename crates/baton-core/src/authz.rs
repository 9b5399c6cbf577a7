//! The core decision, shared by Envoy's Check and Baton's own broker API. `decide` reads as the data
//! path: destination -> subject token -> verify -> policy -> cache / exchange. It returns a decision
//! or a `Denial`; turning either into a reply is `respond`'s job. It never logs a token: only
//! fingerprints.

use arc_swap::ArcSwap;
use std::ops::ControlFlow;
use std::sync::Arc;

use tracing::Instrument as _;

use crate::actor::{self, ActorToken};
use crate::cache::{self, CacheStatus, Delegated, Key, Lifetimes, TokenCache};
use crate::callers::Settings as Broker;
use crate::config::{Config, MissingToken, UnknownDestination};
use crate::decision::{Allow, Destination};
use crate::destination::DestinationActor;
use crate::exchange::{ExchangeError, Target, TokenServices};
use crate::issued;
use crate::jwt;
use crate::revocation::{self, Holder, Selector};
use crate::secret::fingerprint;
use crate::telemetry::Telemetry;
use crate::verify::{Subject, Verified, Verifier};
use baton_decide::canonical;
use baton_decide::policy::{Facts, Rule, Verdict};
use baton_decide::reason::{Denial, Reason};
use baton_decide::request::{self, Headers, Outbound};
use baton_decide::route::{HostMatch, Routes};

/// The running decision core, replaced whole on reload (see `reload`); the servers load it once
/// per request, so a request finishes on the core it started with.
pub type Current = Arc<ArcSwap<Authz>>;

/// Who asks, and for which request: what the policy looks at besides the subject token.
#[derive(Debug)]
pub struct Caller<'a> {
    /// The calling workload (Envoy's source principal, `workload.identity`, or the broker caller).
    pub source: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Headers<'a>,
}

/// Where `admit` leaves a request.
#[derive(Debug)]
pub enum Admitted<'a> {
    /// Decided before any token is looked at.
    Settled(Allow, Settled),
    /// A configured destination and a well-formed bearer token: verify, policy, exchange follow.
    Delegate {
        destination: &'a Arc<Destination>,
        matched: Matched<'a>,
        subject_token: &'a str,
        caller: Caller<'a>,
    },
}

/// Why a request was let go without an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// No destination's hosts match the authority: `unknown_destination`.
    UnknownDestination,
    /// The authority has no canonical form, so it matches no destination: stripped.
    AuthorityMalformed,
    /// A configured destination, no `Authorization`: `missing_token: passthrough`.
    MissingToken,
}

/// How the destination was found: named by the Envoy route, and/or by the host pattern that matched.
#[derive(Clone, Copy, Debug)]
pub struct Matched<'a> {
    pub by_route: bool,
    pub host: Option<HostMatch<'a>>,
}

/// Everything the decision needs, built once from the configuration.
#[derive(Debug)]
pub struct Authz {
    routes: Routes<Destination>,
    cache: Arc<TokenCache>,
    token_services: TokenServices,
    unknown_destination: UnknownDestination,
    missing_token: MissingToken,
    max_token_bytes: usize,
    expiry_margin: std::time::Duration,
    refresh_ahead: std::time::Duration,
    verifier: Option<Arc<Verifier>>,
    actor: Option<ActorToken>,
    workload_identity: Option<String>,
    /// `None`: no `broker:` section, the broker API is off.
    pub broker: Option<Broker>,
    /// What is revoked, shared across reloads; `revocation`'s settings (the admin secret).
    revocations: Arc<revocation::Store>,
    revocation: revocation::Settings,
    /// `None`: no `backchannel_logout:` section.
    backchannel_logout: Option<crate::logout::Settings>,
    telemetry: Telemetry,
    /// The Shared Signals receiver (`ssf:`), built by the composition (`with_ssf`).
    ssf: Option<Arc<crate::ssf::Receiver>>,
    /// Itself, once shared, so a hit can start a background refresh that outlives the request.
    me: std::sync::Weak<Authz>,
    /// `None`: no `deferred:` section, Defer and Redeem are off (see `deferred`).
    pub deferred: Option<crate::deferred::Deferred>,
    /// The workload's DPoP key (`binding: dpop` destinations) and `bound_subject_tokens`.
    dpop: Arc<crate::dpop::Keyring>,
    bound_subject_tokens: crate::dpop::BoundSubjectTokens,
}

impl Authz {
    /// `token_services` holds every service a destination names (config validation saw to it).
    pub fn new(config: Config, token_services: TokenServices, verifier: Option<Arc<Verifier>>) -> Self {
        let subject_token_type = config.subject_token.token_type;
        let deferred = config
            .deferred
            .and_then(|d| crate::deferred::Deferred::new(d, &token_services, subject_token_type));
        let has_actor = config.actor.is_some();
        let routes = Routes::new(config.destinations.into_iter().filter_map(|d| {
            let target = target(&d, subject_token_type);
            let name = d.name.clone();
            let hosts = d.hosts.clone();
            let use_actor = has_actor && d.actor == DestinationActor::Inherit;
            let token_service = token_services.get(&d.token_service)?.clone();
            let mut route = Destination::new(
                d.name.into(),
                target,
                d.scopes,
                Arc::new(d.policy),
                use_actor,
                token_service,
            )
            .with_verify_issued(d.verify_issued)
            .with_binding(d.binding, d.upstream_scheme);
            route.broker_allowed_scopes = d.broker_allowed_scopes.into();
            Some((name, hosts, route))
        }));
        Self {
            routes,
            cache: Arc::new(TokenCache::new(config.cache.max_entries, config.cache.negative_ttl)),
            token_services,
            unknown_destination: config.unknown_destination,
            missing_token: config.missing_token,
            max_token_bytes: config.subject_token.max_bytes,
            expiry_margin: config.cache.expiry_margin,
            refresh_ahead: config.cache.refresh_ahead,
            verifier,
            actor: config.actor,
            workload_identity: config.workload_identity,
            broker: config.broker,
            revocations: Arc::new(revocation::Store::new(&config.revocation)),
            revocation: config.revocation,
            backchannel_logout: config.backchannel_logout,
            telemetry: Telemetry::off(),
            ssf: None,
            me: std::sync::Weak::new(),
            deferred,
            dpop: Arc::new(crate::dpop::Keyring::new(&config.dpop)),
            bound_subject_tokens: config.dpop.bound_subject_tokens,
        }
    }

    /// Keep an earlier configuration's DPoP key when this one names the same source (the same
    /// file, or none: a generated key survives a reload, only a restart rotates it), so a reload
    /// does not orphan every bound token in the cache.
    pub fn with_dpop_of(mut self, previous: &Authz) -> Self {
        if previous.dpop.same_source(&self.dpop) {
            self.dpop = previous.dpop.clone();
        }
        self
    }

    /// The DPoP key a request to `route` is bound to now, if its binding is `dpop`.
    fn signer(&self, route: &Destination) -> Option<Arc<crate::dpop::SigningKey>> {
        (route.binding == crate::destination::Binding::Dpop).then(|| self.dpop.current())
    }

    /// Share it; only a shared `Authz` refreshes tokens ahead of their expiry.
    pub fn into_shared(self) -> Arc<Self> {
        Arc::new_cyclic(|me| Self { me: me.clone(), ..self })
    }

    /// Report through `telemetry` (metrics, traces, audit) instead of a private, unexported one.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Receive Shared Signals through `receiver`.
    pub fn with_ssf(mut self, receiver: Arc<crate::ssf::Receiver>) -> Self {
        self.ssf = Some(receiver);
        self
    }

    pub fn ssf(&self) -> Option<&Arc<crate::ssf::Receiver>> {
        self.ssf.as_ref()
    }

    /// The calling workload when Envoy names none (`workload_identity`), as the policy sees it.
    pub fn workload_identity(&self) -> Option<&str> {
        self.workload_identity.as_deref()
    }

    pub fn token_services(&self) -> &TokenServices {
        &self.token_services
    }

    /// Keep serving the tokens of an earlier configuration's cache (a reload).
    pub fn with_cache(mut self, cache: Arc<TokenCache>) -> Self {
        self.cache = cache;
        self
    }

    /// Share an earlier configuration's revocations (a reload must not forget one, not even one
    /// made while it runs), under this configuration's `remember` and `max_entries`.
    pub fn with_revocations_of(mut self, previous: &Authz) -> Self {
        previous.revocations.configure(&self.revocation);
        self.revocations = previous.revocations.clone();
        // In-proxy filters drop what they cached under the previous configuration.
        self.revocations.bump();
        self
    }

    pub fn revocations(&self) -> &revocation::Store {
        &self.revocations
    }

    /// `revocation:`: whether, and to whom, `POST /revoke` answers.
    pub fn revocation_settings(&self) -> &revocation::Settings {
        &self.revocation
    }

    /// End the authority of whoever `selector` names, from `event` (`operator`, ...): remembered
    /// first, so a decision from now on refuses them, then every cached token, verified subject and
    /// introspection answer of theirs purged (an exchange finishing later is checked again before
    /// it is served or kept). The entries purged; refused, with nothing changed, when the store is full.
    pub fn revoke(&self, event: &'static str, selector: &Selector) -> Result<usize, revocation::StoreError> {
        let span = tracing::info_span!(
            "revocation",
            event,
            kind = selector.kind(),
            purged = tracing::field::Empty
        );
        let _entered = span.enter();
        if selector.is_remembered()
            && let Err(full) = self.revocations.revoke(selector, crate::clock::unix_now())
        {
            tracing::warn!(event, kind = selector.kind(), error = %full, "revocation refused");
            self.telemetry.revocation(event, selector, "full", 0, &self.revocations);
            return Err(full);
        }
        let everything = *selector == Selector::All;
        let named = |holder: &Holder<'_>| revocation::names(selector, holder);
        let purged = match selector {
            // A destination's tokens only: its users' verified subjects stay (nobody was revoked).
            Selector::Destination { name } => self.cache.purge_destination(name),
            Selector::Email { .. } => self.purge_by_email(selector),
            _ => {
                self.cache.purge(named, everything)
                    + self.verifier.as_ref().map_or(0, |v| v.purge(named))
                    + self.token_services.purge_grants(named)
            }
        };
        span.record("purged", purged);
        self.revocations.bump();
        tracing::info!(event, kind = selector.kind(), purged, "revoked");
        self.telemetry
            .revocation(event, selector, "ok", purged, &self.revocations);
        Ok(purged)
    }

    /// `backchannel_logout:`, and the verifier whose issuers' keys check a logout token.
    pub fn backchannel_logout(&self) -> Option<(&crate::logout::Settings, Option<&Verifier>)> {
        self.backchannel_logout
            .as_ref()
            .map(|settings| (settings, self.verifier.as_deref()))
    }

    /// A destination answered a request with 401 and a Bearer (or DPoP) `invalid_token` challenge
    /// (seen by ext_proc): the one cache entry that served it (`key`, still holding `token`) is
    /// purged, so the next request exchanges again. Nothing is remembered, nobody's authority ends;
    /// recorded like every signal (`event: invalid_token`, `kind: served`), its span a child of
    /// the request's trace (`parent`). Whether the entry was still there to purge.
    pub fn purge_served(
        &self,
        destination: &str,
        key: &Key,
        token: &Arc<Delegated>,
        parent: Option<crate::telemetry::trace::TraceContext<'_>>,
    ) -> bool {
        let purged = self.cache.take(key, token);
        self.revocations.bump();
        tracing::info!(
            destination,
            issued = %token.fingerprint(),
            purged,
            "the destination refused the delegated token (invalid_token): its cache entry purged"
        );
        let selector = Selector::Served {
            destination: destination.to_owned(),
        };
        self.telemetry.revocation_in(
            parent,
            "invalid_token",
            &selector,
            "ok",
            usize::from(purged),
            &self.revocations,
        );
        purged
    }

    /// A cached token keeps no e-mail address: the verified subjects an e-mail revocation names say
    /// whose (`iss`, `sub`) entries go with them.
    fn purge_by_email(&self, selector: &Selector) -> usize {
        let named = std::cell::RefCell::new(Vec::new());
        let verified = self.verifier.as_ref().map_or(0, |v| {
            v.purge(|holder| {
                let hit = revocation::names(selector, holder);
                if let (true, Some(sub)) = (hit, holder.sub) {
                    named.borrow_mut().push((holder.iss.map(str::to_owned), sub.to_owned()));
                }
                hit
            })
        });
        let named = named.into_inner();
        let entries = self.cache.purge(
            |holder| {
                named.iter().any(|(iss, sub)| {
                    holder.sub == Some(sub.as_str())
                        && (iss.is_none() || holder.iss.is_none() || holder.iss == iss.as_deref())
                })
            },
            false,
        );
        verified + entries
    }

    pub fn shared_cache(&self) -> Arc<TokenCache> {
        self.cache.clone()
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The decision for an outbound request, whichever Envoy API asked.
    pub async fn decide(&self, outbound: &Outbound<'_>) -> Result<Allow, Denial> {
        match self.admit(outbound)? {
            Admitted::Settled(allow, _) => Ok(allow),
            Admitted::Delegate {
                destination,
                subject_token,
                caller,
                ..
            } => {
                let signer = self.signer(destination);
                let (token, cache, key) = self
                    .delegate_with(destination, subject_token, &caller, signer.as_ref())
                    .await?;
                // A fresh proof for this very request (RFC 9449 §7.1): the method and URL the
                // destination sees, `ath` of the token.
                let bound = match &signer {
                    None => None,
                    Some(signer) => {
                        let htu = crate::dpop::htu(destination.upstream_scheme, outbound.authority, outbound.path);
                        let now = crate::clock::unix_now();
                        Some(Box::new(crate::dpop::bind(
                            signer,
                            token.token(),
                            outbound.method,
                            &htu,
                            now,
                        )?))
                    }
                };
                Ok(Allow::Delegate {
                    destination: destination.clone(),
                    token,
                    cache,
                    key: Some(key),
                    bound,
                })
            }
        }
    }

    /// The steps before the subject token is verified: the destination, then the bearer token.
    /// `decide` and an explanation (`explain`) both start here.
    pub fn admit<'a>(&'a self, outbound: &Outbound<'a>) -> Result<Admitted<'a>, Denial> {
        let (destination, matched) = match self.destination(outbound) {
            Ok(Some(found)) => found,
            Ok(None) => {
                return self
                    .unknown_destination()
                    .map(|a| Admitted::Settled(a, Settled::UnknownDestination));
            }
            // A malformed authority reaches no destination: never delegated, never passed through
            // with the user's token.
            Err(denial) if denial.reason == Reason::AuthorityMalformed => {
                return match self.unknown_destination {
                    UnknownDestination::Strip => Ok(Admitted::Settled(Allow::Strip, Settled::AuthorityMalformed)),
                    UnknownDestination::Passthrough | UnknownDestination::Deny => Err(denial),
                };
            }
            Err(denial) => return Err(denial),
        };
        let Some(subject_token) = request::subject_token(&outbound.authorization, self.max_token_bytes)? else {
            return match self.missing_token {
                MissingToken::Deny => Err(Denial::new(Reason::MissingToken, "the request has no bearer token")),
                MissingToken::Passthrough => Ok(Admitted::Settled(Allow::Passthrough, Settled::MissingToken)),
            };
        };
        let caller = Caller {
            source: outbound.source_principal.or(self.workload_identity.as_deref()),
            method: outbound.method,
            path: outbound.path,
            headers: outbound.headers,
        };
        Ok(Admitted::Delegate {
            destination,
            matched,
            subject_token,
            caller,
        })
    }

    /// Verify a subject token on its own (the broker uses it for its callers too).
    pub async fn verify(&self, token: &str, digest: &Key) -> Result<Option<Arc<Subject>>, Denial> {
        match &self.verifier {
            None => Ok(None),
            Some(verifier) => match verifier.verify(token, digest).await? {
                Verified::Subject(subject) => Ok(Some(subject)),
                Verified::Forwarded => Ok(None),
            },
        }
    }

    pub fn verifies(&self) -> bool {
        self.verifier.is_some()
    }

    /// verify -> policy -> the token for `route` on behalf of `subject_token`: cached, or
    /// exchanged once for all concurrent callers; with the key of the cache entry that holds it.
    pub async fn delegate(
        &self,
        route: &Arc<Destination>,
        subject_token: &str,
        caller: &Caller<'_>,
    ) -> Result<(Arc<Delegated>, CacheStatus, Key), Denial> {
        let signer = self.signer(route);
        self.delegate_with(route, subject_token, caller, signer.as_ref()).await
    }

    /// `delegate`, with the DPoP key of a `binding: dpop` route (taken once, so the cache key, the
    /// exchange and the request's proof all use the same key, even across a rotation).
    async fn delegate_with(
        &self,
        route: &Arc<Destination>,
        subject_token: &str,
        caller: &Caller<'_>,
        signer: Option<&Arc<crate::dpop::SigningKey>>,
    ) -> Result<(Arc<Delegated>, CacheStatus, Key), Denial> {
        let digest = cache::digest(subject_token);
        let subject = self.verify(subject_token, &digest).await?;
        // Verified claims are at hand: checked before any cached token is looked at. An unverified
        // subject token is checked on a hit against what the entry keeps of its subject (its
        // payload is not decoded on a hit), and before any exchange.
        if let Some(verified) = subject.as_deref() {
            crate::deferred::not_a_grant(self.deferred.as_ref(), &verified.claims)?;
            self.holder_not_revoked(&Holder::of_claims(&verified.claims))?;
        }
        let claims = subject.as_deref().map(|s| &s.claims);
        let scope = self.authorize(route, claims, caller, None)?;
        let mut key = cache::key(&route.key_params, scope.as_deref().unwrap_or(""), &digest);
        if let Some(signer) = signer {
            key = baton_decide::key::bound(&key, signer.thumbprint());
        }
        let (token, status) = self
            .cache
            .get_or_exchange(
                key,
                &route.constraints,
                self.exchange_with(
                    route,
                    subject_token,
                    subject.as_deref(),
                    scope.as_deref(),
                    key,
                    signer.cloned(),
                ),
            )
            .await
            .map_err(|e| (*e).clone())?;
        // A revocation while this exchange ran: its purge may have come before the token was put
        // in the cache, so it is taken out here (a hit was checked above, under the same store).
        if !self.revocations.is_empty() {
            let checked = match (status, subject.is_some()) {
                (CacheStatus::Hit, true) => Ok(()),
                // Every entry older than a revocation of its holder was purged; one exchanged since
                // passed the check. So an entry is refused when its holder was revoked at or after
                // the time it was exchanged: it escaped the purge.
                (CacheStatus::Hit, false) => {
                    let mut holder = token.holder();
                    holder.iat = i64::try_from(token.issued_at()).ok();
                    self.holder_not_revoked(&holder)
                }
                _ => self.not_revoked(subject.as_deref(), subject_token),
            };
            if let Err(revoked) = checked {
                self.cache.forget(&key, &token);
                return Err(revoked);
            }
        }
        if status == CacheStatus::Hit && token.claim_refresh(crate::clock::unix_now()) {
            self.refresh(route.clone(), subject_token, subject, scope, key, signer.cloned());
        }
        Ok((token, status, key))
    }

    /// May `route` be delegated to for a subject with `claims`, on this caller's request? The
    /// policy's rules, then the scope to ask for (`Some` when the policy narrowed it) and the
    /// delegation depth. With `trace`, every verdict is recorded there and evaluation goes on past
    /// a refusal (an explanation); without, it stops at the first. The outcome is the same.
    pub fn authorize<'r>(
        &self,
        route: &'r Destination,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
        caller: &Caller<'_>,
        mut trace: Option<&mut Vec<Verdict<'r>>>,
    ) -> Result<Option<String>, Denial> {
        let facts = Facts {
            claims,
            source: caller.source,
            method: caller.method,
            path: caller.path,
            headers: caller.headers,
            destination: &route.name,
        };
        let mut refused: Option<Denial> = None;
        // Records a verdict; false when evaluation should stop.
        let mut note = |trace: &mut Option<&mut Vec<Verdict<'r>>>, verdict: Verdict<'r>| -> bool {
            if let Err(denial) = &verdict.outcome
                && refused.is_none()
            {
                refused = Some(denial.clone());
            }
            match trace {
                Some(trace) => {
                    trace.push(verdict);
                    true
                }
                None => refused.is_none(),
            }
        };
        route.policy.evaluate(&facts, |verdict| {
            if note(&mut trace, verdict) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        // Both are pure and cheap: judged even after a refusal, which stays the outcome.
        let mut scope = None;
        if route.policy.scopes_from_subject {
            let outcome = route.policy.scopes(&route.scopes, claims).map(|s| scope = s);
            note(
                &mut trace,
                Verdict {
                    rule: Rule::ScopesFromSubject,
                    outcome,
                },
            );
        }
        if let Some(max) = route.policy.max_delegation_depth {
            let held = actor::chain(claims.and_then(|c| c.get("act")), max + 1).len();
            let outcome = if held + usize::from(route.use_actor) > max {
                Err(too_deep())
            } else {
                Ok(())
            };
            note(
                &mut trace,
                Verdict {
                    rule: Rule::MaxDelegationDepth,
                    outcome,
                },
            );
        }
        // The subject's own chain, before any exchange (an unverified subject's: in `exchange`).
        if !route.policy.allowed_actors.is_empty() && claims.is_some() {
            let outcome = crate::chain::subject_chain(route, claims.and_then(|c| c.get("act")));
            note(
                &mut trace,
                Verdict {
                    rule: Rule::AllowedActors,
                    outcome,
                },
            );
        }
        match refused {
            Some(denial) => Err(denial),
            None => Ok(scope),
        }
    }

    /// Refused with `subject_revoked` when the subject token's holder (its verified claims, or its
    /// payload read unverified) was revoked after it was issued. One atomic load while nothing is
    /// revoked. A token with no claims to read (opaque, forwarded) matches only `all`.
    fn not_revoked(&self, subject: Option<&Subject>, subject_token: &str) -> Result<(), Denial> {
        if self.revocations.is_empty() {
            return Ok(());
        }
        match subject {
            Some(s) => self.holder_not_revoked(&Holder::of_claims(&s.claims)),
            None => {
                let payload = jwt::Unverified::parse(subject_token).ok().flatten().unwrap_or_default();
                self.holder_not_revoked(&unverified_holder(&payload))
            }
        }
    }

    pub(crate) fn holder_not_revoked(&self, holder: &Holder<'_>) -> Result<(), Denial> {
        if self.revocations.is_revoked(holder, crate::clock::unix_now()) {
            return Err(Denial::new(
                Reason::SubjectRevoked,
                "the subject's authority was revoked after this token was issued",
            ));
        }
        Ok(())
    }

    /// Exchange again in the background and replace the cached token; a failure leaves the cached
    /// one serving until its expiry.
    fn refresh(
        &self,
        route: Arc<Destination>,
        subject_token: &str,
        subject: Option<Arc<Subject>>,
        scope: Option<String>,
        key: Key,
        signer: Option<Arc<crate::dpop::SigningKey>>,
    ) {
        let Some(me) = self.me.upgrade() else { return };
        let subject_token = subject_token.to_owned();
        tokio::spawn(async move {
            match me
                .exchange_with(
                    &route,
                    &subject_token,
                    subject.as_deref(),
                    scope.as_deref(),
                    key,
                    signer,
                )
                .await
            {
                Ok(fresh) => {
                    me.cache.replace(key, fresh.clone());
                    // Revoked while the refresh ran: the old authority does not come back.
                    if me.not_revoked(subject.as_deref(), &subject_token).is_err() {
                        me.cache.forget(&key, &fresh);
                    }
                }
                Err(denial) => {
                    tracing::debug!(destination = %route.name, reason = denial.reason.as_str(), "refresh ahead failed; the cached token serves until it expires")
                }
            }
        });
    }

    /// One exchange for `route` on behalf of `subject_token`: what a cache miss runs, and a refresh
    /// (and, uncached, Defer and Redeem: `jobs`).
    pub(crate) async fn exchange(
        &self,
        route: &Destination,
        subject_token: &str,
        subject: Option<&Subject>,
        scope: Option<&str>,
        key: Key,
    ) -> Result<Arc<Delegated>, Denial> {
        let signer = self.signer(route);
        self.exchange_with(route, subject_token, subject, scope, key, signer)
            .await
    }

    /// `exchange`, bound to `signer` when the route's binding is `dpop`.
    async fn exchange_with(
        &self,
        route: &Destination,
        subject_token: &str,
        subject: Option<&Subject>,
        scope: Option<&str>,
        key: Key,
        signer: Option<Arc<crate::dpop::SigningKey>>,
    ) -> Result<Arc<Delegated>, Denial> {
        let max_depth = route.policy.max_delegation_depth;
        if let Some(refused) = self.cache.refused(&key) {
            return Err(refused);
        }
        let now = crate::clock::unix_now();
        // Each JWT payload is decoded once: the subject's only when verification did not already.
        // Unverified (verification off, or an opaque token forwarded), a JWT is still held to the
        // JWT rules: its `exp` caps the cached token's life, so a `crit` Baton does not understand
        // or an `exp` that is not a NumericDate refuses it rather than reading as "no exp".
        let unverified_subject = match subject {
            Some(_) => None,
            None => Some(
                jwt::Unverified::parse(subject_token)
                    .map_err(crate::verify::subject_jwt_error)?
                    .unwrap_or_default(),
            ),
        };
        if let Some(payload) = &unverified_subject {
            self.holder_not_revoked(&unverified_holder(payload))?;
            // Not verified, so not judged by `authorize`: the subject's own chain, before the
            // exchange, by the same rules.
            crate::chain::unverified_subject_chain(route, payload.act.as_ref())?;
        }
        // A subject token bound to a key (RFC 9449 `cnf`, or RFC 8705's): its proof was for the hop
        // into this workload, and Baton cannot check it.
        let subject_cnf = match subject {
            Some(s) => s.claims.get("cnf"),
            None => unverified_subject.as_ref().and_then(|u| u.cnf.as_ref()),
        };
        if subject_cnf.is_some() && self.bound_subject_tokens == crate::dpop::BoundSubjectTokens::Refuse {
            return Err(Denial::new(
                Reason::SubjectTokenBound,
                "the subject token is bound to a key (cnf) and its proof cannot be checked here",
            ));
        }
        let subject_exp = subject.map(|s| s.exp).or_else(|| unverified_subject.as_ref()?.exp());
        if subject_exp.is_some_and(|exp| exp <= now as i64) {
            return Err(Denial::new(
                Reason::SubjectTokenExpired,
                "the subject token has expired",
            ));
        }
        let mut target = None;
        let mut actor = None;
        if scope.is_some() || route.use_actor {
            let mut t = route.target.clone();
            if scope.is_some() {
                t.scope = scope.map(str::to_owned);
            }
            if let (true, Some(actor_source)) = (route.use_actor, &self.actor) {
                let token = actor_source.token(&route.token_service).await?;
                t.actor = Some((token.token.clone(), actor_source.token_type.clone()));
                actor = Some(token);
            }
            target = Some(t);
        }
        let target = target.as_ref().unwrap_or(&route.target);
        let span = tracing::debug_span!("exchange", destination = %route.name, subject = %fingerprint(subject_token));
        let issued = self
                .telemetry
                .exchange(route, async {
                    match &signer {
                        Some(signer) => route.token_service.exchange_bound(subject_token, target, signer).await,
                        None => route.token_service.exchange(subject_token, target).await,
                    }
                })
                .instrument(span)
                .await
                .map_err(|e: ExchangeError| {
                    tracing::warn!(destination = %route.name, subject = %fingerprint(subject_token), error = %e, "token exchange failed");
                    Denial::from(&e)
                });
        let issued = match issued {
            Ok(issued) => issued,
            Err(denial) => {
                self.cache.remember_refusal(key, &denial);
                return Err(denial);
            }
        };
        // The issued token's payload is decoded once: for the checks, the chain, the claims.
        let parsed = jwt::Unverified::parse(issued.access_token.expose());
        let asked = issued::Asked {
            subject_token,
            actor: actor.as_deref(),
            audience: target.audience.as_deref(),
            resource: target.resource.as_deref(),
            scope: target.scope.as_deref(),
            profile: route.token_service.profile(),
            require_delegation: route.policy.require_delegation.unwrap_or(actor.is_some()),
        };
        // Refused, it is not cached, and not remembered as a refusal either: the token service
        // misbehaved, not the caller, and the next exchange may well be answered properly.
        if let Err(e) = issued::check(
            &issued,
            parsed.as_ref().map(Option::as_ref).map_err(|e| *e),
            &asked,
            now,
        ) {
            tracing::warn!(
                destination = %route.name,
                subject = %fingerprint(subject_token),
                issued = %fingerprint(issued.access_token.expose()),
                error = %e,
                "the issued token is refused"
            );
            return Err(Denial::from(e));
        }
        // Bound to Baton's key, as asked: else a copy of it would work without the key.
        if let Some(signer) = &signer {
            let payload = parsed.as_ref().ok().and_then(Option::as_ref);
            crate::dpop::check_issued(
                &issued.token_type,
                payload.and_then(|p| p.cnf.as_ref()),
                payload.is_some(),
                signer,
            )
            .inspect_err(|denial| {
                tracing::warn!(
                    destination = %route.name,
                    issued = %fingerprint(issued.access_token.expose()),
                    jkt = signer.thumbprint(),
                    reason = denial.reason.as_str(),
                    "the issued token is not bound to Baton's DPoP key"
                );
            })?;
        }
        // The chain as the token service wrote it: authenticated first when asked, then judged.
        let chain_verified = crate::chain::check_issued(
            route,
            self.verifier.as_deref(),
            &issued,
            parsed.as_ref().ok().and_then(Option::as_ref),
        )
        .await
        .inspect_err(|denial| {
            tracing::warn!(
                destination = %route.name,
                subject = %fingerprint(subject_token),
                issued = %fingerprint(issued.access_token.expose()),
                reason = denial.reason.as_str(),
                "the issued token's chain is refused"
            );
        })?;
        let issued_claims = parsed.ok().flatten().unwrap_or_default();
        let actors = actor::chain(issued_claims.act.as_ref(), max_depth.map_or(16, |m| m + 1));
        if max_depth.is_some_and(|max| actors.len() > max) {
            return Err(too_deep());
        }
        let (subject_iss, subject_sub) = match (subject, &unverified_subject) {
            (Some(s), _) => (s.claims.get("iss"), s.claims.get("sub")),
            (None, u) => u.as_ref().map_or((None, None), |u| (u.iss.as_ref(), u.sub.as_ref())),
        };
        let subject_sid = match (subject, &unverified_subject) {
            (Some(s), _) => s.claims.get("sid"),
            (None, u) => u.as_ref().and_then(|u| u.sid.as_ref()),
        }
        .and_then(serde_json::Value::as_str)
        .filter(|sid| sid.len() <= jwt::MAX_CLAIM_LEN);
        let mut claims = jwt::DelegationClaims::issued(&issued_claims).with_subject(subject_iss, subject_sub);
        // Kept only when the policy narrowed it: audit and traces fall back to the destination's own.
        if target.scope != route.target.scope {
            claims.requested_scope = target.scope.as_deref().map(Box::from);
        }
        let lifetimes = Lifetimes {
            expires_in: issued.expires_in,
            issued_exp: issued_claims.exp(),
            subject_exp,
            max: route.policy.max_token_lifetime.map(|d| d.as_secs()),
        };
        let delegated = Delegated::new(
            issued.access_token,
            issued.token_type,
            issued.issued_token_type,
            issued.scope,
            lifetimes,
            self.expiry_margin,
            now,
        )
        .with_claims(claims)
        .with_subject_sid(subject_sid)
        .with_destination(route.name.clone())
        .with_actors(actors)
        .with_chain_verified(chain_verified)
        .refresh_ahead(self.refresh_ahead);
        tracing::debug!(
            destination = %route.name,
            subject = %fingerprint(subject_token),
            issued = %delegated.fingerprint(),
            ttl = ?delegated.ttl(),
            depth = delegated.actors().len(),
            "token exchanged"
        );
        Ok(Arc::new(delegated))
    }

    /// The configured destination an outbound request names, if any (what `decide` looks up first),
    /// for reporting a decision that did not delegate.
    pub fn destination_of(&self, outbound: &Outbound<'_>) -> Option<&Arc<Destination>> {
        self.destination(outbound).ok().flatten().map(|(d, _)| d)
    }

    /// Where an outbound request goes, judged on its canonical authority (issue 12): the destination
    /// the route names, which must also be the one Baton matches the authority to when it claims
    /// hosts (`destination_host_mismatch` otherwise), or the destination the authority matches
    /// (`None`: no destination). A malformed authority is `authority_malformed`, before any match.
    fn destination(&self, outbound: &Outbound<'_>) -> Result<Option<(&Arc<Destination>, Matched<'_>)>, Denial> {
        let authority = canonical::authority(outbound.authority)
            .map_err(|e| Denial::new(Reason::AuthorityMalformed, format!("the request's authority {e}")));
        let Some(name) = outbound.route_destination else {
            return Ok(self.routes.lookup(&authority?).map(|(d, host)| {
                (
                    d,
                    Matched {
                        by_route: false,
                        host: Some(host),
                    },
                )
            }));
        };
        let route = self.routes.by_name(name).ok_or_else(|| {
            Denial::new(
                Reason::DestinationNotConfigured,
                "the route names a destination Baton does not have",
            )
        })?;
        let authority = authority?;
        let mut host = None;
        if self.routes.claims_hosts(name) {
            match self.routes.lookup(&authority) {
                Some((matched, pattern)) if Arc::ptr_eq(matched, route) => host = Some(pattern),
                _ => {
                    return Err(Denial::new(
                        Reason::DestinationHostMismatch,
                        "the route names a destination whose hosts do not include the request's authority",
                    ));
                }
            }
        }
        Ok(Some((route, Matched { by_route: true, host })))
    }

    /// The route for a broker call to destination `name` asking for `scopes`: the destination's own scopes
    /// when `scopes` is empty, else exactly the ones asked for, each of which must be in its
    /// `broker_allowed_scopes` (a caller narrows what a destination grants, never widens it).
    /// Duplicates and order do not matter: the same set is the same exchange and cache entry.
    pub fn route_for(&self, name: &str, scopes: &[String]) -> Result<Arc<Destination>, Denial> {
        let base = self
            .routes
            .by_name(name)
            .ok_or_else(|| Denial::new(Reason::DestinationNotConfigured, "no destination has this name"))?;
        if scopes.is_empty() {
            return Ok(base.clone());
        }
        // Scopes are case-sensitive (RFC 6749 3.3): compared byte for byte, never folded.
        if !scopes.iter().all(|s| base.broker_allowed_scopes.contains(s)) {
            return Err(Denial::new(
                Reason::ScopeNotAllowed,
                "the call asks for a scope this destination does not allow broker callers",
            ));
        }
        // In the allow-list's order, once each, whatever the call's order and repeats.
        let wanted: Vec<String> =
            base.broker_allowed_scopes
                .iter()
                .filter(|s| scopes.contains(s))
                .fold(Vec::new(), |mut out, s| {
                    if !out.contains(s) {
                        out.push(s.clone());
                    }
                    out
                });
        if wanted == base.scopes {
            return Ok(base.clone());
        }
        let mut target = base.target.clone();
        target.scope = Some(wanted.join(" "));
        let mut route = Destination::new(
            base.name.clone(),
            target,
            wanted,
            base.policy.clone(),
            base.use_actor,
            base.token_service.clone(),
        )
        .with_verify_issued(base.verify_issued)
        .with_binding(base.binding, base.upstream_scheme);
        route.broker_allowed_scopes = base.broker_allowed_scopes.clone();
        Ok(Arc::new(route))
    }

    /// What happens to a request no destination matches (`unknown_destination`).
    pub fn unknown_destination_action(&self) -> UnknownDestination {
        self.unknown_destination
    }

    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    fn unknown_destination(&self) -> Result<Allow, Denial> {
        match self.unknown_destination {
            UnknownDestination::Strip => Ok(Allow::Strip),
            UnknownDestination::Passthrough => Ok(Allow::Passthrough),
            UnknownDestination::Deny => Err(Denial::new(
                Reason::DestinationUnknown,
                "no configured destination matches this host",
            )),
        }
    }
}

/// The holder of an unverified subject token, from its payload.
fn unverified_holder(payload: &jwt::Unverified) -> Holder<'_> {
    fn text(v: &Option<serde_json::Value>) -> Option<&str> {
        v.as_ref().and_then(serde_json::Value::as_str)
    }
    Holder {
        iss: text(&payload.iss),
        sub: text(&payload.sub),
        sid: text(&payload.sid),
        iat: payload.iat(),
        claims: None,
    }
}

fn too_deep() -> Denial {
    Denial::new(
        Reason::DelegationTooDeep,
        "the delegation chain would be longer than this destination allows",
    )
}

fn target(d: &crate::destination::Settings, subject_token_type: &'static str) -> Target {
    Target {
        audience: d.audience.clone(),
        resource: d.resource.clone(),
        scope: (!d.scopes.is_empty()).then(|| d.scopes.join(" ")),
        requested_token_type: d.requested_token_type.clone(),
        subject_token_type,
        actor: None,
    }
}
