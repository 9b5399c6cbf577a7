//! A measuring stick, not a filter to deploy: a proxy-wasm HTTP filter that does nothing (every
//! callback returns at once). Beside Envoy alone it measures what Envoy and its Wasm VM cost per
//! request before any filter code runs: the VM entries (context create, request and response
//! headers, log, done, delete) and the SDK's dispatch. BENCHMARKS.md, "In-proxy mode".
//!
//! `cargo build --profile wasm -p baton-wasm --target wasm32-wasip1 --example floor_empty`

#[path = "floor/skeleton.rs"]
mod skeleton;

use proxy_wasm::traits::{Context, HttpContext};

#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    skeleton::start::<Nothing>();
}

#[derive(Default)]
struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {}
