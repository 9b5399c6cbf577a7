//! Baton's alerting and recording rules (`monitoring/baton-rules.yaml`) checked by Prometheus's own
//! tools: `promtool check rules` and `promtool test rules` (every alert fires in one case and stays
//! quiet in another); the prometheus-operator objects (`k8s/monitoring/`) carry the same groups and
//! pass prometheus-operator's schemas; every metric and label the rules use is one Baton's
//! `/metrics` serves; and a real Prometheus server scraping a running Baton fires an alert when
//! Baton refuses a configuration reload (and resolves it after a good one), and the token-service
//! alerts when the token service is down.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use baton_test_support::k8s::{find, kustomize, operator_validate, yaml_docs};
use baton_test_support::prometheus::{Prometheus, promtool};
use baton_test_support::promql::{label_names, metric_names, served_series};
use baton_test_support::*;
use serde_json::Value;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

fn monitoring() -> PathBuf {
    repo().join("monitoring")
}

fn read_yaml(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = yaml_docs(&text);
    assert_eq!(docs.len(), 1, "{}: one YAML document", path.display());
    docs.remove(0)
}

/// The plain rules file's `groups`.
fn groups() -> Value {
    read_yaml(&monitoring().join("baton-rules.yaml"))["groups"].clone()
}

/// Every rule of every group.
fn rules(groups: &Value) -> Vec<Value> {
    groups
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("a group's rules").iter().cloned())
        .collect()
}

fn alert_names(groups: &Value) -> Vec<String> {
    rules(groups)
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

// === promtool ===

#[test]
fn promtool_checks_the_rules() {
    let (ok, output) = promtool(&monitoring(), &["check", "rules", "baton-rules.yaml"]);
    assert!(ok, "promtool check rules failed:\n{output}");
    let count = rules(&groups()).len();
    assert!(
        output.contains(&format!("SUCCESS: {count} rules found")),
        "promtool did not read the {count} rules:\n{output}"
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let (ok, output) = promtool(&monitoring(), &["test", "rules", "baton-rules.test.yaml"]);
    assert!(ok, "promtool test rules failed:\n{output}");
    assert!(output.contains("SUCCESS"), "{output}");
}

/// The unit tests cover every alert both ways: at least one evaluation where it fires and one
/// where it does not.
#[test]
fn every_alert_has_a_firing_and_a_quiet_case() {
    let tests = read_yaml(&monitoring().join("baton-rules.test.yaml"));
    assert_eq!(tests["rule_files"], serde_json::json!(["baton-rules.yaml"]));
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for test in tests["tests"].as_array().expect("tests") {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let counts = cases.entry(name).or_default();
            if fires { counts.0 += 1 } else { counts.1 += 1 }
        }
    }
    let alerts = alert_names(&groups());
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in &alerts {
        let (fires, quiet) = cases.get(alert).copied().unwrap_or_default();
        assert!(
            fires >= 1 && quiet >= 1,
            "{alert}: {fires} firing and {quiet} quiet cases in baton-rules.test.yaml"
        );
    }
    for name in cases.keys() {
        assert!(alerts.contains(name), "the tests name {name}, which no rule defines");
    }
}

/// Every alert has a severity, a summary, a description, and a runbook that is a section of
/// docs/observability.md.
#[test]
fn every_alert_says_how_bad_what_and_where_to_read() {
    let docs = std::fs::read_to_string(repo().join("docs/observability.md")).expect("docs/observability.md");
    let anchors: Vec<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    for rule in rules(&groups()).iter().filter(|r| r.get("alert").is_some()) {
        let name = rule["alert"].as_str().expect("name");
        assert!(
            ["critical", "warning"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity {}",
            rule["labels"]["severity"]
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key].as_str().is_some_and(|s| s.len() > 20),
                "{name}: annotation {key}"
            );
        }
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or("");
        let anchor = runbook
            .strip_prefix("docs/observability.md#")
            .unwrap_or_else(|| panic!("{name}: runbook {runbook:?} is not docs/observability.md#..."));
        assert_eq!(anchor, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            anchors.iter().any(|a| a == anchor),
            "{name}: docs/observability.md has no section `### {name}` (anchor #{anchor})"
        );
    }
}

// === prometheus-operator ===

