//! Where an outbound request goes: a destination name from Envoy's route (`context_extensions`), or
//! the request's authority matched against each destination's `hosts`. This module owns the lookup
//! table; it never guesses: an authority no pattern matches is `None`, and the caller applies the
//! configured `unknown_destination` action.

use std::collections::HashMap;
use std::sync::Arc;

/// The `context_extensions` key an Envoy route sets to name a destination.
pub const CONTEXT_KEY: &str = "baton.destination";

/// Destinations by name and by host pattern. `T` is whatever the caller attaches to a destination.
#[derive(Debug)]
pub struct Routes<T> {
    by_name: HashMap<String, Arc<T>>,
    /// `host` (any port) and `host:port` (that port only), lower-case.
    exact: HashMap<String, Arc<T>>,
    /// `*.example.com[:port]` as (".example.com", port), longest suffix first.
    wildcards: Vec<(String, Option<u16>, Arc<T>)>,
}

impl<T> Routes<T> {
    /// Build from (name, host patterns, value). Patterns were checked by config validation.
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<String>, T)>) -> Self {
        let mut by_name = HashMap::new();
        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        for (name, hosts, value) in entries {
            let value = Arc::new(value);
            for host in hosts {
                let host = host.to_ascii_lowercase();
                if let Some(rest) = host.strip_prefix('*') {
                    let (suffix, port) = split_port(rest);
                    wildcards.push((suffix.to_owned(), port, value.clone()));
                } else {
                    exact.insert(host, value.clone());
                }
            }
            by_name.insert(name, value);
        }
        wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(b.1.is_some().cmp(&a.1.is_some())));
        Self {
            by_name,
            exact,
            wildcards,
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<T>> {
        self.by_name.get(name)
    }

    /// Match an HTTP authority (`host`, `host:port`, `[v6]:port`), case-insensitively: an exact
    /// `host:port` pattern first, then an exact `host`, then the longest `*.` suffix.
    pub fn by_authority(&self, authority: &str) -> Option<&Arc<T>> {
        // Authorities are almost always lower-case already: avoid the allocation then.
        let lowered;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = authority.to_ascii_lowercase();
            lowered.as_str()
        } else {
            authority
        };
        let (host, port) = split_port(authority);
        // A fully qualified name (`orders.example.`) is the same host.
        let host = host.strip_suffix('.').unwrap_or(host);
        if port.is_some()
            && let Some(v) = self.exact.get(authority)
        {
            return Some(v);
        }
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.wildcards
            .iter()
            .find(|(suffix, want_port, _)| {
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && want_port.is_none_or(|p| Some(p) == port)
            })
            .map(|(_, _, v)| v)
    }
}

/// `host:port` -> (host, Some(port)); `[::1]:80` -> ("[::1]", Some(80)); a bad port is part of the host
/// (so it matches nothing).
pub(crate) fn split_port(authority: &str) -> (&str, Option<u16>) {
    let colon = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return (authority, None),
    };
    // A bare IPv6 address without brackets has several colons and no port.
    if !authority.starts_with('[') && authority[..colon].contains(':') {
        return (authority, None);
    }
    match authority[colon + 1..].parse() {
        Ok(port) => (&authority[..colon], Some(port)),
        Err(_) => (authority, None),
    }
}

/// Why a host pattern from the configuration cannot be used, if it cannot.
pub fn check_host_pattern(pattern: &str) -> Result<(), &'static str> {
    let rest = pattern.strip_prefix("*.").unwrap_or(pattern);
    let (host, _) = split_port(rest);
    if host.is_empty() {
        return Err("is empty");
    }
    if host.contains('*') {
        return Err("may only use `*.` at the start");
    }
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':');
    if !host.bytes().all(valid) {
        return Err("is not a host name, `host:port` or `*.suffix`");
    }
    if rest.ends_with(':') {
        return Err("has an empty port");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes<&'static str> {
        Routes::new([
            (
                "orders".to_owned(),
                vec!["orders".into(), "orders.default.svc.cluster.local".into()],
                "orders",
            ),
            ("admin".to_owned(), vec!["orders:9000".into()], "admin"),
            ("wild".to_owned(), vec!["*.example.com".into()], "wild"),
            ("deeper".to_owned(), vec!["*.api.example.com".into()], "deeper"),
            ("ported".to_owned(), vec!["*.svc.local:8443".into()], "ported"),
            ("v6".to_owned(), vec!["[::1]:8080".into()], "v6"),
        ])
    }

    fn find(authority: &str) -> Option<&'static str> {
        routes().by_authority(authority).map(|v| **v)
    }

    #[test]
    fn exact_hosts_match_with_or_without_a_port() {
        assert_eq!(find("orders"), Some("orders"));
        assert_eq!(find("orders:8080"), Some("orders"));
        assert_eq!(find("ORDERS.default.svc.cluster.local"), Some("orders"));
        assert_eq!(find("orders.default"), None);
        assert_eq!(
            find("orders.default.svc.cluster.local.:80"),
            Some("orders"),
            "a trailing dot is the same host"
        );
    }

    #[test]
    fn a_port_specific_pattern_wins_over_the_bare_host() {
        assert_eq!(find("orders:9000"), Some("admin"));
    }

    #[test]
    fn wildcards_match_subdomains_only_and_the_longest_suffix_wins() {
        assert_eq!(find("a.example.com"), Some("wild"));
        assert_eq!(find("a.b.example.com:443"), Some("wild"));
        assert_eq!(find("x.api.example.com"), Some("deeper"));
        assert_eq!(find("example.com"), None, "`*.` needs a label in front");
        assert_eq!(find("evilexample.com"), None);
        assert_eq!(find("a.svc.local:8443"), Some("ported"));
        assert_eq!(find("a.svc.local:80"), None);
    }

    #[test]
    fn ipv6_authorities_split_at_the_bracket() {
        assert_eq!(find("[::1]:8080"), Some("v6"));
        assert_eq!(find("[::1]:9090"), None);
        assert_eq!(split_port("::1"), ("::1", None));
    }

    #[test]
    fn names_come_from_the_route() {
        assert_eq!(routes().by_name("admin").map(|v| **v), Some("admin"));
        assert!(routes().by_name("nope").is_none());
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(check_host_pattern("orders").is_ok());
        assert!(check_host_pattern("*.orders.example:8443").is_ok());
        assert!(check_host_pattern("*bad*").is_err());
        assert!(check_host_pattern("a.*.b").is_err());
        assert!(check_host_pattern("").is_err());
        assert!(check_host_pattern("orders:").is_err());
        assert!(check_host_pattern("has space").is_err());
    }
}
