//! How Baton behaves as a process: Envoy reaching it over a Unix socket, draining in-flight checks
//! on SIGTERM, readiness, and `check-config`.

use std::time::Duration;

use baton_test_support::*;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// The sidecar shape: Envoy talks to Baton over a Unix socket (`listen.grpc_uds`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reaches_baton_over_a_unix_socket() {
    let scratch = Scratch::new(BATON_BIN, "uds");
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
    // The startup line shows its values as a person reads them, not Rust's `Some(..)`/`None`.
    let log = std::fs::read_to_string(scratch.0.join("baton.log")).expect("log");
    let serving = log
        .lines()
        .find(|l| l.contains("baton serving"))
        .expect("a startup line");
    assert!(serving.contains(&format!("grpc_uds={}", socket.display())), "{serving}");
    assert!(!serving.contains("Some(") && !serving.contains("None"), "{serving}");
}

/// SIGTERM: readiness goes false, an in-flight Check (waiting on a slow exchange) still completes,
/// then Baton exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_checks() {
    let scratch = Scratch::new(BATON_BIN, "drain");
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
    let scratch = Scratch::new(BATON_BIN, "ready");
    let token_service = basic_auth_to(&scratch, &format!("issuer: http://127.0.0.1:{}", free_port()));
    let admin = free_port();
    let config = scratch.write(
        "baton.yaml",
        &format!(
            "listen:\n  grpc: 127.0.0.1:{}\n  admin: 127.0.0.1:{admin}\ntoken_service:\n{token_service}\ndestinations: []\n",
            free_port()
        ),
    );
    let _child = tokio::process::Command::new(BATON_BIN)
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

