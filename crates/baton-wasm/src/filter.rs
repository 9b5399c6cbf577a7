//! The proxy-wasm glue: Envoy's callbacks to `local`'s verdicts, `cache`'s entries and the
//! sidecar's `InProxy` answers. One root context per worker VM owns the settings, the cache and
//! the epoch poll (`on_tick`); an HTTP context per request. It logs reasons and destination names,
//! never a token, and answers every failure to reach or understand the sidecar with
//! `sidecar_unavailable` (503).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use prost::Message as _;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use baton_decide::reason::{Class, Denial, Reason};
use baton_decide::request::{HeaderLines, Headers};

use crate::cache::{self, Cache, Entry, Held};
use crate::config::Settings;
use crate::local::{self, Local, Request};
use crate::messages::{self, DecideReply, DecideRequest, EpochReply, EpochRequest, action};
use crate::purge::Handle;
use response::Served;

/// The response path: a destination's `invalid_token` (`crate::purge`).
mod response;

/// The module's entry point, as `proxy_wasm::main!` writes it (inlined: the workspace forbids
/// unsafe code, and the attribute is the one exception, here).
#[allow(unsafe_code, unreachable_pub)]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}

/// What the root context shares with the request contexts of its worker.
#[derive(Debug)]
struct Shared {
    settings: Rc<Settings>,
    cache: Cache,
    /// When the sidecar last answered an Epoch with this configuration's digest (ms since the Unix
    /// epoch): an answer with another digest is not heard (the filter's configuration is stale).
    epoch_heard_ms: Option<u128>,
    /// `baton_decide::key::plugin_digest` of this filter's plugin configuration.
    digest: baton_decide::key::Key,
    /// Whether the last Epoch said this configuration is stale (logged once per change).
    stale: bool,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
    /// Shared with every request context (a reference count per request, not a copy).
    grpc_service: Rc<str>,
}

fn now_ms(context: &dyn Context) -> u128 {
    context
        .get_current_time()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, _: u32, status_code: u32, size: usize) {
        let Some(shared) = &self.shared else { return };
        if status_code != 0 || size > messages::MAX_REPLY_BYTES {
            proxy_wasm::hostcalls::log(
                LogLevel::Warn,
                &format!("baton: epoch poll failed (gRPC status {status_code})"),
            )
            .ok();
            return;
        }
        let body = self.get_grpc_call_response_body(0, size).unwrap_or_default();
        match EpochReply::decode(body.as_slice()) {
            Ok(reply) => {
                let now = now_ms(self);
                let mut shared = shared.borrow_mut();
                shared.cache.epoch(reply.generation);
                let stale = reply.config != shared.digest;
                if stale && !shared.stale {
                    proxy_wasm::hostcalls::log(
                        LogLevel::Warn,
                        "baton: this plugin configuration is not the one Baton's file generates (baton.yaml changed): nothing is served from the cache until it is regenerated",
                    )
                    .ok();
                }
                shared.stale = stale;
                if !stale {
                    shared.epoch_heard_ms = Some(now);
                }
            }
            Err(_) => {
                proxy_wasm::hostcalls::log(LogLevel::Warn, "baton: the sidecar's epoch reply does not decode").ok();
            }
        }
    }
}

