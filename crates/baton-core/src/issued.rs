//! Checks on the token a token service issued, before Baton uses or caches it: a token service that
//! answers with the user's own token, a token for another audience, an expired one, one that
//! impersonates instead of delegating, or one with more scope than asked is refused here (503, a
//! reason of its own). It owns what "the token Baton asked for" means; it never logs or returns a
//! token, only says why it refuses one. Checks that need claims apply to a JWT; an opaque token gets
//! the ones that need none (not the subject token, no wider `scope` in the answer).

use std::collections::HashSet;

use serde_json::Value;

use crate::actor::Actor;
use crate::exchange::Issued;
use crate::jwt::{JwtError, Unverified};
use crate::token_service::Profile;
use baton_decide::reason::{Denial, Reason};

/// What Baton asked the token service for, to hold the answer against.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    pub subject_token: &'a str,
    /// The workload's token, when Baton sent it as `actor_token`.
    pub actor: Option<&'a Actor>,
    pub audience: Option<&'a str>,
    pub resource: Option<&'a str>,
    /// Space-separated, as sent.
    pub scope: Option<&'a str>,
    pub profile: Profile,
    /// `policy.require_delegation`, resolved: the issued token must show an `act` chain (a JWT
    /// with `act`; an opaque token cannot show one and is refused).
    pub require_delegation: bool,
}

/// Why an issued token is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssuedError {
    #[error("the token service answered with the subject token (or Baton's own actor token)")]
    IsSubjectToken,
    #[error("the issued token's aud does not name exactly what was asked for")]
    AudienceMismatch,
    #[error("the issued token has already expired")]
    Expired,
    #[error("the issued token's act claim does not name Baton's actor: the token service impersonated")]
    ActorMissing,
    #[error("the token service granted more scope than was asked for")]
    ScopeExceeded,
    #[error("the issued token breaks a JWT rule: {0}")]
    Malformed(JwtError),
    #[error("the issued token is opaque, so it cannot show the delegation chain require_delegation asks for")]
    ChainUnreadable,
}

impl From<IssuedError> for Denial {
    fn from(e: IssuedError) -> Self {
        let reason = match e {
            IssuedError::IsSubjectToken => Reason::IssuedTokenIsSubjectToken,
            IssuedError::AudienceMismatch => Reason::IssuedTokenAudienceMismatch,
            IssuedError::Expired => Reason::IssuedTokenExpired,
            IssuedError::ActorMissing | IssuedError::ChainUnreadable => Reason::IssuedTokenActorMissing,
            IssuedError::ScopeExceeded => Reason::IssuedTokenScopeExceeded,
            IssuedError::Malformed(_) => Reason::IssuedTokenMalformed,
        };
        Denial::new(reason, e.to_string())
    }
}

/// Hold `issued` (whose payload, read once by the caller, is `claims`) against what was `asked`,
/// at `now` (Unix seconds).
pub fn check(
    issued: &Issued,
    claims: Result<Option<&Unverified>, JwtError>,
    asked: &Asked<'_>,
    now: u64,
) -> Result<(), IssuedError> {
    let token = issued.access_token.expose();
    if same_token(token, asked.subject_token) || asked.actor.is_some_and(|a| same_token(token, a.token.expose())) {
        return Err(IssuedError::IsSubjectToken);
    }
    let claims = claims.map_err(IssuedError::Malformed)?;
    // Entra's on-behalf-of answers with `aud` set to the resource's application id, which Baton is
    // not told, and with scopes named differently from the request: those two are not judged there.
    // Identity chaining's token is asked for with the destination's own audience and scope, so it
    // is held to them as an exchanged one is.
    let rfc8693 = asked.profile != Profile::EntraObo;
    if let Some(claims) = claims {
        if rfc8693 {
            check_audience(claims.aud.as_ref(), asked)?;
        }
        if claims.exp().is_some_and(|exp| exp <= now as i64) {
            return Err(IssuedError::Expired);
        }
        // Entra's profile sends no actor token, so an actor is only asked for under RFC 8693.
        // Without `require_delegation` a token with no `act` is taken (impersonation, accepted on
        // purpose); one with an `act` must still name Baton's actor.
        if rfc8693 {
            match asked.actor {
                Some(actor) if asked.require_delegation || claims.act.is_some() => {
                    check_actor(claims.act.as_ref(), actor)?;
                }
                None if asked.require_delegation && claims.act.is_none() => return Err(IssuedError::ActorMissing),
                _ => {}
            }
        }
    } else if rfc8693 && asked.require_delegation {
        return Err(IssuedError::ChainUnreadable);
    }
    if rfc8693 && let Some(asked_scope) = asked.scope {
        let granted = issued.scope.as_deref().map(Granted::Text).or_else(|| {
            let claims = claims?;
            claims.scope.as_ref().or(claims.scp.as_ref()).map(Granted::Claim)
        });
        if let Some(granted) = granted {
            let asked: HashSet<&str> = asked_scope.split(' ').filter(|s| !s.is_empty()).collect();
            if !granted.within(&asked) {
                return Err(IssuedError::ScopeExceeded);
            }
        }
    }
    Ok(())
}

