//! Where an outbound request goes: a destination name from Envoy's route (`context_extensions`), or
//! the request's authority matched against each destination's `hosts`. This module owns the lookup
//! table; it never guesses: an authority no pattern matches is `None`, and the caller applies the
//! configured `unknown_destination` action.

use std::collections::HashMap;
use std::sync::Arc;

use crate::canonical::{self, Authority};

/// The `context_extensions` key an Envoy route sets to name a destination.
pub const CONTEXT_KEY: &str = "baton.destination";

/// Destinations by name and by host pattern. `T` is whatever the caller attaches to a destination.
#[derive(Debug)]
pub struct Routes<T> {
    by_name: HashMap<String, Arc<T>>,
    /// The names of the destinations that claim at least one host.
    with_hosts: std::collections::HashSet<String>,
    /// By canonical host: the destination of `host` (any port), and of `host:port` by port. Two
    /// levels, so that a lookup allocates nothing.
    exact: HashMap<String, ExactHost<T>>,
    /// `*.example.com[:port]` as (".example.com", port), longest suffix first.
    wildcards: Vec<(String, Option<u16>, Arc<T>)>,
}

/// The destinations of one exact host name.
#[derive(Debug)]
struct ExactHost<T> {
    any_port: Option<Arc<T>>,
    ports: HashMap<u16, Arc<T>>,
}

impl<T> Default for ExactHost<T> {
    fn default() -> Self {
        Self {
            any_port: None,
            ports: HashMap::new(),
        }
    }
}

impl<T> Routes<T> {
    /// Build from (name, host patterns, value). Patterns were checked by config validation (with
    /// [`canonical::host_pattern`]); one that does not parse matches nothing.
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<String>, T)>) -> Self {
        let mut by_name = HashMap::new();
        let mut with_hosts = std::collections::HashSet::new();
        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        for (name, hosts, value) in entries {
            let value = Arc::new(value);
            if !hosts.is_empty() {
                with_hosts.insert(name.clone());
            }
            for pattern in hosts.iter().filter_map(|h| canonical::host_pattern(h).ok()) {
                if pattern.wildcard {
                    let suffix = format!(".{}", pattern.authority.host());
                    wildcards.push((suffix, pattern.authority.port(), value.clone()));
                } else {
                    let entry: &mut ExactHost<T> = exact.entry(pattern.authority.host().to_owned()).or_default();
                    match pattern.authority.port() {
                        Some(port) => {
                            entry.ports.insert(port, value.clone());
                        }
                        None => entry.any_port = Some(value.clone()),
                    }
                }
            }
            by_name.insert(name, value);
        }
        wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(b.1.is_some().cmp(&a.1.is_some())));
        Self {
            by_name,
            with_hosts,
            exact,
            wildcards,
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<T>> {
        self.by_name.get(name)
    }

    /// Whether the destination `name` claims hosts: a route naming it must then agree with them.
    pub fn claims_hosts(&self, name: &str) -> bool {
        self.with_hosts.contains(name)
    }

    /// Match a canonical authority ([`canonical::authority`]): an exact `host:port` pattern first,
    /// then an exact `host`, then the longest `*.` suffix (with its port, if it names one).
    pub fn by_authority(&self, authority: &Authority) -> Option<&Arc<T>> {
        self.lookup(authority).map(|(value, _)| value)
    }

    /// Like `by_authority`, also naming the pattern that matched (for `baton explain`).
    pub fn lookup(&self, authority: &Authority) -> Option<(&Arc<T>, HostMatch<'_>)> {
        let host = authority.host();
        let port = authority.port();
        if let Some((exact_host, exact)) = self.exact.get_key_value(host) {
            if let Some(v) = port.and_then(|p| exact.ports.get(&p)) {
                return Some((v, HostMatch::exact(exact_host, port)));
            }
            if let Some(v) = exact.any_port.as_ref() {
                return Some((v, HostMatch::exact(exact_host, None)));
            }
        }
        self.wildcards
            .iter()
            .find(|(suffix, want_port, _)| {
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && want_port.is_none_or(|p| Some(p) == port)
            })
            .map(|(suffix, want_port, v)| {
                (
                    v,
                    HostMatch {
                        host: suffix,
                        wildcard: true,
                        port: *want_port,
                    },
                )
            })
    }
}

/// The host pattern an authority matched, as the configuration's canonical form writes it
/// (`orders.example`, `orders:9000`, `*.billing.example`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMatch<'a> {
    /// The host, or for a wildcard the suffix after `*` (starting with `.`).
    host: &'a str,
    wildcard: bool,
    port: Option<u16>,
}

impl<'a> HostMatch<'a> {
    fn exact(host: &'a str, port: Option<u16>) -> Self {
        Self {
            host,
            wildcard: false,
            port,
        }
    }
}

impl std::fmt::Display for HostMatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            f.write_str("*")?;
        }
        f.write_str(self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
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
        let authority = canonical::authority(authority).ok()?;
        routes().by_authority(&authority).map(|v| **v)
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
        assert_eq!(find("[0::1]:8080"), Some("v6"), "one form of an IPv6 address");
        assert_eq!(find("[::1]:9090"), None);
    }

    #[test]
    fn the_port_and_the_trailing_dot_have_one_form() {
        // `orders:9000` belongs to `admin`: no other spelling of it may reach `orders`.
        assert_eq!(find("orders.:9000"), Some("admin"));
        assert_eq!(find("ORDERS:9000"), Some("admin"));
        for malformed in [
            "orders:09000",
            "orders:009000",
            "orders..:9000",
            "orders:9000.evil",
            "orders:abc",
        ] {
            assert_eq!(find(malformed), None, "{malformed}");
        }
    }

    #[test]
    fn a_match_names_its_pattern() {
        let pattern = |authority: &str| {
            let authority = canonical::authority(authority).expect("canonical");
            routes().lookup(&authority).map(|(_, m)| m.to_string())
        };
        assert_eq!(pattern("ORDERS:8080").as_deref(), Some("orders"));
        assert_eq!(pattern("orders:9000").as_deref(), Some("orders:9000"));
        assert_eq!(pattern("a.b.example.com").as_deref(), Some("*.example.com"));
        assert_eq!(pattern("a.svc.local:8443").as_deref(), Some("*.svc.local:8443"));
        assert_eq!(pattern("nowhere"), None);
    }

    #[test]
    fn names_come_from_the_route() {
        assert_eq!(routes().by_name("admin").map(|v| **v), Some("admin"));
        assert!(routes().by_name("nope").is_none());
    }
}
