//! In-proxy mode's sidecar half: `baton.v1.InProxy`, asked by Baton's proxy-wasm filter
//! (`baton.wasm`) inside Envoy. `Decide` is a miss of the filter's cache: the request goes the same
//! way as a Check (`outcome::decide`: verify, policy, cache / exchange with coalescing and the
//! breaker, audit as `api: in_proxy`), and the answer carries what the filter needs to serve the
//! next requests itself: the header value, until when, the verified claims its per-hit policy
//! judges with, and the revocation generation. `Epoch` answers that generation, polled, with the
//! digest of the plugin configuration the running file generates (a filter whose own differs was
//! generated from another file, and serves nothing cached).
//! `Purge` is the filter's report of a destination's 401 `invalid_token` for a delegation it served:
//! the entry named by its key and the issued token's fingerprint (never a token) is purged with
//! `Authz::purge_served`, as ext_proc's purge does. A forged Purge can only make Baton exchange
//! again: it names an entry by a digest and a fingerprint nobody outside Envoy and Baton sees.
//!
//! It never decides anything `baton_core` did not, never logs a token, and answers a refusal as a
//! reply (DENY with the status, reason and body ext_authz would send), never as a gRPC error.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::broker::pb::decide_reply::Action;
use crate::broker::pb::in_proxy_server::{InProxy, InProxyServer};
use crate::broker::pb::{DecideReply, DecideRequest, EpochReply, EpochRequest, Header, PurgeReply, PurgeRequest};
use crate::outcome;
use crate::respond;
use baton_core::authz::{Authz, Current};
use baton_core::decision::Allow;
use baton_core::telemetry::Api;
use baton_decide::reason::Denial;
use baton_decide::request::{self, HeaderLines, Headers, Outbound};

/// A DecideRequest larger than this is refused by the gRPC layer: Envoy's own request-header bound
/// is 60 KiB, and the filter sends the headers and nothing else.
pub const MAX_REQUEST_BYTES: usize = 96 * 1024;
/// Verified claims larger than this are not sent: the filter then does not cache the answer (it
/// could not judge a later request with the same claims as the sidecar).
pub const MAX_CLAIMS_BYTES: usize = 8 * 1024;

/// The running file's `wasm_plugin::decision_digest`, swapped on every reload.
pub type PluginDigest = Arc<arc_swap::ArcSwap<Vec<u8>>>;

/// The InProxy service, ready to add to a tonic server.
pub fn service(authz: Current, plugin: PluginDigest) -> InProxyServer<InProxyService> {
    InProxyServer::new(InProxyService { authz, plugin }).max_decoding_message_size(MAX_REQUEST_BYTES)
}

#[derive(Debug)]
pub struct InProxyService {
    authz: Current,
    plugin: PluginDigest,
}

#[tonic::async_trait]
impl InProxy for InProxyService {
    async fn decide(&self, request: Request<DecideRequest>) -> Result<Response<DecideReply>, Status> {
        let authz = self.authz.load_full();
        Ok(Response::new(
            decide(&authz, request.metadata(), request.get_ref()).await,
        ))
    }

    async fn epoch(&self, _: Request<EpochRequest>) -> Result<Response<EpochReply>, Status> {
        Ok(Response::new(EpochReply {
            generation: self.authz.load().revocations().generation(),
            config: self.plugin.load().as_ref().clone(),
        }))
    }

    async fn purge(&self, request: Request<PurgeRequest>) -> Result<Response<PurgeReply>, Status> {
        let authz = self.authz.load_full();
        let purged = purge(&authz, request.metadata(), request.get_ref());
        Ok(Response::new(PurgeReply {
            purged,
            generation: authz.revocations().generation(),
        }))
    }
}

/// One Purge: the entry `served` names is purged if it still holds the token `issued` is the
/// fingerprint of (a newer token under the same key is left alone, as ext_proc's purge does).
/// Anything else (a key of the wrong length, no entry, another token) purges nothing.
pub fn purge(authz: &Authz, metadata: &tonic::metadata::MetadataMap, request: &PurgeRequest) -> bool {
    let Ok(key) = baton_decide::key::Key::try_from(request.served.as_slice()) else {
        return false;
    };
    let Some(token) = authz.cache().held(&key) else {
        return false;
    };
    if request.issued.is_empty() || token.fingerprint() != request.issued {
        return false;
    }
    let destination = token.destination().unwrap_or_default().to_owned();
    authz.purge_served(&destination, &key, &token, outcome::trace_context(metadata))
}

