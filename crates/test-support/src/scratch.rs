//! The ground a test stands on: its scratch directory (kept with its logs when the test fails,
//! removed otherwise), free loopback ports and bounded waits. Nothing here starts a process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::leaks;

/// A scratch directory, removed once the test and every process handle started in it (Baton,
/// Envoy) are done with it, so that their drop-time leak scans still find the files. It also
/// carries the `baton` binary the test runs (`env!("CARGO_BIN_EXE_baton")`, which only the root
/// package's tests and benches can name), so every process started in it is that build.
#[derive(Debug)]
pub struct Scratch(pub PathBuf, Arc<DirGuard>, PathBuf);

/// Removes the directory when the last holder drops, unless a test failed.
#[derive(Debug)]
pub struct DirGuard {
    dir: PathBuf,
    keep: std::sync::atomic::AtomicBool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() && !self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Scratch {
    /// A fresh directory for the test `name`, whose processes run the binary at `baton`.
    pub fn new(baton: impl Into<PathBuf>, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("baton-e2e-{name}-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let guard = Arc::new(DirGuard {
            dir: dir.clone(),
            keep: std::sync::atomic::AtomicBool::new(false),
        });
        Self(dir, guard, baton.into())
    }

    /// The `baton` binary under test.
    pub fn baton(&self) -> &Path {
        &self.2
    }

    /// Keeps the directory alive while the holder lives.
    pub fn hold(&self) -> Arc<DirGuard> {
        self.1.clone()
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        if name.contains("secret") || name.contains("key") || contents.contains("PRIVATE KEY") {
            leaks::secret_file(contents);
        }
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path
    }

    pub fn log(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.0.join(name)).expect("create log file")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.1.keep.store(true, std::sync::atomic::Ordering::SeqCst);
            // Keep the logs of a failed test, and say where they are.
            eprintln!("logs kept in {}", self.0.display());
            for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(25).collect();
                    eprintln!("--- last lines of {} ---", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// A free loopback port for a process the test is about to start. It is taken below Linux's
/// ephemeral range (32768-60999), from which the kernel picks the local ports of outgoing
/// connections and of `bind(0)`: a port from there could be handed to someone else between our
/// check and the process binding it. Each test binary walks its own offset, one port per call.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() * 97;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (offset + n) % SPAN).expect("in range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN)
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client for the harness's own calls (probes, scrapes, requests through Envoy), with a
/// deadline so a stuck test fails instead of hanging.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}