/// The PrometheusRule is the plain file's groups, so the two cannot drift apart.
#[test]
fn the_prometheus_rule_carries_the_same_groups() {
    let rule = read_yaml(&repo().join("k8s/monitoring/prometheusrule.yaml"));
    assert_eq!(rule["kind"], "PrometheusRule");
    let plain = groups();
    assert!(
        rule["spec"]["groups"] == plain,
        "k8s/monitoring/prometheusrule.yaml's spec.groups differ from monitoring/baton-rules.yaml's groups; \
         the plain file is the source, its groups as JSON are:\n{}",
        serde_json::to_string_pretty(&plain).unwrap_or_default()
    );
}

/// prometheus-operator's schemas, through tests/prometheus-operator/validate.mjs: (success, output).
#[test]
fn the_operator_objects_pass_prometheus_operators_schemas() {
    let dir = repo().join("k8s/monitoring");
    let files: Vec<PathBuf> = ["prometheusrule.yaml", "servicemonitor.yaml", "podmonitor.yaml"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let (ok, output) = operator_validate(&files);
    assert!(ok, "prometheus-operator's schemas refused k8s/monitoring:\n{output}");
    assert_eq!(output.lines().filter(|l| l.starts_with("ok ")).count(), 3, "{output}");

    // As kustomize renders them, too; and the validator does refuse a broken object.
    let scratch = Scratch::new(BATON_BIN, "operator-schemas");
    let rendered = kustomize(&dir);
    assert_eq!(yaml_docs(&rendered).len(), 3, "{rendered}");
    let file = scratch.write("rendered.yaml", &rendered);
    let (ok, output) = operator_validate(&[file]);
    assert!(ok, "the rendered k8s/monitoring:\n{output}");
    let servicemonitor = std::fs::read_to_string(&files[1]).expect("servicemonitor.yaml");
    let broken = scratch.write(
        "broken.yaml",
        &servicemonitor.replace("interval: 30s", "interval: every-30-seconds"),
    );
    let (ok, output) = operator_validate(&[broken]);
    assert!(!ok && output.contains("interval"), "a bad interval passed:\n{output}");
}

/// The ServiceMonitor finds the broker's Service and its port, and the PodMonitor's port is the one
/// the sidecar (written out, and as `baton inject` adds it) declares.
#[test]
fn the_monitors_select_batons_admin_port() {
    let monitoring = yaml_docs(&kustomize(&repo().join("k8s/monitoring")));
    let servicemonitor = find(&monitoring, "ServiceMonitor", "baton-broker");
    let broker = yaml_docs(&kustomize(&repo().join("k8s/overlays/broker")));
    let service = find(&broker, "Service", "baton");
    let selector = servicemonitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (k, v) in selector {
        assert_eq!(&service["metadata"]["labels"][k], v, "the broker Service's label {k}");
    }
    let port = servicemonitor["spec"]["endpoints"][0]["port"].as_str().expect("port");
    let service_port = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == port)
        .unwrap_or_else(|| panic!("the broker Service has no port {port}"));
    let deployment = find(&broker, "Deployment", "baton-broker");
    let target = service_port["targetPort"].as_str().expect("a named targetPort");
    assert!(
        container_ports(deployment)
            .iter()
            .any(|(name, n)| name == target && *n == 9901),
        "the broker's container has no port {target} (9901, the admin listener)"
    );

    let podmonitor = find(&monitoring, "PodMonitor", "baton-sidecar");
    let port = podmonitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .expect("port");
    let sidecar = yaml_docs(&kustomize(&repo().join("k8s/overlays/sidecar")));
    let app = sidecar
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the sidecar overlay's Deployment");
    assert!(
        container_ports(app).iter().any(|(name, n)| name == port && *n == 9901),
        "the sidecar pod has no port {port} (9901)"
    );
    assert_eq!(
        baton_inject::patch::ADMIN_PORT,
        port,
        "`baton inject` names Baton's admin port otherwise"
    );
}

