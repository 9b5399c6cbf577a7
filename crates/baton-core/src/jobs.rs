//! Deferred jobs' two steps on the broker API (issue 14 §4). `defer`: the user's token is handed
//! over once, verified, each destination's policy held to it, and the token service asked for a
//! grant bound to the job (`deferred::Binding`), which is checked and returned. `redeem`: at
//! execution time the grant is verified, the job and its user are checked against the revocations,
//! the destination's policy runs again, and the grant is exchanged for the destination's token.
//!
//! Baton keeps NO user credential for a job: not the user's token, not the grant, not the tokens
//! Redeem obtains (they are not cached). The worker holds the grant; a revocation of the user, the
//! session or the job ends it at the next Redeem. It never logs a token or a grant (fingerprints).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::authz::{Authz, Caller};
use crate::cache::{self, Delegated};
use crate::decision::Destination;
use crate::deferred::{Binding, Deferred, Settings, grant_as_subject_token, is_name, is_scope_token};
use crate::jwt;
use crate::revocation::Holder;
use crate::verify::Subject;
use baton_decide::reason::{Denial, Reason};

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
        caller: bound_caller(settings, caller)?,
    };
    let scope = binding.scope();
    let key = cache::key(&deferred.route.key_params, &scope, &digest);
    let now = crate::clock::unix_now();
    let grant = authz
        .exchange(&deferred.route, subject_token, Some(&subject), Some(&scope), key)
        .await?;
    let unbound = |why: &'static str| {
        tracing::warn!(job = %binding.job, issued = %grant.fingerprint(), why, "the issued grant is refused");
        Denial::new(Reason::IssuedGrantUnbound, why)
    };
    let issued = match (jwt::Unverified::parse(grant.token()), &settings.introspection_endpoint) {
        (Ok(Some(claims)), _) => claims,
        // An opaque grant: what the token service says of it is all there is to check.
        (Ok(None), Some(endpoint)) => {
            let claims = introspect(deferred, endpoint, grant.token()).await?;
            serde_json::from_value(Value::Object(claims))
                .map_err(|_| unbound("the introspection answer's claims are not a JWT's claims"))?
        }
        _ => {
            return Err(unbound(
                "the grant is not a JWT (an opaque grant needs deferred.introspection_endpoint)",
            ));
        }
    };
    let expires_at = check_issued(&issued, &binding, settings, subject.sub(), now).map_err(unbound)?;
    Ok(Grant { grant, expires_at })
}

/// The caller a grant is bound to under `deferred.bind_caller`: its identity must be one a scope
/// value can carry.
fn bound_caller(settings: &Settings, caller: &Caller<'_>) -> Result<Option<String>, Denial> {
    if !settings.bind_caller {
        return Ok(None);
    }
    match caller.source {
        Some(source) if is_scope_token(source) => Ok(Some(source.to_owned())),
        _ => Err(invalid_request(
            "deferred.bind_caller: the caller's identity cannot be carried in a grant",
        )),
    }
}

/// Does the grant the token service issued carry exactly the job's binding, for this user, within
/// its maximum age? Its `exp` when it does.
fn check_issued(
    claims: &jwt::Unverified,
    binding: &Binding,
    settings: &Settings,
    sub: Option<&str>,
    now: u64,
) -> Result<i64, &'static str> {
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

/// What Redeem hands back: the destination's token, and which job and destination it was for.
#[derive(Debug)]
pub struct Redeemed {
    pub destination: Arc<Destination>,
    pub token: Arc<Delegated>,
    pub job: String,
}

/// `job_id` when it is a job id this Baton accepts (`deferred.max_job_id_bytes`, the alphabet).
pub fn well_formed<'a>(authz: &Authz, job_id: &'a str) -> Option<&'a str> {
    let settings = &authz.deferred.as_ref()?.settings;
    is_name(job_id, settings.max_job_id_bytes).then_some(job_id)
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
    let introspection = settings.introspection_endpoint.as_ref();
    let opaque = matches!(jwt::Unverified::parse(grant), Ok(None));
    let verified = match (opaque, introspection) {
        // An opaque grant, under `introspection_endpoint`: the token service's answer is its claims,
        // held below to every rule a JWT grant's are.
        (true, Some(endpoint)) => Ok(Some(introspected(introspect(deferred, endpoint, grant).await?))),
        _ => authz.verify(grant, &digest).await,
    };
    let subject = match verified {
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
    // A grant bound to the caller that deferred it is redeemed by that caller only, whatever the
    // configuration says now.
    if binding
        .caller
        .as_deref()
        .is_some_and(|bound| Some(bound) != caller.source)
    {
        return Err(Denial::new(
            Reason::GrantCallerMismatch,
            "the grant is bound to another broker caller",
        ));
    }
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
        // A grant carries no e-mail address: an `email` revocation (Shared Signals) does not reach
        // a job (a known gap: docs/threat-model.md).
        claims: None,
    };
    authz.holder_not_revoked(&holder)?;
    // A JWT grant that passed every local check: is it still live where it was issued? (An opaque
    // one was asked above.)
    if let (false, Some(endpoint)) = (opaque, introspection) {
        introspect(deferred, endpoint, grant).await?;
    }
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

/// RFC 7662 introspection of a job grant at `endpoint`, authenticated as the grant token service's
/// client, within its `timeout`: the answer's other members when `active` is `true`. Fails closed.
async fn introspect(deferred: &Deferred, endpoint: &url::Url, grant: &str) -> Result<Map<String, Value>, Denial> {
    let failed = |why: &'static str| Denial::new(Reason::GrantIntrospectionFailed, why);
    let answer = deferred
        .route
        .token_service
        .introspect(endpoint, grant)
        .await
        .map_err(|e| {
            tracing::warn!(%endpoint, grant = %crate::secret::fingerprint(grant), error = %e, "grant introspection failed");
            e.held_back()
                .unwrap_or_else(|| failed("the introspection endpoint did not answer"))
        })?;
    let Value::Object(mut claims) = answer else {
        return Err(failed("the introspection answer is not a JSON object"));
    };
    match claims.remove("active") {
        Some(Value::Bool(true)) => Ok(claims),
        Some(Value::Bool(false)) => Err(Denial::new(
            Reason::GrantInactive,
            "the token service says the grant is no longer active",
        )),
        _ => Err(failed("the introspection answer has no boolean `active`")),
    }
}

/// An opaque grant's introspected claims, as a subject (its `iss` and `exp` are checked by
/// `read_grant` before use).
fn introspected(claims: Map<String, Value>) -> Arc<Subject> {
    let issuer = claims.get("iss").and_then(Value::as_str).unwrap_or_default().to_owned();
    let exp = claims.get("exp").and_then(|v| jwt::expiry(v).ok()).unwrap_or(0);
    Arc::new(Subject { claims, issuer, exp })
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
    use crate::deferred::fixtures::{binding, settings};
    use serde_json::json;

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
        let read = |claims: Value| jwt::Unverified::read(&jwt(claims)).expect("a JWT");
        let check = |claims: Value| check_issued(&read(claims), &binding(), &s, Some("alice"), now);
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
        assert!(check_issued(&read(good), &binding(), &s, None, now).is_err());
    }
}
