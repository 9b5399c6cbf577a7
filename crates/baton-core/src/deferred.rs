//! Deferred jobs (issue 14 §4), what they are made of: the `deferred:` section, the binding a job
//! grant carries and its wire form (scope values `baton:job:<id>`, `baton:dest:<name>`,
//! `baton:max_age:<secs>`, `baton:sid:<sid>`, `baton:iss:<user's issuer>`), and the rule that a
//! grant is never an ordinary subject token. The two steps, Defer and Redeem, are `jobs`'s.
//!
//! Baton keeps NO user credential for a job: not the user's token, not the grant, not the tokens
//! Redeem obtains. This module never holds a token at all; it reads claims.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::decision::Destination;
use crate::exchange::{Target, TokenServices};
use crate::jwt;
use crate::verify::IssuerConfig;
use baton_decide::policy::Policy;
use baton_decide::reason::{Denial, Reason};
use baton_decide::settings::{Errors, duration, http_url};

// === The `deferred:` section ===

/// `deferred:`: off (every Defer and Redeem refused, `deferred_disabled`) without it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    /// The audience of every job grant: Baton's own, one no destination and no user token carries.
    pub audience: Option<String>,
    /// The issuer of grants (the token service's), one of `trusted_issuers` whose `audiences`
    /// include `audience`: Redeem verifies a grant with its keys.
    pub grant_issuer: Option<String>,
    /// The token service that issues grants (default `default`).
    pub token_service: Option<String>,
    /// The longest `max_age` a job may ask for (default 24h); at most `revocation.remember`, so a
    /// revocation is remembered for as long as a grant lives.
    pub max_age: Option<String>,
    /// The longest job id, in bytes (default 128, at most 200).
    pub max_job_id_bytes: Option<usize>,
    /// The most destinations one job may name (default 8, at most 64).
    pub max_destinations: Option<usize>,
    /// Bind each grant to the broker caller that deferred it (`baton:caller:<its sub or identity>`):
    /// only that caller may redeem it (default false: a queue's worker is often another workload).
    pub bind_caller: Option<bool>,
    /// The token service's RFC 7662 introspection endpoint: Redeem asks it whether the grant is
    /// still active (a user disabled or logged out there, a grant revoked there, whether or not a
    /// signal reached Baton) and refuses `grant_inactive` when not; an error or no answer within
    /// the token service's `timeout` refuses `grant_introspection_failed` (held back by its
    /// breaker, pause or in-flight bound: the exchange's `token_service_circuit_open` or `_busy`). Opaque grants (a token
    /// service that issues them so) are read from its answer; they need this. Default: none.
    pub introspection_endpoint: Option<String>,
}

/// The validated `deferred:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub audience: String,
    pub grant_issuer: String,
    pub token_service: String,
    pub max_age: Duration,
    pub max_job_id_bytes: usize,
    pub max_destinations: usize,
    pub bind_caller: bool,
    pub introspection_endpoint: Option<url::Url>,
}

const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_MAX_JOB_ID_BYTES: usize = 128;
/// A job id is one scope value (`baton:job:<id>`) and one audit field: kept well under a claim's
/// 256 bytes.
const MAX_MAX_JOB_ID_BYTES: usize = 200;
const DEFAULT_MAX_DESTINATIONS: usize = 8;
const MAX_MAX_DESTINATIONS: usize = 64;

/// What the `deferred:` section is checked against in the other sections.
#[derive(Debug)]
pub(crate) struct Around<'a> {
    pub trusted_issuers: &'a [IssuerConfig],
    pub token_services: &'a crate::token_service::Checked,
    pub broker: Option<&'a crate::callers::Settings>,
    pub remember: Duration,
    pub destinations: &'a [crate::destination::Settings],
    pub opaque_tokens: crate::verify::OpaqueTokens,
}

