//! Reading a JWT without verifying it: its times, which issuer's keys verify it, and the claims
//! Baton checks in an issued token. Baton caps a cached token's life at the `exp` of the subject
//! token and of the issued token; a forged `exp` cannot widen anything, because the token service
//! and the destination verify the signatures. Nothing here may be used to decide who the caller is.
//! It owns the two JWT rules every reader shares: a `crit` header Baton does not understand refuses
//! the token (RFC 7515 section 4.1.11), and a time claim is a NumericDate (RFC 7519 section 2) or
//! the token is refused, never read as absent.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a JWT cannot be used for a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// `crit` names a header parameter Baton does not process: RFC 7515 4.1.11 says refuse.
    #[error("the JOSE header marks a parameter Baton does not understand as critical (crit)")]
    CritUnsupported,
    /// `crit` is present but not a non-empty array of parameter names.
    #[error("the JOSE header's crit is not a non-empty array of names")]
    CritMalformed,
    /// The header or the payload is not a JSON object (or not strict JSON).
    #[error("the JOSE header or the claims are not a JSON object")]
    NotAnObject,
    /// The payload is larger than Baton reads.
    #[error("the claims are larger than Baton reads")]
    TooLarge,
    /// `exp`, `nbf` or `iat` is not a NumericDate Baton can compare.
    #[error("the `{0}` claim is not a NumericDate")]
    BadNumericDate(&'static str),
}

/// The latest NumericDate Baton reads (9999-12-31T23:59:59Z): past it a value is not a time but a
/// number chosen to overflow something.
pub const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// A NumericDate (RFC 7519 section 2): a JSON number of seconds since the epoch, fractions allowed.
/// A string, a boolean, a negative number, or one past `MAX_NUMERIC_DATE` is refused, never read as
/// absent. Returned as whole seconds rounded towards the safe side by the caller (`floor` for an
/// expiry, `ceil` for a not-before).
pub fn numeric_date(value: &Value, name: &'static str) -> Result<f64, JwtError> {
    match value {
        // serde_json gives every number as an f64 (a u64 past 2^53 loses precision, not range).
        Value::Number(n) => n
            .as_f64()
            .filter(|v| v.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(v))
            .ok_or(JwtError::BadNumericDate(name)),
        _ => Err(JwtError::BadNumericDate(name)),
    }
}

/// An expiry in whole seconds: a fraction is cut, so the token is treated as expired up to a
/// second early, never late.
pub fn expiry(value: &Value) -> Result<i64, JwtError> {
    numeric_date(value, "exp").map(|v| v.floor() as i64)
}

/// RFC 7515 4.1.11: Baton implements no JWS extension, so any parameter listed in `crit` is one it
/// does not understand, and the token is refused. An empty list, or a `crit` that is not a list of
/// strings, is malformed.
pub fn check_crit(header: &Map<String, Value>) -> Result<(), JwtError> {
    match header.get("crit") {
        None => Ok(()),
        Some(Value::Array(names)) if !names.is_empty() && names.iter().all(Value::is_string) => {
            Err(JwtError::CritUnsupported)
        }
        Some(_) => Err(JwtError::CritMalformed),
    }
}

/// The claims Baton reads from a JWT without verifying it. A token's payload is decoded once into
/// this, and everything Baton wants from it is read here; members it does not name are skipped, not
/// kept. A string or object member of an unexpected type reads as absent; a time claim of an
/// unexpected type refuses the token (`Unverified::parse`).
#[derive(Debug, Default, Deserialize)]
pub struct Unverified {
    // `null` is kept as a value (serde would read it as absent): it is not a NumericDate.
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<Value>,
    pub iss: Option<Value>,
    pub sub: Option<Value>,
    pub aud: Option<Value>,
    pub jti: Option<Value>,
    pub scope: Option<Value>,
    /// Azure AD / Entra's scope claim, a string; some servers send an array.
    pub scp: Option<Value>,
    /// The delegation chain (RFC 8693 section 4.1), outermost actor first.
    pub act: Option<Value>,
    /// The session (OpenID Connect `sid`), which a revocation may name.
    pub sid: Option<Value>,
    /// The key the token is bound to (RFC 7800; `jkt` for DPoP, RFC 9449 §6.1).
    pub cnf: Option<Value>,
}

/// A member that is there, whatever its value, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The longest payload read, before decoding; a JWT in a header is far smaller.
const MAX_PAYLOAD: usize = 64 * 1024;

impl Unverified {
    /// The payload of a compact JWS, if `token` is one and its payload is a JSON object; `None` for
    /// anything else, including a JWT Baton must refuse (see `parse`).
    pub fn read(token: &str) -> Option<Self> {
        Self::parse(token).ok().flatten()
    }

