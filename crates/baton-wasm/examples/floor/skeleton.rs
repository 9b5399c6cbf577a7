//! What the measuring sticks share (not a filter to deploy): the module's entry point and a root
//! context that gives each request a `F::default()`. BENCHMARKS.md, "In-proxy mode".

use std::marker::PhantomData;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

/// Call from the example's `_initialize`.
pub(crate) fn start<F: HttpContext + Default + 'static>() {
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root::<F>(PhantomData)));
}

struct Root<F>(PhantomData<F>);

impl<F> Context for Root<F> {}

impl<F: HttpContext + Default + 'static> RootContext for Root<F> {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(F::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