impl Raw {
    /// The `deferred:` section, every problem added to `errors`.
    pub(crate) fn validate(self, around: &Around<'_>, errors: &mut Errors) -> Settings {
        let audience = self.audience.unwrap_or_default();
        if audience.is_empty() {
            errors.add(
                "deferred.audience",
                "is required: the audience of job grants, Baton's own",
            );
        }
        let grant_issuer = self.grant_issuer.unwrap_or_default();
        match around.trusted_issuers.iter().find(|i| i.issuer == grant_issuer) {
            _ if grant_issuer.is_empty() => errors.add(
                "deferred.grant_issuer",
                "is required: the issuer of job grants (the token service's), one of trusted_issuers",
            ),
            None => errors.add(
                "deferred.grant_issuer",
                format!("`{grant_issuer}` must be one of trusted_issuers[].issuer, or no grant verifies"),
            ),
            Some(issuer) if !audience.is_empty() && !issuer.audiences.contains(&audience) => errors.add(
                "deferred.audience",
                format!(
                    "`{audience}` must be in the audiences of trusted issuer `{grant_issuer}`, or no grant verifies"
                ),
            ),
            Some(_) => {}
        }
        if let Some(caller_audience) = around.broker.and_then(|b| b.rule.audience.as_deref())
            && caller_audience == audience
        {
            errors.add(
                "deferred.audience",
                "must differ from broker.caller_audience: a grant must never pass for a caller's token",
            );
        }
        // A token Baton obtains for a destination must never read as a job grant, nor the reverse.
        if let Some(d) = around.destinations.iter().find(|d| {
            [&d.audience, &d.resource]
                .iter()
                .any(|a| a.as_deref() == Some(audience.as_str()))
        }) {
            errors.add(
                "deferred.audience",
                format!(
                    "must differ from the audience and resource of every destination (`{}` has it)",
                    d.name
                ),
            );
        }
        if around.broker.is_none() {
            errors.add(
                "deferred",
                "Defer and Redeem are broker calls: configure a `broker:` section (who may call them)",
            );
        }
        let token_service = self
            .token_service
            .unwrap_or_else(|| crate::token_service::DEFAULT_TOKEN_SERVICE.to_owned());
        let services = around.token_services;
        if !services.is_empty() && services.get(&token_service).is_none() {
            errors.add(
                "deferred.token_service",
                format!(
                    "`{token_service}` is not a configured token service (there are: {})",
                    services.names()
                ),
            );
        }
        let max_age = duration(self.max_age.as_deref(), "deferred.max_age", DEFAULT_MAX_AGE, errors);
        if max_age.is_zero() {
            errors.add("deferred.max_age", "must be longer than 0s");
        } else if max_age > around.remember {
            errors.add(
                "deferred.max_age",
                "must not be longer than revocation.remember: a revoked job or user would be forgotten while its grant still lives",
            );
        }
        let max_job_id_bytes = self.max_job_id_bytes.unwrap_or(DEFAULT_MAX_JOB_ID_BYTES);
        if max_job_id_bytes == 0 || max_job_id_bytes > MAX_MAX_JOB_ID_BYTES {
            errors.add(
                "deferred.max_job_id_bytes",
                format!("must be between 1 and {MAX_MAX_JOB_ID_BYTES}"),
            );
        }
        let max_destinations = self.max_destinations.unwrap_or(DEFAULT_MAX_DESTINATIONS);
        if max_destinations == 0 || max_destinations > MAX_MAX_DESTINATIONS {
            errors.add(
                "deferred.max_destinations",
                format!("must be between 1 and {MAX_MAX_DESTINATIONS}"),
            );
        }
        let bind_caller = self.bind_caller.unwrap_or(false);
        if bind_caller
            && around
                .broker
                .is_some_and(|b| b.callers == crate::callers::BrokerCallers::Any)
        {
            errors.add(
                "deferred.bind_caller",
                "binds a grant to its caller's identity, and `broker.callers: any` identifies no caller",
            );
        }
        let introspection_endpoint = self
            .introspection_endpoint
            .as_deref()
            .and_then(|text| http_url(text, "deferred.introspection_endpoint", errors));
        // An opaque grant is told from a user's token only by introspecting it: forwarded unread
        // through Envoy or Exchange, it would skip Redeem's checks.
        if introspection_endpoint.is_some() && around.opaque_tokens == crate::verify::OpaqueTokens::Forward {
            errors.add(
                "deferred.introspection_endpoint",
                "allows opaque grants, which `opaque_tokens: forward` would pass unread as subject tokens (use reject or introspect)",
            );
        }
        Settings {
            audience,
            grant_issuer,
            token_service,
            max_age,
            max_job_id_bytes,
            max_destinations,
            bind_caller,
            introspection_endpoint,
        }
    }
}

