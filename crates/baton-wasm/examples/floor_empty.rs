//! A measuring stick, not a filter to deploy: a proxy-wasm HTTP filter that does nothing (every
//! callback returns at once). Beside Envoy alone it measures what Envoy and its Wasm VM cost per
//! request before any filter code runs: the VM entries (context create, request and response
//! headers, log, done, delete) and the SDK's dispatch. BENCHMARKS.md, "In-proxy mode".
//!
//! `cargo build --profile wasm -p baton-wasm --target wasm32-wasip1 --example floor_empty`

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Nothing))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {}
