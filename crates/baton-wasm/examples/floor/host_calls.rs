//! The host calls baton.wasm makes on a cache hit, with none of its work between them (not a
//! filter to deploy). `CALLS` says which it makes (bits: [`HEADERS`], [`CLOCK`], [`SET`],
//! [`PROPERTIES`], [`CHALLENGE`]); each measuring stick is one choice of them.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

/// Read every request header (one call: the whole map, copied into the module).
pub(crate) const HEADERS: u8 = 1;
/// Read the clock.
pub(crate) const CLOCK: u8 = 2;
/// Set `Authorization` (a fixed value).
pub(crate) const SET: u8 = 4;
/// Set the two filter-state properties the access log reads.
pub(crate) const PROPERTIES: u8 = 8;
/// Look for the response's `WWW-Authenticate` (the 401 purge's first check; these answers have none).
pub(crate) const CHALLENGE: u8 = 16;
/// All a hit makes.
#[allow(dead_code, reason = "not every measuring stick makes them all")]
pub(crate) const ALL: u8 = HEADERS | CLOCK | SET | PROPERTIES | CHALLENGE;

#[derive(Default)]
pub(crate) struct HostCalls<const CALLS: u8>;

impl<const CALLS: u8> Context for HostCalls<CALLS> {}

impl<const CALLS: u8> HttpContext for HostCalls<CALLS> {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // The branches below are never taken; they keep each read.
        if CALLS & HEADERS != 0 && self.get_http_request_headers_bytes().is_empty() {
            return Action::Pause;
        }
        if CALLS & CLOCK != 0 && self.get_current_time().elapsed().is_err() {
            return Action::Pause;
        }
        if CALLS & SET != 0 {
            self.set_http_request_header("authorization", Some("Bearer a-fixed-token-for-measuring-only"));
        }
        if CALLS & PROPERTIES != 0 {
            self.set_property(vec!["baton.decision"], Some(b"hit"));
            self.set_property(vec!["baton.destination"], Some(b"orders"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if CALLS & CHALLENGE != 0 && self.get_http_response_header("www-authenticate").is_some() {
            return Action::Pause;
        }
        Action::Continue
    }
}
