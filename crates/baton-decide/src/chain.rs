//! Delegation chains as policy: which actors may appear in a token's `act` chain (RFC 8693 4.1),
//! per destination (`policy.allowed_actors`). It owns the strict reading of a chain and the
//! matching rule; it never guesses: a chain it cannot read (an entry that is not an object, a `sub`
//! that is not a non-empty string, an `act` nested deeper than `MAX_CHAIN`) is refused, never
//! skipped. Pure: no clock, no I/O, so the subject's chain and the issued token's chain are judged
//! by the same code.
//!
//! The rule, as docs/delegation-chains.md states it: every actor of the chain, the current
//! (outermost) actor first, must match at least one pattern, by its `sub` alone. A pattern is an
//! exact string (byte for byte, case-sensitive), or ends in one `*` and matches any `sub` starting
//! with what precedes it (`*` alone: any actor). An entry's `iss`, if present, must be a string and
//! is not matched (a `sub` is only unique within its issuer: name actors by globally unique
//! identifiers such as SPIFFE IDs). Members other than `sub`, `iss` and `act` are ignored.

use std::fmt;

use serde_json::Value;

use crate::reason::{Denial, Reason};
use crate::settings::Errors;

/// The longest chain read: a deeper one is malformed (no deployment delegates 32 hops).
pub const MAX_CHAIN: usize = 32;
/// The longest `sub` (and pattern) read, in bytes.
pub const MAX_ACTOR_LEN: usize = 1024;
/// The most patterns one destination may list.
pub const MAX_PATTERNS: usize = 256;

/// Why a chain is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain cannot be read; the message says where.
    #[error("the act chain is malformed: {0}")]
    Malformed(String),
    /// The actor at `position` (0: the current, outermost actor) matches no pattern.
    #[error(
        "the actor at position {position} of the act chain (0 is the current actor) matches no allowed_actors pattern"
    )]
    NotAllowed { position: usize },
}

/// The actors' `sub` values of an `act` claim, outermost (current) first, read strictly. `None`
/// (no `act` claim) is the empty chain; `act: null` is malformed (a claim that is there must say
/// something).
pub fn read(act: Option<&Value>) -> Result<Vec<&str>, ChainError> {
    let mut actors = Vec::new();
    let mut next = act;
    while let Some(entry) = next {
        let position = actors.len();
        if position == MAX_CHAIN {
            return Err(ChainError::Malformed(format!("deeper than {MAX_CHAIN} actors")));
        }
        let Value::Object(entry) = entry else {
            return Err(ChainError::Malformed(format!("entry {position} is not an object")));
        };
        let sub = match entry.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= MAX_ACTOR_LEN => sub.as_str(),
            Some(Value::String(_)) => {
                return Err(ChainError::Malformed(format!(
                    "entry {position}'s sub is empty or longer than {MAX_ACTOR_LEN} bytes"
                )));
            }
            _ => {
                return Err(ChainError::Malformed(format!("entry {position} has no string sub")));
            }
        };
        if entry.get("iss").is_some_and(|iss| !iss.is_string()) {
            return Err(ChainError::Malformed(format!("entry {position}'s iss is not a string")));
        }
        actors.push(sub);
        next = entry.get("act");
    }
    Ok(actors)
}

/// `policy.allowed_actors`, compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedActors {
    patterns: Vec<ActorPattern>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ActorPattern {
    text: String,
    prefix: bool,
}

impl ActorPattern {
    fn matches(&self, sub: &str) -> bool {
        if self.prefix {
            sub.starts_with(&self.text)
        } else {
            sub == self.text
        }
    }
}

impl fmt::Display for ActorPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.text, if self.prefix { "*" } else { "" })
    }
}

