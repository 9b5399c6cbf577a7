//! Baton: an Envoy external-authorization server that exchanges the caller's user token for one
//! scoped to each outbound destination (OAuth 2.0 Token Exchange, RFC 8693).
//!
//! The data path, one module a step: [`extract`] (Envoy's messages -> [`request`]) -> [`route`] ->
//! [`authz`] (the decision, about a [`decision::Destination`]) -> [`cache`] / [`exchange`] (behind a
//! [`breaker`]; the answer held to what was asked by [`issued`]) -> [`respond`]. [`server`] serves it
//! (ext_authz, and [`ext_proc`]), both through one observe -> decide -> respond -> finish path
//! (`outcome`); [`app`] builds it from [`config`]; [`envoy_config`] writes the Envoy configuration
//! that points at it; [`telemetry`] reports each decision (traces, metrics, audit log).

pub mod actor;
pub mod app;
pub mod authz;
pub mod breaker;
pub mod broker;
pub mod cache;
pub mod canonical;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod discovery;
pub mod envoy_config;
pub mod exchange;
pub mod ext_proc;
pub mod extract;
pub mod inject;
pub mod issued;
pub mod jwt;
mod outcome;
pub mod policy;
pub mod reason;
pub mod reload;
pub mod request;
pub mod respond;
pub mod route;
pub mod secret;
pub mod server;
pub mod sts;
pub mod telemetry;
pub mod tls;
pub mod verify;
