//! The core decision, shared by Envoy's Check and Baton's own broker API. `check` reads as the data
//! path: extract -> destination -> subject token -> (verify, policy: not yet) -> cache / exchange.
//! It returns a decision or a `Denial`; turning either into a reply is `respond`'s job. It never
//! logs a token: only fingerprints.

use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use tracing::Instrument as _;

use crate::cache::{self, CacheStatus, Delegated, Key, Lifetimes, TokenCache};
use crate::config::{Config, Destination, MissingToken, UnknownDestination};
use crate::exchange::{ExchangeError, Target, TokenService, TokenServices};
use crate::extract::{self, Outbound};
use crate::jwt;
use crate::reason::{Denial, Reason};
use crate::route::Routes;
use crate::secret::fingerprint;

/// What Envoy should do with an allowed request.
#[derive(Debug)]
pub enum Allow {
    /// Overwrite `Authorization` with the token for the destination.
    Delegate {
        destination: Arc<Route>,
        token: Arc<Delegated>,
        cache: CacheStatus,
    },
    /// Remove `Authorization`: the destination is not configured (`unknown_destination: strip`).
    Strip,
    /// Leave the request alone (`passthrough` settings).
    Passthrough,
}

/// A configured destination, with what its exchanges send.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub target: Target,
    /// Where this destination's tokens come from.
    pub token_service: Arc<TokenService>,
    /// Digest of `target`, the token service and the client identity: the first half of every
    /// cache key.
    key_params: Key,
}

/// Everything the decision needs, built once from the configuration.
#[derive(Debug)]
pub struct Authz {
    routes: Routes<Route>,
    cache: TokenCache,
    token_services: TokenServices,
    unknown_destination: UnknownDestination,
    missing_token: MissingToken,
    max_token_bytes: usize,
    expiry_margin: std::time::Duration,
}

impl Authz {
    /// `token_services` holds every service a destination names (config validation saw to it).
    pub fn new(config: &Config, token_services: TokenServices) -> Self {
        let subject_token_type = config.subject_token.token_type;
        let routes = Routes::new(config.destinations.iter().filter_map(|d| {
            let target = target(d, subject_token_type);
            let route = Route::new(d.name.clone(), target, token_services.get(&d.token_service)?.clone());
            Some((d.name.clone(), d.hosts.clone(), route))
        }));
        Self {
            routes,
            cache: TokenCache::new(config.cache.max_entries),
            token_services,
            unknown_destination: config.unknown_destination,
            missing_token: config.missing_token,
            max_token_bytes: config.subject_token.max_bytes,
            expiry_margin: config.cache.expiry_margin,
        }
    }

    pub fn token_services(&self) -> &TokenServices {
        &self.token_services
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Envoy's ext_authz question: may this outbound request go, and with which Authorization?
    pub async fn check(&self, request: &CheckRequest) -> Result<Allow, Denial> {
        self.decide(&extract::outbound(request)?).await
    }

    /// The decision for an outbound request, whichever Envoy API asked.
    pub async fn decide(&self, outbound: &Outbound<'_>) -> Result<Allow, Denial> {
        let destination = match outbound.route_destination {
            Some(name) => self.routes.by_name(name).ok_or_else(|| {
                Denial::new(
                    Reason::DestinationNotConfigured,
                    "the route names a destination Baton does not have",
                )
            })?,
            None => match self.routes.by_authority(outbound.authority) {
                Some(route) => route,
                None => return self.unknown_destination(),
            },
        };
        let Some(subject_token) = extract::subject_token(&outbound.authorization, self.max_token_bytes)? else {
            return match self.missing_token {
                MissingToken::Deny => Err(Denial::new(Reason::MissingToken, "the request has no bearer token")),
                MissingToken::Passthrough => Ok(Allow::Passthrough),
            };
        };
        let (token, cache) = self.delegate(destination, subject_token).await?;
        Ok(Allow::Delegate {
            destination: destination.clone(),
            token,
            cache,
        })
    }

    /// The token for `route` on behalf of `subject_token`: cached, or exchanged once for all
    /// concurrent callers.
    pub async fn delegate(&self, route: &Route, subject_token: &str) -> Result<(Arc<Delegated>, CacheStatus), Denial> {
        let key = cache::key(&route.key_params, subject_token);
        let exchange = async {
            let now = cache::unix_now();
            let subject_exp = jwt::unverified_exp(subject_token);
            if subject_exp.is_some_and(|exp| exp <= now as i64) {
                return Err(Denial::new(
                    Reason::SubjectTokenExpired,
                    "the subject token has expired",
                ));
            }
            let span =
                tracing::debug_span!("exchange", destination = %route.name, subject = %fingerprint(subject_token));
            let issued = route
                .token_service
                .exchange(subject_token, &route.target)
                .instrument(span)
                .await
                .map_err(|e: ExchangeError| {
                    tracing::warn!(destination = %route.name, subject = %fingerprint(subject_token), error = %e, "token exchange failed");
                    Denial::from(&e)
                })?;
            let lifetimes = Lifetimes {
                expires_in: issued.expires_in,
                issued_exp: jwt::unverified_exp(issued.access_token.expose()),
                subject_exp,
            };
            let delegated = Delegated::new(
                issued.access_token,
                issued.token_type,
                issued.issued_token_type,
                issued.scope,
                lifetimes,
                self.expiry_margin,
                now,
            );
            tracing::debug!(
                destination = %route.name,
                subject = %fingerprint(subject_token),
                issued = %delegated.token.fingerprint(),
                ttl = ?delegated.ttl(),
                "token exchanged"
            );
            Ok(Arc::new(delegated))
        };
        self.cache
            .get_or_exchange(key, exchange)
            .await
            .map_err(|e| (*e).clone())
    }

    /// A route for the broker API: a configured destination, optionally with other scopes.
    pub fn route_for(&self, name: &str, scopes: &[String]) -> Option<Arc<Route>> {
        let base = self.routes.by_name(name)?;
        if scopes.is_empty() {
            return Some(base.clone());
        }
        let mut target = base.target.clone();
        target.scope = Some(scopes.join(" "));
        Some(Arc::new(Route::new(
            base.name.clone(),
            target,
            base.token_service.clone(),
        )))
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

impl Route {
    fn new(name: String, target: Target, token_service: Arc<TokenService>) -> Self {
        let key_params = cache::params_digest(&[
            token_service.name(),
            token_service.locator(),
            token_service.client_id(),
            target.audience.as_deref().unwrap_or(""),
            target.resource.as_deref().unwrap_or(""),
            target.scope.as_deref().unwrap_or(""),
            target.requested_token_type.as_deref().unwrap_or(""),
            target.subject_token_type,
        ]);
        Self {
            name,
            target,
            token_service,
            key_params,
        }
    }
}

fn target(d: &Destination, subject_token_type: &'static str) -> Target {
    Target {
        audience: d.audience.clone(),
        resource: d.resource.clone(),
        scope: (!d.scopes.is_empty()).then(|| d.scopes.join(" ")),
        requested_token_type: d.requested_token_type.clone(),
        subject_token_type,
    }
}
