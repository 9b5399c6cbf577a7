//! The canonical forms policy is judged on: a request's path (RFC 3986) and its authority. This
//! module owns the one rule for each, shared by Baton's matching, its configuration (host patterns
//! and path rules go through the same functions at load) and the Envoy routes it generates. It is
//! pure (no I/O, no async, no tokio: it must compile to wasm32) and it never guesses: an input that
//! has no single safe reading is refused with a specific error, never repaired.

use core::fmt;
use core::net::Ipv6Addr;

/// The longest path (without query) Baton judges. Envoy's default header limit is 60 KiB; a path
/// policy has no use for more than this, and a bound keeps the work per request small.
pub const MAX_PATH_BYTES: usize = 8192;
/// The longest authority: a DNS name is at most 253 bytes, plus a trailing dot and `:65535`.
pub const MAX_AUTHORITY_BYTES: usize = 260;

// === Paths ===

/// Why a path has no canonical form. Every variant is refused as `path_not_canonical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/` (CONNECT, `*` or an absolute form)")]
    NotOriginForm,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("the path has a malformed percent-escape")]
    MalformedEscape,
    #[error("the path has an encoded `/` (%2F)")]
    EncodedSlash,
    #[error("the path has a backslash, raw or encoded")]
    Backslash,
    #[error("the path has a control character, raw or encoded")]
    Control,
    #[error("the path has a percent-encoded dot segment")]
    EncodedDotSegment,
    #[error("the path has a segment some servers read as a dot segment or as empty (`..;x`, `...`, `.. `, `;x`)")]
    AmbiguousSegment,
    #[error("the path has an empty segment before a `..`, which servers resolve differently")]
    EmptySegmentBeforeDotDot,
    #[error("the path has a double-encoded escape (%25 followed by hex)")]
    DoubleEncoded,
    #[error("the path's percent-encoded bytes are not UTF-8 (an overlong or invalid sequence)")]
    InvalidUtf8,
}

/// The part of a request target before its query or fragment: cut at the first `?` or `#`.
pub fn path_only(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

/// The canonical form of a request's `:path` (the query and fragment are cut first):
/// - RFC 3986 5.2.4 dot-segment removal, after merging repeated slashes (`//a` is `/a`, as Envoy's
///   `merge_slashes` and most servers read it); a trailing slash is kept;
/// - percent-escapes of unreserved characters decoded, other escapes kept with upper-case hex,
///   characters a URI may not hold raw (space, `"`, `{`, non-ASCII, ...) percent-encoded;
/// - refused: an encoded `/`, `\` and control characters raw or encoded, an encoded dot segment,
///   a dot segment with parameters or padding (`..;x`, `...`, `..%20`), an empty segment before a
///   `..` (merge-then-resolve and resolve-then-merge disagree), `%25` followed by hex (a second
///   decoding would change the path), escapes that are not UTF-8 (overlong `%C0%AE`), a malformed
///   escape, a path not starting with `/`, a path over [`MAX_PATH_BYTES`].
pub fn path(target: &str) -> Result<String, PathError> {
    let raw = path_only(target);
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotOriginForm);
    };
    let raw_segments: Vec<&str> = rest.split('/').collect();
    let last = raw_segments.len() - 1;
    let mut out: Vec<String> = Vec::with_capacity(raw_segments.len());
    let mut trailing_slash = false;
    let mut seen_empty = false;
    for (i, raw_segment) in raw_segments.iter().enumerate() {
        let segment = segment(raw_segment)?;
        match segment.text.as_str() {
            "." | ".." if segment.encoded_dot => return Err(PathError::EncodedDotSegment),
            "." => trailing_slash = i == last,
            ".." => {
                if seen_empty {
                    return Err(PathError::EmptySegmentBeforeDotDot);
                }
                out.pop();
                trailing_slash = i == last;
            }
            "" => {
                // Merged away, unless it ends the path (a trailing slash).
                if i == last {
                    trailing_slash = true;
                } else {
                    seen_empty = true;
                }
            }
            text => {
                if ambiguous_segment(text) {
                    return Err(PathError::AmbiguousSegment);
                }
                out.push(segment.text);
            }
        }
    }
    let mut canonical = String::with_capacity(raw.len());
    for s in &out {
        canonical.push('/');
        canonical.push_str(s);
    }
    if canonical.is_empty() || trailing_slash {
        canonical.push('/');
    }
    // Encoding raw characters can lengthen the path: the bound holds for what is judged too, so
    // that the canonical form is accepted again (found by the `canonical_path` fuzz target).
    if canonical.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    Ok(canonical)
}