/// The same token, or one a destination would read as the same: trailing `=` padding does not
/// change a base64url token, and two JWS with the same header and payload (or the same signature)
/// carry the same claims whatever was done to the rest.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('='), b.trim_end_matches('='));
    if a == b {
        return true;
    }
    match (jws_parts(a), jws_parts(b)) {
        (Some((input_a, sig_a)), Some((input_b, sig_b))) => input_a == input_b || (!sig_a.is_empty() && sig_a == sig_b),
        _ => false,
    }
}

/// A compact JWS's signing input (`header.payload`) and its signature, `=` padding cut.
fn jws_parts(token: &str) -> Option<(&str, &str)> {
    let mut p = token.split('.');
    let (header, payload, signature) = (p.next()?, p.next()?, p.next()?);
    let input = token.get(..header.len() + 1 + payload.len())?;
    Some((input, signature.trim_end_matches('=')))
}

/// `aud` (a string or an array of strings) names every audience and resource asked for, and
/// nothing else: a token that also names another audience would be accepted there too.
fn check_audience(aud: Option<&Value>, asked: &Asked<'_>) -> Result<(), IssuedError> {
    let wanted: HashSet<&str> = [asked.audience, asked.resource].into_iter().flatten().collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let named: HashSet<&str> = match aud {
        Some(Value::String(one)) => HashSet::from([one.as_str()]),
        Some(Value::Array(many)) => many
            .iter()
            .map(|v| v.as_str().ok_or(IssuedError::AudienceMismatch))
            .collect::<Result<_, _>>()?,
        _ => return Err(IssuedError::AudienceMismatch),
    };
    if named == wanted {
        Ok(())
    } else {
        Err(IssuedError::AudienceMismatch)
    }
}

/// RFC 8693 4.1: the current actor is the outermost `act`. It must name Baton's actor: its `sub`
/// when the actor token is a JWT; any actor at all when it is opaque (its subject is unknown here).
fn check_actor(act: Option<&Value>, actor: &Actor) -> Result<(), IssuedError> {
    let current = match act {
        Some(Value::Object(entry)) => entry.get("sub").and_then(Value::as_str),
        _ => None,
    };
    match (current, actor.sub.as_deref()) {
        (Some(current), Some(expected)) if current == expected => Ok(()),
        (Some(_), None) => Ok(()),
        _ => Err(IssuedError::ActorMissing),
    }
}

