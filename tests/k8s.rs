//! The Kubernetes and Istio manifests in k8s/: each file and each rendered kustomize overlay passes
//! the Kubernetes API schemas (`kubernetes-validate --strict`), the Istio objects pass Istio's
//! schemas, the Envoy configuration in them passes the real Envoy's validation, and the Baton
//! configurations in them pass `baton check-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use baton_test_support::k8s::*;
use baton_test_support::*;
use serde_json::{Value, json};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

fn k8s() -> PathBuf {
    repo().join("k8s")
}

/// Every YAML file under `dir`, recursively.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The Kubernetes objects in k8s/ (not kustomizations, not configuration files, not Istio's or
/// prometheus-operator's).
fn kubernetes_manifests() -> Vec<PathBuf> {
    yaml_files(&k8s())
        .into_iter()
        .filter(|p| {
            let docs = yaml_docs(&std::fs::read_to_string(p).expect("read"));
            docs.iter().all(|d| {
                d["apiVersion"]
                    .as_str()
                    .is_some_and(|v| !v.contains("kustomize.config.k8s.io"))
                    && !d["apiVersion"].as_str().is_some_and(|v| v.contains("istio.io"))
                    // prometheus-operator's kinds: their own schemas, in tests/alerts.rs.
                    && !d["apiVersion"].as_str().is_some_and(|v| v.contains("monitoring.coreos.com"))
                    && d.get("kind").is_some()
            })
        })
        .collect()
}

const OVERLAYS: [&str; 4] = ["sidecar", "broker", "injector", "injected"];

#[test]
fn every_manifest_passes_the_kubernetes_schemas() {
    let files = kubernetes_manifests();
    // The set is what we think it is: a file that stopped parsing as an object would drop out.
    for expected in [
        "overlays/sidecar/deployment.yaml",
        "overlays/broker/horizontalpodautoscaler.yaml",
        "overlays/injector/mutatingwebhookconfiguration.yaml",
        "istio/deployment-example.yaml",
    ] {
        assert!(
            files.contains(&k8s().join(expected)),
            "{expected} not found in {files:?}"
        );
    }
    assert_valid(&files, files.len());
}

#[test]
fn every_overlay_renders_and_passes_the_kubernetes_schemas() {
    let scratch = Scratch::new(BATON_BIN, "kustomize");
    for overlay in OVERLAYS {
        let rendered = kustomize(&k8s().join("overlays").join(overlay));
        let documents = yaml_docs(&rendered).len();
        assert!(documents >= 3, "{overlay}: {documents} documents");
        let file = scratch.write(&format!("{overlay}.yaml"), &rendered);
        assert_valid(&[file], documents);
    }
}

/// The check above is live: a manifest with a misspelt field fails it.
#[test]
fn the_strict_schema_check_refuses_an_unknown_field() {
    let scratch = Scratch::new(BATON_BIN, "strict");
    let file = scratch.write(
        "bad.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\nautomountServiceAcountToken: false\n",
    );
    let v = kubernetes_validate(&[file]);
    assert!(!v.success, "a misspelt field passed:\n{}", v.output);
}

/// Every ConfigMap, Secret and ServiceAccount a rendered pod template refers to is either in the
/// same output or one of the Secrets the README tells the user to create.
#[test]
fn the_overlays_refer_only_to_objects_they_define_or_document() {
    let documented_secrets = ["baton-client", "baton-inject-tls", "baton-broker-tls"];
    for overlay in OVERLAYS {
        let docs = yaml_docs(&kustomize(&k8s().join("overlays").join(overlay)));
        for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
            let spec = &deployment["spec"]["template"]["spec"];
            let account = spec["serviceAccountName"].as_str().expect("a named ServiceAccount");
            find(&docs, "ServiceAccount", account);
            for volume in spec["volumes"].as_array().into_iter().flatten() {
                if let Some(name) = volume["configMap"]["name"].as_str() {
                    find(&docs, "ConfigMap", name);
                }
                if let Some(name) = volume["secret"]["secretName"].as_str() {
                    assert!(documented_secrets.contains(&name), "{overlay}: Secret {name}");
                }
            }
        }
    }
}

