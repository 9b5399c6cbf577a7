//! Baton's costs, measured side by side in one run (see BENCHMARKS.md for the command and results):
//!
//! 1. through the real Envoy on loopback, at fixed concurrency: Envoy alone (direct response), Envoy +
//!    an allow-all ext_authz server (the floor of the gRPC hop), Envoy + Baton on cache hits (through
//!    the ext_authz filter, then through the ext_proc filter);
//! 2. in process, on a cache hit, p50/p99 and checks/s on one thread: the decision (`Authz::check`), and
//!    the whole Check handler (`server::check`) with each kind of telemetry;
//! 3. a stampede: N = 10, 100 and 1000 concurrent first requests for one user and destination.
//!
//! Nothing here asserts a time; it prints numbers.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::authz::Authz;
use baton_test_support::*;
use common::*;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// Fixed concurrency levels: light (latency) and saturating (the 2-core machine's limit).
const CONCURRENCY: [usize; 2] = [4, 16];
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if serve_allow_all_if_asked(&runtime) {
        return;
    }
    if std::env::args().any(|a| a == MEMORY_FLAG) {
        runtime.block_on(memory_at_100k_tokens());
        return;
    }
    if let Some(n) = flag_value(PROFILE_FLAG) {
        profile::hits(&runtime, n);
        return;
    }
    if let Some(n) = flag_value(PROFILE_MISSES_FLAG) {
        profile::misses(n);
        return;
    }
    runtime.block_on(run());
}

/// Envoy `dynamic_metadata` on every reply (off by default).
const METADATA: &str = "telemetry:\n  dynamic_metadata: true\n";
/// `cargo bench --bench delegation -- --memory`: only the memory measurement.
const MEMORY_FLAG: &str = "--memory";
/// `--profile-hits N`: N cache hits in process and nothing else, for callgrind (see `profile`).
const PROFILE_FLAG: &str = "--profile-hits";
/// `--profile-misses N`: N raw exchange calls, then N misses (one exchange each), for callgrind.
const PROFILE_MISSES_FLAG: &str = "--profile-misses";

