//! Deferred jobs (issue 14 §4): a service that queues work for a user hands Baton the user's token
//! once (`Defer`) and gets back a grant the token service issued, bound to the job: audience
//! `deferred.audience`, a lifetime of at most the job's `max_age`, and scope values naming the job,
//! the destinations it may call, its maximum age and the user's session (`baton:job:<id>`,
//! `baton:dest:<name>`, `baton:max_age:<secs>`, `baton:sid:<sid>`, `baton:iss:<user's issuer>`).
//! At execution time a worker hands over the grant and one destination (`Redeem`): the grant is
//! verified, the job and its user are checked against the revocations, the destination's policy
//! runs again, and the grant is exchanged for the destination's token. This module owns the
//! `deferred:` section, the binding's wire form and both steps; the gRPC layer only carries them.
//!
//! Baton keeps NO user credential for a job: not the user's token, not the grant, not the tokens
//! Redeem obtains (they are not cached). The worker holds the grant; a revocation of the user, the
//! session or the job ends it at the next Redeem. It never logs a token or a grant.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::authz::{Authz, Caller};
use crate::cache::{self, Delegated};
use crate::decision::Destination;
use crate::exchange::{Target, TokenServices};
use crate::jwt;
use crate::revocation::Holder;
use crate::verify::IssuerConfig;
use baton_decide::policy::Policy;
use baton_decide::reason::{Denial, Reason};
use baton_decide::settings::{Errors, duration};

// === The `deferred:` section ===

/// `deferred:`: off (every Defer and Redeem refused, `deferred_disabled`) without it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    /// The audience of every job grant: Baton's own, one no destination and no user token carries.
    pub audience: Option<String>,
    /// The issuer of grants (the token service's), one of `trusted_issuers` whose `audiences`
    /// include `audience`: Redeem verifies a grant with its keys.
    pub grant_issuer: Option<String>,
    /// The token service that issues grants (default `default`).
    pub token_service: Option<String>,
    /// The longest `max_age` a job may ask for (default 24h); at most `revocation.remember`, so a
    /// revocation is remembered for as long as a grant lives.
    pub max_age: Option<String>,
    /// The longest job id, in bytes (default 128, at most 200).
    pub max_job_id_bytes: Option<usize>,
    /// The most destinations one job may name (default 8, at most 64).
    pub max_destinations: Option<usize>,
}

/// The validated `deferred:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub audience: String,
    pub grant_issuer: String,
    pub token_service: String,
    pub max_age: Duration,
    pub max_job_id_bytes: usize,
    pub max_destinations: usize,
}

const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_MAX_JOB_ID_BYTES: usize = 128;
/// A job id is one scope value (`baton:job:<id>`) and one audit field: kept well under a claim's
/// 256 bytes.
const MAX_MAX_JOB_ID_BYTES: usize = 200;
const DEFAULT_MAX_DESTINATIONS: usize = 8;
const MAX_MAX_DESTINATIONS: usize = 64;

/// What the `deferred:` section is checked against in the other sections.
#[derive(Debug)]
pub(crate) struct Around<'a> {
    pub trusted_issuers: &'a [IssuerConfig],
    pub token_services: &'a crate::token_service::Checked,
    pub broker: Option<&'a crate::callers::Settings>,
    pub remember: Duration,
}

