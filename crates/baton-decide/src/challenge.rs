//! `WWW-Authenticate` challenges (RFC 9110 §11.6.1, §11.2), read as a destination sends them, so
//! ext_proc can tell a destination's "this token is bad" (RFC 6750 §3.1 `error="invalid_token"`, in a
//! `Bearer` or `DPoP` challenge, RFC 9449 §7.1) from every other 401. It owns the grammar only:
//! several challenges in one value, quoted strings with escapes, case-insensitive schemes and
//! parameter names, `token68`. It never guesses: a value it cannot read whole names no challenge,
//! and it never allocates beyond its bounds, whatever the destination sends.

use std::borrow::Cow;

/// The longest header value read; a longer one names no challenge.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
/// The most challenges, and parameters, one value may hold; past either it names no challenge.
pub const MAX_ITEMS: usize = 64;

/// One challenge: its scheme and its parameters (names as sent; compare them case-insensitively).
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub scheme: &'a str,
    pub params: Vec<(&'a str, Cow<'a, [u8]>)>,
    /// The `token68` form (`Basic dXNlcg==`), instead of parameters.
    pub token68: Option<&'a str>,
}

impl Challenge<'_> {
    /// The one value of parameter `name` (case-insensitive); `None` when absent or given twice
    /// (RFC 9110: each parameter name MUST only occur once per challenge, so two is malformed).
    pub fn param(&self, name: &str) -> Option<&[u8]> {
        let mut found = self.params.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        match (found.next(), found.next()) {
            (Some((_, value)), None) => Some(value),
            _ => None,
        }
    }

    /// A `Bearer` or `DPoP` challenge whose `error` is exactly `invalid_token`.
    pub fn is_invalid_token(&self) -> bool {
        (self.scheme.eq_ignore_ascii_case("bearer") || self.scheme.eq_ignore_ascii_case("dpop"))
            && self.param("error") == Some(b"invalid_token".as_slice())
    }
}

/// Why a value names no challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeError {
    TooLong,
    TooMany,
    Malformed,
}

/// Every challenge in one `WWW-Authenticate` value (raw bytes, as Envoy sends them).
pub fn parse(value: &[u8]) -> Result<Vec<Challenge<'_>>, ChallengeError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ChallengeError::TooLong);
    }
    let mut p = Parser { s: value, at: 0 };
    let mut challenges: Vec<Challenge<'_>> = Vec::new();
    let mut items = 0usize;
    loop {
        p.skip_list_separators();
        if p.done() {
            break;
        }
        items += 1;
        if items > MAX_ITEMS {
            return Err(ChallengeError::TooMany);
        }
        let scheme = p.token().ok_or(ChallengeError::Malformed)?;
        let mut challenge = Challenge {
            scheme,
            params: Vec::new(),
            token68: None,
        };
        // The scheme alone, then the end or a comma.
        let spaced = p.skip_spaces() > 0;
        if p.done() || p.peek() == Some(b',') {
            challenges.push(challenge);
            continue;
        }
        if !spaced {
            return Err(ChallengeError::Malformed);
        }
        // `token68`, or the first `name = value`.
        let start = p.at;
        if let Some(t68) = p.token68()
            && p.after_spaces_is_end_or_comma()
        {
            challenge.token68 = Some(t68);
            p.skip_spaces();
            challenges.push(challenge);
            continue;
        }
        p.at = start;
        loop {
            let (name, value) = p.param().ok_or(ChallengeError::Malformed)?;
            items += 1;
            if items > MAX_ITEMS {
                return Err(ChallengeError::TooMany);
            }
            challenge.params.push((name, value));
            p.skip_spaces();
            if p.done() {
                break;
            }
            if p.peek() != Some(b',') {
                return Err(ChallengeError::Malformed);
            }
            // After commas: another parameter of this challenge (`name =`), or the next challenge.
            let before = p.at;
            p.skip_list_separators();
            if p.done() {
                break;
            }
            if !p.param_ahead() {
                p.at = before;
                break;
            }
        }
        challenges.push(challenge);
    }
    Ok(challenges)
}

/// Does any of these `WWW-Authenticate` values carry a Bearer or DPoP `invalid_token` challenge? A
/// value that cannot be read whole counts as none.
pub fn says_invalid_token<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    values
        .into_iter()
        .any(|v| parse(v).is_ok_and(|cs| cs.iter().any(Challenge::is_invalid_token)))
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