#[test]
fn the_injector_webhook_is_scoped_and_fails_closed() {
    let docs = yaml_docs(&kustomize(&k8s().join("overlays/injector")));
    let webhook = &find(&docs, "MutatingWebhookConfiguration", "baton-inject")["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["clientConfig"]["service"]["namespace"], "baton-system");
    assert_eq!(webhook["clientConfig"]["service"]["path"], "/mutate");
    assert_eq!(
        webhook["namespaceSelector"]["matchLabels"]["baton.dev/injection"],
        "enabled"
    );
    // The webhook never sees its own pods: they carry the label its objectSelector excludes.
    let deployment = find(&docs, "Deployment", "baton-inject");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let excluded = &webhook["objectSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    let key = excluded["key"].as_str().expect("key");
    assert!(excluded["values"].as_array().expect("values").contains(&labels[key]));
    // Least privilege: no API token in the pod, and no Role or binding anywhere.
    assert_eq!(
        deployment["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    assert!(
        !docs
            .iter()
            .any(|d| d["apiVersion"].as_str().is_some_and(|v| v.starts_with("rbac.")))
    );
    // The configuration it mounts is valid.
    let config = find_prefixed(&docs, "ConfigMap", "baton-inject");
    let yaml = config["data"]["inject.yaml"].as_str().expect("inject.yaml");
    baton_inject::InjectConfig::from_yaml(yaml).unwrap_or_else(|e| panic!("inject.yaml: {e}"));
}

/// kustomize suffixes generated names with a hash.
fn find_prefixed<'a>(docs: &'a [Value], kind: &str, prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no {kind} {prefix}* in the rendered output"))
}

/// Every container in every rendered pod template, and in the Istio example, is hardened the same
/// way.
#[test]
fn every_container_is_hardened_and_bounded() {
    let istio = std::fs::read_to_string(k8s().join("istio/deployment-example.yaml")).expect("read");
    let rendered = OVERLAYS
        .iter()
        .map(|overlay| ((*overlay).to_owned(), kustomize(&k8s().join("overlays").join(overlay))))
        .chain([("istio example".to_owned(), istio)]);
    for (overlay, text) in rendered {
        let docs = yaml_docs(&text);
        for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
            let spec = &deployment["spec"]["template"]["spec"];
            let containers = spec["containers"]
                .as_array()
                .into_iter()
                .chain(spec["initContainers"].as_array())
                .flatten();
            for c in containers {
                let at = format!("{overlay}: container {}", c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(sc["runAsNonRoot"], true, "{at}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{at}");
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{at}");
                assert!(c["resources"]["requests"]["memory"].is_string(), "{at}");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{at}");
            }
        }
    }
}

// === The configuration inside the manifests ===

/// `baton check-config FILE` with `text`: Ok, or its output.
fn check_config(scratch: &Scratch, name: &str, text: &str) -> Result<(), String> {
    let file = scratch.write(&format!("{name}.yaml"), text);
    let output = Command::new(BATON_BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run baton check-config");
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// A CA, and a server certificate it signed, as PEM files in `dir`: ca.crt, tls.crt, tls.key.
fn write_tls_files(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "baton k8s test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = rcgen::CertificateParams::new(vec!["baton.shop.svc".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server cert");
    std::fs::create_dir_all(dir).expect("tls dir");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write ca");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write key");
}

/// The ConfigMaps' baton.yaml files pass `baton check-config`, with the mounted files' paths (the
/// client secret, the projected actor token, the broker's TLS files) pointed at scratch files (the
/// real ones only exist in a pod).
#[test]
fn the_baton_configurations_pass_check_config() {
    let scratch = Scratch::new(BATON_BIN, "k8s-check-config");
    let secret = scratch.write("client-secret", "not-a-real-secret");
    let actor_token = scratch.write("actor-token", "not-a-real-service-account-token");
    let tls = scratch.0.join("tls");
    write_tls_files(&tls);
    for (name, path) in [("base", "base/baton.yaml"), ("broker", "overlays/broker/baton.yaml")] {
        let text = std::fs::read_to_string(k8s().join(path)).expect("read");
        assert!(
            text.contains("/etc/baton/secret/client-secret"),
            "{path} reads the mounted Secret"
        );
        let local = text
            .replace("/etc/baton/secret/client-secret", &secret.display().to_string())
            .replace("/var/run/secrets/baton/token", &actor_token.display().to_string())
            .replace("/etc/baton/tls/", &format!("{}/", tls.display()));
        check_config(&scratch, name, &local).unwrap_or_else(|said| panic!("{path}: {said}"));
    }
    // The sidecar's Baton listens where the injected Envoy bootstrap and probes expect it.
    let base = std::fs::read_to_string(k8s().join("base/baton.yaml")).expect("read");
    let bootstrap = std::fs::read_to_string(k8s().join("components/envoy-sidecar/envoy.yaml")).expect("read");
    let socket = "/var/run/baton/baton.sock";
    assert!(base.contains(&format!("grpc_uds: {socket}")));
    assert!(bootstrap.contains(&format!("pipe: {{ path: {socket} }}")));
    assert!(base.contains("admin: 0.0.0.0:9901"));
}

// === Who can reach Baton ===

/// `listen:` of a baton.yaml, as JSON.
fn listen_of(path: &str) -> Value {
    let text = std::fs::read_to_string(k8s().join(path)).expect("read");
    yaml_docs(&text)[0]["listen"].clone()
}

/// A group id in a manifest: a number, or a number in a string.
fn gid(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// In a pod that runs Baton beside other containers, Baton's gRPC is a Unix socket only (no TCP
/// listener, which every container shares on loopback), mode 0660, in a group that Baton and the
/// proxy run in and nothing else in the pod does; only those two containers mount its volume.
fn assert_socket_only_for_the_proxy(at: &str, spec: &Value, listen: &Value, proxy: Option<&str>, proxy_group: i64) {
    assert!(
        listen.get("grpc").is_none(),
        "{at}: a TCP gRPC listener in a shared pod: {listen}"
    );
    assert_eq!(listen["grpc_uds"], "/var/run/baton/baton.sock", "{at}");
    assert_eq!(listen["grpc_uds_mode"], "0660", "{at}");
    let group = gid(&listen["grpc_uds_group"]).unwrap_or_else(|| panic!("{at}: no grpc_uds_group"));
    assert_eq!(group, proxy_group, "{at}: the socket's group is the proxy's");
    let pod = &spec["securityContext"];
    assert!(
        pod.get("fsGroup").is_none() && pod.get("supplementalGroups").is_none(),
        "{at}: {pod}"
    );
    assert!(
        gid(&pod["runAsGroup"]) != Some(group),
        "{at}: the pod's default group is the socket's"
    );
    let containers: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .collect();
    let mounts_socket = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "baton-socket"))
    };
    let mut mounting: Vec<&str> = containers
        .iter()
        .filter(|c| mounts_socket(c))
        .filter_map(|c| c["name"].as_str())
        .collect();
    mounting.sort_unstable();
    let mut expected: Vec<&str> = ["baton"].into_iter().chain(proxy).collect();
    expected.sort_unstable();
    assert_eq!(mounting, expected, "{at}: who mounts the socket's volume");
    let baton = containers.iter().find(|c| c["name"] == "baton").expect("baton");
    assert_eq!(
        gid(&baton["securityContext"]["runAsGroup"]),
        Some(group),
        "{at}: Baton creates it in the group"
    );
    for c in &containers {
        let name = c["name"].as_str().unwrap_or_default();
        let context = &c["securityContext"];
        let in_group = gid(&context["runAsGroup"]) == Some(group);
        let expected = name == "baton" || Some(name) == proxy;
        assert_eq!(in_group, expected, "{at}: container {name}'s group");
        assert!(context["runAsGroup"].is_i64(), "{at}: container {name} names its group");
        assert!(context["runAsUser"].is_i64(), "{at}: container {name} names its user");
    }
    if let Some(proxy) = proxy {
        let user = |name: &str| {
            containers
                .iter()
                .find(|c| c["name"] == name)
                .map(|c| c["securityContext"]["runAsUser"].clone())
        };
        assert_ne!(
            user("baton"),
            user(proxy),
            "{at}: Baton and Envoy share a group, never a user"
        );
    }
}