/// The scope granted: the answer's `scope`, else the token's `scope` or `scp` claim.
enum Granted<'a> {
    Text(&'a str),
    Claim(&'a Value),
}

impl Granted<'_> {
    /// Every granted scope was asked for. A claim of an unexpected type grants nothing Baton can
    /// bound, so it is refused.
    fn within(&self, asked: &HashSet<&str>) -> bool {
        let text_within = |text: &str| text.split(' ').filter(|s| !s.is_empty()).all(|s| asked.contains(s));
        match self {
            Self::Text(text) => text_within(text),
            Self::Claim(Value::String(text)) => text_within(text),
            Self::Claim(Value::Array(items)) => items.iter().all(|v| v.as_str().is_some_and(text_within)),
            Self::Claim(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const NOW: u64 = 1_800_000_000;
    const SUBJECT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c3ViamVjdC1zaWduYXR1cmU";

    fn jwt(claims: &str) -> String {
        format!("eyJhbGciOiJFUzI1NiJ9.{}.aXNzdWVkLXNpZw", URL_SAFE_NO_PAD.encode(claims))
    }

    fn issued(token: &str, scope: Option<&str>) -> Issued {
        Issued {
            access_token: Secret::new(token),
            issued_token_type: None,
            token_type: "Bearer".into(),
            expires_in: Some(300),
            scope: scope.map(str::to_owned),
        }
    }

    fn asked<'a>(actor: Option<&'a Actor>, scope: Option<&'a str>) -> Asked<'a> {
        Asked {
            subject_token: SUBJECT,
            actor,
            audience: Some("https://orders.example"),
            resource: None,
            scope,
            profile: Profile::Rfc8693,
            require_delegation: actor.is_some(),
        }
    }

    fn judge(token: &str, scope: Option<&str>, asked: &Asked<'_>) -> Result<(), IssuedError> {
        let claims = Unverified::parse(token);
        check(
            &issued(token, scope),
            claims.as_ref().map(Option::as_ref).map_err(|e| *e),
            asked,
            NOW,
        )
    }

    #[test]
    fn the_subject_token_in_any_spelling_is_refused() {
        let a = asked(None, None);
        let (header_payload, _) = SUBJECT.rsplit_once('.').expect("three parts");
        for token in [
            SUBJECT.to_owned(),
            format!("{SUBJECT}="),
            format!("{SUBJECT}=="),
            format!("{header_payload}.b3RoZXItc2lnbmF0dXJl"),
            format!("{header_payload}."),
            format!(
                "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.{}",
                SUBJECT.rsplit('.').next().expect("sig")
            ),
        ] {
            assert_eq!(judge(&token, None, &a), Err(IssuedError::IsSubjectToken), "{token}");
        }
        let actor = Actor::new(Secret::new("opaque-actor-token"));
        assert_eq!(
            judge("opaque-actor-token", None, &asked(Some(&actor), None)),
            Err(IssuedError::IsSubjectToken),
            "Baton's own credential is never handed to the destination"
        );
        assert_eq!(judge("an-opaque-token", None, &a), Ok(()), "an opaque token of its own");
    }

    #[test]
    fn the_audience_is_exactly_the_one_asked_for() {
        let a = asked(None, None);
        let ok = [
            r#"{"aud":"https://orders.example","exp":1800000300}"#,
            r#"{"aud":["https://orders.example"]}"#,
        ];
        for claims in ok {
            assert_eq!(judge(&jwt(claims), None, &a), Ok(()), "{claims}");
        }
        for claims in [
            r#"{"sub":"bob"}"#,
            r#"{"aud":"https://billing.example"}"#,
            r#"{"aud":["https://orders.example","https://billing.example"]}"#,
            r#"{"aud":[]}"#,
            r#"{"aud":["https://orders.example",7]}"#,
            r#"{"aud":"https://orders.example/"}"#,
            r#"{"aud":"HTTPS://orders.example"}"#,
            r#"{"aud":{"0":"https://orders.example"}}"#,
            r#"{"aud":null}"#,
        ] {
            assert_eq!(
                judge(&jwt(claims), None, &a),
                Err(IssuedError::AudienceMismatch),
                "{claims}"
            );
        }
        let both = Asked {
            resource: Some("https://orders.example/api"),
            ..a
        };
        assert_eq!(
            judge(
                &jwt(r#"{"aud":["https://orders.example/api","https://orders.example"]}"#),
                None,
                &both
            ),
            Ok(())
        );
        assert_eq!(
            judge(&jwt(r#"{"aud":"https://orders.example"}"#), None, &both),
            Err(IssuedError::AudienceMismatch)
        );
        let entra = Asked {
            profile: Profile::EntraObo,
            ..a
        };
        assert_eq!(judge(&jwt(r#"{"aud":"00000003-0000"}"#), None, &entra), Ok(()));
        // Identity chaining's token is held to the destination's audience as an exchanged one is.
        let chained = Asked {
            profile: Profile::IdentityChaining,
            ..a
        };
        assert_eq!(
            judge(&jwt(r#"{"aud":"https://as-b.example"}"#), None, &chained),
            Err(IssuedError::AudienceMismatch)
        );
        assert_eq!(
            judge(&jwt(r#"{"aud":"https://orders.example"}"#), None, &chained),
            Ok(())
        );
    }

    #[test]
    fn an_expired_or_malformed_token_is_refused() {
        let a = asked(None, None);
        let at = |exp: &str| jwt(&format!(r#"{{"aud":"https://orders.example","exp":{exp}}}"#));
        assert_eq!(judge(&at("1800000000"), None, &a), Err(IssuedError::Expired));
        assert_eq!(judge(&at("1799999999.9"), None, &a), Err(IssuedError::Expired));
        assert_eq!(judge(&at("1800000001.5"), None, &a), Ok(()));
        for bad in [r#""1800000300""#, "-1", "1e300", "true"] {
            assert_eq!(
                judge(&at(bad), None, &a),
                Err(IssuedError::Malformed(JwtError::BadNumericDate("exp"))),
                "{bad}"
            );
        }
        let crit = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","crit":["x-ext"]}"#),
            URL_SAFE_NO_PAD.encode(r#"{"aud":"https://orders.example"}"#)
        );
        assert_eq!(
            judge(&crit, None, &a),
            Err(IssuedError::Malformed(JwtError::CritUnsupported))
        );
    }

    #[test]
    fn the_act_chain_names_baton_s_actor() {
        let actor_jwt = jwt(r#"{"sub":"spiffe://cluster/ns/shop/sa/web"}"#).replace("aXNzdWVkLXNpZw", "YWN0b3Itc2ln");
        let actor = Actor::new(Secret::new(actor_jwt));
        let a = asked(Some(&actor), None);
        let with_act = |act: &str| jwt(&format!(r#"{{"aud":"https://orders.example","act":{act}}}"#));
        assert_eq!(
            judge(
                &with_act(r#"{"sub":"spiffe://cluster/ns/shop/sa/web","act":{"sub":"gw"}}"#),
                None,
                &a
            ),
            Ok(())
        );
        for act in [
            "null",
            r#""spiffe://cluster/ns/shop/sa/web""#,
            r#"{"sub":"someone-else"}"#,
            r#"{"sub":"gw","act":{"sub":"spiffe://cluster/ns/shop/sa/web"}}"#,
            r#"{"client_id":"spiffe://cluster/ns/shop/sa/web"}"#,
            r#"[{"sub":"spiffe://cluster/ns/shop/sa/web"}]"#,
        ] {
            assert_eq!(judge(&with_act(act), None, &a), Err(IssuedError::ActorMissing), "{act}");
        }
        assert_eq!(
            judge(&jwt(r#"{"aud":"https://orders.example"}"#), None, &a),
            Err(IssuedError::ActorMissing),
            "impersonation: no act at all"
        );
        let opaque_actor = Actor::new(Secret::new("opaque-actor"));
        let a = asked(Some(&opaque_actor), None);
        assert_eq!(judge(&with_act(r#"{"sub":"whoever"}"#), None, &a), Ok(()));
        assert_eq!(
            judge(&jwt(r#"{"aud":"https://orders.example"}"#), None, &a),
            Err(IssuedError::ActorMissing)
        );
    }

    #[test]
    fn require_delegation_refuses_a_token_that_cannot_show_its_chain() {
        let actor_jwt = jwt(r#"{"sub":"svc-b"}"#).replace("aXNzdWVkLXNpZw", "YWN0b3Itc2ln");
        let actor = Actor::new(Secret::new(actor_jwt));
        let no_act = jwt(r#"{"aud":"https://orders.example"}"#);
        let with_act = jwt(r#"{"aud":"https://orders.example","act":{"sub":"svc-b","act":{"sub":"svc-a"}}}"#);
        let other_act = jwt(r#"{"aud":"https://orders.example","act":{"sub":"svc-x"}}"#);
        // The default with an actor token: required.
        let required = asked(Some(&actor), None);
        assert_eq!(judge(&no_act, None, &required), Err(IssuedError::ActorMissing));
        assert_eq!(
            judge("an-opaque-token", None, &required),
            Err(IssuedError::ChainUnreadable),
            "an opaque token cannot show its chain"
        );
        assert_eq!(
            Denial::from(IssuedError::ChainUnreadable).reason,
            Reason::IssuedTokenActorMissing
        );
        assert_eq!(judge(&with_act, None, &required), Ok(()));
        // Turned off: no `act` (or an opaque token) is taken, a wrong `act` still is not.
        let optional = Asked {
            require_delegation: false,
            ..required
        };
        assert_eq!(judge(&no_act, None, &optional), Ok(()));
        assert_eq!(judge("an-opaque-token", None, &optional), Ok(()));
        assert_eq!(judge(&other_act, None, &optional), Err(IssuedError::ActorMissing));
        // Required without an actor token: any chain (the subject's own, kept), but a chain.
        let bare = Asked {
            require_delegation: true,
            ..asked(None, None)
        };
        assert_eq!(judge(&no_act, None, &bare), Err(IssuedError::ActorMissing));
        assert_eq!(judge(&other_act, None, &bare), Ok(()));
        assert_eq!(judge("an-opaque-token", None, &bare), Err(IssuedError::ChainUnreadable));
    }

    #[test]
    fn granted_scope_never_exceeds_the_asked_scope() {
        let a = asked(None, Some("orders.read orders.list"));
        let token = jwt(r#"{"aud":"https://orders.example","scope":"orders.read orders.write"}"#);
        let plain = jwt(r#"{"aud":"https://orders.example"}"#);
        assert_eq!(judge(&plain, Some("orders.read"), &a), Ok(()));
        assert_eq!(judge(&plain, Some(""), &a), Ok(()));
        assert_eq!(judge(&plain, Some("orders.read  orders.list"), &a), Ok(()));
        assert_eq!(
            judge(&plain, Some("orders.read admin"), &a),
            Err(IssuedError::ScopeExceeded)
        );
        assert_eq!(
            judge(&plain, Some("orders.read\torders.list"), &a),
            Err(IssuedError::ScopeExceeded)
        );
        assert_eq!(
            judge(&token, None, &a),
            Err(IssuedError::ScopeExceeded),
            "the claim, when the answer says none"
        );
        for scp in [
            r#""orders.write""#,
            r#"["orders.read","admin"]"#,
            "7",
            r#"["orders.read",1]"#,
        ] {
            let token = jwt(&format!(r#"{{"aud":"https://orders.example","scp":{scp}}}"#));
            assert_eq!(judge(&token, None, &a), Err(IssuedError::ScopeExceeded), "{scp}");
        }
        let token = jwt(r#"{"aud":"https://orders.example","scp":["orders.read"]}"#);
        assert_eq!(judge(&token, None, &a), Ok(()));
        assert_eq!(
            judge("opaque", Some("admin"), &a),
            Err(IssuedError::ScopeExceeded),
            "an opaque token's answer is checked too"
        );
        assert_eq!(
            judge(&plain, Some("anything"), &asked(None, None)),
            Ok(()),
            "nothing asked: the token service's default"
        );
    }
}
