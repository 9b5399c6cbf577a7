//! `baton inject` as the API server meets it: the real binary, real TLS (a CA and a server
//! certificate made here), AdmissionReviews over HTTPS. The returned JSONPatch is applied and the
//! patched pod must pass the Kubernetes schemas (`kubernetes-validate --strict`) and match the
//! hand-written sidecar example; an injected pod is left alone; bad input gets an error answer and
//! the server keeps serving.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use baton_test_support::k8s::*;
use baton_test_support::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// The name the API server would call the webhook by (the Service in k8s/overlays/injector).
const SERVICE_NAME: &str = "baton-inject.baton-system.svc";

struct Injector {
    url: String,
    client: reqwest::Client,
    _child: Child,
}

impl Injector {
    /// Start `baton inject` with the injector overlay's own inject.yaml, its TLS files pointed at a
    /// certificate for the Service name signed by a CA made here; the client trusts only that CA.
    async fn start(scratch: &Scratch) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "baton inject test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = rcgen::CertificateParams::new(vec![SERVICE_NAME.to_owned()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server cert");
        let tls = scratch.0.join("tls");
        std::fs::create_dir_all(&tls).expect("tls dir");
        std::fs::write(tls.join("tls.crt"), cert.pem()).expect("write cert");
        std::fs::write(tls.join("tls.key"), key.serialize_pem()).expect("write key");

        let shipped = std::fs::read_to_string(repo().join("k8s/overlays/injector/inject.yaml")).expect("inject.yaml");
        assert!(shipped.contains("/etc/baton-inject/tls/"));
        let config = scratch.write(
            "inject.yaml",
            &shipped.replace("/etc/baton-inject/tls/", &format!("{}/", tls.display())),
        );
        let mut child = Command::new(BATON_BIN)
            .arg("inject")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("BATON_LOG", "baton=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(scratch.log("inject.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start baton inject");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("baton inject printed no ready line within 20 s")
            .expect("read ready line")
            .expect("baton inject exited before it was ready");
        let ready: Value = serde_json::from_str(&ready).expect("ready line is JSON");
        let addr: std::net::SocketAddr = ready["listen"].as_str().expect("listen").parse().expect("address");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let ca_cert = reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("ca pem");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca_cert])
            .resolve(SERVICE_NAME, addr)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Self {
            url: format!("https://{SERVICE_NAME}:{}", addr.port()),
            client,
            _child: child,
        }
    }

    async fn post(&self, body: Vec<u8>) -> (u16, Vec<u8>) {
        let response = self
            .client
            .post(format!("{}/mutate", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST /mutate over TLS");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("body").to_vec())
    }

    /// Send `pod` for CREATE; the review's `response`.
    async fn review(&self, pod: &Value) -> Value {
        let uid = format!("uid-{}", free_port());
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        });
        let (status, body) = self.post(serde_json::to_vec(&review).expect("json")).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).expect("answer is JSON");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], uid.as_str(), "the uid is echoed");
        answer["response"].clone()
    }
}

/// Apply the answer's base64 JSONPatch to `pod`.
fn patched(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("the patch is a JSONPatch");
    let mut pod = pod.clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    pod
}

