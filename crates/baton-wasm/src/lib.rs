//! Baton's in-proxy mode: `baton.wasm`, a proxy-wasm HTTP filter that Envoy runs in each worker.
//! Per outbound request it runs baton-decide's own code, the same functions the sidecar's
//! `baton_core::authz` calls (canonical authority, destination matching, bearer token rules,
//! policy, the subject token: `local`), and on a hit in its bounded per-worker cache (`cache`) rewrites or
//! strips `Authorization` with no gRPC call. On a miss it asks the Baton sidecar
//! (`baton.v1.InProxy/Decide`, `messages`), which verifies, exchanges and audits as Check does; it
//! polls `InProxy/Epoch` and drops its cache when a revocation (or reload) happened (`filter`),
//! and serves nothing cached while the epoch says its plugin configuration is not the one Baton's
//! running file generates (`baton_decide::key::plugin_digest`).
//! A destination's 401 `invalid_token` for a delegation it served drops that entry and has the
//! sidecar purge its own (`purge`, `InProxy/Purge`).
//!
//! It must never hold Baton's client credentials, serve a token to a host no destination claims,
//! serve a cached token without having heard the sidecar's epoch within `epoch_tick + timeout`,
//! or log a token (a fingerprint at most). Anything it cannot decide goes to the sidecar; a
//! sidecar it cannot reach is a denial (`sidecar_unavailable`).

pub mod cache;
pub mod config;
pub mod local;
pub mod messages;
pub mod purge;

#[cfg(target_arch = "wasm32")]
mod filter;
