//! Reading a JWT's claims without verifying it (`jwt::unverified_*`, `DelegationClaims::read`):
//! never a panic, and every value read is the payload's own, bounded as promised.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_core::jwt::{DelegationClaims, MAX_CLAIM_LEN, unverified_exp, unverified_issuer};
use libfuzzer_sys::fuzz_target;
use serde::Deserializer as _;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Subject and issued token: the two halves around the first newline (or the same token twice).
    let (subject, issued) = text.split_once('\n').unwrap_or((text, text));

    let exp = unverified_exp(issued);
    if let Some(exp) = exp {
        let claimed = claim(issued, "exp").as_ref().and_then(Value::as_f64);
        assert_eq!(Some(exp), claimed.map(|e| e as i64), "exp read from nowhere");
    }
    if let Some(iss) = unverified_issuer(issued) {
        let claimed = claim(issued, "iss");
        assert_eq!(
            Some(iss.as_str()),
            claimed.as_ref().and_then(Value::as_str),
            "iss read from nowhere"
        );
    }

    let claims = DelegationClaims::read(subject, issued);
    for (value, from, name) in [
        (&claims.subject_iss, subject, "iss"),
        (&claims.subject_sub, subject, "sub"),
        (&claims.jti, issued, "jti"),
        (&claims.scope, issued, "scope"),
    ] {
        if let Some(value) = value {
            assert!(!value.is_empty() && value.len() <= MAX_CLAIM_LEN, "{name} unbounded");
            let claimed = claim(from, name);
            assert_eq!(
                Some(&**value),
                claimed.as_ref().and_then(Value::as_str),
                "{name} read from nowhere"
            );
        }
    }
    if claims.exp.is_some() {
        assert_eq!(claims.exp, exp);
    }
    assert!(claims.requested_scope.is_none());
});

/// A claim of a compact JWS, read independently of Baton: three dot-separated parts, the middle one
/// base64url, a JSON object. serde skips the members it is not asked for without checking their
/// strings (invalid UTF-8, a lone surrogate), so this reads one member the same way.
fn claim(token: &str, name: &str) -> Option<Value> {
    let parts: Vec<&str> = token.split('.').collect();
    let [_, payload, _] = parts.as_slice() else {
        return None;
    };
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let mut reader = serde_json::Deserializer::from_slice(&json);
    let value = reader.deserialize_map(Member(name)).ok()?;
    reader.end().ok()?;
    value
}

struct Member<'a>(&'a str);

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0 {
                if found.is_some() {
                    return Err(serde::de::Error::custom("duplicate member"));
                }
                found = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}
