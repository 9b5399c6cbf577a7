//! The OpenID Shared Signals Framework 1.0 receiver: the `ssf:` section (which transmitter, Baton's
//! stream audience, push and poll delivery) and its validation; `receiver` verifies Security Event
//! Tokens (RFC 8417) and maps their CAEP and RISC events to revocation `Selector`s; `poll` runs the
//! RFC 8936 poll loop and creates the stream through the transmitter's stream-management API. The
//! push endpoint (RFC 8935) is served by `baton_envoy::ssf`.
//!
//! It purges nothing itself (its caller hands each selector to `authz::Authz::revoke`), and never
//! logs, traces or audits a SET or a bearer secret: a SET is named by its `jti` at most.

pub mod poll;
pub mod receiver;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::files::read_secret;
use crate::secret::Secret;
use crate::verify::{IssuerConfig, RawIssuer};
use baton_decide::settings::{Errors, duration, http_url};

pub use receiver::Receiver;

// === The `ssf:` section ===

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    /// The transmitter's issuer: every SET's `iss`, and where `/.well-known/ssf-configuration` is.
    pub issuer: String,
    /// Its keys; default: the `jwks_uri` of its SSF configuration.
    pub jwks_uri: Option<String>,
    /// Baton's stream audience: every SET's `aud` must name it.
    pub audience: String,
    /// Default: every asymmetric algorithm. HMAC and `none` are never accepted.
    pub algorithms: Vec<String>,
    /// The oldest `iat` accepted (default 5m); also how long a `jti` is remembered.
    pub max_age: Option<String>,
    /// How far in the future an `iat` may be (clock skew, default 30s).
    pub leeway: Option<String>,
    /// How many `jti`s are remembered at most (default 100000); past it, SETs wait (503, not acked).
    pub max_jtis: Option<usize>,
    /// Push delivery (RFC 8935) to `POST /ssf/push` on the admin listener.
    pub push: Option<RawPush>,
    /// Poll delivery (RFC 8936).
    pub poll: Option<RawPoll>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPush {
    /// A file holding the bearer secret the transmitter presents (`Authorization: Bearer`).
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPoll {
    /// A stream configured at the transmitter (static): its poll URL. Absent: Baton creates a poll
    /// stream through the SSF configuration's `configuration_endpoint` when it starts.
    pub endpoint: Option<String>,
    /// A file holding the bearer secret Baton presents to the transmitter (poll, stream creation).
    pub secret_file: Option<PathBuf>,
    /// Pause between two polls that returned nothing more (default 5s).
    pub interval: Option<String>,
    /// `maxEvents` of each poll (default 100, at most 1000).
    pub max_events: Option<usize>,
    /// `returnImmediately` (default true; false: the transmitter may hold the request, long poll).
    pub return_immediately: Option<bool>,
    /// The longest one poll request may take (default 30s).
    pub timeout: Option<String>,
    /// The longest pause after failures (default 60s; failures double the pause from `interval`).
    pub max_backoff: Option<String>,
}

/// The validated `ssf:` section.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The transmitter as a signer: issuer, keys (`jwks_uri`), algorithms, leeway, key refresh.
    pub issuer: String,
    pub jwks_uri: Option<Url>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub audience: String,
    pub max_age: Duration,
    pub max_jtis: usize,
    /// `None`: no push endpoint (404).
    pub push_secret: Option<Secret>,
    pub poll: Option<PollSettings>,
    /// Whether subject tokens' claims are verified (`trusted_issuers` or introspection): an `email`
    /// subject is matched against the verified `email` claim, so without them it is refused
    /// (`unsupported_subject`) rather than remembered and never matched.
    pub emails: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSettings {
    /// `None`: created through the transmitter's stream-management API.
    pub endpoint: Option<Url>,
    pub secret: Option<Secret>,
    pub interval: Duration,
    pub max_events: usize,
    pub return_immediately: bool,
    pub timeout: Duration,
    pub max_backoff: Duration,
}

const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
const DEFAULT_MAX_JTIS: usize = 100_000;
const MAX_MAX_JTIS: usize = 10_000_000;
const MAX_MAX_EVENTS: usize = 1000;

impl Raw {
    /// The `ssf:` section, its problems added to `errors`; `None` when it is unusable.
    pub fn validate(self, errors: &mut Errors) -> Option<Settings> {
        let before = errors.0.len();
        if self.audience.is_empty() {
            errors.add("ssf.audience", "name Baton's stream audience (every SET's `aud`)");
        }
        if !self.issuer.is_empty() && Url::parse(&self.issuer).is_err() {
            errors.add(
                "ssf.issuer",
                "must be the transmitter's issuer URL (its SSF configuration is found from it)",
            );
        }
        // The transmitter's keys are checked as a trusted issuer's are, by the same rules.
        let issuer = RawIssuer {
            issuer: self.issuer,
            jwks_uri: self.jwks_uri,
            audiences: vec![self.audience.clone()],
            algorithms: self.algorithms,
            leeway: self.leeway,
            jwks_refresh: None,
            jwks_min_refetch: None,
        }
        .validate("ssf", errors);
        let max_age = duration(self.max_age.as_deref(), "ssf.max_age", DEFAULT_MAX_AGE, errors);
        if max_age < Duration::from_secs(1) {
            errors.add("ssf.max_age", "must be at least 1s");
        }
        let max_jtis = self.max_jtis.unwrap_or(DEFAULT_MAX_JTIS);
        if max_jtis == 0 || max_jtis > MAX_MAX_JTIS {
            errors.add("ssf.max_jtis", format!("must be between 1 and {MAX_MAX_JTIS}"));
        }
        let push_secret = self.push.and_then(|push| match push.secret_file {
            Some(path) => read_secret(&path, "ssf.push.secret_file", errors),
            None => {
                errors.add(
                    "ssf.push.secret_file",
                    "push needs the transmitter's bearer secret: the endpoint is never open",
                );
                None
            }
        });
        let poll = self.poll.map(|p| p.validate(errors));
        if push_secret.is_none() && poll.is_none() && errors.0.len() == before {
            errors.add("ssf", "configure `push`, `poll` or both: how the SETs arrive");
        }
        let issuer: IssuerConfig = issuer?;
        (errors.0.len() == before).then(|| Settings {
            issuer: issuer.issuer,
            jwks_uri: issuer.jwks_uri,
            algorithms: issuer.algorithms,
            leeway: issuer.leeway,
            audience: self.audience,
            max_age,
            max_jtis,
            push_secret,
            poll: poll.flatten(),
            emails: true,
        })
    }
}

impl RawPoll {
    fn validate(self, errors: &mut Errors) -> Option<PollSettings> {
        let before = errors.0.len();
        let endpoint = self
            .endpoint
            .as_deref()
            .and_then(|e| http_url(e, "ssf.poll.endpoint", errors));
        let secret = self
            .secret_file
            .as_deref()
            .and_then(|path| read_secret(path, "ssf.poll.secret_file", errors));
        let interval = duration(
            self.interval.as_deref(),
            "ssf.poll.interval",
            Duration::from_secs(5),
            errors,
        );
        // A poll loop with no pause would be a flood on the transmitter.
        if interval < Duration::from_millis(100) {
            errors.add("ssf.poll.interval", "must be at least 100ms");
        }
        let max_events = self.max_events.unwrap_or(100);
        if max_events == 0 || max_events > MAX_MAX_EVENTS {
            errors.add("ssf.poll.max_events", format!("must be between 1 and {MAX_MAX_EVENTS}"));
        }
        let timeout = duration(
            self.timeout.as_deref(),
            "ssf.poll.timeout",
            Duration::from_secs(30),
            errors,
        );
        if timeout < Duration::from_secs(1) {
            errors.add("ssf.poll.timeout", "must be at least 1s");
        }
        let max_backoff = duration(
            self.max_backoff.as_deref(),
            "ssf.poll.max_backoff",
            Duration::from_secs(60),
            errors,
        );
        if max_backoff < interval {
            errors.add("ssf.poll.max_backoff", "must be at least `interval`");
        }
        (errors.0.len() == before).then_some(PollSettings {
            endpoint,
            secret,
            interval,
            max_events,
            return_immediately: self.return_immediately.unwrap_or(true),
            timeout,
            max_backoff,
        })
    }
}

impl Settings {
    /// Set by the configuration, which knows whether claims are verified.
    pub fn matching_emails(mut self, verified: bool) -> Self {
        self.emails = verified;
        self
    }

    /// The transmitter as a signer, for `verify::KeySource`.
    pub(crate) fn signer(&self) -> IssuerConfig {
        IssuerConfig {
            issuer: self.issuer.clone(),
            jwks_uri: self.jwks_uri.clone(),
            audiences: vec![self.audience.clone()],
            algorithms: self.algorithms.clone(),
            leeway: self.leeway,
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(10),
        }
    }
}

/// The SSF configuration's URL (SSF 1.0 section 7.1): the well-known segment goes before the
/// issuer's path, as in RFC 8414.
pub fn configuration_url(issuer: &Url) -> Url {
    let path = issuer.path().trim_end_matches('/');
    let mut url = issuer.clone();
    url.set_path(&format!("/.well-known/ssf-configuration{path}"));
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> (Option<Settings>, Vec<String>) {
        let raw: Raw = crate::files::parse_yaml(yaml).expect("yaml");
        let mut errors = Errors::default();
        let settings = raw.validate(&mut errors);
        (settings, errors.0.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn a_poll_stream_created_by_baton_needs_only_issuer_and_audience() {
        let (settings, errors) =
            validate("issuer: https://tx.example\naudience: https://baton.example/ssf\npoll: {}\n");
        assert!(errors.is_empty(), "{errors:?}");
        let settings = settings.expect("valid");
        let poll = settings.poll.expect("poll");
        assert_eq!(poll.endpoint, None);
        assert_eq!(poll.interval, Duration::from_secs(5));
        assert_eq!(poll.max_events, 100);
        assert!(poll.return_immediately);
        assert_eq!(settings.max_age, DEFAULT_MAX_AGE);
        assert!(settings.push_secret.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let (settings, errors) = validate(
            "issuer: not a url\naudience: ''\nalgorithms: [HS256]\nmax_age: 0s\nmax_jtis: 0\npush: {}\n\
             poll:\n  interval: 10ms\n  max_events: 5000\n  timeout: 0s\n  endpoint: ftp://x\n",
        );
        assert!(settings.is_none());
        for path in [
            "ssf.audience",
            "ssf.issuer",
            "ssf.algorithms[0]",
            "ssf.max_age",
            "ssf.max_jtis",
            "ssf.push.secret_file",
            "ssf.poll.endpoint",
            "ssf.poll.interval",
            "ssf.poll.max_events",
            "ssf.poll.timeout",
        ] {
            assert!(errors.iter().any(|e| e == path), "no {path} in {errors:?}");
        }
        let (_, errors) = validate("issuer: https://tx.example\naudience: a\n");
        assert_eq!(errors, ["ssf"], "neither push nor poll");
    }

    #[test]
    fn the_configuration_is_found_before_the_issuer_s_path() {
        let url = |s: &str| configuration_url(&Url::parse(s).expect("url")).to_string();
        assert_eq!(
            url("https://tx.example"),
            "https://tx.example/.well-known/ssf-configuration"
        );
        assert_eq!(
            url("https://tx.example/tenant/"),
            "https://tx.example/.well-known/ssf-configuration/tenant"
        );
    }
}
