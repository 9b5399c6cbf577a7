//! Poll delivery (RFC 8936) and the stream: the transmitter's SSF configuration
//! (`/.well-known/ssf-configuration`), a poll stream created through its `configuration_endpoint`
//! when none is configured, and the loop that polls it, acknowledges what was applied (`ack`) and
//! refuses what was not (`setErrs`). Every request is bounded (`ssf.poll.timeout`, body sizes), and
//! failures back off from `interval` up to `max_backoff`. It never logs a SET or the bearer secret.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use url::Url;

use super::receiver::{MAX_SET_BYTES, Receiver, supported_events};
use crate::http::read_bounded;
use crate::revocation::{Selector, StoreError};

/// RFC 8936's delivery method URI.
pub const POLL_METHOD: &str = "urn:ietf:rfc:8936";
/// The longest configuration or stream document read.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// What Baton uses of the transmitter's SSF configuration.
#[derive(Debug, Clone)]
pub struct Configuration {
    pub jwks_uri: Url,
    pub configuration_endpoint: Option<Url>,
}

#[derive(Deserialize)]
struct RawConfiguration {
    issuer: String,
    jwks_uri: Option<String>,
    configuration_endpoint: Option<String>,
}

fn http_url(value: &str, field: &str) -> Result<Url, String> {
    Url::parse(value)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| format!("{field} is not an http(s) URL"))
}

/// A URL the transmitter names, to which Baton will send its bearer token: `https`, or `http` only
/// when `ssf.issuer` itself is (a development transmitter), so a document cannot downgrade it.
fn named_url(receiver: &Receiver, value: &str, field: &str) -> Result<Url, String> {
    let url = http_url(value, field)?;
    if url.scheme() == "http" && !receiver.settings().issuer.starts_with("http://") {
        return Err(format!("{field} is plain http while ssf.issuer is https"));
    }
    Ok(url)
}

/// The transmitter's SSF configuration, read once (a failure is tried again on the next use).
pub(super) async fn configuration(receiver: &Receiver) -> Result<&Configuration, String> {
    receiver
        .configuration_cell()
        .get_or_try_init(|| async {
            let issuer = &receiver.settings().issuer;
            let url = super::configuration_url(&http_url(issuer, "ssf.issuer")?);
            let response = send(receiver, receiver.http().get(url.clone()), &url, "", false).await?;
            let raw: RawConfiguration = read_json(response, MAX_DOCUMENT_BYTES, &url).await?;
            if raw.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
                return Err(format!("{url}: names another issuer, not ssf.issuer"));
            }
            let jwks_uri = match (&receiver.settings().jwks_uri, raw.jwks_uri) {
                (Some(configured), _) => configured.clone(),
                (None, Some(uri)) => named_url(receiver, &uri, "jwks_uri")?,
                (None, None) => return Err(format!("{url}: no jwks_uri")),
            };
            let configuration_endpoint = raw
                .configuration_endpoint
                .map(|e| named_url(receiver, &e, "configuration_endpoint"))
                .transpose()?;
            receiver.keys().set_jwks_uri(jwks_uri.clone());
            Ok(Configuration {
                jwks_uri,
                configuration_endpoint,
            })
        })
        .await
}

/// The poll endpoint: `ssf.poll.endpoint`, or a stream created once through the transmitter's
/// `configuration_endpoint` (delivery by poll, the events Baton acts on), whose `aud` must be
/// `ssf.audience`.
pub async fn poll_endpoint(receiver: &Receiver) -> Result<Url, String> {
    receiver
        .stream
        .get_or_try_init(|| async {
            let endpoint = configuration(receiver).await?.configuration_endpoint.clone().ok_or(
                "the transmitter's SSF configuration has no configuration_endpoint: configure ssf.poll.endpoint",
            )?;
            let body = json!({
                "delivery": { "method": POLL_METHOD },
                "events_requested": supported_events().collect::<Vec<_>>(),
                "description": "Baton",
            });
            let request = post_json(receiver, &endpoint, &body);
            let response = send(receiver, request, &endpoint, "creating the stream: ", true).await?;
            let stream: Value = read_json(response, MAX_DOCUMENT_BYTES, &endpoint).await?;
            let audience = &receiver.settings().audience;
            let aud_ok = match &stream["aud"] {
                Value::String(aud) => aud == audience,
                Value::Array(auds) => auds.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !aud_ok {
                return Err(format!(
                    "{endpoint}: the stream's aud is not ssf.audience ({audience}): its SETs would be refused"
                ));
            }
            if stream["delivery"]["method"] != POLL_METHOD {
                return Err(format!("{endpoint}: the stream's delivery is not by poll"));
            }
            let url = stream["delivery"]["endpoint_url"]
                .as_str()
                .ok_or("the stream has no delivery.endpoint_url")
                .map_err(str::to_owned)
                .and_then(|u| named_url(receiver, u, "delivery.endpoint_url"))?;
            let id = stream["stream_id"].as_str().unwrap_or("");
            if !id.is_empty() && id.len() <= 256 {
                let _ = receiver.stream_id.set(id.to_owned());
            }
            tracing::info!(stream_id = id, poll = %url, "SSF stream created");
            Ok(url)
        })
        .await
        .cloned()
}

/// Delete the stream Baton created (SSF 1.0 stream management: `DELETE` on the
/// `configuration_endpoint` with `stream_id`), when the process stops: a pod that goes away leaves
/// no stream behind at the transmitter. A configured (static) stream is left alone.
pub async fn delete_stream(receiver: &Receiver) -> Result<(), String> {
    let Some(id) = receiver.stream_id.get() else {
        return Ok(());
    };
    let Some(endpoint) = receiver
        .configuration_cell()
        .get()
        .and_then(|c| c.configuration_endpoint.clone())
    else {
        return Ok(());
    };
    let mut url = endpoint.clone();
    url.query_pairs_mut().append_pair("stream_id", id);
    send(
        receiver,
        receiver.http().delete(url),
        &endpoint,
        "deleting the stream: ",
        true,
    )
    .await?;
    tracing::info!(stream_id = %id, "SSF stream deleted");
    Ok(())
}

/// A `POST` of this JSON document to `url`.
fn post_json(receiver: &Receiver, url: &Url, body: &Value) -> reqwest::RequestBuilder {
    receiver
        .http()
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
}

/// Send one request to the transmitter: every request of this module goes through here. Bounded by
/// the receiver's client, whose deadline is `ssf.poll.timeout` (10 s without `ssf.poll`), and by
/// the request's own `timeout` when it has one; never redirected (`crate::http`). With
/// `authenticated`, the poll secret goes as a bearer token. Anything but a 2xx answer is an error
/// that names `url` and what was being done (`doing`, e.g. `"creating the stream: "`), never the
/// secret or a SET.
async fn send(
    receiver: &Receiver,
    request: reqwest::RequestBuilder,
    url: &Url,
    doing: &str,
    authenticated: bool,
) -> Result<reqwest::Response, String> {
    let secret = receiver.settings().poll.as_ref().and_then(|p| p.secret.as_ref());
    let request = match secret.filter(|_| authenticated) {
        Some(secret) => request.bearer_auth(secret.expose()),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::http::error_chain(&e.without_url())))?;
    if !response.status().is_success() {
        return Err(format!("{url}: {doing}HTTP {}", response.status().as_u16()));
    }
    Ok(response)
}

