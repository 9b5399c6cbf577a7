//! The response path of a request the filter delegated (a hit or a miss): when the destination
//! refuses the token (`crate::purge::says_invalid_token`), this worker's entry for it is dropped at
//! once and the sidecar is told (`InProxy/Purge`, naming its entry by key and fingerprint), which
//! purges its own entry as ext_proc's purge does and bumps its revocation generation, so the other
//! workers drop theirs within `epoch_tick` + `timeout`. The response waits for the Purge (bounded by
//! `timeout`), so the application's next request already finds nothing cached; a Purge that fails
//! is logged and the response goes on. It never logs a token.

use prost::Message as _;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use super::Http;
use crate::cache::Held;
use crate::messages::{self, PurgeReply, PurgeRequest};
use crate::purge::{self, Handle};

/// The delegation a request went out with, until its response is seen.
#[derive(Debug)]
pub(super) struct Served {
    /// The filter's entry that served it (`None`: not kept, e.g. a DPoP-bound one).
    pub(super) held: Option<Held>,
    /// The sidecar's name for it, when the Decide reply gave one (a hit finds it in the entry).
    pub(super) handle: Option<Handle>,
}

fn warn(message: &str) {
    proxy_wasm::hostcalls::log(LogLevel::Warn, message).ok();
}

impl Http {
    /// `on_http_response_headers`: a refused delegation is purged here and at the sidecar.
    pub(super) fn on_response(&mut self) -> Action {
        let Some(served) = self.served.take() else {
            return Action::Continue;
        };
        // A refusal carries a challenge. Most responses have none, and asking for an absent header
        // copies nothing into the module (a third of what reading `:status` cost on every
        // delegated response); with one, every line is read and judged whole (`:status` too).
        if self.get_http_response_header("www-authenticate").is_none()
            || !purge::says_invalid_token(&self.get_http_response_headers_bytes())
        {
            return Action::Continue;
        }
        let (held, timeout) = {
            let mut shared = self.shared.borrow_mut();
            let held = served.held.as_ref().and_then(|held| shared.cache.forget(held));
            (held, shared.settings.timeout)
        };
        self.set_property(vec!["baton.purge"], Some(b"invalid_token"));
        let Some(handle) = served.handle.or(held) else {
            warn(
                "baton: the destination refused the delegated token (invalid_token): dropped here, the sidecar's entry is not known",
            );
            return Action::Continue;
        };
        let message = PurgeRequest {
            served: handle.served,
            issued: handle.issued,
        }
        .encode_to_vec();
        match self.dispatch_grpc_call(
            &self.grpc_service,
            messages::SERVICE,
            messages::PURGE,
            Vec::new(),
            Some(&message),
            timeout,
        ) {
            Ok(_) => {
                self.purging = true;
                Action::Pause
            }
            Err(status) => {
                warn(&format!("baton: the purge could not be sent ({status:?})"));
                Action::Continue
            }
        }
    }

    /// The sidecar's answer to a Purge: its new generation drops this worker's cache, and the
    /// response goes on whatever the answer.
    pub(super) fn purge_answered(&mut self, status_code: u32, size: usize) {
        if !std::mem::take(&mut self.purging) {
            return;
        }
        if status_code != 0 || size > messages::MAX_REPLY_BYTES {
            warn(&format!("baton: the purge failed (gRPC status {status_code})"));
        } else {
            let body = self.get_grpc_call_response_body(0, size).unwrap_or_default();
            match PurgeReply::decode(body.as_slice()) {
                Ok(reply) => self.shared.borrow_mut().cache.epoch(reply.generation),
                Err(_) => warn("baton: the sidecar's purge reply does not decode"),
            }
        }
        self.resume_http_response();
    }
}