struct Segment {
    text: String,
    /// A `.` of the segment came from `%2E`.
    encoded_dot: bool,
}

/// One segment's canonical text; the checks that need the segment's decoded bytes.
fn segment(raw: &str) -> Result<Segment, PathError> {
    let bytes = raw.as_bytes();
    let mut text = String::with_capacity(raw.len());
    // The segment fully decoded: it must be UTF-8 (no overlong forms of `.` or `/`).
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let value = match (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
                (Some(h), Some(l)) => h << 4 | l,
                _ => return Err(PathError::MalformedEscape),
            };
            i += 3;
            never_safe(value)?;
            decoded.push(value);
            if is_unreserved(value) {
                encoded_dot |= value == b'.';
                text.push(char::from(value));
            } else {
                push_escape(&mut text, value);
            }
            continue;
        }
        never_safe(b)?;
        decoded.push(b);
        if b.is_ascii() && (is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@') {
            text.push(char::from(b));
        } else {
            push_escape(&mut text, b);
        }
        i += 1;
    }
    if core::str::from_utf8(&decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    // On the output, so that the canonical form passes again unchanged: `%25%41` is `%25A`.
    let out = text.as_bytes();
    if out
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex(&w[3]).is_some() && hex(&w[4]).is_some())
    {
        return Err(PathError::DoubleEncoded);
    }
    Ok(Segment { text, encoded_dot })
}

/// Bytes refused raw or encoded: `/` only when encoded (a raw one separates segments).
fn never_safe(b: u8) -> Result<(), PathError> {
    match b {
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::Backslash),
        0..=0x1f | 0x7f => Err(PathError::Control),
        _ => Ok(()),
    }
}