/// The pod a Deployment's ReplicaSet would create from the template.
fn pod_from(deployment: &Value) -> Value {
    let template = &deployment["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["generateName"] = json!("reports-7c9f8d-");
    metadata["name"] = json!("reports-7c9f8d-x2x4q");
    metadata["namespace"] = json!("shop");
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

fn assert_pod_valid(scratch: &Scratch, name: &str, pod: &Value) {
    let file = scratch.write(name, &serde_json::to_string_pretty(pod).expect("json"));
    assert_valid(&[file], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pod_gets_the_sidecar_example_and_passes_the_schemas() {
    let scratch = Scratch::new(BATON_BIN, "inject");
    let injector = Injector::start(&scratch).await;
    let injected = yaml_docs(&kustomize(&repo().join("k8s/overlays/injected")));
    let pod = pod_from(find(&injected, "Deployment", "reports"));

    let response = injector.review(&pod).await;
    let after = patched(&pod, &response);
    assert_pod_valid(&scratch, "patched-pod.json", &after);

    // The app container is untouched; the sidecars come first, as native sidecars.
    assert_eq!(after["spec"]["containers"], pod["spec"]["containers"]);
    let init = after["spec"]["initContainers"].as_array().expect("initContainers");
    let names: Vec<&str> = init.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["baton", "baton-envoy"]);
    assert_eq!(after["metadata"]["annotations"]["baton.dev/status"], "injected");

    // What it mounts is in the namespace's overlay (the Secret is the user's to create).
    for volume in after["spec"]["volumes"].as_array().expect("volumes") {
        if let Some(name) = volume["configMap"]["name"].as_str() {
            find(&injected, "ConfigMap", name);
        }
    }

    // And it is exactly the hand-written sidecar example: one design, documented and injected.
    let example = yaml_docs(&kustomize(&repo().join("k8s/overlays/sidecar")));
    let example = &find(&example, "Deployment", "orders-client")["spec"]["template"]["spec"];
    assert_eq!(after["spec"]["initContainers"], example["initContainers"]);
    assert_eq!(after["spec"]["volumes"], example["volumes"]);

    // Idempotent: the patched pod (a reinvocation) is admitted with no patch.
    let again = injector.review(&after).await;
    assert_eq!(again["allowed"], true);
    assert!(again.get("patch").is_none(), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_init_containers_and_volumes_are_kept() {
    let scratch = Scratch::new(BATON_BIN, "inject-existing");
    let injector = Injector::start(&scratch).await;
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "batch-1",
            "namespace": "shop",
            "annotations": {"baton.dev/inject": "true", "baton.dev/config": "batch-baton", "baton.dev/client-secret": "batch-client"},
        },
        "spec": {
            "initContainers": [{"name": "migrate", "image": "registry.example.com/migrate:1"}],
            "containers": [{"name": "app", "image": "registry.example.com/batch:1",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    });
    let after = patched(&pod, &injector.review(&pod).await);
    assert_pod_valid(&scratch, "patched-pod.json", &after);
    let names: Vec<&str> = after["spec"]["initContainers"]
        .as_array()
        .expect("init")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["baton", "baton-envoy", "migrate"]);
    let volumes = after["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(volumes[0]["name"], "data");
    assert!(volumes.iter().any(|v| v["configMap"]["name"] == "batch-baton"));
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "batch-client"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_not_asking_and_bad_input_are_answered_without_a_patch() {
    let scratch = Scratch::new(BATON_BIN, "inject-bad");
    let injector = Injector::start(&scratch).await;

    // Not annotated: admitted as is.
    let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
                       "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    let response = injector.review(&plain).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");

    // A typo in the annotation: refused with the reason, so the user sees it in `kubectl` output.
    let typo = json!({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "typo", "annotations": {"baton.dev/inject": "yes"}},
                      "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    let response = injector.review(&typo).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(message.contains("inject_annotation_invalid"), "{message}");

    // A pod in which something besides Baton and Envoy would be in the socket's group (65532) or
    // run as one of them: refused, since it could then connect to Baton as Envoy does.
    for (what, pod_context, app_context) in [
        ("fsGroup", json!({"fsGroup": 65532}), json!({})),
        ("supplementalGroups", json!({"supplementalGroups": [65532]}), json!({})),
        ("the app's group", json!({}), json!({"runAsGroup": 65532})),
        ("the pod's default group", json!({"runAsGroup": 65532}), json!({})),
        ("Envoy's user", json!({}), json!({"runAsUser": 65533})),
    ] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "shared", "annotations": {"baton.dev/inject": "true"}},
                         "spec": {"securityContext": pod_context,
                                  "containers": [{"name": "app", "image": "app:1", "securityContext": app_context}]}});
        let response = injector.review(&pod).await;
        assert_eq!(response["allowed"], false, "{what}");
        let message = response["status"]["message"].as_str().expect("message");
        assert!(message.contains("socket_identity_shared"), "{what}: {message}");
    }

    // Not an AdmissionReview: 400 with a reason code (there is no uid to answer to).
    for (body, reason) in [
        (b"{not json".to_vec(), "admission_review_malformed"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#.to_vec(),
            "admission_review_version",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "admission_review_no_request",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u"}}"#.to_vec(),
            "admission_review_malformed",
        ),
    ] {
        let (status, text) = injector.post(body).await;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, 400, "{text}");
        assert!(text.starts_with(reason), "{text} / {reason}");
    }

    // Every prefix of a good review, and values of the wrong type, get an answer: never a dropped
    // connection (a panicking handler), never a 5xx.
    let good = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
                    "object": {"metadata": {"annotations": {"baton.dev/inject": "true"}}, "spec": {"containers": [{"name": "a"}]}}},
    }))
    .expect("json");
    let mut bodies: Vec<Vec<u8>> = (0..good.len()).step_by(7).map(|n| good[..n].to_vec()).collect();
    for (from, to) in [
        (r#""uid":"u1""#, r#""uid":null"#),
        (r#""containers":[{"name":"a"}]"#, r#""containers":7"#),
        (r#""annotations":{"#, r#""annotations":[],"x":{"#),
        (r#""object":{"#, r#""object":[],"y":{"#),
        (r#""operation":"CREATE""#, r#""operation":{}"#),
    ] {
        let text = String::from_utf8(good.clone()).expect("utf-8");
        assert!(text.contains(from), "{from}");
        bodies.push(text.replace(from, to).into_bytes());
    }
    for body in bodies {
        let (status, text) = injector.post(body).await;
        assert!(
            status == 200 || status == 400,
            "{status}: {}",
            String::from_utf8_lossy(&text)
        );
    }

    // Over max_body_bytes (2 MiB in inject.yaml): 413, the body is not buffered whole.
    let (status, text) = injector.post(vec![b' '; 2 * 1024 * 1024 + 1]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&text));

    // Still serving, over TLS only.
    let health = injector
        .client
        .get(format!("{}/healthz", injector.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let port = injector.url.rsplit(':').next().expect("port");
    let clear = http().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(clear.map_or(true, |r| !r.status().is_success()), "served without TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_is_refused_with_every_error() {
    let scratch = Scratch::new(BATON_BIN, "inject-config");
    let config = scratch.write(
        "inject.yaml",
        "run_as_user: 0\nbaton:\n  resources:\n    limits: { memory: lots }\n",
    );
    let output = tokio::process::Command::new(BATON_BIN)
        .arg("inject")
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .expect("run baton inject");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for field in ["baton.image", "run_as_user", "baton.resources.limits.memory"] {
        assert!(stderr.contains(field), "{field} not in {stderr}");
    }
}