// === The binding a grant carries ===

const JOB: &str = "baton:job:";
const DEST: &str = "baton:dest:";
const MAX_AGE: &str = "baton:max_age:";
const SID: &str = "baton:sid:";
const ISS: &str = "baton:iss:";
const CALLER: &str = "baton:caller:";

/// What a grant is bound to, as its scope values say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub job: String,
    /// In the order asked, once each.
    pub destinations: Vec<String>,
    pub max_age: u64,
    /// The user's session, when their token named one.
    pub sid: Option<String>,
    /// The user's token's issuer (a revocation of `issuer` + `sub` names the user by it).
    pub iss: Option<String>,
    /// The only broker caller that may redeem it (`deferred.bind_caller`).
    pub caller: Option<String>,
}

/// A job id or a destination name: 1 to `max` bytes of `[A-Za-z0-9._-]`, so it is one scope value
/// and one audit field, with nothing to escape or to split.
pub(crate) fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A claim value that can ride in one scope value (RFC 6749 3.3 scope-token, not empty, at most
/// 256 bytes): printable ASCII but space, `"` and `\`.
pub(crate) fn is_scope_token(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= jwt::MAX_CLAIM_LEN
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

impl Binding {
    /// The scope values that carry it, space-separated.
    pub fn scope(&self) -> String {
        let mut values = vec![format!("{JOB}{}", self.job)];
        values.extend(self.destinations.iter().map(|d| format!("{DEST}{d}")));
        values.push(format!("{MAX_AGE}{}", self.max_age));
        if let Some(sid) = &self.sid {
            values.push(format!("{SID}{sid}"));
        }
        if let Some(iss) = &self.iss {
            values.push(format!("{ISS}{iss}"));
        }
        if let Some(caller) = &self.caller {
            values.push(format!("{CALLER}{caller}"));
        }
        values.join(" ")
    }

    /// Read back from a grant's scope (a string, or a list of strings): exactly one job, one or more
    /// distinct destinations, one max age, at most one session and one issuer, nothing else. `None`
    /// when it is not that.
    pub fn parse(scope: Option<&Value>, settings: &Settings) -> Option<Self> {
        let values: Vec<&str> = match scope? {
            Value::String(s) => s.split(' ').filter(|v| !v.is_empty()).collect(),
            Value::Array(list) => list.iter().map(Value::as_str).collect::<Option<_>>()?,
            _ => return None,
        };
        let (mut job, mut max_age, mut sid, mut iss, mut caller) = (None, None, None, None, None);
        let mut destinations: Vec<String> = Vec::new();
        let once = |slot: &mut Option<String>, value: &str| slot.replace(value.to_owned()).is_none();
        for value in values {
            let ok = if let Some(v) = value.strip_prefix(JOB) {
                is_name(v, settings.max_job_id_bytes) && once(&mut job, v)
            } else if let Some(v) = value.strip_prefix(DEST) {
                let fresh = !destinations.iter().any(|d| d == v);
                destinations.push(v.to_owned());
                is_name(v, jwt::MAX_CLAIM_LEN) && fresh && destinations.len() <= settings.max_destinations
            } else if let Some(v) = value.strip_prefix(MAX_AGE) {
                // Digits only: no sign, no exponent, no leading zero.
                let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
                digits && v.parse::<u64>().is_ok_and(|secs| secs <= settings.max_age.as_secs()) && once(&mut max_age, v)
            } else if let Some(v) = value.strip_prefix(SID) {
                is_scope_token(v) && once(&mut sid, v)
            } else if let Some(v) = value.strip_prefix(ISS) {
                is_scope_token(v) && once(&mut iss, v)
            } else if let Some(v) = value.strip_prefix(CALLER) {
                is_scope_token(v) && once(&mut caller, v)
            } else {
                false
            };
            if !ok {
                return None;
            }
        }
        if destinations.is_empty() {
            return None;
        }
        Some(Self {
            job: job?,
            destinations,
            max_age: max_age?.parse().ok()?,
            sid,
            iss,
            caller,
        })
    }
}

// === The running part ===

/// The `deferred:` section with the route grants are asked for on.
#[derive(Debug)]
pub struct Deferred {
    pub settings: Settings,
    /// Audience `settings.audience`, the grant token service, no policy and no actor token (the
    /// grant is Baton's to redeem; the destination's exchange at Redeem carries the actor).
    pub(crate) route: Arc<Destination>,
}

/// The destination name a Defer decision is reported under (metrics, audit, spans); a configured
/// destination cannot be named so.
pub const JOB_DESTINATION: &str = "baton:job";

impl Deferred {
    /// `None` when the grant token service is missing (configuration validation reports that).
    pub(crate) fn new(settings: Settings, services: &TokenServices, subject_token_type: &'static str) -> Option<Self> {
        let token_service = services.get(&settings.token_service)?.clone();
        let target = Target {
            audience: Some(settings.audience.clone()),
            resource: None,
            scope: None,
            requested_token_type: None,
            subject_token_type,
            actor: None,
        };
        let route = Destination::new(
            Arc::from(JOB_DESTINATION),
            target,
            Vec::new(),
            Arc::new(Policy::default()),
            false,
            token_service,
        );
        Some(Self {
            settings,
            route: Arc::new(route),
        })
    }

    /// The route a Defer decision is reported under.
    pub fn route(&self) -> &Arc<Destination> {
        &self.route
    }

    /// Is a verified token with `claims` a job grant (its `aud` names the job audience)? Such a
    /// token is usable by Redeem only.
    pub fn is_grant(&self, claims: &Map<String, Value>) -> bool {
        match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.settings.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&self.settings.audience)),
            _ => false,
        }
    }
}

