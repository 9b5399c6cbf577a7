//! Request-time delegation policy, per destination: may this workload act for this user towards this
//! destination, with this method and path, and which scopes may it ask for? Evaluated on every
//! Check after the subject token is verified and before the cache, so a refused request never mints
//! a token. Rules are compiled once at config load (a bad CEL expression is a config error with its
//! position); evaluation never panics, and an erroring expression refuses (fail closed).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::canonical::{self, path_only};
use crate::reason::{Denial, Reason};
use crate::settings::{Errors, optional_duration};

// === The YAML shape ===

/// `destinations[].policy`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPolicy {
    /// Calling workloads (Envoy source principal / SPIFFE ID, or `workload.identity`); a trailing
    /// `*` matches any suffix. Empty: any.
    pub allowed_sources: Vec<String>,
    /// Claim name -> required value, or a list of which one must match. An array claim matches if
    /// it contains a required value.
    pub require_claims: BTreeMap<String, ClaimRule>,
    /// HTTP methods allowed (upper-case). Empty: any.
    pub methods: Vec<String>,
    /// Path prefixes (`/orders/`) or globs (`/orders/*/items`, `*` within a segment, `**` across).
    /// Empty: any.
    pub paths: Vec<String>,
    /// `intersect`: ask only for the destination's scopes that the subject token holds.
    pub scopes_from_subject: Option<ScopesFromSubject>,
    /// Cap on how long an exchanged token for this destination is cached.
    pub max_token_lifetime: Option<String>,
    /// Deny when the delegation chain (`act` nesting) would be longer than this.
    pub max_delegation_depth: Option<usize>,
    /// A CEL expression over `subject`, `request`, `source`, `destination`; must be true.
    pub when: Option<String>,
    /// Patterns every actor of the `act` chain must match, the subject token's own chain before
    /// any exchange and the issued token's after it (`crate::chain`). Empty: any actor.
    pub allowed_actors: Vec<String>,
    /// The issued token must carry an `act` chain (naming Baton's actor when one is sent).
    /// Default: true when Baton sends an actor token to this destination's token service.
    pub require_delegation: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ClaimRule {
    // A list first: as `One` it would be taken for a single array value.
    AnyOf(Vec<Value>),
    One(Value),
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScopesFromSubject {
    Intersect,
}

// === The compiled policy ===

#[derive(Debug, Default)]
pub struct Policy {
    sources: Vec<Pattern>,
    claims: Vec<(String, Vec<Value>)>,
    methods: Vec<String>,
    paths: Vec<PathRule>,
    pub scopes_from_subject: bool,
    pub max_token_lifetime: Option<Duration>,
    pub max_delegation_depth: Option<usize>,
    when: Option<Expression>,
    /// `allowed_actors` (judged where the chains are known: `baton_core::authz`).
    pub allowed_actors: crate::chain::AllowedActors,
    /// `None`: whether Baton sends an actor token decides.
    pub require_delegation: Option<bool>,
}

/// What the policy looks at.
#[derive(Debug)]
pub struct Facts<'a> {
    /// The verified subject token's claims (`None` when verification is off).
    pub claims: Option<&'a serde_json::Map<String, Value>>,
    pub source: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: crate::request::Headers<'a>,
    pub destination: &'a str,
}

/// A rule of a destination's policy, as an explanation names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule<'p> {
    AllowedSources,
    Methods,
    /// Not a rule of its own: the path must have a canonical form before `paths` or `when` judge it.
    CanonicalPath,
    Paths,
    RequireClaim(&'p str),
    When,
    /// `scopes_from_subject` (judged by `Policy::scopes`).
    ScopesFromSubject,
    /// `max_delegation_depth` (judged where the actor is known: `baton_core::authz`).
    MaxDelegationDepth,
    /// `allowed_actors`, on the subject token's own chain (judged in `baton_core::authz`).
    AllowedActors,
}

impl Rule<'_> {
    /// The rule's name in the configuration (`require_claims.tenant`).
    pub fn name(&self) -> String {
        match self {
            Self::AllowedSources => "allowed_sources".to_owned(),
            Self::Methods => "methods".to_owned(),
            Self::CanonicalPath => "canonical_path".to_owned(),
            Self::Paths => "paths".to_owned(),
            Self::RequireClaim(name) => format!("require_claims.{name}"),
            Self::When => "when".to_owned(),
            Self::ScopesFromSubject => "scopes_from_subject".to_owned(),
            Self::MaxDelegationDepth => "max_delegation_depth".to_owned(),
            Self::AllowedActors => "allowed_actors".to_owned(),
        }
    }
}