impl<'a> Parser<'a> {
    fn done(&self) -> bool {
        self.at >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn skip_spaces(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
        self.at - start
    }

    /// Empty list elements are allowed (RFC 9110 §5.6.1.2).
    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.at += 1;
        }
    }

    fn after_spaces_is_end_or_comma(&self) -> bool {
        let mut i = self.at;
        while matches!(self.s.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        matches!(self.s.get(i), None | Some(b','))
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        // tchar is ASCII, so the slice is UTF-8.
        (self.at > start).then(|| std::str::from_utf8(&self.s[start..self.at]).ok())?
    }

    fn token68(&mut self) -> Option<&'a str> {
        let start = self.at;
        while self.peek().is_some_and(is_token68_char) {
            self.at += 1;
        }
        if self.at == start {
            return None;
        }
        while self.peek() == Some(b'=') {
            self.at += 1;
        }
        std::str::from_utf8(&self.s[start..self.at]).ok()
    }

    /// Is a `name BWS =` next (not `name ==`, which is a token68)?
    fn param_ahead(&mut self) -> bool {
        let start = self.at;
        let ahead = self.token().is_some() && {
            self.skip_spaces();
            self.peek() == Some(b'=')
        };
        self.at = start;
        ahead
    }

    /// `token BWS "=" BWS ( token / quoted-string )`.
    fn param(&mut self) -> Option<(&'a str, Cow<'a, [u8]>)> {
        let name = self.token()?;
        self.skip_spaces();
        if self.peek() != Some(b'=') {
            return None;
        }
        self.at += 1;
        self.skip_spaces();
        let value = match self.peek()? {
            b'"' => self.quoted()?,
            _ => Cow::Borrowed(self.token()?.as_bytes()),
        };
        Some((name, value))
    }

    /// A quoted-string, unescaped; borrowed when it holds no quoted-pair.
    fn quoted(&mut self) -> Option<Cow<'a, [u8]>> {
        self.at += 1; // the opening quote
        let start = self.at;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let b = self.peek()?;
            match b {
                b'"' => {
                    let value = match owned {
                        Some(v) => Cow::Owned(v),
                        None => Cow::Borrowed(&self.s[start..self.at]),
                    };
                    self.at += 1;
                    return Some(value);
                }
                b'\\' => {
                    let escaped = *self.s.get(self.at + 1)?;
                    if !(escaped == b'\t' || escaped == b' ' || escaped.is_ascii_graphic() || escaped >= 0x80) {
                        return None;
                    }
                    owned
                        .get_or_insert_with(|| self.s[start..self.at].to_vec())
                        .push(escaped);
                    self.at += 2;
                }
                // qdtext: HTAB, SP, %x21, %x23-5B, %x5D-7E, obs-text.
                b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF => {
                    if let Some(v) = owned.as_mut() {
                        v.push(b);
                    }
                    self.at += 1;
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(value: &str) -> bool {
        says_invalid_token([value.as_bytes()])
    }

    #[test]
    fn reads_rfc_6750_and_9449_challenges() {
        let cs =
            parse(br#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#)
                .expect("parses");
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].scheme, "Bearer");
        assert_eq!(cs[0].param("realm"), Some(b"example".as_slice()));
        assert_eq!(cs[0].param("ERROR"), Some(b"invalid_token".as_slice()));
        assert!(cs[0].is_invalid_token());

        let cs = parse(br#"DPoP algs="ES256 PS256", error="invalid_token""#).expect("parses");
        assert!(cs[0].is_invalid_token());

        let cs = parse(b"Basic dXNlcjpwYXNz==, Bearer error=invalid_token").expect("parses");
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].token68, Some("dXNlcjpwYXNz=="));
        assert!(cs[1].is_invalid_token(), "a token value, unquoted");
    }

    #[test]
    fn says_invalid_token_only_for_a_bearer_or_dpop_invalid_token() {
        for yes in [
            r#"Bearer error="invalid_token""#,
            r#"bearer error="invalid_token""#,
            r#"BEARER ERROR="invalid_token""#,
            r#"Bearer error = "invalid_token""#,
            r#"dpop error="invalid_token""#,
            r#"Basic realm="x", Bearer realm="y", error="invalid_token""#,
            r#"Basic realm="x",, , Bearer error="invalid_token",,"#,
            r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Bearer error="invalid_token""#,
            r#"Bearer error="invalid\_token""#,
            "Bearer\terror=\"invalid_token\"",
        ] {
            assert!(invalid(yes), "{yes}");
        }
        for no in [
            "",
            "Bearer",
            r#"Bearer realm="example""#,
            r#"Bearer error="insufficient_scope""#,
            r#"Bearer error="invalid_request""#,
            r#"Bearer error="INVALID_TOKEN""#,
            r#"Bearer error="invalid_token ""#,
            r#"Bearer error="invalid_token"x"#,
            // Another scheme's parameter, or a Bearer challenge that only mentions it.
            r#"Basic error="invalid_token""#,
            r#"Bearerx error="invalid_token""#,
            r#"Bearer error_description="error=\"invalid_token\"""#,
            r#"Bearer realm="error=\"invalid_token\"""#,
            r#"Bearer realm="a, error=invalid_token""#,
            // Malformed: the whole value names nothing.
            r#"Bearer error="invalid_token"#,
            r#"Bearer error="invalid_token", realm="x"#,
            r#"Bearer error="invalid_token" realm="x""#,
            r#"Bearer error="invalid_token", ="x""#,
            "Bearer error=\"invalid_token\", realm=\"a\u{1}\"",
            // Two `error`s: ambiguous, not an answer.
            r#"Bearer error="invalid_token", error="invalid_request""#,
            r#"Bearer error="invalid_token", ERROR="invalid_token""#,
            r#"Bearer,error="invalid_token""#,
            r#"=Bearer error="invalid_token""#,
            r#"Bearer error=invalid_token="#,
        ] {
            assert!(!invalid(no), "{no}");
        }
    }

    #[test]
    fn several_header_values_and_bytes_that_are_not_utf8() {
        assert!(says_invalid_token([
            b"Basic realm=\"x\"".as_slice(),
            b"Bearer error=\"invalid_token\"".as_slice()
        ]));
        // obs-text in another parameter does not hide the error.
        assert!(says_invalid_token([
            b"Bearer realm=\"caf\xe9\", error=\"invalid_token\"".as_slice()
        ]));
        // A malformed value does not stop a well-formed one from counting, nor count itself.
        assert!(says_invalid_token([
            b"Bearer error=\"invalid_token".as_slice(),
            b"DPoP error=\"invalid_token\"".as_slice()
        ]));
        assert!(!says_invalid_token([b"\xff\xfe".as_slice()]));
        assert!(!says_invalid_token(std::iter::empty()));
    }

    #[test]
    fn bounded_whatever_the_destination_sends() {
        let long = format!(
            r#"Bearer realm="{}", error="invalid_token""#,
            "a".repeat(MAX_VALUE_BYTES)
        );
        assert_eq!(parse(long.as_bytes()), Err(ChallengeError::TooLong));
        let many = "Basic, ".repeat(MAX_ITEMS) + r#"Bearer error="invalid_token""#;
        assert_eq!(parse(many.as_bytes()), Err(ChallengeError::TooMany));
        let params = "a=b, ".repeat(MAX_ITEMS) + r#"error="invalid_token""#;
        assert_eq!(
            parse(format!("Bearer {params}").as_bytes()),
            Err(ChallengeError::TooMany)
        );
        let commas = ",".repeat(MAX_VALUE_BYTES - 40) + r#"Bearer error="invalid_token""#;
        assert!(invalid(&commas), "empty list elements cost nothing");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes: an answer, never a panic; and only values naming invalid_token say so.
            #[test]
            fn never_panics_and_never_invents_invalid_token(value in proptest::collection::vec(any::<u8>(), 0..300)) {
                let said = says_invalid_token([value.as_slice()]);
                if said {
                    let text = String::from_utf8_lossy(&value).replace('\\', "");
                    prop_assert!(text.contains("invalid") && text.to_ascii_lowercase().contains("error"));
                }
            }

            /// A Bearer invalid_token challenge is found wherever it sits among other well-formed ones,
            /// whatever its parameters' case and quoting.
            #[test]
            fn found_among_others(
                before in proptest::collection::vec("[A-Za-z]{1,8}( realm=\"[ -!#-\\[\\]-~]{0,12}\")?", 0..4),
                after in proptest::collection::vec("[A-Za-z]{1,8}( realm=\"[ -!#-\\[\\]-~]{0,12}\")?", 0..4),
                scheme in "(?i)bearer|dpop",
                quoted in any::<bool>(),
            ) {
                let error = if quoted { "error=\"invalid_token\"" } else { "error=invalid_token" };
                let mut all = before.clone();
                all.push(format!("{scheme} realm=\"r\", {error}"));
                all.extend(after.iter().cloned());
                let value = all.join(", ");
                prop_assert!(says_invalid_token([value.as_bytes()]), "{}", value);
                let other = value.replace("invalid_token", "invalid_request");
                prop_assert!(!says_invalid_token([other.as_bytes()]), "{}", other);
            }
        }
    }
}
