//! One Security Event Token (RFC 8417) in, the revocations it asks for out: the signature by the
//! transmitter's keys (`verify::KeySource`, the same JWKS code as the subject tokens'), `iss`, `aud`,
//! a fresh `iat`, a `jti` never seen (bounded memory), `typ` `secevent+jwt` if any, and `events`
//! whose CAEP/RISC members name a subject (RFC 9493) Baton can match. It never revokes anything
//! from a SET that fails a check, and never keeps or prints a SET.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use url::Url;

use super::Settings;
use crate::metrics::SsfEventLabels;
use crate::revocation::{Selector, StoreError};
use crate::verify::{JwksRefreshes, KeySource};
use baton_decide::reason::Reason;

/// The longest SET read (push body, or one SET of a poll answer).
pub const MAX_SET_BYTES: usize = 16 * 1024;
/// The longest `jti`, issuer, subject, session id or e-mail address a SET may carry.
const MAX_VALUE_LEN: usize = crate::jwt::MAX_CLAIM_LEN;
/// The most events one SET may carry (SSF sends one).
const MAX_EVENTS: usize = 16;

/// The counter of SSF events, from `telemetry::Metrics::ssf_events`.
pub type SsfEvents =
    prometheus_client::metrics::family::Family<SsfEventLabels, prometheus_client::metrics::counter::Counter>;

// === Events ===

/// Whom an event is about, when its subject names both a user and a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// The session when the subject names one (else the user).
    Session,
    /// The account: the user when the subject names one (else the session).
    Account,
}

/// An event type Baton acts on: its URI, its short name (metric label), the audit record's
/// `event`, and what it ends.
struct EventType {
    uri: &'static str,
    name: &'static str,
    audit: &'static str,
    scope: Scope,
}

const EVENTS: [EventType; 6] = [
    EventType {
        uri: "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
        name: "session-revoked",
        audit: "ssf.session-revoked",
        scope: Scope::Session,
    },
    EventType {
        uri: "https://schemas.openid.net/secevent/caep/event-type/token-claims-change",
        name: "token-claims-change",
        audit: "ssf.token-claims-change",
        scope: Scope::Session,
    },
    EventType {
        uri: "https://schemas.openid.net/secevent/caep/event-type/credential-change",
        name: "credential-change",
        audit: "ssf.credential-change",
        scope: Scope::Account,
    },
    EventType {
        uri: "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
        name: "account-disabled",
        audit: "ssf.account-disabled",
        scope: Scope::Account,
    },
    EventType {
        uri: "https://schemas.openid.net/secevent/risc/event-type/account-purged",
        name: "account-purged",
        audit: "ssf.account-purged",
        scope: Scope::Account,
    },
    EventType {
        uri: "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required",
        name: "account-credential-change-required",
        audit: "ssf.account-credential-change-required",
        scope: Scope::Account,
    },
];

/// The event URIs Baton asks for when it creates a stream.
pub fn supported_events() -> impl Iterator<Item = &'static str> {
    EVENTS.iter().map(|e| e.uri)
}

/// What one event of a verified SET asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// The short name (`session-revoked`, ...), or `unknown`.
    pub event: &'static str,
    /// The audit record's `event` (`ssf.session-revoked`, ...).
    pub audit: &'static str,
    /// `None`: acknowledged and ignored (an event type Baton does not act on).
    pub selector: Option<Selector>,
}

// === Refusals ===

/// Why a SET was not accepted. `err` is the RFC 8935 / 8936 error code; `outcome` the metric's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{err}: {description}")]
pub struct SetError {
    pub err: &'static str,
    pub outcome: &'static str,
    pub description: String,
    /// Not the SET's fault (keys unreachable, memory full): push answers 503, poll neither acks
    /// nor refuses it, so it comes again.
    pub retry: bool,
}

fn refuse(err: &'static str, description: impl Into<String>) -> SetError {
    SetError {
        err,
        outcome: err,
        description: description.into(),
        retry: false,
    }
}

