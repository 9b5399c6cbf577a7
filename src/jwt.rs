//! Reading a JWT's claims without verifying it, for two purposes: times, and which issuer's keys to
//! verify with. Baton caps a cached token's life at the `exp` of the subject token and of the issued
//! token; a forged `exp` cannot widen anything, because the token service and the destination verify
//! the signatures. Nothing here may be used to decide who the caller is.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

#[derive(Deserialize)]
struct Peek {
    exp: Option<f64>,
    iss: Option<String>,
}

fn peek(token: &str) -> Option<Peek> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The `exp` claim (seconds since the Unix epoch) of a compact JWS, if the token is one and has it.
pub fn unverified_exp(token: &str) -> Option<i64> {
    peek(token)?.exp.filter(|e| e.is_finite()).map(|e| e as i64)
}

/// The `iss` claim, to choose which issuer's keys verify the token (then checked by the signature).
pub fn unverified_issuer(token: &str) -> Option<String> {
    peek(token)?.iss
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
    }
}
