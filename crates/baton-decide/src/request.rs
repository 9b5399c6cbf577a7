//! The outbound request as the decision sees it, whichever Envoy API asked: the route's destination
//! name, the authority, method and path, the caller's `Authorization`, the headers; and from
//! `Authorization` to a subject token. It borrows rather than copies, refuses anything that is not
//! one well-formed RFC 6750 bearer token, and never names Envoy's types or does I/O: the adapters
//! (`extract`) fill it in.

use std::collections::HashMap;
use std::fmt;

use crate::reason::{Denial, Reason};

/// The parts of an outbound request that decide its delegation, whichever Envoy API asked.
#[derive(Debug)]
pub struct Outbound<'a> {
    /// The destination the Envoy route names: ext_authz `context_extensions["baton.destination"]`,
    /// or ext_proc's `baton-destination` gRPC metadata.
    pub route_destination: Option<&'a str>,
    /// The `:authority` (host) of the request.
    pub authority: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The calling workload as Envoy saw it (`source.principal`: a SPIFFE ID under mTLS), if any.
    pub source_principal: Option<&'a str>,
    pub authorization: Authorization<'a>,
    pub headers: Headers<'a>,
}

/// The `Authorization` header as Envoy sent it.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization<'a> {
    Missing,
    One(&'a str),
    Several,
}

/// Header lines as an adapter holds them (Envoy's `HeaderValue`s), read in place: the adapter
/// implements this on its own borrowed view, so no line is copied.
pub trait HeaderLines: fmt::Debug + Sync {
    /// Line `index` (from 0, in the order sent): its key (lower-case, as Envoy sends it) and its
    /// value if the value is text; `None` past the last line.
    fn line(&self, index: usize) -> Option<(&str, Option<&str>)>;
}

impl<'l> dyn HeaderLines + 'l {
    /// Every line, in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        (0..).map_while(|i| self.line(i))
    }
}

/// No header lines at all (a call that carries no HTTP request, such as the broker's).
#[derive(Debug)]
struct NoLines;

impl HeaderLines for NoLines {
    fn line(&self, _: usize) -> Option<(&str, Option<&str>)> {
        None
    }
}

/// Request headers as Envoy sent them: folded into a map (ext_authz's default, repeated headers
/// joined by ","), or every line (`header_map` with `encode_raw_headers`, and ext_proc). Keys are
/// lower-case in both.
#[derive(Clone, Copy, Debug)]
pub enum Headers<'a> {
    Folded(&'a HashMap<String, String>),
    Lines(&'a dyn HeaderLines),
}

impl<'a> Headers<'a> {
    /// No headers.
    pub const NONE: Headers<'static> = Headers::Lines(&NoLines);

    /// The one value of `name`: `Several` when the header appears more than once (or was folded).
    /// A line holding a `,` is several too: Envoy folds a repeated `Authorization` (one of its
    /// inline headers) into one line joined by `,` before ext_proc or a Wasm filter sees it, so the
    /// two shapes must answer alike (`multiple_authorization_headers`), as they do under ext_authz.
    pub fn one(&self, name: &str) -> Result<Authorization<'a>, Denial> {
        match *self {
            Headers::Folded(map) => Ok(match map.get(name) {
                None => Authorization::Missing,
                Some(value) if value.contains(',') => Authorization::Several,
                Some(value) => Authorization::One(value),
            }),
            Headers::Lines(lines) => {
                let mut found = lines.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name));
                match (found.next(), found.next()) {
                    (None, _) => Ok(Authorization::Missing),
                    (Some(_), Some(_)) => Ok(Authorization::Several),
                    (Some((_, Some(value))), None) if value.contains(',') => Ok(Authorization::Several),
                    (Some((_, value)), None) => value
                        .map(Authorization::One)
                        .ok_or_else(|| Denial::new(Reason::MalformedToken, "the Authorization header is not UTF-8")),
                }
            }
        }
    }

    /// The first value of `name`, if it is text.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        match *self {
            Headers::Folded(map) => map.get(name).map(String::as_str),
            Headers::Lines(lines) => lines
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .and_then(|(_, value)| value),
        }
    }
}

/// The subject token from `Authorization: Bearer <token>`, or why there is none to use.
/// `Ok(None)` means no header at all: the caller's `missing_token` setting decides.
pub fn subject_token<'a>(authorization: &Authorization<'a>, max_bytes: usize) -> Result<Option<&'a str>, Denial> {
    let value = match authorization {
        Authorization::Missing => return Ok(None),
        Authorization::Several => {
            return Err(Denial::new(
                Reason::MultipleAuthorizationHeaders,
                "the request has more than one Authorization header",
            ));
        }
        Authorization::One(value) => value.trim_matches([' ', '\t']),
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denial::new(
            Reason::UnsupportedAuthorizationScheme,
            "the Authorization header does not use the Bearer scheme",
        ));
    }
    check_token(token.trim_start_matches(' '), max_bytes).map(Some)
}