fn invalid(description: impl Into<String>) -> SetError {
    refuse("invalid_request", description)
}

impl SetError {
    /// A `jti` already received: the events were applied once, and are not again.
    pub fn is_replay(&self) -> bool {
        self.outcome == "replayed"
    }
}

// === The receiver ===

/// The `jti`s received, each until its SET would be too old anyway.
#[derive(Debug, Default)]
struct Seen {
    until: HashMap<Box<str>, u64>,
}

/// The SSF receiver of one configuration; its `jti` memory and created stream are carried over a
/// reload (`succeed`).
#[derive(Debug)]
pub struct Receiver {
    settings: Settings,
    keys: KeySource,
    http: reqwest::Client,
    seen: Arc<Mutex<Seen>>,
    /// The transmitter's SSF configuration, read once.
    configuration: tokio::sync::OnceCell<super::poll::Configuration>,
    /// The poll endpoint: configured, or created once.
    pub(super) stream: Arc<tokio::sync::OnceCell<Url>>,
    /// The id of the stream Baton created (none for a configured one), to delete it on shutdown.
    pub(super) stream_id: Arc<std::sync::OnceLock<String>>,
    events: SsfEvents,
    polls: JwksRefreshes,
}

impl Receiver {
    /// `refreshes` counts the transmitter's JWKS fetches, `events` the events, `polls` the polls.
    pub fn new(
        settings: Settings,
        refreshes: JwksRefreshes,
        events: SsfEvents,
        polls: JwksRefreshes,
    ) -> Result<Self, String> {
        let keys = KeySource::new(settings.signer(), refreshes)?;
        let timeout = settings.poll.as_ref().map_or(Duration::from_secs(10), |p| p.timeout);
        let http = crate::http::http_client(timeout).map_err(|e| format!("SSF client: {e}"))?;
        let stream = tokio::sync::OnceCell::new_with(settings.poll.as_ref().and_then(|p| p.endpoint.clone()));
        // Present at zero from the start when Baton polls, so an alert sees them before a failure.
        if settings.poll.is_some() {
            for outcome in ["ok", "error"] {
                let _ = polls.get_or_create(&crate::metrics::OutcomeLabels { outcome });
            }
        }
        Ok(Self {
            settings,
            keys,
            http,
            seen: Arc::default(),
            configuration: tokio::sync::OnceCell::new(),
            stream: Arc::new(stream),
            stream_id: Arc::default(),
            events,
            polls,
        })
    }

    /// Keep `previous`'s `jti` memory (a replay across a reload is still one), and its created
    /// stream when the transmitter, the audience and the poll settings are unchanged.
    pub fn succeed(mut self, previous: &Receiver) -> Self {
        self.seen = previous.seen.clone();
        let same = previous.settings.issuer == self.settings.issuer
            && previous.settings.audience == self.settings.audience
            && previous.settings.poll == self.settings.poll;
        if same {
            self.stream = previous.stream.clone();
            self.stream_id = previous.stream_id.clone();
        }
        self
    }

