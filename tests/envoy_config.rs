//! `baton envoy-config` against the real Envoy: every generated variant (ext_authz / ext_proc, TCP /
//! Unix socket, bootstrap / fragment) passes `envoy --mode validate`, and a generated bootstrap,
//! run, routes each destination's hosts to Baton with the destination named by the route.

use std::path::Path;

use baton_test_support::*;
use futures_util::future::join_all;
use serde_json::{Value, json};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// A Baton configuration for `baton envoy-config`, reaching Baton on `grpc` (or its socket).
fn baton_config(
    scratch: &Scratch,
    name: &str,
    grpc: u16,
    uds: Option<&Path>,
    destinations: &str,
) -> std::path::PathBuf {
    let uds = uds
        .map(|p| format!("  grpc_uds: {}\n", p.display()))
        .unwrap_or_default();
    scratch.write(
        name,
        &format!(
            "listen:\n  grpc: 127.0.0.1:{grpc}\n{uds}token_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: {CLIENT_ID}\n  auth: {{ method: none }}\n  timeout: 1s\ndestinations:\n{destinations}"
        ),
    )
}

const DESTINATIONS: &str = r#"  - name: orders
    hosts: ["orders.example", "orders", "orders:8080", "*.orders.example", "*.orders.example:8443", "[::1]:9000", "orders.shop-production.svc.cluster.local", "*.orders-production.svc.cluster.local"]
    audience: https://orders.example
  - name: billing
    hosts: ["*.billing.example"]
    audience: https://billing.example
"#;

/// `baton envoy-config ARGS`: its stdout, or a panic with its stderr.
fn envoy_config(args: &[&str]) -> String {
    let out = std::process::Command::new(BATON_BIN)
        .arg("envoy-config")
        .args(args)
        .output()
        .expect("run baton envoy-config");
    assert!(
        out.status.success(),
        "baton envoy-config {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `envoy --mode validate -c FILE`: Ok, or Envoy's complaint.
async fn validate(file: std::path::PathBuf) -> Result<(), String> {
    let out = tokio::process::Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "-c",
        ])
        .arg(&file)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .map_err(|_| format!("{}: envoy --mode validate took over 60 s", file.display()))?
        .expect("run envoy");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A bootstrap around a fragment: its filter ahead of the router, its cluster, and each
/// destination's `typed_per_filter_config` on a route of its own.
fn around_fragment(fragment: &Value) -> Value {
    let mut filters = fragment["http_filters"].as_array().expect("http_filters").clone();
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
    }));
    let routes: Vec<Value> = fragment["destinations"]
        .as_object()
        .expect("destinations")
        .iter()
        .map(|(name, d)| {
            json!({
                "match": { "prefix": format!("/{name}/") },
                "route": { "cluster": "app" },
                "typed_per_filter_config": d["typed_per_filter_config"],
            })
        })
        .collect();
    let mut clusters = fragment["clusters"].as_array().expect("clusters").clone();
    clusters.push(json!({
        "name": "app",
        "type": "STATIC",
        "load_assignment": { "cluster_name": "app", "endpoints": [] },
    }));
    json!({
        "static_resources": {
            "listeners": [{
                "name": "app",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 15001 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "app",
                        "route_config": { "virtual_hosts": [{ "name": "app", "domains": ["*"], "routes": routes }] },
                        "http_filters": filters,
                    },
                }] }],
            }],
            "clusters": clusters,
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generated_variant_passes_envoy_validate() {
    let scratch = Scratch::new(BATON_BIN, "envoy-config-validate");
    let tcp = baton_config(&scratch, "tcp.yaml", 9191, None, DESTINATIONS);
    let uds_socket = scratch.0.join("baton.sock");
    let uds = baton_config(&scratch, "uds.yaml", 9191, Some(&uds_socket), DESTINATIONS);
    let mut files = Vec::new();
    for api in ["ext_authz", "ext_proc"] {
        for (transport, config) in [("tcp", &tcp), ("uds", &uds)] {
            let config = config.to_str().expect("path");
            let bootstrap = envoy_config(&["--config", config, "--api", api]);
            match transport {
                "uds" => assert!(bootstrap.contains(&uds_socket.display().to_string()), "{bootstrap}"),
                _ => assert!(bootstrap.contains("port_value: 9191"), "{bootstrap}"),
            }
            files.push(scratch.write(&format!("{api}-{transport}.yaml"), &bootstrap));

            let fragment: Value =
                serde_saphyr::from_str(&envoy_config(&["--config", config, "--api", api, "--fragment"]))
                    .expect("the fragment is YAML");
            let wrapped = baton_envoy::envoy_config::to_yaml(&around_fragment(&fragment)).expect("yaml");
            files.push(scratch.write(&format!("{api}-{transport}-fragment.yaml"), &wrapped));
        }
    }
    // `--uds` overrides the configuration's TCP address.
    let flag = envoy_config(&["--config", tcp.to_str().expect("path"), "--uds", "/run/baton/b.sock"]);
    assert!(flag.contains("path: /run/baton/b.sock"), "{flag}");
    files.push(scratch.write("uds-flag.yaml", &flag));

    let results = join_all(files.into_iter().map(validate)).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "Envoy refused:\n{}", failures.join("\n"));
}

