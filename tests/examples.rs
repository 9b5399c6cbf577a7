//! `examples/local` and README.md's "Run it yourself", as a newcomer meets them: the README's
//! commands (its ```` ```sh run-it-yourself ```` block) run as written, from the repository's root,
//! with the real Envoy, and the request they send must come back delegated; the committed Envoy
//! configuration must be the one `baton envoy-config` generates, and `check-config` must accept
//! Baton's. Only the binaries' paths are swapped (this build's `baton` for `target/release/baton`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use baton_test_support::*;
use serde_json::Value;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");
/// The README block the test runs.
const BLOCK: &str = "```sh run-it-yourself";
/// The README's spelling of the release binary, and of the Envoy binary.
const RELEASE_BIN: &str = "target/release/baton";
const ENVOY_CMD: &str = "\"$(cat .cache/envoy-path)\"";
/// examples/local's fixed ports: the token service, Baton's gRPC and admin, Envoy, the upstream.
const PORTS: [u16; 5] = [18400, 18410, 18411, 18420, 18430];
const BATON_ADMIN: u16 = 18411;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The line without its `# comment` (a `#` after a blank, outside quotes), trimmed.
fn without_comment(line: &str) -> &str {
    let (mut single, mut double, mut previous) = (false, false, ' ');
    for (at, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return line[..at].trim(),
            _ => {}
        }
        previous = c;
    }
    line.trim()
}

/// The commands of README.md's run-it-yourself block: continuation lines joined, comments and
/// blank lines dropped.
fn readme_steps() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme
        .lines()
        .position(|l| l.trim_end() == BLOCK)
        .unwrap_or_else(|| panic!("README.md has no `{BLOCK}` block"));
    let mut steps = Vec::new();
    let mut pending = String::new();
    for line in readme.lines().skip(start + 1) {
        if line.trim_end() == "```" {
            assert!(pending.is_empty(), "the block ends inside a continued line");
            return steps;
        }
        let command = without_comment(line);
        if let Some(continued) = command.strip_suffix('\\') {
            pending.push_str(continued);
            continue;
        }
        pending.push_str(command);
        let step = std::mem::take(&mut pending).trim().to_owned();
        if !step.is_empty() {
            steps.push(step);
        }
    }
    panic!("README.md's `{BLOCK}` block is never closed")
}

/// A README command with this build's binaries in place of the release one and `.cache/envoy-path`.
fn this_build(step: &str) -> String {
    step.replace(RELEASE_BIN, BATON_BIN)
        .replace(ENVOY_CMD, &format!("'{}'", envoy_bin().display()))
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

#[test]
fn check_config_accepts_the_local_example() {
    let out = std::process::Command::new(BATON_BIN)
        .args(["check-config", "examples/local/baton.yaml"])
        .current_dir(root())
        .output()
        .expect("run baton check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok (1 destination"), "{stdout}");
}

/// examples/local/envoy.yaml is its header comment, then exactly what the command the header names
/// prints: the two cannot drift.
#[test]
fn the_committed_envoy_config_is_the_generated_one() {
    let committed = std::fs::read_to_string(root().join("examples/local/envoy.yaml")).expect("envoy.yaml");
    let body_at = committed
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let (header, body) = committed.split_at(body_at);
    let command = header
        .lines()
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix(RELEASE_BIN))
        .expect("the header names the `baton envoy-config` command");
    let (args, target) = command.split_once('>').expect("the command writes to a file");
    assert_eq!(target.trim(), "examples/local/envoy.yaml", "{command}");
    let args: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(args.first(), Some(&"envoy-config"), "{command}");
    let out = std::process::Command::new(BATON_BIN)
        .args(&args)
        .current_dir(root())
        .output()
        .expect("run baton envoy-config");
    assert!(
        out.status.success(),
        "baton {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        body == generated,
        "examples/local/envoy.yaml differs from what `baton {}` generates now: regenerate it (keep its header comment)\n--- generated ---\n{generated}",
        args.join(" ")
    );
}

