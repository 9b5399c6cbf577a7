//! What the revocation tests share (the operator's `baton revoke`, back-channel logout, Shared
//! Signals, a destination's `invalid_token`): a `Pod` (Baton, the real Envoy in front of it and what
//! Envoy sends on to), its revocation audit records and reloads; the operator's admin secret,
//! `baton revoke` and `POST /revoke`. It starts processes only through the modules that own them
//! (`sidecar`, `envoy`, `upstream`), and decides nothing a test asserts beyond its own plumbing.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::client::{Reply, metric, send};
use crate::envoy::{Api, Envoy, envoy_bootstrap_for, to_test_upstream};
use crate::leaks;
use crate::scratch::{Scratch, free_port, http, wait_until};
use crate::sidecar::Baton;
use crate::tokens::bearer;
use crate::upstream::{StandInDestination, Upstream};

/// `revocation:` keys that remember up to 100 revocations for an hour (`  key: value` lines).
pub const REMEMBER: &str = "  remember: 1h\n  max_entries: 100\n";

/// A `trusted_issuers:` section: Baton verifies subject tokens from `issuer` for `audience`.
pub fn trusted_issuer(issuer: &str, audience: &str) -> String {
    format!("trusted_issuers:\n  - issuer: {issuer}\n    audiences: [{audience}]\n")
}

/// Sleep into the next whole second, so a token minted now has an `iat` after a revocation made
/// before (both are whole seconds; a token of the revocation's own second is refused).
pub async fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    tokio::time::sleep(Duration::from_millis(1_050 - u64::from(now.subsec_millis()))).await;
}

/// What Envoy sends requests on to.
#[derive(Debug)]
enum Behind {
    Upstream { _server: Upstream },
    StandIn { _server: StandInDestination },
}

/// One pod: Baton (the standard test destinations, exchanging at a token endpoint, with the test's
/// extra configuration), the real Envoy in front of it, and the echoing upstream (or the stand-in
/// destination) behind Envoy, all in one scratch directory.
#[derive(Debug)]
pub struct Pod {
    pub baton: Baton,
    pub envoy: Envoy,
    _behind: Behind,
    pub scratch: Scratch,
}

impl Pod {
    /// Baton with `extra` (top-level sections) exchanging at `token_endpoint`, the echoing
    /// upstream, and Envoy asking Baton through `api`.
    pub async fn start(api: Api, scratch: Scratch, token_endpoint: &str, extra: &str) -> Self {
        let baton = Baton::start(&scratch, token_endpoint, extra).await;
        let upstream = Upstream::start().await;
        let envoy = Envoy::start_for(api, &scratch, baton.port_for(api), upstream.port).await;
        Self {
            baton,
            envoy,
            _behind: Behind::Upstream { _server: upstream },
            scratch,
        }
    }

    /// Like `start`, with the stand-in destination (`StandInDestination`, which refuses by path)
    /// behind Envoy, whose configuration is `front`'s.
    pub async fn start_stand_in(api: Api, front: Front, scratch: Scratch, token_endpoint: &str, extra: &str) -> Self {
        let baton = Baton::start(&scratch, token_endpoint, extra).await;
        let destination = StandInDestination::start().await;
        let envoy = match front {
            Front::Harness => Envoy::start_for(api, &scratch, baton.port_for(api), destination.port).await,
            Front::Generated => {
                let bootstrap = generated_bootstrap(api, &scratch, destination.port);
                Envoy::start_with_bootstrap(&scratch, &bootstrap).await
            }
        };
        Self {
            baton,
            envoy,
            _behind: Behind::StandIn { _server: destination },
            scratch,
        }
    }

    /// A GET of `/orders/1` at `orders.example` through Envoy with this user's token.
    pub async fn get(&self, token: &str) -> Reply {
        self.get_path("/orders/1", token).await
    }

    /// A GET of `path` at `orders.example` through Envoy with this user's token.
    pub async fn get_path(&self, path: &str, token: &str) -> Reply {
        send(&self.envoy, "orders.example", path, Some(&bearer(token))).await
    }

    /// A GET with this user's token is refused 401 `subject_revoked`; `what` goes in the failure.
    pub async fn assert_revoked(&self, token: &str, what: &str) {
        let reply = self.get(token).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (401, "subject_revoked"),
            "{what}: {:?}",
            reply.body
        );
    }

    /// A URL on Baton's admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.baton.admin)
    }

    /// The revocation records of Baton's audit log so far (`"api": "revocation"`), in order.
    pub fn revocation_records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.scratch.0.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["api"] == "revocation")
            .collect()
    }

    /// Exactly `n` revocation records, waited for up to 5 s (audit lines are written after the
    /// answer); more is a failure.
    pub async fn wait_for_revocation_records(&self, n: usize) -> Vec<Value> {
        let mut records = Vec::new();
        wait_until("the revocation audit records", Duration::from_secs(5), || {
            records = self.revocation_records();
            std::future::ready(records.len() >= n)
        })
        .await;
        assert_eq!(records.len(), n, "{records:?}");
        records
    }

    /// Send Baton a signal (`kill -SIGNAL`, e.g. `TERM`).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.baton.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Reload Baton's configuration (SIGHUP), and wait up to 10 s for it to count one more
    /// successful reload.
    pub async fn reload(&self) {
        const RELOADS: &str = r#"baton_config_reloads_total{outcome="ok"}"#;
        let before = metric(&self.baton.metrics().await, RELOADS).unwrap_or(0.0);
        self.signal("HUP");
        wait_until("the reload", Duration::from_secs(10), || async {
            metric(&self.baton.metrics().await, RELOADS).unwrap_or(0.0) > before
        })
        .await;
    }

    /// The operator of this pod's Baton, holding `secret` (the one its `revocation:` names).
    pub fn operator(&self, secret: AdminSecret) -> Operator {
        Operator {
            admin: self.baton.admin,
            bin: self.scratch.baton().to_path_buf(),
            secret,
        }
    }
}