/// A Baton with `listen.grpc_tls` gets a `baton` cluster with Envoy's client certificate, Baton's CA
/// and the name Baton's certificate must carry; `envoy-config` never writes a plain-text cluster to
/// it, nor a TLS one to a plain-text Baton. The generated variants pass `envoy --mode validate`
/// with certificate files made here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_baton_gets_a_tls_cluster_and_never_a_plain_one() {
    let scratch = Scratch::new(BATON_BIN, "envoy-config-tls");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let ca_file = scratch.write("ca.crt", &ca.pem());
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["envoy.shop.svc.cluster.local".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("sign");
    let cert_file = scratch.write("envoy.crt", &cert.pem());
    let key_file = scratch.write("envoy.key", &key.serialize_pem());
    let (cert_file, key_file, ca_file) = (
        cert_file.to_str().expect("path"),
        key_file.to_str().expect("path"),
        ca_file.to_str().expect("path"),
    );
    let tls = scratch.write(
        "tls.yaml",
        &format!(
            "listen:\n  grpc: 0.0.0.0:9191\n  grpc_tls:\n    cert_file: /etc/baton/tls/tls.crt\n    key_file: /etc/baton/tls/tls.key\n    client_ca_file: /etc/baton/tls/ca.crt\n    allowed_callers: [\"*.shop.svc.cluster.local\"]\ntoken_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: {CLIENT_ID}\n  auth: {{ method: none }}\n  timeout: 1s\ndestinations:\n{DESTINATIONS}"
        ),
    );
    let tls = tls.to_str().expect("path");
    let flags = [
        "--tls-cert",
        cert_file,
        "--tls-key",
        key_file,
        "--tls-ca",
        ca_file,
        "--tls-server-name",
        "baton.shop.svc.cluster.local",
    ];
    let mut files = Vec::new();
    for api in ["ext_authz", "ext_proc"] {
        let mut args = vec!["--config", tls, "--api", api];
        args.extend(flags);
        let bootstrap: Value = serde_saphyr::from_str(&envoy_config(&args)).expect("yaml");
        let baton = &bootstrap["static_resources"]["clusters"][0];
        assert_eq!(baton["name"], "baton");
        let context = &baton["transport_socket"]["typed_config"];
        assert_eq!(context["sni"], "baton.shop.svc.cluster.local");
        assert_eq!(
            context["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"],
            cert_file
        );
        assert_eq!(
            context["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            ca_file
        );
        assert_eq!(
            context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"],
            json!([{ "san_type": "DNS", "matcher": { "exact": "baton.shop.svc.cluster.local" } }])
        );
        // Listening on every address, Baton is reached on loopback from its own pod.
        assert!(baton.to_string().contains("127.0.0.1"), "{baton}");
        files.push(scratch.write(
            &format!("{api}-tls.yaml"),
            &baton_envoy::envoy_config::to_yaml(&bootstrap).expect("yaml"),
        ));
        args.push("--fragment");
        let fragment: Value = serde_saphyr::from_str(&envoy_config(&args)).expect("yaml");
        let wrapped = baton_envoy::envoy_config::to_yaml(&around_fragment(&fragment)).expect("yaml");
        files.push(scratch.write(&format!("{api}-tls-fragment.yaml"), &wrapped));
    }
    let results = join_all(files.into_iter().map(validate)).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "Envoy refused:\n{}", failures.join("\n"));

    let refused = |args: &[&str]| {
        let out = std::process::Command::new(BATON_BIN)
            .arg("envoy-config")
            .args(args)
            .output()
            .expect("run baton envoy-config");
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed a configuration");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // No plain-text cluster to a TLS Baton.
    let err = refused(&["--config", tls]);
    assert!(err.contains("--tls-cert") && err.contains("grpc_tls"), "{err}");
    // The four flags come together.
    let err = refused(&["--config", tls, "--tls-cert", cert_file]);
    assert!(err.contains("--tls-key"), "{err}");
    // No TLS cluster to a plain-text Baton, nor to its Unix socket.
    let plain = baton_config(&scratch, "plain.yaml", 9191, None, DESTINATIONS);
    let mut args = vec!["--config", plain.to_str().expect("path")];
    args.extend(flags);
    let err = refused(&args);
    assert!(err.contains("plain text"), "{err}");
    let mut args = vec!["--config", tls, "--uds", "/run/baton/baton.sock"];
    args.extend(flags);
    let err = refused(&args);
    assert!(err.contains("Unix socket"), "{err}");
}

/// The generated bootstrap, run by the real Envoy, with its outbound cluster (a DNS forward proxy)
/// swapped for the test upstream. It is generated from hosts that differ from Baton's on purpose:
/// `orders.example` names `billing` there, so a refusal `destination_host_mismatch` proves that
/// Envoy's route named the destination, and that Baton checks it against its own hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_bootstrap_names_each_destination_through_envoy() {
    let scratch = Scratch::new(BATON_BIN, "envoy-config-run");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
    let upstream = Upstream::start().await;
    let swapped = r#"  - name: billing
    hosts: ["orders.example"]
    audience: https://billing.example
  - name: orders
    hosts: ["orders.example:9000"]
    audience: https://orders.example
"#;
    let config = baton_config(&scratch, "generate.yaml", baton.grpc, None, swapped);
    let user = service.mint("alice", "orders.read billing.read").await;
    for api in ["ext_authz", "ext_proc"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let generated = envoy_config(&[
            "--config",
            config.to_str().expect("path"),
            "--api",
            api,
            "--listen",
            &listen,
        ]);
        let mut bootstrap: Value = serde_saphyr::from_str(&generated).expect("YAML");
        to_test_upstream(&mut bootstrap, upstream.port);
        let bootstrap = baton_envoy::envoy_config::to_yaml(&bootstrap).expect("yaml");
        let envoy = Envoy::start_with_bootstrap(&scratch, &bootstrap).await;

        // The route names billing, whose hosts in Baton's own configuration do not include
        // `orders.example`: Baton refuses the route's word against its own (issue 12).
        let routed = send(&envoy, "orders.example", "/", Some(&bearer(&user))).await;
        assert_eq!(
            (routed.status, routed.reason()),
            (403, "destination_host_mismatch"),
            "{api}: the route names billing"
        );
        // A `host:port` pattern is a route of its own, ahead of the host's.
        let ported = send(&envoy, "orders.example:9000", "/", Some(&bearer(&user))).await;
        let claims = service.verify(ported.upstream_token()).await;
        assert_eq!(audiences(&claims), [ORDERS], "{api}: the port's route names orders");
        // Unnamed hosts are Baton's to judge: its own hosts, and unknown_destination.
        let by_host = send(&envoy, "x.billing.example", "/", Some(&bearer(&user))).await;
        let claims = service.verify(by_host.upstream_token()).await;
        assert_eq!(audiences(&claims), [BILLING], "{api}");
        let unknown = send(&envoy, "elsewhere.example", "/", Some(&bearer(&user))).await;
        assert_eq!(unknown.upstream_authorization(), None, "{api}: a user token leaked");
        let denied = send(&envoy, "x.billing.example", "/", None).await;
        assert_eq!((denied.status, denied.reason()), (401, "missing_token"), "{api}");
    }
}