/// (name, port) of every container and init container of a Deployment.
fn container_ports(deployment: &Value) -> Vec<(String, i64)> {
    let spec = &deployment["spec"]["template"]["spec"];
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec[k].as_array().cloned().unwrap_or_default())
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["containerPort"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

// === Against a running Baton ===

/// Every `baton_...` series a rule reads is one Baton's `/metrics` serves (after an exchange and a
/// denial), every `baton:...` one is recorded by a rule of the file, and every label a rule matches,
/// groups or joins on is on the series it reads (or is added by Prometheus: `job`, `instance`,
/// `namespace` under prometheus-operator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_read_only_metrics_baton_exports() {
    let scratch = Scratch::new(BATON_BIN, "alert-metrics");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    // A Shared Signals poll stream (its transmitter absent: the polls fail), so its series exist.
    let ssf = "ssf:\n  issuer: http://127.0.0.1:9\n  audience: a\n  poll:\n    endpoint: http://127.0.0.1:9/poll\n";
    let baton = Baton::start(&scratch, &service.token_endpoint, ssf).await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let alice = bearer(&service.mint("alice", "orders.read").await);
    assert_eq!(send(&envoy, "orders.example", "/o", Some(&alice)).await.status, 200);
    assert_eq!(send(&envoy, "forbidden.example", "/f", Some(&alice)).await.status, 403);
    let text = baton.metrics().await;
    let series = served_series(&text);

    let all = rules(&groups());
    let recorded: BTreeMap<&str, &str> = all
        .iter()
        .filter_map(|r| Some((r["record"].as_str()?, r["expr"].as_str()?)))
        .collect();
    // The served series an expression reads, through the recording rules it names.
    fn reads(expr: &str, recorded: &BTreeMap<&str, &str>, depth: usize) -> Vec<String> {
        assert!(depth < 8, "recording rules that refer to each other in a loop");
        let mut out = Vec::new();
        for name in metric_names(expr) {
            match recorded.get(name.as_str()) {
                Some(inner) => out.extend(reads(inner, recorded, depth + 1)),
                None => out.push(name),
            }
        }
        out
    }
    for rule in &all {
        let expr = rule["expr"].as_str().expect("expr");
        let what = rule["alert"].as_str().or(rule["record"].as_str()).expect("a name");
        let used = reads(expr, &recorded, 0);
        assert!(!used.is_empty(), "{what}: no Baton metric in {expr}");
        for name in &used {
            assert!(!name.starts_with("baton:"), "{what}: {name} is recorded by no rule");
            assert!(
                series.contains_key(name),
                "{what} reads {name}, which /metrics does not serve:\n{text}"
            );
        }
        // Labels a recorded series has are the ones its rule kept, which are checked there.
        for label in label_names(expr) {
            let implicit = ["le", "job", "instance", "namespace"].contains(&label.as_str());
            assert!(
                implicit || used.iter().any(|n| series[n].contains(&label)),
                "{what}: label {label} is on none of {used:?}"
            );
        }
    }
    drop(envoy);
}

/// The rules file with every alert's `for:` set to 1s (the expressions as shipped), as JSON (which
/// is YAML): Prometheus then fires within seconds of the condition instead of minutes.
fn rules_for_a_quick_test(scratch: &Scratch) -> PathBuf {
    let mut file = read_yaml(&monitoring().join("baton-rules.yaml"));
    for group in file["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            if rule.get("alert").is_some() {
                rule["for"] = Value::from("1s");
            }
        }
    }
    scratch.write("rules.json", &file.to_string())
}

/// The alerts named `name` Prometheus holds, by state.
fn named<'a>(alerts: &'a [Value], name: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["labels"]["alertname"] == name).collect()
}