impl AllowedActors {
    /// Compile `raw`; problems go to `errors` under `at` (`destinations[0].policy.allowed_actors`).
    pub fn compile(raw: &[String], at: &str, errors: &mut Errors) -> Self {
        if raw.len() > MAX_PATTERNS {
            errors.add(at, format!("lists more than {MAX_PATTERNS} patterns"));
        }
        let mut patterns = Vec::with_capacity(raw.len().min(MAX_PATTERNS));
        for (i, p) in raw.iter().enumerate().take(MAX_PATTERNS) {
            let (text, prefix) = match p.strip_suffix('*') {
                Some(text) => (text, true),
                None => (p.as_str(), false),
            };
            if p.is_empty() {
                errors.add(format!("{at}[{i}]"), "must not be empty (`*` allows any actor)");
            } else if text.contains('*') {
                errors.add(
                    format!("{at}[{i}]"),
                    "`*` is allowed only once, at the end (a prefix pattern)",
                );
            } else if p.len() > MAX_ACTOR_LEN {
                errors.add(format!("{at}[{i}]"), format!("is longer than {MAX_ACTOR_LEN} bytes"));
            } else if p.chars().any(char::is_control) {
                errors.add(format!("{at}[{i}]"), "must not contain control characters");
            } else {
                patterns.push(ActorPattern {
                    text: text.to_owned(),
                    prefix,
                });
            }
        }
        Self { patterns }
    }

