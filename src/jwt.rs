//! Reading a JWT's claims without verifying it, for two purposes: times, and which issuer's keys to
//! verify with. Baton caps a cached token's life at the `exp` of the subject token and of the issued
//! token; a forged `exp` cannot widen anything, because the token service and the destination verify
//! the signatures. Nothing here may be used to decide who the caller is.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

/// The claims Baton reads from a JWT without verifying it. A token's payload is decoded once into
/// this, and everything Baton wants from it is read here; members it does not name are skipped, not
/// kept. A member of an unexpected type reads as absent.
#[derive(Debug, Default, Deserialize)]
pub struct Unverified {
    exp: Option<Value>,
    pub iss: Option<Value>,
    pub sub: Option<Value>,
    pub jti: Option<Value>,
    pub scope: Option<Value>,
    /// The delegation chain (RFC 8693 section 4.1), outermost actor first.
    pub act: Option<Value>,
}

/// The longest payload read, before decoding; a JWT in a header is far smaller.
const MAX_PAYLOAD: usize = 64 * 1024;

impl Unverified {
    /// The payload of a compact JWS, if `token` is one and its payload is a JSON object.
    pub fn read(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || payload.len() > MAX_PAYLOAD {
            return None;
        }
        let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        is_object(&json).then(|| serde_json::from_slice(&json).ok())?
    }

    /// `exp`, in whole seconds since the Unix epoch.
    pub fn exp(&self) -> Option<i64> {
        self.exp.as_ref()?.as_f64().filter(|e| e.is_finite()).map(|e| e as i64)
    }

    pub fn issuer(&self) -> Option<&str> {
        self.iss.as_ref()?.as_str()
    }
}

/// A JWT's header and claims are JSON objects (RFC 7519 section 7.2); serde would also read a
/// struct from an array, by position, so `[4000000000]` would pass for `{"exp":4000000000}`.
pub(crate) fn is_object(json: &[u8]) -> bool {
    json.trim_ascii_start().starts_with(b"{")
}

/// The `exp` claim (seconds since the Unix epoch) of a compact JWS, if the token is one and has it.
pub fn unverified_exp(token: &str) -> Option<i64> {
    Unverified::read(token)?.exp()
}

/// The `iss` claim, to choose which issuer's keys verify the token (then checked by the signature).
pub fn unverified_issuer(token: &str) -> Option<String> {
    Unverified::read(token)?.issuer().map(str::to_owned)
}

/// What the audit record and the trace say about a delegation, read once when the token is
/// exchanged: who the subject is (`iss`, `sub` of the subject token) and what was issued (`jti`,
/// `exp`, `scope` of the issued token; its `act` chain is `Delegated::actors`). By then the subject
/// token was verified (when `trusted_issuers` are configured) and the token service has accepted it
/// and signed the issued one; Baton reports these claims, it never decides on them. Strings are
/// bounded, and boxed: each cached token keeps its claims, so no spare capacity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DelegationClaims {
    pub subject_iss: Option<Box<str>>,
    pub subject_sub: Option<Box<str>>,
    pub jti: Option<Box<str>>,
    pub exp: Option<i64>,
    pub scope: Option<Box<str>>,
    /// The scope Baton asked for (after `scopes_from_subject`), space-separated.
    pub requested_scope: Option<Box<str>>,
}

/// The longest claim string kept for audit and traces.
pub const MAX_CLAIM_LEN: usize = 256;

fn text(value: Option<&Value>) -> Option<Box<str>> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_CLAIM_LEN)
        .map(Box::from)
}

impl DelegationClaims {
    /// The issued token's `jti`, `exp` and `scope`.
    pub fn issued(issued: &Unverified) -> Self {
        Self {
            jti: text(issued.jti.as_ref()),
            exp: issued.exp(),
            scope: text(issued.scope.as_ref()),
            ..Self::default()
        }
    }

    /// The subject token's `iss` and `sub`, from its verified claims or its unverified payload.
    pub fn with_subject(self, iss: Option<&Value>, sub: Option<&Value>) -> Self {
        Self {
            subject_iss: text(iss),
            subject_sub: text(sub),
            ..self
        }
    }

    /// From the subject token and the issued token, each decoded here; a token that is not a JWT
    /// adds nothing.
    pub fn read(subject_token: &str, issued_token: &str) -> Self {
        let subject = Unverified::read(subject_token).unwrap_or_default();
        Self::issued(&Unverified::read(issued_token).unwrap_or_default())
            .with_subject(subject.iss.as_ref(), subject.sub.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!("eyJhbGciOiJFUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn reads_exp_from_a_compact_jws() {
        assert_eq!(
            unverified_exp(&jwt(r#"{"sub":"alice","exp":1700000000}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(unverified_exp(&jwt(r#"{"exp":1700000000.5}"#)), Some(1_700_000_000));
        assert_eq!(unverified_exp(&jwt(r#"{"sub":"alice"}"#)), None);
        assert_eq!(unverified_exp(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(unverified_exp("opaque-token"), None);
        assert_eq!(unverified_exp("a.b.c.d"), None);
        assert_eq!(unverified_exp("a.!!!.c"), None);
        assert_eq!(
            unverified_issuer(&jwt(r#"{"iss":"https://idp"}"#)).as_deref(),
            Some("https://idp")
        );
        assert_eq!(unverified_issuer(&jwt(r#"{"sub":"x"}"#)), None);
        // One member of an unexpected type does not hide the others.
        assert_eq!(
            unverified_issuer(&jwt(r#"{"iss":"https://idp","exp":"soon"}"#)).as_deref(),
            Some("https://idp")
        );
    }

    #[test]
    fn a_payload_that_is_not_an_object_has_no_claims() {
        // Found by the `jwt` fuzz target: serde reads a struct from an array by position.
        let array = jwt(r#"[4000000000,"https://idp"]"#);
        assert_eq!(unverified_exp(&array), None);
        assert_eq!(unverified_issuer(&array), None);
        assert_eq!(DelegationClaims::read(&array, &array), DelegationClaims::default());
        assert_eq!(unverified_exp(&jwt(r#" {"exp":1}"#)), Some(1));
    }

    #[test]
    fn delegation_claims_come_from_both_tokens_and_are_bounded() {
        let subject = jwt(r#"{"iss":"https://idp.example","sub":"alice","jti":"not-this-one"}"#);
        let issued =
            jwt(r#"{"iss":"https://as.example","sub":"alice","jti":"j-1","exp":1700000000,"scope":"orders.read"}"#);
        let claims = DelegationClaims::read(&subject, &issued);
        assert_eq!(claims.subject_iss.as_deref(), Some("https://idp.example"));
        assert_eq!(claims.subject_sub.as_deref(), Some("alice"));
        assert_eq!(claims.jti.as_deref(), Some("j-1"));
        assert_eq!(claims.exp, Some(1_700_000_000));
        assert_eq!(claims.scope.as_deref(), Some("orders.read"));

        assert_eq!(DelegationClaims::read("opaque", "opaque"), DelegationClaims::default());
        let long = jwt(&format!(r#"{{"sub":"{}","jti":7}}"#, "x".repeat(MAX_CLAIM_LEN + 1)));
        assert_eq!(DelegationClaims::read(&long, &long), DelegationClaims::default());
    }
}
