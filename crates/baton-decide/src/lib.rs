//! The pure part of Baton's decision: what a request is, once canonical (`canonical`, `request`),
//! which destination it is for (`route`), whether policy lets it through (`policy`), the cache key
//! it maps to (`key`), and the stable reason code of a refusal (`reason`), with the configuration
//! helpers they share (`settings`); which actors a delegation chain may hold (`chain`); the
//! `WWW-Authenticate` challenges a destination answers with (`challenge`).
//!
//! It must never do I/O, open a socket, read a clock or a file, or depend on an async runtime: the
//! same code runs in the sidecar and compiles for `wasm32-wasip1` (an Envoy Wasm filter).
//! `scripts/test` builds it for that target.

pub mod canonical;
pub mod chain;
pub mod challenge;
pub mod key;
pub mod policy;
pub mod reason;
pub mod request;
pub mod route;
pub mod settings;
