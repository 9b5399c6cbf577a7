//! Baton at fixed request rates, measured side by side in one run (see BENCHMARKS.md):
//!
//! 1. each setup's maximum throughput through the real Envoy (closed loop, 16 connections): Envoy
//!    alone (direct response), + an allow-all ext_authz server (the floor of the gRPC hop), + one that
//!    sets a fixed `Authorization` as long as Baton's (the floor of the rewrite itself), + Baton on
//!    cache hits (ext_authz, then ext_proc, then ext_authz with `telemetry.dynamic_metadata` on);
//! 2. Baton's maximum in the open loop itself: the highest rate it answers in full without the
//!    requests queueing (the sender's lag stays flat), found by bisection;
//! 3. every setup in an open loop at 1k req/s and at 80% of that open-loop maximum, on the same 16
//!    connections, latency counted from each request's due time, so a stall is not hidden by the load
//!    backing off; the setups take turns in 1 s slices, so a burst of other work on the machine falls
//!    on all of them alike;
//! 4. each ext_authz server on its own: gRPC round trips from one client, no Envoy, taking turns;
//! 5. the miss path: a Check whose every request is a new user (so a miss and one exchange), beside
//!    raw exchange calls to the same token service, interleaved in one open loop.
//!
//! Nothing here asserts a time; it prints numbers. `cargo bench --bench load -- --direct-only N`
//! runs only step 4, N times.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_test_support::open_loop::{Sample, Summary, load_average, open_loop, open_loop_on, summarize, us};
use baton_test_support::*;
use common::*;

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

const MAX_CONCURRENCY: usize = 16;
/// Where Baton (ext_authz) is among the setups.
const BATON: usize = 3;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
/// Fixed rates: each setup's turn, and how many turns are measured after one of warm-up.
const SLICE: Duration = Duration::from_secs(1);
const ROUNDS: u32 = 30;
/// The open-loop maximum: how long each tried rate runs, and what counts as keeping up with it.
const PROBE: Duration = Duration::from_secs(2);
const KEEPS_UP_LAG_P99: Duration = Duration::from_millis(1);
/// `--direct-only N`: only the servers on their own, N times (a quick look at Baton's own cost).
const DIRECT_ONLY_FLAG: &str = "--direct-only";
/// The miss path: requests per second of each kind (raw exchange, miss, verified miss).
const MISS_RATE: f64 = 100.0;

fn main() {
    main_or_floor(run);
}