impl Raw {
    /// The `deferred:` section, every problem added to `errors`.
    pub(crate) fn validate(self, around: &Around<'_>, errors: &mut Errors) -> Settings {
        let audience = self.audience.unwrap_or_default();
        if audience.is_empty() {
            errors.add(
                "deferred.audience",
                "is required: the audience of job grants, Baton's own",
            );
        }
        let grant_issuer = self.grant_issuer.unwrap_or_default();
        match around.trusted_issuers.iter().find(|i| i.issuer == grant_issuer) {
            _ if grant_issuer.is_empty() => errors.add(
                "deferred.grant_issuer",
                "is required: the issuer of job grants (the token service's), one of trusted_issuers",
            ),
            None => errors.add(
                "deferred.grant_issuer",
                format!("`{grant_issuer}` must be one of trusted_issuers[].issuer, or no grant verifies"),
            ),
            Some(issuer) if !audience.is_empty() && !issuer.audiences.contains(&audience) => errors.add(
                "deferred.audience",
                format!(
                    "`{audience}` must be in the audiences of trusted issuer `{grant_issuer}`, or no grant verifies"
                ),
            ),
            Some(_) => {}
        }
        if let Some(caller_audience) = around.broker.and_then(|b| b.rule.audience.as_deref())
            && caller_audience == audience
        {
            errors.add(
                "deferred.audience",
                "must differ from broker.caller_audience: a grant must never pass for a caller's token",
            );
        }
        if around.broker.is_none() {
            errors.add(
                "deferred",
                "Defer and Redeem are broker calls: configure a `broker:` section (who may call them)",
            );
        }
        let token_service = self
            .token_service
            .unwrap_or_else(|| crate::token_service::DEFAULT_TOKEN_SERVICE.to_owned());
        let services = around.token_services;
        if !services.is_empty() && services.get(&token_service).is_none() {
            errors.add(
                "deferred.token_service",
                format!(
                    "`{token_service}` is not a configured token service (there are: {})",
                    services.names()
                ),
            );
        }
        let max_age = duration(self.max_age.as_deref(), "deferred.max_age", DEFAULT_MAX_AGE, errors);
        if max_age.is_zero() {
            errors.add("deferred.max_age", "must be longer than 0s");
        } else if max_age > around.remember {
            errors.add(
                "deferred.max_age",
                "must not be longer than revocation.remember: a revoked job or user would be forgotten while its grant still lives",
            );
        }
        let max_job_id_bytes = self.max_job_id_bytes.unwrap_or(DEFAULT_MAX_JOB_ID_BYTES);
        if max_job_id_bytes == 0 || max_job_id_bytes > MAX_MAX_JOB_ID_BYTES {
            errors.add(
                "deferred.max_job_id_bytes",
                format!("must be between 1 and {MAX_MAX_JOB_ID_BYTES}"),
            );
        }
        let max_destinations = self.max_destinations.unwrap_or(DEFAULT_MAX_DESTINATIONS);
        if max_destinations == 0 || max_destinations > MAX_MAX_DESTINATIONS {
            errors.add(
                "deferred.max_destinations",
                format!("must be between 1 and {MAX_MAX_DESTINATIONS}"),
            );
        }
        Settings {
            audience,
            grant_issuer,
            token_service,
            max_age,
            max_job_id_bytes,
            max_destinations,
        }
    }
}

// === The binding a grant carries ===

const JOB: &str = "baton:job:";
const DEST: &str = "baton:dest:";
const MAX_AGE: &str = "baton:max_age:";
const SID: &str = "baton:sid:";
const ISS: &str = "baton:iss:";

/// What a grant is bound to, as its scope values say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub job: String,
    /// In the order asked, once each.
    pub destinations: Vec<String>,
    pub max_age: u64,
    /// The user's session, when their token named one.
    pub sid: Option<String>,
    /// The user's token's issuer (a revocation of `issuer` + `sub` names the user by it).
    pub iss: Option<String>,
}

