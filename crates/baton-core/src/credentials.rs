//! Baton's own credentials towards a token service that live in files and change under it: a client
//! assertion (a projected service-account token, which the kubelet rotates) and the mutual-TLS
//! client certificate and CA bundle (rotated by cert-manager or a SPIFFE agent). Each is re-read on
//! use when a file's identity (inode, size, mtime) changed. Never logs or prints what a file holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::files::read_bounded;
use crate::secret::Secret;

/// A value loaded from files, reloaded on use when one of them changed. A failed reload keeps the
/// last good value (the kubelet and cert-manager swap files atomically, so a failure is a moment's
/// race or an operator's mistake; the token service still judges what is sent) and is retried on
/// the next use; it is logged once per distinct error, never per request.
pub struct Watched<T> {
    paths: Vec<PathBuf>,
    load: Arc<dyn Fn() -> Result<T, String> + Send + Sync>,
    state: tokio::sync::Mutex<State<T>>,
}

struct State<T> {
    stamps: Vec<Stamp>,
    value: T,
    last_error: Option<String>,
}

/// What says a file changed: a rename over it (new inode), a rewrite (size, mtime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    /// The stamp of the file at `path` (through symlinks), if it can be read.
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }

    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl<T: Clone + Send + 'static> Watched<T> {
    /// Load once now (at startup: an error here is a configuration error).
    pub fn new(
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        // Stamps first, then the read: a write after the stat changes the stamp, so it is seen.
        let stamps = paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .map(|m| Stamp::of(&m))
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let value = load()?;
        Ok(Self {
            paths,
            load: Arc::new(load),
            state: tokio::sync::Mutex::new(State {
                stamps,
                value,
                last_error: None,
            }),
        })
    }

    /// The current value: re-read if a file changed since the last read.
    pub async fn get(&self) -> T {
        if self.paths.is_empty() {
            return self.state.lock().await.value.clone();
        }
        let mut stamps = Vec::with_capacity(self.paths.len());
        let mut failure = None;
        for path in &self.paths {
            match tokio::fs::metadata(path).await {
                Ok(meta) => stamps.push(Stamp::of(&meta)),
                Err(e) => {
                    failure = Some(format!("cannot read {}: {e}", path.display()));
                    break;
                }
            }
        }
        let mut state = self.state.lock().await;
        if failure.is_none() && stamps == state.stamps {
            return state.value.clone();
        }
        if failure.is_none() {
            let load = self.load.clone();
            match tokio::task::spawn_blocking(move || load()).await {
                Ok(Ok(value)) => {
                    tracing::info!(files = ?self.paths, "credential files changed: re-read");
                    state.stamps = stamps;
                    state.value = value;
                    state.last_error = None;
                    return state.value.clone();
                }
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(format!("reading failed: {e}")),
            }
        }
        if let Some(error) = failure
            && state.last_error.as_ref() != Some(&error)
        {
            tracing::warn!(files = ?self.paths, %error, "cannot re-read credential files: using the last good ones");
            state.last_error = Some(error);
        }
        state.value.clone()
    }
}

// === What the files hold ===

/// The largest client assertion file Baton reads (a service-account token is about 1 KiB).
const MAX_ASSERTION_BYTES: u64 = 16 * 1024;

/// Read a client assertion: one JWS compact serialization (`header.payload.signature`), at most
/// `MAX_ASSERTION_BYTES`. The error names the file, never its content.
pub fn read_assertion(path: &Path) -> Result<Secret, String> {
    let bytes = read_bounded(path, MAX_ASSERTION_BYTES)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let base64url = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if parts.len() != 3 || !parts.iter().all(base64url) {
        return Err(format!("{} does not hold a signed JWT", path.display()));
    }
    Ok(Secret::new(token))
}

