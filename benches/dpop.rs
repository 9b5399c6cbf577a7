//! DPoP: the cost of a bound hit (issue 16 §1). In process, on one thread, a cache hit of a
//! `binding: bearer` destination against one of a `binding: dpop` destination (which also signs a
//! proof for the request: ES256, a SHA-256 `ath`, base64url, JSON), both from the real
//! oidc-provider (which binds a token when a proof comes with the exchange). Prints p50/p99 and
//! checks/s of the decision (`Authz::decide`) and of the Check handler as served (`server::check`).
//! `--profile-hits N`: N hits of each, each path in a function of its own, for callgrind (see
//! BENCHMARKS.md, "DPoP: the cost of a bound hit"). Nothing here asserts a time.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::authz::Authz;
use baton_test_support::*;
use common::*;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

const BATON_BIN: &str = env!("CARGO_BIN_EXE_baton");
const PROFILE_FLAG: &str = "--profile-hits";

const DPOP_DESTINATION: &str = "  - name: orders-dpop\n    hosts: [orders-dpop.example]\n    audience: https://orders.example\n    scopes: [orders.read]\n    binding: dpop\n";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scratch = Scratch::new(BATON_BIN, "bench-dpop");
    let (service, authz, bearer, bound) = runtime.block_on(async {
        let service = TokenService::start(Peer::OidcProvider, &scratch).await;
        let user = service.mint("alice", "orders.read").await;
        let authz = in_process_authz(&scratch, &service.token_endpoint, DPOP_DESTINATION);
        let bearer = check_request("orders.example", &user);
        let bound = check_request("orders-dpop.example", &user);
        let Ok(baton_core::decision::Allow::Delegate { bound: None, .. }) = decide(&authz, &bearer).await else {
            panic!("a bearer delegation")
        };
        let Ok(baton_core::decision::Allow::Delegate { bound: Some(_), .. }) = decide(&authz, &bound).await else {
            panic!("a DPoP-bound delegation")
        };
        (service, authz, bearer, bound)
    });
    let before = runtime.block_on(service.exchanges());
    if let Some(n) = flag_value(PROFILE_FLAG) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        bearer_decisions(&rt, &authz, &bearer, n);
        dpop_decisions(&rt, &authz, &bound, n);
        bearer_served(&rt, &authz, &bearer, n);
        dpop_served(&rt, &authz, &bound, n);
        println!("{n} hits of each path");
    } else {
        println!("## DPoP: the cost of a bound hit (in process, one thread)\n");
        println!("| path | destination | p50 | p99 | checks/s |\n| --- | --- | --- | --- | --- |");
        for (served, path) in [(false, "Authz::decide"), (true, "server::check")] {
            for (name, request) in [("bearer", &bearer), ("dpop", &bound)] {
                let (p50, p99, per_sec) = hit_latency(&authz, request, served);
                println!(
                    "| {path} | {name} | {:.1} us | {:.1} us | {per_sec:.0} |",
                    p50.as_secs_f64() * 1e6,
                    p99.as_secs_f64() * 1e6
                );
            }
        }
    }
    assert_eq!(runtime.block_on(service.exchanges()), before, "hits only");
}

async fn served(authz: &Authz, request: &CheckRequest) -> bool {
    let metadata = tonic::metadata::MetadataMap::new();
    baton_envoy::server::check(authz, &metadata, request)
        .await
        .status
        .is_some_and(|s| s.code == 0)
}

/// Sequential hits on a current-thread runtime of its own thread: (p50, p99, checks per second).
fn hit_latency(authz: &Arc<Authz>, request: &CheckRequest, serve: bool) -> (Duration, Duration, f64) {
    let (authz, request) = (authz.clone(), request.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let once = || async {
                if serve {
                    served(&authz, &request).await
                } else {
                    decide(&authz, &request).await.is_ok()
                }
            };
            for _ in 0..5_000 {
                assert!(once().await);
            }
            let n = 50_000;
            let mut samples = Vec::with_capacity(n);
            let start = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                assert!(once().await);
                samples.push(t.elapsed());
            }
            let total = start.elapsed();
            samples.sort_unstable();
            (samples[n / 2], samples[n * 99 / 100], n as f64 / total.as_secs_f64())
        })
    })
    .join()
    .expect("thread")
}

#[inline(never)]
fn bearer_decisions(rt: &tokio::runtime::Runtime, authz: &Authz, request: &CheckRequest, n: usize) {
    rt.block_on(async {
        for _ in 0..n {
            assert!(decide(authz, request).await.is_ok());
        }
    });
}

#[inline(never)]
fn dpop_decisions(rt: &tokio::runtime::Runtime, authz: &Authz, request: &CheckRequest, n: usize) {
    rt.block_on(async {
        for _ in 0..n {
            assert!(decide(authz, request).await.is_ok());
        }
    });
}

#[inline(never)]
fn bearer_served(rt: &tokio::runtime::Runtime, authz: &Authz, request: &CheckRequest, n: usize) {
    rt.block_on(async {
        for _ in 0..n {
            assert!(served(authz, request).await);
        }
    });
}

#[inline(never)]
fn dpop_served(rt: &tokio::runtime::Runtime, authz: &Authz, request: &CheckRequest, n: usize) {
    rt.block_on(async {
        for _ in 0..n {
            assert!(served(authz, request).await);
        }
    });
}
