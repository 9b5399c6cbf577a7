//! The edge shape (docs/edge.md): Baton behind a front Envoy exchanges an external identity
//! provider's token for an internal token service's token, at the trust boundary. Two real token
//! services: panva's oidc-provider as the external identity provider, and `baton sts` as the
//! internal one (another issuer), which accepts the external tokens through its
//! `trusted_subject_issuers`. The edge Envoy runs `examples/edge/envoy.yaml` (ext_authz) or
//! `envoy-ext-proc.yaml` (ext_proc) and Baton `examples/edge/baton.yaml`, changed only where they
//! must point at this test's processes. Also:
//! the Istio ingress-gateway manifests in `k8s/edge/` against their schemas.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use baton_test_support::k8s::*;
use baton_test_support::*;
use serde_json::{Value, json};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// The audience of the external identity provider's tokens for this API (examples/edge/baton.yaml).
const API: &str = "https://api.example.com";
const ORDERS_INTERNAL: &str = "https://orders.internal.example";
const BILLING_INTERNAL: &str = "https://billing.internal.example";

fn example(name: &str) -> String {
    std::fs::read_to_string(repo().join("examples/edge").join(name)).expect("read the example")
}

/// `text` with `from` replaced by `to`, which must occur exactly once (so the example cannot drift
/// away from what the test changes without the test saying so).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` once in the example");
    text.replacen(from, to, 1)
}

/// Everything the edge runs: the two token services, Baton, the edge Envoy and two backends.
struct Edge {
    external: TokenService,
    internal: TokenService,
    envoy: Envoy,
    _baton: Baton,
    _backends: (Upstream, Upstream),
    _scratch: Scratch,
}

impl Edge {
    /// The edge with the Envoy bootstrap `examples/edge/<bootstrap>`.
    async fn start(name: &str, bootstrap: &str) -> Self {
        let scratch = Scratch::new(BATON_BIN, name);
        let external = TokenService::start_with(
            Peer::OidcProvider,
            &scratch,
            PeerOptions {
                name: Some("external-idp"),
                ..Default::default()
            },
        )
        .await;
        // The internal token service trusts the external issuer's tokens for this API as subject
        // tokens, and issues its own for the backends.
        let trusted = format!(
            "trusted_subject_issuers:\n  - issuer: {}\n    jwks_uri: {}\n    audiences: [{API}]\n",
            external.issuer, external.jwks_uri
        );
        let internal = TokenService::start_with(
            Peer::BatonSts,
            &scratch,
            PeerOptions {
                name: Some("internal-sts"),
                audiences: vec![ORDERS_INTERNAL.into(), BILLING_INTERNAL.into()],
                sts_extra: Some(trusted),
                ..Default::default()
            },
        )
        .await;
        assert_ne!(external.issuer, internal.issuer);

        // Baton: the example, pointed at these services. The harness sets `listen` and adds its
        // own `telemetry` (dynamic_metadata on, as in the example, plus spans it scans for leaks).
        let mut config: Value = baton_core::files::parse_yaml(&example("baton.yaml")).expect("baton.yaml");
        assert_eq!(config["telemetry"], json!({ "dynamic_metadata": true }));
        let object = config.as_object_mut().expect("a mapping");
        object.remove("listen");
        object.remove("telemetry");
        let issuer = &mut config["trusted_issuers"][0];
        assert_eq!(issuer["audiences"], json!([API]));
        issuer["issuer"] = json!(external.issuer);
        issuer["jwks_uri"] = json!(external.jwks_uri);
        let service = &mut config["token_service"];
        service["token_endpoint"] = json!(internal.token_endpoint);
        service["client_id"] = json!(CLIENT_ID);
        service["auth"]["secret_file"] = json!(scratch.write("baton-client-secret", CLIENT_SECRET));
        let yaml = serde_saphyr::to_string(&config).expect("yaml");
        let baton = Baton::start_raw(&scratch, &yaml, "baton=debug,info").await;

        // The edge Envoy: the example with this test's addresses; its filters, routes and
        // connection-manager settings as written.
        let (orders, billing) = (Upstream::start().await, Upstream::start().await);
        let mut bootstrap = example(bootstrap);
        for (from, to) in [
            (
                "address: 0.0.0.0, port_value: 8080".to_owned(),
                format!("address: 127.0.0.1, port_value: {}", free_port()),
            ),
            (
                "address: 127.0.0.1, port_value: 9191".to_owned(),
                format!("address: 127.0.0.1, port_value: {}", baton.grpc),
            ),
            (
                "address: orders.internal.example, port_value: 8080".to_owned(),
                format!("address: 127.0.0.1, port_value: {}", orders.port),
            ),
            (
                "address: billing.internal.example, port_value: 8080".to_owned(),
                format!("address: 127.0.0.1, port_value: {}", billing.port),
            ),
            ("path: /dev/stdout".to_owned(), "path: @ACCESS_LOG@".to_owned()),
        ] {
            bootstrap = replace_once(&bootstrap, &from, &to);
        }
        let bootstrap = bootstrap.replace("type: STRICT_DNS", "type: STATIC");
        let envoy = Envoy::start_with_bootstrap(&scratch, &bootstrap).await;
        Self {
            external,
            internal,
            envoy,
            _baton: baton,
            _backends: (orders, billing),
            _scratch: scratch,
        }
    }