/// The RFC 8705 client identity: the certificate chain (leaf first) and its private key, both PEM.
pub fn client_identity(cert_file: &Path, key_file: &Path) -> Result<reqwest::Identity, String> {
    const MAX_PEM: u64 = 256 * 1024;
    let mut pem = read_bounded(cert_file, MAX_PEM)?;
    if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
        return Err(format!("{} holds no PEM certificate", cert_file.display()));
    }
    pem.push(b'\n');
    pem.extend(read_bounded(key_file, MAX_PEM)?);
    let identity = reqwest::Identity::from_pem(&pem)
        .map_err(|_| format!("{} is not a PEM private key (PKCS#8, RSA or EC)", key_file.display()))?;
    // Building a client checks that the key is one rustls can sign with and matches the certificate.
    reqwest::Client::builder()
        .identity(identity.clone())
        .build()
        .map_err(|e| {
            format!(
                "{} and {} do not make a TLS client identity: {}",
                cert_file.display(),
                key_file.display(),
                crate::http::error_chain(&e)
            )
        })?;
    Ok(identity)
}

/// The CA bundle a token service's certificate must chain to.
pub fn ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = read_bounded(path, 1024 * 1024)?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => Err(format!("{} holds no PEM certificate", path.display())),
    }
}

/// The HTTP client for one token service: `base`, plus the CA bundle (the only roots then) and the
/// client identity when configured.
pub fn tls_client(
    base: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<reqwest::Client, String> {
    let mut builder = base;
    if let Some(path) = ca_file {
        builder = builder.tls_certs_only(ca_bundle(path)?);
    }
    if let Some((cert, key)) = identity {
        builder = builder.identity(client_identity(cert, key)?);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the TLS client: {}", crate::http::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("baton-cred-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            Self(dir)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_assertion_file_must_hold_one_jwt() {
        let dir = Dir::new("assertion");
        let path = dir.0.join("token");
        std::fs::write(&path, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n").expect("write");
        assert_eq!(
            read_assertion(&path).expect("valid").expose(),
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
        );
        for bad in ["", "  \n", "not a jwt", "a.b", "a.b.c.d", "a.b c.d", "a..c"] {
            std::fs::write(&path, bad).expect("write");
            let err = read_assertion(&path).expect_err(bad);
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        std::fs::write(&path, "a".repeat(MAX_ASSERTION_BYTES as usize + 1)).expect("write");
        assert!(read_assertion(&path).expect_err("too large").contains("larger"));
        assert!(read_assertion(&dir.0.join("missing")).is_err());
    }

    #[test]
    fn errors_never_carry_the_file_content() {
        let dir = Dir::new("leak");
        let path = dir.0.join("token");
        std::fs::write(&path, "s3cr3t.s3cr3t.s3 cr3t").expect("write");
        let err = read_assertion(&path).expect_err("bad");
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = client_identity(&path, &path).expect_err("not pem");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[tokio::test]
    async fn a_watched_file_is_re_read_when_it_changes_and_kept_when_it_breaks() {
        let dir = Dir::new("watched");
        let path = dir.0.join("token");
        std::fs::write(&path, "one.two.three").expect("write");
        let p = path.clone();
        let watched = Watched::new(vec![path.clone()], move || read_assertion(&p)).expect("load");
        assert_eq!(watched.get().await.expose(), "one.two.three");

        // Rotation as the kubelet does it: a new file renamed over the old one.
        let next = dir.0.join("token.next");
        std::fs::write(&next, "one.two.four").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        assert_eq!(watched.get().await.expose(), "one.two.four");

        // A broken rewrite keeps the last good value, and a later good one is picked up.
        std::fs::write(&path, "garbage").expect("write");
        assert_eq!(watched.get().await.expose(), "one.two.four");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(watched.get().await.expose(), "one.two.four");
        std::fs::write(&path, "one.two.five.").expect("write");
        assert_eq!(watched.get().await.expose(), "one.two.four", "still not a JWT");
        std::fs::write(&path, "one.two.five").expect("write");
        assert_eq!(watched.get().await.expose(), "one.two.five");
    }
}