/// A job id or a destination name: 1 to `max` bytes of `[A-Za-z0-9._-]`, so it is one scope value
/// and one audit field, with nothing to escape or to split.
fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A claim value that can ride in one scope value (RFC 6749 3.3 scope-token, not empty, at most
/// 256 bytes): printable ASCII but space, `"` and `\`.
fn is_scope_token(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= jwt::MAX_CLAIM_LEN
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

impl Binding {
    /// The scope values that carry it, space-separated.
    pub fn scope(&self) -> String {
        let mut values = vec![format!("{JOB}{}", self.job)];
        values.extend(self.destinations.iter().map(|d| format!("{DEST}{d}")));
        values.push(format!("{MAX_AGE}{}", self.max_age));
        if let Some(sid) = &self.sid {
            values.push(format!("{SID}{sid}"));
        }
        if let Some(iss) = &self.iss {
            values.push(format!("{ISS}{iss}"));
        }
        values.join(" ")
    }

    /// Read back from a grant's scope (a string, or a list of strings): exactly one job, one or more
    /// distinct destinations, one max age, at most one session and one issuer, nothing else. `None`
    /// when it is not that.
    pub fn parse(scope: Option<&Value>, settings: &Settings) -> Option<Self> {
        let values: Vec<&str> = match scope? {
            Value::String(s) => s.split(' ').filter(|v| !v.is_empty()).collect(),
            Value::Array(list) => list.iter().map(Value::as_str).collect::<Option<_>>()?,
            _ => return None,
        };
        let (mut job, mut max_age, mut sid, mut iss) = (None, None, None, None);
        let mut destinations: Vec<String> = Vec::new();
        let once = |slot: &mut Option<String>, value: &str| slot.replace(value.to_owned()).is_none();
        for value in values {
            let ok = if let Some(v) = value.strip_prefix(JOB) {
                is_name(v, settings.max_job_id_bytes) && once(&mut job, v)
            } else if let Some(v) = value.strip_prefix(DEST) {
                let fresh = !destinations.iter().any(|d| d == v);
                destinations.push(v.to_owned());
                is_name(v, jwt::MAX_CLAIM_LEN) && fresh && destinations.len() <= settings.max_destinations
            } else if let Some(v) = value.strip_prefix(MAX_AGE) {
                // Digits only: no sign, no exponent, no leading zero.
                let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
                digits && v.parse::<u64>().is_ok_and(|secs| secs <= settings.max_age.as_secs()) && once(&mut max_age, v)
            } else if let Some(v) = value.strip_prefix(SID) {
                is_scope_token(v) && once(&mut sid, v)
            } else if let Some(v) = value.strip_prefix(ISS) {
                is_scope_token(v) && once(&mut iss, v)
            } else {
                false
            };
            if !ok {
                return None;
            }
        }
        if destinations.is_empty() {
            return None;
        }
        Some(Self {
            job: job?,
            destinations,
            max_age: max_age?.parse().ok()?,
            sid,
            iss,
        })
    }
}

// === The running part ===

/// The `deferred:` section with the route grants are asked for on.
#[derive(Debug)]
pub struct Deferred {
    pub settings: Settings,
    /// Audience `settings.audience`, the grant token service, no policy and no actor token (the
    /// grant is Baton's to redeem; the destination's exchange at Redeem carries the actor).
    route: Arc<Destination>,
}

/// The destination name a Defer decision is reported under (metrics, audit, spans); a configured
/// destination cannot be named so.
pub const JOB_DESTINATION: &str = "baton:job";

impl Deferred {
    /// `None` when the grant token service is missing (configuration validation reports that).
    pub(crate) fn new(settings: Settings, services: &TokenServices, subject_token_type: &'static str) -> Option<Self> {
        let token_service = services.get(&settings.token_service)?.clone();
        let target = Target {
            audience: Some(settings.audience.clone()),
            resource: None,
            scope: None,
            requested_token_type: None,
            subject_token_type,
            actor: None,
        };
        let route = Destination::new(
            Arc::from(JOB_DESTINATION),
            target,
            Vec::new(),
            Arc::new(Policy::default()),
            false,
            token_service,
        );
        Some(Self {
            settings,
            route: Arc::new(route),
        })
    }

    /// The route a Defer decision is reported under.
    pub fn route(&self) -> &Arc<Destination> {
        &self.route
    }

    /// Is a verified token with `claims` a job grant (its `aud` names the job audience)? Such a
    /// token is usable by Redeem only.
    pub fn is_grant(&self, claims: &Map<String, Value>) -> bool {
        match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.settings.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&self.settings.audience)),
            _ => false,
        }
    }
}

/// A Defer request, as the broker received it.
#[derive(Debug)]
pub struct DeferRequest<'a> {
    pub subject_token: &'a str,
    pub job_id: &'a str,
    pub destinations: &'a [String],
    pub max_age_seconds: u64,
}

/// What Defer hands back: the grant (the worker keeps it; Baton does not) and when it expires.
#[derive(Debug)]
pub struct Grant {
    pub grant: Arc<Delegated>,
    pub expires_at: i64,
}

fn deferred(authz: &Authz) -> Result<&Deferred, Denial> {
    authz.deferred.as_ref().ok_or_else(|| {
        Denial::new(
            Reason::DeferredDisabled,
            "deferred jobs are off: the configuration has no `deferred:` section",
        )
    })
}

fn invalid_request(why: &'static str) -> Denial {
    Denial::new(Reason::JobRequestInvalid, why)
}