/// A real Prometheus scrapes a running Baton every second and evaluates the rules (`for:` shortened
/// to 1s): a refused configuration reload fires BatonConfigReloadFailing; a good reload resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_an_alert_when_baton_refuses_a_reload() {
    const ALERT: &str = "BatonConfigReloadFailing";
    let scratch = Scratch::new(BATON_BIN, "alert-reload");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
    let rules = rules_for_a_quick_test(&scratch);
    let prometheus = Prometheus::start(&scratch, &rules, &[format!("127.0.0.1:{}", baton.admin)]).await;

    // Prometheus scrapes Baton, loaded every rule, and evaluates them without an error.
    let deadline = Duration::from_secs(30);
    let healthy = eventually(
        "Prometheus scraping Baton and evaluating every rule",
        deadline,
        || async {
            let up = prometheus
                .query("baton_config_last_reload_successful{job=\"baton\"} == 1")
                .await;
            let groups = prometheus.api("rules", &[]).await;
            let rules: Vec<Value> = groups["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated =
                rules.len() == self::rules(&self::groups()).len() && rules.iter().all(|r| r["health"] == "ok");
            if up.len() == 1 && evaluated {
                Ok(groups)
            } else {
                Err(format!("query: {}; rules: {groups}", Value::from(up)))
            }
        },
    )
    .await;
    assert!(
        named(&prometheus.alerts().await, ALERT).is_empty(),
        "{ALERT} before any reload: {healthy}"
    );

    // An invalid file and SIGHUP: Baton keeps its configuration, refuses the reload, and says so.
    let path = scratch.0.join("baton.yaml");
    let good = std::fs::read_to_string(&path).expect("baton.yaml");
    std::fs::write(&path, "destinations: [\n").expect("write a broken baton.yaml");
    hangup(baton.pid());
    eventually(&format!("{ALERT} firing"), deadline, || async {
        let alerts = prometheus.alerts().await;
        let firing = named(&alerts, ALERT).into_iter().find(|a| {
            a["state"] == "firing"
                && a["labels"]["severity"] == "warning"
                && a["labels"]["job"] == "baton"
                && a["annotations"]["runbook"] == "docs/observability.md#batonconfigreloadfailing"
        });
        firing.cloned().ok_or_else(|| Value::from(alerts.clone()).to_string())
    })
    .await;
    assert_eq!(
        metric(&baton.metrics().await, "baton_config_last_reload_successful"),
        Some(0.0)
    );

    // The good file back: the next reload succeeds and the alert resolves.
    std::fs::write(&path, good).expect("restore baton.yaml");
    hangup(baton.pid());
    eventually(&format!("{ALERT} resolved"), deadline, || async {
        let alerts = prometheus.alerts().await;
        if named(&alerts, ALERT).is_empty() {
            Ok(())
        } else {
            Err(format!("{alerts:?}"))
        }
    })
    .await;
    drop(prometheus);
}

/// The token service down (nothing listens at its address): Baton's exchanges all fail, its circuit
/// breaker opens (after 3 failures here, and stays open for a minute), and a real Prometheus fires
/// BatonTokenExchangeFailing and BatonCircuitOpen (`for:` shortened to 1s) from what it scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_token_service_alerts_when_it_is_down() {
    let scratch = Scratch::new(BATON_BIN, "alert-token-service");
    // Only to mint the user's token: Baton exchanges with an address where nothing listens.
    let minter = TokenService::start(Peer::BatonSts, &scratch).await;
    let alice = bearer(&minter.mint("alice", "orders.read").await);
    let dead = format!("token_endpoint: http://127.0.0.1:{}/token", free_port());
    let token_service = format!(
        "{}\n  circuit_breaker:\n    min_requests: 3\n    open_for: 60s",
        basic_auth_to(&scratch, &dead)
    );
    let baton = Baton::start_with(&scratch, &token_service, "").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let rules = rules_for_a_quick_test(&scratch);
    let prometheus = Prometheus::start(&scratch, &rules, &[format!("127.0.0.1:{}", baton.admin)]).await;

    // A request every 250 ms (each a 503: the exchange fails, then the circuit is open) until both
    // alerts fire for the token service `default`.
    let wanted = ["BatonTokenExchangeFailing", "BatonCircuitOpen"];
    let firing = eventually("both token-service alerts firing", Duration::from_secs(40), || async {
        let reply = send(&envoy, "orders.example", "/o", Some(&alice)).await;
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        let alerts = prometheus.alerts().await;
        let all = wanted.iter().all(|name| {
            named(&alerts, name).iter().any(|a| {
                a["state"] == "firing"
                    && a["labels"]["token_service"] == "default"
                    && a["labels"]["severity"] == "critical"
            })
        });
        if all {
            Ok(alerts)
        } else {
            Err(Value::from(alerts).to_string())
        }
    })
    .await;
    let ratio = prometheus.query("baton:exchange_failures:ratio_rate5m").await;
    assert_eq!(ratio.len(), 1, "{}", Value::from(ratio.clone()));
    assert_eq!(
        ratio[0]["value"][1],
        "1",
        "every exchange failed: {}",
        Value::from(ratio.clone())
    );
    // Nothing else fired: no reload was refused, no record dropped, the keys are not in question.
    for alert in &firing {
        let name = alert["labels"]["alertname"].as_str().unwrap_or("");
        assert!(wanted.contains(&name), "{name} fired too: {alert}");
    }
    drop(envoy);
}

fn hangup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success(), "kill -HUP {pid}");
}

/// Poll `probe` every 250 ms until it gives a value, for at most `timeout`; on timeout, fail with
/// what was awaited and the probe's last answer (what Prometheus said).
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
