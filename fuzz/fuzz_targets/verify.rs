//! Subject-token verification (`verify::Verifier`) against a real issuer: `baton sts`, in process,
//! with the development key in `fuzz/dev-key.pem`, serving its JWKS on loopback.
//!
//! An input is either a token (the header and claims parsing before the signature check, and
//! jsonwebtoken's decoding), or, when it starts with `{`, a claims set that is signed with the
//! issuer's key before it is verified (the checks after the signature: iss, aud, exp, nbf). A
//! token is accepted only if it is signed by the issuer's key and its claims pass, and the claims
//! Baton hands on are exactly the token's.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_core::cache::digest;
use baton_core::clock::unix_now;
use baton_core::verify::{IssuerConfig, OpaqueTokens, Verified, Verifier};
use baton_decide::reason::{Class, Reason};
use baton_sts::{SigningKey, StsConfig, serve};
use jsonwebtoken::{Algorithm, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const ISSUER: &str = "http://baton-sts.fuzz";
const AUDIENCE: &str = "frontend";
const LEEWAY: u64 = 30;
const KEY: &str = include_str!("../dev-key.pem");

struct World {
    runtime: tokio::runtime::Runtime,
    verifier: Arc<Verifier>,
    key: SigningKey,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let config = StsConfig {
                    listen: address,
                    issuer: Some(ISSUER.into()),
                    token_lifetime: Duration::from_secs(300),
                    key: SigningKey::from_pem(KEY).expect("dev key"),
                    clients: Default::default(),
                    dev_mint: false,
                    trusted_subject_issuers: Vec::new(),
                    fault_delay: Duration::ZERO,
                    fault_status: None,
                    fault_answer: None,
                };
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                serve(config, listener, std::future::pending(), |_| {})
                    .await
                    .expect("sts");
            });
        });
        let issuer = IssuerConfig {
            issuer: ISSUER.into(),
            jwks_uri: Some(format!("http://{address}/jwks").parse().expect("url")),
            audiences: vec![AUDIENCE.into()],
            algorithms: vec![Algorithm::ES256, Algorithm::RS256, Algorithm::PS256, Algorithm::EdDSA],
            leeway: Duration::from_secs(LEEWAY),
            refresh: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(3600),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let verifier = runtime.block_on(async {
            Verifier::new(vec![issuer], OpaqueTokens::Reject, None, 1000, Default::default())
                .expect("verifier")
                .expect("an issuer")
        });
        World {
            runtime,
            verifier,
            key: SigningKey::from_pem(KEY).expect("dev key"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let world = world();
    let (token, signed) = if text.starts_with('{') {
        let Ok(Value::Object(claims)) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(world.key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &world.key.encoding).expect("sign");
        (token, Some(claims))
    } else {
        (text.to_owned(), None)
    };
    let verified = world.runtime.block_on(world.verifier.verify(&token, &digest(&token)));
    match verified {
        Ok(Verified::Subject(subject)) => {
            // Signed by the issuer's key (checked here without Baton), and the claims are the token's.
            let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
            validation.validate_exp = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            let decoded = jsonwebtoken::decode::<Map<String, Value>>(&token, &world.key.decoding, &validation)
                .expect("accepted, so signed by the issuer's key");
            assert_eq!(subject.claims, decoded.claims, "claims that are not the token's");
            assert_eq!(header_alg(&token).as_deref(), Some("ES256"));
            if let Some(signed) = &signed {
                // As signed: serde_json's default float parsing is not exact to the last bit, so
                // compare with the claims after the one serialization the signer does.
                let text = serde_json::to_string(signed).expect("serialize");
                let signed: Map<String, Value> = serde_json::from_str(&text).expect("reparse");
                assert_eq!(subject.claims, signed);
            }
            let claims = &subject.claims;
            assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
            assert_eq!(subject.issuer, ISSUER);
            let aud_ok = match claims.get("aud") {
                Some(Value::String(a)) => a == AUDIENCE,
                Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(AUDIENCE)),
                _ => false,
            };
            assert!(aud_ok, "accepted without the audience: {:?}", claims.get("aud"));
            let now = unix_now() as f64;
            let exp = claims.get("exp").and_then(Value::as_f64).expect("accepted without exp");
            assert!(exp + LEEWAY as f64 >= now, "accepted after exp {exp}");
            if let Some(nbf) = claims.get("nbf") {
                let nbf = nbf.as_f64().expect("nbf is a number");
                assert!(nbf <= now + LEEWAY as f64 + 1.0, "accepted before nbf {nbf}");
            }
        }
        Ok(Verified::Forwarded) => panic!("opaque tokens are rejected in this configuration"),
        Err(denial) => {
            assert_eq!(denial.reason.class(), Class::Unauthenticated, "{denial}");
            assert!(
                !matches!(
                    denial.reason,
                    Reason::MissingToken | Reason::CallerUnauthenticated | Reason::SubjectTokenInactive
                ),
                "{denial}"
            );
            // The development issuer is up: its keys are always there.
            assert_ne!(denial.reason, Reason::IssuerKeysUnavailable, "{denial}");
        }
    }
});

fn header_alg(token: &str) -> Option<String> {
    let json = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    serde_json::from_slice::<Value>(&json).ok()?["alg"]
        .as_str()
        .map(str::to_owned)
}
