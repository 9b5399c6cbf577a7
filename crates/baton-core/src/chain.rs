//! Delegation chains at decision time: the subject token's own `act` chain is judged against the
//! destination's `allowed_actors` and `max_delegation_depth` before any exchange, and the issued
//! token's chain after it, its signature verified first when the destination says `verify_issued`
//! (by the subject-token verifier's keys: no second JWKS fetcher). The matching rule itself is
//! pure, in `baton_decide::chain`. It never logs a token; a refusal names a position in the
//! chain, not a token.

use serde_json::Value;

use crate::decision::Destination;
use crate::exchange::Issued;
use crate::jwt::Unverified;
use crate::verify::Verifier;
use baton_decide::chain;
use baton_decide::reason::{Denial, Reason};

/// A verified subject's chain, under `allowed_actors` (`authz::authorize` records it as the
/// `allowed_actors` rule's verdict).
pub(crate) fn subject_chain(route: &Destination, act: Option<&Value>) -> Result<(), Denial> {
    route
        .policy
        .allowed_actors
        .check(act)
        .map(|_| ())
        .map_err(|e| chain::subject_denial(&e))
}

/// An unverified subject's chain (verification off, or an opaque token forwarded), read from its
/// payload: the same `allowed_actors` rule, and the depth it would reach with Baton's actor added,
/// both before the exchange (a verified subject's depth is judged by `authorize`).
pub(crate) fn unverified_subject_chain(route: &Destination, act: Option<&Value>) -> Result<(), Denial> {
    if !route.policy.allowed_actors.is_empty() {
        subject_chain(route, act)?;
    }
    if let Some(max) = route.policy.max_delegation_depth {
        let held = crate::actor::chain(act, max + 1).len();
        if held + usize::from(route.use_actor) > max {
            return Err(Denial::new(
                Reason::DelegationTooDeep,
                "the delegation chain would be longer than this destination allows",
            ));
        }
    }
    Ok(())
}

/// The issued token's chain: with `verify_issued`, its signature first (`true`: the chain is
/// authenticated, `chain_verified` in the audit record); then every actor under `allowed_actors`.
pub(crate) async fn check_issued(
    route: &Destination,
    verifier: Option<&Verifier>,
    issued: &Issued,
    claims: Option<&Unverified>,
) -> Result<bool, Denial> {
    let mut verified = false;
    if route.verify_issued {
        let Some(verifier) = verifier else {
            // Configuration validation refuses `verify_issued` without trusted issuers.
            return Err(Denial::new(
                Reason::IssuedTokenSignatureInvalid,
                "the issued token cannot be verified: no trusted issuer is configured",
            ));
        };
        verifier.verify_issued(issued.access_token.expose()).await?;
        verified = true;
    }
    if !route.policy.allowed_actors.is_empty() {
        // An opaque token's chain cannot be judged: refused, whatever `require_delegation` says.
        let Some(claims) = claims else {
            return Err(Denial::new(
                Reason::IssuedTokenActorMissing,
                "the issued token is opaque, so allowed_actors cannot judge its delegation chain",
            ));
        };
        route
            .policy
            .allowed_actors
            .check(claims.act.as_ref())
            .map_err(|e| chain::issued_denial(&e))?;
    }
    Ok(verified)
}