async fn run() {
    let (scratch, service, user) = start_with_a_user(BATON_BIN, "bench").await;
    println!(
        "machine: {} cores; {MEASURE:?} per setup after {WARMUP:?} warm-up",
        cores()
    );

    // 1. Through Envoy.
    let floor_server = AllowAllProcess::start(&scratch).await;
    let baton = Baton::start_quiet(&scratch, &service.token_endpoint).await;
    for concurrency in CONCURRENCY {
        let alone = through_envoy(&scratch, Api::ExtAuthz, None, &user, concurrency).await;
        let floor = through_envoy(&scratch, Api::ExtAuthz, Some(floor_server.port), &user, concurrency).await;
        let before = service.exchanges().await;
        let with_baton = through_envoy(&scratch, Api::ExtAuthz, Some(baton.grpc), &user, concurrency).await;
        let exchanges = service.exchanges().await - before;
        let ext_proc = through_envoy(&scratch, Api::ExtProc, Some(baton.grpc), &user, concurrency).await;
        println!("\n## Through Envoy: HTTP/1.1 keep-alive, {concurrency} connections\n");
        println!("| setup | req/s | p50 | p99 | added p50 | added p99 |");
        println!("| --- | --- | --- | --- | --- | --- |");
        let setups = [
            ("Envoy alone (direct response)", &alone),
            ("+ allow-all ext_authz", &floor),
            ("+ Baton, cache hits", &with_baton),
            ("+ Baton through ext_proc, cache hits", &ext_proc),
        ];
        for (name, m) in setups {
            println!(
                "| {name} | {:.0} | {} | {} | {} | {} |",
                m.rate,
                us(m.p50),
                us(m.p99),
                us(m.p50.saturating_sub(alone.p50)),
                us(m.p99.saturating_sub(alone.p99))
            );
        }
        let ratio = |baton: Duration, floor: Duration, alone: Duration| {
            baton.saturating_sub(alone).as_secs_f64() / floor.saturating_sub(alone).as_secs_f64().max(1e-9)
        };
        println!(
            "\nBaton's added latency / allow-all's: p50 {:.2}x, p99 {:.2}x (target: within 1.3x). Token exchanges during the Baton run: {exchanges}.",
            ratio(with_baton.p50, floor.p50, alone.p50),
            ratio(with_baton.p99, floor.p99, alone.p99)
        );
        println!(
            "Baton's added latency through ext_proc / through ext_authz: p50 {:.2}x, p99 {:.2}x.",
            ratio(ext_proc.p50, with_baton.p50, alone.p50),
            ratio(ext_proc.p99, with_baton.p99, alone.p99)
        );
    }
    drop(floor_server);

    // 2. In process: the decision without and with Baton's own verification of the subject token,
    // then the whole Check handler with each kind of telemetry.
    let authz = in_process_authz(&scratch, &service.token_endpoint, "");
    let request = check_request("orders.example", &user);
    decide(&authz, &request).await.expect("warm the cache");
    let (p50, p99, per_sec) = hit_latency(&authz, &request, InProcess::Decision).await;
    let trusting = format!(
        "trusted_issuers:\n  - issuer: {}\n    audiences: [frontend]\n",
        service.issuer
    );
    let verifying = in_process_authz(&scratch, &service.token_endpoint, &trusting);
    let for_frontend = service
        .mint_with(&[("sub", "alice"), ("aud", "frontend"), ("scope", "orders.read")])
        .await;
    let verified_request = check_request("orders.example", &for_frontend);
    decide(&verifying, &verified_request).await.expect("warm both caches");
    let (vp50, vp99, vper_sec) = hit_latency(&verifying, &verified_request, InProcess::Decision).await;
    println!("\n## In process: Authz::check on a cache hit (one thread)\n");
    println!("| subject token | p50 | p99 | checks/s on one core |");
    println!("| --- | --- | --- | --- |");
    println!("| not verified by Baton | {} | {} | {per_sec:.0} |", us(p50), us(p99));
    println!(
        "| verified (verification cached) | {} | {} | {vper_sec:.0} |",
        us(vp50),
        us(vp99)
    );
    println!(
        "\nTargets: p99 under 50 us, at least 20k checks/s per core; verified/unverified p50 {:.2}x, p99 {:.2}x (target: at most 1.2x).",
        vp50.as_secs_f64() / p50.as_secs_f64(),
        vp99.as_secs_f64() / p99.as_secs_f64()
    );

    println!("\n## In process: the Check handler on a cache hit, with telemetry (one thread)\n");
    println!("| path | p50 | p99 | checks/s on one core |");
    println!("| --- | --- | --- | --- |");
    let audit = scratch.0.join("bench-audit.log");
    let spans = leaks::SpanSink::start().await;
    let with_metadata = in_process_authz(&scratch, &service.token_endpoint, METADATA);
    let audited = in_process_authz(
        &scratch,
        &service.token_endpoint,
        &format!("{METADATA}audit:\n  sink: file\n  path: {}\n", audit.display()),
    );
    let traced = in_process_authz(
        &scratch,
        &service.token_endpoint,
        &format!(
            "audit:\n  sink: file\n  path: {}\n{METADATA}  tracing:\n    endpoint: {}\n",
            audit.display(),
            spans.endpoint
        ),
    );
    for a in [&with_metadata, &audited, &traced] {
        decide(a, &request).await.expect("warm the cache");
    }
    let paths = [
        ("`Authz::check`: the decision", &authz, InProcess::Decision),
        (
            "decision + `respond::check_response` (the Check handler before telemetry)",
            &authz,
            InProcess::Reply,
        ),
        ("`server::check`: + metrics (the default)", &authz, InProcess::Served),
        (
            "`server::check`, + `dynamic_metadata`",
            &with_metadata,
            InProcess::Served,
        ),
        (
            "`server::check`, + `dynamic_metadata` + audit log to a file",
            &audited,
            InProcess::Served,
        ),
        (
            "`server::check`, + `dynamic_metadata` + audit log + tracing, every check sampled",
            &traced,
            InProcess::Served,
        ),
    ];
    for (name, authz, path) in paths {
        let (p50, p99, per_sec) = hit_latency(authz, &request, path).await;
        println!("| {name} | {} | {} | {per_sec:.0} |", us(p50), us(p99));
    }
    drop(spans);

    // 3. Stampede: N concurrent first requests for one key, a new user for each N.
    let raw_subject = service.mint("raw", "orders.read").await;
    let raw = raw_exchange_latency(&service, &raw_subject).await;
    println!("\n## Stampede: N concurrent misses for one key\n");
    println!(
        "A raw exchange call to the same token service: p50 {}; target: waiter p99 within it + 2 ms = {}.\n",
        us(raw),
        us(raw + Duration::from_millis(2))
    );
    println!("| N | exchanges made | waiter p50 | waiter p99 | all answered in |");
    println!("| --- | --- | --- | --- | --- |");
    for n in [10, 100, 1000] {
        // One miss for another user first: after the hit runs the connection to the token service
        // may have gone idle, and the raw calls above were timed on a warm one.
        let warm = service.mint(&format!("stampede-warm-{n}"), "orders.read").await;
        decide(&authz, &check_request("orders.example", &warm))
            .await
            .expect("warm");
        let before = service.exchanges().await;
        let fresh = service.mint(&format!("stampede-{n}"), "orders.read").await;
        let request = Arc::new(check_request("orders.example", &fresh));
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (authz, request) = (authz.clone(), request.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    decide(&authz, &request).await.expect("check");
                    t.elapsed()
                })
            })
            .collect();
        let mut waits = Vec::with_capacity(tasks.len());
        for t in tasks {
            waits.push(t.await.expect("task"));
        }
        let total = started.elapsed();
        waits.sort();
        let exchanges = service.exchanges().await - before;
        println!(
            "| {n} | {exchanges} | {} | {} | {} |",
            us(waits[(waits.len() - 1) / 2]),
            us(waits[(waits.len() * 99).div_ceil(100) - 1]),
            us(total)
        );
    }
    drop(baton);

    // 4. Memory.
    memory_at_100k_tokens().await;
}

