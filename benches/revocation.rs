//! Issue 14, measured (see BENCHMARKS.md, "Revocation: from the signal to the first new token"):
//!
//! 1. in process: from a purge (`Authz::revoke` with a destination, `Authz::purge_served`) to the
//!    first decision that no longer returns the old token (a miss: one exchange with `baton sts`);
//! 2. through the real Envoy (ext_proc): from the moment the application receives the destination's
//!    401 `invalid_token` (Baton purged before Envoy passed it on) to the first response carrying a
//!    new token, and from `POST /revoke {"destination"}` to the same;
//! 3. ext_proc with `response_header_mode: SEND` against `SKIP`, on cache hits (the cost of
//!    reading every response's headers for the 401 purge).
//!
//! Nothing here asserts a time; it prints numbers.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

mod common;

use std::time::{Duration, Instant};

use baton_core::decision::Allow;
use baton_core::revocation::Selector;
use baton_test_support::revocation_stack::envoy_sending_responses;
use baton_test_support::*;
use common::*;

const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");
const ADMIN_SECRET: &str = "revocation-bench-admin-secret-0123456789";
const ROUNDS: usize = 30;
const CONCURRENCY: usize = 4;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);

fn main() {
    main_or_floor(run);
}

async fn run() {
    let (scratch, service, user) = start_with_a_user(BATON_BIN, "bench-revocation").await;
    println!(
        "machine: {} cores; {ROUNDS} rounds per signal; SEND/SKIP: {MEASURE:?} after {WARMUP:?}, {CONCURRENCY} connections",
        cores()
    );

    // 1. In process.
    let authz = in_process_authz(&scratch, &service.token_endpoint, "");
    let request = check_request("orders.example", &user);
    let mut by_destination = Vec::new();
    let mut by_served = Vec::new();
    for round in 0..ROUNDS * 2 {
        let Ok(Allow::Delegate {
            token: old,
            key: Some(key),
            ..
        }) = decide(&authz, &request).await
        else {
            panic!("delegated")
        };
        let started = Instant::now();
        if round % 2 == 0 {
            authz
                .revoke("operator", &Selector::Destination { name: "orders".into() })
                .expect("a purge");
        } else {
            assert!(authz.purge_served("orders", &key, &old, None), "the served entry");
        }
        let Ok(Allow::Delegate { token: new, .. }) = decide(&authz, &request).await else {
            panic!("delegated again")
        };
        let elapsed = started.elapsed();
        assert!(!std::sync::Arc::ptr_eq(&old, &new), "a new token");
        if round % 2 == 0 {
            by_destination.push(elapsed);
        } else {
            by_served.push(elapsed);
        }
    }
    println!("\n## In process: the purge, then the first decision without the old token\n");
    println!("| signal | p50 | p90 | max |");
    println!("| --- | --- | --- | --- |");
    row("`revoke` destination (scan of the cache)", &mut by_destination);
    row("`purge_served` (one entry, by key)", &mut by_served);

    // 2. Through the real Envoy, ext_proc, with the destination stand-in.
    let secret = AdminSecret::write(&scratch, ADMIN_SECRET);
    let baton = Baton::start_quiet_with(&scratch, &service.token_endpoint, &secret.section("")).await;
    let destination = StandInDestination::start().await;
    let envoy = envoy_sending_responses(Api::ExtProc, &scratch, baton.grpc, destination.port).await;
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        client
            .get(envoy.url(path))
            .header("host", "orders.example")
            .header("authorization", bearer(&user))
            .send()
    };
    let token_of = |body: bytes::Bytes| {
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        body["authorization"].as_str().map(str::to_owned)
    };
    let mut after_401 = Vec::new();
    let mut after_post = Vec::new();
    for round in 0..ROUNDS * 2 {
        let old = token_of(get("/orders/1").await.expect("get").bytes().await.expect("body"));
        let started = if round % 2 == 0 {
            let refused = get("/refuse").await.expect("get");
            assert_eq!(refused.status(), 401);
            Instant::now()
        } else {
            let started = Instant::now();
            let answer = client
                .post(format!("http://127.0.0.1:{}/revoke", baton.admin))
                .bearer_auth(ADMIN_SECRET)
                .body(r#"{"destination":"orders"}"#)
                .send()
                .await
                .expect("POST /revoke");
            assert_eq!(answer.status(), 200);
            started
        };
        let new = token_of(get("/orders/1").await.expect("get").bytes().await.expect("body"));
        let elapsed = started.elapsed();
        assert_ne!(old, new, "the first request after the signal has a new token");
        if round % 2 == 0 {
            after_401.push(elapsed);
        } else {
            after_post.push(elapsed);
        }
    }
    println!("\n## Through Envoy (ext_proc): from the signal to the first response with a new token\n");
    println!("| signal | p50 | p90 | max |");
    println!("| --- | --- | --- | --- |");
    row(
        "the destination's 401 `invalid_token` (from its arrival at the application)",
        &mut after_401,
    );
    row(
        "`POST /revoke {\"destination\"}` (from the call's start)",
        &mut after_post,
    );
    drop(envoy);

    // 3. ext_proc, response headers SEND against SKIP, cache hits (direct responses).
    println!("\n## ext_proc on cache hits: response headers SEND against SKIP\n");
    println!("| response_header_mode | req/s | p50 | p99 |");
    println!("| --- | --- | --- | --- |");
    for mode in ["SKIP", "SEND", "SKIP", "SEND"] {
        let m = hits(&scratch, baton.grpc, mode, &user).await;
        println!("| {mode} | {:.0} | {} | {} |", m.rate, us(m.p50), us(m.p99));
    }
}

/// Cache hits through Envoy (ext_proc, a direct response) with this `response_header_mode`.
async fn hits(scratch: &Scratch, baton: u16, mode: &str, token: &str) -> Measured {
    let bootstrap = bench_bootstrap(Api::ExtProc, Some(baton));
    assert!(bootstrap.contains("response_header_mode: SKIP"));
    let mut bootstrap = bootstrap.replace("response_header_mode: SKIP", &format!("response_header_mode: {mode}"));
    // SKIP is the baseline without any response headers: the harness lets a delegated stream ask
    // for them (`mode_override`), which this measure turns off.
    if mode == "SKIP" {
        bootstrap = bootstrap.replace("allow_mode_override: true", "allow_mode_override: false");
    }
    let envoy = Envoy::start_with_bootstrap(scratch, &bootstrap).await;
    closed_loop(&envoy, token, CONCURRENCY, WARMUP, MEASURE).await
}

fn row(name: &str, samples: &mut [Duration]) {
    samples.sort();
    println!(
        "| {name} | {} | {} | {} |",
        us(samples[samples.len() / 2]),
        us(samples[samples.len() * 9 / 10]),
        us(samples[samples.len() - 1])
    );
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}
