//! A short soak through the real Envoy: tokens that live 10 s, requested at a fixed rate for about
//! 35 s, so each user's token for each destination expires and is refreshed several times. Asserts
//! what refresh ahead promises: no wrong answer, no request that waited on an exchange once every
//! key was warm, Baton's RSS flat. The longer run is `cargo bench --bench soak` (BENCHMARKS.md).

#![allow(clippy::print_stdout, reason = "the soak prints its figures")]

use std::time::Duration;

use baton_test_support::open_loop::mib;
use baton_test_support::soak::{SoakPlan, soak};

/// The binary under test, passed to the harness (only this package can name it).
const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");

/// Baton's RSS may grow by this much from the end of warm-up to the end of the run: room for the
/// allocator settling, far below what keeping every refreshed token (tens of MiB here) would take.
const RSS_GROWTH_BOUND: u64 = 8 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_tokens_refresh_ahead_under_steady_load() {
    let report = soak(SoakPlan {
        baton: BATON_BIN,
        duration: Duration::from_secs(35),
        rate: 150.0,
        users: 15,
        token_lifetime: "10s",
        expiry_margin: "1s",
        warmup: Duration::from_secs(3),
        rss_every: Duration::from_secs(1),
    })
    .await;
    // On stderr and in target/test-reports/soak.txt, which scripts/test prints.
    for line in report.lines() {
        baton_test_support::report::line(&line);
    }
    assert_eq!(report.failed, 0, "every request answered 200");
    assert_eq!(report.wrong, 0, "every upstream token for its user and destination");
    assert_eq!(report.right, report.sent);
    assert_eq!(
        report.waited_in_warmup, report.keys as u64,
        "one exchange per key in warm-up, every other request a hit"
    );
    assert_eq!(
        report.waited_after_warmup, 0,
        "after warm-up no request waited on an exchange: refresh ahead renewed every token in time"
    );
    let (low, high) = report.expected_exchanges();
    assert!(
        (low..=high).contains(&report.exchanges_after_warmup),
        "exchanges after warm-up {} outside {low}..={high}",
        report.exchanges_after_warmup
    );
    let (first, last, max) = report.rss_first_last_max();
    assert!(
        max <= first + RSS_GROWTH_BOUND && last <= first + RSS_GROWTH_BOUND,
        "Baton's RSS grew from {} to {} (max {}), more than {}",
        mib(first),
        mib(last),
        mib(max),
        mib(RSS_GROWTH_BOUND)
    );
}