/// Defer: verify the user's token, hold each destination's policy to it now, and obtain from the
/// token service a grant bound to the job. Nothing is kept.
pub async fn defer(authz: &Authz, request: &DeferRequest<'_>, caller: &Caller<'_>) -> Result<Grant, Denial> {
    let deferred = deferred(authz)?;
    let settings = &deferred.settings;
    if !is_name(request.job_id, settings.max_job_id_bytes) {
        return Err(invalid_request(
            "the job id must be 1 to deferred.max_job_id_bytes bytes of A-Z a-z 0-9 . _ -",
        ));
    }
    if request.destinations.is_empty() || request.destinations.len() > settings.max_destinations {
        return Err(invalid_request(
            "a job names 1 to deferred.max_destinations destinations",
        ));
    }
    let mut destinations: Vec<String> = Vec::with_capacity(request.destinations.len());
    for name in request.destinations {
        if destinations.contains(name) {
            return Err(invalid_request("a job names each destination once"));
        }
        if !is_name(name, jwt::MAX_CLAIM_LEN) {
            return Err(invalid_request("a destination name is not one a grant can carry"));
        }
        destinations.push(name.clone());
    }
    if request.max_age_seconds == 0 || request.max_age_seconds > settings.max_age.as_secs() {
        return Err(invalid_request(
            "max_age_seconds must be between 1 and deferred.max_age",
        ));
    }
    let subject_token = baton_decide::request::check_token(request.subject_token, authz.max_token_bytes())?;
    let digest = cache::digest(subject_token);
    let subject = authz.verify(subject_token, &digest).await?.ok_or_else(|| {
        Denial::new(
            Reason::SubjectTokenOpaque,
            "a job needs a user token Baton verifies (a JWT of a trusted issuer)",
        )
    })?;
    if deferred.is_grant(&subject.claims) {
        return Err(grant_as_subject_token());
    }
    authz.holder_not_revoked(&Holder::of_claims(&subject.claims))?;
    // Every destination must exist and let this caller act for this user now: a job that could
    // never run is refused at once rather than when it runs.
    for name in &destinations {
        let route = authz.route_for(name, &[])?;
        authz.authorize(&route, Some(&subject.claims), caller, None)?;
    }
    let text = |name: &str| subject.claims.get(name).and_then(Value::as_str);
    let carried = |name: &str| match text(name) {
        None => Ok(None),
        Some(v) if is_scope_token(v) => Ok(Some(v.to_owned())),
        Some(_) => Err(invalid_request(
            "the user's token has a sid or iss a grant cannot carry (a revocation could not reach the job)",
        )),
    };
    let binding = Binding {
        job: request.job_id.to_owned(),
        destinations,
        max_age: request.max_age_seconds,
        sid: carried("sid")?,
        iss: carried("iss")?,
    };
    let scope = binding.scope();
    let key = cache::key(&deferred.route.key_params, &scope, &digest);
    let now = crate::clock::unix_now();
    let grant = authz
        .exchange(&deferred.route, subject_token, Some(&subject), Some(&scope), key)
        .await?;
    let expires_at = check_issued(grant.token(), &binding, settings, subject.sub(), now).map_err(|why| {
        tracing::warn!(job = %binding.job, issued = %grant.fingerprint(), why, "the issued grant is refused");
        Denial::new(Reason::IssuedGrantUnbound, why)
    })?;
    Ok(Grant { grant, expires_at })
}

/// Does the grant the token service issued carry exactly the job's binding, for this user, within
/// its maximum age? Its `exp` when it does.
fn check_issued(
    token: &str,
    binding: &Binding,
    settings: &Settings,
    sub: Option<&str>,
    now: u64,
) -> Result<i64, &'static str> {
    let claims = jwt::Unverified::parse(token)
        .ok()
        .flatten()
        .ok_or("the grant is not a JWT")?;
    let aud_is_ours = match &claims.aud {
        Some(Value::String(aud)) => *aud == settings.audience,
        Some(Value::Array(auds)) => auds.len() == 1 && auds[0].as_str() == Some(&settings.audience),
        _ => false,
    };
    if !aud_is_ours {
        return Err("the grant's aud is not deferred.audience alone");
    }
    if claims.issuer() != Some(settings.grant_issuer.as_str()) {
        return Err("the grant's iss is not deferred.grant_issuer");
    }
    if claims.sub.as_ref().and_then(Value::as_str) != sub || sub.is_none() {
        return Err("the grant names another subject than the user's token");
    }
    if Binding::parse(claims.scope.as_ref(), settings).as_ref() != Some(binding) {
        return Err("the grant's scope does not carry exactly the job's binding");
    }
    let exp = claims.exp().ok_or("the grant has no exp")?;
    // A second of skew between Baton's clock and the token service's.
    let latest = i64::try_from(now.saturating_add(binding.max_age).saturating_add(1)).unwrap_or(i64::MAX);
    if exp > latest {
        return Err("the grant lives longer than the job's max_age");
    }
    Ok(exp)
}