/// One rule's verdict on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict<'p> {
    pub rule: Rule<'p>,
    pub outcome: Result<(), Denial>,
}

impl<'p> Verdict<'p> {
    fn new(rule: Rule<'p>, allowed: bool, reason: Reason, why: &'static str) -> Self {
        Self {
            rule,
            outcome: if allowed { Ok(()) } else { Err(Denial::new(reason, why)) },
        }
    }
}

impl RawPolicy {
    /// Compile; problems go to `errors` under `at` (e.g. `destinations[0].policy`).
    pub fn compile(self, at: &str, verified: bool, errors: &mut Errors) -> Policy {
        let needs_claims = !self.require_claims.is_empty() || self.scopes_from_subject.is_some();
        if needs_claims && !verified {
            errors.add(
                at,
                "require_claims and scopes_from_subject read the subject token's claims: configure trusted_issuers so they are verified",
            );
        }
        let max_token_lifetime = optional_duration(
            self.max_token_lifetime.as_deref(),
            &format!("{at}.max_token_lifetime"),
            errors,
        );
        let methods: Vec<String> = self.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        if let Some(bad) = methods
            .iter()
            .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            errors.add(format!("{at}.methods"), format!("`{bad}` is not an HTTP method"));
        }
        let mut paths = Vec::new();
        for (i, p) in self.paths.iter().enumerate() {
            // A rule is written in the canonical form requests are judged in, so `/orders/%7e`
            // and `/orders/~` are one rule; a rule with a dot segment could never match one.
            if !p.starts_with('/') {
                errors.add(format!("{at}.paths[{i}]"), "must start with /");
            } else if path_only(p) != p || p.split('/').any(|s| s == "." || s == "..") {
                errors.add(
                    format!("{at}.paths[{i}]"),
                    "must be a plain path: no `.` or `..` segment, no query or fragment",
                );
            } else {
                match canonical::path(p) {
                    Ok(canonical) => paths.push(PathRule::new(&canonical)),
                    Err(e) => errors.add(format!("{at}.paths[{i}]"), e.to_string()),
                }
            }
        }
        let when = self
            .when
            .as_deref()
            .and_then(|source| match Expression::compile(source) {
                Ok(e) => {
                    if e.reads_subject && !verified {
                        errors.add(
                            format!("{at}.when"),
                            "reads `subject`: configure trusted_issuers so it is verified",
                        );
                    }
                    Some(e)
                }
                Err(e) => {
                    errors.add(format!("{at}.when"), e);
                    None
                }
            });
        let allowed_actors =
            crate::chain::AllowedActors::compile(&self.allowed_actors, &format!("{at}.allowed_actors"), errors);
        Policy {
            sources: self.allowed_sources.iter().map(|s| Pattern::new(s)).collect(),
            claims: self
                .require_claims
                .into_iter()
                .map(|(k, rule)| match rule {
                    ClaimRule::One(v) => (k, vec![v]),
                    ClaimRule::AnyOf(vs) => (k, vs),
                })
                .collect(),
            methods,
            paths,
            scopes_from_subject: self.scopes_from_subject.is_some(),
            max_token_lifetime,
            max_delegation_depth: self.max_delegation_depth,
            when,
            allowed_actors,
            require_delegation: self.require_delegation,
        }
    }
}

