//! Dry runs of the decision: a request described by hand (`baton explain`) or by a test file's
//! cases (`baton policy test`), judged by the configuration file's own compiled decision
//! (`app::build_offline`, `baton_core::explain`), so a prediction is what `baton run` would do.
//! It never sends anything: no token service, no JWKS, no discovery; the subject's claims are
//! given and never come from a token. It owns the test-file format and its JUnit report.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};

use baton_core::authz::Authz;
use baton_core::explain::{Explanation, explain};
use baton_core::token_service::Endpoint;
use baton_decide::reason::Reason;
use baton_decide::request::{Authorization, Headers, Outbound};
use baton_decide::route::CONTEXT_KEY;

/// The stand-in bearer token of a request described with claims: it is never sent, verified or
/// exchanged; it only tells the decision that the request carries a token.
const DRY_RUN_TOKEN: &str = "baton-dry-run";

// === A request, described ===

/// A request as Envoy would describe it to Baton.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Request {
    /// The `:authority` (Host). Default: the first exact host of `destination`.
    pub host: Option<String>,
    /// The destination the Envoy route names (`context_extensions["baton.destination"]`).
    pub destination: Option<String>,
    /// Default `GET`.
    pub method: Option<String>,
    /// The request target as sent (`:path`, query included). Default `/`.
    pub path: Option<String>,
    /// Request headers (names lower-cased); not `authorization`: give `claims`.
    pub headers: BTreeMap<String, String>,
    /// The calling workload as Envoy saw it (`source.principal`, a SPIFFE ID).
    pub source: Option<String>,
    /// The subject token's claims. Absent: the request has no `Authorization` header.
    pub claims: Option<Map<String, Value>>,
}

/// The decision of one configuration file, compiled offline.
#[derive(Debug)]
pub struct DryRun {
    authz: Authz,
    /// Each destination's first exact host, for a request that names only its destination.
    hosts: HashMap<String, String>,
    /// What loading could not check (discovery, keys), said once per run.
    pub notes: Vec<String>,
}

impl DryRun {
    /// Load and validate the configuration file as `run` does, then compile the decision without
    /// starting anything. The error names the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let config = crate::file::Config::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let decision = config.decision;
        let mut notes = Vec::new();
        for ts in &decision.token_services {
            if let Endpoint::Discover { issuer } = &ts.endpoint {
                notes.push(format!(
                    "token service `{}`: its endpoint comes from {issuer}'s metadata, not fetched",
                    ts.name
                ));
            }
        }
        let hosts = decision
            .destinations
            .iter()
            .filter_map(|d| Some((d.name.clone(), d.hosts.iter().find(|h| !h.starts_with("*."))?.clone())))
            .collect();
        let authz = crate::app::build_offline(decision).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { authz, hosts, notes })
    }

    /// What Baton would decide for `request`, and why.
    pub fn explain(&self, request: &Request) -> Result<Explanation, String> {
        let host = match (&request.host, &request.destination) {
            (Some(host), _) => host.clone(),
            (None, Some(name)) => self
                .hosts
                .get(name)
                .cloned()
                .ok_or_else(|| format!("give `host`: destination `{name}` has no exact host to default to"))?,
            (None, None) => return Err("give `host` (the request's Host) or `destination`".into()),
        };
        let mut headers = HashMap::new();
        for (name, value) in &request.headers {
            let name = name.to_ascii_lowercase();
            if name == "authorization" {
                return Err("headers: no `authorization`: describe the subject token with `claims`".into());
            }
            headers.insert(name, value.clone());
        }
        let bearer = format!("Bearer {DRY_RUN_TOKEN}");
        let outbound = Outbound {
            route_destination: request.destination.as_deref(),
            authority: &host,
            method: request.method.as_deref().unwrap_or("GET"),
            path: request.path.as_deref().unwrap_or("/"),
            source_principal: request.source.as_deref(),
            authorization: match request.claims {
                Some(_) => Authorization::One(&bearer),
                None => Authorization::Missing,
            },
            headers: Headers::Folded(&headers),
        };
        Ok(explain(&self.authz, &outbound, request.claims.as_ref()))
    }
}

/// The explanation and what Envoy would be told, as one JSON object (`baton explain --json`).
pub fn to_json(explanation: &Explanation) -> Value {
    let mut value = serde_json::to_value(explanation).unwrap_or_default();
    if let Value::Object(object) = &mut value {
        object.insert(
            "envoy".into(),
            crate::respond::described(
                explanation.decision,
                explanation.denial.as_ref(),
                explanation.dpop_bound(),
            ),
        );
    }
    value
}