fn grant_as_subject_token() -> Denial {
    Denial::new(
        Reason::GrantAsSubjectToken,
        "this token is a deferred job's grant: only Redeem accepts it",
    )
}

/// Refused with `grant_as_subject_token` when verified `claims` are a job grant's (the Envoy
/// path and the broker's Exchange call it on every verified subject).
pub(crate) fn not_a_grant(deferred: Option<&Deferred>, claims: &Map<String, Value>) -> Result<(), Denial> {
    match deferred {
        Some(d) if d.is_grant(claims) => Err(grant_as_subject_token()),
        _ => Ok(()),
    }
}

/// What Redeem hands back: the destination's token, and which job and destination it was for.
#[derive(Debug)]
pub struct Redeemed {
    pub destination: Arc<Destination>,
    pub token: Arc<Delegated>,
    pub job: String,
}

/// The job a grant names, read unverified: for the audit record of a Redeem that was refused
/// before the grant verified, only when it is a well-formed job id.
pub fn job_of(authz: &Authz, grant: &str) -> Option<String> {
    let settings = &authz.deferred.as_ref()?.settings;
    let claims = jwt::Unverified::read(grant)?;
    Binding::parse(claims.scope.as_ref(), settings).map(|b| b.job)
}

/// Redeem: verify the grant, check the job and its user are not revoked, run `destination`'s policy
/// now, and exchange the grant (as the subject token) for the destination's token. Not cached.
pub async fn redeem(authz: &Authz, grant: &str, destination: &str, caller: &Caller<'_>) -> Result<Redeemed, Denial> {
    let deferred = deferred(authz)?;
    let settings = &deferred.settings;
    if grant.is_empty() {
        return Err(invalid_request("the request carries no grant"));
    }
    if destination.is_empty() || destination.len() > jwt::MAX_CLAIM_LEN {
        return Err(invalid_request("the request names no destination"));
    }
    let grant = baton_decide::request::check_token(grant, authz.max_token_bytes())
        .map_err(|d| Denial::new(Reason::GrantInvalid, d.description))?;
    let digest = cache::digest(grant);
    let subject = match authz.verify(grant, &digest).await {
        Ok(Some(subject)) => subject,
        Ok(None) => return Err(Denial::new(Reason::GrantInvalid, "the grant is not a JWT")),
        Err(d) if d.reason == Reason::SubjectTokenExpired => {
            return Err(Denial::new(Reason::GrantExpired, "the grant has expired"));
        }
        Err(d) if d.reason == Reason::IssuerKeysUnavailable => return Err(d),
        Err(d) => {
            return Err(Denial::new(
                Reason::GrantInvalid,
                format!("the grant does not verify: {}", d.description),
            ));
        }
    };
    let now = crate::clock::unix_now();
    let claims = &subject.claims;
    let binding = read_grant(claims, settings, now)?;
    if !binding.destinations.iter().any(|d| d == destination) {
        return Err(Denial::new(
            Reason::DestinationNotInGrant,
            "the grant does not name this destination",
        ));
    }
    let iat = claims
        .get("iat")
        .and_then(|v| jwt::numeric_date(v, "iat").ok())
        .map(|v| v.floor() as i64);
    if authz.revocations().is_job_revoked(&binding.job, iat, now) {
        return Err(Denial::new(
            Reason::JobRevoked,
            "the job was revoked after its grant was issued",
        ));
    }
    // The user as the grant carries them: its `sub`, the user's issuer and session from the binding,
    // and when the grant was issued (a revocation since then ends it).
    let holder = Holder {
        iss: binding.iss.as_deref(),
        sub: claims.get("sub").and_then(Value::as_str),
        sid: binding.sid.as_deref(),
        iat,
    };
    authz.holder_not_revoked(&holder)?;
    let route = authz.route_for(destination, &[])?;
    let scope = authz.authorize(&route, Some(claims), caller, None)?;
    let key = cache::key(&route.key_params, scope.as_deref().unwrap_or(""), &digest);
    let token = authz
        .exchange(&route, grant, Some(&subject), scope.as_deref(), key)
        .await?;
    Ok(Redeemed {
        destination: route,
        token,
        job: binding.job,
    })
}