impl Root {
    fn poll_epoch(&self) {
        let Some(shared) = &self.shared else { return };
        let timeout = shared.borrow().settings.timeout;
        let message = EpochRequest {}.encode_to_vec();
        if self
            .dispatch_grpc_call(
                &self.grpc_service,
                messages::SERVICE,
                messages::EPOCH,
                Vec::new(),
                Some(&message),
                timeout,
            )
            .is_err()
        {
            proxy_wasm::hostcalls::log(LogLevel::Warn, "baton: the epoch poll could not be sent").ok();
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some(config) = self.get_plugin_configuration() else {
            proxy_wasm::hostcalls::log(LogLevel::Error, "baton: no plugin configuration").ok();
            return false;
        };
        let settings = match Settings::from_json(&config) {
            Ok(settings) => settings,
            Err(e) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("baton: {e}")).ok();
                return false;
            }
        };
        // It parsed as Settings, so it is JSON.
        let digest =
            serde_json::from_slice(&config).map_or([0; 32], |plugin| baton_decide::key::plugin_digest(&plugin));
        self.grpc_service = messages::grpc_service(&settings.sidecar_cluster).into();
        self.set_tick_period(settings.epoch_tick);
        self.shared = Some(Rc::new(RefCell::new(Shared {
            cache: Cache::new(settings.max_entries),
            settings: Rc::new(settings),
            epoch_heard_ms: None,
            digest,
            stale: false,
        })));
        true
    }

    fn on_tick(&mut self) {
        self.poll_epoch();
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone()?,
            grpc_service: self.grpc_service.clone(),
            pending: None,
            served: None,
            purging: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Request headers read in place; a value that is not UTF-8 is `None` (not text).
#[derive(Debug)]
struct Lines(Vec<(String, Option<String>)>);

impl HeaderLines for Lines {
    fn line(&self, index: usize) -> Option<(&str, Option<&str>)> {
        self.0.get(index).map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

struct Http {
    shared: Rc<RefCell<Shared>>,
    grpc_service: Rc<str>,
    /// A Decide in flight: the destination and subject token its answer is kept for.
    pending: Option<(cache::Destination, Rc<str>)>,
    /// The delegation this request went out with, until its response is seen (`response`).
    served: Option<Served>,
    /// A Purge in flight: the response waits for it.
    purging: bool,
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, _: u32, status_code: u32, size: usize) {
        let Some(pending) = self.pending.take() else {
            return self.purge_answered(status_code, size);
        };
        if status_code != 0 {
            return self.unavailable(&format!("the sidecar answered gRPC status {status_code}"));
        }
        if size > messages::MAX_REPLY_BYTES {
            return self.unavailable("the sidecar's answer is too large");
        }
        let body = self.get_grpc_call_response_body(0, size).unwrap_or_default();
        let Ok(reply) = DecideReply::decode(body.as_slice()) else {
            return self.unavailable("the sidecar's answer does not decode");
        };
        self.apply(pending, reply);
    }
}

impl Http {
    fn mark(&self, decision: &str, destination: &str) {
        self.set_property(vec!["baton.decision"], Some(decision.as_bytes()));
        if !destination.is_empty() {
            self.set_property(vec!["baton.destination"], Some(destination.as_bytes()));
        }
    }

    fn unavailable(&self, why: &str) {
        proxy_wasm::hostcalls::log(LogLevel::Warn, &format!("baton: sidecar_unavailable: {why}")).ok();
        self.deny(&Denial::new(
            Reason::SidecarUnavailable,
            "the Baton sidecar gave no usable answer",
        ));
    }

    /// The denial ext_authz would send: status, JSON body, an RFC 6750 challenge on a 401.
    fn deny(&self, denial: &Denial) {
        let reason = denial.reason.as_str();
        self.mark("deny", "");
        self.set_property(vec!["baton.reason"], Some(reason.as_bytes()));
        let body = serde_json::json!({ "error": reason, "error_description": denial.description }).to_string();
        let challenge;
        let mut headers = vec![("content-type", "application/json")];
        if denial.reason.class() == Class::Unauthenticated {
            challenge = match denial.reason {
                Reason::MissingToken => "Bearer".to_owned(),
                other => format!("Bearer error=\"invalid_token\", error_description=\"{other}\""),
            };
            headers.push(("www-authenticate", &challenge));
        }
        self.send_http_response(
            u32::from(denial.reason.class().http_status()),
            headers,
            Some(body.as_bytes()),
        );
    }

    fn apply(&mut self, (params, token): (cache::Destination, Rc<str>), reply: DecideReply) {
        match reply.action {
            action::DELEGATE => {
                // One header value: visible ASCII and spaces, bounded (a token, not a header block).
                let a = &reply.authorization;
                if a.is_empty() || a.len() > 32 * 1024 || !a.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                    return self.unavailable("the sidecar's authorization value is malformed");
                }
                self.set_http_request_header("authorization", Some(a));
                // A DPoP-bound delegation's proof (never cached); else a caller's own proof is
                // for its own token, never the one set here: removed, as ext_authz does.
                let proof = reply.headers.iter().find(|h| h.key == "dpop").map(|h| h.value.as_str());
                self.set_http_request_header("dpop", proof);
                let held = if proof.is_none() {
                    self.remember(params, token, &reply)
                } else {
                    None
                };
                self.served = Some(Served {
                    held,
                    handle: Handle::from_reply(&reply.served, &reply.issued),
                });
                self.mark("miss", &reply.destination);
                self.resume_http_request();
            }
            action::STRIP => {
                self.set_http_request_header("authorization", None);
                self.mark("strip", "");
                self.resume_http_request();
            }
            action::PASSTHROUGH => {
                self.mark("passthrough", "");
                self.resume_http_request();
            }
            action::DENY if (400..=599).contains(&reply.status) => {
                self.mark("deny", &reply.destination);
                self.set_property(vec!["baton.reason"], Some(reply.reason.as_bytes()));
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .filter(|h| matches!(h.key.as_str(), "content-type" | "www-authenticate" | "retry-after"))
                    .map(|h| (h.key.as_str(), h.value.as_str()))
                    .collect();
                self.send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
            }
            _ => self.unavailable("the sidecar's answer has no known action"),
        }
    }

    /// Keep a delegation the sidecar allowed to be kept, with the claims the policy needs:
    /// where it is held, if it is.
    fn remember(&self, params: cache::Destination, token: Rc<str>, reply: &DecideReply) -> Option<Held> {
        let now = (now_ms(self) / 1000) as u64;
        if reply.expires_at <= now {
            return None;
        }
        let claims = if reply.claims.is_empty() {
            None
        } else {
            match serde_json::from_str::<serde_json::Value>(&reply.claims) {
                Ok(serde_json::Value::Object(map)) => Some(map),
                // Claims it cannot read: not cached (a later request could not be judged alike).
                _ => return None,
            }
        };
        let entry = Entry {
            authorization: reply.authorization.as_str().into(),
            expires_at: reply.expires_at,
            claims,
            served: Handle::from_reply(&reply.served, &reply.issued),
        };
        self.shared
            .borrow_mut()
            .cache
            .insert(params, token, entry, reply.generation, now)
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let mut authority = String::new();
        let mut method = String::new();
        let mut path = String::new();
        // Whether the caller sent a DPoP proof: only then is there one to remove on a hit.
        let mut dpop = false;
        let headers = self.get_http_request_headers_bytes();
        let mut lines = Vec::with_capacity(headers.len());
        for (key, value) in headers {
            let value = String::from_utf8(value).ok();
            match key.as_str() {
                ":authority" => authority = value.unwrap_or_default(),
                ":method" => method = value.unwrap_or_default(),
                ":path" => path = value.unwrap_or_default(),
                k if k.starts_with(':') => {}
                k => {
                    dpop |= k == "dpop";
                    lines.push((key, value));
                }
            }
        }
        let lines = Lines(lines);
        let request = Request {
            authority: &authority,
            method: &method,
            path: &path,
            headers: Headers::Lines(&lines),
        };
        let now_ms = now_ms(self);
        let verdict = {
            let shared = self.shared.borrow();
            let settings = &shared.settings;
            let bound = (settings.epoch_tick + settings.timeout).as_millis();
            let fresh = shared.epoch_heard_ms.is_some_and(|at| now_ms < at + bound);
            local::decide(settings, &shared.cache, &request, (now_ms / 1000) as u64, fresh)
        };
        match verdict {
            Local::Hit {
                destination,
                authorization,
                held,
            } => {
                self.set_http_request_header("authorization", Some(&authorization));
                // A caller's own proof is for its own token, never the one set here: removed, as
                // ext_authz does (one host call saved when there is none).
                if dpop {
                    self.set_http_request_header("dpop", None);
                }
                self.mark("hit", &destination);
                self.served = Some(Served {
                    held: Some(held),
                    handle: None,
                });
                Action::Continue
            }
            Local::Strip => {
                self.set_http_request_header("authorization", None);
                self.mark("strip", "");
                Action::Continue
            }
            Local::Passthrough => {
                self.mark("passthrough", "");
                Action::Continue
            }
            Local::Deny(denial) => {
                self.deny(&denial);
                Action::Pause
            }
            Local::Miss { params, token, .. } => {
                let message = DecideRequest {
                    authority,
                    method,
                    path,
                    headers: lines
                        .0
                        .into_iter()
                        .filter_map(|(key, value)| Some(messages::Header { key, value: value? }))
                        .collect(),
                }
                .encode_to_vec();
                let timeout: Duration = self.shared.borrow().settings.timeout;
                match self.dispatch_grpc_call(
                    &self.grpc_service,
                    messages::SERVICE,
                    messages::DECIDE,
                    Vec::new(),
                    Some(&message),
                    timeout,
                ) {
                    Ok(_) => {
                        self.pending = Some((params, token));
                        Action::Pause
                    }
                    Err(status) => {
                        self.unavailable(&format!("the call could not be sent ({status:?})"));
                        Action::Pause
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.on_response()
    }
}
