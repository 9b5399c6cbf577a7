//! The workload as actor (RFC 8693 section 4.1): Baton presents the workload's own token as
//! `actor_token`, so the issued token carries the delegation chain in `act`. The token is read from
//! a file (a Kubernetes projected service-account token or a SPIFFE JWT-SVID) and re-read when the
//! file changes, since kubelet rotates it; or Baton obtains it from the destination's token service
//! with client_credentials and keeps it until shortly before it expires. This module also reads the
//! chain back out of an issued token (`act`, nested for longer chains). It never logs a token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::clock::unix_now;
use crate::credentials::Watched;
use crate::exchange::TokenService;
use crate::files::read_bounded;
use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use crate::secret::Secret;
use baton_decide::reason::{Denial, Reason};
use baton_decide::settings::Errors;

/// `actor:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawActor {
    pub token_file: Option<PathBuf>,
    /// Instead of a file: Baton's own token from each destination's token service.
    pub client_credentials: Option<RawClientCredentials>,
    /// Default `urn:ietf:params:oauth:token-type:jwt` for a file, `...:access_token` otherwise.
    pub token_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClientCredentials {
    pub audience: Option<String>,
    pub scope: Option<String>,
}

impl RawActor {
    /// The actor as configured; a token file is read now, so a missing or unreadable file is a
    /// configuration error at load, not a refusal on the first request.
    pub fn validate(self, errors: &mut Errors) -> Option<ActorToken> {
        let (source, default_type) = match (self.token_file, self.client_credentials) {
            (Some(path), None) => match Watched::new(vec![path.clone()], move || read_token(&path)) {
                Ok(watched) => (Source::File(watched), TOKEN_TYPE_JWT),
                Err(e) => {
                    errors.add("actor.token_file", e);
                    return None;
                }
            },
            (None, Some(cc)) => (
                Source::ClientCredentials {
                    audience: cc.audience,
                    scope: cc.scope,
                    per_service: std::sync::Mutex::default(),
                },
                TOKEN_TYPE_ACCESS_TOKEN,
            ),
            _ => {
                errors.add(
                    "actor",
                    "set one of `token_file` (e.g. a projected service-account token) or `client_credentials`",
                );
                return None;
            }
        };
        let token_type = self.token_type.unwrap_or_else(|| default_type.to_owned());
        if !token_type.starts_with("urn:") {
            errors.add("actor.token_type", "must be a token type URN");
        }
        Some(ActorToken { source, token_type })
    }
}

/// The workload's own token.
#[derive(Debug)]
pub struct ActorToken {
    source: Source,
    pub token_type: String,
}

/// The workload's own token, with its `sub` read once when it is loaded: what the `act` claim of a
/// token issued with it must name (`crate::issued`).
#[derive(Debug)]
pub struct Actor {
    pub token: Secret,
    /// `sub` of the token when it is a JWT; `None` for an opaque token.
    pub sub: Option<Box<str>>,
}

impl Actor {
    pub fn new(token: Secret) -> Self {
        let sub = crate::jwt::Unverified::read(token.expose()).and_then(|claims| claims.sub?.as_str().map(Box::from));
        Self { token, sub }
    }
}

/// One token service's client_credentials token: (expires at, token), behind its own lock, so a
/// slow service holds up only the requests that need its token.
type Slot = Arc<tokio::sync::Mutex<Option<(u64, Arc<Actor>)>>>;

#[derive(Debug)]
enum Source {
    /// A file that may be replaced at any time (the kubelet rotates it): re-read when it changes,
    /// the last good token kept if a re-read fails, like every credential file.
    File(Watched<Arc<Actor>>),
    /// From each token service by client_credentials. One slot per service a destination names
    /// (so bounded by the configuration).
    ClientCredentials {
        audience: Option<String>,
        scope: Option<String>,
        per_service: std::sync::Mutex<HashMap<String, Slot>>,
    },
}

impl ActorToken {
    /// The token to present to `service`.
    pub async fn token(&self, service: &TokenService) -> Result<Arc<Actor>, Denial> {
        match &self.source {
            Source::File(watched) => Ok(watched.get().await),
            Source::ClientCredentials {
                audience,
                scope,
                per_service,
            } => {
                let slot = per_service
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(service.name().to_owned())
                    .or_default()
                    .clone();
                // Held across the call: concurrent requests for the same service wait for one.
                let mut cached = slot.lock().await;
                let now = unix_now();
                if let Some((expires_at, token)) = cached.as_ref()
                    && *expires_at > now
                {
                    return Ok(token.clone());
                }
                let issued = service
                    .client_credentials(audience.as_deref(), scope.as_deref())
                    .await
                    .map_err(|e| {
                        tracing::warn!(token_service = service.name(), error = %e, "cannot obtain the actor token");
                        match e {
                            // The same fast 503 as the exchange it was for would get.
                            crate::exchange::ExchangeError::CircuitOpen(_) => Denial::from(&e),
                            _ => Denial::new(
                                Reason::ActorTokenUnavailable,
                                "the workload's own token cannot be obtained",
                            ),
                        }
                    })?;
                // Kept until 30 s before it expires (5 minutes when the service does not say).
                let lifetime = issued.expires_in.unwrap_or(330).saturating_sub(30);
                let token = Arc::new(Actor::new(issued.access_token));
                tracing::info!(token_service = service.name(), actor = %token.token.fingerprint(), "actor token obtained");
                *cached = Some((now + lifetime, token.clone()));
                Ok(token)
            }
        }
    }
}

