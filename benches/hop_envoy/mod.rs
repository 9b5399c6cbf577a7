//! The Check hop from both sides (issue 15, §1; BENCHMARKS.md, "The Check hop: both sides"): what
//! Envoy's ext_authz client costs per request, and what each Envoy setting the generated
//! configuration controls, each ext_authz transport and each Baton build changes, on both processes.
//!
//! `HOP_ENVOY=1` runs it instead of the main comparison. Every setup is measured in turn, round
//! after round: CPU of Envoy and of the authz process from `/proc` (user and system time apart,
//! and context switches of all threads), at 1, 8 and 32 keep-alive connections (32: the
//! saturation rate, through Envoy's one worker as everywhere here). With `HOP_CALLGRIND_DIR=DIR`, instead,
//! each Envoy and each authz process runs under callgrind, one setup at a time: counters zeroed
//! after a warm-up, N requests at one connection, a dump; instructions per request of both.
//! `HOP_BEFORE_BIN=PATH` adds a Baton built before this work (e.g. main's `target/release/baton`).
//! The same Batons also answer ext_authz over HTTP (`--api ext_authz_http`, on TCP, on the Unix
//! socket, with one runtime worker); `HOP_STRACE=1` counts system calls, futex calls (cross-thread
//! wake-ups) among them.
//!
//! The HTTP authz server here is a stand-in (`http_allow_all_stand_in`), the floor of the HTTP hop:
//! it answers 200 to anything and decides nothing, the HTTP twin of `common::AllowAll`. Baton's own
//! HTTP listener is measured by the main comparison (`HOP_ONLY=http`, `HOP_API=ext_authz_http`).

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton_envoy::envoy_config;
use baton_test_support::*;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::common::*;
use super::{
    BATON_BIN, BatonProcess, EnvoyProcess, FilterApi, Pid, baton_yaml, bootstrap, bootstrap_for, drive, env_number,
    median_and_spread, request_bytes, unix_sockets,
};

/// The flag that makes the benchmark binary serve the HTTP stand-in instead of measuring.
const HTTP_STAND_IN_FLAG: &str = "--serve-http-allow-all-stand-in";

/// Serve the HTTP stand-in and never return, when this process was started as it.
pub(crate) fn serve_http_stand_in_if_asked() -> bool {
    if !std::env::args().any(|a| a == HTTP_STAND_IN_FLAG) {
        return false;
    }
    http_allow_all_stand_in();
    true
}

/// A stand-in HTTP/1.1 ext_authz server: 200 with no body to every request, keep-alive, one
/// thread per connection. Heads only (Envoy sends no body: `with_request_body` is not set).
fn http_allow_all_stand_in() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    #[allow(clippy::print_stdout, reason = "the port goes to the parent process")]
    {
        println!("{}", listener.local_addr().expect("addr").port());
    }
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = vec![0u8; 64 * 1024];
            let mut len = 0;
            loop {
                let Ok(read) = stream.read(&mut buf[len..]) else { return };
                if read == 0 {
                    return;
                }
                len += read;
                while let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                    buf.copy_within(end + 4..len, 0);
                    len -= end + 4;
                }
                if len == buf.len() {
                    return;
                }
            }
        });
    }
}

/// A process this module started: the authz server of some setups, or an Envoy.
struct Process {
    child: Child,
    callgrind: Option<PathBuf>,
}

impl Process {
    fn pid(&self) -> Pid {
        Pid(self.child.id().expect("running"))
    }

    /// Under callgrind: start counting from here.
    async fn zero(&self) {
        if self.callgrind.is_some() {
            control("-z", self.pid()).await;
        }
    }

    /// Under callgrind: the instructions counted since `zero` (a dump, read back).
    async fn instructions(&self) -> Option<u64> {
        let out = self.callgrind.as_ref()?;
        let before = dumps(out);
        control("-d", self.pid()).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = dumps(out);
            if let Some(new) = now.iter().find(|p| !before.contains(p)) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let text = std::fs::read_to_string(new).expect("dump");
                if let Some(total) = text.lines().find_map(|l| l.strip_prefix("totals: ")) {
                    return total.trim().split(' ').next()?.parse().ok();
                }
            }
            assert!(Instant::now() < deadline, "no callgrind dump for {}", out.display());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn control(what: &str, pid: Pid) {
    let status = Command::new("callgrind_control")
        .arg(what)
        .arg(pid.0.to_string())
        .stdout(Stdio::null())
        .status()
        .await
        .expect("callgrind_control");
    assert!(status.success(), "callgrind_control {what}");
}

fn dumps(out: &Path) -> Vec<PathBuf> {
    let (dir, name) = (out.parent().expect("dir"), out.file_name().expect("name"));
    let prefix = format!("{}.", name.to_string_lossy());
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
                .collect()
        })
        .unwrap_or_default()
}