async fn run() {
    let (scratch, service, user) = start_with_a_user(BATON_BIN, "bench-load").await;
    println!(
        "machine: {} cores; load average at the start: {}",
        cores(),
        load_average()
    );

    let floor_server = AllowAllProcess::start(&scratch).await;
    // The floor of delegation itself: Envoy setting an Authorization as long as Baton's, no decision.
    let header_len = delegated_header_len(&scratch, &service.token_endpoint, &user).await;
    let rewrite_server = AllowAllProcess::start_rewriting(&scratch, header_len).await;
    let baton = Baton::start_quiet(&scratch, &service.token_endpoint).await;
    let servers = [
        ("allow-all", floor_server.port),
        ("fixed Authorization (no decision)", rewrite_server.port),
        ("Baton, cache hits", baton.grpc),
    ];
    let request = check_request("orders.example", &user);
    if let Some(times) = flag_value(DIRECT_ONLY_FLAG) {
        for _ in 0..times {
            direct_round_trips(&servers, &request).await;
        }
        return;
    }
    // Not among the direct round trips: a second Baton from the same file would run on the first
    // one's warm code there (see `AllowAllProcess::start_copy`).
    let with_metadata = Baton::start_quiet_with(
        &scratch,
        &service.token_endpoint,
        "telemetry:\n  dynamic_metadata: true\n",
    )
    .await;
    let setups = [
        (
            "Envoy alone (direct response)",
            bench_envoy(&scratch, Api::ExtAuthz, None).await,
        ),
        (
            "+ allow-all ext_authz",
            bench_envoy(&scratch, Api::ExtAuthz, Some(floor_server.port)).await,
        ),
        (
            "+ ext_authz setting a fixed Authorization (no decision)",
            bench_envoy(&scratch, Api::ExtAuthz, Some(rewrite_server.port)).await,
        ),
        (
            "+ Baton, cache hits",
            bench_envoy(&scratch, Api::ExtAuthz, Some(baton.grpc)).await,
        ),
        (
            "+ Baton through ext_proc, cache hits",
            bench_envoy(&scratch, Api::ExtProc, Some(baton.grpc)).await,
        ),
        (
            "+ Baton with dynamic_metadata, cache hits",
            bench_envoy(&scratch, Api::ExtAuthz, Some(with_metadata.grpc)).await,
        ),
    ];

    // 1. Each setup's maximum.
    println!("\n## Maximum throughput: closed loop, {MAX_CONCURRENCY} connections, {MEASURE:?} after {WARMUP:?}\n");
    println!("| setup | req/s |");
    println!("| --- | --- |");
    let mut max = Vec::new();
    for (name, envoy) in &setups {
        let rate = closed_loop(envoy, &user, MAX_CONCURRENCY).await;
        println!("| {name} | {rate:.0} |");
        max.push(rate);
    }
    let exchanges_before = service.exchanges().await;
    let url_and_clients: Vec<(String, Arc<Vec<reqwest::Client>>)> = setups
        .iter()
        .map(|(_, envoy)| {
            (
                envoy.url("/bench"),
                Arc::new((0..MAX_CONCURRENCY).map(|_| client()).collect()),
            )
        })
        .collect();
    let auth = bearer(&user);

    // 2. Baton's maximum in the open loop, below its closed-loop one.
    let (url, clients) = &url_and_clients[BATON];
    let open_max = open_loop_max(url, clients, &auth, max[BATON]).await;

    // 3. Fixed rates, the setups taking turns.
    for rate in [1000.0, (0.8 * open_max).round()] {
        let load_before = load_average();
        let mut pooled: Vec<Vec<Sample>> = vec![Vec::new(); setups.len()];
        for round in 0..=ROUNDS {
            for (s, (url, clients)) in url_and_clients.iter().enumerate() {
                let samples = fixed_rate(url, clients, &auth, rate).await;
                if round > 0 {
                    // Laid end to end, so the pooled answers/s is over the measured time.
                    let offset = SLICE * (round - 1);
                    pooled[s].extend(samples.into_iter().map(|x| Sample {
                        due: x.due + offset,
                        ..x
                    }));
                }
            }
        }
        println!(
            "\n## Open loop at {rate:.0} req/s on {MAX_CONCURRENCY} connections ({ROUNDS} turns of {SLICE:?} per setup after one of warm-up; latency from the due time; load average {load_before} -> {})\n",
            load_average()
        );
        println!("| setup | req/s answered | failed | p50 | p99 | max | added p50 | added p99 | sender lag p99 |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let results: Vec<Summary> = pooled.iter().map(|p| summarize(p, Duration::ZERO)).collect();
        let alone = results[0];
        for ((name, _), s) in setups.iter().zip(&results) {
            println!(
                "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                s.rate,
                s.failed,
                us(s.p50),
                us(s.p99),
                us(s.max),
                us(s.p50.saturating_sub(alone.p50)),
                us(s.p99.saturating_sub(alone.p99)),
                us(s.lag_p99)
            );
        }
        let ratio = |baton: Duration, floor: Duration, alone: Duration| {
            baton.saturating_sub(alone).as_secs_f64() / floor.saturating_sub(alone).as_secs_f64().max(1e-9)
        };
        let [alone, floor, rewrite, hits, ext_proc, metadata] = &results[..] else {
            unreachable!("six setups")
        };
        println!(
            "\nBaton's added latency / allow-all's: p50 {:.2}x, p99 {:.2}x (target: within 1.3x). Through ext_proc: p50 {:.2}x, p99 {:.2}x. With dynamic_metadata: p50 {:.2}x, p99 {:.2}x. The fixed rewrite alone / allow-all: p50 {:.2}x, p99 {:.2}x; Baton / the fixed rewrite: p50 {:.2}x, p99 {:.2}x.",
            ratio(hits.p50, floor.p50, alone.p50),
            ratio(hits.p99, floor.p99, alone.p99),
            ratio(ext_proc.p50, floor.p50, alone.p50),
            ratio(ext_proc.p99, floor.p99, alone.p99),
            ratio(metadata.p50, floor.p50, alone.p50),
            ratio(metadata.p99, floor.p99, alone.p99),
            ratio(rewrite.p50, floor.p50, alone.p50),
            ratio(rewrite.p99, floor.p99, alone.p99),
            ratio(hits.p50, rewrite.p50, alone.p50),
            ratio(hits.p99, rewrite.p99, alone.p99)
        );
    }
    println!(
        "\nToken exchanges during the fixed-rate runs: {} (all hits after the first).",
        service.exchanges().await - exchanges_before
    );
    // 4. The servers alone, without Envoy.
    direct_round_trips(&servers, &request).await;
    drop(setups);
    drop((baton, with_metadata));
    drop((floor_server, rewrite_server));

    // 5. The miss path.
    miss_path(&scratch, &service).await;
    println!("\nload average at the end: {}", load_average());
}

/// Check round trips straight to each server (no Envoy), one at a time from one client, the servers
/// taking turns request by request: what each server process adds, apart from Envoy's side.
async fn direct_round_trips(
    servers: &[(&str, u16)],
    request: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
) {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    const PER_SERVER: usize = 5000;
    let mut clients = Vec::new();
    for (_, port) in servers {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        let mut client = AuthorizationClient::new(channel);
        client.check(request.clone()).await.expect("warm-up check");
        clients.push(client);
    }
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::with_capacity(PER_SERVER); servers.len()];
    for _ in 0..PER_SERVER {
        for (client, samples) in clients.iter_mut().zip(&mut latencies) {
            let t = Instant::now();
            client.check(request.clone()).await.expect("check");
            samples.push(t.elapsed());
        }
    }
    println!("\n## Each server alone: Check round trips without Envoy ({PER_SERVER} each, one client, taking turns)\n");
    println!("| server | p50 | p90 | p99 |");
    println!("| --- | --- | --- | --- |");
    for ((name, _), mut samples) in servers.iter().zip(latencies) {
        samples.sort();
        let at = |p: f64| us(baton_test_support::open_loop::percentile(&samples, p));
        println!("| {name} | {} | {} | {} |", at(50.0), at(90.0), at(99.0));
    }
}

