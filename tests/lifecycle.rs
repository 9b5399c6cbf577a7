//! How Baton behaves as a process: Envoy reaching it over a Unix socket, draining in-flight checks
//! on SIGTERM, readiness, and `check-config`.

mod support;

use std::time::Duration;

use support::*;

/// The sidecar shape: Envoy talks to Baton over a Unix socket (`listen.grpc_uds`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reaches_baton_over_a_unix_socket() {
    let scratch = Scratch::new("uds");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let socket = scratch.0.join("baton.sock");
    // A socket file left by an earlier run is replaced, not an error.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let baton = Baton::start_uds(&scratch, &service.token_endpoint, &socket, "").await;
    let upstream = Upstream::start().await;
    let bootstrap = envoy_bootstrap(free_port(), baton.grpc, upstream.port).replace(
        &format!("socket_address: {{ address: 127.0.0.1, port_value: {} }}", baton.grpc),
        &format!("pipe: {{ path: {} }}", socket.display()),
    );
    assert!(bootstrap.contains("pipe:"), "the Envoy cluster points at the socket");
    let envoy = Envoy::start_with_bootstrap(&scratch, &bootstrap).await;
    let user = service.mint("alice", "orders.read").await;
    let reply = send(&envoy, "orders.example", "/", Some(&bearer(&user))).await;
    let claims = service.verify(reply.upstream_token()).await;
    assert_eq!(audiences(&claims), [ORDERS]);
}

/// SIGTERM: readiness goes false, an in-flight Check (waiting on a slow exchange) still completes,
/// then Baton exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_checks() {
    let scratch = Scratch::new("drain");
    let options = PeerOptions {
        delay: Some("700ms"),
        ..Default::default()
    };
    let service = TokenService::start_with(Peer::BatonSts, &scratch, options).await;
    let mut baton = Baton::start(&scratch, &service.token_endpoint, "shutdown_grace: 5s\n").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let user = service.mint("alice", "orders.read").await;

    let in_flight = {
        let auth = bearer(&user);
        let url = envoy.url("/");
        tokio::spawn(async move {
            http()
                .get(url)
                .header("host", "orders.example")
                .header("authorization", auth)
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    let pid = baton.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), baton.wait())
        .await
        .expect("baton exits after draining");
    assert!(status.success(), "exit status {status:?}");
    let response = in_flight
        .await
        .expect("task")
        .expect("the in-flight request got an answer");
    assert_eq!(response.status(), 200, "the in-flight check was not drained");
}

/// Not ready while the token endpoint is unknown (discovery keeps failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_token_endpoint_is_known() {
    let scratch = Scratch::new("ready");
    let token_service = basic_auth_to(&scratch, &format!("issuer: http://127.0.0.1:{}", free_port()));
    let admin = free_port();
    let config = scratch.write(
        "baton.yaml",
        &format!(
            "listen:\n  grpc: 127.0.0.1:{}\n  admin: 127.0.0.1:{admin}\ntoken_service:\n{token_service}\ndestinations: []\n",
            free_port()
        ),
    );
    let _child = tokio::process::Command::new(baton_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(scratch.log("baton.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start");
    let health = format!("http://127.0.0.1:{admin}/healthz");
    wait_until("healthz", Duration::from_secs(20), || async {
        http().get(&health).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    let ready = http()
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
}

#[test]
fn check_config_reports_every_error_and_never_a_secret() {
    let scratch = Scratch::new("check-config");
    let secret = scratch.write("secret", "hunter2-very-secret");
    let good = scratch.write(
        "good.yaml",
        &format!(
            "token_service:\n  token_endpoint: http://127.0.0.1:9400/token\n  client_id: sidecar\n  auth:\n    secret_file: {}\ndestinations:\n  - name: orders\n    hosts: [orders]\n    audience: https://orders.example\n",
            secret.display()
        ),
    );
    let out = std::process::Command::new(baton_bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 destination"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");

    let bad = scratch.write(
        "bad.yaml",
        &format!(
            "listen:\n  grpc: nowhere\ntoken_service:\n  token_endpoint: http://127.0.0.1:9400/token\n  auth:\n    secret_file: {}\n  timeout: soon\ndestinations:\n  - name: orders\n    hosts: ['*bad*']\n",
            secret.display()
        ),
    );
    let out = std::process::Command::new(baton_bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for path in [
        "listen.grpc",
        "token_service.client_id",
        "token_service.timeout",
        "destinations[0].hosts[0]",
        "destinations[0].audience",
    ] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }
    assert!(stderr.contains("5 configuration errors"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
