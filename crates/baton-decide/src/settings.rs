//! The helpers every configuration section validates with: the error collector (`Errors`, so every
//! problem is reported at once, each at the path of its field), durations, URLs, scope tokens and
//! loopback addresses. Pure: it never reads a file, the environment or the network, and imports
//! nothing from the rest of Baton (it sits at the bottom, under every section's owner).

use std::fmt;
use std::time::Duration;

use url::Url;

/// One problem, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Everything wrong with a configuration file.
#[derive(Debug)]
pub struct ConfigError(pub Vec<FieldError>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} configuration error{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Problems collected while validating, so all are reported at once.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// `500ms`, `2s`, `1m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| format!("`{text}` is not a duration like 500ms, 2s or 1m"))
}

/// An optional duration field: `None` when it is absent, or bad (reported at `field`).
pub fn optional_duration(text: Option<&str>, field: &str, errors: &mut Errors) -> Option<Duration> {
    match parse_duration(text?) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.add(field, e);
            None
        }
    }
}

/// A duration field with a default, which also stands in for a bad value (reported at `field`).
pub fn duration(text: Option<&str>, field: &str, default: Duration, errors: &mut Errors) -> Duration {
    optional_duration(text, field, errors).unwrap_or(default)
}

/// An `http` or `https` URL with a host; anything else is reported at `field`.
pub fn http_url(text: &str, field: &str, errors: &mut Errors) -> Option<Url> {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        _ => {
            errors.add(field, format!("`{text}` is not an http(s) URL"));
            None
        }
    }
}

/// RFC 6749 3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Loopback is 127.0.0.0/8 and ::1 only (not `0.0.0.0`, not an IPv4-mapped address).
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_usual_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2 parsecs").is_err());
    }
}