/// The explanation for a person.
pub fn to_text(explanation: &Explanation, notes: &[String]) -> String {
    let e = explanation;
    let r = &e.request;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("request      {} {} (host {})", r.method, r.path, r.authority));
    line(format!("  authority  {}", r.canonical_authority));
    line(format!("  path       {} (canonical)", r.canonical_path));
    line(format!("  source     {}", r.source.as_deref().unwrap_or("none")));
    if let Some(route) = &r.route_destination {
        line(format!("  route      names destination `{route}` ({CONTEXT_KEY})"));
    }
    match &e.destination {
        Some(d) => line(format!(
            "destination  {} (matched by {}{})",
            d.name,
            d.matched_by,
            d.pattern
                .as_ref()
                .map(|p| format!(", pattern `{p}`"))
                .unwrap_or_default()
        )),
        None => line("destination  none".into()),
    }
    if e.destination.is_some() {
        if e.rules.is_empty() {
            line("policy       no rules".into());
        } else {
            line(format!(
                "policy       {} rule{} (the first refusal decides){}",
                e.rules.len(),
                if e.rules.len() == 1 { "" } else { "s" },
                if e.claims_verified {
                    ""
                } else {
                    "; claims are not verified by this configuration, so rules see none"
                }
            ));
            for rule in &e.rules {
                line(format!(
                    "  {:<7}    {}{}",
                    rule.verdict,
                    rule.says,
                    rule.reason.map(|r| format!("  -> {r}")).unwrap_or_default()
                ));
            }
        }
    }
    if let Some(x) = &e.exchange {
        line(format!(
            "exchange     token service `{}` ({}), client `{}`",
            x.token_service, x.token_endpoint, x.client_id
        ));
        for (name, value) in [
            ("audience", x.audience.as_deref()),
            ("resource", x.resource.as_deref()),
            ("scope", x.scope.as_deref()),
            ("requested", x.requested_token_type.as_deref()),
        ] {
            if let Some(value) = value {
                line(format!("  {name:<10} {value}"));
            }
        }
        line(format!(
            "  subject    the request's bearer token ({})",
            x.subject_token_type
        ));
        line(format!(
            "  actor      {}",
            if x.actor { "the workload's actor token" } else { "none" }
        ));
        let inputs: Vec<String> = x
            .cache_key_inputs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        line(format!("  cache key  sha256 over {}", inputs.join(", ")));
    }
    line(format!(
        "decision     {}{}: {}",
        e.decision,
        e.reason.map(|r| format!(" {r}")).unwrap_or_default(),
        e.why
    ));
    let envoy = crate::respond::described(e.decision, e.denial.as_ref(), e.dpop_bound());
    line(format!("envoy        {}", envoy));
    for note in e.unchecked.iter().map(|s| (*s).to_owned()).chain(notes.iter().cloned()) {
        line(format!("not checked  {note}"));
    }
    out
}

// === Test files ===

/// A policy test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Baton's configuration file, relative to the test file.
    pub config: Option<PathBuf>,
    pub cases: Vec<Case>,
}

