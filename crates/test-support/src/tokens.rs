//! Tokens and keys: what a token's claims say, and the `Authorization` values the tests send.
//! Unverified decoding here is for judging answers; verification is `TokenService::verify`.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `aud` may be a string or an array (RFC 7519 4.1.3).
pub fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The claims of a JWT, unverified (for judging answers; signatures are verified apart).
pub fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A JWT-shaped token with this header and payload (JSON text) and this signature, as is: a forgery
/// for a test of what must be refused.
pub fn forge_jwt(header: &str, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// A P-256 key: (PKCS#8 PEM for Baton's `private_key_jwt`, the public JWKS JSON for the token
/// service, key id `baton-test`).
pub fn client_key() -> (String, String) {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
    let der = pair.to_pkcs8v1().expect("pkcs8");
    let b64 = STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let point = pair.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "baton-test", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    }]});
    (pem, jwks.to_string())
}

/// A JWT signed ES256 with this PKCS#8 PEM key (e.g. a `baton sts`'s `signing_key_file`), with
/// this header (its `alg` is set to ES256) and these claims: a token that key's issuer vouches for,
/// saying whatever a test of what must be refused needs it to say.
pub fn sign_es256(pem: &str, mut header: Value, claims: &Value) -> String {
    header["alg"] = Value::from("ES256");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).expect("a P-256 PKCS#8 PEM key");
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256).expect("sign");
    format!("{input}.{signature}")
}