    /// Refresh the transmitter's keys in the background (`verify::KeySource::spawn_refresh`).
    pub fn spawn_key_refresh(&self) {
        self.keys.spawn_refresh();
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(super) fn configuration_cell(&self) -> &tokio::sync::OnceCell<super::poll::Configuration> {
        &self.configuration
    }

    pub(super) fn keys(&self) -> &KeySource {
        &self.keys
    }

    /// Count one event (or one refused SET, `event` `none`).
    pub fn count(&self, event: &'static str, outcome: &'static str) {
        self.events.get_or_create(&SsfEventLabels { event, outcome }).inc();
    }

    /// Count one poll request (`ok` or `error`).
    pub(super) fn count_poll(&self, outcome: &'static str) {
        self.polls
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
    }

    /// Verify one SET and read what it asks for. The `jti` is remembered when it is accepted; a
    /// caller that cannot apply it (the revocation store is full) calls `forget` so it may come again.
    pub async fn receive(&self, set: &str) -> Result<(String, Vec<Signal>), SetError> {
        let received = self.check(set).await;
        if let Err(e) = &received {
            self.count("none", e.outcome);
        }
        received
    }

    async fn check(&self, set: &str) -> Result<(String, Vec<Signal>), SetError> {
        if set.len() > MAX_SET_BYTES {
            return Err(invalid(format!("the SET is longer than {MAX_SET_BYTES} bytes")));
        }
        let header = header(set)?;
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some(alg) if alg.eq_ignore_ascii_case("none") => {
                return Err(refuse("invalid_key", "the SET is not signed (alg none)"));
            }
            Some(alg) => alg
                .parse::<Algorithm>()
                .ok()
                .filter(|a| self.settings.algorithms.contains(a))
                .ok_or_else(|| refuse("invalid_key", "the SET's algorithm is not allowed"))?,
            None => return Err(invalid("the SET's header has no alg")),
        };
        crate::jwt::check_crit(&header).map_err(|_| invalid("the SET's header marks a parameter as critical"))?;
        match header.get("typ") {
            None => {}
            Some(Value::String(typ))
                if typ.eq_ignore_ascii_case("secevent+jwt") || typ.eq_ignore_ascii_case("application/secevent+jwt") => {
            }
            Some(_) => return Err(invalid("the JWT's typ is not secevent+jwt: not a SET")),
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(invalid("the SET's kid is not a string")),
        };
        // The issuer is judged before any key is fetched for it.
        match crate::jwt::Unverified::parse(set) {
            Ok(Some(claims)) if claims.issuer() == Some(self.settings.issuer.as_str()) => {}
            Ok(Some(_)) => return Err(refuse("invalid_issuer", "the SET's iss is not the transmitter")),
            _ => return Err(invalid("the SET is not a JWT with a JSON object payload")),
        }
        self.transmitter_keys_known().await?;
        let keys = self.keys.keys(kid, alg).await.map_err(|reason| match reason {
            Reason::IssuerKeysUnavailable => SetError {
                retry: true,
                ..refuse("invalid_key", "the transmitter's keys could not be fetched")
            },
            _ => refuse("invalid_key", "the SET's algorithm is not allowed"),
        })?;
        let mut validation = Validation::new(alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["iss", "aud"]);
        let mut last = refuse("invalid_key", "no key of the transmitter matches the SET's kid");
        let mut claims = None;
        for key in &keys {
            use jsonwebtoken::errors::ErrorKind;
            match jsonwebtoken::decode::<Map<String, Value>>(set, key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidAudience => {
                            refuse("invalid_audience", "the SET's aud is not this stream's audience")
                        }
                        ErrorKind::InvalidIssuer => refuse("invalid_issuer", "the SET's iss is not the transmitter"),
                        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                            refuse("invalid_key", "the SET's signature is invalid")
                        }
                        ErrorKind::ExpiredSignature => invalid("the SET has expired (exp)"),
                        ErrorKind::ImmatureSignature => invalid("the SET is not valid yet (nbf)"),
                        _ => invalid("the SET's claims cannot be read"),
                    };
                    // Only a signature failure may be another key's; the claims are the same.
                    if last.err != "invalid_key" {
                        return Err(last);
                    }
                }
            }
        }
        let claims = claims.ok_or(last)?;
        let now = crate::clock::unix_now();
        let iat = claims
            .get("iat")
            .ok_or_else(|| invalid("the SET has no iat"))
            .and_then(|v| {
                crate::jwt::numeric_date(v, "iat").map_err(|_| invalid("the SET's iat is not a NumericDate"))
            })?
            .floor() as i64;
        let (now_i, max_age, leeway) = (
            i64::try_from(now).unwrap_or(i64::MAX),
            i64::try_from(self.settings.max_age.as_secs()).unwrap_or(i64::MAX),
            i64::try_from(self.settings.leeway.as_secs()).unwrap_or(i64::MAX),
        );
        if iat > now_i.saturating_add(leeway) {
            return Err(invalid("the SET's iat is in the future"));
        }
        if iat < now_i.saturating_sub(max_age) {
            return Err(invalid("the SET is older than ssf.max_age (iat)"));
        }
        let jti = match claims.get("jti") {
            Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_VALUE_LEN => jti.clone(),
            _ => return Err(invalid("the SET has no jti (a non-empty string of at most 256 bytes)")),
        };
        let signals = signals(&claims, self.settings.emails)?;
        self.remember(&jti, now)?;
        // Those it acts on are counted by whoever applies them (revoked, or full).
        for signal in signals.iter().filter(|s| s.selector.is_none()) {
            self.count(signal.event, "ignored");
        }
        Ok((jti, signals))
    }

    /// The keys' URL, from the transmitter's SSF configuration when not configured.
    async fn transmitter_keys_known(&self) -> Result<(), SetError> {
        if self.settings.jwks_uri.is_some() {
            return Ok(());
        }
        let configuration = super::poll::configuration(self).await.map_err(|e| {
            tracing::warn!(error = %e, "the SSF transmitter's configuration could not be read");
            SetError {
                retry: true,
                ..refuse("invalid_key", "the transmitter's keys could not be fetched")
            }
        })?;
        self.keys.set_jwks_uri(configuration.jwks_uri.clone());
        Ok(())
    }

    /// Remember `jti` until a SET with it would be too old anyway; refused when it was seen, or
    /// when `max_jtis` are remembered (after forgetting the old ones).
    fn remember(&self, jti: &str, now: u64) -> Result<(), SetError> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.until.get(jti).is_some_and(|until| *until >= now) {
            return Err(SetError {
                outcome: "replayed",
                ..invalid("this SET (jti) was received before")
            });
        }
        if seen.until.len() >= self.settings.max_jtis {
            seen.until.retain(|_, until| *until >= now);
            if seen.until.len() >= self.settings.max_jtis {
                return Err(SetError {
                    outcome: "full",
                    retry: true,
                    ..invalid("too many SETs at once: try again later")
                });
            }
        }
        let until = now + self.settings.max_age.as_secs() + self.settings.leeway.as_secs();
        seen.until.insert(Box::from(jti), until);
        Ok(())
    }

    /// Hand each selector of an accepted SET to `revoke` (`authz::Authz::revoke`), counting each
    /// event. False when one could not be remembered (the revocation store is full): the `jti` is
    /// forgotten then, so the SET may come again (push answers 503, poll does not acknowledge it).
    pub fn apply(
        &self,
        jti: &str,
        signals: &[Signal],
        revoke: impl Fn(&'static str, &Selector) -> Result<usize, StoreError>,
    ) -> bool {
        let mut applied = true;
        for signal in signals {
            let Some(selector) = &signal.selector else { continue };
            match revoke(signal.audit, selector) {
                Ok(purged) => {
                    tracing::info!(
                        event = signal.event,
                        kind = selector.kind(),
                        jti,
                        purged,
                        "SSF event applied"
                    );
                    self.count(signal.event, "revoked");
                }
                Err(e) => {
                    tracing::warn!(event = signal.event, jti, error = %e, "SSF event not applied");
                    self.count(signal.event, "full");
                    applied = false;
                }
            }
        }
        if !applied {
            self.forget(jti);
        }
        applied
    }

    /// Let `jti` come again (its events could not be applied).
    fn forget(&self, jti: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.until.remove(jti);
    }
}

