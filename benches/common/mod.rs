//! What the benchmarks share: their start (the floor, or the run; `baton sts` and a user's token),
//! the allow-all ext_authz server (the floor of the gRPC hop), the Envoy bootstrap every setup
//! answers from and the closed-loop load through it, and an in-process `Authz` with its
//! CheckRequest.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::authz::Authz;
use baton_core::decision::Allow;
use baton_decide::reason::Denial;
use baton_envoy::file::Config;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};

use baton_test_support::*;

/// The flag that makes a benchmark binary serve the allow-all floor instead of measuring. Followed
/// by a number, the floor also rewrites `Authorization` to a fixed value that long.
pub const ALLOW_ALL_FLAG: &str = "--serve-allow-all";

/// The count after `flag` on the command line (`--flag N`), if the flag is there.
pub fn flag_value(flag: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == flag)?;
    Some(
        args.get(at + 1)
            .and_then(|n| n.parse().ok())
            .expect("a count after the flag"),
    )
}

/// A benchmark's `main`: serve the floor if this process was started as the floor, else `run`.
pub fn main_or_floor<F: Future<Output = ()>>(run: impl FnOnce() -> F) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if serve_allow_all_if_asked(&runtime) {
        return;
    }
    runtime.block_on(run());
}

/// What most runs start from: a scratch directory named `name` (running the `baton` at `bin`),
/// `baton sts` in it, and a token of alice's for `orders.read`.
pub async fn start_with_a_user(bin: &str, name: &str) -> (Scratch, TokenService, String) {
    let scratch = Scratch::new(bin, name);
    let service = TokenService::start(Peer::BatonSts, &scratch).await;
    let user = service.mint("alice", "orders.read").await;
    (scratch, service, user)
}

/// The machine's cores, for the line every run prints first.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Serve the floor and never return, when this process was started as the floor.
pub fn serve_allow_all_if_asked(runtime: &tokio::runtime::Runtime) -> bool {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == ALLOW_ALL_FLAG) else {
        return false;
    };
    // The floor runs as a process of its own, like Baton, so both pay the same scheduling.
    let rewrite = args.get(at + 1).and_then(|n| n.parse::<usize>().ok()).map(|len| {
        let mut value = String::from("Bearer ");
        value.extend(std::iter::repeat_n('x', len.saturating_sub(value.len())));
        value
    });
    runtime.block_on(serve_allow_all(rewrite));
    true
}

/// The floor: an ext_authz server that allows everything and decides nothing. With `rewrite`, it
/// also sets `Authorization` to that value, as Baton's reply does: the floor of delegation itself
/// (Envoy applying a header of that size), without a decision.
struct AllowAll {
    rewrite: Option<String>,
}

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: tonic::Request<CheckRequest>) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        use envoy_types::ext_authz::v3::CheckResponseExt as _;
        use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
        use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
        use envoy_types::pb::envoy::service::auth::v3::OkHttpResponse;
        use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
        let mut response = CheckResponse::with_status(tonic::Status::ok("allowed"));
        if let Some(value) = &self.rewrite {
            response.http_response = Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "authorization".to_owned(),
                        value: value.clone(),
                        ..Default::default()
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }));
        }
        Ok(tonic::Response::new(response))
    }
}

async fn serve_allow_all(rewrite: Option<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    #[allow(clippy::print_stdout, reason = "the port goes to the parent process")]
    {
        println!("{}", listener.local_addr().expect("addr").port());
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let _ = tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(AllowAll { rewrite }))
        .serve_with_incoming(incoming)
        .await;
}

/// This benchmark binary, re-run as the allow-all server.
pub struct AllowAllProcess {
    pub port: u16,
    _child: tokio::process::Child,
}

impl AllowAllProcess {
    pub async fn start(scratch: &Scratch) -> Self {
        Self::start_copy(scratch, "allow-all", &[]).await
    }

    /// Its process id, for reading its CPU time from `/proc` (benches/hop.rs).
    pub fn pid(&self) -> u32 {
        self._child.id().expect("the floor is running")
    }

    /// The floor that also sets `Authorization` to a fixed value of `len` bytes.
    pub async fn start_rewriting(scratch: &Scratch, len: usize) -> Self {
        Self::start_copy(scratch, "allow-all-rewriting", &[len.to_string()]).await
    }

    /// Each floor runs from a copy of this binary of its own, as Baton runs from another file.
    /// Processes of one file share its code in the CPU's caches: in round trips taking turns request
    /// by request, a floor ran on code the load generator (this binary) or the other floor had just
    /// warmed. Two Batons from one file showed the size of it: the second in turn answered 5 to
    /// 7 us sooner (BENCHMARKS.md, "At fixed rates").
    async fn start_copy(scratch: &Scratch, name: &str, args: &[String]) -> Self {
        let mut all = vec![ALLOW_ALL_FLAG.to_owned()];
        all.extend_from_slice(args);
        let (child, port) = start_floor_copy(scratch, name, &all, None).await;
        Self { port, _child: child }
    }
}

