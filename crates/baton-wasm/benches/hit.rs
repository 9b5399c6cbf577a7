//! The filter's own work per cache hit, natively: `local::decide` on the request and cache a hit
//! in `benches/hop.rs` sees (one destination, a 400-byte bearer token among nine headers), N
//! times. Nothing is timed: run it under callgrind to count the instructions of our code alone,
//! apart from the Wasm VM and Envoy's host calls (BENCHMARKS.md, "In-proxy mode"):
//!
//! ```sh
//! cargo bench -p baton-wasm --bench hit --no-run
//! valgrind --tool=callgrind target/release/deps/hit-<hash> 100000
//! ```

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use baton_decide::request::{HeaderLines, Headers};
use baton_wasm::cache::{Cache, Entry};
use baton_wasm::config::Settings;
use baton_wasm::local::{self, Local, Request};

#[derive(Debug)]
struct Lines(Vec<(String, Option<String>)>);

impl HeaderLines for Lines {
    fn line(&self, index: usize) -> Option<(&str, Option<&str>)> {
        self.0.get(index).map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let settings = Settings::from_json(
        br#"{"sidecar_cluster":"baton","verified":true,
            "destinations":[{"name":"orders","hosts":["orders.example"]}]}"#,
    )
    .expect("settings");
    let token = format!("eyJhbGciOiJFUzI1NiJ9.{}.sig", "a".repeat(373));
    let lines = Lines(
        [
            ("authorization", format!("Bearer {token}")),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) orders-client/1.4".into()),
            ("accept", "application/json".into()),
            ("accept-language", "en-GB,en;q=0.8".into()),
            ("accept-encoding", "gzip, br".into()),
            ("cookie", format!("session={}", "c".repeat(180))),
            ("x-request-id", "3f1c9a5e-8d2b-4c7e-a1f0-6b9d2e4c8a71".into()),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
            ("x-forwarded-proto", "http".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Some(v)))
        .collect(),
    );
    let request = Request {
        authority: "orders.example",
        method: "GET",
        path: "/orders/1",
        headers: Headers::Lines(&lines),
    };
    let mut cache = Cache::new(1024);
    let Local::Miss { params, token, .. } = local::decide(&settings, &cache, &request, 1_000, true) else {
        panic!("an empty cache misses");
    };
    let claims = serde_json::json!({"sub": "alice", "iss": "https://sts.example"});
    let entry = Entry {
        authorization: format!("Bearer {}", "b".repeat(900)).into(),
        expires_at: u64::MAX,
        claims: claims.as_object().cloned(),
        served: None,
    };
    assert!(cache.insert(params, token, entry, 0, 1_000).is_some());
    let mut hits = 0u64;
    for _ in 0..n {
        if let Local::Hit { authorization, .. } =
            local::decide(&settings, &cache, std::hint::black_box(&request), 1_000, true)
        {
            hits += authorization.len() as u64 / 900;
        }
    }
    assert_eq!(hits, n, "every request a hit");
    println!("{n} hits decided");
}