/// `DIR/name.out` when `HOP_CALLGRIND_DIR` is set: the process named `name` runs under callgrind.
fn callgrind_out(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOP_CALLGRIND_DIR").map(|dir| PathBuf::from(dir).join(format!("{name}.out")))
}

async fn start_envoy(scratch: &Scratch, name: &str, doc: &Value) -> (Process, u16) {
    let callgrind = callgrind_out(name);
    let out = callgrind.as_ref().map(|p| p.display().to_string());
    let envoy = EnvoyProcess::start_with(scratch, name, doc, out.as_deref()).await;
    let child = envoy.child;
    (Process { child, callgrind }, envoy.port)
}

/// This benchmark binary, re-run as a floor (`flag`), its port read from its first line.
async fn start_floor(scratch: &Scratch, name: &str, flag: &str) -> (Process, u16) {
    let callgrind = callgrind_out(name);
    let (child, port) = start_floor_copy(scratch, name, &[flag.to_owned()], callgrind.as_deref()).await;
    (Process { child, callgrind }, port)
}

/// `baton run` from a copy of `bin`, with `env`.
async fn start_baton(scratch: &Scratch, name: &str, bin: &Path, yaml: &str, env: &[(&str, &str)]) -> Process {
    let callgrind = callgrind_out(name);
    let out = callgrind.as_ref().map(|p| p.display().to_string());
    let baton = BatonProcess::start_with(scratch, name, bin, yaml, env, out.as_deref()).await;
    let child = baton.child;
    Process { child, callgrind }
}

/// How a setup's Envoy configuration differs from the generated one.
#[derive(Clone, Copy, PartialEq)]
enum Tweak {
    /// No ext_authz filter.
    Alone,
    /// As generated.
    Generated,
    /// ext_authz `charge_cluster_response_stats: false`.
    NoClusterResponseStats,
    /// Every stat rejected (`stats_config.stats_matcher.reject_all`): what all of Envoy's stats cost.
    NoStats,
    /// The baton cluster's HTTP/2: 1 MiB windows instead of 64 KiB (fewer WINDOW_UPDATE frames).
    BigWindows,
    /// ext_authz `http_service` to the HTTP stand-in, instead of `grpc_service`.
    Http,
    /// What `baton envoy-config --api ext_authz_http` generates: ext_authz over HTTP to Baton's own
    /// HTTP listener (`authz_http`, or `authz_http_uds` when Baton has one).
    BatonHttp,
    /// `BatonHttp` without `dynamic_metadata_from_headers` (what Envoy's matching of Baton's
    /// metadata header names costs when Baton sends none: `telemetry.dynamic_metadata` off).
    BatonHttpNoMetadataMatcher,
    /// `BatonHttp` with `charge_cluster_response_stats: false`.
    BatonHttpNoClusterResponseStats,
}