impl TestFile {
    /// Parse a test file's text: its shape (unknown keys refused), a case at least, and each
    /// `deny:` a reason code Baton has. Errors name the case.
    pub fn parse(text: &str) -> Result<Self, String> {
        let tests: TestFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        for (i, case) in tests.cases.iter().enumerate() {
            if let Expect::Deny(reason) = &case.expect
                && Reason::from_name(reason).is_none()
            {
                return Err(format!(
                    "cases[{i}] (`{}`): expect.deny: `{reason}` is not a reason code (docs/operations.md lists them)",
                    case.name
                ));
            }
        }
        if tests.cases.is_empty() {
            return Err("no cases".into());
        }
        Ok(tests)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: Request,
    pub expect: Expect,
}

/// The outcome a case expects.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Expect {
    /// A token for the destination replaces `Authorization`; each field given must match.
    Delegate(ExpectDelegate),
    Strip,
    Passthrough,
    /// Refused with this reason code.
    Deny(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpectDelegate {
    pub audience: Option<String>,
    pub resource: Option<String>,
    /// The scopes asked for, in any order.
    pub scopes: Option<Vec<String>>,
}

/// One case's result.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub expected: String,
    pub got: String,
    pub passed: bool,
    pub time: Duration,
}

/// One test file's results.
#[derive(Debug)]
pub struct Suite {
    pub file: PathBuf,
    pub config: PathBuf,
    pub cases: Vec<CaseResult>,
    pub notes: Vec<String>,
}

/// Read a test file and run its cases against its configuration (or `config`, which overrides
/// it). An unreadable or malformed file, an unknown reason code, a case that cannot be judged or a
/// configuration that does not load is an error naming the file (and the case): exit 2.
pub fn run_file(file: &Path, config: Option<&Path>) -> Result<Suite, String> {
    let shown = file.display();
    let text = baton_core::files::read_file(file).map_err(|e| e.to_string())?;
    let tests = TestFile::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
    let config = match (config, &tests.config) {
        (Some(over), _) => over.to_path_buf(),
        (None, Some(relative)) => file.parent().unwrap_or(Path::new(".")).join(relative),
        (None, None) => return Err(format!("{shown}: no `config:`, and no --config given")),
    };
    let dry = DryRun::load(&config)?;
    let mut cases = Vec::with_capacity(tests.cases.len());
    for (i, case) in tests.cases.iter().enumerate() {
        let started = Instant::now();
        let explanation = dry
            .explain(&case.request)
            .map_err(|e| format!("{shown}: cases[{i}] (`{}`): request: {e}", case.name))?;
        cases.push(CaseResult {
            name: case.name.clone(),
            expected: expected(&case.expect),
            got: got(&explanation),
            passed: matches(&case.expect, &explanation),
            time: started.elapsed(),
        });
    }
    Ok(Suite {
        file: file.to_path_buf(),
        config,
        cases,
        notes: dry.notes,
    })
}

fn matches(expect: &Expect, e: &Explanation) -> bool {
    match expect {
        Expect::Strip => e.decision == "strip",
        Expect::Passthrough => e.decision == "passthrough",
        Expect::Deny(reason) => e.decision == "deny" && e.reason == Some(reason.as_str()),
        Expect::Delegate(want) => {
            let Some(x) = e.exchange.as_ref().filter(|_| e.decision == "delegate") else {
                return false;
            };
            fn scopes(s: &[String]) -> Vec<&str> {
                let mut s: Vec<&str> = s.iter().map(String::as_str).collect();
                s.sort_unstable();
                s.dedup();
                s
            }
            let held: Vec<String> = x
                .scope
                .as_deref()
                .unwrap_or("")
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            want.audience.as_ref().is_none_or(|a| x.audience.as_ref() == Some(a))
                && want.resource.as_ref().is_none_or(|r| x.resource.as_ref() == Some(r))
                && want.scopes.as_ref().is_none_or(|w| scopes(w) == scopes(&held))
        }
    }
}

fn expected(expect: &Expect) -> String {
    match expect {
        Expect::Strip => "strip".into(),
        Expect::Passthrough => "passthrough".into(),
        Expect::Deny(reason) => format!("deny {reason}"),
        Expect::Delegate(want) => {
            let mut parts = Vec::new();
            if let Some(a) = &want.audience {
                parts.push(format!("audience {a}"));
            }
            if let Some(r) = &want.resource {
                parts.push(format!("resource {r}"));
            }
            if let Some(s) = &want.scopes {
                parts.push(format!("scopes [{}]", s.join(" ")));
            }
            if parts.is_empty() {
                "delegate".into()
            } else {
                format!("delegate ({})", parts.join(", "))
            }
        }
    }
}

/// The outcome in the words `expected` uses.
pub fn got(e: &Explanation) -> String {
    match (e.decision, &e.exchange) {
        ("delegate", Some(x)) => {
            let mut parts = Vec::new();
            if let Some(a) = &x.audience {
                parts.push(format!("audience {a}"));
            }
            if let Some(r) = &x.resource {
                parts.push(format!("resource {r}"));
            }
            parts.push(format!("scopes [{}]", x.scope.as_deref().unwrap_or("")));
            format!("delegate ({})", parts.join(", "))
        }
        ("deny", _) => format!("deny {}", e.reason.unwrap_or("?")),
        (other, _) => other.to_owned(),
    }
}

/// The JUnit XML report of these suites (one `testsuite` per file; a mismatch is a `failure`).
pub fn junit(suites: &[Suite]) -> Result<String, String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("baton policy test");
    for suite in suites {
        let mut out = TestSuite::new(suite.file.display().to_string());
        for case in &suite.cases {
            let status = if case.passed {
                TestCaseStatus::success()
            } else {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status
                    .set_message(format!("expected {}, got {}", case.expected, case.got))
                    .set_type("mismatch");
                status
            };
            let mut test = TestCase::new(case.name.clone(), status);
            test.set_classname(suite.file.display().to_string()).set_time(case.time);
            out.add_test_case(test);
        }
        report.add_test_suite(out);
    }
    report
        .to_string()
        .map_err(|e| format!("cannot write the JUnit report: {e}"))
}