/// A bearer token's own rules: present, within the size bound, RFC 6750 characters only.
pub fn check_token(token: &str, max_bytes: usize) -> Result<&str, Denial> {
    if token.is_empty() {
        return Err(Denial::new(Reason::EmptyToken, "the bearer token is empty"));
    }
    if token.len() > max_bytes {
        return Err(Denial::new(
            Reason::TokenTooLarge,
            format!("the bearer token is larger than {max_bytes} bytes"),
        ));
    }
    if !is_b64token(token) {
        return Err(Denial::new(
            Reason::MalformedToken,
            "the bearer token has characters outside RFC 6750's b64token",
        ));
    }
    Ok(token)
}

/// RFC 6750 2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| B64TOKEN[usize::from(b)])
}

/// The characters of a b64token body, as a table: this check runs over every byte of every token on
/// every request, and one lookup per byte costs a fraction of the comparisons.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn token_of(header: &str) -> Result<Option<&str>, Reason> {
        subject_token(&Authorization::One(header), 64).map_err(|d| d.reason)
    }

    #[test]
    fn bearer_parsing_follows_rfc_6750() {
        assert_eq!(token_of("Bearer abc.DEF-_~+/=="), Ok(Some("abc.DEF-_~+/==")));
        assert_eq!(token_of("bearer abc"), Ok(Some("abc")));
        assert_eq!(token_of("BEARER   abc"), Ok(Some("abc")));
        assert_eq!(
            subject_token(&Authorization::Missing, 64).map_err(|d| d.reason),
            Ok(None)
        );
        assert_eq!(
            subject_token(&Authorization::Several, 64).map_err(|d| d.reason),
            Err(Reason::MultipleAuthorizationHeaders)
        );
        assert_eq!(
            token_of("Basic dXNlcjpwYXNz"),
            Err(Reason::UnsupportedAuthorizationScheme)
        );
        assert_eq!(token_of("Bearer"), Err(Reason::EmptyToken));
        assert_eq!(token_of("Bearer "), Err(Reason::EmptyToken));
        assert_eq!(token_of("Bearer a b"), Err(Reason::MalformedToken));
        assert_eq!(token_of("Bearer a\r\nX-Evil: 1"), Err(Reason::MalformedToken));
        assert_eq!(token_of("Bearer ==="), Err(Reason::MalformedToken));
        assert_eq!(token_of("Bearer a=b"), Err(Reason::MalformedToken));
        assert_eq!(
            token_of(&format!("Bearer {}", "a".repeat(65))),
            Err(Reason::TokenTooLarge)
        );
        assert_eq!(
            token_of(&format!("Bearer {}", "a".repeat(64))).map(|t| t.map(str::len)),
            Ok(Some(64))
        );
    }

    /// Lines as `(key, value)` pairs; a value of `None` is not text.
    #[derive(Debug)]
    struct Pairs(Vec<(&'static str, Option<&'static str>)>);

    impl HeaderLines for Pairs {
        fn line(&self, index: usize) -> Option<(&str, Option<&str>)> {
            self.0.get(index).copied()
        }
    }

    #[test]
    fn lines_keep_repeats_and_refuse_a_value_that_is_not_text() {
        let one = Pairs(vec![("host", Some("h")), ("Authorization", Some("Bearer a"))]);
        let headers = Headers::Lines(&one);
        assert_eq!(headers.one("authorization"), Ok(Authorization::One("Bearer a")));
        assert_eq!(headers.get("host"), Some("h"));
        assert_eq!(headers.get("traceparent"), None);

        let two = Pairs(vec![
            ("authorization", Some("Bearer a")),
            ("authorization", Some("Bearer b")),
        ]);
        assert_eq!(Headers::Lines(&two).one("authorization"), Ok(Authorization::Several));
        assert_eq!(Headers::Lines(&two).get("authorization"), Some("Bearer a"));
        // Envoy's fold of the same two headers: the same answer.
        let folded = Pairs(vec![("authorization", Some("Bearer a,Bearer b"))]);
        assert_eq!(Headers::Lines(&folded).one("authorization"), Ok(Authorization::Several));

        let binary = Pairs(vec![("authorization", None)]);
        let err = Headers::Lines(&binary).one("authorization").expect_err("not text");
        assert_eq!(err.reason, Reason::MalformedToken);
        assert_eq!(Headers::NONE.one("authorization"), Ok(Authorization::Missing));
    }
}
