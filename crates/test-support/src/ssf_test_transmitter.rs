//! A TEST Shared Signals transmitter, written for Baton's tests from the specifications (OpenID SSF
//! 1.0, RFC 8417 SETs, RFC 8935 push, RFC 8936 poll, RFC 9493 subjects), because no SSF transmitter
//! is available from the package registries. It is not a product and implements only what the
//! tests need: `/.well-known/ssf-configuration`, its JWKS, stream create/get/delete (bearer secret),
//! a poll endpoint per stream with `ack` and `setErrs`, and push delivery to a URL. It signs SETs
//! with its own P-256 key; `forge` signs with another, for the refusals.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::scratch::http;
use crate::tokens::{client_key, unix_now};

/// The event type URIs (CAEP and RISC).
pub mod events {
    pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
    pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
    pub const TOKEN_CLAIMS_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
    pub const ACCOUNT_DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
    pub const ACCOUNT_PURGED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-purged";
    pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
}

const POLL: &str = "urn:ietf:rfc:8936";
const PUSH: &str = "urn:ietf:rfc:8935";

#[derive(Debug, Default)]
struct Stream {
    id: String,
    method: String,
    /// Push: where, and the `Authorization` value to send.
    push: Option<(String, String)>,
    events_requested: Vec<String>,
    /// SETs not yet delivered, then delivered and not acknowledged (sent again on each poll).
    queue: VecDeque<(String, String)>,
    outstanding: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Record {
    acked: Vec<String>,
    set_errs: HashMap<String, Value>,
    polls: u64,
    created: u64,
    deleted: u64,
}

struct Inner {
    issuer: String,
    audience: String,
    secret: String,
    key: EncodingKey,
    forged: EncodingKey,
    jwks: Value,
    streams: Mutex<Vec<Stream>>,
    record: Mutex<Record>,
    arrived: tokio::sync::Notify,
}

/// The test transmitter, on a free loopback port; stopped when dropped.
pub struct TestTransmitter {
    pub issuer: String,
    pub audience: String,
    /// The bearer secret of its stream-management and poll endpoints.
    pub secret: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TestTransmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestTransmitter")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Drop for TestTransmitter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", inner.secret))
}

fn stream_json(inner: &Inner, s: &Stream) -> Value {
    let mut delivery = json!({ "method": s.method });
    if s.method == POLL {
        delivery["endpoint_url"] = json!(format!("{}/poll/{}", inner.issuer, s.id));
    } else if let Some((url, _)) = &s.push {
        delivery["endpoint_url"] = json!(url);
    }
    json!({
        "stream_id": s.id,
        "iss": inner.issuer,
        "aud": inner.audience,
        "delivery": delivery,
        "events_supported": [events::SESSION_REVOKED, events::CREDENTIAL_CHANGE, events::TOKEN_CLAIMS_CHANGE,
            events::ACCOUNT_DISABLED, events::ACCOUNT_PURGED],
        "events_requested": s.events_requested,
        "events_delivered": s.events_requested,
    })
}