/// Resident memory of the token cache holding 100,000 tokens of 1 KiB each, as the cache keeps them
/// (the `Delegated` entry with its prebuilt header, the cache's bookkeeping, the key): bare tokens,
/// then (in a second cache, the first still held) tokens with what a real exchange also keeps.
async fn memory_at_100k_tokens() {
    const N: usize = 100_000;
    const TOKEN_BYTES: usize = 1024;
    println!("\n## Memory: {N} cached tokens of {TOKEN_BYTES} B\n");
    let bare = memory_of(N, TOKEN_BYTES, false).await;
    let audited = memory_of(N, TOKEN_BYTES, true).await;
    drop((bare, audited));
}

async fn memory_of(n: usize, token_bytes: usize, with_claims: bool) -> baton_core::cache::TokenCache {
    use baton_core::cache::{Delegated, Lifetimes, TokenCache};
    use baton_core::clock::unix_now;
    use baton_core::jwt::DelegationClaims;
    use baton_core::secret::Secret;
    let cache = TokenCache::new(n as u64, Duration::ZERO);
    let destination: Arc<str> = Arc::from("orders");
    let before = rss_bytes();
    let now = unix_now();
    for i in 0..n {
        let mut token = format!("{i:020}");
        token.extend(std::iter::repeat_n('a', token_bytes - token.len()));
        let lifetimes = Lifetimes {
            expires_in: Some(3600),
            ..Default::default()
        };
        let mut delegated = Delegated::new(
            Secret::new(token),
            "Bearer".into(),
            with_claims.then(|| "urn:ietf:params:oauth:token-type:access_token".into()),
            with_claims.then(|| "orders.read".into()),
            lifetimes,
            Duration::from_secs(30),
            now,
        );
        if with_claims {
            // What `DelegationClaims::read` finds in a typical subject and issued JWT; `Authz` adds
            // `requested_scope` only when the policy narrowed the destination's scopes.
            delegated = delegated.with_claims(DelegationClaims {
                subject_iss: Some("https://idp.example.com".into()),
                subject_sub: Some(format!("user-{i:08}").into()),
                jti: Some(format!("{i:08x}-4c7e-4a1f-8d2b-6b9d2e4c8a71").into()),
                exp: Some(now as i64 + 3600),
                scope: Some("orders.read".into()),
                requested_scope: None,
            });
        }
        // Every exchanged entry names its destination (issue 14: the purge by destination), one
        // name shared by all of them, as `Authz` shares the configured one.
        delegated = delegated.with_destination(destination.clone());
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(i as u64).to_be_bytes());
        cache.replace(key, Arc::new(delegated));
    }
    let held = cache.entry_count();
    let grown = rss_bytes().saturating_sub(before);
    // Per entry held: the cache may keep slightly fewer than `max_entries` (it bounds each shard).
    let per_entry = grown as f64 / held as f64;
    println!(
        "size_of::<Delegated>() = {} B",
        std::mem::size_of::<baton_core::cache::Delegated>()
    );
    let overhead = per_entry - token_bytes as f64;
    println!(
        "{}: RSS grew by {:.1} MiB ({held} entries held) · {per_entry:.0} B per entry · {overhead:.0} B per entry over the token itself",
        if with_claims {
            "with token types, scope and audit claims"
        } else {
            "bare tokens"
        },
        grown as f64 / (1024.0 * 1024.0),
    );
    cache
}