fn envoy_doc(yaml: &str, uds: Option<PathBuf>, tweak: Tweak, http_port: u16) -> Value {
    if let Tweak::BatonHttp | Tweak::BatonHttpNoMetadataMatcher | Tweak::BatonHttpNoClusterResponseStats = tweak {
        let mut doc = bootstrap_for(FilterApi::ExtAuthzHttp, yaml, None, true, true, None);
        let authz = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            [0]["typed_config"];
        match tweak {
            Tweak::BatonHttpNoMetadataMatcher => {
                let response = authz["http_service"]["authorization_response"]
                    .as_object_mut()
                    .expect("authorization_response");
                assert!(response.remove("dynamic_metadata_from_headers").is_some());
            }
            Tweak::BatonHttpNoClusterResponseStats => authz["charge_cluster_response_stats"] = json!(false),
            _ => {}
        }
        return doc;
    }
    let mut doc = bootstrap(yaml, uds, true, tweak != Tweak::Alone);
    let filters =
        &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    let authz = &mut filters[0]["typed_config"];
    match tweak {
        Tweak::Alone
        | Tweak::Generated
        | Tweak::BatonHttp
        | Tweak::BatonHttpNoMetadataMatcher
        | Tweak::BatonHttpNoClusterResponseStats => {}
        Tweak::NoClusterResponseStats => authz["charge_cluster_response_stats"] = json!(false),
        Tweak::NoStats => doc["stats_config"] = json!({ "stats_matcher": { "reject_all": true } }),
        Tweak::BigWindows => {
            for cluster in doc["static_resources"]["clusters"].as_array_mut().expect("clusters") {
                if cluster["name"] == envoy_config::BATON_CLUSTER {
                    cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                        ["explicit_http_config"]["http2_protocol_options"] = json!({
                        "initial_stream_window_size": 1_048_576,
                        "initial_connection_window_size": 1_048_576,
                    });
                }
            }
        }
        Tweak::Http => {
            let timeout = authz["grpc_service"]["timeout"].clone();
            let object = authz.as_object_mut().expect("ext_authz");
            object.remove("grpc_service");
            object.insert(
                "http_service".into(),
                json!({
                    "server_uri": { "uri": format!("http://127.0.0.1:{http_port}"), "cluster": "allow_all_http", "timeout": timeout },
                }),
            );
            doc["static_resources"]["clusters"]
                .as_array_mut()
                .expect("clusters")
                .push(json!({
                    "name": "allow_all_http",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "allow_all_http",
                        "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                            "socket_address": { "address": "127.0.0.1", "port_value": http_port },
                        } } }] }],
                    },
                }));
        }
    }
    doc
}

/// One measurement of a setup: per request, Envoy's and the authz process's user and system CPU
/// (us), their context switches, and the rate.
#[derive(Clone, Copy, Default)]
struct Cpu {
    envoy_user: f64,
    envoy_sys: f64,
    authz_user: f64,
    authz_sys: f64,
    envoy_switches: f64,
    authz_switches: f64,
    rate: f64,
}

/// Voluntary + involuntary context switches of every thread of `pid`.
fn switches(pid: Pid) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", pid.0)) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

struct Setup {
    name: String,
    envoy: Option<(Process, u16)>,
    doc: Value,
    authz: Option<usize>,
}

/// A setup to start: its name, Baton's configuration, Baton's socket, the change to Envoy's
/// configuration, and which authz process answers it.
type Planned<'a> = (String, &'a str, Option<PathBuf>, Tweak, Option<usize>);

/// The authz processes the setups share, started once.
struct Authz {
    name: &'static str,
    process: Process,
}