impl Policy {
    /// The request headers this policy reads (beyond the method, path and source, which Envoy
    /// sends as attributes): [`EXPRESSION_HEADERS`] when its `when:` expression reads `request`,
    /// else none. The Envoy configuration Baton generates asks for these and no more.
    pub fn reads_headers(&self) -> &'static [&'static str] {
        match &self.when {
            Some(e) if e.reads_request => &EXPRESSION_HEADERS,
            _ => &[],
        }
    }

    /// Whether this policy judges the calling workload (`allowed_sources`, or a `when:` expression
    /// reading `source`): an Envoy API that carries no source principal cannot serve it.
    pub fn reads_source(&self) -> bool {
        !self.sources.is_empty() || self.when.as_ref().is_some_and(|e| e.reads_source)
    }

    /// Every rule, cheapest first; the first that refuses names itself in the reason.
    pub fn check(&self, facts: &Facts<'_>) -> Result<(), Denial> {
        let mut outcome = Ok(());
        self.evaluate(facts, |verdict| match verdict.outcome {
            Ok(()) => ControlFlow::Continue(()),
            Err(denial) => {
                outcome = Err(denial);
                ControlFlow::Break(())
            }
        });
        outcome
    }

    /// Each configured rule's verdict, cheapest first, handed to `each`, which stops the evaluation
    /// by breaking. `check` stops at the first refusal; an explanation (`baton explain`) goes on
    /// to show every rule. One evaluation for both, so they cannot disagree.
    pub fn evaluate<'p>(&'p self, facts: &Facts<'_>, mut each: impl FnMut(Verdict<'p>) -> ControlFlow<()>) {
        let _ = self.evaluate_rules(facts, &mut each);
    }

    fn evaluate_rules<'p>(
        &'p self,
        facts: &Facts<'_>,
        each: &mut impl FnMut(Verdict<'p>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if !self.sources.is_empty() {
            let allowed = facts.source.is_some_and(|s| self.sources.iter().any(|p| p.matches(s)));
            each(Verdict::new(
                Rule::AllowedSources,
                allowed,
                Reason::SourceNotAllowed,
                "this workload may not delegate to this destination",
            ))?;
        }
        if !self.methods.is_empty() {
            let allowed = self.methods.iter().any(|m| m.eq_ignore_ascii_case(facts.method));
            each(Verdict::new(
                Rule::Methods,
                allowed,
                Reason::MethodNotAllowed,
                "the method is not allowed towards this destination",
            ))?;
        }
        // Path rules and CEL judge the canonical path; a destination with neither pays nothing.
        let path = if (self.paths.is_empty() && self.when.is_none()) || facts.path.is_empty() {
            // No path at all (a broker call: no HTTP request) matches no `paths` rule, and CEL's
            // `request.path` is "".
            Ok(String::new())
        } else {
            let canonical = canonical::path(facts.path)
                .map_err(|e| Denial::new(Reason::PathNotCanonical, format!("the path cannot be judged: {e}")));
            each(Verdict {
                rule: Rule::CanonicalPath,
                outcome: canonical.as_ref().map(|_| ()).map_err(Clone::clone),
            })?;
            canonical
        };
        if !self.paths.is_empty() {
            let outcome = match &path {
                Ok(path) if self.paths.iter().any(|p| p.matches(path)) => Ok(()),
                Ok(_) => Err(Denial::new(
                    Reason::PathNotAllowed,
                    "the path is not allowed towards this destination",
                )),
                Err(unjudged) => Err(unjudged.clone()),
            };
            each(Verdict {
                rule: Rule::Paths,
                outcome,
            })?;
        }
        for (name, wanted) in &self.claims {
            let held = facts.claims.and_then(|c| c.get(name));
            each(Verdict {
                rule: Rule::RequireClaim(name),
                outcome: if held.is_some_and(|h| claim_matches(h, wanted)) {
                    Ok(())
                } else {
                    Err(Denial::new(
                        Reason::ClaimRequirementFailed,
                        format!("the subject token's `{name}` claim does not meet the destination's requirement"),
                    ))
                },
            })?;
        }
        if let Some(expression) = &self.when {
            let outcome = match &path {
                Ok(path) => expression.check(facts, path),
                Err(unjudged) => Err(unjudged.clone()),
            };
            each(Verdict {
                rule: Rule::When,
                outcome,
            })?;
        }
        ControlFlow::Continue(())
    }

    /// What `rule` of this policy says, for a person (`baton explain`).
    pub fn describe(&self, rule: &Rule<'_>) -> String {
        let list = |items: Vec<String>| format!("[{}]", items.join(", "));
        match rule {
            Rule::AllowedSources => format!(
                "allowed_sources: {}",
                list(self.sources.iter().map(Pattern::to_string).collect())
            ),
            Rule::Methods => format!("methods: {}", list(self.methods.clone())),
            Rule::CanonicalPath => "the path has one canonical form (needed by paths and when)".to_owned(),
            Rule::Paths => format!("paths: {}", list(self.paths.iter().map(PathRule::to_string).collect())),
            Rule::RequireClaim(name) => {
                let wanted = self
                    .claims
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, values)| values.iter().map(Value::to_string).collect())
                    .unwrap_or_default();
                format!("require_claims.{name}: one of {}", list(wanted))
            }
            Rule::When => format!("when: {}", self.when.as_ref().map_or("", |e| e.source.as_str())),
            Rule::ScopesFromSubject => "scopes_from_subject: intersect".to_owned(),
            Rule::MaxDelegationDepth => format!(
                "max_delegation_depth: {}",
                self.max_delegation_depth
                    .map_or_else(|| "none".to_owned(), |d| d.to_string())
            ),
            Rule::AllowedActors => format!("allowed_actors: [{}]", self.allowed_actors.describe()),
        }
    }

    /// `scopes_from_subject: intersect`: the configured scopes the subject holds, in configured order.
    /// An empty result refuses: asking for nothing would get the token service's defaults.
    pub fn scopes(
        &self,
        configured: &[String],
        claims: Option<&serde_json::Map<String, Value>>,
    ) -> Result<Option<String>, Denial> {
        if !self.scopes_from_subject || configured.is_empty() {
            return Ok(None);
        }
        let held = subject_scopes(claims);
        let granted: Vec<&str> = configured
            .iter()
            .map(String::as_str)
            .filter(|s| held.contains(s))
            .collect();
        if granted.is_empty() {
            return Err(Denial::new(
                Reason::ScopeNotHeld,
                "the subject holds none of the scopes this destination needs",
            ));
        }
        Ok(Some(granted.join(" ")))
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
            && self.claims.is_empty()
            && self.methods.is_empty()
            && self.paths.is_empty()
            && self.when.is_none()
    }
}