    /// A user's token from the external identity provider, for this API.
    async fn external_token(&self, sub: &str) -> String {
        self.external
            .mint_with(&[("sub", sub), ("aud", API), ("scope", "orders.read")])
            .await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let authorization = token.map(bearer);
        send(&self.envoy, "api.example.com", path, authorization.as_deref()).await
    }

    /// The edge Envoy's access-log line for `path`, once written.
    async fn access_line(&self, path: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(line) = self.envoy.access_log().into_iter().find(|l| l["path"] == path) {
                return line;
            }
            assert!(tokio::time::Instant::now() < deadline, "no access-log line for {path}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_token_reaches_the_backend_as_an_internal_token() {
    let edge = Edge::start("edge-exchange", "envoy.yaml").await;
    let alice = edge.external_token("alice").await;

    let reply = edge.get("/orders/42", Some(&alice)).await;
    assert_eq!(reply.body["path"], "/orders/42", "routed to the orders backend");
    assert_eq!(reply.body["authorization_count"], 1);
    let internal = reply.upstream_token().to_owned();
    assert_ne!(internal, alice, "the backend received the external token");
    assert!(!reply.body.to_string().contains(&alice));
    // Signed by the internal token service, for the backend the route named, for the user.
    let claims = edge.internal.verify(&internal).await;
    assert_eq!(claims["iss"], edge.internal.issuer.as_str());
    assert_eq!(audiences(&claims), [ORDERS_INTERNAL]);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "orders.read");
    assert_eq!(edge.internal.exchanges().await, 1);

    // The same user again: Baton's cache, no second exchange.
    let again = edge.get("/orders/43", Some(&alice)).await;
    assert_eq!(again.upstream_token(), internal);
    assert_eq!(
        edge.internal.exchanges().await,
        1,
        "the second request was not served from the cache"
    );

    // Another route, another backend: its own token.
    let billing = edge.get("/billing/7", Some(&alice)).await;
    assert_eq!(billing.body["path"], "/billing/7");
    let claims = edge.internal.verify(billing.upstream_token()).await;
    assert_eq!(
        (audiences(&claims), &claims["sub"]),
        (vec![BILLING_INTERNAL.to_owned()], &json!("alice"))
    );
    assert_eq!(edge.internal.exchanges().await, 2);
    // The external identity provider only issued the user's token and served its keys.
    assert_eq!(edge.external.exchanges().await, 0);

    // The edge Envoy's access log carries Baton's decision for each request (never a token).
    for (path, destination, cache) in [
        ("/orders/42", "orders", "miss"),
        ("/orders/43", "orders", "hit"),
        ("/billing/7", "billing", "miss"),
    ] {
        let line = edge.access_line(path).await;
        assert_eq!(line["baton_decision"], "delegate", "{path}: {line}");
        assert_eq!(line["baton_destination"], destination, "{path}: {line}");
        assert_eq!(line["baton_cache"], cache, "{path}: {line}");
        assert_eq!(line["upstream_cluster"], destination, "{path}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_refuses_what_it_must_not_exchange() {
    let edge = Edge::start("edge-refusals", "envoy.yaml").await;

    // An internal token presented from outside: its issuer is not trusted at the edge.
    let internal = edge.internal.mint("alice", "orders.read").await;
    let reply = edge.get("/orders/1", Some(&internal)).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_issuer_untrusted"),
        "{:?}",
        reply.body
    );
    // The external identity provider's token for another relying party.
    let elsewhere = edge
        .external
        .mint_with(&[("sub", "alice"), ("aud", "https://other-app.example")])
        .await;
    let reply = edge.get("/orders/2", Some(&elsewhere)).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_audience_mismatch"),
        "{:?}",
        reply.body
    );
    // An expired external token.
    let expired = edge
        .external
        .mint_with(&[("sub", "alice"), ("aud", API), ("expires_in", "-120")])
        .await;
    let reply = edge.get("/orders/3", Some(&expired)).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "subject_token_expired"),
        "{:?}",
        reply.body
    );
    // No token: `missing_token: deny`.
    let reply = edge.get("/orders/4", None).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (401, "missing_token"),
        "{:?}",
        reply.body
    );
    // A path no route names: a 404 from the edge, Baton not asked, no backend reached.
    let alice = edge.external_token("alice").await;
    let reply = edge.get("/admin/users", Some(&alice)).await;
    assert_eq!((reply.status, reply.reason()), (404, "not_found"), "{:?}", reply.body);
    assert_eq!(edge.access_line("/admin/users").await["baton_decision"], Value::Null);
    // None of these reached the internal token service.
    assert_eq!(edge.internal.exchanges().await, 0);

    // The internal token service judges the subject token on its own too (`trusted_subject_issuers`),
    // whoever asks: the external token for this API is accepted, the others are not.
    let (status, body) = exchange_directly(&edge.internal, &alice, ORDERS_INTERNAL).await;
    assert_eq!(status, 200, "{body}");
    let issued = body["access_token"].as_str().expect("access_token");
    let claims = edge.internal.verify(issued).await;
    assert_eq!(
        (audiences(&claims), &claims["sub"]),
        (vec![ORDERS_INTERNAL.to_owned()], &json!("alice"))
    );
    for (what, token) in [("another relying party's", &elsewhere), ("an expired", &expired)] {
        let (status, body) = exchange_directly(&edge.internal, token, ORDERS_INTERNAL).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("invalid_grant")),
            "{what}: {body}"
        );
    }
    // A forged token naming the external issuer, signed by no key of its.
    let claims = json!({ "iss": edge.external.issuer, "sub": "mallory", "aud": API, "exp": unix_now() + 300 });
    let forged = forge_jwt(
        r#"{"alg":"ES256","kid":"nope","typ":"at+jwt"}"#,
        &claims.to_string(),
        "c2ln",
    );
    let (status, body) = exchange_directly(&edge.internal, &forged, ORDERS_INTERNAL).await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_grant")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ext_proc_edge_exchanges_and_refuses_the_same_way() {
    let edge = Edge::start("edge-ext-proc", "envoy-ext-proc.yaml").await;
    let alice = edge.external_token("alice").await;
    let reply = edge.get("/orders/1", Some(&alice)).await;
    let internal = reply.upstream_token().to_owned();
    assert_ne!(internal, alice);
    let claims = edge.internal.verify(&internal).await;
    assert_eq!(
        (audiences(&claims), &claims["sub"]),
        (vec![ORDERS_INTERNAL.to_owned()], &json!("alice"))
    );
    assert_eq!(edge.get("/orders/2", Some(&alice)).await.upstream_token(), internal);
    let claims = edge
        .internal
        .verify(edge.get("/billing/3", Some(&alice)).await.upstream_token())
        .await;
    assert_eq!(audiences(&claims), [BILLING_INTERNAL]);
    assert_eq!(
        edge.internal.exchanges().await,
        2,
        "orders once (then the cache), billing once"
    );

    let outsider = edge.internal.mint("alice", "orders.read").await;
    let reply = edge.get("/orders/4", Some(&outsider)).await;
    assert_eq!((reply.status, reply.reason()), (401, "subject_token_issuer_untrusted"));
    let reply = edge.get("/orders/5", None).await;
    assert_eq!((reply.status, reply.reason()), (401, "missing_token"));
    assert_eq!(edge.get("/admin", Some(&alice)).await.status, 404);
    for (path, cache) in [("/orders/1", "miss"), ("/orders/2", "hit"), ("/billing/3", "miss")] {
        let line = edge.access_line(path).await;
        assert_eq!(
            (&line["baton_decision"], &line["baton_cache"]),
            (&json!("delegate"), &json!(cache)),
            "{line}"
        );
    }
    assert_eq!(edge.internal.exchanges().await, 2);
}

