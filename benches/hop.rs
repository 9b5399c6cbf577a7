//! The Check hop's cost, as CPU per request (issue 15, step 1; BENCHMARKS.md, "The Check hop: CPU
//! per request"). One run, interleaved setup by setup, in rounds:
//!
//! - Envoy alone (no ext_authz filter);
//! - Envoy + the allow-all ext_authz server (`common::AllowAll`, the floor of the hop), with the
//!   Envoy configuration of before issue 15 (Envoy sends every header) and with today's (only the
//!   headers Baton reads);
//! - Envoy + Baton on cache hits, with each of those two Envoy configurations;
//! - candidates: Baton reached on its Unix socket; Baton on a one-worker runtime;
//! - Envoy + `baton.wasm` on hits (in-proxy mode, issue 15 §2): the filter serves the cached
//!   delegation inside Envoy; Baton only answers its epoch polls. Then the filter's memory per
//!   worker (Envoy's RSS beside Envoy alone's) and the cost of a miss (every request a new user).
//!
//! Every Envoy configuration is the one `baton envoy-config` generates (`envoy_config::bootstrap`),
//! with its routes answering `direct_response: 200` instead of proxying, so the setups differ only
//! by the hop. Each setup runs N requests at 1 and at 8 HTTP/1.1 keep-alive connections from plain
//! blocking threads; the CPU of Envoy's process and of the authz process comes from
//! `/proc/PID/stat` (utime + stime, all threads) before and after, divided by N. Nothing asserts a
//! time. `HOP_ROUNDS` (default 3) and `HOP_REQUESTS` (default 4000 per connection count) set the size;
//! `HOP_ONLY=wasm` runs only Envoy alone, Envoy + Baton (ext_authz) and Envoy + baton.wasm;
//! `HOP_ONLY=http` only Envoy alone, the allow-all floor, Envoy + Baton over gRPC and Envoy + Baton
//! over HTTP (ext_authz `http_service` to `listen.authz_http`, the same Baton process, and to
//! `listen.authz_http_uds`, the Unix-socket Baton's). `HOP_BEFORE_BIN=PATH` adds a Baton built
//! before issue 15 with the Envoy configuration of that time (every header), the "before".
//! The
//! module must be built first: `cargo build --profile wasm -p baton-wasm --target wasm32-wasip1`.
//! `HOP_ENVOY=1` measures the hop from both sides instead (Envoy's settings, the HTTP transport,
//! Baton before and now, user and system time, callgrind on both processes): see `hop_envoy`.
//! `HOP_WASM_BEFORE=PATH[,PATH...]` adds other builds of the module (an earlier commit's, the
//! measuring sticks) beside it, in the same run. `HOP_ENVOY_CALLGRIND=DIR` counts Envoy's
//! instructions per request instead (callgrind: robust to the machine's load), alone and with the
//! module(s).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

mod common;
mod hop_envoy;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton_envoy::envoy_config::{self, Api as FilterApi, Options};
use baton_envoy::file::Config;
use baton_test_support::*;
use common::*;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");
const CONNECTIONS: [usize; 2] = [1, 8];

fn main() {
    if hop_envoy::serve_http_stand_in_if_asked() {
        return;
    }
    main_or_floor(run);
}

/// One process measured: its pid, read from `/proc`.
#[derive(Clone, Copy)]
struct Pid(u32);

impl Pid {
    /// utime + stime of every thread, in clock ticks, and the ticks per second.
    fn cpu(self) -> (u64, u64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).expect("/proc/PID/stat");
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `comm`.
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        (utime, stime)
    }
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ): 100 on Linux.
const TICKS: f64 = 100.0;

struct Setup {
    name: String,
    envoy: EnvoyProcess,
    authz: Option<Pid>,
}

/// Envoy started by this benchmark (so its pid is known), one worker thread, from the bootstrap.
struct EnvoyProcess {
    port: u16,
    child: Child,
}

impl EnvoyProcess {
    async fn start(scratch: &Scratch, name: &str, bootstrap: &Value) -> Self {
        Self::start_with(scratch, name, bootstrap, None).await
    }

