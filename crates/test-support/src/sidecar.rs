//! Baton as a process: `baton run` with the standard test configuration (or the test's own), ready
//! when `/readyz` says so. Unless the test configures them, everything Baton emits (logs, audit
//! lines, spans, metrics) is captured and scanned for leaks when the handle drops.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::client::http;
use crate::config::{BILLING, CLIENT_SECRET, FORBIDDEN, ORDERS, basic_auth_to};
use crate::leaks;
use crate::scratch::{DirGuard, Scratch, free_port, wait_until};

#[derive(Debug)]
pub struct Baton {
    pub grpc: u16,
    /// Its ext_authz over HTTP listener (`listen.authz_http`).
    pub authz_http: u16,
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
        let (grpc, admin, authz_http) = (free_port(), free_port(), free_port());
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
        let yaml = format!(
            "listen:\n  grpc: 127.0.0.1:{grpc}\n  admin: 127.0.0.1:{admin}\n  authz_http: 127.0.0.1:{authz_http}\n{body}\n{observed}"
        );
        let config = scratch.write("baton.yaml", &yaml);
        let child = Command::new(scratch.baton())
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
            authz_http,
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

    /// The port Envoy's filter of `api` reaches Baton on: the HTTP authorization listener for
    /// ext_authz over HTTP, else the gRPC one.
    pub fn port_for(&self, api: crate::envoy::Api) -> u16 {
        match api {
            crate::envoy::Api::ExtAuthzHttp => self.authz_http,
            _ => self.grpc,
        }
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