/// The subject's scopes: `scope` (RFC 8693 / RFC 9068, space-separated) or `scp` (array or string).
fn subject_scopes(claims: Option<&serde_json::Map<String, Value>>) -> Vec<&str> {
    let Some(claims) = claims else { return Vec::new() };
    match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn claim_matches(held: &Value, wanted: &[Value]) -> bool {
    match held {
        Value::Array(items) => items.iter().any(|item| wanted.contains(item)),
        scalar => wanted.contains(scalar),
    }
}

/// `spiffe://cluster.local/ns/default/sa/frontend`, or with a trailing `*` a prefix.
#[derive(Debug)]
struct Pattern {
    text: String,
    prefix: bool,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.text, if self.prefix { "*" } else { "" })
    }
}

impl Pattern {
    fn new(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self {
                text: prefix.to_owned(),
                prefix: true,
            },
            None => Self {
                text: text.to_owned(),
                prefix: false,
            },
        }
    }

    fn matches(&self, value: &str) -> bool {
        if self.prefix {
            value.starts_with(&self.text)
        } else {
            value == self.text
        }
    }
}

/// A path rule: a prefix (no `*`), or a glob over `/`-separated segments where `*` matches within a
/// segment and `**` matches any number of segments.
#[derive(Debug)]
enum PathRule {
    Prefix(String),
    Glob(Vec<String>),
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(prefix) => f.write_str(prefix),
            Self::Glob(segments) => f.write_str(&segments.join("/")),
        }
    }
}

impl PathRule {
    fn new(text: &str) -> Self {
        if text.contains('*') {
            Self::Glob(text.split('/').map(str::to_owned).collect())
        } else {
            Self::Prefix(text.to_owned())
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Self::Glob(pattern) => {
                let segments: Vec<&str> = path.split('/').collect();
                glob_segments(pattern, &segments)
            }
        }
    }
}

fn glob_segments(pattern: &[String], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => (0..=path.len()).any(|skip| glob_segments(&pattern[1..], &path[skip..])),
        (Some(p), Some(s)) => glob_segment(p.as_bytes(), s.as_bytes()) && glob_segments(&pattern[1..], &path[1..]),
        _ => false,
    }
}

/// `*` within one segment.
fn glob_segment(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_segment(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_segment(rest, &text[1..]),
    }
}

// === CEL ===

/// A compiled `when:` expression.
struct Expression {
    source: String,
    program: cel::Program,
    env: Arc<cel::Env>,
    reads_subject: bool,
    reads_request: bool,
    reads_source: bool,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expression").field("source", &self.source).finish()
    }
}

const VARIABLES: [&str; 4] = ["subject", "request", "source", "destination"];

/// The request headers a `when:` expression sees as `request.headers`: these and no others, so the
/// Envoy configuration Baton generates can ask Envoy for exactly them ([`Policy::reads_headers`]).
pub const EXPRESSION_HEADERS: [&str; 4] = ["content-type", "user-agent", "x-request-id", "x-forwarded-for"];

impl Expression {
    fn compile(source: &str) -> Result<Self, String> {
        let env = Arc::new(cel::Env::stdlib());
        let program = env.compile(source).map_err(|e| e.to_string().replace('\n', " "))?;
        let references = program.references();
        if let Some(unknown) = references.variables().into_iter().find(|v| !VARIABLES.contains(v)) {
            return Err(format!(
                "unknown variable `{unknown}` (use subject, request, source, destination)"
            ));
        }
        let reads_subject = references.has_variable("subject");
        let reads_request = references.has_variable("request");
        let reads_source = references.has_variable("source");
        Ok(Self {
            source: source.to_owned(),
            program,
            env,
            reads_subject,
            reads_request,
            reads_source,
        })
    }

