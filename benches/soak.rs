//! The soak (BENCHMARKS.md): the real Envoy, Baton and `baton sts` issuing tokens that live 10 s, at a
//! fixed rate for `SOAK_SECS` (default 180) over 50 users x 2 destinations, so every token expires and
//! is refreshed ahead many times. Reports wrong answers, requests that waited on an exchange after
//! warm-up, exchanges made against those expected, and Baton's RSS over time. `SOAK_RATE` sets the
//! request rate (default 300 per second).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::Duration;

use baton_test_support::open_loop::mib;
use baton_test_support::soak::{SoakPlan, soak};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

fn main() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let rate: f64 = std::env::var("SOAK_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300.0);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let report = runtime.block_on(soak(SoakPlan {
        baton: BATON_BIN,
        duration: Duration::from_secs(secs),
        rate,
        users: 50,
        token_lifetime: "10s",
        expiry_margin: "1s",
        warmup: Duration::from_secs(5),
        rss_every: Duration::from_secs(5),
    }));
    report.print();
    let (first, last, max) = report.rss_first_last_max();
    println!(
        "RSS samples (MiB): {}",
        report
            .rss
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / (1024.0 * 1024.0)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "verdict: wrong {} (target 0) · waited after warm-up {} (target 0) · RSS first {} last {} max {}",
        report.wrong,
        report.waited_after_warmup,
        mib(first),
        mib(last),
        mib(max)
    );
}