/// This benchmark binary, re-run from a copy of its own named `name` (see
/// `AllowAllProcess::start_copy`) with `args` (a floor's flag first): the child and the port it
/// prints first. Under callgrind when `callgrind` names the profile to write (its log beside it).
pub async fn start_floor_copy(
    scratch: &Scratch,
    name: &str,
    args: &[String],
    callgrind: Option<&std::path::Path>,
) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt as _;
    let copy = scratch.0.join(name);
    std::fs::copy(std::env::current_exe().expect("own path"), &copy).expect("copy the floor binary");
    let mut command = match callgrind {
        Some(out) => {
            let mut c = tokio::process::Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(&copy)
                .stderr(scratch.log(&format!("{name}.valgrind.log")));
            c
        }
        None => tokio::process::Command::new(&copy),
    };
    let mut child = command
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the floor");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .expect("read")
        .expect("port line");
    (child, line.trim().parse().expect("port"))
}

/// Envoy answering with a `direct_response`, with or without the filter of `api` pointed at
/// `authz_port`, and no access log: every setup differs only by the ext_authz (or ext_proc) hop.
pub async fn bench_envoy(scratch: &Scratch, api: Api, authz_port: Option<u16>) -> Envoy {
    Envoy::start_with_bootstrap(scratch, &bench_bootstrap(api, authz_port)).await
}

/// `bench_envoy`'s bootstrap, for a setup that changes it further.
pub fn bench_bootstrap(api: Api, authz_port: Option<u16>) -> String {
    let port = free_port();
    let mut bootstrap = envoy_bootstrap_for(api, port, authz_port.unwrap_or(1), 1);
    bootstrap = bootstrap.replace("route: { cluster: upstream }", "direct_response: { status: 200 }");
    let (start, end) = (
        bootstrap.find("          access_log:").expect("access log"),
        bootstrap.find("          route_config:").expect("route config"),
    );
    bootstrap.replace_range(start..end, "");
    if authz_port.is_none() {
        let start = bootstrap
            .find("          - name: envoy.filters.http.ext_authz")
            .expect("filter");
        let end = bootstrap
            .find("          - name: envoy.filters.http.router")
            .expect("router");
        bootstrap.replace_range(start..end, "");
    }
    bootstrap
}

/// What a closed-loop run measured: requests per second, and the latency percentiles.
pub struct Measured {
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// Closed-loop load through `envoy` at fixed `concurrency` (one connection each, keep-alive): each
/// worker sends `GET /bench` to `orders.example` with this user's token as soon as the previous
/// one was answered, for `warmup` (not counted), then `measure`. Every answer must be a 200.
pub async fn closed_loop(
    envoy: &Envoy,
    token: &str,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> Measured {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let url = envoy.url("/bench");
    let auth = bearer(token);
    let one = |client: reqwest::Client, url: String, auth: String| async move {
        let r = client
            .get(&url)
            .header("host", "orders.example")
            .header("authorization", &auth)
            .send()
            .await;
        let status = r.expect("request").status();
        assert_eq!(status, 200, "every benchmark request must succeed");
    };
    one(client.clone(), url.clone(), auth.clone()).await;
    let deadline = Instant::now() + warmup + measure;
    let measure_from = Instant::now() + warmup;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(100_000);
                loop {
                    let t = Instant::now();
                    if t >= deadline {
                        break samples;
                    }
                    one(client.clone(), url.clone(), auth.clone()).await;
                    if t >= measure_from {
                        samples.push(t.elapsed());
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all.sort();
    Measured {
        rate: all.len() as f64 / measure.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
    }
}

/// Baton's decision in this process, against `token_endpoint`, with one destination (`orders`).
pub fn in_process_authz(scratch: &Scratch, token_endpoint: &str, extra: &str) -> Arc<Authz> {
    let token_service = basic_auth_to(scratch, &format!("token_endpoint: {token_endpoint}"));
    let yaml = format!(
        "listen:\n  grpc: 127.0.0.1:0\ntoken_service:\n{token_service}\ndestinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: {ORDERS}\n    scopes: [orders.read]\n{extra}"
    );
    let config = Config::from_yaml(&yaml).expect("config");
    baton_envoy::app::build(config.decision).expect("build")
}

/// A CheckRequest as Envoy sends it: six headers, the user's token among them.
pub fn check_request(host: &str, token: &str) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    let headers = [
        (":authority", host),
        ("authorization", &bearer(token)),
        (":method", "GET"),
        (":path", "/orders/1"),
        ("user-agent", "bench"),
        ("x-request-id", "3f1c9a5e-8d2b-4c7e-a1f0-6b9d2e4c8a71"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let http = HttpRequest {
        host: host.into(),
        method: "GET".into(),
        path: "/orders/1".into(),
        headers,
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// One token exchange straight to the token service at `token_endpoint`, with the form Baton sends
/// for the `orders` destination, on the caller's client. True if it was answered 200.
pub async fn raw_exchange(client: &reqwest::Client, token_endpoint: &str, subject: &str) -> bool {
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", subject),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("audience", ORDERS),
        ("scope", "orders.read"),
    ];
    let Ok(r) = client
        .post(token_endpoint)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&form)
        .send()
        .await
    else {
        return false;
    };
    let ok = r.status().is_success();
    ok && r.bytes().await.is_ok()
}

/// Envoy's ext_authz question answered in process, as the server does: extract, then decide.
pub async fn decide(authz: &Authz, request: &CheckRequest) -> Result<Allow, Denial> {
    let check = baton_envoy::extract::Check::new(request);
    authz.decide(&check.outbound()?).await
}