/// Every command takes its configuration file the same way (`--config`; `check-config` keeps its
/// positional form), and a file that cannot be read is named once, by the one error it gives.
#[test]
fn every_command_takes_config_alike_and_names_a_missing_file_once() {
    let scratch = Scratch::new(BATON_BIN, "config-flag");
    let good = scratch.write(
        "good.yaml",
        "listen:\n  grpc_uds: /var/run/baton/baton.sock\ntoken_service:\n  token_endpoint: http://127.0.0.1:9400/token\n  client_id: sidecar\n  auth:\n    method: none\ndestinations:\n  - name: orders\n    hosts: [orders]\n    audience: https://orders.example\n",
    );
    let baton = |args: &[&std::ffi::OsStr]| std::process::Command::new(BATON_BIN).args(args).output().expect("run");
    for args in [
        vec!["check-config".as_ref(), good.as_os_str()],
        vec!["check-config".as_ref(), "--config".as_ref(), good.as_os_str()],
        vec!["check-config".as_ref(), "-c".as_ref(), good.as_os_str()],
    ] {
        let out = baton(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let missing = scratch.0.join("missing.yaml");
    let shown = missing.display().to_string();
    for command in ["check-config", "run", "envoy-config"] {
        let out = baton(&[command.as_ref(), "--config".as_ref(), missing.as_os_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert_eq!(
            stderr.matches(&shown).count(),
            1,
            "{command} names the file once: {stderr}"
        );
        assert!(stderr.contains("No such file"), "{command}: {stderr}");
    }
}

#[test]
fn check_config_reports_every_error_and_never_a_secret() {
    let scratch = Scratch::new(BATON_BIN, "check-config");
    let secret = scratch.write("secret", "hunter2-very-secret");
    let good = scratch.write(
        "good.yaml",
        &format!(
            "listen:\n  grpc_uds: /var/run/baton/baton.sock\ntoken_service:\n  token_endpoint: http://127.0.0.1:9400/token\n  client_id: sidecar\n  auth:\n    secret_file: {}\ndestinations:\n  - name: orders\n    hosts: [orders]\n    audience: https://orders.example\n",
            secret.display()
        ),
    );
    let out = std::process::Command::new(BATON_BIN)
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
    let out = std::process::Command::new(BATON_BIN)
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

/// A template (examples/demo's, which scripts/demo fills in) is refused as one: every command that
/// reads a configuration file names its placeholders and points at the ready-to-use examples/local.
#[test]
fn a_template_is_named_as_one_with_its_placeholders() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo/");
    let (baton, sts) = (format!("{demo}baton.yaml"), format!("{demo}sts.yaml"));
    let baton_placeholders = "{{grpc_port}}, {{admin_port}}, {{token_endpoint}}, {{secret_file}};";
    for (args, placeholders) in [
        (vec!["check-config", &baton], baton_placeholders),
        (vec!["run", "--config", &baton], baton_placeholders),
        (vec!["envoy-config", "--config", &baton], baton_placeholders),
        (
            vec!["sts", "--config", &sts, "--listen", "127.0.0.1:0"],
            "placeholder {{secret_file}};",
        ),
    ] {
        // Bounded: a command that took the template would serve until stopped.
        let mut child = std::process::Command::new(BATON_BIN)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} took the template and kept running");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        for expected in [
            "(template): this looks like a template",
            placeholders,
            "fill the placeholders",
            "examples/local/",
        ] {
            assert!(
                stderr.contains(expected),
                "{args:?}: `{expected}` missing from:\n{stderr}"
            );
        }
    }
}

/// Hot reload under load through the real Envoy: a watched file change adds a destination, an
/// invalid file changes nothing, SIGHUP applies a change that removes it; requests that the
/// configuration never meant to refuse never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_changes_only_what_the_new_config_says() {
    use std::sync::Arc;
    let scratch = Scratch::new(BATON_BIN, "reload");
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let token_service = basic_auth_to(&scratch, &format!("token_endpoint: {}", service.token_endpoint));
    let config = |with_billing: bool| {
        let billing = if with_billing {
            format!("  - name: billing\n    hosts: [billing.example]\n    audience: {BILLING}\n")
        } else {
            String::new()
        };
        format!(
            "token_service:\n{token_service}\nreload:\n  poll_interval: 200ms\ndestinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: {ORDERS}\n{billing}"
        )
    };
    let baton = Baton::start_raw(&scratch, &config(false), "baton=debug,info").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&scratch, baton.grpc, upstream.port).await;
    let alice = service.mint("alice", "orders.read").await;

    // Steady load on the destination every version of the configuration keeps (`baton_test_support::load`
    // judges each answer: a live token for orders on behalf of alice, nothing else).
    let load = {
        let alice: (String, Arc<str>) = ("alice".into(), Arc::from(alice.as_str()));
        baton_test_support::load::Load::start(envoy.port, 4, Duration::from_millis(5), "reloads", move |_| {
            baton_test_support::load::Job {
                group: "orders",
                host: "orders.example".into(),
                path: "/".into(),
                token: alice.1.clone(),
                expect: baton_test_support::load::Expect::Delegated {
                    sub: alice.0.clone(),
                    aud: ORDERS.into(),
                    issuer: None,
                    unavailable: &[],
                },
            }
        })
    };
    let billing_token = || async {
        send(&envoy, "billing.example", "/", Some(&bearer(&alice))).await.body["authorization"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(billing_token().await, None, "billing is not configured yet: stripped");

    // A file change (written aside, then renamed over, as a ConfigMap update swaps it) is picked up.
    let path = scratch.0.join("baton.yaml");
    let replace = |text: String| {
        let aside = scratch.0.join("baton.yaml.new");
        std::fs::write(&aside, text).expect("write");
        std::fs::rename(&aside, &path).expect("swap");
    };
    let current = std::fs::read_to_string(&path).expect("config");
    let listen: String = current.lines().take(3).map(|l| format!("{l}\n")).collect();
    replace(format!("{listen}{}", config(true)));
    wait_until("the reload adding billing", Duration::from_secs(10), || async {
        billing_token().await.is_some()
    })
    .await;

    // An invalid file: nothing changes.
    replace(format!("{listen}{}destinations: oops\n", config(true)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        billing_token().await.is_some(),
        "an invalid reload must leave the running configuration"
    );

    // SIGHUP with a change that removes billing.
    std::fs::write(&path, format!("{listen}{}", config(false))).expect("write");
    let pid = baton.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    wait_until("the reload removing billing", Duration::from_secs(10), || async {
        billing_token().await.is_none()
    })
    .await;

    let tallies = load.stop().await;
    report::line(&tallies.report("config reloaded three times under load"));
    let total = tallies.total();
    assert!(total.sent > 20, "the load ran: {}", total.counts());
    total.assert_no_wrong("config reloaded under load");
    let log = std::fs::read_to_string(scratch.0.join("baton.log")).expect("log");
    assert!(
        log.contains("configuration not reloaded"),
        "the invalid file was reported"
    );
    drop(baton);
}