    /// `Ok(None)`: not a compact JWS (an opaque token). `Err`: a JWS Baton must not act on: a `crit`
    /// header, a header or payload that is not an object, a time claim that is not a NumericDate.
    /// A token is a JWS when its first part decodes to a JSON object (a JOSE header); then every
    /// rule applies, so a token service cannot have Baton read its JWT as opaque (and skip the
    /// checks on it) by spoiling the payload, padding it past the size bound, or writing JSON that
    /// only a lenient parser reads (`NaN`, duplicate members).
    pub fn parse(token: &str) -> Result<Option<Self>, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok();
        let header = match decode(header).map(|h| serde_json::from_slice::<Value>(&h)) {
            Some(Ok(Value::Object(header))) => header,
            // JSON, but not an object: no JOSE header. Refused when the payload reads as claims
            // (serde would read a struct from an array), else some opaque format with two dots.
            Some(Ok(_)) => {
                let json = decode(payload).filter(|_| payload.len() <= MAX_PAYLOAD);
                return match json.map(|json| serde_json::from_slice::<serde::de::IgnoredAny>(&json)) {
                    Some(Ok(_)) => Err(JwtError::NotAnObject),
                    _ => Ok(None),
                };
            }
            _ => return Ok(None),
        };
        check_crit(&header)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(JwtError::TooLarge);
        }
        let json = decode(payload).ok_or(JwtError::NotAnObject)?;
        if !is_object(&json) {
            return Err(JwtError::NotAnObject);
        }
        // Strict JSON; a member twice is an error (serde's derive refuses a duplicate field).
        let claims: Self = serde_json::from_slice(&json).map_err(|_| JwtError::NotAnObject)?;
        for (value, name) in [(&claims.exp, "exp"), (&claims.nbf, "nbf"), (&claims.iat, "iat")] {
            if let Some(value) = value {
                numeric_date(value, name)?;
            }
        }
        Ok(Some(claims))
    }

    /// `exp`, in whole seconds since the Unix epoch, a fraction cut (see `expiry`).
    pub fn exp(&self) -> Option<i64> {
        expiry(self.exp.as_ref()?).ok()
    }

    /// `iat`, in whole seconds since the Unix epoch (a fraction cut).
    pub fn iat(&self) -> Option<i64> {
        numeric_date(self.iat.as_ref()?, "iat").ok().map(|v| v.floor() as i64)
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
        // One string member of an unexpected type does not hide the others...
        assert_eq!(
            unverified_issuer(&jwt(r#"{"iss":"https://idp","sub":7}"#)).as_deref(),
            Some("https://idp")
        );
        // ...but a time that is not a NumericDate makes the token unusable, never "no exp".
        assert_eq!(unverified_issuer(&jwt(r#"{"iss":"https://idp","exp":"soon"}"#)), None);
    }

    fn with_header(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn a_critical_header_parameter_refuses_the_token() {
        let parse = |header: &str| Unverified::parse(&with_header(header, r#"{"exp":1}"#)).map(|u| u.is_some());
        assert_eq!(parse(r#"{"alg":"ES256"}"#), Ok(true));
        for crit in [r#"["exp"]"#, r#"["b64"]"#, r#"["http://example.com/ext","x"]"#] {
            assert_eq!(
                parse(&format!(r#"{{"alg":"ES256","crit":{crit}}}"#)),
                Err(JwtError::CritUnsupported),
                "{crit}"
            );
        }
        for crit in ["[]", r#""exp""#, "null", "true", "[1]", r#"{"exp":1}"#] {
            assert_eq!(
                parse(&format!(r#"{{"alg":"ES256","crit":{crit}}}"#)),
                Err(JwtError::CritMalformed),
                "{crit}"
            );
        }
        assert_eq!(
            parse(r#"["ES256"]"#),
            Err(JwtError::NotAnObject),
            "a header that is not an object"
        );
        assert_eq!(Unverified::parse("opaque-token").map(|u| u.is_some()), Ok(false));
    }

    #[test]
    fn numeric_dates_may_be_fractional_and_nothing_else_is_read() {
        let parse = |claims: &str| Unverified::parse(&jwt(claims)).map(|u| u.and_then(|u| u.exp()));
        // RFC 7519 2: a NumericDate may have a fraction; cut, so never later than it says.
        assert_eq!(parse(r#"{"exp":1796301888.9}"#), Ok(Some(1_796_301_888)));
        assert_eq!(parse(r#"{"exp":1796301888}"#), Ok(Some(1_796_301_888)));
        assert_eq!(parse(r#"{"exp":1.796301888e9}"#), Ok(Some(1_796_301_888)));
        assert_eq!(parse(r#"{"nbf":1796301888.5,"iat":1796301888.25}"#), Ok(None));
        for (claim, name) in [("exp", "exp"), ("nbf", "nbf"), ("iat", "iat")] {
            for bad in [
                r#""1796301888""#,
                "true",
                "null",
                "-1",
                "-0.5",
                "1e300",
                "9223372036854775808",
                "18446744073709551616",
                "253402300800",
                "[1796301888]",
                r#"{"v":1}"#,
            ] {
                assert_eq!(
                    Unverified::parse(&jwt(&format!(r#"{{"{claim}":{bad}}}"#))).map(|_| ()),
                    Err(JwtError::BadNumericDate(name)),
                    "{claim}: {bad}"
                );
            }
        }
        // Not strict JSON (NaN, Infinity, a member twice) behind a JOSE header: refused, never read
        // as an opaque token (whose claims nobody checks).
        for claims in [
            r#"{"exp":NaN}"#,
            r#"{"exp":Infinity}"#,
            r#"{"aud":"a","aud":"b"}"#,
            "not json",
        ] {
            assert_eq!(
                Unverified::parse(&jwt(claims)).map(|u| u.is_some()),
                Err(JwtError::NotAnObject),
                "{claims}"
            );
        }
        let huge = jwt(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_PAYLOAD)));
        assert_eq!(Unverified::parse(&huge).map(|u| u.is_some()), Err(JwtError::TooLarge));
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
