//! The harness of Baton's tests and benchmarks. It starts real processes (the real Envoy, the
//! `baton` binary, a token service: `baton sts`, panva's oidc-provider or idpyoidc) on free loopback
//! ports, plus an in-process upstream that echoes the Authorization it received, and drives load
//! through them. Every process is killed when its handle drops, and everything Baton and Envoy
//! emitted is scanned for the secrets the tests handled (`leaks`). A missing tool is a loud failure
//! that says how to install it, never a skip.
//!
//! The `baton` binary is the caller's: only the root package's tests and benches can name it
//! (`env!("CARGO_BIN_EXE_baton")`), so they pass it to `Scratch::new` (and `Stack::start`), and every
//! process started in that scratch directory runs it. This crate never builds or looks for it.
//!
//! One module per concern: `scratch` (directories, ports, waits); the processes `token_service`,
//! `sidecar` (Baton), `envoy` and `upstream`, and `stack` (all four at once); `config` (the YAML
//! every test writes alike); `tokens` (claims, bearer values, keys, forged tokens); `client` (HTTP
//! through Envoy, scrapes); `broker` (Baton's gRPC broker API and the guarded broker); `leaks`; the
//! load drivers `load` (closed loop) and `open_loop`, and `soak` on top of it, which judge answers
//! with one routine (`check`, private); `report` (what a test measured, also in
//! `target/test-reports/`, which `scripts/test` prints); `k8s` (offline Kubernetes and Istio
//! validation); `prometheus` (promtool and a real Prometheus server) and `promql` (the metrics a
//! query names); `ssf_test_transmitter` (a test Shared Signals transmitter); `relay` (a service in a chain of services, gateway -> A -> B -> C).
//! `revocation_stack`: what the revocation tests share (a pod, the operator's `baton revoke`).
//! `observe`: a span's attributes, and a bounded wait for what a process emitted.

pub mod broker;
mod check;
pub mod client;
pub mod config;
pub mod envoy;
pub mod k8s;
pub mod leaks;
pub mod load;
pub mod observe;
pub mod oidc_session;
pub mod open_loop;
pub mod prometheus;
pub mod promql;
pub mod relay;
pub mod report;
pub mod revocation_stack;
pub mod scratch;
pub mod sidecar;
pub mod soak;
pub mod ssf_test_transmitter;
pub mod stack;
pub mod token_service;
pub mod tokens;
pub mod upstream;

use std::path::{Path, PathBuf};

pub use broker::*;
pub use client::*;
pub use config::*;
pub use envoy::*;
pub use observe::{eventually, span_attr};
pub use relay::Relay;
pub use revocation_stack::{AdminSecret, Front, Operator, Pod};
pub use scratch::*;
pub use sidecar::Baton;
pub use stack::Stack;
pub use token_service::*;
pub use tokens::*;
pub use upstream::{StandInDestination, Upstream};

/// The repository's root (the tests' peers, `.cache` with Envoy and the virtualenv).
pub fn repo() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .expect("crates/test-support is two levels below the repository")
        .to_path_buf()
}