    /// `path` is the canonical path: what `request.path` is.
    fn check(&self, facts: &Facts<'_>, path: &str) -> Result<(), Denial> {
        let error = |why: &str| {
            tracing::warn!(expression = %self.source, error = why, "policy expression failed; refusing");
            Denial::new(
                Reason::PolicyExpressionError,
                "the destination's policy expression could not be evaluated",
            )
        };
        let mut context = cel::Context::with_env(self.env.clone());
        let subject = facts.claims.map_or(Value::Null, |c| Value::Object(c.clone()));
        let mut headers = serde_json::Map::new();
        for name in EXPRESSION_HEADERS {
            if let Some(v) = facts.headers.get(name) {
                headers.insert(name.to_owned(), Value::String(v.to_owned()));
            }
        }
        let request = serde_json::json!({ "method": facts.method, "path": path, "headers": headers });
        for (name, value) in [
            ("subject", subject),
            ("request", request),
            ("source", Value::String(facts.source.unwrap_or("").to_owned())),
            ("destination", Value::String(facts.destination.to_owned())),
        ] {
            let value = cel::to_value(value).map_err(|e| error(&e.to_string()))?;
            context.add_variable_from_value(name, value);
        }
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(true)) => Ok(()),
            Ok(cel::Value::Bool(false)) => Err(Denial::new(
                Reason::PolicyExpressionFalse,
                "the destination's policy expression is false for this request",
            )),
            Ok(other) => Err(error(&format!("the expression gave {other:?}, not a bool"))),
            Err(e) => Err(error(&e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn compile(yaml: &str, verified: bool) -> Result<Policy, Vec<String>> {
        let raw: RawPolicy = serde_saphyr::from_str(yaml).map_err(|e| vec![e.to_string()])?;
        let mut errors = Errors::default();
        let policy = raw.compile("policy", verified, &mut errors);
        if errors.0.is_empty() {
            Ok(policy)
        } else {
            Err(errors
                .0
                .into_iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect())
        }
    }

    fn claims(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).expect("claims")
    }

    fn decide(
        policy: &Policy,
        claims: &serde_json::Map<String, Value>,
        source: Option<&str>,
        method: &str,
        path: &str,
    ) -> Result<(), Reason> {
        let empty = HashMap::new();
        let facts = Facts {
            claims: Some(claims),
            source,
            method,
            path,
            headers: crate::request::Headers::Folded(&empty),
            destination: "orders",
        };
        policy.check(&facts).map_err(|d| d.reason)
    }

    /// Whether a policy judges the caller: ext_authz over HTTP carries no source principal.
    #[test]
    fn a_policy_reads_the_source_through_allowed_sources_or_its_expression() {
        for (yaml, reads) in [
            ("{}", false),
            ("methods: [GET]\nwhen: destination == 'orders'", false),
            ("allowed_sources: [\"spiffe://a/*\"]", true),
            ("when: source.startsWith('spiffe://a/')", true),
        ] {
            assert_eq!(compile(yaml, true).expect("compiles").reads_source(), reads, "{yaml}");
        }
    }

    /// The headers a policy reads are the ones its expression can see, and only when it reads
    /// `request`: the generated Envoy configuration asks Envoy for these (issue 15).
    #[test]
    fn a_policy_reads_the_expressions_headers_only_when_it_reads_the_request() {
        for (yaml, reads) in [
            ("{}", &[][..]),
            ("methods: [GET]\npaths: [/orders/]", &[][..]),
            ("when: destination == 'orders'", &[][..]),
            ("when: request.method == 'GET'", &EXPRESSION_HEADERS[..]),
            ("when: request.headers['user-agent'] == 'x'", &EXPRESSION_HEADERS[..]),
        ] {
            let policy = compile(yaml, true).expect("compiles");
            assert_eq!(policy.reads_headers(), reads, "{yaml}");
        }
        // A header outside the list is invisible to an expression, whatever Envoy sends.
        let policy = compile("when: \"'cookie' in request.headers\"", true).expect("compiles");
        let mut sent = HashMap::new();
        sent.insert("cookie".to_owned(), "a=b".to_owned());
        sent.insert("user-agent".to_owned(), "ua".to_owned());
        let claims = claims("{}");
        let facts = Facts {
            claims: Some(&claims),
            source: None,
            method: "GET",
            path: "/",
            headers: crate::request::Headers::Folded(&sent),
            destination: "orders",
        };
        assert_eq!(
            policy.check(&facts).map_err(|d| d.reason),
            Err(Reason::PolicyExpressionFalse)
        );
        let policy = compile("when: \"'user-agent' in request.headers\"", true).expect("compiles");
        assert_eq!(policy.check(&facts).map_err(|d| d.reason), Ok(()));
    }

    #[test]
    fn each_rule_allows_and_refuses_by_its_own_reason() {
        let policy = compile(
            r#"
allowed_sources: ["spiffe://cluster.local/ns/shop/*"]
require_claims: { tenant: acme, groups: [buyers, admins] }
methods: [get, POST]
paths: ["/orders/", "/items/*/price", "/v2/**/status"]
"#,
            true,
        )
        .expect("compiles");
        let alice = claims(r#"{"sub":"alice","tenant":"acme","groups":["buyers"]}"#);
        let src = Some("spiffe://cluster.local/ns/shop/sa/frontend");
        assert_eq!(decide(&policy, &alice, src, "GET", "/orders/1?x=y"), Ok(()));
        assert_eq!(decide(&policy, &alice, src, "POST", "/items/42/price"), Ok(()));
        assert_eq!(decide(&policy, &alice, src, "GET", "/v2/a/b/status"), Ok(()));
        assert_eq!(
            decide(
                &policy,
                &alice,
                Some("spiffe://cluster.local/ns/other/sa/x"),
                "GET",
                "/orders/1"
            ),
            Err(Reason::SourceNotAllowed)
        );
        assert_eq!(
            decide(&policy, &alice, None, "GET", "/orders/1"),
            Err(Reason::SourceNotAllowed)
        );
        assert_eq!(
            decide(&policy, &alice, src, "DELETE", "/orders/1"),
            Err(Reason::MethodNotAllowed)
        );
        assert_eq!(
            decide(&policy, &alice, src, "GET", "/items/42/cost"),
            Err(Reason::PathNotAllowed)
        );
        assert_eq!(
            decide(&policy, &alice, src, "GET", "/order"),
            Err(Reason::PathNotAllowed)
        );
        let other_tenant = claims(r#"{"sub":"bob","tenant":"evil","groups":["buyers"]}"#);
        assert_eq!(
            decide(&policy, &other_tenant, src, "GET", "/orders/1"),
            Err(Reason::ClaimRequirementFailed)
        );
        let no_group = claims(r#"{"sub":"carol","tenant":"acme","groups":["sellers"]}"#);
        assert_eq!(
            decide(&policy, &no_group, src, "GET", "/orders/1"),
            Err(Reason::ClaimRequirementFailed)
        );
        let missing = claims(r#"{"sub":"dave"}"#);
        assert_eq!(
            decide(&policy, &missing, src, "GET", "/orders/1"),
            Err(Reason::ClaimRequirementFailed)
        );
    }

    /// Every rule's verdict, past the first refusal; `check` is that first refusal.
    #[test]
    fn an_evaluation_goes_on_past_a_refusal_and_check_is_its_first() {
        let policy = compile(
            r#"
allowed_sources: ["spiffe://cluster.local/ns/shop/*"]
require_claims: { tenant: acme }
methods: [GET]
paths: ["/orders/"]
when: 'request.method == "GET"'
"#,
            true,
        )
        .expect("compiles");
        let empty = HashMap::new();
        let mallory = claims(r#"{"tenant":"evil"}"#);
        let verdicts = |method: &str, path: &str| {
            let facts = Facts {
                claims: Some(&mallory),
                source: Some("spiffe://cluster.local/ns/shop/sa/x"),
                method,
                path,
                headers: crate::request::Headers::Folded(&empty),
                destination: "orders",
            };
            let mut all = Vec::new();
            policy.evaluate(&facts, |v| {
                all.push((v.rule.name(), v.outcome.map_err(|d| d.reason)));
                ControlFlow::Continue(())
            });
            let first = all.iter().find_map(|(_, o)| o.err());
            assert_eq!(policy.check(&facts).map_err(|d| d.reason).err(), first);
            all
        };
        assert_eq!(
            verdicts("DELETE", "/orders/../admin"),
            [
                ("allowed_sources".to_owned(), Ok(())),
                ("methods".to_owned(), Err(Reason::MethodNotAllowed)),
                ("canonical_path".to_owned(), Ok(())),
                ("paths".to_owned(), Err(Reason::PathNotAllowed)),
                ("require_claims.tenant".to_owned(), Err(Reason::ClaimRequirementFailed)),
                ("when".to_owned(), Err(Reason::PolicyExpressionFalse)),
            ]
        );
        // A path with no canonical form: the rules that judge it cannot, for the same reason.
        let unjudged = verdicts("GET", "/orders/%2e%2e/admin");
        assert_eq!(
            unjudged[2],
            ("canonical_path".to_owned(), Err(Reason::PathNotCanonical))
        );
        assert_eq!(unjudged[3], ("paths".to_owned(), Err(Reason::PathNotCanonical)));
        assert_eq!(policy.describe(&Rule::Paths), "paths: [/orders/]");
        assert_eq!(
            policy.describe(&Rule::AllowedSources),
            "allowed_sources: [spiffe://cluster.local/ns/shop/*]"
        );
    }

    #[test]
    fn cel_expressions_true_false_and_erroring() {
        let policy = compile(
            r#"when: 'subject.tenant == "acme" && request.method == "GET" && destination == "orders"'"#,
            true,
        )
        .expect("compiles");
        assert_eq!(
            decide(&policy, &claims(r#"{"tenant":"acme"}"#), None, "GET", "/"),
            Ok(())
        );
        assert_eq!(
            decide(&policy, &claims(r#"{"tenant":"other"}"#), None, "GET", "/"),
            Err(Reason::PolicyExpressionFalse)
        );
        // A missing claim is an evaluation error: refused, not allowed.
        assert_eq!(
            decide(&policy, &claims(r#"{}"#), None, "GET", "/"),
            Err(Reason::PolicyExpressionError)
        );
        let not_bool = compile(r#"when: 'request.path'"#, true).expect("compiles");
        assert_eq!(
            decide(&not_bool, &claims("{}"), None, "GET", "/"),
            Err(Reason::PolicyExpressionError)
        );
    }

    #[test]
    fn bad_rules_are_config_errors_with_their_path() {
        let errors = compile(
            "when: 'subject.tenant ==='\nmethods: ['G ET']\npaths: [orders]\nmax_token_lifetime: soon\n",
            true,
        )
        .expect_err("invalid");
        for path in [
            "policy.when",
            "policy.methods",
            "policy.paths[0]",
            "policy.max_token_lifetime",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("{path}:"))),
                "{path} in {errors:?}"
            );
        }
        let errors = compile("when: 'user.id == 1'\n", true).expect_err("unknown variable");
        assert!(errors[0].contains("unknown variable `user`"), "{errors:?}");
        let errors = compile("require_claims: { tenant: acme }\n", false).expect_err("needs verification");
        assert!(errors[0].contains("trusted_issuers"), "{errors:?}");
    }

    #[test]
    fn scopes_are_intersected_with_the_subjects() {
        let policy = compile("scopes_from_subject: intersect\n", true).expect("compiles");
        let configured = vec!["orders.read".to_owned(), "orders.write".to_owned()];
        let read_only = claims(r#"{"scope":"profile orders.read"}"#);
        assert_eq!(
            policy.scopes(&configured, Some(&read_only)),
            Ok(Some("orders.read".to_owned()))
        );
        let entra = claims(r#"{"scp":["orders.write","orders.read"]}"#);
        assert_eq!(
            policy.scopes(&configured, Some(&entra)),
            Ok(Some("orders.read orders.write".to_owned()))
        );
        let none = claims(r#"{"scope":"profile"}"#);
        assert_eq!(
            policy.scopes(&configured, Some(&none)).map_err(|d| d.reason),
            Err(Reason::ScopeNotHeld)
        );
        assert_eq!(
            compile("{}", true).expect("empty").scopes(&configured, Some(&none)),
            Ok(None)
        );
    }

    #[test]
    fn paths_are_judged_in_their_canonical_form() {
        let policy = compile(r#"paths: ["/orders/", "/items/*/price"]"#, true).expect("compiles");
        let alice = claims(r#"{"sub":"alice"}"#);
        let path = |p: &str| decide(&policy, &alice, None, "GET", p);
        // Issue 12's examples: a dot segment leaves the rule, whatever the upstream resolves.
        assert_eq!(path("/orders/../admin"), Err(Reason::PathNotAllowed));
        assert_eq!(path("/items/../price"), Err(Reason::PathNotAllowed));
        assert_eq!(path("/orders/42/../../admin?x=/orders/"), Err(Reason::PathNotAllowed));
        assert_eq!(path("/orders/./42"), Ok(()));
        assert_eq!(
            path("/items/%31/price"),
            Ok(()),
            "an unreserved escape is its character"
        );
        assert_eq!(path("/orders/42?next=/../admin"), Ok(()));
        for never in [
            "/orders/%2e%2e/admin",
            "/orders/..%2fadmin",
            "/orders/..%2Fadmin",
            "/orders/..;/admin",
            "/orders/..\\admin",
            "/orders/%00",
            "/orders/%zz",
            "*",
        ] {
            assert_eq!(path(never), Err(Reason::PathNotCanonical), "{never:?}");
        }
        assert_eq!(
            path(""),
            Err(Reason::PathNotAllowed),
            "no path (a broker call) matches no rule"
        );
        // CEL's request.path is the same canonical path (no query).
        let cel = compile(r#"when: 'request.path.startsWith("/orders/")'"#, true).expect("compiles");
        assert_eq!(
            decide(&cel, &alice, None, "GET", "/orders/../admin"),
            Err(Reason::PolicyExpressionFalse)
        );
        assert_eq!(
            decide(&cel, &alice, None, "GET", "/orders/%2e%2e/admin"),
            Err(Reason::PathNotCanonical)
        );
        assert_eq!(decide(&cel, &alice, None, "GET", "/orders/1?a=b"), Ok(()));
        let exact = compile(r#"when: 'request.path == "/orders/1"'"#, true).expect("compiles");
        assert_eq!(
            decide(&exact, &alice, None, "GET", "/orders//1/?a#b"),
            Err(Reason::PolicyExpressionFalse)
        );
        assert_eq!(decide(&exact, &alice, None, "GET", "/orders//1?a#b"), Ok(()));
        // Without path rules or CEL, the path is not judged.
        let none = compile("methods: [GET]", true).expect("compiles");
        assert_eq!(decide(&none, &alice, None, "GET", "/orders/%2e%2e"), Ok(()));
    }

    #[test]
    fn path_rules_are_canonical_or_config_errors() {
        let policy = compile(r#"paths: ["/caf%c3%a9/%7Eme/"]"#, true).expect("compiles");
        let alice = claims("{}");
        assert_eq!(decide(&policy, &alice, None, "GET", "/café/~me/x"), Ok(()));
        for bad in ["/orders/../admin", "/a/./b", "/a%2fb", "/a?b", "/a%zz"] {
            let errors = compile(&format!("paths: [\"{bad}\"]"), true).expect_err(bad);
            assert!(errors[0].starts_with("policy.paths[0]:"), "{errors:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn raw_path() -> impl Strategy<Value = String> {
            let segment = prop::sample::select(vec![
                "items", "orders", "admin", "price", "1", "", ".", "..", "%2e", "%2e%2e", "..;", "%2f", "%5c", "%31",
                "%70rice", "pr%69ce", ";x", "..%3b", "%252e", "*",
            ]);
            prop::collection::vec(segment, 0..7).prop_map(|s| format!("/{}", s.join("/")))
        }

        /// A plain path: what a server resolving the request (decoding once, `;` cut, dot segments
        /// resolved) acts on.
        fn plain(raw: &str) -> String {
            let decoded = raw
                .replace("%2e", ".")
                .replace("%2f", "/")
                .replace("%5c", "/")
                .replace("%3b", ";")
                .replace("%31", "1")
                .replace("%70", "p")
                .replace("%69", "i")
                .replace("%25", "%");
            let mut out: Vec<&str> = Vec::new();
            for s in decoded.split('/').skip(1) {
                match s.split(';').next().unwrap_or(s) {
                    "" | "." => {}
                    ".." => {
                        out.pop();
                    }
                    s => out.push(s),
                }
            }
            format!("/{}", out.join("/"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// A request the path rules allow is one whose plain path they allow too.
            #[test]
            fn nothing_outside_a_paths_rule_is_allowed(raw in raw_path()) {
                let policy = compile(r#"paths: ["/orders/", "/items/*/price"]"#, true).expect("compiles");
                let alice = claims("{}");
                if decide(&policy, &alice, None, "GET", &raw).is_ok() {
                    let plain = plain(&raw);
                    let rule = ["/orders/", "/items/*/price"].map(PathRule::new);
                    prop_assert!(
                        rule.iter().any(|r| r.matches(&plain)) || plain == "/orders",
                        "{raw:?} allowed, but a server acts on {plain:?}"
                    );
                }
            }
        }
    }
}
