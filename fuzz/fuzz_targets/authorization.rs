//! `Authorization` header parsing (RFC 6750): the one header value, or the header lines Envoy sent.
//! A token is only ever a piece of the value it came from, within the size bound, in b64token
//! characters; everything else is refused with one of the caller-token reasons.
#![no_main]

use baton_decide::reason::Reason;
use baton_decide::request::{Authorization, Headers, is_b64token, subject_token};
use baton_envoy::extract::Lines;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    for max in [16, 8192] {
        check_value(value, max);
    }
    // The same bytes as header lines: `key: value` per line; the raw line value may not be UTF-8.
    let lines: Vec<HeaderValue> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let at = line.iter().position(|b| *b == b':')?;
            Some(HeaderValue {
                key: String::from_utf8_lossy(&line[..at]).into_owned(),
                raw_value: line[at + 1..].to_vec(),
                ..Default::default()
            })
        })
        .collect();
    let named = lines
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case("authorization"))
        .count();
    // Envoy folds repeated lines into one joined by `,` (which no b64token holds): one line with a
    // comma is several too.
    let folded = named == 1
        && lines
            .iter()
            .any(|h| h.key.eq_ignore_ascii_case("authorization") && h.raw_value.contains(&b','));
    match Headers::Lines(&Lines::new(&lines)).one("authorization") {
        Ok(Authorization::Missing) => assert_eq!(named, 0),
        Ok(Authorization::Several) => assert!(named > 1 || folded),
        Ok(Authorization::One(v)) => {
            assert_eq!(named, 1);
            assert!(!v.contains(','), "a folded line is never one value");
            let line = lines
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case("authorization"))
                .expect("counted");
            assert_eq!(v.as_bytes(), line.raw_value.as_slice());
            check_value(v, 8192);
        }
        Err(denial) => {
            assert_eq!(named, 1);
            assert_eq!(denial.reason, Reason::MalformedToken);
        }
    }
});

fn check_value(value: &str, max: usize) {
    match subject_token(&Authorization::One(value), max) {
        Ok(None) => panic!("a present header never reads as absent"),
        Ok(Some(token)) => {
            assert!(!token.is_empty() && token.len() <= max);
            assert!(is_b64token(token));
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
            );
            // The token is the end of the value, after `Bearer` and spaces: nothing invented.
            let trimmed = value.trim_matches([' ', '\t']);
            assert!(trimmed.ends_with(token));
            let scheme = trimmed[..trimmed.len() - token.len()].trim_end_matches(' ');
            assert!(scheme.eq_ignore_ascii_case("bearer"), "{scheme:?}");
        }
        Err(denial) => assert!(
            matches!(
                denial.reason,
                Reason::UnsupportedAuthorizationScheme
                    | Reason::EmptyToken
                    | Reason::TokenTooLarge
                    | Reason::MalformedToken
            ),
            "{denial}"
        ),
    }
}