/// A segment that is not `.`, `..` or empty but that some server reads as one: a dot segment with
/// `;` parameters or parameters only (Tomcat and Spring cut `;...` before resolving, so
/// `/items/;x/price` is their `/items/price`), or dots padded with more dots or spaces (Windows
/// drops trailing dots and spaces).
fn ambiguous_segment(text: &str) -> bool {
    // An encoded `;` too: a server that decodes before it cuts parameters reads `..%3B` as `..`.
    let before_parameters = text.split(';').next().unwrap_or(text);
    let before_parameters = before_parameters.split("%3B").next().unwrap_or(before_parameters);
    let mut rest = before_parameters;
    while let Some(r) = rest.strip_suffix("%20").or_else(|| rest.strip_suffix('.')) {
        rest = r;
    }
    // `text` is not `.`, `..` or empty itself: `path` handled those.
    before_parameters.is_empty() || (before_parameters.starts_with('.') && rest.is_empty())
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(text: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    text.push('%');
    text.push(char::from(HEX[usize::from(b >> 4)]));
    text.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// RFC 3986 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 2.2.
fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

// === Authorities ===

/// Why an authority is malformed. Every variant is `authority_malformed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_AUTHORITY_BYTES} bytes")]
    TooLong,
    #[error("has a character a host name may not hold (userinfo `@`, a space, `%`, ...)")]
    BadCharacter,
    #[error("has an empty label (`a..b`, a leading dot, or more than one trailing dot)")]
    EmptyLabel,
    #[error("is not a valid bracketed IPv6 address")]
    BadIpv6,
    #[error("has more than one `:` outside brackets (an IPv6 address must be bracketed)")]
    SeveralColons,
    #[error("has a port that is not a decimal 1 to 65535 without leading zeros")]
    BadPort,
    #[error("uses `*` other than as a leading `*.`")]
    BadWildcard,
}

/// A canonical authority: a lower-case host name without its trailing dot, or a bracketed IPv6
/// address in RFC 5952 form; and the port, if one was given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn is_ipv6(&self) -> bool {
        self.host.starts_with('[')
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// The canonical form of an HTTP authority (`host`, `host:port`, `[v6]:port`): lower-case, one
/// trailing dot removed, the port decimal 1 to 65535 without leading zeros. Anything else is
/// malformed: userinfo, percent-encoding, spaces, an empty label or several trailing dots, an
/// unbracketed or invalid IPv6 address, a zone identifier, garbage after `]`, an empty host.
pub fn authority(raw: &str) -> Result<Authority, AuthorityError> {
    if raw.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if raw.len() > MAX_AUTHORITY_BYTES {
        return Err(AuthorityError::TooLong);
    }
    if let Some(bracketed) = raw.strip_prefix('[') {
        let (inner, after) = bracketed.split_once(']').ok_or(AuthorityError::BadIpv6)?;
        // `core`'s parser takes no zone (`%eth0`) and no IPvFuture (`v1.x`).
        let address: Ipv6Addr = inner.parse().map_err(|_| AuthorityError::BadIpv6)?;
        let port = match after {
            "" => None,
            _ => Some(port(after.strip_prefix(':').ok_or(AuthorityError::BadIpv6)?)?),
        };
        return Ok(Authority {
            host: format!("[{address}]"),
            port,
        });
    }
    let (host, port_text) = match raw.split_once(':') {
        Some((_, p)) if p.contains(':') => return Err(AuthorityError::SeveralColons),
        Some((host, p)) => (host, Some(p)),
        None => (raw, None),
    };
    let port = port_text.map(port).transpose()?;
    Ok(Authority {
        host: host_name(host)?,
        port,
    })
}

/// A DNS name (or dotted IPv4) as Baton compares it.
fn host_name(host: &str) -> Result<String, AuthorityError> {
    if host.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(AuthorityError::BadCharacter);
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.split('.').any(str::is_empty) {
        return Err(AuthorityError::EmptyLabel);
    }
    Ok(host.to_ascii_lowercase())
}

/// RFC 3986 `port`, narrowed to what a TCP port can be, written one way only.
fn port(text: &str) -> Result<u16, AuthorityError> {
    if text.is_empty() || text.len() > 5 || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::BadPort);
    }
    text.parse().map_err(|_| AuthorityError::BadPort)
}

/// A configured host pattern: an authority, optionally `*.`-prefixed (any name ending in
/// `.suffix`, with at least one label in front).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPattern {
    pub wildcard: bool,
    pub authority: Authority,
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        self.authority.fmt(f)
    }
}