pub(crate) async fn run() {
    let callgrind = std::env::var("HOP_CALLGRIND_DIR").is_ok();
    let rounds = env_number("HOP_ROUNDS", 3);
    let n = env_number("HOP_REQUESTS", 4000);
    let (scratch, service, user) = start_with_a_user(BATON_BIN, "bench-hop-envoy").await;
    let request = request_bytes(&user);

    let mut authz: Vec<Authz> = Vec::new();
    let (floor, floor_port) = start_floor(&scratch, "allow-all", ALLOW_ALL_FLAG).await;
    authz.push(Authz {
        name: "allow-all (gRPC)",
        process: floor,
    });
    let (stand_in, http_port) = start_floor(&scratch, "http-stand-in", HTTP_STAND_IN_FLAG).await;
    authz.push(Authz {
        name: "allow-all stand-in (HTTP/1.1)",
        process: stand_in,
    });
    let tcp = |port: u16| format!("  grpc: 127.0.0.1:{port}\n");
    // Each Baton "now" answers ext_authz over HTTP too, on a listener of the same kind.
    let tcp_and_http = || format!("{}  authz_http: 127.0.0.1:{}\n", tcp(free_port()), free_port());
    let floor_yaml = baton_yaml(&scratch, &service.token_endpoint, &tcp(floor_port));
    let now_yaml = baton_yaml(&scratch, &service.token_endpoint, &tcp_and_http());
    let (socket, sockets) = unix_sockets(&scratch);
    let uds_yaml = baton_yaml(&scratch, &service.token_endpoint, &sockets);
    let one_yaml = baton_yaml(&scratch, &service.token_endpoint, &tcp_and_http());
    let before_yaml = baton_yaml(&scratch, &service.token_endpoint, &tcp(free_port()));
    let now_bin = PathBuf::from(BATON_BIN);
    let before_bin = std::env::var("HOP_BEFORE_BIN").ok().map(PathBuf::from);
    if let Some(bin) = &before_bin {
        authz.push(Authz {
            name: "Baton before",
            process: start_baton(&scratch, "baton-before", bin, &before_yaml, &[]).await,
        });
    }
    authz.push(Authz {
        name: "Baton now",
        process: start_baton(&scratch, "baton-now", &now_bin, &now_yaml, &[]).await,
    });
    authz.push(Authz {
        name: "Baton now, Unix socket",
        process: start_baton(&scratch, "baton-uds", &now_bin, &uds_yaml, &[]).await,
    });
    authz.push(Authz {
        name: "Baton now, 1 runtime worker",
        process: start_baton(
            &scratch,
            "baton-1-worker",
            &now_bin,
            one_yaml.as_str(),
            &[("TOKIO_WORKER_THREADS", "1")],
        )
        .await,
    });
    let find = |name: &str| authz.iter().position(|a| a.name == name);

    let mut plan: Vec<Planned<'_>> = vec![
        ("Envoy alone".into(), now_yaml.as_str(), None, Tweak::Alone, None),
        (
            "+ allow-all gRPC (generated)".into(),
            floor_yaml.as_str(),
            None,
            Tweak::Generated,
            find("allow-all (gRPC)"),
        ),
        (
            "+ allow-all gRPC, charge_cluster_response_stats: false".into(),
            floor_yaml.as_str(),
            None,
            Tweak::NoClusterResponseStats,
            find("allow-all (gRPC)"),
        ),
        (
            "+ allow-all gRPC, 1 MiB HTTP/2 windows".into(),
            floor_yaml.as_str(),
            None,
            Tweak::BigWindows,
            find("allow-all (gRPC)"),
        ),
        (
            "+ allow-all gRPC, no stats at all".into(),
            floor_yaml.as_str(),
            None,
            Tweak::NoStats,
            find("allow-all (gRPC)"),
        ),
        (
            "+ allow-all HTTP/1.1 (http_service, stand-in)".into(),
            floor_yaml.as_str(),
            None,
            Tweak::Http,
            find("allow-all stand-in (HTTP/1.1)"),
        ),
    ];
    if before_bin.is_some() {
        plan.push((
            "+ Baton before".into(),
            before_yaml.as_str(),
            None,
            Tweak::Generated,
            find("Baton before"),
        ));
    }
    plan.extend([
        (
            "+ Baton now".into(),
            now_yaml.as_str(),
            None,
            Tweak::Generated,
            find("Baton now"),
        ),
        (
            "+ Baton now, charge_cluster_response_stats: false".into(),
            now_yaml.as_str(),
            None,
            Tweak::NoClusterResponseStats,
            find("Baton now"),
        ),
        (
            "+ Baton now, Unix socket".into(),
            uds_yaml.as_str(),
            Some(socket.clone()),
            Tweak::Generated,
            find("Baton now, Unix socket"),
        ),
        (
            "+ Baton now, 1 runtime worker".into(),
            one_yaml.as_str(),
            None,
            Tweak::Generated,
            find("Baton now, 1 runtime worker"),
        ),
        (
            "+ Baton now over HTTP".into(),
            now_yaml.as_str(),
            None,
            Tweak::BatonHttp,
            find("Baton now"),
        ),
        (
            "+ Baton now over HTTP, Unix socket".into(),
            uds_yaml.as_str(),
            None,
            Tweak::BatonHttp,
            find("Baton now, Unix socket"),
        ),
        (
            "+ Baton now over HTTP, no dynamic_metadata_from_headers".into(),
            now_yaml.as_str(),
            None,
            Tweak::BatonHttpNoMetadataMatcher,
            find("Baton now"),
        ),
        (
            "+ Baton now over HTTP, charge_cluster_response_stats: false".into(),
            now_yaml.as_str(),
            None,
            Tweak::BatonHttpNoClusterResponseStats,
            find("Baton now"),
        ),
        (
            "+ Baton now over HTTP, 1 runtime worker".into(),
            one_yaml.as_str(),
            None,
            Tweak::BatonHttp,
            find("Baton now, 1 runtime worker"),
        ),
    ]);
    if let Ok(only) = std::env::var("HOP_ENVOY_ONLY") {
        let keep: Vec<&str> = only.split(',').collect();
        plan.retain(|(name, ..)| name == "Envoy alone" || keep.iter().any(|k| name.contains(k)));
    }
    let mut setups: Vec<Setup> = Vec::new();
    for (name, yaml, uds, tweak, authz_at) in plan {
        let doc = envoy_doc(yaml, uds, tweak, http_port);
        setups.push(Setup {
            name,
            envoy: None,
            doc,
            authz: authz_at,
        });
    }
    println!(
        "machine: {} cores; load: {}",
        cores(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    if callgrind {
        return instructions(&scratch, &mut setups, &authz, n, &request).await;
    }
    for (i, setup) in setups.iter_mut().enumerate() {
        setup.envoy = Some(start_envoy(&scratch, &format!("setup{i}"), &setup.doc).await);
    }
    let connections = [1usize, 8, 32];
    let mut samples = vec![vec![Vec::new(); setups.len()]; connections.len()];
    for round in 0..rounds {
        for (c, conns) in connections.into_iter().enumerate() {
            for (s, setup) in setups.iter().enumerate() {
                let authz_pid = setup.authz.map(|a| authz[a].process.pid());
                let sample = tokio::task::block_in_place(|| cpu(setup, authz_pid, conns, n, &request));
                samples[c][s].push(sample);
            }
        }
        println!("round {} done", round + 1);
    }
    for (c, conns) in connections.into_iter().enumerate() {
        println!("\n## {conns} connection(s), 1 Envoy worker: median of {rounds} rounds [min - max], us per request\n");
        println!(
            "| setup | Envoy user | Envoy sys | authz user | authz sys | added CPU | Envoy / authz switches | req/s |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        let alone = median_and_spread(
            &samples[c][0]
                .iter()
                .map(|x| x.envoy_user + x.envoy_sys)
                .collect::<Vec<_>>(),
        )
        .0;
        for (s, setup) in setups.iter().enumerate() {
            let of = |f: fn(&Cpu) -> f64| median_and_spread(&samples[c][s].iter().map(f).collect::<Vec<_>>());
            let fmt = |(m, lo, hi): (f64, f64, f64)| format!("{m:.0} [{lo:.0} - {hi:.0}]");
            let added: Vec<f64> = samples[c][s]
                .iter()
                .map(|x| x.envoy_user + x.envoy_sys + x.authz_user + x.authz_sys - alone)
                .collect();
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.1} / {:.1} | {:.0} |",
                setup.name,
                fmt(of(|x| x.envoy_user)),
                fmt(of(|x| x.envoy_sys)),
                fmt(of(|x| x.authz_user)),
                fmt(of(|x| x.authz_sys)),
                fmt(median_and_spread(&added)),
                of(|x| x.envoy_switches).0,
                of(|x| x.authz_switches).0,
                of(|x| x.rate).0,
            );
        }
    }
    if std::env::var_os("HOP_STRACE").is_some() {
        syscalls(&scratch, &setups, &authz, n, &request).await;
    }
    drop(setups);
    drop(authz);
}