/// What cannot be generated says why, and exits 1.
#[test]
fn envoy_config_refuses_what_it_cannot_generate() {
    let scratch = Scratch::new(BATON_BIN, "envoy-config-errors");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BATON_BIN)
            .arg("envoy-config")
            .args(args)
            .output()
            .expect("run baton envoy-config");
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed a configuration");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let invalid = scratch.write("invalid.yaml", "listen:\n  grpc: nowhere\n");
    let err = run(&["--config", invalid.to_str().expect("path")]);
    assert!(err.contains("listen.grpc") && err.contains("token_service"), "{err}");

    let port_zero = baton_config(&scratch, "zero.yaml", 0, None, DESTINATIONS);
    let err = run(&["--config", port_zero.to_str().expect("path")]);
    assert!(err.contains("port 0"), "{err}");

    let unicode = baton_config(
        &scratch,
        "unicode.yaml",
        9191,
        None,
        "  - name: bestellungen-ü\n    hosts: [orders]\n    audience: https://orders.example\n",
    );
    let err = run(&["--config", unicode.to_str().expect("path"), "--api", "ext_proc"]);
    assert!(err.contains("visible ASCII"), "{err}");
    let err = run(&["--config", unicode.to_str().expect("path"), "--api", "grpc"]);
    assert!(err.contains("ext_authz") && err.contains("ext_proc"), "{err}");
}