/// An actor token file: UTF-8 text, at most 64 KiB, not empty once trimmed. The error names the
/// file, never its content.
fn read_token(path: &Path) -> Result<Arc<Actor>, String> {
    const MAX_BYTES: u64 = 64 * 1024;
    let bytes = read_bounded(path, MAX_BYTES)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    let token = Arc::new(Actor::new(Secret::new(text)));
    tracing::info!(path = %path.display(), actor = %token.token.fingerprint(), "actor token loaded");
    Ok(token)
}

/// The actors of a delegation chain, outermost (current) first, from an `act` claim; deeper
/// nesting than `limit` is cut off (the depth is still counted up to it).
pub fn chain(claims_act: Option<&Value>, limit: usize) -> Vec<String> {
    let mut actors = Vec::new();
    let mut act = claims_act;
    while let Some(Value::Object(entry)) = act {
        if actors.len() == limit {
            break;
        }
        actors.push(entry.get("sub").and_then(Value::as_str).unwrap_or("?").to_owned());
        act = entry.get("act");
    }
    actors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_read_outermost_first_and_bounded() {
        let act = serde_json::json!({"sub": "svc-b", "act": {"sub": "svc-a", "act": {"sub": "gateway"}}});
        assert_eq!(chain(Some(&act), 10), ["svc-b", "svc-a", "gateway"]);
        assert_eq!(chain(Some(&act), 2), ["svc-b", "svc-a"]);
        assert!(chain(None, 10).is_empty());
        assert!(chain(Some(&serde_json::json!("not an object")), 10).is_empty());
    }

    /// Write `text` to `path` with a modification time `later_by` from now, so a rewrite within the
    /// file system's timestamp granularity still shows.
    fn write(path: &Path, text: &str, later_by: u64) {
        std::fs::write(path, text).expect("write");
        let at = std::time::SystemTime::now() + std::time::Duration::from_secs(later_by);
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(at))
            .expect("touch");
    }

    fn from_file(path: &Path) -> Result<ActorToken, Errors> {
        let mut errors = Errors::default();
        let raw = RawActor {
            token_file: Some(path.to_owned()),
            ..Default::default()
        };
        raw.validate(&mut errors).ok_or(errors)
    }

    #[tokio::test]
    async fn a_rotated_file_is_read_again_and_a_vanished_one_keeps_the_last_token() {
        let dir = std::env::temp_dir().join(format!("baton-actor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        write(&path, "first-token\n", 0);
        let actor = from_file(&path).expect("valid");
        let Source::File(watched) = &actor.source else {
            panic!("a file source")
        };
        assert_eq!(watched.get().await.token.expose(), "first-token");
        write(&path, "second-token", 1);
        assert_eq!(watched.get().await.token.expose(), "second-token");
        // The kubelet swaps the file by a rename: a moment without it is not an outage.
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(watched.get().await.token.expose(), "second-token");
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    /// Before: the file was first read on the first request that needed it, so a wrong path was a
    /// refusal per request instead of an error at load.
    #[test]
    fn a_missing_or_empty_file_is_a_configuration_error() {
        let dir = std::env::temp_dir().join(format!("baton-actor-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let errors = from_file(&dir.join("absent")).expect_err("missing");
        assert_eq!(errors.0[0].path, "actor.token_file", "{errors:?}");
        let empty = dir.join("empty");
        write(&empty, " \n", 0);
        let errors = from_file(&empty).expect_err("empty");
        assert!(errors.0[0].message.contains("empty"), "{errors:?}");
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    /// Before: one lock over every token service's client_credentials token was held across the
    /// call, so a token service that never answers stalled the actor token of all the others.
    #[tokio::test]
    async fn a_silent_token_service_does_not_hold_up_the_others() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let silent_port = silent.local_addr().expect("addr").port();
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let answering = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let answering_port = answering.local_addr().expect("addr").port();
        let _answering = tokio::spawn(async move {
            let body = r#"{"access_token":"own-token","token_type":"Bearer","expires_in":300}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            while let Ok((mut socket, _)) = answering.accept().await {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        let service = |port: u16| {
            format!(
                "  s{port}:\n    token_endpoint: http://127.0.0.1:{port}/token\n    client_id: c\n    auth: {{method: none}}\n    retries: 0\n    timeout: 60s\n"
            )
        };
        let config = crate::config::Config::from_yaml(&format!(
            "actor:\n  client_credentials: {{}}\ntoken_services:\n{}{}",
            service(silent_port),
            service(answering_port)
        ))
        .expect("config");
        let services: Vec<_> = config
            .token_services
            .iter()
            .map(|s| Arc::new(TokenService::new(s).expect("service")))
            .collect();
        let (silent_service, answering_service) = if services[0].name() == format!("s{silent_port}") {
            (services[0].clone(), services[1].clone())
        } else {
            (services[1].clone(), services[0].clone())
        };
        let actor = Arc::new(config.actor.expect("actor"));
        let waiting = {
            let actor = actor.clone();
            tokio::spawn(async move { actor.token(&silent_service).await.map(|_| ()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let own = tokio::time::timeout(std::time::Duration::from_secs(20), actor.token(&answering_service))
            .await
            .expect("not held up by the silent service")
            .expect("token");
        assert_eq!(own.token.expose(), "own-token");
        assert!(!waiting.is_finished(), "the silent service is still being waited for");
        waiting.abort();
    }
}