/// `HOP_STRACE=1`: system calls per request of Envoy and of the authz process (`strace -c -f`
/// attached to each for N requests at one connection; strace slows them, the counts are exact).
async fn syscalls(scratch: &Scratch, setups: &[Setup], authz: &[Authz], n: usize, request: &[u8]) {
    println!("\n## System calls per request (strace -c -f), {n} requests at 1 connection\n");
    println!("| setup | Envoy | Envoy's top three | authz process | authz's top three | futex: Envoy / authz |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (i, setup) in setups.iter().enumerate() {
        let (envoy, port) = setup.envoy.as_ref().expect("started");
        let mut tracers = Vec::new();
        for (who, pid) in [
            ("envoy", Some(envoy.pid())),
            ("authz", setup.authz.map(|a| authz[a].process.pid())),
        ] {
            let Some(pid) = pid else { continue };
            let out = scratch.0.join(format!("strace-{i}-{who}.txt"));
            let child = Command::new("strace")
                .args(["-c", "-f", "-o"])
                .arg(&out)
                .arg("-p")
                .arg(pid.0.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("strace");
            tracers.push((who, child, out));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, wrong) = tokio::task::block_in_place(|| drive(*port, 1, n, request));
        assert_eq!(wrong, 0, "{}: answers other than 200", setup.name);
        let mut cells = vec![("-".to_owned(), "-".to_owned(), 0.0); 2];
        for (who, mut child, out) in tracers {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().expect("strace").to_string())
                .status()
                .await;
            let _ = child.wait().await;
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let mut rows: Vec<(u64, String)> = Vec::new();
            let mut total = 0;
            for line in text.lines() {
                let cols: Vec<&str> = line.split_whitespace().collect();
                // % time, seconds, usecs/call, calls, [errors], syscall
                if cols.len() >= 5 && cols[0].parse::<f64>().is_ok() {
                    let calls: u64 = cols[3].parse().unwrap_or(0);
                    let name = cols[cols.len() - 1];
                    if name == "total" {
                        total = calls;
                    } else {
                        rows.push((calls, name.to_owned()));
                    }
                }
            }
            rows.sort_by_key(|row| std::cmp::Reverse(row.0));
            // Cross-thread wake-ups: a futex call per hand-off between two threads.
            let futex = rows.iter().find(|(_, name)| name == "futex").map_or(0, |row| row.0);
            let top = rows
                .iter()
                .take(3)
                .map(|(c, name)| format!("{name} {:.2}", *c as f64 / n as f64))
                .collect::<Vec<_>>()
                .join(", ");
            cells[usize::from(who == "authz")] =
                (format!("{:.2}", total as f64 / n as f64), top, futex as f64 / n as f64);
        }
        println!(
            "| {} | {} | {} | {} | {} | {:.2} / {:.2} |",
            setup.name, cells[0].0, cells[0].1, cells[1].0, cells[1].1, cells[0].2, cells[1].2
        );
    }
}