/// Envoy sends Baton only the headers Baton reads (issue 15), and a policy that reads a request
/// header still gets it through the real Envoy: the generated `allowed_headers` (ext_authz) and
/// `forward_rules` (ext_proc) come from the policy itself (`Policy::reads_headers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_filter_sends_the_headers_a_policy_reads() {
    let scratch = Scratch::new(BATON_BIN, "envoy-config-headers");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
    let destinations = format!(
        "  - name: orders\n    hosts: [\"orders.example\"]\n    audience: {ORDERS}\n    scopes: [orders.read]\n    policy:\n      when: \"request.headers['user-agent'] == 'orders-client/1'\"\n"
    );
    let baton = Baton::start_raw(
        &scratch,
        &format!("token_service:\n{token_service}\ndestinations:\n{destinations}"),
        "baton=debug,info",
    )
    .await;
    let upstream = Upstream::start().await;
    let config = baton_config(&scratch, "generate-headers.yaml", baton.grpc, None, &destinations);
    let user = service.mint("alice", "orders.read").await;
    for api in ["ext_authz", "ext_proc"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let generated = envoy_config(&[
            "--config",
            config.to_str().expect("path"),
            "--api",
            api,
            "--listen",
            &listen,
        ]);
        assert!(generated.contains("exact: user-agent"), "{api}: {generated}");
        assert!(!generated.contains("with_request_body"), "{api}");
        assert!(!generated.contains("include_peer_certificate"), "{api}");
        let mut bootstrap: Value = serde_saphyr::from_str(&generated).expect("YAML");
        to_test_upstream(&mut bootstrap, upstream.port);
        let bootstrap = baton_envoy::envoy_config::to_yaml(&bootstrap).expect("yaml");
        let envoy = Envoy::start_with_bootstrap(&scratch, &bootstrap).await;

        let token = bearer(&user);
        let allowed = send_with(
            &envoy,
            "orders.example",
            "/",
            Some(&token),
            &[("user-agent", "orders-client/1"), ("cookie", "session=not-for-baton")],
        )
        .await;
        let claims = service.verify(allowed.upstream_token()).await;
        assert_eq!(audiences(&claims), [ORDERS], "{api}: the policy saw the user-agent");
        let refused = send_with(&envoy, "orders.example", "/", Some(&token), &[("user-agent", "other")]).await;
        assert_eq!(
            (refused.status, refused.reason()),
            (403, "policy_expression_false"),
            "{api}"
        );
    }
}

