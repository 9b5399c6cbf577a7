//! A destination's answer, read from ext_proc's response-headers message: did it refuse the token
//! Baton delegated (401 with a Bearer or DPoP `error="invalid_token"` challenge, RFC 6750 §3.1,
//! RFC 9449 §7.1)? It owns that reading only; the challenge grammar is `baton_decide::challenge`,
//! the purge `Authz::purge_served`. Any other status (403 included), a 401 without that challenge,
//! a `:status` sent twice or a challenge that cannot be read whole says no: nothing is purged on a
//! guess. It never reads the response body.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ext_proc::v3::HttpHeaders;

use baton_decide::challenge;

/// The response headers this module reads: ext_proc's `forward_rules` must let them through.
pub(crate) const READS: [&str; 2] = [":status", WWW_AUTHENTICATE];
const WWW_AUTHENTICATE: &str = "www-authenticate";

/// The most `WWW-Authenticate` lines read from one response; past them the response says no.
const MAX_CHALLENGE_LINES: usize = 16;

/// Does this response refuse the token as invalid (`invalid_token`)?
pub(crate) fn says_invalid_token(response: &HttpHeaders) -> bool {
    let Some(lines) = response.headers.as_ref().map(|h| &h.headers) else {
        return false;
    };
    let mut statuses = lines.iter().filter(|h| h.key == ":status").map(value);
    if !(statuses.next() == Some(b"401".as_slice()) && statuses.next().is_none()) {
        return false;
    }
    let challenges: Vec<&[u8]> = lines
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case(WWW_AUTHENTICATE))
        .map(value)
        .collect();
    challenges.len() <= MAX_CHALLENGE_LINES && challenge::says_invalid_token(challenges)
}

/// A header line's bytes: Envoy sends `raw_value` (newer) or `value` (older).
fn value(h: &HeaderValue) -> &[u8] {
    if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;

    use super::*;

    fn response(lines: &[(&str, &[u8])]) -> HttpHeaders {
        HttpHeaders {
            headers: Some(HeaderMap {
                headers: lines
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).into(),
                        raw_value: v.to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    const INVALID: &[u8] = br#"Bearer realm="orders", error="invalid_token", error_description="expired""#;

    #[test]
    fn only_a_401_with_an_invalid_token_challenge() {
        assert!(says_invalid_token(&response(&[
            (":status", b"401"),
            ("www-authenticate", INVALID)
        ])));
        assert!(says_invalid_token(&response(&[
            (":status", b"401"),
            ("www-authenticate", b"Basic realm=\"x\""),
            ("WWW-Authenticate", b"DPoP error=\"invalid_token\""),
        ])));
        for no in [
            response(&[(":status", b"403"), ("www-authenticate", INVALID)]),
            response(&[(":status", b"200"), ("www-authenticate", INVALID)]),
            response(&[(":status", b"401")]),
            response(&[
                (":status", b"401"),
                ("www-authenticate", b"Bearer error=\"insufficient_scope\""),
            ]),
            response(&[(":status", b"401"), ("www-authenticate", b"Bearer realm=\"x\"")]),
            response(&[(":status", b"401"), ("x-www-authenticate", INVALID)]),
            response(&[(":status", b"401 "), ("www-authenticate", INVALID)]),
            response(&[(":status", b"401"), (":status", b"401"), ("www-authenticate", INVALID)]),
            response(&[("www-authenticate", INVALID)]),
            HttpHeaders::default(),
        ] {
            assert!(!says_invalid_token(&no), "{no:?}");
        }
        let mut many = vec![(":status", b"401".as_slice())];
        many.extend(std::iter::repeat_n(
            ("www-authenticate", b"Basic".as_slice()),
            MAX_CHALLENGE_LINES,
        ));
        many.push(("www-authenticate", INVALID));
        assert!(!says_invalid_token(&response(&many)), "bounded");
    }

    #[test]
    fn the_older_text_value_is_read_too() {
        let mut r = response(&[]);
        r.headers.as_mut().expect("map").headers = vec![
            HeaderValue {
                key: ":status".into(),
                value: "401".into(),
                ..Default::default()
            },
            HeaderValue {
                key: "www-authenticate".into(),
                value: "Bearer error=\"invalid_token\"".into(),
                ..Default::default()
            },
        ];
        assert!(says_invalid_token(&r));
    }
}