    /// `callgrind`: Envoy runs under callgrind (collection on, profile dumps to this file prefix),
    /// so `callgrind_control` can zero and dump its instruction counts around a window of requests.
    async fn start_with(scratch: &Scratch, name: &str, bootstrap: &Value, callgrind: Option<&str>) -> Self {
        let port = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
            .as_u64()
            .expect("listener port") as u16;
        let path = scratch.write(
            &format!("{name}.envoy.yaml"),
            &envoy_config::to_yaml(bootstrap).expect("yaml"),
        );
        let mut command = match callgrind {
            Some(out) => {
                let mut c = Command::new("valgrind");
                // V8's code is written to anonymous memory, which valgrind's default
                // `--smc-check=all-non-file` watches.
                c.arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={out}"))
                    .arg(envoy_bin());
                c
            }
            None => Command::new(envoy_bin()),
        };
        let child = command
            .arg("-c")
            .arg(&path)
            .arg("--use-dynamic-base-id")
            .arg("--concurrency")
            .arg("1")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(scratch.log(&format!("{name}.envoy.stdout.log")))
            .stderr(scratch.log(&format!("{name}.envoy.log")))
            .kill_on_drop(true)
            .spawn()
            .expect("start envoy");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let patience = Duration::from_secs(if callgrind.is_some() { 1800 } else { 30 });
        wait_until("envoy's listener", patience, || async move {
            TcpStream::connect(addr).is_ok()
        })
        .await;
        Self { port, child }
    }

    fn pid(&self) -> Pid {
        Pid(self.child.id().expect("envoy running"))
    }
}

/// Baton (`baton run`) from a copy of its binary of its own (see `AllowAllProcess::start_copy`),
/// with `env` added, quiet (warnings only), as shipped otherwise.
struct BatonProcess {
    child: Child,
}

impl BatonProcess {
    /// `HOP_CALLGRIND=FILE`: Baton runs under callgrind, its profile written to FILE when it stops.
    async fn start(scratch: &Scratch, name: &str, yaml: &str, env: &[(&str, &str)]) -> Self {
        let callgrind = std::env::var("HOP_CALLGRIND").ok();
        Self::start_with(scratch, name, BATON_BIN.as_ref(), yaml, env, callgrind.as_deref()).await
    }

