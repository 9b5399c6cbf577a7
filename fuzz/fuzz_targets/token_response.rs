//! The token service's answer (`exchange::parse_response`): the first line is the HTTP status, the
//! rest the body. A token comes only from a 200 and is exactly the body's `access_token`, in bearer
//! characters; every failure maps to a stable reason and never echoes the service's free text.
#![no_main]

use baton_core::exchange::parse_response;
use baton_decide::reason::{Class, Denial, Reason};
use baton_decide::request::is_b64token;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const YEAR: u64 = 365 * 24 * 3600;

#[derive(serde::Deserialize, serde::Serialize)]
struct Fields {
    access_token: Option<String>,
    token_type: Option<String>,
    scope: Option<String>,
    issued_token_type: Option<String>,
    expires_in: Option<Value>,
}

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"200"[..], data),
    };
    let Some(status) = std::str::from_utf8(status)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
    else {
        return;
    };
    match parse_response(status, body) {
        Ok(issued) => {
            assert_eq!(status, 200);
            // Fields Baton ignores are skipped unchecked (a lone surrogate there is no error), so
            // the body is read back as an object of just the fields compared.
            let json: Value = match serde_json::from_slice(body) {
                Ok(json) => json,
                Err(_) => serde_json::to_value(serde_json::from_slice::<Fields>(body).expect("a token came from JSON"))
                    .expect("fields"),
            };
            let token = issued.access_token.expose();
            assert_eq!(
                json["access_token"].as_str(),
                Some(token),
                "access_token read from nowhere"
            );
            assert!(!token.is_empty() && is_b64token(token));
            assert!(issued.token_type.eq_ignore_ascii_case("bearer") || issued.token_type.eq_ignore_ascii_case("n_a"));
            assert_eq!(json["token_type"].as_str(), Some(issued.token_type.as_str()));
            assert_eq!(json["scope"].as_str(), issued.scope.as_deref());
            assert_eq!(json["issued_token_type"].as_str(), issued.issued_token_type.as_deref());
            if let Some(lifetime) = issued.expires_in {
                assert!(lifetime <= YEAR);
            } else {
                assert!(json.get("expires_in").is_none_or(Value::is_null));
            }
        }
        Err(e) => {
            let denial = Denial::from(&e);
            if status == 200 {
                assert_eq!(denial.reason, Reason::TokenServiceBadResponse, "{denial}");
            } else {
                assert_ne!(denial.reason, Reason::TokenServiceBadResponse, "{denial}");
            }
            assert!(
                denial.reason.is_definite_refusal()
                    || denial.reason.class() == Class::Unavailable
                    || denial.reason == Reason::SubjectTokenRejected,
                "{denial}"
            );
            // Baton's own sentence: the service's error code appears only if it is a plain code.
            if let Some(code) = denial
                .description
                .strip_prefix("the token service refused the exchange (")
            {
                let code = code.strip_suffix(')').expect("closed");
                assert!(
                    code == "unrecognised error"
                        || (code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')),
                    "{code:?} echoed"
                );
            }
            assert!(
                denial.description.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{denial}"
            );
        }
    }
});