/// The binding of a verified grant, after the checks verification does not make: issued by
/// `grant_issuer` for the job audience alone, not expired (no leeway), a well-formed binding, and
/// a lifetime within its own `max_age`.
fn read_grant(claims: &Map<String, Value>, settings: &Settings, now: u64) -> Result<Binding, Denial> {
    let invalid = |why: &'static str| Denial::new(Reason::GrantInvalid, why);
    if claims.get("iss").and_then(Value::as_str) != Some(settings.grant_issuer.as_str()) {
        return Err(invalid("the grant was not issued by deferred.grant_issuer"));
    }
    let aud_is_ours = match claims.get("aud") {
        Some(Value::String(aud)) => *aud == settings.audience,
        Some(Value::Array(auds)) => auds.len() == 1 && auds[0].as_str() == Some(&settings.audience),
        _ => false,
    };
    if !aud_is_ours {
        return Err(invalid("the grant's aud is not the job audience alone"));
    }
    let exp = claims
        .get("exp")
        .and_then(|v| jwt::expiry(v).ok())
        .ok_or_else(|| invalid("the grant has no exp"))?;
    if exp <= i64::try_from(now).unwrap_or(i64::MAX) {
        return Err(Denial::new(Reason::GrantExpired, "the grant has expired"));
    }
    let binding = Binding::parse(claims.get("scope"), settings)
        .ok_or_else(|| invalid("the grant does not carry a job binding"))?;
    let iat = claims
        .get("iat")
        .and_then(|v| jwt::numeric_date(v, "iat").ok())
        .map(|v| v.floor() as i64)
        .ok_or_else(|| invalid("the grant has no iat"))?;
    let lifetime = exp.saturating_sub(iat);
    if lifetime > i64::try_from(binding.max_age).unwrap_or(i64::MAX).saturating_add(1) {
        return Err(invalid("the grant lives longer than its job's max_age"));
    }
    if claims.get("sub").and_then(Value::as_str).is_none() {
        return Err(invalid("the grant names no user (sub)"));
    }
    Ok(binding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Settings {
        Settings {
            audience: "baton-jobs".into(),
            grant_issuer: "https://sts".into(),
            token_service: "default".into(),
            max_age: Duration::from_secs(3600),
            max_job_id_bytes: 16,
            max_destinations: 3,
        }
    }

    fn binding() -> Binding {
        Binding {
            job: "report-7".into(),
            destinations: vec!["orders".into(), "billing".into()],
            max_age: 600,
            sid: Some("s-1".into()),
            iss: Some("https://idp.example".into()),
        }
    }

    #[test]
    fn a_binding_reads_back_from_its_scope_and_nothing_else_does() {
        let s = settings();
        let b = binding();
        let scope = b.scope();
        assert_eq!(
            scope,
            "baton:job:report-7 baton:dest:orders baton:dest:billing baton:max_age:600 baton:sid:s-1 baton:iss:https://idp.example"
        );
        assert_eq!(Binding::parse(Some(&json!(scope)), &s), Some(b.clone()));
        let list: Vec<&str> = scope.split(' ').collect();
        assert_eq!(Binding::parse(Some(&json!(list)), &s), Some(b));
        let minimal = "baton:job:j baton:dest:orders baton:max_age:1";
        assert!(Binding::parse(Some(&json!(minimal)), &s).is_some());
        for bad in [
            "",
            "baton:dest:orders baton:max_age:60",
            "baton:job:j baton:max_age:60",
            "baton:job:j baton:dest:orders",
            "baton:job:j baton:job:k baton:dest:orders baton:max_age:60",
            "baton:job:j baton:dest:orders baton:dest:orders baton:max_age:60",
            "baton:job:j baton:dest:a baton:dest:b baton:dest:c baton:dest:d baton:max_age:60",
            "baton:job:j baton:dest:orders baton:max_age:60 baton:max_age:61",
            "baton:job:j baton:dest:orders baton:max_age:0",
            "baton:job:j baton:dest:orders baton:max_age:060",
            "baton:job:j baton:dest:orders baton:max_age:+60",
            "baton:job:j baton:dest:orders baton:max_age:3601",
            "baton:job:j baton:dest:orders baton:max_age:99999999999999999999999",
            "baton:job:j baton:dest:orders baton:max_age:60 orders.read",
            "baton:job:j baton:dest:orders baton:max_age:60 baton:other:x",
            "baton:job:j baton:dest:orders baton:max_age:60 baton:sid:a baton:sid:b",
            "baton:job: baton:dest:orders baton:max_age:60",
            "baton:job:a/b baton:dest:orders baton:max_age:60",
            "baton:job:j%20k baton:dest:orders baton:max_age:60",
            "baton:job:seventeen-bytes-xx baton:dest:orders baton:max_age:60",
            "baton:job:j baton:dest:or:ders baton:max_age:60",
            "BATON:JOB:j baton:dest:orders baton:max_age:60",
        ] {
            assert_eq!(Binding::parse(Some(&json!(bad)), &s), None, "{bad:?}");
        }
        assert_eq!(Binding::parse(None, &s), None);
        assert_eq!(Binding::parse(Some(&json!(42)), &s), None);
        assert_eq!(Binding::parse(Some(&json!(["baton:job:j", 1])), &s), None);
    }

    fn grant_claims(now: i64, extra: Value) -> Map<String, Value> {
        let mut claims = json!({
            "iss": "https://sts",
            "aud": "baton-jobs",
            "sub": "alice",
            "iat": now,
            "exp": now + 600,
            "scope": binding().scope(),
        });
        if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
            c.extend(e);
        }
        match claims {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    #[test]
    fn a_grant_is_read_only_when_every_part_holds() {
        let s = settings();
        let now = 1_800_000_000_i64;
        let at = now as u64;
        assert_eq!(read_grant(&grant_claims(now, json!({})), &s, at), Ok(binding()));
        let reason = |extra: Value, at: u64| read_grant(&grant_claims(now, extra), &s, at).map_err(|d| d.reason);
        for (extra, expected) in [
            (json!({"iss": "https://idp.example"}), Reason::GrantInvalid),
            (json!({"aud": "https://orders.example"}), Reason::GrantInvalid),
            (
                json!({"aud": ["baton-jobs", "https://orders.example"]}),
                Reason::GrantInvalid,
            ),
            (json!({"aud": 7}), Reason::GrantInvalid),
            (json!({"scope": "orders.read"}), Reason::GrantInvalid),
            (json!({"scope": null}), Reason::GrantInvalid),
            (json!({"iat": null}), Reason::GrantInvalid),
            (json!({"sub": null}), Reason::GrantInvalid),
            (json!({"exp": now + 602}), Reason::GrantInvalid),
            (json!({"exp": now}), Reason::GrantExpired),
        ] {
            assert_eq!(reason(extra.clone(), at), Err(expected), "{extra}");
        }
        assert_eq!(
            reason(json!({"aud": ["baton-jobs"]}), at),
            Ok(binding()),
            "a list of the one audience"
        );
        assert_eq!(reason(json!({}), at + 600), Err(Reason::GrantExpired), "no leeway");
    }

    #[test]
    fn an_issued_grant_must_carry_the_whole_binding() {
        use base64::Engine as _;
        let s = settings();
        let now = 1_800_000_000_u64;
        let jwt = |claims: Value| {
            let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!("{}.{}.sig", b64(&json!({"alg": "ES256"})), b64(&claims))
        };
        let good = json!({
            "iss": "https://sts", "aud": "baton-jobs", "sub": "alice",
            "iat": now, "exp": now + 600, "scope": binding().scope(),
        });
        let check = |claims: Value| check_issued(&jwt(claims), &binding(), &s, Some("alice"), now);
        assert_eq!(check(good.clone()), Ok(now as i64 + 600));
        let with = |key: &str, value: Value| {
            let mut c = good.clone();
            c[key] = value;
            c
        };
        for (what, claims) in [
            ("another aud", with("aud", json!("https://orders.example"))),
            ("another issuer", with("iss", json!("https://other"))),
            ("another user", with("sub", json!("mallory"))),
            (
                "no job",
                with("scope", json!("baton:dest:orders baton:dest:billing baton:max_age:600")),
            ),
            (
                "one destination short",
                with(
                    "scope",
                    json!(
                        "baton:job:report-7 baton:dest:orders baton:max_age:600 baton:sid:s-1 baton:iss:https://idp.example"
                    ),
                ),
            ),
            (
                "no sid",
                with(
                    "scope",
                    json!(
                        "baton:job:report-7 baton:dest:orders baton:dest:billing baton:max_age:600 baton:iss:https://idp.example"
                    ),
                ),
            ),
            ("too long", with("exp", json!(now + 602))),
            ("no exp", {
                let mut c = good.clone();
                c.as_object_mut().map(|o| o.remove("exp"));
                c
            }),
        ] {
            assert!(check(claims).is_err(), "{what}");
        }
        assert!(check_issued("opaque", &binding(), &s, Some("alice"), now).is_err());
        assert!(check_issued(&jwt(good), &binding(), &s, None, now).is_err());
    }

    fn config(deferred: &str, broker: &str) -> Result<crate::config::Config, Vec<String>> {
        let yaml = format!(
            r#"
token_service: {{ token_endpoint: http://127.0.0.1:9/token, client_id: c, auth: {{ method: none }} }}
trusted_issuers:
  - issuer: https://sts.example
    jwks_uri: https://sts.example/jwks
    audiences: [frontend, baton-broker, baton-jobs]
destinations:
  - name: orders
    audience: https://orders.example
{broker}
{deferred}
"#
        );
        crate::config::Config::from_yaml(&yaml).map_err(|e| e.0.into_iter().map(|e| e.path).collect())
    }

    const BROKER: &str = "broker: { caller_audience: baton-broker }";

    #[test]
    fn the_section_is_off_by_default_and_checked_against_the_others() {
        assert_eq!(config("", BROKER).expect("valid").deferred, None);
        let on = config(
            "deferred: { audience: baton-jobs, grant_issuer: https://sts.example }",
            BROKER,
        )
        .expect("valid");
        let settings = on.deferred.expect("on");
        assert_eq!(settings.max_age, DEFAULT_MAX_AGE);
        assert_eq!(
            (
                settings.max_job_id_bytes,
                settings.max_destinations,
                settings.token_service.as_str()
            ),
            (DEFAULT_MAX_JOB_ID_BYTES, DEFAULT_MAX_DESTINATIONS, "default")
        );
        assert_eq!(
            config(
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, max_age: 2h }",
                BROKER
            )
            .expect("shorter than remember")
            .deferred
            .map(|d| d.max_age),
            Some(Duration::from_secs(7200))
        );
    }

    #[test]
    fn the_section_reports_every_error_at_once() {
        // Every field wrong at once: every path reported.
        let all_wrong = "deferred:
  grant_issuer: https://elsewhere.example
  token_service: nowhere
  max_age: 25h
  max_job_id_bytes: 0
  max_destinations: 65";
        assert_eq!(
            config(all_wrong, "").expect_err("invalid"),
            [
                "deferred.audience",
                "deferred.grant_issuer",
                "deferred",
                "deferred.token_service",
                "deferred.max_age",
                "deferred.max_job_id_bytes",
                "deferred.max_destinations",
            ]
        );
        for (deferred, path) in [
            (
                "deferred: { audience: other, grant_issuer: https://sts.example }",
                "deferred.audience",
            ),
            (
                "deferred: { audience: baton-broker, grant_issuer: https://sts.example }",
                "deferred.audience",
            ),
            ("deferred: { audience: baton-jobs }", "deferred.grant_issuer"),
            (
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, max_age: 0s }",
                "deferred.max_age",
            ),
            (
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, max_job_id_bytes: 201 }",
                "deferred.max_job_id_bytes",
            ),
            (
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, unknown: 1 }",
                "(yaml)",
            ),
        ] {
            let paths = config(deferred, BROKER).expect_err(deferred);
            assert!(paths.iter().any(|p| p == path), "{deferred}: {paths:?}");
        }
    }

    #[test]
    fn names_are_a_small_alphabet() {
        assert!(is_name("report-7.v2_x", 16));
        for bad in ["", "a b", "a/b", "a:b", "é", "a\u{0}", "seventeen-bytes-x"] {
            assert!(!is_name(bad, 16), "{bad:?}");
        }
        assert!(is_scope_token("https://idp.example/realms/x"));
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert!(!is_scope_token(bad), "{bad:?}");
        }
    }
}