/// The JOSE header of a compact JWS, as a JSON object.
fn header(set: &str) -> Result<Map<String, Value>, SetError> {
    use base64::Engine as _;
    let mut parts = set.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("the SET is not a compact JWS (three parts)"));
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| invalid("the SET's header is not base64url"))?;
    match serde_json::from_slice(&json) {
        Ok(Value::Object(header)) => Ok(header),
        _ => Err(invalid("the SET's header is not a JSON object")),
    }
}

// === Events and subjects ===

/// Every event of a verified SET's claims, each with what it revokes. Any event Baton acts on that
/// names no subject it can match refuses the whole SET (nothing is applied); an `email` subject is
/// one only when subject tokens' claims are verified (`emails`).
fn signals(claims: &Map<String, Value>, emails: bool) -> Result<Vec<Signal>, SetError> {
    let Some(Value::Object(events)) = claims.get("events") else {
        return Err(invalid("the SET has no events object"));
    };
    if events.is_empty() || events.len() > MAX_EVENTS {
        return Err(invalid(format!("the SET must carry 1 to {MAX_EVENTS} events")));
    }
    let top = claims.get("sub_id");
    let mut signals = Vec::with_capacity(events.len());
    for (uri, event) in events {
        let Value::Object(event) = event else {
            return Err(invalid("an event of the SET is not a JSON object"));
        };
        let Some(known) = EVENTS.iter().find(|e| e.uri == uri) else {
            // Another CAEP/RISC event, SSF's own (verification, stream-updated), or anyone's.
            signals.push(Signal {
                event: "unknown",
                audit: "ssf.unknown",
                selector: None,
            });
            continue;
        };
        // The legacy form names the subject inside the event; SSF 1.0 in `sub_id`.
        let subject = event
            .get("subject")
            .or(top)
            .ok_or_else(|| invalid(format!("the {} event names no subject (sub_id)", known.name)))?;
        let selector = selector(subject, known.scope)?;
        if !emails && matches!(selector, Selector::Email { .. }) {
            return Err(SetError {
                outcome: "unsupported_subject",
                ..invalid("an email subject needs verified claims to match (trusted_issuers or introspection)")
            });
        }
        signals.push(Signal {
            event: known.name,
            audit: known.audit,
            selector: Some(selector),
        });
    }
    Ok(signals)
}

