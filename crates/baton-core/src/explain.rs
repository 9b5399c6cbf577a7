//! An explanation of one decision, without doing it (`baton explain`, `baton policy test`): the
//! destination and the pattern that matched, each policy rule's verdict, the canonical path, what
//! the exchange would send and what its cache key is made of. It runs `Authz::admit` and
//! `Authz::authorize`, the steps `decide` runs, so an explanation cannot disagree with a decision.
//! It never verifies a token, contacts a token service or reads a clock: the subject's claims are
//! given, and what that leaves unchecked is listed in `unchecked`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::authz::{Admitted, Authz, Settled};
use crate::config::UnknownDestination;
use baton_decide::canonical;
use baton_decide::reason::Denial;
use baton_decide::request::Outbound;

/// What Baton would decide, and why.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// `delegate`, `strip`, `passthrough` or `deny`.
    pub decision: &'static str,
    /// The reason code of a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The denial's sentence, or why the request was let go without an exchange.
    pub why: String,
    pub request: RequestView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<DestinationView>,
    /// Whether the subject's claims reach the policy (only when Baton verifies subject tokens).
    pub claims_verified: bool,
    /// Every rule of the destination's policy, in the order they are judged.
    pub rules: Vec<RuleView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeView>,
    /// What the dry run could not check.
    pub unchecked: Vec<&'static str>,
    /// The denial itself, for the Envoy reply (`respond`).
    #[serde(skip)]
    pub denial: Option<Denial>,
}