    /// No pattern configured: any actor (only the chain's depth is judged).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether one actor's `sub` matches a pattern.
    pub fn allows(&self, sub: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(sub))
    }

    /// Judge an `act` claim: read strictly, then every actor, current first, must match. An empty
    /// chain passes (whether one is required is `require_delegation`'s question).
    pub fn check(&self, act: Option<&Value>) -> Result<usize, ChainError> {
        let actors = read(act)?;
        if let Some(position) = actors.iter().position(|sub| !self.allows(sub)) {
            return Err(ChainError::NotAllowed { position });
        }
        Ok(actors.len())
    }

    /// The patterns, comma-separated, for `baton explain`.
    pub fn describe(&self) -> String {
        self.patterns
            .iter()
            .map(ActorPattern::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The patterns, quoted and escaped (`["a, b"]` and `["a", "b"]` differ), for a cache key.
    pub fn key_text(&self) -> String {
        format!(
            "{:?}",
            self.patterns.iter().map(ActorPattern::to_string).collect::<Vec<_>>()
        )
    }
}

/// The refusal of a subject token's own chain (checked before any exchange): a disallowed actor is
/// `actor_not_allowed` (403), an unreadable chain `subject_token_malformed` (401).
pub fn subject_denial(e: &ChainError) -> Denial {
    match e {
        ChainError::NotAllowed { .. } => Denial::new(
            Reason::ActorNotAllowed,
            format!("the subject token's delegation chain: {e}"),
        ),
        ChainError::Malformed(_) => Denial::new(
            Reason::SubjectTokenMalformed,
            format!("the subject token's delegation chain: {e}"),
        ),
    }
}

/// The refusal of an issued token's chain: a disallowed actor is `actor_not_allowed`, an
/// unreadable chain `issued_token_malformed` (the token service misbehaved: 503).
pub fn issued_denial(e: &ChainError) -> Denial {
    match e {
        ChainError::NotAllowed { .. } => Denial::new(
            Reason::ActorNotAllowed,
            format!("the issued token's delegation chain: {e}"),
        ),
        ChainError::Malformed(_) => Denial::new(
            Reason::IssuedTokenMalformed,
            format!("the issued token's delegation chain: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compiled(patterns: &[&str]) -> AllowedActors {
        let mut errors = Errors::default();
        let raw: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        let allowed = AllowedActors::compile(&raw, "allowed_actors", &mut errors);
        assert!(errors.0.is_empty(), "{errors:?}");
        allowed
    }

    #[test]
    fn every_actor_must_match_current_first() {
        let allowed = compiled(&["spiffe://shop/sa/*", "svc-a"]);
        let chain = json!({"sub": "spiffe://shop/sa/b", "act": {"sub": "svc-a"}});
        assert_eq!(allowed.check(Some(&chain)), Ok(2));
        assert_eq!(allowed.check(None), Ok(0), "no chain: nothing to refuse");
        let outer_bad = json!({"sub": "svc-x", "act": {"sub": "svc-a"}});
        assert_eq!(
            allowed.check(Some(&outer_bad)),
            Err(ChainError::NotAllowed { position: 0 })
        );
        let inner_bad = json!({"sub": "svc-a", "act": {"sub": "spiffe://shop/sa/b", "act": {"sub": "gw"}}});
        assert_eq!(
            allowed.check(Some(&inner_bad)),
            Err(ChainError::NotAllowed { position: 2 })
        );
    }

    #[test]
    fn matching_is_exact_or_a_trailing_prefix() {
        let allowed = compiled(&["svc-a", "spiffe://shop/*"]);
        for yes in ["svc-a", "spiffe://shop/", "spiffe://shop/sa/b"] {
            assert!(allowed.allows(yes), "{yes}");
        }
        for no in [
            "svc-A",
            "svc-a ",
            "svc-ab",
            " svc-a",
            "spiffe://shop",
            "SPIFFE://shop/x",
            "spiffe://shoq/x",
        ] {
            assert!(!allowed.allows(no), "{no}");
        }
        assert!(compiled(&["*"]).allows("anyone"));
    }

    #[test]
    fn a_malformed_chain_is_refused_not_skipped() {
        let allowed = compiled(&["*"]);
        for act in [
            json!(null),
            json!("svc-a"),
            json!(["svc-a"]),
            json!({"client_id": "svc-a"}),
            json!({"sub": 7}),
            json!({"sub": ""}),
            json!({"sub": null}),
            json!({"sub": "svc-a", "iss": 7}),
            json!({"sub": "svc-a", "act": null}),
            json!({"sub": "svc-a", "act": {"sub": ["svc-b"]}}),
            json!({"sub": "x".repeat(MAX_ACTOR_LEN + 1)}),
        ] {
            assert!(
                matches!(allowed.check(Some(&act)), Err(ChainError::Malformed(_))),
                "{act}"
            );
        }
        let mut deep = json!({"sub": "last"});
        for _ in 0..MAX_CHAIN {
            deep = json!({"sub": "svc", "act": deep});
        }
        assert!(matches!(read(Some(&deep)), Err(ChainError::Malformed(_))));
        // An issuer and other members are allowed, and not matched.
        let with_iss = json!({"sub": "svc-a", "iss": "https://other.example", "client_id": 3});
        assert_eq!(compiled(&["svc-a"]).check(Some(&with_iss)), Ok(1));
    }

    #[test]
    fn bad_patterns_are_configuration_errors_all_at_once() {
        let mut errors = Errors::default();
        let raw: Vec<String> = ["", "svc-*-a", "**", "ok", "a\u{7}b"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let allowed = AllowedActors::compile(&raw, "p.allowed_actors", &mut errors);
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "p.allowed_actors[0]",
                "p.allowed_actors[1]",
                "p.allowed_actors[2]",
                "p.allowed_actors[4]"
            ]
        );
        assert_eq!(allowed.describe(), "ok");
    }

    #[test]
    fn denials_carry_their_reasons() {
        let not_allowed = ChainError::NotAllowed { position: 1 };
        let malformed = ChainError::Malformed("x".into());
        assert_eq!(subject_denial(&not_allowed).reason, Reason::ActorNotAllowed);
        assert_eq!(subject_denial(&malformed).reason, Reason::SubjectTokenMalformed);
        assert_eq!(issued_denial(&not_allowed).reason, Reason::ActorNotAllowed);
        assert_eq!(issued_denial(&malformed).reason, Reason::IssuedTokenMalformed);
    }

    proptest::proptest! {
        /// An exact pattern matches exactly its own text; a prefix pattern exactly the strings
        /// that start with its text; and a chain passes only if each of its actors would alone.
        #[test]
        fn the_rule_holds_for_any_strings(
            pattern in "[a-z/:*]{1,8}",
            subs in proptest::collection::vec("[a-z/:]{1,8}", 0..5),
        ) {
            let mut errors = Errors::default();
            let allowed = AllowedActors::compile(std::slice::from_ref(&pattern), "p", &mut errors);
            if !errors.0.is_empty() {
                proptest::prop_assert!(pattern.trim_end_matches('*').contains('*') || pattern.matches('*').count() > 1);
                return Ok(());
            }
            for sub in &subs {
                let expected = match pattern.strip_suffix('*') {
                    Some(prefix) => sub.starts_with(prefix),
                    None => *sub == pattern,
                };
                proptest::prop_assert_eq!(allowed.allows(sub), expected);
            }
            let mut act: Option<Value> = None;
            for sub in subs.iter().rev() {
                act = Some(match act {
                    None => json!({"sub": sub}),
                    Some(inner) => json!({"sub": sub, "act": inner}),
                });
            }
            let whole = allowed.check(act.as_ref()).is_ok();
            proptest::prop_assert_eq!(whole, subs.iter().all(|s| allowed.allows(s)));
        }
    }
}
