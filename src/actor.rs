//! The workload as actor (RFC 8693 section 4.1): Baton presents the workload's own token as
//! `actor_token`, so the issued token carries the delegation chain in `act`. The token is read from
//! a file (a Kubernetes projected service-account token or a SPIFFE JWT-SVID) and re-read when the
//! file changes, since kubelet rotates it; or Baton obtains it from the destination's token service
//! with client_credentials and keeps it until shortly before it expires. This module also reads the
//! chain back out of an issued token (`act`, nested for longer chains). It never logs a token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncReadExt as _;

use crate::clock::unix_now;
use crate::exchange::TokenService;
use crate::oauth::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use crate::reason::{Denial, Reason};
use crate::secret::Secret;
use crate::settings::Errors;

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
    pub fn validate(self, errors: &mut Errors) -> Option<ActorToken> {
        let (source, default_type) = match (self.token_file, self.client_credentials) {
            (Some(path), None) => (
                Source::File {
                    path,
                    current: tokio::sync::Mutex::new(None),
                },
                TOKEN_TYPE_JWT,
            ),
            (None, Some(cc)) => {
                let cached = tokio::sync::Mutex::new(HashMap::new());
                (
                    Source::ClientCredentials {
                        audience: cc.audience,
                        scope: cc.scope,
                        cached,
                    },
                    TOKEN_TYPE_ACCESS_TOKEN,
                )
            }
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

type FileState = tokio::sync::Mutex<Option<(SystemTime, Arc<Actor>)>>;

#[derive(Debug)]
enum Source {
    /// A file that may be replaced at any time, with (modification time, token) of the last read.
    File { path: PathBuf, current: FileState },
    /// From each token service by client_credentials, kept as (expires at, token) per service.
    ClientCredentials {
        audience: Option<String>,
        scope: Option<String>,
        cached: tokio::sync::Mutex<HashMap<String, (u64, Arc<Actor>)>>,
    },
}

impl ActorToken {
    /// The token to present to `service`.
    pub async fn token(&self, service: &TokenService) -> Result<Arc<Actor>, Denial> {
        match &self.source {
            Source::File { path, current } => from_file(path, current).await,
            Source::ClientCredentials {
                audience,
                scope,
                cached,
            } => {
                let mut cached = cached.lock().await;
                let now = unix_now();
                if let Some((expires_at, token)) = cached.get(service.name())
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
                cached.insert(service.name().to_owned(), (now + lifetime, token.clone()));
                Ok(token)
            }
        }
    }
}

/// The token as the file holds it now: re-read only when its modification time changed.
async fn from_file(path: &Path, current: &FileState) -> Result<Arc<Actor>, Denial> {
    let unavailable = |why: String| {
        tracing::warn!(path = %path.display(), error = %why, "actor token unavailable");
        Denial::new(Reason::ActorTokenUnavailable, "the workload's own token cannot be read")
    };
    let modified = tokio::fs::metadata(path)
        .await
        .and_then(|m| m.modified())
        .map_err(|e| unavailable(e.to_string()))?;
    let mut current = current.lock().await;
    if let Some((at, token)) = current.as_ref()
        && *at == modified
    {
        return Ok(token.clone());
    }
    const MAX_BYTES: u64 = 64 * 1024;
    let mut bytes = Vec::new();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| unavailable("not UTF-8 text".into()))?;
    let text = text.trim();
    if text.is_empty() || bytes.len() as u64 > MAX_BYTES {
        return Err(unavailable("empty or larger than 64 KiB".into()));
    }
    let token = Arc::new(Actor::new(Secret::new(text)));
    tracing::info!(path = %path.display(), actor = %token.token.fingerprint(), "actor token loaded");
    *current = Some((modified, token.clone()));
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

    #[tokio::test]
    async fn a_rotated_file_is_read_again() {
        let path = std::env::temp_dir().join(format!("baton-actor-{}", std::process::id()));
        std::fs::write(&path, "first-token\n").expect("write");
        let mut errors = Errors::default();
        let raw = RawActor {
            token_file: Some(path.clone()),
            ..Default::default()
        };
        let Some(ActorToken {
            source: Source::File { current, .. },
            ..
        }) = raw.validate(&mut errors)
        else {
            panic!("a file source")
        };
        assert_eq!(
            from_file(&path, &current).await.expect("read").token.expose(),
            "first-token"
        );
        // Same mtime: served from memory even if unchanged on disk.
        assert_eq!(
            from_file(&path, &current).await.expect("read").token.expose(),
            "first-token"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "second-token").expect("rotate");
        let later = SystemTime::now() + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later))
            .expect("touch");
        assert_eq!(
            from_file(&path, &current).await.expect("reread").token.expose(),
            "second-token"
        );
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(
            from_file(&path, &current).await.map_err(|d| d.reason).err(),
            Some(Reason::ActorTokenUnavailable)
        );
    }
}