pub(crate) fn grant_as_subject_token() -> Denial {
    Denial::new(
        Reason::GrantAsSubjectToken,
        "this token is a deferred job's grant: only Redeem accepts it",
    )
}

/// Refused with `grant_as_subject_token` when verified `claims` are a job grant's (the Envoy
/// path and the broker's Exchange call it on every verified subject).
pub(crate) fn not_a_grant(deferred: Option<&Deferred>, claims: &Map<String, Value>) -> Result<(), Denial> {
    match deferred {
        Some(d) if d.is_grant(claims) => Err(grant_as_subject_token()),
        _ => Ok(()),
    }
}

/// The `deferred::Settings` and `Binding` the unit tests of this module and of `jobs` share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn settings() -> Settings {
        Settings {
            audience: "baton-jobs".into(),
            grant_issuer: "https://sts".into(),
            token_service: "default".into(),
            max_age: Duration::from_secs(3600),
            max_job_id_bytes: 16,
            max_destinations: 3,
            bind_caller: false,
            introspection_endpoint: None,
        }
    }

    pub(crate) fn binding() -> Binding {
        Binding {
            job: "report-7".into(),
            destinations: vec!["orders".into(), "billing".into()],
            max_age: 600,
            sid: Some("s-1".into()),
            iss: Some("https://idp.example".into()),
            caller: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{binding, settings};
    use super::*;
    use serde_json::json;

    #[test]
    fn a_binding_reads_back_from_its_scope_and_nothing_else_does() {
        let s = settings();
        let b = binding();
        let scope = b.scope();
        assert_eq!(
            scope,
            "baton:job:report-7 baton:dest:orders baton:dest:billing baton:max_age:600 baton:sid:s-1 baton:iss:https://idp.example"
        );
        assert_eq!(Binding::parse(Some(&json!(scope)), &s), Some(b.clone()));
        let list: Vec<&str> = scope.split(' ').collect();
        assert_eq!(Binding::parse(Some(&json!(list)), &s), Some(b));
        let minimal = "baton:job:j baton:dest:orders baton:max_age:1";
        assert!(Binding::parse(Some(&json!(minimal)), &s).is_some());
        for bad in [
            "",
            "baton:dest:orders baton:max_age:60",
            "baton:job:j baton:max_age:60",
            "baton:job:j baton:dest:orders",
            "baton:job:j baton:job:k baton:dest:orders baton:max_age:60",
            "baton:job:j baton:dest:orders baton:dest:orders baton:max_age:60",
            "baton:job:j baton:dest:a baton:dest:b baton:dest:c baton:dest:d baton:max_age:60",
            "baton:job:j baton:dest:orders baton:max_age:60 baton:max_age:61",
            "baton:job:j baton:dest:orders baton:max_age:0",
            "baton:job:j baton:dest:orders baton:max_age:060",
            "baton:job:j baton:dest:orders baton:max_age:+60",
            "baton:job:j baton:dest:orders baton:max_age:3601",
            "baton:job:j baton:dest:orders baton:max_age:99999999999999999999999",
            "baton:job:j baton:dest:orders baton:max_age:60 orders.read",
            "baton:job:j baton:dest:orders baton:max_age:60 baton:other:x",
            "baton:job:j baton:dest:orders baton:max_age:60 baton:sid:a baton:sid:b",
            "baton:job: baton:dest:orders baton:max_age:60",
            "baton:job:a/b baton:dest:orders baton:max_age:60",
            "baton:job:j%20k baton:dest:orders baton:max_age:60",
            "baton:job:seventeen-bytes-xx baton:dest:orders baton:max_age:60",
            "baton:job:j baton:dest:or:ders baton:max_age:60",
            "BATON:JOB:j baton:dest:orders baton:max_age:60",
        ] {
            assert_eq!(Binding::parse(Some(&json!(bad)), &s), None, "{bad:?}");
        }
        assert_eq!(Binding::parse(None, &s), None);
        assert_eq!(Binding::parse(Some(&json!(42)), &s), None);
        assert_eq!(Binding::parse(Some(&json!(["baton:job:j", 1])), &s), None);
    }

    fn config(deferred: &str, broker: &str) -> Result<crate::config::Config, Vec<String>> {
        let yaml = format!(
            r#"
token_service: {{ token_endpoint: http://127.0.0.1:9/token, client_id: c, auth: {{ method: none }} }}
trusted_issuers:
  - issuer: https://sts.example
    jwks_uri: https://sts.example/jwks
    audiences: [frontend, baton-broker, baton-jobs, 'https://orders.example']
destinations:
  - name: orders
    audience: https://orders.example
{broker}
{deferred}
"#
        );
        crate::config::Config::from_yaml(&yaml).map_err(|e| e.0.into_iter().map(|e| e.path).collect())
    }

    const BROKER: &str = "broker: { caller_audience: baton-broker }";

    #[test]
    fn the_section_is_off_by_default_and_checked_against_the_others() {
        assert_eq!(config("", BROKER).expect("valid").deferred, None);
        let on = config(
            "deferred: { audience: baton-jobs, grant_issuer: https://sts.example }",
            BROKER,
        )
        .expect("valid");
        let settings = on.deferred.expect("on");
        assert_eq!(settings.max_age, DEFAULT_MAX_AGE);
        assert_eq!(
            (
                settings.max_job_id_bytes,
                settings.max_destinations,
                settings.token_service.as_str()
            ),
            (DEFAULT_MAX_JOB_ID_BYTES, DEFAULT_MAX_DESTINATIONS, "default")
        );
        assert_eq!(
            config(
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, max_age: 2h }",
                BROKER
            )
            .expect("shorter than remember")
            .deferred
            .map(|d| d.max_age),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            config(
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, introspection_endpoint: 'https://sts.example/introspect' }",
                BROKER
            )
            .expect("an introspection endpoint")
            .deferred
            .and_then(|d| d.introspection_endpoint)
            .map(String::from),
            Some("https://sts.example/introspect".to_owned())
        );
    }

    #[test]
    fn the_section_reports_every_error_at_once() {
        // Every field wrong at once: every path reported.
        let all_wrong = "deferred:
  grant_issuer: https://elsewhere.example
  token_service: nowhere
  max_age: 25h
  max_job_id_bytes: 0
  max_destinations: 65";
        assert_eq!(
            config(all_wrong, "").expect_err("invalid"),
            [
                "deferred.audience",
                "deferred.grant_issuer",
                "deferred",
                "deferred.token_service",
                "deferred.max_age",
                "deferred.max_job_id_bytes",
                "deferred.max_destinations",
            ]
        );
        for (deferred, path) in [
            (
                "deferred: { audience: other, grant_issuer: https://sts.example }",
                "deferred.audience",
            ),
            (
                "deferred: { audience: baton-broker, grant_issuer: https://sts.example }",
                "deferred.audience",
            ),
            ("deferred: { audience: baton-jobs }", "deferred.grant_issuer"),
            (
                "deferred: { audience: 'https://orders.example', grant_issuer: https://sts.example }",
                "deferred.audience",
            ),
            (
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, max_age: 0s }",
                "deferred.max_age",
            ),
            (
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, max_job_id_bytes: 201 }",
                "deferred.max_job_id_bytes",
            ),
            (
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, bind_caller: true }",
                "deferred.bind_caller",
            ),
            (
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, unknown: 1 }",
                "(yaml)",
            ),
            (
                "deferred: { audience: baton-jobs, grant_issuer: https://sts.example, introspection_endpoint: 'ftp://sts.example/introspect' }",
                "deferred.introspection_endpoint",
            ),
            (
                "opaque_tokens: forward\ndeferred: { audience: baton-jobs, grant_issuer: https://sts.example, introspection_endpoint: 'https://sts.example/introspect' }",
                "deferred.introspection_endpoint",
            ),
        ] {
            // `bind_caller` is judged against `callers: any`, which identifies no caller.
            let broker = if deferred.contains("bind_caller") {
                "broker: { callers: any }"
            } else {
                BROKER
            };
            let paths = config(deferred, broker).expect_err(deferred);
            assert!(paths.iter().any(|p| p == path), "{deferred}: {paths:?}");
        }
    }

    #[test]
    fn names_are_a_small_alphabet() {
        assert!(is_name("report-7.v2_x", 16));
        for bad in ["", "a b", "a/b", "a:b", "é", "a\u{0}", "seventeen-bytes-x"] {
            assert!(!is_name(bad, 16), "{bad:?}");
        }
        assert!(is_scope_token("https://idp.example/realms/x"));
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert!(!is_scope_token(bad), "{bad:?}");
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// Every binding Defer can ask for reads back as itself, in either scope form; and whatever
        /// a scope holds, a binding read from it is well-formed and writes back as the same values.
        #[test]
        fn a_binding_round_trips_and_nothing_else_reads_as_one(
            job in "[A-Za-z0-9._-]{1,16}",
            destinations in proptest::collection::btree_set("[a-z]{1,8}", 1..=3),
            max_age in 1u64..=3600,
            sid in proptest::option::of("[!#-\\[\\]-~]{1,20}"),
            noise in proptest::collection::vec("[ -~]{0,24}", 0..6),
        ) {
            let s = settings();
            let binding = Binding {
                job,
                destinations: destinations.into_iter().collect(),
                max_age,
                sid,
                iss: Some("https://idp.example".into()),
                caller: Some("spiffe://cluster.local/ns/jobs/sa/reports".into()),
            };
            let scope = binding.scope();
            prop_assert_eq!(Binding::parse(Some(&json!(scope)), &s), Some(binding.clone()));
            let list: Vec<&str> = scope.split(' ').collect();
            prop_assert_eq!(Binding::parse(Some(&json!(list)), &s), Some(binding));
            let noisy = noise.join(" ");
            if let Some(read) = Binding::parse(Some(&json!(noisy)), &s) {
                let mut wrote: Vec<String> = read.scope().split(' ').map(str::to_owned).collect();
                let mut had: Vec<String> = noisy.split(' ').filter(|v| !v.is_empty()).map(str::to_owned).collect();
                wrote.sort();
                had.sort();
                prop_assert_eq!(wrote, had);
            }
        }
    }
}
