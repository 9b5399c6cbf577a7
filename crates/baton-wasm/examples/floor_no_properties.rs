//! A measuring stick, not a filter to deploy: `floor_host_calls` without its two `set_property`
//! calls (read every request header, read the clock, set `Authorization`). Beside
//! `floor_host_calls` it measures what the filter-state properties the access log reads cost per
//! hit. BENCHMARKS.md, "In-proxy mode".
//!
//! `cargo build --profile wasm -p baton-wasm --target wasm32-wasip1 --example floor_no_properties`

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

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
        Some(Box::new(HostCalls))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HostCalls;

impl Context for HostCalls {}

impl HttpContext for HostCalls {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let headers = self.get_http_request_headers_bytes();
        let now = self.get_current_time();
        if headers.is_empty() || now.elapsed().is_err() {
            // Never taken; keeps both reads.
            return Action::Pause;
        }
        self.set_http_request_header("authorization", Some("Bearer a-fixed-token-for-measuring-only"));
        Action::Continue
    }
}