async fn create_stream(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !authorized(&inner, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let method = request["delivery"]["method"].as_str().unwrap_or(POLL).to_owned();
    let events_requested = request["events_requested"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let push = (method == PUSH).then(|| {
        (
            request["delivery"]["endpoint_url"].as_str().unwrap_or("").to_owned(),
            request["delivery"]["authorization_header"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    });
    let mut streams = inner.streams.lock().expect("streams");
    let stream = Stream {
        id: format!("stream-{}", streams.len() + 1),
        method,
        push,
        events_requested,
        ..Stream::default()
    };
    let answer = stream_json(&inner, &stream);
    streams.push(stream);
    inner.record.lock().expect("record").created += 1;
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn get_stream(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&inner, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let streams = inner.streams.lock().expect("streams");
    match query.get("stream_id") {
        Some(id) => match streams.iter().find(|s| &s.id == id) {
            Some(s) => axum::Json(stream_json(&inner, s)).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        None => axum::Json(Value::Array(streams.iter().map(|s| stream_json(&inner, s)).collect())).into_response(),
    }
}

async fn delete_stream(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&inner, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut streams = inner.streams.lock().expect("streams");
    let before = streams.len();
    streams.retain(|s| Some(&s.id) != query.get("stream_id"));
    if streams.len() == before {
        return StatusCode::NOT_FOUND.into_response();
    }
    inner.record.lock().expect("record").deleted += 1;
    StatusCode::NO_CONTENT.into_response()
}

/// RFC 8936: acknowledge, record errors, then answer up to `maxEvents` SETs (unacknowledged ones
/// again), waiting up to 2 s for one when `returnImmediately` is false.
async fn poll(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&inner, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let max = request["maxEvents"].as_u64().unwrap_or(100) as usize;
    let immediately = request["returnImmediately"].as_bool().unwrap_or(true);
    let acks: Vec<String> = request["ack"]
        .as_array()
        .map(|a| a.iter().filter_map(|j| j.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    {
        let mut record = inner.record.lock().expect("record");
        record.polls += 1;
        record.acked.extend(acks.iter().cloned());
        if let Some(errs) = request["setErrs"].as_object() {
            record.set_errs.extend(errs.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let errs: Vec<String> = request["setErrs"]
        .as_object()
        .map(|e| e.keys().cloned().collect())
        .unwrap_or_default();
    for _ in 0..2 {
        let notified = inner.arrived.notified();
        {
            let mut streams = inner.streams.lock().expect("streams");
            let Some(stream) = streams.iter_mut().find(|s| s.id == id) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            stream
                .outstanding
                .retain(|(jti, _)| !acks.contains(jti) && !errs.contains(jti));
            while let Some(next) = stream.queue.pop_front() {
                stream.outstanding.push(next);
            }
            if !stream.outstanding.is_empty() || immediately {
                let sets: serde_json::Map<String, Value> = stream
                    .outstanding
                    .iter()
                    .take(max)
                    .map(|(jti, set)| (jti.clone(), json!(set)))
                    .collect();
                let more = stream.outstanding.len() > max;
                return axum::Json(json!({ "sets": sets, "moreAvailable": more })).into_response();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
    }
    axum::Json(json!({ "sets": {}, "moreAvailable": false })).into_response()
}

impl TestTransmitter {
    /// Start it; its streams' SETs carry `aud` = `audience`.
    pub async fn start(audience: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let (pem, jwks) = client_key();
        let (forged_pem, _) = client_key();
        let secret = format!("ssf-transmitter-secret-{}", rand_suffix());
        crate::leaks::secret(&secret);
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            audience: audience.to_owned(),
            secret: secret.clone(),
            key: EncodingKey::from_ec_pem(pem.as_bytes()).expect("key"),
            forged: EncodingKey::from_ec_pem(forged_pem.as_bytes()).expect("key"),
            jwks: serde_json::from_str(&jwks).expect("jwks"),
            streams: Mutex::default(),
            record: Mutex::default(),
            arrived: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .route(
                "/.well-known/ssf-configuration",
                axum::routing::get(|State(inner): State<Arc<Inner>>| async move {
                    axum::Json(json!({
                        "spec_version": "1_0",
                        "issuer": inner.issuer,
                        "jwks_uri": format!("{}/jwks", inner.issuer),
                        "configuration_endpoint": format!("{}/streams", inner.issuer),
                        "delivery_methods_supported": [POLL, PUSH],
                        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
                    }))
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(|State(inner): State<Arc<Inner>>| async move { axum::Json(inner.jwks.clone()) }),
            )
            .route(
                "/streams",
                axum::routing::post(create_stream).get(get_stream).delete(delete_stream),
            )
            .route("/poll/{id}", axum::routing::post(poll))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            issuer,
            audience: audience.to_owned(),
            secret,
            inner,
            task,
        }
    }

    /// A poll stream created here (static configuration); its poll URL.
    pub fn poll_stream(&self) -> String {
        let mut streams = self.inner.streams.lock().expect("streams");
        let stream = Stream {
            id: format!("stream-{}", streams.len() + 1),
            method: POLL.into(),
            ..Stream::default()
        };
        let url = format!("{}/poll/{}", self.issuer, stream.id);
        streams.push(stream);
        url
    }

    /// A push stream to `url`, sending `Authorization: Bearer <secret>`.
    pub fn push_stream(&self, url: &str, secret: &str) {
        let mut streams = self.inner.streams.lock().expect("streams");
        let stream = Stream {
            id: format!("stream-{}", streams.len() + 1),
            method: PUSH.into(),
            push: Some((url.to_owned(), format!("Bearer {secret}"))),
            ..Stream::default()
        };
        streams.push(stream);
    }

    /// The claims of a SET for one event about `subject` (RFC 9493), issued now.
    pub fn claims(&self, event: &str, subject: Value) -> Value {
        json!({
            "iss": self.issuer,
            "aud": self.audience,
            "iat": unix_now(),
            "jti": format!("set-{}", rand_suffix()),
            "sub_id": subject,
            "events": { event: {"event_timestamp": unix_now()} },
        })
    }

    /// Sign `claims` with the transmitter's key (`typ: secevent+jwt`).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(claims, &self.inner.key, "secevent+jwt")
    }

    /// Sign `claims` with another key under the same `kid` (a forgery), or with this `typ`.
    pub fn forge(&self, claims: &Value) -> String {
        self.sign_with(claims, &self.inner.forged, "secevent+jwt")
    }

    pub fn sign_typed(&self, claims: &Value, typ: &str) -> String {
        self.sign_with(claims, &self.inner.key, typ)
    }

    fn sign_with(&self, claims: &Value, key: &EncodingKey, typ: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("baton-test".into());
        header.typ = Some(typ.into());
        let set = jsonwebtoken::encode(&header, claims, key).expect("sign");
        // Baton must never log, trace or audit a SET: every Baton's output is scanned for it.
        crate::leaks::secret(&set);
        set
    }

    /// Queue a SET as is on every poll stream; its jti.
    pub fn queue(&self, jti: &str, set: &str) {
        let mut streams = self.inner.streams.lock().expect("streams");
        for stream in streams.iter_mut().filter(|s| s.method == POLL) {
            stream.queue.push_back((jti.to_owned(), set.to_owned()));
        }
        self.inner.arrived.notify_waiters();
    }

    /// Emit one event about `subject` to every stream: queued for polls, pushed at once to each
    /// push stream. The push answers' statuses.
    pub async fn emit(&self, event: &str, subject: Value) -> Vec<u16> {
        let claims = self.claims(event, subject);
        let set = self.sign(&claims);
        self.queue(claims["jti"].as_str().expect("jti"), &set);
        let pushes: Vec<(String, String)> = self
            .inner
            .streams
            .lock()
            .expect("streams")
            .iter()
            .filter_map(|s| s.push.clone())
            .collect();
        let mut statuses = Vec::new();
        for (url, authorization) in pushes {
            statuses.push(
                push(&url, Some(&authorization), "application/secevent+jwt", set.clone())
                    .await
                    .0,
            );
        }
        statuses
    }

    /// The jtis acknowledged so far, and the `setErrs` received.
    pub fn acked(&self) -> Vec<String> {
        self.inner.record.lock().expect("record").acked.clone()
    }

    pub fn set_errs(&self) -> HashMap<String, Value> {
        self.inner.record.lock().expect("record").set_errs.clone()
    }

    /// Poll requests received, and streams created through the API.
    pub fn polls(&self) -> u64 {
        self.inner.record.lock().expect("record").polls
    }

    pub fn streams_created(&self) -> u64 {
        self.inner.record.lock().expect("record").created
    }

    /// Streams deleted through the API, and streams there now.
    pub fn streams_deleted(&self) -> u64 {
        self.inner.record.lock().expect("record").deleted
    }

    pub fn streams(&self) -> usize {
        self.inner.streams.lock().expect("streams").len()
    }
}

/// RFC 8935 push of `body` to `url` as is; the status and the JSON answer (if any).
pub async fn push(url: &str, authorization: Option<&str>, content_type: &str, body: String) -> (u16, Value) {
    let mut request = http().post(url).header("content-type", content_type).body(body);
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    let response = request.send().await.expect("push");
    let status = response.status().as_u16();
    let body = serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
    (status, body)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
