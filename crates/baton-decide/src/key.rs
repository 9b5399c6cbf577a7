//! Cache keys: SHA-256 digests of what identifies an exchange (the destination's parameters, the
//! scope asked for, the subject token). Pure, so the sidecar and an in-proxy filter derive the same
//! key from the same request. A key never holds a token, only its digest.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Key = [u8; 32];

/// Digest of the parameters that, with the subject token, identify an exchange. Each field is
/// length-prefixed so no two inputs can collide by moving a boundary.
pub fn params_digest(fields: &[&str]) -> Key {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().into()
}

/// The fields of the Wasm filter's plugin configuration (baton-wasm `config`) that decide (what the filter matches and judges with),
/// as opposed to how it reaches and polls the sidecar: the part the sidecar's own file must agree on.
pub const PLUGIN_DECISION_FIELDS: [&str; 6] = [
    "destinations",
    "verified",
    "unknown_destination",
    "missing_token",
    "max_token_bytes",
    "workload_identity",
];

/// The filter's `max_token_bytes` when its plugin configuration leaves it out.
pub const PLUGIN_DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// SHA-256 of the Wasm filter's plugin configuration's deciding part (`PLUGIN_DECISION_FIELDS`, keys sorted at every
/// level, so the order they were written in does not count). The sidecar computes it from its own
/// file as it would generate the plugin configuration, and sends it with every epoch; a filter
/// whose own differs was generated from another file (`baton.yaml` changed and was reloaded, the
/// plugin configuration was not regenerated), so it serves nothing cached.
pub fn plugin_digest(plugin: &serde_json::Value) -> Key {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect()
            }
            serde_json::Value::Array(items) => items.iter().map(sorted).collect(),
            other => other.clone(),
        }
    }
    use serde_json::{Value, json};
    // A field left out means its default (baton-wasm `config`), so a configuration written by hand
    // that says the same as the generated one has its digest.
    let default = |field: &str| match field {
        "destinations" => json!([]),
        "verified" => json!(false),
        "unknown_destination" => json!("strip"),
        "missing_token" => json!("deny"),
        "max_token_bytes" => json!(PLUGIN_DEFAULT_MAX_TOKEN_BYTES),
        _ => Value::Null,
    };
    let mut part: serde_json::Map<String, Value> = PLUGIN_DECISION_FIELDS
        .iter()
        .map(|f| {
            let value = plugin.get(*f).filter(|v| !v.is_null()).cloned();
            ((*f).to_owned(), value.unwrap_or_else(|| default(f)))
        })
        .collect();
    if let Some(Value::Array(destinations)) = part.get_mut("destinations") {
        for destination in destinations.iter_mut().filter_map(Value::as_object_mut) {
            destination.entry("policy").or_insert_with(|| json!({}));
        }
    }
    params_digest(&[
        "baton.wasm.decision",
        &sorted(&serde_json::Value::Object(part)).to_string(),
    ])
}

/// SHA-256 of a subject token: computed once per request, it keys both the verification cache
/// and (inside `key`) the token cache.
pub fn digest(subject_token: &str) -> Key {
    Sha256::digest(subject_token.as_bytes()).into()
}

/// The cache key: the destination's parameter digest, the scope asked for when policy narrowed it
/// (else empty), then the subject token's digest.
pub fn key(params: &Key, scope: &str, subject_digest: &Key) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(params);
    hasher.update((scope.len() as u64).to_be_bytes());
    hasher.update(scope.as_bytes());
    hasher.update(subject_digest);
    hasher.finalize().into()
}

/// The cache key of a DPoP-bound token (`binding: dpop`): `key` with the RFC 7638 thumbprint of the
/// key it is bound to, so a rotated key never finds a token bound to the one before.
pub fn bound(key: &Key, thumbprint: &str) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(key);
    hasher.update(b"dpop");
    hasher.update((thumbprint.len() as u64).to_be_bytes());
    hasher.update(thumbprint.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_digest_follows_what_decides_and_nothing_else() {
        let plugin = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("json");
        let base = plugin(
            r#"{"sidecar_cluster":"baton","timeout":"2s","destinations":[{"name":"orders","hosts":["orders"],"policy":{"methods":["GET"],"paths":["/a"]}}],"verified":true}"#,
        );
        let digest = plugin_digest(&base);
        // Written in another order, or with other ways to reach the sidecar: the same.
        let reordered = plugin(
            r#"{"verified":true,"destinations":[{"policy":{"paths":["/a"],"methods":["GET"]},"hosts":["orders"],"name":"orders"}],"timeout":"9s","sidecar_cluster":"other","epoch_tick":"5s","max_entries":7}"#,
        );
        assert_eq!(plugin_digest(&reordered), digest);
        // The defaults written out, or left out: the same.
        let explicit = plugin(
            r#"{"destinations":[{"name":"orders","hosts":["orders"],"policy":{"methods":["GET"],"paths":["/a"]}}],"verified":true,"unknown_destination":"strip","missing_token":"deny","max_token_bytes":16384}"#,
        );
        assert_eq!(plugin_digest(&explicit), digest);
        let bare = |policy: &str| plugin(&format!(r#"{{"destinations":[{{"name":"o","hosts":["o"]{policy}}}]}}"#));
        assert_eq!(plugin_digest(&bare("")), plugin_digest(&bare(r#","policy":{}"#)));
        // Any deciding change: another.
        for changed in [
            r#"{"destinations":[{"name":"orders","hosts":["orders"],"policy":{"methods":["GET","POST"],"paths":["/a"]}}],"verified":true}"#,
            r#"{"destinations":[{"name":"orders","hosts":["orders","more"],"policy":{"methods":["GET"],"paths":["/a"]}}],"verified":true}"#,
            r#"{"destinations":[{"name":"orders","hosts":["orders"],"policy":{"methods":["GET"],"paths":["/a"]}}],"verified":false}"#,
            r#"{"destinations":[{"name":"orders","hosts":["orders"],"policy":{"methods":["GET"],"paths":["/a"]}}],"verified":true,"unknown_destination":"passthrough"}"#,
        ] {
            assert_ne!(plugin_digest(&plugin(changed)), digest, "{changed}");
        }
    }

    fn hex(key: &Key) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The FIPS 180-2 vector, so keys are SHA-256 whatever library computes them.
    #[test]
    fn the_digest_is_sha256() {
        assert_eq!(
            hex(&digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn moving_a_field_boundary_changes_the_key() {
        assert_ne!(params_digest(&["ab", "c"]), params_digest(&["a", "bc"]));
        let params = params_digest(&["destination", "orders"]);
        let subject = digest("token");
        assert_ne!(key(&params, "", &subject), key(&params, "read", &subject));
        assert_eq!(key(&params, "read", &subject), key(&params, "read", &subject));
    }

    #[test]
    fn a_bound_key_changes_with_the_thumbprint() {
        let k = key(&params_digest(&["orders"]), "", &digest("token"));
        assert_ne!(bound(&k, "jkt-1"), k);
        assert_ne!(bound(&k, "jkt-1"), bound(&k, "jkt-2"));
        assert_eq!(bound(&k, "jkt-1"), bound(&k, "jkt-1"));
    }
}
