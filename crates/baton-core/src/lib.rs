//! Baton's delegation decision: given an outbound request (`baton_decide::request`), verify the
//! subject token (`verify`), apply the destination's policy, and hand back a token scoped to the
//! destination from the cache (`cache`) or one RFC 8693 exchange (`exchange`, behind a `breaker`,
//! the answer held to what was asked by `issued`); `authz` runs those steps, `telemetry` reports
//! each decision. `config` gathers the decision's configuration sections, each owned by its module.
//!
//! It must never serve anything: no gRPC service, no HTTP server, no Envoy or Kubernetes types.
//! Serving is `baton-envoy`'s; the pure steps (canonical forms, matching, policy, keys, reason
//! codes) are `baton-decide`'s.

pub mod actor;
pub mod authz;
pub mod breaker;
pub mod cache;
pub mod callers;
mod chain;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod deferred;
pub mod destination;
pub mod discovery;
pub mod dpop;
pub mod exchange;
pub mod explain;
pub mod files;
pub mod http;
pub mod issued;
pub mod jobs;
pub mod jwt;
pub mod logout;
pub mod metrics;
pub mod oauth;
pub mod revocation;
pub mod secret;
pub mod ssf;
pub mod telemetry;
pub mod token_service;
pub mod verify;
