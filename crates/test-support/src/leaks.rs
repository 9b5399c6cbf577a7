//! Every token, secret and private key the tests handle, and the check that none of them appears in
//! what Baton and Envoy emit. The registry is per test binary and shared by its tests: a secret of
//! one test showing up in another's output is a leak too. This module only records and scans; it
//! never prints a secret (a finding names the output and the secret's first bytes).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shorter strings could occur by chance; every real credential here is longer.
const MIN_LEN: usize = 12;

static SECRETS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Register a token or secret. A JWT's signature is registered on its own as well: it cannot
/// appear anywhere unless the token leaked.
pub fn secret(value: &str) {
    let value = value.trim();
    if value.len() < MIN_LEN {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    secrets.insert(value.to_owned());
    let parts: Vec<&str> = value.split('.').collect();
    if parts.len() == 3 && parts[2].len() >= 32 {
        secrets.insert(parts[2].to_owned());
    }
}

/// An `Authorization` value: the credential after the scheme.
pub fn credential(header: &str) {
    let credential = header.split_once(' ').map_or(header, |(_, c)| c);
    secret(credential);
}

/// A secret file's contents; for a PEM key, each line of its body too.
pub fn secret_file(contents: &str) {
    secret(contents);
    for line in contents.lines().filter(|l| !l.starts_with("-----")) {
        secret(line);
    }
}

pub fn registered() -> Vec<String> {
    SECRETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// The named files in `dir` (and their rotated `.N` siblings), as (name, text).
pub fn files(dir: &Path, names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let base = name
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches('.');
        if names.contains(&name.as_str()) || names.contains(&base) {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap_or_default()).into_owned();
            out.push((entry.path().display().to_string(), text));
        }
    }
    out
}

/// Panic, naming the output and the secret's fingerprint, if any registered secret appears.
/// One pass over each output, looking up every `MIN_LEN`-byte window among the secrets' first
/// `MIN_LEN` bytes: a search per secret would take seconds once a load test has registered
/// thousands of them.
pub fn assert_none(outputs: &[(String, String)]) {
    let secrets = registered();
    let mut by_prefix: std::collections::HashMap<&[u8], Vec<&str>> = std::collections::HashMap::new();
    for secret in &secrets {
        by_prefix.entry(&secret.as_bytes()[..MIN_LEN]).or_default().push(secret);
    }
    for (name, text) in outputs {
        let bytes = text.as_bytes();
        for (at, window) in bytes.windows(MIN_LEN).enumerate() {
            let Some(candidates) = by_prefix.get(window) else {
                continue;
            };
            if let Some(secret) = candidates.iter().find(|s| bytes[at..].starts_with(s.as_bytes())) {
                panic!(
                    "LEAK: {name} contains a token or secret the tests handled ({} bytes, starting {:?})",
                    secret.len(),
                    &secret[..8]
                );
            }
        }
    }
}

/// GET over a plain socket (usable from `Drop`, outside async code), bounded by 2 s.
pub(crate) fn get_blocking(port: u16, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// An OTLP/gRPC receiver (crate `fake-opentelemetry-collector`) whose spans are drained into
/// memory as they arrive.
#[derive(Debug)]
pub struct SpanSink {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<fake_opentelemetry_collector::ExportedSpan>>>,
    rounds: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SpanSink {
    pub async fn start() -> Self {
        let mut collector = fake_opentelemetry_collector::FakeCollectorServer::start()
            .await
            .expect("start the OTLP receiver");
        let endpoint = collector.endpoint();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let rounds = Arc::new(AtomicU64::new(0));
        let task = {
            let (spans, rounds) = (spans.clone(), rounds.clone());
            tokio::spawn(async move {
                loop {
                    let batch = collector.exported_spans(1, Duration::from_millis(50)).await;
                    spans.lock().unwrap_or_else(|e| e.into_inner()).extend(batch);
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        Self {
            endpoint,
            spans,
            rounds,
            task,
        }
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<fake_opentelemetry_collector::ExportedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After the exporter stopped: wait for two more drain rounds (bounded), then every span
    /// received, as JSON text.
    pub fn finish(self) -> String {
        let start = self.rounds.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.rounds.load(Ordering::SeqCst) < start + 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.task.abort();
        serde_json::to_string(&self.spans()).unwrap_or_default()
    }
}
