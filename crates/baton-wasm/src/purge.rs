//! A destination's refusal of a delegation the filter served (a hit or a miss): its response is
//! 401 with a Bearer or DPoP `invalid_token` challenge (RFC 6750 §3.1, RFC 9449 §7.1), read with
//! baton-decide's challenge grammar, as the sidecar's ext_proc reads it. This module owns that
//! reading and the sidecar's name for a delegation (`Handle`: its cache key, a digest, and the
//! issued token's fingerprint). The glue (`filter::response`) remembers what each request went out
//! with until its response is seen, drops the filter's entry and sends `InProxy/Purge`.
//! It never reads a body, never guesses (a `:status` twice, too many challenges, one that cannot
//! be read whole: no), and never puts a token in a Purge or a log.

use baton_decide::challenge;

/// The most `WWW-Authenticate` lines read from one response; past them the response says no.
pub const MAX_CHALLENGE_LINES: usize = 16;
/// The sidecar's key is a SHA-256 digest; its fingerprint is short text (`sha256:` + 11 chars).
const MAX_ISSUED_BYTES: usize = 64;

/// How the sidecar names a delegation it cached: what a Purge carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    /// The sidecar's cache key (32 bytes).
    pub served: Vec<u8>,
    /// The issued token's fingerprint.
    pub issued: String,
}

impl Handle {
    /// The handle a Decide reply carries, if it carries a well-formed one.
    pub fn from_reply(served: &[u8], issued: &str) -> Option<Self> {
        let well_formed = served.len() == 32
            && !issued.is_empty()
            && issued.len() <= MAX_ISSUED_BYTES
            && issued.bytes().all(|b| b.is_ascii_graphic());
        well_formed.then(|| Self {
            served: served.to_vec(),
            issued: issued.to_owned(),
        })
    }
}

/// Does this response (its header lines, as Envoy gives them to the filter) refuse the token as
/// invalid: exactly one `:status`, 401, and a Bearer or DPoP `invalid_token` challenge?
pub fn says_invalid_token(headers: &[(String, Vec<u8>)]) -> bool {
    let mut statuses = headers
        .iter()
        .filter(|(k, _)| k == ":status")
        .map(|(_, v)| v.as_slice());
    if !(statuses.next() == Some(b"401".as_slice()) && statuses.next().is_none()) {
        return false;
    }
    let challenges: Vec<&[u8]> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, v)| v.as_slice())
        .collect();
    challenges.len() <= MAX_CHALLENGE_LINES && challenge::says_invalid_token(challenges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(lines: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        lines
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn only_one_401_with_an_invalid_token_challenge_says_so() {
        let invalid = r#"Bearer realm="orders", error="invalid_token""#;
        assert!(says_invalid_token(&response(&[
            (":status", "401"),
            ("www-authenticate", invalid)
        ])));
        assert!(says_invalid_token(&response(&[
            (":status", "401"),
            ("www-authenticate", r#"DPoP error="invalid_token", algs="ES256""#)
        ])));
        for no in [
            response(&[(":status", "401"), ("www-authenticate", "Bearer")]),
            response(&[
                (":status", "401"),
                ("www-authenticate", r#"Bearer error="insufficient_scope""#),
            ]),
            response(&[(":status", "403"), ("www-authenticate", invalid)]),
            response(&[(":status", "200"), ("www-authenticate", invalid)]),
            response(&[(":status", "401"), (":status", "401"), ("www-authenticate", invalid)]),
            response(&[("www-authenticate", invalid)]),
            response(&[
                (":status", "401"),
                ("www-authenticate", r#"Bearer error="invalid_token"#),
            ]),
            response(&[
                (":status", "401"),
                ("www-authenticate", r#"Basic error="invalid_token""#),
            ]),
        ] {
            assert!(!says_invalid_token(&no), "{no:?}");
        }
        let mut many = response(&[(":status", "401")]);
        for _ in 0..=MAX_CHALLENGE_LINES {
            many.push(("www-authenticate".to_owned(), invalid.as_bytes().to_vec()));
        }
        assert!(!says_invalid_token(&many), "bounded");
    }

    #[test]
    fn a_handle_is_taken_only_when_well_formed() {
        assert!(Handle::from_reply(&[1; 32], "sha256:abcdefghijk").is_some());
        assert!(
            Handle::from_reply(&[], "sha256:abcdefghijk").is_none(),
            "nothing cached"
        );
        assert!(Handle::from_reply(&[1; 31], "sha256:abcdefghijk").is_none());
        assert!(Handle::from_reply(&[1; 32], "").is_none());
        assert!(Handle::from_reply(&[1; 32], &"x".repeat(65)).is_none());
        assert!(Handle::from_reply(&[1; 32], "sha256:a b").is_none());
    }
}