#[derive(Debug, Serialize)]
pub struct RequestView {
    pub authority: String,
    /// The canonical authority, or why there is none.
    pub canonical_authority: String,
    pub method: String,
    pub path: String,
    /// The canonical path (what `paths` and `when` judge), or why there is none.
    pub canonical_path: String,
    /// The calling workload as the policy sees it (Envoy's source principal, else `workload.identity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_destination: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DestinationView {
    pub name: String,
    /// `route` (named by Envoy's route) and/or `host`.
    pub matched_by: &'static str,
    /// The host pattern that matched, in canonical form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RuleView {
    pub rule: String,
    /// What the rule says.
    pub says: String,
    /// `pass` or `refuse`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// What the RFC 8693 request would carry, and the cache key's inputs (never a token).
#[derive(Debug, Serialize)]
pub struct ExchangeView {
    pub token_service: String,
    pub token_endpoint: String,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_token_type: Option<String>,
    pub subject_token_type: &'static str,
    /// Whether the workload's actor token goes along (`act`).
    pub actor: bool,
    /// How the issued token is presented: `bearer`, or `dpop` with a proof per request.
    pub binding: crate::destination::Binding,
    /// What the cache key digests: these, the scope asked for when policy narrowed it, and the
    /// subject token's SHA-256.
    pub cache_key_inputs: Map<String, Value>,
}

const UNVERIFIED: &str = "the subject token itself: signature, issuer, audience, expiry (verify, or the token service, judges it; the given claims are taken as its)";
const EXCHANGE: &str = "the token service's answer (it may refuse the audience, scope or subject: target_refused, scope_refused, subject_token_rejected) and the issued token's checks";

/// Explain what `authz` would decide for `outbound`, taking the subject token (if `outbound` has
/// one) to carry `claims`.
pub fn explain(authz: &Authz, outbound: &Outbound<'_>, claims: Option<&Map<String, Value>>) -> Explanation {
    let mut explanation = Explanation {
        decision: "deny",
        reason: None,
        why: String::new(),
        request: RequestView {
            authority: outbound.authority.to_owned(),
            canonical_authority: canonical::authority(outbound.authority)
                .map_or_else(|e| format!("none: {e}"), |a| a.to_string()),
            method: outbound.method.to_owned(),
            path: outbound.path.to_owned(),
            canonical_path: canonical::path(outbound.path).unwrap_or_else(|e| format!("none: {e}")),
            source: outbound
                .source_principal
                .or(authz.workload_identity())
                .map(str::to_owned),
            route_destination: outbound.route_destination.map(str::to_owned),
        },
        destination: None,
        claims_verified: authz.verifies(),
        rules: Vec::new(),
        exchange: None,
        unchecked: Vec::new(),
        denial: None,
    };
    let admitted = match authz.admit(outbound) {
        Ok(admitted) => admitted,
        Err(denial) => return explanation.denied(denial),
    };
    let (destination, matched, caller) = match admitted {
        Admitted::Settled(allow, settled) => {
            explanation.decision = crate::decision::decision_name(&Ok(allow));
            explanation.why = match settled {
                Settled::UnknownDestination => format!(
                    "no destination matches this host: unknown_destination: {}",
                    match authz.unknown_destination_action() {
                        UnknownDestination::Strip => "strip",
                        UnknownDestination::Passthrough => "passthrough",
                        UnknownDestination::Deny => "deny",
                    }
                ),
                Settled::AuthorityMalformed => {
                    "the authority is malformed, so it matches no destination: stripped".into()
                }
                Settled::MissingToken => "the request has no bearer token: missing_token: passthrough".into(),
            };
            return explanation;
        }
        Admitted::Delegate {
            destination,
            matched,
            caller,
            ..
        } => (destination, matched, caller),
    };
    explanation.destination = Some(DestinationView {
        name: destination.name.to_string(),
        matched_by: match (matched.by_route, matched.host.is_some()) {
            (true, true) => "route and host",
            (true, false) => "route",
            _ => "host",
        },
        pattern: matched.host.map(|h| h.to_string()),
    });
    // The policy sees claims only when Baton verified them, as in `delegate`.
    let seen = if authz.verifies() { claims } else { None };
    let mut verdicts = Vec::new();
    let outcome = authz.authorize(destination, seen, &caller, Some(&mut verdicts));
    explanation.rules = verdicts
        .iter()
        .map(|v| RuleView {
            rule: v.rule.name(),
            says: destination.policy.describe(&v.rule),
            verdict: if v.outcome.is_ok() { "pass" } else { "refuse" },
            reason: v.outcome.as_ref().err().map(|d| d.reason.as_str()),
        })
        .collect();
    explanation.unchecked.push(UNVERIFIED);
    let scope = match outcome {
        Ok(scope) => scope,
        Err(denial) => return explanation.denied(denial),
    };
    // Unverified, the subject's own `act` chain is judged where `baton run` judges it: before the
    // exchange (`chain`), on the claims given.
    if !authz.verifies()
        && let Err(denial) = crate::chain::unverified_subject_chain(destination, claims.and_then(|c| c.get("act")))
    {
        return explanation.denied(denial);
    }
    let target = &destination.target;
    let service = &destination.token_service;
    let scope = scope.or_else(|| target.scope.clone());
    let mut inputs = Map::new();
    for (name, value) in [
        ("destination", destination.name.as_ref()),
        ("token_service", service.name()),
        ("token_endpoint", service.locator()),
        ("client_id", service.client_id()),
        ("audience", target.audience.as_deref().unwrap_or("")),
        ("resource", target.resource.as_deref().unwrap_or("")),
        ("scope", target.scope.as_deref().unwrap_or("")),
        (
            "requested_token_type",
            target.requested_token_type.as_deref().unwrap_or(""),
        ),
        ("subject_token_type", target.subject_token_type),
        ("actor", if destination.use_actor { "actor" } else { "" }),
    ] {
        inputs.insert(name.to_owned(), Value::String(value.to_owned()));
    }
    inputs.insert(
        "max_delegation_depth".into(),
        destination.constraints.max_delegation_depth.into(),
    );
    inputs.insert(
        "max_token_lifetime_s".into(),
        destination.constraints.max_token_lifetime.into(),
    );
    let narrowed = scope.as_deref().filter(|s| Some(*s) != target.scope.as_deref());
    inputs.insert("narrowed_scope".into(), narrowed.unwrap_or("").into());
    inputs.insert("subject".into(), "sha256 of the subject token".into());
    explanation.exchange = Some(ExchangeView {
        token_service: service.name().to_owned(),
        token_endpoint: service.locator().to_owned(),
        client_id: service.client_id().to_owned(),
        audience: target.audience.clone(),
        resource: target.resource.clone(),
        scope,
        requested_token_type: target.requested_token_type.clone(),
        subject_token_type: target.subject_token_type,
        actor: destination.use_actor,
        binding: destination.binding,
        cache_key_inputs: inputs,
    });
    explanation.unchecked.push(EXCHANGE);
    explanation.decision = "delegate";
    explanation.why =
        "policy allows it: the token is exchanged (or served from the cache) and replaces Authorization".into();
    explanation
}

impl Explanation {
    /// Whether the delegation would be DPoP-bound (`binding: dpop`).
    pub fn dpop_bound(&self) -> bool {
        self.exchange
            .as_ref()
            .is_some_and(|e| e.binding == crate::destination::Binding::Dpop)
    }

    fn denied(mut self, denial: Denial) -> Self {
        self.decision = "deny";
        self.reason = Some(denial.reason.as_str());
        self.why = denial.description.to_string();
        self.denial = Some(denial);
        self
    }
}
