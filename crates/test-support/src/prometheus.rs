//! Prometheus's own tools for the alert tests: `promtool` (rule checks and rule unit tests, offline)
//! and a real Prometheus server on loopback that scrapes a running Baton and evaluates rules, read
//! back through its HTTP API. Both come from Debian's `prometheus` package, which `scripts/deps`
//! unpacks into `.cache/prometheus` (not installed system-wide); a missing one is a loud failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::repo;
use crate::scratch::{DirGuard, Scratch, free_port, http, wait_until};

/// `.cache/prometheus/usr/bin/<tool>`, or a failure that says how to get it.
pub fn tool(name: &str) -> PathBuf {
    let path = repo().join(".cache/prometheus/usr/bin").join(name);
    assert!(
        path.is_file(),
        "{name} is not installed at {}: run `scripts/deps` (or `scripts/test`), which unpacks Debian's \
         `prometheus` package there (apt-get download prometheus; dpkg -x)",
        path.display()
    );
    path
}

/// `promtool ARGS` run in `dir`: (success, stdout and stderr).
pub fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A Prometheus server on a free loopback port, its data in the scratch directory, scraping
/// `targets` (host:port, path `/metrics`) every second and evaluating `rules` every second.
/// Killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    pub port: u16,
    child: Child,
    _dir: Arc<DirGuard>,
}

impl Prometheus {
    pub async fn start(scratch: &Scratch, rules: &Path, targets: &[String]) -> Self {
        let port = free_port();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = scratch.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n- job_name: baton\n  static_configs:\n  - targets: [{}]\n",
                rules.display(),
                targets.join(", ")
            ),
        );
        let data = scratch.0.join("prometheus-data");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(scratch.log("prometheus.stdout.log"))
            .stderr(scratch.log("prometheus.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            port,
            child,
            _dir: scratch.hold(),
        };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        wait_until("prometheus /-/ready", Duration::from_secs(20), || async {
            http().get(&ready).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        prometheus
    }

    /// `GET /api/v1/<path>` (with `params`): the answer's `data`, or a failure showing the answer.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = url::Url::parse_with_params(&format!("http://127.0.0.1:{}/api/v1/{path}", self.port), params)
            .expect("api url");
        let response = http().get(url.clone()).send().await.expect("prometheus api");
        let status = response.status();
        let text = response.text().await.expect("prometheus api body");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {e}: {text}"));
        assert!(
            status.is_success() && body["status"] == "success",
            "GET {url}: {status} {body}"
        );
        body["data"].clone()
    }

    /// The alerts Prometheus holds now (pending and firing), from `/api/v1/alerts`.
    pub async fn alerts(&self) -> Vec<Value> {
        self.api("alerts", &[]).await["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// An instant query's result vector.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        self.api("query", &[("query", expr)]).await["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}
