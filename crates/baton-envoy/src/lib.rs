//! Baton's Envoy side: reads Envoy's ext_authz CheckRequest and ext_proc ProcessingRequest
//! (`extract`), asks the decision (`baton_core::authz`) through one path (`outcome`), and turns
//! the answer into Envoy's reply in one place (`respond`). It serves those APIs and the broker API
//! (`server`, `ext_proc`, `broker`; ext_authz over HTTP: `authz_http`) on the listener `listen` and `tls` set up, writes the Envoy
//! configuration that points at Baton (`envoy_config`), and composes and reloads the whole
//! (`app`, `reload`, `file`: the configuration file).
//!
//! It must never decide a delegation itself: every allow or deny comes from `baton_core`.

pub mod app;
pub mod authz_http;
mod backchannel;
pub mod broker;
pub mod check_wire;
pub mod dry_run;
pub mod envoy_config;
pub mod ext_proc;
pub mod extract;
pub mod file;
pub mod in_proxy;
pub mod listen;
mod one_write;
mod outcome;
pub mod reads;
mod refused;
pub mod reload;
pub mod respond;
pub mod server;
pub mod ssf;
pub mod tls;
pub mod wasm_plugin;