/// The filter's headers, read in place.
#[derive(Debug)]
struct Lines<'a>(&'a [Header]);

impl HeaderLines for Lines<'_> {
    fn line(&self, index: usize) -> Option<(&str, Option<&str>)> {
        self.0.get(index).map(|h| (h.key.as_str(), Some(h.value.as_str())))
    }
}

/// One Decide: the decision Check would make for this request, answered for the filter.
pub async fn decide(
    authz: &Arc<Authz>,
    metadata: &tonic::metadata::MetadataMap,
    request: &DecideRequest,
) -> DecideReply {
    // Generation first: an answer made after a revocation is never tagged with a later one.
    let generation = authz.revocations().generation();
    let lines = Lines(&request.headers);
    let headers = Headers::Lines(&lines);
    let outbound = headers.one("authorization").map(|authorization| Outbound {
        route_destination: None,
        authority: &request.authority,
        method: &request.method,
        path: &request.path,
        source_principal: None,
        authorization,
        headers,
    });
    let outcome = outcome::decide(authz, Api::InProxy, metadata, outbound.as_ref(), answer).await;
    let mut reply = outcome.reply;
    reply.generation = generation;
    if let (Some(token), Ok(outbound)) = (outcome.subject_expires, &outbound) {
        reply.expires_at = token;
        reply.claims = claims(authz, outbound).await.unwrap_or_default();
        if reply.claims.len() > MAX_CLAIMS_BYTES {
            // Too large to carry: served this once, cached nowhere.
            reply.claims.clear();
            reply.expires_at = 0;
        }
    }
    reply
}

/// `answer`'s result: the reply, and for a delegation the entry's expiry (filled in by `decide`,
/// which may still refuse to let it be cached).
#[derive(Debug)]
struct Answered {
    reply: DecideReply,
    subject_expires: Option<u64>,
}

/// The decision as the filter reads it (`outcome::decide` passes the Envoy dynamic metadata, which
/// the filter does not use: its hits are in Envoy's access log).
fn answer(outcome: &Result<Allow, Denial>, _: Option<envoy_types::pb::google::protobuf::Struct>) -> Answered {
    let mut reply = DecideReply::default();
    let mut subject_expires = None;
    match outcome {
        Ok(Allow::Delegate {
            destination,
            token,
            key,
            bound,
            ..
        }) => {
            reply.action = Action::Delegate as i32;
            reply.destination = destination.name.to_string();
            if let Some(key) = key {
                // What a Purge names: the entry, and the token it holds (a fingerprint).
                reply.served = key.to_vec();
                reply.issued = token.fingerprint();
            }
            match bound {
                // DPoP-bound: this request's proof goes with it, and the filter, which holds no key,
                // can make none: never cached there (every request is a Decide).
                Some(bound) => {
                    reply.authorization = bound.authorization.expose().to_owned();
                    reply.headers.push(Header {
                        key: "dpop".to_owned(),
                        value: bound.proof.expose().to_owned(),
                    });
                }
                None => {
                    reply.authorization = token.authorization.expose().to_owned();
                    // A token Baton does not cache (`key: None`) is not cached by the filter either.
                    subject_expires = key.map(|_| token.expires_at);
                }
            }
        }
        Ok(Allow::Strip) => reply.action = Action::Strip as i32,
        Ok(Allow::Passthrough) => reply.action = Action::Passthrough as i32,
        Err(denial) => {
            reply.action = Action::Deny as i32;
            reply.reason = denial.reason.as_str().to_owned();
            reply.status = u32::from(denial.reason.class().http_status());
            use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
            if let Some(HttpResponse::DeniedResponse(denied)) = respond::check_response(outcome).http_response {
                reply.body = denied.body;
                reply.headers = denied
                    .headers
                    .into_iter()
                    .filter_map(|h| h.header)
                    .map(|h| Header {
                        key: h.key,
                        value: h.value,
                    })
                    .collect();
            }
        }
    }
    Answered { reply, subject_expires }
}

/// The verified claims of the request's subject token, as JSON: the verifier's cache answers (the
/// decision just verified it). `None` when verification is off.
async fn claims(authz: &Authz, outbound: &Outbound<'_>) -> Option<String> {
    let token = request::subject_token(&outbound.authorization, authz.max_token_bytes()).ok()??;
    let digest = baton_core::cache::digest(token);
    let subject = authz.verify(token, &digest).await.ok()??;
    serde_json::to_string(&subject.claims).ok()
}