/// Which configuration a pod's Envoy runs.
#[derive(Debug, Clone, Copy)]
pub enum Front {
    /// The harness's hand-written bootstrap (`envoy_bootstrap_for`).
    Harness,
    /// What `baton envoy-config` writes for the pod's Baton, its outbound cluster pointed at what
    /// is behind Envoy.
    Generated,
}

/// What `baton envoy-config` writes for the Baton of `scratch` (its `baton.yaml`) and `api`, on a
/// free port, its outbound cluster pointed at `upstream` (`to_test_upstream`).
pub fn generated_bootstrap(api: Api, scratch: &Scratch, upstream: u16) -> String {
    let mut command = std::process::Command::new(scratch.baton());
    command.arg("envoy-config");
    let api = match api {
        Api::ExtAuthz => "ext_authz",
        Api::ExtProc => "ext_proc",
        Api::Wasm => {
            command.arg("--wasm-module").arg(crate::envoy::wasm_module());
            "wasm"
        }
        Api::ExtAuthzHttp => "ext_authz_http",
    };
    let out = command
        .arg("--config")
        .arg(scratch.0.join("baton.yaml"))
        .args(["--api", api, "--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("run baton envoy-config");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut bootstrap: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    to_test_upstream(&mut bootstrap, upstream);
    baton_envoy::envoy_config::to_yaml(&bootstrap).expect("yaml")
}

/// Envoy asking Baton (`baton_grpc`) through `api`, in front of `destination`, with ext_proc's
/// `response_header_mode: SEND` for every stream: Baton sees each response's headers, not only
/// those of a delegated stream (which asks for them by `mode_override`).
pub async fn envoy_sending_responses(api: Api, scratch: &Scratch, baton_grpc: u16, destination: u16) -> Envoy {
    let bootstrap = envoy_bootstrap_for(api, free_port(), baton_grpc, destination)
        .replace("response_header_mode: SKIP", "response_header_mode: SEND");
    Envoy::start_with_bootstrap(scratch, &bootstrap).await
}

/// The operator's admin secret (`revocation.admin_secret_file`), written to the scratch directory
/// and registered for the leak scans.
#[derive(Debug, Clone)]
pub struct AdminSecret {
    pub value: &'static str,
    pub file: PathBuf,
}

impl AdminSecret {
    pub fn write(scratch: &Scratch, value: &'static str) -> Self {
        leaks::secret(value);
        let file = scratch.write("admin-secret", &format!("{value}\n"));
        Self { value, file }
    }

    /// The `revocation:` section naming this secret, with `more` keys (`  key: value` lines,
    /// e.g. `REMEMBER`) first.
    pub fn section(&self, more: &str) -> String {
        format!("revocation:\n{more}  admin_secret_file: {}\n", self.file.display())
    }

    /// The Authorization value that carries it.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.value)
    }
}

/// The operator of one Baton: `baton revoke` and `POST /revoke` on its admin listener.
#[derive(Debug)]
pub struct Operator {
    admin: u16,
    bin: PathBuf,
    pub secret: AdminSecret,
}

impl Operator {
    /// `baton revoke` with these selector flags: (exit status success, stdout as JSON, stderr).
    /// Neither output may print the admin secret.
    pub async fn revoke(&self, selector: &[&str]) -> (bool, Value, String) {
        let output = tokio::process::Command::new(&self.bin)
            .arg("revoke")
            .arg("--admin")
            .arg(format!("http://127.0.0.1:{}", self.admin))
            .arg("--secret-file")
            .arg(&self.secret.file)
            .args(selector)
            .output()
            .await
            .expect("run baton revoke");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !stdout.contains(self.secret.value) && !stderr.contains(self.secret.value),
            "baton revoke printed the admin secret"
        );
        (
            output.status.success(),
            serde_json::from_str(&stdout).unwrap_or_default(),
            stderr,
        )
    }

    /// `POST /revoke` as it comes, with this Authorization (if any) and body: (status, the answer
    /// as JSON, or null).
    pub async fn post(&self, authorization: Option<&str>, body: String) -> (u16, Value) {
        let mut request = http()
            .post(format!("http://127.0.0.1:{}/revoke", self.admin))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        let response = request.send().await.expect("POST /revoke");
        let status = response.status().as_u16();
        let body = serde_json::from_slice(&response.bytes().await.expect("body")).unwrap_or_default();
        (status, body)
    }
}

/// A `POST` to `path` on the admin listener of a Baton started without the section that serves
/// it (nothing but the standard test configuration): the status, which the endpoint being off
/// makes 404.
pub async fn post_without_the_section(
    bin: &str,
    name: &str,
    path: &str,
    header: (&str, &str),
    body: &'static str,
) -> u16 {
    let scratch = Scratch::new(bin, name);
    let service = crate::token_service::TokenService::start(crate::token_service::Peer::BatonSts, &scratch).await;
    let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
    let response = http()
        .post(format!("http://127.0.0.1:{}{path}", baton.admin))
        .header(header.0, header.1)
        .body(body)
        .send()
        .await
        .expect("POST to the admin listener");
    response.status().as_u16()
}