/// A host pattern from the configuration, canonicalized with [`authority`].
pub fn host_pattern(text: &str) -> Result<HostPattern, AuthorityError> {
    let (wildcard, rest) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if rest.contains('*') {
        return Err(AuthorityError::BadWildcard);
    }
    let authority = authority(rest)?;
    if wildcard && authority.is_ipv6() {
        return Err(AuthorityError::BadWildcard);
    }
    Ok(HostPattern { wildcard, authority })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_resolved_and_decoded_where_safe() {
        for (raw, canonical) in [
            ("/", "/"),
            ("/orders/42", "/orders/42"),
            ("/orders/42?x=/../admin#frag", "/orders/42"),
            ("/orders#/../admin", "/orders"),
            ("/orders/../admin", "/admin"),
            ("/items/../price", "/price"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../etc", "/etc"),
            ("//admin", "/admin"),
            ("/orders//42/", "/orders/42/"),
            ("/a/..//b", "/b"),
            ("/%7Euser/%41%62c", "/~user/Abc"),
            ("/a%2db%5fc", "/a-b_c"),
            ("/caf%c3%a9/x%3b%3f", "/caf%C3%A9/x%3B%3F"),
            ("/café", "/caf%C3%A9"),
            ("/a b/{x}|", "/a%20b/%7Bx%7D%7C"),
            ("/100%25", "/100%25"),
            ("/orders;jsessionid=1/42", "/orders;jsessionid=1/42"),
            ("/admin;x/..", "/"),
            ("/a/b;c=d", "/a/b;c=d"),
            ("/a%2eb", "/a.b"),
            ("/items/*/price", "/items/*/price"),
        ] {
            assert_eq!(path(raw).as_deref(), Ok(canonical), "{raw}");
        }
    }

    #[test]
    fn never_safe_paths_are_refused() {
        use PathError::*;
        for (raw, why) in [
            ("", NotOriginForm),
            ("*", NotOriginForm),
            ("orders.example:443", NotOriginForm),
            ("http://orders.example/orders", NotOriginForm),
            ("/orders/..%2fadmin", EncodedSlash),
            ("/orders%2F..%2Fadmin", EncodedSlash),
            ("/orders/..\\admin", Backslash),
            ("/orders/..%5cadmin", Backslash),
            ("/orders/%00", Control),
            ("/orders/\u{0}", Control),
            ("/orders/%0a", Control),
            ("/orders/%7F", Control),
            ("/orders/\t", Control),
            ("/orders/%2e%2e/admin", EncodedDotSegment),
            ("/orders/.%2e/admin", EncodedDotSegment),
            ("/orders/%2E./admin", EncodedDotSegment),
            ("/orders/%2e/admin", EncodedDotSegment),
            ("/orders/..;/admin", AmbiguousSegment),
            ("/orders/..;x=1/admin", AmbiguousSegment),
            ("/orders/.;/admin", AmbiguousSegment),
            ("/orders/.../admin", AmbiguousSegment),
            ("/orders/..%20/admin", AmbiguousSegment),
            ("/orders/.. /admin", AmbiguousSegment),
            ("/orders/%2e%2e;x/admin", AmbiguousSegment),
            ("/orders/..%3b/admin", AmbiguousSegment),
            ("/items/;x/price", AmbiguousSegment),
            ("/items/%3Bx/price", AmbiguousSegment),
            ("/;jsessionid=1", AmbiguousSegment),
            ("/orders//../admin", EmptySegmentBeforeDotDot),
            ("/orders/%252e%252e/admin", DoubleEncoded),
            ("/orders/%25%32%65", DoubleEncoded),
            ("/orders/%c0%ae%c0%ae/admin", InvalidUtf8),
            ("/orders/%e0%80%ae", InvalidUtf8),
            ("/orders/%ff", InvalidUtf8),
            ("/orders/%zz", MalformedEscape),
            ("/orders/%", MalformedEscape),
            ("/orders/%4", MalformedEscape),
            ("/orders/%u002e%u002e", MalformedEscape),
        ] {
            assert_eq!(path(raw), Err(why), "{raw:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(path(&long), Err(PathError::TooLong));
        // Nor may the canonical form outgrow it (`é` is 2 bytes raw, 6 encoded).
        let wide = format!("/{}", "é".repeat(MAX_PATH_BYTES / 4));
        assert_eq!(path(&wide), Err(PathError::TooLong));
        // The query does not count.
        let query = format!("/a?{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(path(&query).as_deref(), Ok("/a"));
    }

    #[test]
    fn authorities_have_one_form() {
        for (raw, canonical) in [
            ("orders.local", "orders.local"),
            ("ORDERS.Local:8443", "orders.local:8443"),
            ("orders.local.:8443", "orders.local:8443"),
            ("orders.local.", "orders.local"),
            ("orders:1", "orders:1"),
            ("orders:65535", "orders:65535"),
            ("10.0.0.1:80", "10.0.0.1:80"),
            ("[::1]:8080", "[::1]:8080"),
            ("[0:0:0:0:0:0:0:1]", "[::1]"),
            ("[2001:DB8::A]:443", "[2001:db8::a]:443"),
            ("under_score.svc", "under_score.svc"),
        ] {
            assert_eq!(authority(raw).map(|a| a.to_string()).as_deref(), Ok(canonical), "{raw}");
        }
    }

    #[test]
    fn malformed_authorities_are_refused() {
        use AuthorityError::*;
        for (raw, why) in [
            ("", Empty),
            (":8443", Empty),
            (".", EmptyLabel),
            ("orders.local:08443", BadPort),
            ("orders.local:008443", BadPort),
            ("orders.local:0", BadPort),
            ("orders.local:65536", BadPort),
            ("orders.local:99999", BadPort),
            ("orders.local:123456", BadPort),
            ("orders.local:abc", BadPort),
            ("orders.local:", BadPort),
            ("orders.local:+80", BadPort),
            ("orders.local: 80", BadPort),
            ("orders.local:8080.evil.example", BadPort),
            ("api.orders.example:evil.example", BadPort),
            ("user@orders.local", BadCharacter),
            ("user:pw@orders.local", BadPort),
            ("orders.local ", BadCharacter),
            ("orders%2elocal", BadCharacter),
            ("orders.local/", BadCharacter),
            ("*.orders.local", BadCharacter),
            ("ordérs.local", BadCharacter),
            ("orders.local..", EmptyLabel),
            ("orders..local", EmptyLabel),
            (".orders.local", EmptyLabel),
            ("::1", SeveralColons),
            ("::1:8080", SeveralColons),
            ("[::1", BadIpv6),
            ("[::1]x", BadIpv6),
            ("[::1]:", BadPort),
            ("[::1]:08080", BadPort),
            ("[::1]]:80", BadIpv6),
            ("[fe80::1%25eth0]:80", BadIpv6),
            ("[v1.x]", BadIpv6),
            ("[orders.local]", BadIpv6),
            ("[]", BadIpv6),
        ] {
            assert_eq!(authority(raw), Err(why), "{raw:?}");
        }
        assert_eq!(
            authority(&format!("{}.example", "a".repeat(MAX_AUTHORITY_BYTES))),
            Err(TooLong)
        );
    }

    #[test]
    fn host_patterns_use_the_same_rule() {
        let p = host_pattern("*.Orders.Example.:8443").expect("pattern");
        assert!(p.wildcard);
        assert_eq!(p.to_string(), "*.orders.example:8443");
        assert_eq!(
            host_pattern("[::1]:80").map(|p| p.to_string()).as_deref(),
            Ok("[::1]:80")
        );
        for bad in [
            "",
            "*",
            "*.",
            "a.*.b",
            "*bad*",
            "orders:",
            "orders:08443",
            "has space",
            "*.[::1]",
            "a..b",
        ] {
            assert!(host_pattern(bad).is_err(), "{bad}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Segments an attacker builds paths from: dot segments and their disguises, separators
        /// raw and encoded, parameters, escapes good and bad.
        fn segment() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "orders",
                "admin",
                "42",
                "price",
                "",
                ".",
                "..",
                "...",
                "%2e",
                "%2E%2e",
                ".%2e",
                "%2e.",
                "..;",
                "..;x=1",
                ".;",
                ";x",
                "x;y",
                "..%3b",
                "%2f",
                "%2F",
                "..%2f",
                "%5c",
                "\\",
                "%41",
                "%7e",
                "%25",
                "%252e",
                "%c0%ae",
                "%c3%a9",
                "é",
                "%20",
                "..%20",
                "a b",
                "%00",
                "%zz",
                "%",
                "*",
                "?q",
                "#f",
                "%3f",
                "%23",
                "orders;jsessionid=1",
                "%2e%2e%2f",
            ])
        }

        fn raw_path() -> impl Strategy<Value = String> {
            prop::collection::vec(segment(), 0..8).prop_map(|s| format!("/{}", s.join("/")))
        }

        /// What a lenient server may act on: percent-decoded once, `\\` as `/`, `;` parameters
        /// cut, then empty segments merged and dot segments resolved (`merge_first`) or resolved
        /// with the empty segments kept, then merged.
        fn lenient(raw: &str, merge_first: bool) -> String {
            let raw = path_only(raw);
            let mut bytes = Vec::new();
            let b = raw.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match (b[i], b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                    (b'%', Some(h), Some(l)) => {
                        bytes.push(h << 4 | l);
                        i += 3;
                    }
                    (c, _, _) => {
                        bytes.push(c);
                        i += 1;
                    }
                }
            }
            let decoded = String::from_utf8_lossy(&bytes).replace('\\', "/");
            let mut out: Vec<&str> = Vec::new();
            for s in decoded.split('/').skip(1) {
                let s = s.split(';').next().unwrap_or(s);
                match s {
                    "" if merge_first => {}
                    "." => {}
                    ".." => {
                        out.pop();
                    }
                    s => out.push(s),
                }
            }
            let joined: Vec<&str> = out.into_iter().filter(|s| !s.is_empty()).collect();
            format!("/{}", joined.join("/"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn paths_canonicalize_once(raw in raw_path()) {
                if let Ok(canonical) = path(&raw) {
                    prop_assert_eq!(path(&canonical), Ok(canonical.clone()));
                    prop_assert!(canonical.starts_with('/'));
                    prop_assert!(!canonical.split('/').any(|s| s == "." || s == ".."), "{}", canonical);
                    prop_assert!(!canonical.contains("//"), "{}", canonical);
                }
            }

            /// Nothing outside `/orders/` is allowed after canonicalization: whenever the canonical
            /// path is under `/orders/`, every lenient reading of the raw path is too.
            #[test]
            fn nothing_outside_a_rule_is_allowed(raw in raw_path()) {
                if let Ok(canonical) = path(&raw)
                    && canonical.starts_with("/orders/")
                {
                    for merge_first in [true, false] {
                        let read = lenient(&raw, merge_first);
                        prop_assert!(
                            read.starts_with("/orders/") || read == "/orders",
                            "{raw:?} is {canonical:?} to Baton but {read:?} to a server"
                        );
                    }
                }
            }

            #[test]
            fn any_text_is_refused_or_canonical(raw in ".{0,64}") {
                if let Ok(canonical) = path(&raw) {
                    prop_assert_eq!(path(&canonical), Ok(canonical.clone()));
                }
                if let Ok(a) = authority(&raw) {
                    prop_assert_eq!(authority(&a.to_string()), Ok(a));
                }
            }

            #[test]
            fn authorities_canonicalize_once(
                host in "[a-zA-Z0-9._-]{0,20}|\\[[0-9a-fA-F:.]{0,20}\\]",
                port in prop::option::of("[0-9a-z:]{0,7}"),
            ) {
                let raw = match port { Some(p) => format!("{host}:{p}"), None => host };
                if let Ok(a) = authority(&raw) {
                    let text = a.to_string();
                    prop_assert_eq!(authority(&text), Ok(a.clone()));
                    prop_assert_eq!(text.to_ascii_lowercase(), text.clone());
                    prop_assert!(!a.host().ends_with('.'));
                    if let Some(p) = a.port() {
                        prop_assert!(p >= 1);
                        let suffix = format!(":{p}");
                        prop_assert!(text.ends_with(&suffix));
                    }
                }
            }
        }
    }
}
