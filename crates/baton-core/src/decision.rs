//! What a decision is about and what it ends in: the compiled `Destination` a request goes to (what
//! its exchanges send, its policy, its share of the cache key) and `Allow`, the decision's outcome
//! when the request may go. Below both `authz`, which makes them, and `telemetry`, which reports
//! them; it does no I/O and decides nothing.

use std::sync::Arc;

use crate::cache::{self, CacheStatus, Constraints, Delegated, Key};
use crate::exchange::{Target, TokenService};
use baton_decide::policy::Policy;
use baton_decide::reason::Denial;

/// What Envoy should do with an allowed request.
#[derive(Debug)]
pub enum Allow {
    /// Overwrite `Authorization` with the token for the destination.
    Delegate {
        destination: Arc<Destination>,
        token: Arc<Delegated>,
        cache: CacheStatus,
        /// The cache entry that served it: what a destination's `invalid_token` purges. `None`
        /// for a token that is never cached (a job grant, a Redeem's token): nothing to purge.
        key: Option<Key>,
        /// `binding: dpop`: `Authorization: DPoP <token>` and this request's proof; `None`: Bearer.
        bound: Option<Box<crate::dpop::Bound>>,
    },
    /// Remove `Authorization`: the destination is not configured (`unknown_destination: strip`).
    Strip,
    /// Leave the request alone (`passthrough` settings).
    Passthrough,
}

/// A configured destination: what its exchanges send, and the policy that guards it.
#[derive(Debug)]
pub struct Destination {
    pub name: Arc<str>,
    pub target: Target,
    pub(crate) scopes: Vec<String>,
    /// The scopes a broker call may ask for here (`broker_allowed_scopes`, default `scopes`).
    pub(crate) broker_allowed_scopes: Arc<[String]>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) use_actor: bool,
    /// Where this destination's tokens come from.
    pub token_service: Arc<TokenService>,
    /// What this destination demands of the token it is served (see `cache::Constraints`).
    pub(crate) constraints: Constraints,
    /// Digest of the destination's name, `target`, the token service, the client identity and
    /// `constraints`: the first half of every cache key.
    pub(crate) key_params: Key,
    /// `verify_issued`: the issued token's signature is verified before use.
    pub(crate) verify_issued: bool,
    /// `binding`: Bearer, or DPoP-bound with proofs whose `htu` has `upstream_scheme`.
    pub binding: crate::destination::Binding,
    pub upstream_scheme: &'static str,
}

impl Destination {
    pub(crate) fn new(
        name: Arc<str>,
        target: Target,
        scopes: Vec<String>,
        policy: Arc<Policy>,
        use_actor: bool,
        token_service: Arc<TokenService>,
    ) -> Self {
        let constraints = Constraints {
            max_delegation_depth: policy.max_delegation_depth,
            max_token_lifetime: policy.max_token_lifetime.map(|d| d.as_secs()),
        };
        // The chain rules too: a reload that changes them starts afresh.
        let chain_rules = format!(
            "allowed_actors={};require_delegation={:?}",
            policy.allowed_actors.key_text(),
            policy.require_delegation
        );
        // Everything the exchange sends (what the token is), with the destination it is for and
        // what that destination demands of it: a token is served only where all are the same.
        let key_params = cache::destination_key(
            &name,
            &constraints,
            &[
                token_service.name(),
                token_service.locator(),
                token_service.client_id(),
                target.audience.as_deref().unwrap_or(""),
                target.resource.as_deref().unwrap_or(""),
                target.scope.as_deref().unwrap_or(""),
                target.requested_token_type.as_deref().unwrap_or(""),
                target.subject_token_type,
                if use_actor { "actor" } else { "" },
                &chain_rules,
            ],
        );
        Self {
            name,
            target,
            scopes,
            broker_allowed_scopes: Arc::from([]),
            policy,
            use_actor,
            token_service,
            constraints,
            key_params,
            verify_issued: false,
            binding: crate::destination::Binding::Bearer,
            upstream_scheme: "https",
        }
    }

    /// Set `binding`; a DPoP destination's cache keys differ from a Bearer one's (a reload that
    /// changes it serves no token of the other kind). The key's thumbprint joins each key on use.
    pub(crate) fn with_binding(mut self, binding: crate::destination::Binding, upstream_scheme: &'static str) -> Self {
        self.upstream_scheme = upstream_scheme;
        if binding == crate::destination::Binding::Dpop {
            self.binding = binding;
            let params = format!("{:?}", self.key_params);
            self.key_params = cache::params_digest(&[&params, "binding=dpop"]);
        }
        self
    }

    /// Turn on `verify_issued`; its cache keys change with it (a reload that turns it on serves no
    /// token that was not verified).
    pub(crate) fn with_verify_issued(mut self, on: bool) -> Self {
        if on {
            self.verify_issued = true;
            let params = format!("{:?}", self.key_params);
            self.key_params = cache::params_digest(&[&params, "verify_issued"]);
        }
        self
    }
}

/// `delegate`, `strip`, `passthrough` or `deny`: the decision label, span attribute and audit field.
pub fn decision_name(outcome: &Result<Allow, Denial>) -> &'static str {
    match outcome {
        Ok(Allow::Delegate { .. }) => "delegate",
        Ok(Allow::Strip) => "strip",
        Ok(Allow::Passthrough) => "passthrough",
        Err(_) => "deny",
    }
}