    /// `baton run` from a copy of `bin`; under callgrind when `callgrind` names the profile to write.
    async fn start_with(
        scratch: &Scratch,
        name: &str,
        bin: &std::path::Path,
        yaml: &str,
        env: &[(&str, &str)],
        callgrind: Option<&str>,
    ) -> Self {
        let copy = scratch.0.join(format!("{name}.bin"));
        std::fs::copy(bin, &copy).expect("copy baton");
        let config = scratch.write(&format!("{name}.yaml"), yaml);
        let admin: u16 = yaml
            .split("admin: 127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("admin port");
        let mut command = match callgrind {
            Some(out) => {
                let mut c = Command::new("valgrind");
                c.arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={out}"))
                    .arg(&copy);
                c
            }
            None => Command::new(&copy),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("BATON_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(scratch.log(&format!("{name}.stdout.log")))
            .stderr(scratch.log(&format!("{name}.log")))
            .kill_on_drop(true)
            .spawn()
            .expect("start baton");
        let ready = format!("http://127.0.0.1:{admin}/readyz");
        let patience = Duration::from_secs(if callgrind.is_some() { 300 } else { 120 });
        wait_until("baton /readyz", patience, || async {
            http().get(&ready).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        Self { child }
    }

    fn pid(&self) -> Pid {
        Pid(self.child.id().expect("baton running"))
    }
}

/// Baton's configuration: one destination, `orders.example`, reached on `listen` (TCP or socket).
fn baton_yaml(scratch: &Scratch, token_endpoint: &str, listen: &str) -> String {
    let token_service = basic_auth_to(scratch, &format!("token_endpoint: {token_endpoint}"));
    format!(
        "listen:\n{listen}  admin: 127.0.0.1:{}\ntoken_service:\n{token_service}\ndestinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: {ORDERS}\n    scopes: [orders.read]\n",
        free_port()
    )
}

/// Baton's `listen` lines for a Unix socket of each kind (gRPC, HTTP) in `scratch`; the gRPC one's path.
fn unix_sockets(scratch: &Scratch) -> (PathBuf, String) {
    let grpc = scratch.0.join("baton-uds.sock");
    let http = scratch.0.join("baton-http.sock");
    let listen = format!("  grpc_uds: {}\n  authz_http_uds: {}\n", grpc.display(), http.display());
    (grpc, listen)
}

/// What `baton envoy-config` generates for `yaml`, answering 200 itself where it would proxy.
/// `trimmed: false` puts back what Envoy sent before issue 15 (every header); `filter: false`
/// drops Baton's filter (Envoy alone).
fn bootstrap(yaml: &str, uds: Option<PathBuf>, trimmed: bool, filter: bool) -> Value {
    bootstrap_for(FilterApi::ExtAuthz, yaml, uds, trimmed, filter, None)
}

/// `bootstrap` with the filter of `api` (`Wasm`: `baton.wasm`, or `module`, with the plugin
/// configuration generated from `yaml`;
/// `ExtAuthzHttp`: ext_authz over HTTP).
fn bootstrap_for(
    api: FilterApi,
    yaml: &str,
    uds: Option<PathBuf>,
    trimmed: bool,
    filter: bool,
    module: Option<PathBuf>,
) -> Value {
    let config = Config::from_yaml(yaml).expect("config");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut options = Options::new(&config, api, uds, None, listen).expect("options");
    if api == FilterApi::Wasm {
        let raw = baton_envoy::wasm_plugin::as_written(yaml).expect("yaml");
        let plugin = baton_envoy::wasm_plugin::plugin_config(
            &config.decision,
            &raw,
            envoy_config::BATON_CLUSTER,
            options.timeout,
        )
        .expect("plugin configuration");
        options.wasm = Some(baton_envoy::wasm_plugin::Wasm {
            module: module.unwrap_or_else(wasm_module),
            plugin,
        });
    }
    let mut doc = envoy_config::bootstrap(&config, &options).expect("bootstrap");
    let hcm = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    for vhost in hcm["route_config"]["virtual_hosts"].as_array_mut().expect("vhosts") {
        for route in vhost["routes"].as_array_mut().expect("routes") {
            let route = route.as_object_mut().expect("route");
            route.remove("route");
            route.insert("direct_response".into(), json!({ "status": 200 }));
        }
    }
    let filters = hcm["http_filters"].as_array_mut().expect("filters");
    filters.retain(|f| f["name"] != "envoy.filters.http.dynamic_forward_proxy");
    if !filter {
        filters.retain(|f| f["name"] != "envoy.filters.http.ext_authz");
    } else if !trimmed {
        let authz = filters[0]["typed_config"].as_object_mut().expect("ext_authz");
        assert!(
            authz.remove("allowed_headers").is_some(),
            "the generated filter has allowed_headers"
        );
    }
    let clusters = doc["static_resources"]["clusters"].as_array_mut().expect("clusters");
    clusters.retain(|c| c["name"] != envoy_config::OUTBOUND_CLUSTER);
    doc
}

/// `baton.wasm`, built beforehand (see the module's docs).
fn wasm_module() -> PathBuf {
    let path = repo().join("target/wasm32-wasip1/wasm/baton_wasm.wasm");
    assert!(
        path.is_file(),
        "baton.wasm is missing at {}: `cargo build --profile wasm -p baton-wasm --target wasm32-wasip1`",
        path.display()
    );
    path
}

/// The request an application sends: its user's token and the headers a browser-facing service
/// typically passes on (a session cookie among them), none of which Baton reads but the three.
fn request_bytes(token: &str) -> Vec<u8> {
    let cookie = format!("session={}", "c".repeat(180));
    format!(
        "GET /orders/1 HTTP/1.1\r\nhost: orders.example\r\nauthorization: Bearer {token}\r\n\
         user-agent: Mozilla/5.0 (X11; Linux x86_64) orders-client/1.4\r\naccept: application/json\r\n\
         accept-language: en-GB,en;q=0.8\r\naccept-encoding: gzip, br\r\ncookie: {cookie}\r\n\
         x-request-id: 3f1c9a5e-8d2b-4c7e-a1f0-6b9d2e4c8a71\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
    )
    .into_bytes()
}

/// `n` requests over `connections` keep-alive connections, each from a blocking thread of its own;
/// every answer's latency, and how many were not 200.
fn drive(port: u16, connections: usize, n: usize, request: &[u8]) -> (Vec<Duration>, usize) {
    let per = n / connections;
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..connections)
            .map(|_| {
                scope.spawn(move || {
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    let mut latencies = Vec::with_capacity(per);
                    let mut wrong = 0;
                    let mut buf = vec![0u8; 16 * 1024];
                    for _ in 0..per {
                        let start = Instant::now();
                        stream.write_all(request).expect("write");
                        if read_response(&mut stream, &mut buf) != 200 {
                            wrong += 1;
                        }
                        latencies.push(start.elapsed());
                    }
                    (latencies, wrong)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        let mut wrong = 0;
        for t in threads {
            let (l, w) = t.join().expect("load thread");
            all.extend(l);
            wrong += w;
        }
        (all, wrong)
    })
}

/// One HTTP/1.1 response (head, then `content-length` bytes of body); its status.
fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> u16 {
    let mut len = 0;
    loop {
        let read = stream.read(&mut buf[len..]).expect("read");
        assert!(read > 0, "envoy closed the connection");
        len += read;
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("head");
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).expect("status");
            let body: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while len < end + 4 + body {
                let read = stream.read(&mut buf[len..]).expect("read body");
                assert!(read > 0, "envoy closed the connection");
                len += read;
            }
            return status;
        }
    }
}

/// One setup's measurement: CPU per request (us) of Envoy and of the authz process, p50 (us).
#[derive(Clone, Copy, Default)]
struct Sample {
    envoy_us: f64,
    authz_us: f64,
    authz_sys_share: f64,
    p50_us: f64,
    rate: f64,
}

fn measure(setup: &Setup, connections: usize, n: usize, request: &[u8]) -> Sample {
    // Warm-up: connections open, caches hot.
    let _ = drive(setup.envoy.port, connections, (n / 10).max(connections * 20), request);
    let envoy = setup.envoy.pid();
    let (eu0, es0) = envoy.cpu();
    let a0 = setup.authz.map(Pid::cpu);
    let start = Instant::now();
    let (mut latencies, wrong) = drive(setup.envoy.port, connections, n, request);
    let elapsed = start.elapsed();
    let (eu1, es1) = envoy.cpu();
    let a1 = setup.authz.map(Pid::cpu);
    assert_eq!(wrong, 0, "{}: answers other than 200", setup.name);
    let done = latencies.len() as f64;
    latencies.sort_unstable();
    let per_request = |ticks: u64| ticks as f64 / TICKS * 1e6 / done;
    let (authz_us, authz_sys_share) = match (a0, a1) {
        (Some((u0, s0)), Some((u1, s1))) => {
            let total = (u1 + s1) - (u0 + s0);
            (per_request(total), (s1 - s0) as f64 / (total as f64).max(1.0))
        }
        _ => (0.0, 0.0),
    };
    Sample {
        envoy_us: per_request((eu1 + es1) - (eu0 + es0)),
        authz_us,
        authz_sys_share,
        p50_us: latencies[latencies.len() / 2].as_secs_f64() * 1e6,
        rate: done / elapsed.as_secs_f64(),
    }
}

fn median_and_spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `HOP_CALLGRIND=FILE`: one Baton under callgrind behind the generated Envoy configuration, N
/// cache hits at one connection (the first a miss), then a SIGTERM so callgrind writes its profile. Nothing else.
///
/// `HOP_API=ext_authz_http`: Envoy asks Baton's HTTP authorization listener instead (ext_authz over
/// HTTP), `HOP_API=ext_authz_http_uds` the same on its Unix socket; `HOP_API=none`: Envoy alone. `HOP_CALLGRIND_ENVOY=FILE`: Envoy runs under callgrind too,
/// its profile written to FILE when it stops.
async fn profile(out: &str, n: usize) {
    let (scratch, service, user) = start_with_a_user(BATON_BIN, "bench-hop-profile").await;
    let request = request_bytes(&user);
    let api = std::env::var("HOP_API").unwrap_or_default();
    let (filter_api, filter) = match api.as_str() {
        "ext_authz_http" | "ext_authz_http_uds" => (FilterApi::ExtAuthzHttp, true),
        "none" => (FilterApi::ExtAuthz, false),
        _ => (FilterApi::ExtAuthz, true),
    };
    // With both HTTP listeners, the generated configuration reaches Baton on the socket.
    let socket = match api.as_str() {
        "ext_authz_http_uds" => format!("  authz_http_uds: {}\n", scratch.0.join("baton-http.sock").display()),
        _ => String::new(),
    };
    let config = baton_yaml(
        &scratch,
        &service.token_endpoint,
        &format!(
            "  grpc: 127.0.0.1:{}\n  authz_http: 127.0.0.1:{}\n{socket}",
            free_port(),
            free_port()
        ),
    );
    let mut baton = BatonProcess::start(&scratch, "baton", &config, &[]).await;
    // `HOP_EVERY_HEADER=1`: with the Envoy configuration of before issue 15 (every header sent).
    let trimmed = std::env::var_os("HOP_EVERY_HEADER").is_none();
    let envoy_out = std::env::var("HOP_CALLGRIND_ENVOY").ok();
    let mut envoy = EnvoyProcess::start_with(
        &scratch,
        "profile",
        &bootstrap_for(filter_api, &config, None, trimmed, filter, None),
        envoy_out.as_deref(),
    )
    .await;
    // The first request is a miss (a token exchange), slow under callgrind: until one passes.
    for _ in 0..20 {
        if tokio::task::block_in_place(|| drive(envoy.port, 1, 1, &request)).1 == 0 {
            break;
        }
    }
    let (_, wrong) = tokio::task::block_in_place(|| drive(envoy.port, 1, n, &request));
    assert_eq!(wrong, 0, "answers other than 200");
    for pid in [baton.pid().0, envoy.pid().0] {
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
    }
    let _ = baton.child.wait().await;
    let _ = envoy.child.wait().await;
    println!(
        "{n} requests through Envoy (api {api:?}); callgrind profile of Baton in {out}, of Envoy in {envoy_out:?}"
    );
}

/// `HOP_ENVOY_CALLGRIND=DIR`: instructions Envoy executes per request, counted by callgrind (so
/// they do not move with the machine's load), for Envoy alone and Envoy + baton.wasm on hits, one
/// after the other, each with one worker: a warm-up (the filter's first request is a miss), then
/// callgrind's counters zeroed, N requests on one connection, and a dump into DIR (kept, for
/// `callgrind_annotate`). Then as long a window without requests: what Envoy's timers do (the
/// filter's epoch poll, once a second; stats flushes) is taken off, since a window's length under
/// callgrind varies with the machine's load.
async fn envoy_instructions(dir: &str, n: usize) {
    let (scratch, service, user) = start_with_a_user(BATON_BIN, "bench-hop-instructions").await;
    let request = request_bytes(&user);
    let config = baton_yaml(
        &scratch,
        &service.token_endpoint,
        &format!("  grpc: 127.0.0.1:{}\n", free_port()),
    );
    let baton = BatonProcess::start(&scratch, "baton", &config, &[]).await;
    std::fs::create_dir_all(dir).expect("callgrind output directory");
    println!("The user's token: {} bytes.\n", user.len());
    println!(
        "| setup | instructions/req (Envoy, all threads, less idle) | added | idle, per req | Baton CPU ticks in the window |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let mut alone = None;
    let mut setups = vec![
        (
            "alone".to_owned(),
            ALONE_SETUP.to_owned(),
            FilterApi::ExtAuthz,
            false,
            None,
        ),
        ("wasm".to_owned(), WASM_SETUP.to_owned(), FilterApi::Wasm, true, None),
    ];
    for (i, path) in wasm_before().into_iter().enumerate() {
        setups.push((
            format!("wasm-before-{i}"),
            format!("+ baton.wasm on hits, {}", path.display()),
            FilterApi::Wasm,
            true,
            Some(path),
        ));
    }
    // Started together: V8 compiling the module under callgrind takes minutes.
    let envoys = futures_util::future::join_all(setups.iter().map(|(tag, _, api, filter, module)| {
        let doc = bootstrap_for(*api, &config, None, true, *filter, module.clone());
        let prefix = format!("{dir}/{tag}.out");
        let _ = std::fs::remove_file(format!("{prefix}.1"));
        let _ = std::fs::remove_file(format!("{prefix}.2"));
        let scratch = &scratch;
        async move { EnvoyProcess::start_with(scratch, tag, &doc, Some(&prefix)).await }
    }))
    .await;
    for ((tag, name, ..), envoy) in setups.iter().zip(envoys) {
        let prefix = format!("{dir}/{tag}.out");
        let pid = envoy.pid().0.to_string();
        let port = envoy.port;
        let (ir, idle, _window, baton_ticks) = tokio::task::block_in_place(|| {
            // Under callgrind the filter's first calls to Baton may time out (a 503): warm up
            // until 100 requests in a row are answered 200 (hits, once the epoch is heard).
            let deadline = Instant::now() + Duration::from_secs(600);
            while drive(port, 1, 100, &request).1 != 0 {
                assert!(Instant::now() < deadline, "{name}: no 100 answers 200 in a row");
                std::thread::sleep(Duration::from_secs(2));
            }
            callgrind_control("-z", &pid);
            let (u0, s0) = baton.pid().cpu();
            let start = Instant::now();
            let (_, wrong) = drive(port, 1, n, &request);
            let window = start.elapsed();
            assert_eq!(wrong, 0, "{name}: answers other than 200");
            let (u1, s1) = baton.pid().cpu();
            callgrind_control("-d", &pid);
            let busy = callgrind_total(&format!("{prefix}.1"));
            // What Envoy does meanwhile without requests (its timers; the filter's epoch poll,
            // once a second), over a window as long: taken off, as the window's length varies
            // with the machine's load under callgrind.
            callgrind_control("-z", &pid);
            std::thread::sleep(window);
            callgrind_control("-d", &pid);
            let idle = callgrind_total(&format!("{prefix}.2"));
            (busy, idle, window, (u1 + s1) - (u0 + s0))
        });
        let per = ir.saturating_sub(idle) as f64 / n as f64;
        let base = *alone.get_or_insert(per);
        println!(
            "| {name} | {per:.0} | {:.0} | {:.0} | {baton_ticks} |",
            per - base,
            idle as f64 / n as f64
        );
        drop(envoy);
    }
    println!(
        "\n{n} requests per setup on one connection; profiles in {dir} (`callgrind_annotate --inclusive=no FILE`)"
    );
}

fn callgrind_control(what: &str, pid: &str) {
    let status = std::process::Command::new("callgrind_control")
        .arg(what)
        .arg(pid)
        .stdout(Stdio::null())
        .status()
        .expect("callgrind_control (valgrind)");
    assert!(status.success(), "callgrind_control {what} {pid}");
}

/// The `totals:` line of a callgrind dump (instructions), once the dump is written.
fn callgrind_total(path: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(total) = text.lines().find_map(|l| l.strip_prefix("totals: "))
        {
            return total.trim().parse().expect("totals");
        }
        assert!(Instant::now() < deadline, "no callgrind dump at {path}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn run() {
    // `HOP_ENVOY=1`: the hop from both sides instead (benches/hop_envoy).
    if std::env::var_os("HOP_ENVOY").is_some() {
        return hop_envoy::run().await;
    }
    if let Ok(out) = std::env::var("HOP_CALLGRIND") {
        return profile(&out, env_number("HOP_REQUESTS", 2000)).await;
    }
    if let Ok(dir) = std::env::var("HOP_ENVOY_CALLGRIND") {
        return envoy_instructions(&dir, env_number("HOP_REQUESTS", 2000)).await;
    }
    let rounds = env_number("HOP_ROUNDS", 3);
    let only_wasm = std::env::var("HOP_ONLY").is_ok_and(|v| v == "wasm");
    let only_http = std::env::var("HOP_ONLY").is_ok_and(|v| v == "http");
    let n = env_number("HOP_REQUESTS", 4000);
    let (scratch, service, user) = start_with_a_user(BATON_BIN, "bench-hop").await;
    let request = request_bytes(&user);

    let floor = AllowAllProcess::start(&scratch).await;
    let floor_pid = Pid(floor.pid());
    let tcp = |port: u16| format!("  grpc: 127.0.0.1:{port}\n");
    let (grpc, one_worker_grpc) = (free_port(), free_port());
    // The same Baton answers ext_authz over gRPC and over HTTP (`HTTP_SETUP`).
    let baton_config = baton_yaml(
        &scratch,
        &service.token_endpoint,
        &format!("{}  authz_http: 127.0.0.1:{}\n", tcp(grpc), free_port()),
    );
    let baton = BatonProcess::start(&scratch, "baton", &baton_config, &[]).await;
    // It answers ext_authz over HTTP on a socket of its own too (`HTTP_UDS_SETUP`).
    let (socket, sockets) = unix_sockets(&scratch);
    let uds_config = baton_yaml(&scratch, &service.token_endpoint, &sockets);
    let uds_baton = BatonProcess::start(&scratch, "baton-uds", &uds_config, &[]).await;
    let one_worker_config = baton_yaml(&scratch, &service.token_endpoint, &tcp(one_worker_grpc));
    let one_worker = BatonProcess::start(
        &scratch,
        "baton-1-worker",
        &one_worker_config,
        &[("TOKIO_WORKER_THREADS", "1")],
    )
    .await;
    let floor_config = baton_yaml(&scratch, &service.token_endpoint, &tcp(floor.port));
    // `HOP_BEFORE_BIN=PATH`: a Baton built before issue 15 (810b4e6), with the Envoy configuration
    // of that time: the hop as the issue measured it, in this run.
    let before_config = baton_yaml(&scratch, &service.token_endpoint, &tcp(free_port()));
    let before = match std::env::var("HOP_BEFORE_BIN") {
        Ok(bin) => {
            Some(BatonProcess::start_with(&scratch, "baton-before", bin.as_ref(), &before_config, &[], None).await)
        }
        Err(_) => None,
    };

    let mut setups = Vec::new();
    for (name, yaml, uds, trimmed, filter, authz) in [
        (ALONE_SETUP, &baton_config, None, true, false, None),
        (
            "+ allow-all, every header",
            &floor_config,
            None,
            false,
            true,
            Some(floor_pid),
        ),
        (
            "+ allow-all, headers Baton reads",
            &floor_config,
            None,
            true,
            true,
            Some(floor_pid),
        ),
        (
            BEFORE_SETUP,
            &before_config,
            None,
            false,
            true,
            before.as_ref().map(BatonProcess::pid),
        ),
        (
            "+ Baton, every header (before)",
            &baton_config,
            None,
            false,
            true,
            Some(baton.pid()),
        ),
        (
            "+ Baton, headers Baton reads",
            &baton_config,
            None,
            true,
            true,
            Some(baton.pid()),
        ),
        (
            "+ Baton, headers Baton reads, Unix socket",
            &uds_config,
            Some(socket.clone()),
            true,
            true,
            Some(uds_baton.pid()),
        ),
        (
            "+ Baton, headers Baton reads, 1 runtime worker",
            &one_worker_config,
            None,
            true,
            true,
            Some(one_worker.pid()),
        ),
        (WASM_SETUP, &baton_config, None, true, true, Some(baton.pid())),
        (WASM_BEFORE_SETUP, &baton_config, None, true, true, Some(baton.pid())),
        (HTTP_SETUP, &baton_config, None, true, true, Some(baton.pid())),
        // No socket given: the generated configuration picks `listen.authz_http_uds` itself.
        (HTTP_UDS_SETUP, &uds_config, None, true, true, Some(uds_baton.pid())),
    ] {
        if name == BEFORE_SETUP && before.is_none() {
            continue;
        }
        if only_wasm
            && ![
                ALONE_SETUP,
                "+ Baton, headers Baton reads",
                WASM_SETUP,
                WASM_BEFORE_SETUP,
            ]
            .contains(&name)
        {
            continue;
        }
        if only_http
            && ![
                ALONE_SETUP,
                "+ allow-all, headers Baton reads",
                BEFORE_SETUP,
                "+ Baton, headers Baton reads",
                HTTP_SETUP,
                HTTP_UDS_SETUP,
            ]
            .contains(&name)
        {
            continue;
        }
        if name == WASM_BEFORE_SETUP {
            // Each module `HOP_WASM_BEFORE` lists, named by its file.
            for module in wasm_before() {
                let doc = bootstrap_for(
                    FilterApi::Wasm,
                    yaml,
                    uds.clone(),
                    trimmed,
                    filter,
                    Some(module.clone()),
                );
                let envoy = EnvoyProcess::start(&scratch, &format!("setup{}", setups.len()), &doc).await;
                let file = module
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                setups.push(Setup {
                    name: format!("+ {file} on hits (HOP_WASM_BEFORE)"),
                    envoy,
                    authz,
                });
            }
            continue;
        }
        let api = match name {
            WASM_SETUP => FilterApi::Wasm,
            HTTP_SETUP | HTTP_UDS_SETUP => FilterApi::ExtAuthzHttp,
            _ => FilterApi::ExtAuthz,
        };
        let doc = bootstrap_for(api, yaml, uds, trimmed, filter, None);
        let envoy = EnvoyProcess::start(&scratch, &format!("setup{}", setups.len()), &doc).await;
        setups.push(Setup {
            name: name.to_owned(),
            envoy,
            authz,
        });
    }
    println!(
        "machine: {} cores; {rounds} rounds, {n} requests per setup and connection count, interleaved",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    // samples[connections][setup][round]
    let mut samples = vec![vec![Vec::new(); setups.len()]; CONNECTIONS.len()];
    for round in 0..rounds {
        for (c, connections) in CONNECTIONS.into_iter().enumerate() {
            for (s, setup) in setups.iter().enumerate() {
                let sample = tokio::task::block_in_place(|| measure(setup, connections, n, &request));
                samples[c][s].push(sample);
            }
        }
        println!("round {} done", round + 1);
    }
    let exchanges = service.exchanges().await;
    for (c, connections) in CONNECTIONS.into_iter().enumerate() {
        println!("\n## {connections} connection(s): median of {rounds} rounds [min - max]\n");
        println!(
            "| setup | Envoy CPU/req | authz CPU/req | of which kernel | added CPU/req (both) | p50 | added p50 | req/s |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        let alone_envoy = median_and_spread(&samples[c][0].iter().map(|s| s.envoy_us).collect::<Vec<_>>()).0;
        let alone_p50 = median_and_spread(&samples[c][0].iter().map(|s| s.p50_us).collect::<Vec<_>>()).0;
        for (s, setup) in setups.iter().enumerate() {
            let of = |f: fn(&Sample) -> f64| median_and_spread(&samples[c][s].iter().map(f).collect::<Vec<_>>());
            let fmt = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} [{lo:.1} - {hi:.1}]");
            let added: Vec<f64> = samples[c][s]
                .iter()
                .map(|x| x.envoy_us + x.authz_us - alone_envoy)
                .collect();
            println!(
                "| {} | {} | {} | {:.0}% | {} | {} | {:.1} | {:.0} |",
                setup.name,
                fmt(of(|x| x.envoy_us)),
                fmt(of(|x| x.authz_us)),
                of(|x| x.authz_sys_share).0 * 100.0,
                fmt(median_and_spread(&added)),
                fmt(of(|x| x.p50_us)),
                of(|x| x.p50_us).0 - alone_p50,
                of(|x| x.rate).0,
            );
        }
    }
    println!("\nToken exchanges during the whole run (three Batons, warm-ups included): {exchanges}.");
    wasm_memory_and_misses(&setups, &service).await;
    drop(setups);
}

const ALONE_SETUP: &str = "Envoy alone";
/// The Baton `HOP_BEFORE_BIN` names, with the Envoy configuration of before issue 15.
const BEFORE_SETUP: &str = "+ Baton before issue 15 (HOP_BEFORE_BIN), every header";
const WASM_SETUP: &str = "+ baton.wasm on hits (in-proxy mode)";
/// `HOP_WASM_BEFORE=PATH[,PATH...]`: other builds of the module (an earlier commit's, or the
/// measuring sticks `floor_empty` and `floor_host_calls`), each measured beside this one in the
/// same run.
const WASM_BEFORE_SETUP: &str = "+ baton.wasm on hits, HOP_WASM_BEFORE";

fn wasm_before() -> Vec<PathBuf> {
    let list = std::env::var("HOP_WASM_BEFORE").unwrap_or_default();
    list.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect()
}
/// Envoy's ext_authz over HTTP/1.1 (`http_service`) to Baton's `listen.authz_http`, headers Baton reads.
const HTTP_SETUP: &str = "+ Baton ext_authz over HTTP";
/// The same on Baton's `listen.authz_http_uds`: what the kernel's TCP loopback costs the hop.
const HTTP_UDS_SETUP: &str = "+ Baton ext_authz over HTTP, Unix socket";

/// The filter's memory per worker (each setup's Envoy runs one worker: the wasm Envoy's RSS less
/// Envoy alone's), and the cost of a miss: `HOP_MISSES` (default 200) requests on one connection,
/// each with a user token not seen before, through ext_authz and through the filter.
async fn wasm_memory_and_misses(setups: &[Setup], service: &TokenService) {
    let find = |name: &str| setups.iter().find(|s| s.name == name);
    let (Some(alone), Some(wasm), Some(authz)) = (
        find(ALONE_SETUP),
        find(WASM_SETUP),
        find("+ Baton, headers Baton reads"),
    ) else {
        return;
    };
    let rss = |setup: &Setup| rss_kib(setup.envoy.pid().0);
    println!(
        "\nEnvoy RSS, one worker, after the run: alone {} KiB, with baton.wasm {} KiB (the filter's VM, module and cache: {} KiB)",
        rss(alone),
        rss(wasm),
        rss(wasm).saturating_sub(rss(alone))
    );
    let misses = env_number("HOP_MISSES", 200);
    println!("\n## The cost of a miss: {misses} requests, each a new user (an exchange each), 1 connection\n");
    println!("| setup | Envoy CPU/req | Baton CPU/req | p50 | exchanges |");
    println!("| --- | --- | --- | --- | --- |");
    for setup in [authz, wasm] {
        let mut requests = Vec::with_capacity(misses);
        for i in 0..misses {
            let token = service
                .mint(&format!("miss-{}-{i}", setup.envoy.port), "orders.read")
                .await;
            requests.push(request_bytes(&token));
        }
        let before = service.exchanges().await;
        let envoy = setup.envoy.pid();
        let authz_pid = setup.authz.expect("a Baton");
        let ((eu0, es0), (au0, as0)) = (envoy.cpu(), authz_pid.cpu());
        let latencies = tokio::task::block_in_place(|| {
            let mut stream = TcpStream::connect(("127.0.0.1", setup.envoy.port)).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut buf = vec![0u8; 16 * 1024];
            let mut latencies: Vec<Duration> = requests
                .iter()
                .map(|request| {
                    let start = Instant::now();
                    stream.write_all(request).expect("write");
                    assert_eq!(read_response(&mut stream, &mut buf), 200, "{}: a miss", setup.name);
                    start.elapsed()
                })
                .collect();
            latencies.sort_unstable();
            latencies
        });
        let ((eu1, es1), (au1, as1)) = (envoy.cpu(), authz_pid.cpu());
        let per = |ticks: u64| ticks as f64 / TICKS * 1e6 / misses as f64;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} |",
            setup.name,
            per((eu1 + es1) - (eu0 + es0)),
            per((au1 + as1) - (au0 + as0)),
            latencies[latencies.len() / 2].as_secs_f64() * 1e6,
            service.exchanges().await - before,
        );
    }
}