#[test]
fn in_the_sidecar_pod_only_envoy_can_reach_baton() {
    let docs = yaml_docs(&kustomize(&k8s().join("overlays/sidecar")));
    let deployment = find(&docs, "Deployment", "orders-client");
    let config = find(&docs, "ConfigMap", "baton")["data"]["baton.yaml"]
        .as_str()
        .expect("baton.yaml");
    let listen = yaml_docs(config)[0]["listen"].clone();
    let spec = &deployment["spec"]["template"]["spec"];
    assert_socket_only_for_the_proxy("sidecar", spec, &listen, Some("baton-envoy"), 65532);
    // The injector's defaults are the same: one design, hand-written and injected.
    let inject = std::fs::read_to_string(k8s().join("overlays/injector/inject.yaml")).expect("read");
    let sidecar = baton_inject::InjectConfig::from_yaml(&inject)
        .expect("inject.yaml")
        .sidecar;
    assert_eq!(Some(sidecar.socket_group), gid(&listen["grpc_uds_group"]));
}

/// In Istio, istio-proxy (UID and GID 1337) takes Envoy's place: it mounts the socket's volume
/// through Istio's userVolumeMount annotation, and the EnvoyFilter's cluster is that socket.
#[test]
fn in_the_istio_pod_only_istio_proxy_can_reach_baton() {
    let docs = yaml_docs(&std::fs::read_to_string(k8s().join("istio/deployment-example.yaml")).expect("read"));
    let template = &docs[0]["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["baton.dev/delegation"], "enabled");
    let mounts: Value = serde_json::from_str(
        template["metadata"]["annotations"]["sidecar.istio.io/userVolumeMount"]
            .as_str()
            .expect("the userVolumeMount annotation"),
    )
    .expect("JSON");
    assert_eq!(mounts, json!([{"name": "baton-socket", "mountPath": "/var/run/baton"}]));
    // Baton's configuration there: the base one, in istio-proxy's group.
    let mut listen = listen_of("base/baton.yaml");
    listen["grpc_uds_group"] = json!("1337");
    assert_socket_only_for_the_proxy("istio", &template["spec"], &listen, None, 1337);
    let filter = yaml_docs(&std::fs::read_to_string(k8s().join("istio/envoyfilter.yaml")).expect("read"));
    let cluster = filter[0]["spec"]["configPatches"]
        .as_array()
        .expect("patches")
        .iter()
        .find(|p| p["applyTo"] == "CLUSTER")
        .expect("the cluster")["patch"]["value"]
        .clone();
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
    assert_eq!(address, &json!({"pipe": {"path": "/var/run/baton/baton.sock"}}));
}

/// The central broker is on the pod network, so its gRPC listener is TLS with a required client
/// certificate and an allow-list of callers, its files from a mounted Secret; never plain text.
#[test]
fn the_central_broker_listens_only_with_tls() {
    let listen = listen_of("overlays/broker/baton.yaml");
    assert_eq!(listen["grpc"], "0.0.0.0:9191");
    assert!(listen.get("grpc_uds").is_none());
    assert_ne!(listen["insecure_plaintext"], true);
    let tls = &listen["grpc_tls"];
    for key in ["cert_file", "key_file", "client_ca_file"] {
        let path = tls[key].as_str().unwrap_or_else(|| panic!("grpc_tls.{key}"));
        assert!(path.starts_with("/etc/baton/tls/"), "{key}: {path}");
    }
    assert!(
        tls["allowed_callers"].as_array().is_some_and(|a| !a.is_empty()),
        "{tls}"
    );
    let docs = yaml_docs(&kustomize(&k8s().join("overlays/broker")));
    let spec = &find(&docs, "Deployment", "baton-broker")["spec"]["template"]["spec"];
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["secret"]["secretName"] == "baton-broker-tls")
        .expect("the TLS Secret's volume");
    let mount = spec["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("mounted");
    assert_eq!(mount["mountPath"], "/etc/baton/tls");
    assert_eq!(mount["readOnly"], true);
}

#[test]
fn the_sidecar_envoy_bootstrap_passes_envoy_validation() {
    let scratch = Scratch::new(BATON_BIN, "k8s-envoy");
    let docs = yaml_docs(&kustomize(&k8s().join("overlays/sidecar")));
    let bootstrap = find(&docs, "ConfigMap", "baton-envoy")["data"]["envoy.yaml"]
        .as_str()
        .expect("envoy.yaml");
    for required in ["failure_mode_allow: false", "timeout: 3s", "http2_protocol_options"] {
        assert!(bootstrap.contains(required), "the bootstrap lacks {required}");
    }
    envoy::validate(&scratch, "envoy.yaml", bootstrap);
}

// === Istio ===

#[test]
fn the_istio_objects_pass_istios_schemas() {
    let files: Vec<PathBuf> = yaml_files(&k8s().join("istio"))
        .into_iter()
        .filter(|p| {
            let docs = yaml_docs(&std::fs::read_to_string(p).expect("read"));
            docs.iter()
                .all(|d| d["apiVersion"].as_str().is_some_and(|v| v.contains("istio.io")))
        })
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let (ok, output) = istio_validate(&files);
    assert!(ok, "{output}");
    assert_eq!(output.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{output}");

    // The rendered kustomization too.
    let scratch = Scratch::new(BATON_BIN, "istio");
    let rendered = scratch.write("istio.yaml", &kustomize(&k8s().join("istio")));
    let (ok, output) = istio_validate(&[rendered]);
    assert!(ok, "{output}");
}

/// The check above is live: a wrong `applyTo` fails it.
#[test]
fn istios_schema_refuses_a_broken_envoyfilter() {
    let scratch = Scratch::new(BATON_BIN, "istio-bad");
    let good = std::fs::read_to_string(k8s().join("istio/envoyfilter.yaml")).expect("read");
    let bad = good.replace("applyTo: HTTP_FILTER", "applyTo: HTTP_FILTERS");
    assert_ne!(good, bad);
    let (ok, output) = istio_validate(&[scratch.write("bad.yaml", &bad)]);
    assert!(!ok, "a wrong applyTo passed: {output}");
    assert!(output.contains("applyTo"), "{output}");
}

/// The filter and the cluster the EnvoyFilter inserts, placed in a bootstrap the way istio-proxy
/// would hold them, pass the real Envoy's validation (Istio's schema does not look inside them).
#[test]
fn the_istio_patches_pass_envoy_validation() {
    let docs = yaml_docs(&std::fs::read_to_string(k8s().join("istio/envoyfilter.yaml")).expect("read"));
    let patches = docs[0]["spec"]["configPatches"].as_array().expect("configPatches");
    let patch = |apply_to: &str| {
        let p = patches
            .iter()
            .find(|p| p["applyTo"] == apply_to)
            .unwrap_or_else(|| panic!("no {apply_to} patch"));
        assert_eq!(p["match"]["context"], "SIDECAR_OUTBOUND");
        p["patch"]["value"].clone()
    };
    let filter = patch("HTTP_FILTER");
    let cluster = patch("CLUSTER");
    assert_eq!(filter["typed_config"]["failure_mode_allow"], false);
    assert_eq!(
        cluster["name"],
        filter["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    );

    let route = std::fs::read_to_string(k8s().join("istio/destination-route.yaml")).expect("read");
    let per_route = yaml_docs(&route)[0]["spec"]["configPatches"][0]["patch"]["value"].clone();
    let mut route = json!({"match": {"prefix": "/"}, "route": {"cluster": "baton"}});
    route
        .as_object_mut()
        .expect("route")
        .extend(per_route.as_object().expect("value").clone());
    let bootstrap = json!({
        "static_resources": {
            "listeners": [{
                "name": "outbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15001}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "outbound",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
                        "http_filters": [filter, {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [cluster],
        },
    });
    let scratch = Scratch::new(BATON_BIN, "istio-envoy");
    envoy::validate(&scratch, "bootstrap.json", &bootstrap.to_string());
}

// === The sidecar bootstrap, running ===

/// The shipped sidecar bootstrap, run by the real Envoy with only its ports and socket path moved
/// to free ones: the app uses it as its HTTP proxy, Baton answers over the Unix socket, the token a
/// listed host receives is exchanged, an unlisted host gets none, and with Baton gone the request
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_bootstrap_delegates_through_the_real_envoy() {
    let scratch = Scratch::new(BATON_BIN, "k8s-sidecar");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let upstream = Upstream::start().await;
    let socket = scratch.0.join("baton.sock");
    let admin = free_port();
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
    let config = scratch.write(
        "baton.yaml",
        &format!(
            "listen:\n  grpc: 127.0.0.1:{}\n  grpc_uds: {}\n  admin: 127.0.0.1:{admin}\ntoken_service:\n{token_service}\ndestinations:\n  - name: orders\n    hosts: [\"localhost:{}\"]\n    audience: {ORDERS}\n",
            free_port(),
            socket.display(),
            upstream.port
        ),
    );
    let mut baton = tokio::process::Command::new(BATON_BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stderr(scratch.log("baton.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start baton");
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    wait_until("baton /readyz", std::time::Duration::from_secs(20), || async {
        http().get(&ready).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;

    let shipped = std::fs::read_to_string(k8s().join("components/envoy-sidecar/envoy.yaml")).expect("read");
    let (outbound, health) = (free_port(), free_port());
    let mut bootstrap = shipped.clone();
    for (from, to) in [
        ("port_value: 15001".to_owned(), format!("port_value: {outbound}")),
        ("port_value: 15021".to_owned(), format!("port_value: {health}")),
        ("port_value: 9902".to_owned(), format!("port_value: {}", free_port())),
        ("address: 0.0.0.0".to_owned(), "address: 127.0.0.1".to_owned()),
        ("/var/run/baton/baton.sock".to_owned(), socket.display().to_string()),
    ] {
        assert!(bootstrap.contains(&from), "the bootstrap has {from}");
        bootstrap = bootstrap.replace(&from, &to);
    }
    // Envoy::start_with_bootstrap reads the first port_value as the listener's: it is the admin's
    // here, so probe the outbound listener ourselves.
    let file = scratch.write("envoy.yaml", &bootstrap);
    let _envoy = tokio::process::Command::new(envoy_bin())
        .args(["--use-dynamic-base-id", "--log-level", "warn", "-c"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stderr(scratch.log("envoy.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start envoy");
    let probe = format!("http://127.0.0.1:{health}/ready");
    wait_until(
        "envoy's health listener",
        std::time::Duration::from_secs(30),
        || async { http().get(&probe).send().await.is_ok_and(|r| r.status().is_success()) },
    )
    .await;

    let app = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://127.0.0.1:{outbound}")).expect("proxy"))
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client");
    let user = service.mint("alice", "orders.read").await;
    let get = |url: String| {
        let request = app.get(url).header("authorization", bearer(&user));
        async move {
            let response = request.send().await.expect("request through the sidecar");
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (status, body)
        }
    };

    // A listed host: the upstream gets a token for it, not the user's.
    let (status, body) = get(format!("http://localhost:{}/orders", upstream.port)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("a bearer token upstream");
    assert_ne!(token, user);
    assert_eq!(audiences(&service.verify(token).await), [ORDERS]);

    // An unlisted host (same upstream, by address): the token is stripped.
    let (status, body) = get(format!("http://127.0.0.1:{}/", upstream.port)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["authorization"], Value::Null, "{body}");

    // Baton gone: refused, never forwarded with the user's token (failure_mode_allow: false).
    baton.kill().await.expect("kill baton");
    let (status, body) = get(format!("http://localhost:{}/orders", upstream.port)).await;
    assert_eq!(status, 403, "{body}");
}

// === Istio, in-proxy mode ===

/// The WasmPlugin and its cluster pass Istio's schemas, rendered by kustomize too; its
/// `pluginConfig` is one the filter accepts (its own parser), naming base/baton.yaml's destinations
/// with the same hosts; and the schema check is live (an unknown traffic `mode` fails it).
#[test]
fn the_wasm_plugin_passes_istios_schema_and_the_filters_own_validation() {
    let file = k8s().join("istio-wasm/wasmplugin.yaml");
    let (ok, output) = istio_validate(std::slice::from_ref(&file));
    assert!(ok, "{output}");
    assert_eq!(output.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{output}");
    let scratch = Scratch::new(BATON_BIN, "istio-wasm");
    let rendered = scratch.write("istio-wasm.yaml", &kustomize(&k8s().join("istio-wasm")));
    let (ok, output) = istio_validate(&[rendered]);
    assert!(ok, "{output}");

    let text = std::fs::read_to_string(&file).expect("read");
    let docs = yaml_docs(&text);
    let plugin = docs.iter().find(|d| d["kind"] == "WasmPlugin").expect("a WasmPlugin");
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
    assert_eq!(plugin["spec"]["match"][0]["mode"], "CLIENT", "outbound traffic");
    let config = plugin["spec"]["pluginConfig"].to_string();
    let settings = baton_wasm::config::Settings::from_json(config.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.sidecar_cluster, "baton");
    let cluster = docs.iter().find(|d| d["kind"] == "EnvoyFilter").expect("the cluster");
    assert_eq!(cluster["spec"]["configPatches"][0]["patch"]["value"]["name"], "baton");
    let base = yaml_docs(&std::fs::read_to_string(k8s().join("base/baton.yaml")).expect("read"));
    for destination in plugin["spec"]["pluginConfig"]["destinations"]
        .as_array()
        .expect("destinations")
    {
        let name = &destination["name"];
        let configured = base[0]["destinations"]
            .as_array()
            .expect("base destinations")
            .iter()
            .find(|d| &d["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in base/baton.yaml"));
        for host in destination["hosts"].as_array().expect("hosts") {
            assert!(
                configured["hosts"].as_array().expect("hosts").contains(host),
                "{name}: {host} is not one of base/baton.yaml's hosts"
            );
        }
    }

    let bad = scratch.write("bad.yaml", &text.replace("mode: CLIENT", "mode: OUTBOUND"));
    let (ok, output) = istio_validate(&[bad]);
    assert!(!ok, "an unknown mode passed: {output}");
    assert!(output.contains("mode"), "{output}");
}
