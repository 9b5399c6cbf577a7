//! A measuring stick, not a filter to deploy: a proxy-wasm HTTP filter that makes the host calls
//! baton.wasm makes on a cache hit with none of its work between them: read every request header,
//! read the clock, set `Authorization` (a fixed value), set the filter-state properties the access
//! log reads, and look for the response's `WWW-Authenticate` (the 401 purge's check). Beside
//! `floor_empty` it measures what those host calls cost; beside baton.wasm, what baton.wasm's own
//! code costs. `floor_no_properties` is the same without the properties. BENCHMARKS.md, "In-proxy
//! mode".
//!
//! `cargo build --profile wasm -p baton-wasm --target wasm32-wasip1 --example floor_host_calls`

#[path = "floor/host_calls.rs"]
mod host_calls;
#[path = "floor/skeleton.rs"]
mod skeleton;

#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    skeleton::start::<host_calls::HostCalls<{ host_calls::ALL }>>();
}
