//! In-proxy mode's Envoy side: the plugin configuration `baton.wasm` runs with, generated from
//! Baton's own file so the filter and the sidecar judge with the same destinations, host patterns
//! and policies (crates/baton-wasm `config` reads it), and the `envoy.filters.http.wasm` filter
//! that loads the module. It only builds documents: it reads no file and never carries a secret
//! (no token service, no client credential, no key: names, hosts, policies and request settings).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use baton_core::config::Config;
use baton_core::config::{MissingToken, UnknownDestination};

const WASM: &str = "envoy.filters.http.wasm";

/// Where the module is and what it is configured with.
#[derive(Clone, Debug)]
pub struct Wasm {
    /// `baton.wasm` on the Envoy host (`cargo build --profile wasm -p baton-wasm --target wasm32-wasip1`).
    pub module: PathBuf,
    /// The plugin configuration (`plugin_config`).
    pub plugin: Value,
}

/// The plugin configuration for `decision`, whose file parsed as plain YAML is `raw` (the policies
/// as written: the filter compiles them itself, with the same code as the sidecar). `cluster` is
/// the Envoy cluster that reaches Baton; `timeout` how long the filter waits for it. A file with a
/// destination that claims no `hosts` (one a route names, by `context_extensions`) is refused: the
/// filter matches hosts only, so such a destination would never be delegated in this mode.
pub fn plugin_config(decision: &Config, raw: &Value, cluster: &str, timeout: Duration) -> Result<Value, String> {
    let route_only: Vec<&str> = decision
        .destinations
        .iter()
        .filter(|d| d.hosts.is_empty())
        .map(|d| d.name.as_str())
        .collect();
    if !route_only.is_empty() {
        return Err(format!(
            "destinations without `hosts` ({}) are named by routes only (`context_extensions`), which in-proxy mode does not support: the Wasm filter matches hosts only. Give them `hosts`, or use --api ext_authz or ext_proc",
            route_only.join(", ")
        ));
    }
    let raw_destinations = raw.get("destinations").and_then(Value::as_array);
    let mut destinations = Vec::with_capacity(decision.destinations.len());
    for d in &decision.destinations {
        let policy = raw_destinations
            .and_then(|all| {
                all.iter()
                    .find(|r| r.get("name").and_then(Value::as_str) == Some(d.name.as_str()))
            })
            .ok_or_else(|| format!("destination `{}` is not in the file as written", d.name))?
            .get("policy")
            .cloned()
            .unwrap_or_else(|| json!({}));
        destinations.push(json!({ "name": d.name, "hosts": d.hosts, "policy": policy }));
    }
    let verified = !decision.trusted_issuers.is_empty() || decision.introspection.is_some();
    let mut plugin = json!({
        "destinations": destinations,
        "verified": verified,
        "unknown_destination": match decision.unknown_destination {
            UnknownDestination::Strip => "strip",
            UnknownDestination::Passthrough => "passthrough",
            UnknownDestination::Deny => "deny",
        },
        "missing_token": match decision.missing_token {
            MissingToken::Deny => "deny",
            MissingToken::Passthrough => "passthrough",
        },
        "max_token_bytes": decision.subject_token.max_bytes,
        "sidecar_cluster": cluster,
        "timeout": format!("{}ms", timeout.as_millis()),
        "epoch_tick": "1s",
    });
    if let Some(identity) = &decision.workload_identity {
        plugin["workload_identity"] = json!(identity);
    }
    Ok(plugin)
}

/// `baton_decide::key::plugin_digest` of the plugin configuration `decision` (whose file is `text`)
/// generates, whatever the cluster and timeout it is generated with: what the running sidecar
/// tells the filter with every epoch. Empty when the file generates none (a destination without
/// hosts): no filter's digest matches it.
pub fn decision_digest(decision: &Config, text: &str) -> Vec<u8> {
    as_written(text)
        .ok()
        .and_then(|raw| plugin_config(decision, &raw, "", Duration::ZERO).ok())
        .map(|plugin| baton_decide::key::plugin_digest(&plugin).to_vec())
        .unwrap_or_default()
}

/// Baton's file as written (plain YAML to JSON), for the policies `plugin_config` copies.
pub fn as_written(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str(text).map_err(|e| e.to_string())
}

/// The `envoy.filters.http.wasm` filter: the module on the V8 runtime, one VM per worker, failing
/// closed (a module that does not load or configure answers 503, never passes a request through).
pub fn filter(wasm: &Wasm) -> Value {
    json!({
        "name": WASM,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "baton",
                "root_id": "baton",
                "fail_open": false,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": wasm.plugin.to_string(),
                },
                "vm_config": {
                    "vm_id": "baton",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm.module.display().to_string() } },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
listen:
  grpc: 127.0.0.1:9191
token_service:
  token_endpoint: http://127.0.0.1:9400/token
  client_id: c
  auth: { method: none }
destinations:
  - name: orders
    hosts: ["orders.example"]
    audience: https://orders.example
    policy: { methods: [GET] }
"#;

    fn plugin(text: &str) -> Result<Value, String> {
        let config = crate::file::Config::from_yaml(text).map_err(|e| e.to_string())?;
        plugin_config(&config.decision, &as_written(text)?, "baton", Duration::from_secs(2))
    }

    #[test]
    fn the_plugin_carries_the_destinations_as_written() {
        let plugin = plugin(FILE).expect("valid");
        assert_eq!(plugin["destinations"][0]["name"], "orders");
        assert_eq!(plugin["destinations"][0]["policy"]["methods"][0], "GET");
        assert_eq!(plugin["timeout"], "2000ms");
    }

    #[test]
    fn a_destination_only_a_route_can_name_is_refused() {
        let text = format!(
            "{FILE}  - name: billing\n    audience: https://billing.example\n  - name: ledger\n    audience: https://ledger.example\n"
        );
        let error = plugin(&text).expect_err("refused");
        for word in ["billing, ledger", "`hosts`", "context_extensions", "--api ext_authz"] {
            assert!(error.contains(word), "`{word}` missing from {error}");
        }
    }
}