/// The hot path alone, for an instruction profile. It warms the cache, then runs `n` hits of each
/// path inside a function of its own, so callgrind can count just those with
/// `--toggle-collect='*profile::decisions*'` (`Authz::check`) or `'*profile::served*'`
/// (`server::check`, as served: dynamic metadata and metrics). See BENCHMARKS.md.
mod profile {
    use super::*;

    pub(super) fn hits(runtime: &tokio::runtime::Runtime, n: usize) {
        let scratch = Scratch::new(BATON_BIN, "profile");
        let (service, authz, request) = runtime.block_on(async {
            let service = TokenService::start(Peer::BatonSts, &scratch).await;
            let user = service.mint("alice", "orders.read").await;
            let authz = in_process_authz(&scratch, &service.token_endpoint, "");
            let request = check_request("orders.example", &user);
            decide(&authz, &request).await.expect("warm the cache");
            (service, authz, request)
        });
        // `BATON_PROFILE_REVOKED=N`: N other subjects revoked first, so the hits pay the lookup of a
        // non-empty revocation store (at most `revocation.max_entries`, 10000 by default).
        let revoked: usize = std::env::var("BATON_PROFILE_REVOKED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for i in 0..revoked {
            let selector = baton_core::revocation::Selector::Subject {
                issuer: None,
                sub: format!("revoked-{i}"),
            };
            authz.revoke("operator", &selector).expect("the store has room");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let before = rt.block_on(service.exchanges());
        decisions(&rt, &authz, &request, n);
        served(&rt, &authz, &request, n);
        assert_eq!(rt.block_on(service.exchanges()), before, "hits only");
        println!("{n} hits of each path");
    }

    /// Everything on one current-thread runtime, so the HTTP client's connection tasks run inside
    /// the measured functions; the token service is another process, not measured.
    pub(super) fn misses(n: usize) {
        let scratch = Scratch::new(BATON_BIN, "profile-misses");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (service, authz, client, requests, subjects) = rt.block_on(async {
            let service = TokenService::start(Peer::BatonSts, &scratch).await;
            let authz = in_process_authz(&scratch, &service.token_endpoint, "");
            let client = reqwest::Client::new();
            let (mut requests, mut subjects) = (Vec::new(), Vec::new());
            for i in 0..=n {
                let user = service.mint(&format!("miss-{i}"), "orders.read").await;
                requests.push(check_request("orders.example", &user));
                subjects.push(service.mint(&format!("raw-{i}"), "orders.read").await);
            }
            // Warm both connections to the token service.
            decide(&authz, &requests[n]).await.expect("warm");
            assert!(raw_exchange(&client, &service.token_endpoint, &subjects[n]).await);
            (service, authz, client, requests, subjects)
        });
        let before = rt.block_on(service.exchanges());
        raw_exchanges(&rt, &client, &service.token_endpoint, &subjects[..n]);
        missed(&rt, &authz, &requests[..n]);
        assert_eq!(
            rt.block_on(service.exchanges()),
            before + 2 * n as u64,
            "one exchange each"
        );
        println!("{n} raw exchanges and {n} misses");
    }

    #[inline(never)]
    fn raw_exchanges(rt: &tokio::runtime::Runtime, client: &reqwest::Client, endpoint: &str, subjects: &[String]) {
        rt.block_on(async {
            for subject in subjects {
                assert!(raw_exchange(client, endpoint, subject).await);
            }
        });
    }

    #[inline(never)]
    fn missed(rt: &tokio::runtime::Runtime, authz: &Authz, requests: &[CheckRequest]) {
        rt.block_on(async {
            for request in requests {
                assert!(decide(authz, request).await.is_ok());
            }
        });
    }

    #[inline(never)]
    fn decisions(rt: &tokio::runtime::Runtime, authz: &Authz, request: &CheckRequest, n: usize) {
        rt.block_on(async {
            for _ in 0..n {
                assert!(decide(authz, request).await.is_ok());
            }
        });
    }

    #[inline(never)]
    fn served(rt: &tokio::runtime::Runtime, authz: &Authz, request: &CheckRequest, n: usize) {
        let metadata = tonic::metadata::MetadataMap::new();
        rt.block_on(async {
            for _ in 0..n {
                let response = baton_envoy::server::check(authz, &metadata, request).await;
                assert!(response.status.is_some_and(|s| s.code == 0));
            }
        });
    }
}

/// This process's resident set size, from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Envoy with a direct response, with or without ext_authz pointed at `authz_port`; fixed concurrency.
async fn through_envoy(
    scratch: &Scratch,
    api: Api,
    authz_port: Option<u16>,
    token: &str,
    concurrency: usize,
) -> Measured {
    let envoy = bench_envoy(scratch, api, authz_port).await;
    closed_loop(&envoy, token, concurrency, WARMUP, MEASURE).await
}

/// What the in-process measurement runs on each hit.
#[derive(Clone, Copy, Debug)]
enum InProcess {
    /// `Authz::check`: extraction and the decision.
    Decision,
    /// The decision and the Envoy reply, as the Check handler was before telemetry.
    Reply,
    /// `server::check`: what the gRPC handler runs (decision, reply, dynamic metadata, span, metrics, audit).
    Served,
}

async fn once(authz: &Authz, request: &CheckRequest, metadata: &tonic::metadata::MetadataMap, path: InProcess) -> bool {
    match path {
        InProcess::Decision => decide(authz, request).await.is_ok(),
        InProcess::Reply => {
            let outcome = decide(authz, request).await;
            outcome.is_ok() && baton_envoy::respond::check_response(&outcome).http_response.is_some()
        }
        InProcess::Served => baton_envoy::server::check(authz, metadata, request)
            .await
            .status
            .is_some_and(|s| s.code == 0),
    }
}

/// Sequential hits on one thread: (p50, p99, checks per second).
async fn hit_latency(authz: &Arc<Authz>, request: &CheckRequest, path: InProcess) -> (Duration, Duration, f64) {
    let authz = authz.clone();
    let request = request.clone();
    // A current-thread runtime on a thread of its own: one core's worth.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let metadata = tonic::metadata::MetadataMap::new();
        rt.block_on(async {
            for _ in 0..20_000 {
                assert!(once(&authz, &request, &metadata, path).await, "hit");
            }
            let n = 200_000;
            let mut samples = Vec::with_capacity(n);
            let started = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                let ok = once(&authz, &request, &metadata, path).await;
                samples.push(t.elapsed());
                assert!(ok);
            }
            let per_sec = n as f64 / started.elapsed().as_secs_f64();
            samples.sort();
            (samples[n / 2], samples[n * 99 / 100], per_sec)
        })
    })
    .join()
    .expect("bench thread")
}

/// A raw exchange call straight to the same token service, with a client of its own, 50 times in a
/// row: the p50.
async fn raw_exchange_latency(service: &TokenService, subject: &str) -> Duration {
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert!(
            raw_exchange(&client, &service.token_endpoint, subject).await,
            "raw exchange"
        );
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn us(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} us", d.as_secs_f64() * 1e6)
    }
}