/// An RFC 9493 subject identifier as a revocation selector.
fn selector(subject: &Value, scope: Scope) -> Result<Selector, SetError> {
    let Value::Object(subject) = subject else {
        return Err(invalid("the subject identifier is not a JSON object"));
    };
    match format(subject)? {
        "complex" => {
            let user = subject.get("user").map(|u| simple(u, "user")).transpose()?;
            let session = subject.get("session").map(session).transpose()?;
            match (scope, user, session) {
                (Scope::Session, _, Some(session)) | (Scope::Account, None, Some(session)) => Ok(session),
                (_, Some(user), _) => Ok(user),
                (_, None, None) => Err(SetError {
                    outcome: "unsupported_subject",
                    ..invalid("the complex subject names neither a user nor a session")
                }),
            }
        }
        _ => simple(&Value::Object(subject.clone()), "subject"),
    }
}

/// `iss_sub`, `email` or `opaque`, for a user.
fn simple(subject: &Value, at: &str) -> Result<Selector, SetError> {
    let Value::Object(subject) = subject else {
        return Err(invalid(format!("the {at} identifier is not a JSON object")));
    };
    match format(subject)? {
        "iss_sub" => Ok(Selector::Subject {
            issuer: Some(text(subject, "iss")?),
            sub: text(subject, "sub")?,
        }),
        "email" => Ok(Selector::Email {
            email: text(subject, "email")?.to_ascii_lowercase(),
        }),
        // An opaque id names a `sub` of whichever issuer: matched as a subject without issuer.
        "opaque" => Ok(Selector::Subject {
            issuer: None,
            sub: text(subject, "id")?,
        }),
        other => Err(unsupported(at, other)),
    }
}