/// `--api ext_authz_http`: every variant (TCP, Unix socket, bootstrap, fragment) passes `envoy
/// --mode validate`, and the generated bootstrap, run, delegates, denies with Baton's reply and
/// strips through Baton's HTTP authorization listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_over_http_is_generated_valid_and_runs() {
    let scratch = Scratch::new(BATON_BIN, "envoy-config-http");
    let http = |name: &str, listen: &str| {
        scratch.write(
            name,
            &format!(
                "listen:\n{listen}token_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: {CLIENT_ID}\n  auth: {{ method: none }}\n  timeout: 1s\ndestinations:\n{DESTINATIONS}"
            ),
        )
    };
    let tcp = http("http-tcp.yaml", "  authz_http: 127.0.0.1:9192\n");
    let socket = scratch.0.join("baton-http.sock");
    let uds = http("http-uds.yaml", &format!("  authz_http_uds: {}\n", socket.display()));
    let mut files = Vec::new();
    for (transport, config) in [("tcp", &tcp), ("uds", &uds)] {
        let config = config.to_str().expect("path");
        let bootstrap = envoy_config(&["--config", config, "--api", "ext_authz_http"]);
        assert!(bootstrap.contains("http_service"), "{bootstrap}");
        match transport {
            "uds" => assert!(bootstrap.contains(&socket.display().to_string()), "{bootstrap}"),
            _ => assert!(bootstrap.contains("port_value: 9192"), "{bootstrap}"),
        }
        files.push(scratch.write(&format!("http-{transport}-bootstrap.yaml"), &bootstrap));
        let fragment: Value = serde_saphyr::from_str(&envoy_config(&[
            "--config",
            config,
            "--api",
            "ext_authz_http",
            "--fragment",
        ]))
        .expect("the fragment is YAML");
        let wrapped = baton_envoy::envoy_config::to_yaml(&around_fragment(&fragment)).expect("yaml");
        files.push(scratch.write(&format!("http-{transport}-fragment.yaml"), &wrapped));
    }
    let results = join_all(files.into_iter().map(validate)).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "Envoy refused:\n{}", failures.join("\n"));

    // Run: the harness's Baton serves ext_authz over HTTP on `authz_http`.
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
    let upstream = Upstream::start().await;
    let generated = envoy_config(&[
        "--config",
        scratch.0.join("baton.yaml").to_str().expect("path"),
        "--api",
        "ext_authz_http",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(
        generated.contains(&format!("port_value: {}", baton.authz_http)),
        "{generated}"
    );
    let mut bootstrap: Value = serde_saphyr::from_str(&generated).expect("YAML");
    to_test_upstream(&mut bootstrap, upstream.port);
    let bootstrap = baton_envoy::envoy_config::to_yaml(&bootstrap).expect("yaml");
    let envoy = Envoy::start_with_bootstrap(&scratch, &bootstrap).await;
    let user = service.mint("alice", "orders.read billing.read").await;
    let delegated = send(&envoy, "orders.example", "/a?b=1", Some(&bearer(&user))).await;
    assert_eq!(audiences(&service.verify(delegated.upstream_token()).await), [ORDERS]);
    assert_eq!(delegated.body["path"], "/a", "{:?}", delegated.body);
    let by_wildcard = send(&envoy, "x.billing.example", "/", Some(&bearer(&user))).await;
    assert_eq!(
        audiences(&service.verify(by_wildcard.upstream_token()).await),
        [BILLING]
    );
    let unknown = send(&envoy, "elsewhere.example", "/", Some(&bearer(&user))).await;
    assert_eq!(unknown.upstream_authorization(), None, "a user token leaked");
    let denied = send(&envoy, "orders.example", "/", None).await;
    assert_eq!((denied.status, denied.reason()), (401, "missing_token"));
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    assert_eq!(denied.header("content-type"), Some("application/json"));
}