/// The README's commands, in order: the build and `scripts/deps envoy` (done already: the test runs
/// this build, and the harness's Envoy), the four processes started in the background, `sleep`
/// (the test waits for each port instead), the requests (run as one bash script, as a shell would),
/// then `kill`. The request must be delegated: the upstream got a different token, for the orders
/// service and the user; the unknown host got none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_steps_delegate_a_request_through_the_real_envoy() {
    let scratch = Scratch::new(BATON_BIN, "examples-local");
    let steps = readme_steps();
    let mut steps = steps.iter().map(String::as_str);
    assert_eq!(steps.next(), Some("cargo build --release"), "the first step builds");
    assert_eq!(steps.next(), Some("scripts/deps envoy"), "the second installs Envoy");
    for port in PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: is examples/local already running? (stop it: the README's `kill` line)"
        );
    }

    // The processes, each with its stdout and stderr in the scratch directory.
    let mut children = Vec::new();
    let mut step = steps.next().expect("the README starts the processes");
    while let Some(command) = step.strip_suffix('&') {
        let name = format!("background-{}", children.len() + 1);
        let child = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("exec {}", this_build(command)))
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(scratch.log(&format!("{name}.out")))
            .stderr(scratch.log(&format!("{name}.log")))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start `{command}`: {e}"));
        children.push((command.trim().to_owned(), child));
        step = steps.next().expect("the README goes on after starting the processes");
    }
    let started: Vec<&str> = children.iter().map(|(c, _)| c.as_str()).collect();
    for file in [
        "examples/local/sts.yaml",
        "examples/local/baton.yaml",
        "examples/local/envoy.yaml",
        "examples/demo/echo.py",
    ] {
        assert!(
            started.iter().any(|c| c.contains(file)),
            "no process started with {file}: {started:?}"
        );
    }
    assert!(
        started.iter().any(|c| c.contains(ENVOY_CMD)),
        "Envoy from .cache/envoy-path: {started:?}"
    );

    // `sleep`: the test waits for every port and Baton's readiness instead, bounded.
    assert!(
        step.starts_with("sleep "),
        "after the processes, the README waits: {step}"
    );
    let client = http();
    wait_until("examples/local's processes to listen", Duration::from_secs(30), || {
        for (command, child) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("`{command}` exited ({status}) before it was ready");
            }
        }
        let client = client.clone();
        async move {
            PORTS.iter().all(|p| port_open(*p))
                && client
                    .get(format!("http://127.0.0.1:{BATON_ADMIN}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;

    // The requests, up to `kill`, as one script (USER_TOKEN carries from one line to the next).
    // One line is the test's own: it keeps the user's token, for the checks below.
    let mut script = String::from("set -euo pipefail\n");
    let kill = loop {
        let step = steps.next().expect("the README ends by stopping the processes (kill)");
        if step.starts_with("kill ") {
            break step.to_owned();
        }
        script.push_str(&this_build(step));
        script.push('\n');
    };
    let user_token_file = scratch.0.join("user-token");
    script.push_str(&format!(
        "printf %s \"$USER_TOKEN\" > '{}'\n",
        user_token_file.display()
    ));
    let run = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the README's requests took over 60 s")
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the README's requests failed:\n{stdout}\n{stderr}"
    );
    let user_token = std::fs::read_to_string(&user_token_file).expect("the user token");
    leaks::secret(&user_token);

    // `kill %1 ...`: one job per process, and every process still running until then.
    let jobs: Vec<String> = (1..=children.len()).map(|n| format!("%{n}")).collect();
    assert_eq!(
        kill,
        format!("kill {}", jobs.join(" ")),
        "the README stops every process"
    );
    for (command, child) in &mut children {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "`{command}` exited during the requests"
        );
        child.start_kill().expect("kill");
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }

    // The first request: a bearer JWT for the orders service and alice, issued to the sidecar,
    // and not the user's token.
    let claims = claims_printed(&stdout);
    for (claim, want) in [
        ("aud", "https://orders.example"),
        ("sub", "alice"),
        ("iss", "http://127.0.0.1:18400"),
        ("client_id", "sidecar"),
        ("scope", "orders.read"),
    ] {
        assert_eq!(claims[claim].as_str(), Some(want), "{claim}: {stdout}");
    }
    let user_claims = jwt_claims(&user_token).expect("the user token is a JWT");
    assert_eq!(
        user_claims["aud"].as_str(),
        Some("frontend"),
        "the user's token is for the frontend"
    );
    assert!(
        stdout.contains("the upstream (localhost:18430) received Authorization: Bearer sha256:"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&fingerprint(&user_token)),
        "the upstream received the user's own token:\n{stdout}"
    );
    // The second: the unknown host got no token.
    assert!(
        stdout.contains("the upstream (127.0.0.1:18430) received no Authorization header"),
        "{stdout}"
    );
    // Baton's audit lines (its stdout) say the same.
    let audit = std::fs::read_to_string(scratch.0.join("background-2.out")).expect("Baton's stdout");
    let decisions: Vec<Value> = audit.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let decided = |decision: &str, destination: Option<&str>| {
        decisions
            .iter()
            .any(|d| d["decision"] == decision && d["destination"].as_str() == destination)
    };
    assert!(decided("delegate", Some("orders")), "{audit}");
    assert!(decided("strip", None), "{audit}");

    // Nothing any of them printed holds the user's token or the client secret.
    leaks::secret_file(&std::fs::read_to_string(root().join("examples/local/sidecar.secret")).expect("secret"));
    let mut outputs = Vec::new();
    for entry in std::fs::read_dir(&scratch.0).expect("scratch").flatten() {
        let path = entry.path();
        if path != user_token_file {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            outputs.push((path.display().to_string(), text));
        }
    }
    outputs.push(("the README's requests (stdout)".into(), stdout));
    outputs.push(("the README's requests (stderr)".into(), stderr));
    leaks::assert_none(&outputs);
}

/// The JSON object `examples/local/received.py` printed after "its claims".
fn claims_printed(stdout: &str) -> Value {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("its claims"));
    assert!(lines.next().is_some(), "no claims printed:\n{stdout}");
    let mut json = String::new();
    for line in lines {
        json.push_str(line);
        json.push('\n');
        if line == "}" {
            return serde_json::from_str(&json).expect("the claims are JSON");
        }
    }
    panic!("the claims never end:\n{stdout}")
}

/// How received.py shows a token: `sha256:` and 16 hex digits of its digest.
fn fingerprint(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{}", &hex[..16])
}