/// The answer's JSON body, read up to `max` bytes.
async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    max: usize,
    url: &Url,
) -> Result<T, String> {
    let body = read_bounded(response, max).await.map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
}

/// What one round leaves for the next: the `jti`s to acknowledge, and those refused.
#[derive(Debug, Default)]
pub struct Pending {
    ack: Vec<String>,
    set_errs: Map<String, Value>,
}

/// One poll: send what is pending, read at most `max_events` SETs, verify and apply each. `Ok(true)`
/// when another round should follow at once (more available, or acknowledgements to send).
pub async fn poll_once(
    receiver: &Receiver,
    pending: &mut Pending,
    revoke: &impl Fn(&'static str, &Selector) -> Result<usize, StoreError>,
) -> Result<bool, String> {
    let Some(poll) = receiver.settings().poll.clone() else {
        return Ok(false);
    };
    let endpoint = poll_endpoint(receiver).await?;
    let body = json!({
        "maxEvents": poll.max_events,
        "returnImmediately": poll.return_immediately,
        "ack": pending.ack,
        "setErrs": pending.set_errs,
    });
    let request = post_json(receiver, &endpoint, &body).timeout(poll.timeout);
    let response = send(receiver, request, &endpoint, "", true).await?;
    // Delivered: the transmitter has them now.
    *pending = Pending::default();
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        sets: Map<String, Value>,
        #[serde(default, rename = "moreAvailable")]
        more_available: bool,
    }
    let answer: Answer = read_json(response, poll.max_events * (MAX_SET_BYTES + 512) + 1024, &endpoint).await?;
    let more = answer.more_available || answer.sets.len() > poll.max_events;
    for (jti, set) in answer.sets.into_iter().take(poll.max_events) {
        if jti.is_empty() || jti.len() > 256 {
            receiver.count("none", "invalid_request");
            continue;
        }
        let Value::String(set) = set else {
            receiver.count("none", "invalid_request");
            pending.set_errs.insert(
                jti,
                json!({"err": "invalid_request", "description": "the SET is not a string"}),
            );
            continue;
        };
        match receiver.receive(&set).await {
            Ok((set_jti, signals)) => {
                if receiver.apply(&set_jti, &signals, revoke) {
                    pending.ack.push(jti);
                }
            }
            // Applied when it first came: acknowledged again, applied once.
            Err(e) if e.is_replay() => pending.ack.push(jti),
            Err(e) if e.retry => {}
            Err(e) => {
                tracing::warn!(jti = %jti, err = e.err, description = %e.description, "SET refused");
                pending
                    .set_errs
                    .insert(jti, json!({"err": e.err, "description": e.description}));
            }
        }
    }
    Ok(more || !pending.ack.is_empty() || !pending.set_errs.is_empty())
}

/// Poll for as long as the process runs: `current` is the receiver of the configuration in use
/// (`None`: no `ssf.poll`, looked at again later), `revoke` applies a selector to it. Rounds follow
/// each other at once while there is more, else every `interval`; failures back off, doubling, to
/// `max_backoff`.
pub async fn run(
    current: impl Fn() -> Option<Arc<Receiver>>,
    revoke: impl Fn(&'static str, &Selector) -> Result<usize, StoreError>,
) {
    let mut pending = Pending::default();
    let mut backoff: Option<Duration> = None;
    loop {
        let Some((receiver, poll)) = current().and_then(|r| {
            let poll = r.settings().poll.clone()?;
            Some((r, poll))
        }) else {
            pending = Pending::default();
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        let polled = poll_once(&receiver, &mut pending, &revoke).await;
        receiver.count_poll(if polled.is_ok() { "ok" } else { "error" });
        match polled {
            Ok(true) => backoff = None,
            Ok(false) => {
                backoff = None;
                tokio::time::sleep(poll.interval).await;
            }
            Err(e) => {
                let pause = backoff.map_or(poll.interval, |b| (b * 2).min(poll.max_backoff));
                tracing::warn!(error = %e, retry_in = ?pause, "SSF poll failed");
                backoff = Some(pause);
                tokio::time::sleep(pause).await;
            }
        }
    }
}
