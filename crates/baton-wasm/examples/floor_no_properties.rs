//! A measuring stick, not a filter to deploy: `floor_host_calls` without its `set_property` calls.
//! Beside `floor_host_calls` it measures what the filter-state properties the access log reads
//! cost per hit. BENCHMARKS.md, "In-proxy mode".
//!
//! `cargo build --profile wasm -p baton-wasm --target wasm32-wasip1 --example floor_no_properties`

#[path = "floor/host_calls.rs"]
mod host_calls;
#[path = "floor/skeleton.rs"]
mod skeleton;

#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    skeleton::start::<host_calls::HostCalls<{ host_calls::ALL & !host_calls::PROPERTIES }>>();
}