fn cpu(setup: &Setup, authz: Option<Pid>, connections: usize, n: usize, request: &[u8]) -> Cpu {
    let (envoy, port) = setup.envoy.as_ref().expect("started");
    let _ = drive(*port, connections, (n / 10).max(connections * 20), request);
    let envoy = envoy.pid();
    let (e0, a0) = (envoy.cpu(), authz.map(Pid::cpu));
    let (es0, as0) = (switches(envoy), authz.map_or(0, switches));
    let start = Instant::now();
    let (latencies, wrong) = drive(*port, connections, n, request);
    let elapsed = start.elapsed();
    let (e1, a1) = (envoy.cpu(), authz.map(Pid::cpu));
    let (es1, as1) = (switches(envoy), authz.map_or(0, switches));
    assert_eq!(wrong, 0, "{}: answers other than 200", setup.name);
    let done = latencies.len() as f64;
    let us = |ticks: u64| ticks as f64 / 100.0 * 1e6 / done;
    let (au, asys) = match (a0, a1) {
        (Some((u0, s0)), Some((u1, s1))) => (us(u1 - u0), us(s1 - s0)),
        _ => (0.0, 0.0),
    };
    Cpu {
        envoy_user: us(e1.0 - e0.0),
        envoy_sys: us(e1.1 - e0.1),
        authz_user: au,
        authz_sys: asys,
        envoy_switches: (es1 - es0) as f64 / done,
        authz_switches: as1.saturating_sub(as0) as f64 / done,
        rate: done / elapsed.as_secs_f64(),
    }
}

/// Under callgrind: each setup's Envoy in turn (one at a time: each is slow and large), N requests
/// at one connection after a warm-up, instructions per request of Envoy and of its authz process.
async fn instructions(scratch: &Scratch, setups: &mut [Setup], authz: &[Authz], n: usize, request: &[u8]) {
    println!("\n## Instructions per request (callgrind), {n} requests at 1 connection, after 200 of warm-up\n");
    println!("| setup | Envoy | authz process | both, over Envoy alone |");
    println!("| --- | --- | --- | --- |");
    let mut alone = 0.0;
    for (i, setup) in setups.iter_mut().enumerate() {
        let (envoy, port) = start_envoy(scratch, &format!("setup{i}"), &setup.doc).await;
        let authz_process = setup.authz.map(|a| &authz[a].process);
        let _ = tokio::task::block_in_place(|| drive(port, 1, 200, request));
        envoy.zero().await;
        if let Some(a) = authz_process {
            a.zero().await;
        }
        let (_, wrong) = tokio::task::block_in_place(|| drive(port, 1, n, request));
        assert_eq!(wrong, 0, "{}: answers other than 200", setup.name);
        let envoy_ir = envoy.instructions().await.expect("envoy's count") as f64 / n as f64;
        let authz_ir = match authz_process {
            Some(a) => a.instructions().await.expect("authz count") as f64 / n as f64,
            None => 0.0,
        };
        if i == 0 {
            alone = envoy_ir;
        }
        println!(
            "| {} | {:.0} | {:.0} | {:.0} |",
            setup.name,
            envoy_ir,
            authz_ir,
            envoy_ir + authz_ir - alone
        );
        drop(envoy);
    }
}