/// A complex subject's `session`: an `opaque` id is the `sid`.
fn session(subject: &Value) -> Result<Selector, SetError> {
    let Value::Object(subject) = subject else {
        return Err(invalid("the session identifier is not a JSON object"));
    };
    match format(subject)? {
        "opaque" => Ok(Selector::Session {
            sid: text(subject, "id")?,
        }),
        other => Err(unsupported("session", other)),
    }
}

/// RFC 9493's `format` (earlier CAEP drafts: `subject_type`).
fn format(subject: &Map<String, Value>) -> Result<&str, SetError> {
    subject
        .get("format")
        .or_else(|| subject.get("subject_type"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("the subject identifier has no format"))
}

fn text(subject: &Map<String, Value>, member: &str) -> Result<String, SetError> {
    match subject.get(member) {
        Some(Value::String(v)) if !v.is_empty() && v.len() <= MAX_VALUE_LEN => Ok(v.clone()),
        _ => Err(invalid(format!(
            "the subject identifier's `{member}` is not a non-empty string of at most {MAX_VALUE_LEN} bytes"
        ))),
    }
}

fn unsupported(at: &str, format: &str) -> SetError {
    // The format is named only when it is one of RFC 9493's: nothing the sender chose is echoed.
    let known = [
        "account",
        "aliases",
        "did",
        "ip_addresses",
        "phone_number",
        "uri",
        "iss_sub",
        "email",
        "opaque",
        "complex",
    ];
    let shown = if known.contains(&format) { format } else { "another" };
    SetError {
        outcome: "unsupported_subject",
        ..invalid(format!(
            "the {at} identifier's format ({shown}) is not one Baton can match: iss_sub, email, opaque, complex"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn event(name: &str) -> String {
        EVENTS.iter().find(|e| e.name == name).expect("event").uri.to_owned()
    }

    #[test]
    fn each_subject_format_maps_to_its_selector() {
        let one = |subject: Value, name: &str| {
            let mut events = Map::new();
            events.insert(event(name), json!({}));
            signals(&claims(json!({"sub_id": subject, "events": events})), true).map(|s| s[0].selector.clone())
        };
        assert_eq!(
            one(
                json!({"format":"iss_sub","iss":"https://idp","sub":"alice"}),
                "account-disabled"
            ),
            Ok(Some(Selector::Subject {
                issuer: Some("https://idp".into()),
                sub: "alice".into()
            }))
        );
        assert_eq!(
            one(json!({"format":"email","email":"Alice@Example.com"}), "account-purged"),
            Ok(Some(Selector::Email {
                email: "alice@example.com".into()
            }))
        );
        assert_eq!(
            one(json!({"format":"opaque","id":"alice"}), "credential-change"),
            Ok(Some(Selector::Subject {
                issuer: None,
                sub: "alice".into()
            }))
        );
        let complex = json!({"format":"complex","user":{"format":"opaque","id":"alice"},
            "session":{"format":"opaque","id":"s-1"}});
        assert_eq!(
            one(complex.clone(), "session-revoked"),
            Ok(Some(Selector::Session { sid: "s-1".into() })),
            "a session event ends the session"
        );
        assert_eq!(
            one(complex, "account-disabled"),
            Ok(Some(Selector::Subject {
                issuer: None,
                sub: "alice".into()
            })),
            "an account event ends the user"
        );
        assert_eq!(
            one(
                json!({"format":"complex","session":{"format":"opaque","id":"s-1"}}),
                "account-disabled"
            ),
            Ok(Some(Selector::Session { sid: "s-1".into() }))
        );
        for (subject, outcome) in [
            (
                json!({"format":"phone_number","phone_number":"+1"}),
                "unsupported_subject",
            ),
            (json!({"format":"made-up"}), "unsupported_subject"),
            (
                json!({"format":"complex","tenant":{"format":"opaque","id":"t"}}),
                "unsupported_subject",
            ),
            (json!({"format":"iss_sub","sub":"alice"}), "invalid_request"),
            (json!({"format":"opaque","id":""}), "invalid_request"),
            (json!({"format":"opaque","id":"x".repeat(300)}), "invalid_request"),
            (json!({"id":"alice"}), "invalid_request"),
            (json!("alice"), "invalid_request"),
        ] {
            assert_eq!(
                one(subject.clone(), "account-disabled").map_err(|e| e.outcome),
                Err(outcome),
                "{subject}"
            );
        }
    }

    fn receiver(max_jtis: usize) -> Receiver {
        let settings = Settings {
            issuer: "https://tx.example".into(),
            jwks_uri: None,
            algorithms: vec![Algorithm::ES256],
            leeway: Duration::from_secs(30),
            audience: "https://baton.example/ssf".into(),
            max_age: Duration::from_secs(60),
            max_jtis,
            push_secret: None,
            poll: None,
            emails: true,
        };
        Receiver::new(settings, Default::default(), Default::default(), Default::default()).expect("receiver")
    }

    #[test]
    fn jtis_are_remembered_bounded_and_across_a_reload() {
        const NOW: u64 = 1_800_000_000;
        let first = receiver(2);
        first.remember("a", NOW).expect("new");
        assert!(first.remember("a", NOW + 1).expect_err("again").is_replay());
        first.remember("b", NOW).expect("new");
        let full = first.remember("c", NOW).expect_err("full");
        assert_eq!((full.outcome, full.retry), ("full", true), "full: comes again later");
        // Remembered for max_age + leeway, then forgotten, which makes room.
        first.remember("c", NOW + 91).expect("a and b forgotten");
        first
            .remember("a", NOW + 91)
            .expect("a forgotten: its SET is too old to pass anyway");
        let applied = first.apply("c", &[], |_, _| Ok(0));
        assert!(applied);
        let refused = first.apply(
            "c",
            &[Signal {
                event: "account-disabled",
                audit: "ssf.account-disabled",
                selector: Some(Selector::All),
            }],
            |_, _| Err(StoreError::Full(1)),
        );
        assert!(!refused);
        first
            .remember("c", NOW + 91)
            .expect("not applied: forgotten, so it may come again");
        let reloaded = receiver(2).succeed(&first);
        assert!(
            reloaded
                .remember("a", NOW + 92)
                .expect_err("seen before the reload")
                .is_replay(),
            "a reload keeps the jtis"
        );
    }

    #[test]
    fn the_legacy_subject_inside_the_event_and_unknown_events() {
        let mut events = Map::new();
        events.insert(
            event("session-revoked"),
            json!({"subject": {"subject_type":"opaque","id":"alice"}}),
        );
        events.insert(
            "https://schemas.openid.net/secevent/ssf/event-type/verification".into(),
            json!({"state":"x"}),
        );
        let got = signals(&claims(json!({"events": events})), true).expect("read");
        assert_eq!(got.len(), 2);
        let unknown = got.iter().find(|s| s.event == "unknown").expect("unknown");
        assert_eq!(unknown.selector, None, "acknowledged and ignored");
        let known = got.iter().find(|s| s.event == "session-revoked").expect("known");
        assert_eq!(
            known.selector,
            Some(Selector::Subject {
                issuer: None,
                sub: "alice".into()
            })
        );
        for bad in [
            json!({}),
            json!({"events": {}}),
            json!({"events": []}),
            json!({"events": {(event("account-disabled")): {}}}),
            json!({"events": {(event("account-disabled")): "x"}}),
        ] {
            assert!(signals(&claims(bad.clone()), true).is_err(), "{bad}");
        }
        let by_email = json!({"sub_id": {"format":"email","email":"a@example.com"},
            "events": {(event("account-disabled")): {}}});
        assert!(signals(&claims(by_email.clone()), true).is_ok());
        assert_eq!(
            signals(&claims(by_email), false).map_err(|e| e.outcome),
            Err("unsupported_subject"),
            "without verified claims an e-mail would be remembered and never matched"
        );
    }
}