/// An RFC 8693 exchange at `service` as Baton's client, without Baton: (status, JSON body).
async fn exchange_directly(service: &TokenService, subject_token: &str, audience: &str) -> (u16, Value) {
    let response = http()
        .post(&service.token_endpoint)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject_token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("audience", audience),
        ])
        .send()
        .await
        .expect("token endpoint");
    let status = response.status().as_u16();
    let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    if let Some(token) = body["access_token"].as_str() {
        baton_test_support::leaks::secret(token);
    }
    (status, body)
}

// === The configurations, as files ===

/// `baton check-config` on `text` (in a scratch file): Ok, or what it said.
fn check_config(scratch: &Scratch, name: &str, text: &str) -> Result<(), String> {
    let file = scratch.write(name, text);
    let output = Command::new(BATON_BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run baton check-config");
    output.status.success().then_some(()).ok_or_else(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn the_edge_examples_pass_check_config_and_envoys_validation() {
    let scratch = Scratch::new(BATON_BIN, "edge-files");
    let secret = scratch.write("secret", "not-a-real-secret");
    for (name, text) in [
        ("examples/edge/baton.yaml", example("baton.yaml")),
        (
            "k8s/edge/baton.yaml",
            std::fs::read_to_string(repo().join("k8s/edge/baton.yaml")).expect("read"),
        ),
    ] {
        let local = text
            .replace("/etc/baton/secret/client-secret", &secret.display().to_string())
            .replace("/etc/baton/secret", &secret.display().to_string());
        check_config(&scratch, "baton.yaml", &local).unwrap_or_else(|said| panic!("{name}: {said}"));
    }
    // docs/edge.md shows the example as it is.
    let docs = std::fs::read_to_string(repo().join("docs/edge.md")).expect("read docs/edge.md");
    assert!(
        docs.contains(&format!("```yaml baton\n{}```", example("baton.yaml"))),
        "docs/edge.md's `yaml baton` block is not examples/edge/baton.yaml"
    );
    // The edge Envoy's bootstraps, verbatim, through the real Envoy's validation.
    for name in ["envoy.yaml", "envoy-ext-proc.yaml"] {
        envoy::validate(&scratch, name, &example(name));
    }
}

// === Istio's ingress gateway (k8s/edge) ===

fn edge_dir() -> PathBuf {
    repo().join("k8s/edge")
}

fn read_docs(file: &str) -> Vec<Value> {
    yaml_docs(&std::fs::read_to_string(edge_dir().join(file)).expect("read"))
}

fn is_istio(doc: &Value) -> bool {
    doc["apiVersion"].as_str().is_some_and(|v| v.contains("istio.io"))
}

#[test]
fn the_istio_edge_manifests_pass_their_schemas() {
    let scratch = Scratch::new(BATON_BIN, "edge-k8s");
    let rendered = yaml_docs(&kustomize(&edge_dir()));
    let (istio, core): (Vec<&Value>, Vec<&Value>) = rendered.iter().partition(|d| is_istio(d));
    let kinds = |docs: &[&Value]| {
        let mut kinds: Vec<String> = docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or("?").to_owned())
            .collect();
        kinds.sort();
        kinds
    };
    assert_eq!(
        kinds(&istio),
        ["AuthorizationPolicy", "AuthorizationPolicy", "PeerAuthentication"],
        "{rendered:?}"
    );
    assert_eq!(
        kinds(&core),
        ["ConfigMap", "Deployment", "Namespace", "Service", "ServiceAccount"],
        "{rendered:?}"
    );
    // The Istio objects against Istio's schemas, the others against Kubernetes'.
    let istio_file = scratch.write("istio.yaml", &serde_saphyr::to_string_multiple(&istio).expect("yaml"));
    let (ok, output) = istio_validate(&[istio_file]);
    assert!(ok, "{output}");
    let core_file = scratch.write("core.yaml", &serde_saphyr::to_string_multiple(&core).expect("yaml"));
    assert_valid(&[core_file], core.len());
    // Baton's container is hardened and bounded like every other in k8s/.
    let deployment = core.iter().find(|d| d["kind"] == "Deployment").expect("Deployment");
    for c in deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
    {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
    }
    // The mesh configuration snippet is applied on its own (it is the `istio` ConfigMap).
    assert_valid(&[edge_dir().join("mesh-config.yaml")], 1);

    // Istio's schema check is live: a CUSTOM policy with an unknown action fails it.
    let mut bad = read_docs("authorizationpolicy-gateway.yaml").remove(0);
    bad["spec"]["action"] = json!("EXCHANGE");
    let (ok, output) = istio_validate(&[scratch.write("bad.yaml", &bad.to_string())]);
    assert!(!ok, "an unknown action passed:\n{output}");
}

/// The gateway's CUSTOM policy, the mesh's `extensionProviders` entry and Baton's Service and
/// listener name one another consistently. Istio's MeshConfig has no CRD schema, so the entry is
/// checked here against the fields of Istio's `MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider`.
#[test]
fn the_gateway_policy_the_mesh_provider_and_batons_service_agree() {
    let rendered = yaml_docs(&kustomize(&edge_dir()));
    let namespace = |d: &Value| d["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();

    let policy = read_docs("authorizationpolicy-gateway.yaml").remove(0);
    assert_eq!(policy["apiVersion"], "security.istio.io/v1");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert_eq!(namespace(&policy), "istio-system", "the gateway's namespace");
    assert_eq!(
        policy["spec"]["selector"]["matchLabels"],
        json!({ "istio": "ingressgateway" })
    );
    let provider = policy["spec"]["provider"]["name"].as_str().expect("provider.name");

    let mesh_config = read_docs("mesh-config.yaml").remove(0);
    assert_eq!(
        (
            mesh_config["kind"].as_str(),
            mesh_config["metadata"]["name"].as_str(),
            namespace(&mesh_config).as_str()
        ),
        (Some("ConfigMap"), Some("istio"), "istio-system")
    );
    let mesh: Value =
        serde_saphyr::from_str(mesh_config["data"]["mesh"].as_str().expect("data.mesh")).expect("mesh is YAML");
    let entries = mesh["extensionProviders"].as_array().expect("extensionProviders");
    let entry = entries
        .iter()
        .find(|e| e["name"] == provider)
        .unwrap_or_else(|| panic!("no extensionProviders entry named {provider}"));
    let grpc = entry["envoyExtAuthzGrpc"]
        .as_object()
        .expect("an envoyExtAuthzGrpc provider");
    let known = [
        "service",
        "port",
        "timeout",
        "failOpen",
        "statusOnError",
        "includeRequestBodyInCheck",
    ];
    for field in grpc.keys() {
        assert!(
            known.contains(&field.as_str()),
            "envoyExtAuthzGrpc.{field} is not a field Istio knows"
        );
    }
    assert_eq!(
        grpc.get("failOpen").unwrap_or(&json!(false)),
        &json!(false),
        "fail closed"
    );
    assert!(
        grpc.get("includeRequestBodyInCheck").is_none(),
        "Baton needs the headers only"
    );
    let timeout = humantime::parse_duration(grpc["timeout"].as_str().expect("timeout")).expect("a duration");

    // The provider points at Baton's Service, by its cluster-local name and port...
    let service = rendered
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("Baton's Service");
    let fqdn = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().expect("name"),
        namespace(service)
    );
    assert_eq!(grpc["service"], fqdn.as_str());
    let port = &service["spec"]["ports"][0];
    assert_eq!(grpc["port"], port["port"]);
    assert_eq!(port["appProtocol"], "grpc");
    // ...whose pods are Baton's, listening where the Service sends them.
    let deployment = rendered
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Baton's Deployment");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let config: Value =
        baton_core::files::parse_yaml(&std::fs::read_to_string(edge_dir().join("baton.yaml")).expect("read"))
            .expect("baton.yaml");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let target = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .expect("the Service's targetPort is a container port");
    let listen = config["listen"]["grpc"].as_str().expect("listen.grpc");
    assert!(listen.ends_with(&format!(":{}", target["containerPort"])), "{listen}");
    // The gateway waits longer than Baton waits for its token service.
    let sts_timeout =
        humantime::parse_duration(config["token_service"]["timeout"].as_str().expect("timeout")).expect("a duration");
    assert!(timeout > sts_timeout, "{timeout:?} <= {sts_timeout:?}");
    assert_eq!(config["unknown_destination"], "deny");

    // Only the ingress gateway may ask Baton: mutual TLS required on Baton's pods, and an ALLOW
    // policy naming the gateway's service account alone.
    let mtls = rendered
        .iter()
        .find(|d| d["kind"] == "PeerAuthentication")
        .expect("PeerAuthentication");
    assert_eq!(mtls["spec"]["mtls"]["mode"], "STRICT");
    let allow = rendered
        .iter()
        .find(|d| d["kind"] == "AuthorizationPolicy" && d["spec"]["action"] == "ALLOW")
        .expect("Baton's ALLOW policy");
    for selecting in [mtls, allow] {
        assert_eq!(
            selecting["spec"]["selector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );
    }
    let rules = allow["spec"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0]["from"],
        json!([{ "source": { "principals": ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"] } }])
    );
    assert_eq!(
        rules[0]["to"][0]["operation"]["ports"],
        json!([target["containerPort"].to_string()])
    );
}