/// The length of the `Authorization` Baton sets for `user` at `orders`, from one exchange in process.
async fn delegated_header_len(scratch: &Scratch, token_endpoint: &str, user: &str) -> usize {
    let authz = in_process_authz(scratch, token_endpoint, "");
    match decide(&authz, &check_request("orders.example", user)).await {
        Ok(baton_core::decision::Allow::Delegate { token, .. }) => token.authorization.expose().len(),
        other => panic!("expected a delegation, got {other:?}"),
    }
}

/// Requests per second at `concurrency` workers, each sending as soon as its answer arrives.
async fn closed_loop(envoy: &Envoy, token: &str, concurrency: usize) -> f64 {
    let client = client();
    let url = envoy.url("/bench");
    let auth = bearer(token);
    assert!(get(&client, &url, &auth).await, "a benchmark request failed");
    let measure_from = Instant::now() + WARMUP;
    let deadline = measure_from + MEASURE;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    assert!(get(&client, &url, &auth).await, "a benchmark request failed");
                    if t >= measure_from {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for w in workers {
        done += w.await.expect("worker");
    }
    done as f64 / MEASURE.as_secs_f64()
}

/// The highest rate at which the setup at `url` keeps up in the open loop: every request answered,
/// answers at the rate sent, and the sender's lag p99 under `KEEPS_UP_LAG_P99` (past it, requests
/// wait for a free connection: a queue that grows while the rate lasts). Bisection between 1k req/s
/// and the closed-loop maximum, `PROBE` at each rate tried, to within 5%.
async fn open_loop_max(url: &str, clients: &Arc<Vec<reqwest::Client>>, auth: &str, closed_max: f64) -> f64 {
    println!(
        "\n## Baton's maximum in the open loop ({PROBE:?} per rate tried; keeps up: nothing failed, answered/s at least 97% of the rate, sender lag p99 under {KEEPS_UP_LAG_P99:?})\n"
    );
    println!("| rate tried | answered/s | failed | p50 | p99 | sender lag p99 | keeps up |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let (mut low, mut high) = (1000.0_f64, closed_max.max(1000.0));
    let mut rate = high;
    while high / low > 1.05 {
        let s = summarize(&fixed_rate_for(url, clients, auth, rate, PROBE).await, Duration::ZERO);
        let keeps_up = s.failed == 0 && s.rate >= 0.97 * rate && s.lag_p99 < KEEPS_UP_LAG_P99;
        println!(
            "| {rate:.0} | {:.0} | {} | {} | {} | {} | {} |",
            s.rate,
            s.failed,
            us(s.p50),
            us(s.p99),
            us(s.lag_p99),
            if keeps_up { "yes" } else { "no" }
        );
        if keeps_up {
            low = rate;
        } else {
            high = rate;
        }
        rate = ((low + high) / 2.0).round();
    }
    println!("\nBaton's open-loop maximum: {low:.0} req/s (closed loop: {closed_max:.0}).");
    low
}

/// One `SLICE` of an open loop at `rate`, on one worker per client (each keeps its connection).
async fn fixed_rate(url: &str, clients: &Arc<Vec<reqwest::Client>>, auth: &str, rate: f64) -> Vec<Sample> {
    fixed_rate_for(url, clients, auth, rate, SLICE).await
}

async fn fixed_rate_for(
    url: &str,
    clients: &Arc<Vec<reqwest::Client>>,
    auth: &str,
    rate: f64,
    length: Duration,
) -> Vec<Sample> {
    let count = (rate * length.as_secs_f64()) as u64;
    let (url, clients, auth) = (url.to_owned(), clients.clone(), auth.to_owned());
    open_loop_on(rate, count, clients.len(), move |worker, _| {
        let (client, url, auth) = (clients[worker].clone(), url.clone(), auth.clone());
        async move { get(&client, &url, &auth).await }
    })
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn get(client: &reqwest::Client, url: &str, auth: &str) -> bool {
    let r = client
        .get(url)
        .header("host", "orders.example")
        .header("authorization", auth)
        .send()
        .await;
    r.is_ok_and(|r| r.status() == 200)
}

/// A miss's cost over the exchange it makes: one open loop interleaving, request by request, a raw
/// exchange call, a Check for a user never seen (subject token not verified by Baton), and the same
/// with Baton verifying the subject token (its JWKS already cached), each at `MISS_RATE`.
async fn miss_path(scratch: &Scratch, service: &TokenService) {
    const KINDS: u64 = 3;
    let per_kind = (MISS_RATE * (WARMUP + MEASURE).as_secs_f64()) as usize;
    let plain = in_process_authz(scratch, &service.token_endpoint, "");
    let trusting = format!(
        "trusted_issuers:\n  - issuer: {}\n    audiences: [frontend]\n",
        service.issuer
    );
    let verifying = in_process_authz(scratch, &service.token_endpoint, &trusting);
    // Warm both (connections to the token service, the JWKS).
    let warm = service
        .mint_with(&[("sub", "warm"), ("aud", "frontend"), ("scope", "orders.read")])
        .await;
    for authz in [&plain, &verifying] {
        decide(authz, &check_request("orders.example", &warm))
            .await
            .expect("warm");
    }
    let mut raw_tokens = Vec::with_capacity(per_kind);
    let mut plain_requests = Vec::with_capacity(per_kind);
    let mut verified_requests = Vec::with_capacity(per_kind);
    for i in 0..per_kind {
        raw_tokens.push(service.mint(&format!("raw-{i}"), "orders.read").await);
        let token = service.mint(&format!("miss-{i}"), "orders.read").await;
        plain_requests.push(check_request("orders.example", &token));
        let token = service
            .mint_with(&[
                ("sub", &format!("verified-{i}")),
                ("aud", "frontend"),
                ("scope", "orders.read"),
            ])
            .await;
        verified_requests.push(check_request("orders.example", &token));
    }
    let (raw_tokens, plain_requests, verified_requests) = (
        Arc::new(raw_tokens),
        Arc::new(plain_requests),
        Arc::new(verified_requests),
    );
    let raw_client = reqwest::Client::new();
    let endpoint: Arc<str> = service.token_endpoint.as_str().into();
    let before = service.exchanges().await;
    let load_before = load_average();
    let samples = open_loop(MISS_RATE * KINDS as f64, per_kind as u64 * KINDS, move |i| {
        let (plain, verifying) = (plain.clone(), verifying.clone());
        let (raw_tokens, plain_requests, verified_requests) =
            (raw_tokens.clone(), plain_requests.clone(), verified_requests.clone());
        let (raw_client, endpoint) = (raw_client.clone(), endpoint.clone());
        async move {
            let n = (i / KINDS) as usize;
            match i % KINDS {
                0 => raw_exchange(&raw_client, &endpoint, &raw_tokens[n]).await,
                1 => decide(&plain, &plain_requests[n]).await.is_ok(),
                _ => decide(&verifying, &verified_requests[n]).await.is_ok(),
            }
        }
    })
    .await;
    let exchanges = service.exchanges().await - before;
    let kind = |k: u64| {
        let picked: Vec<baton_test_support::open_loop::Sample> = samples
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 % KINDS == k)
            .map(|(_, s)| *s)
            .collect();
        summarize(&picked, WARMUP)
    };
    let (raw, miss, verified) = (kind(0), kind(1), kind(2));
    println!(
        "\n## Miss path: every Check a new user, {MISS_RATE:.0} req/s of each kind interleaved ({MEASURE:?} after {WARMUP:?}; load average {load_before})\n"
    );
    println!("| request | sent | failed | p50 | p99 | p50 over the raw exchange | p99 over the raw exchange |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, s) in [
        ("raw exchange call to the token service", &raw),
        ("`Authz::check`, miss (subject token not verified by Baton)", &miss),
        ("`Authz::check`, miss, subject token verified (JWKS cached)", &verified),
    ] {
        let over = |a: Duration, b: Duration| {
            if a >= b { us(a - b) } else { format!("-{}", us(b - a)) }
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            s.sent,
            s.failed,
            us(s.p50),
            us(s.p99),
            over(s.p50, raw.p50),
            over(s.p99, raw.p99)
        );
    }
    println!(
        "\nExchanges the token service counted: {exchanges} for {} requests (every one exchanges once). Target: a miss costs under 100 us over the raw exchange at p50.",
        per_kind * KINDS as usize
    );
}
