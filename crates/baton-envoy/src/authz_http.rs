//! Envoy's ext_authz over HTTP (`http_service`): Baton's lean HTTP/1.1 authorization listener
//! (`listen.authz_http`, `listen.authz_http_uds`). It owns the HTTP protocol only: reading Envoy's
//! authorization request into an [`Outbound`], and writing the answer `respond::http_answer` builds.
//! The decision, audit, metrics and span are the one path every Envoy question takes (`outcome`),
//! under the API label `ext_authz_http`. It must never decide anything itself, never read a
//! request body, never trust a header Envoy does not set itself, and never log a token.
//!
//! What Envoy 1.40 sends (checked with the real Envoy, and held by tests/authz_http.rs): the
//! original request's method and path (with the query; `path_prefix` prepended, none here), `host`
//! set to the original `:authority`, `content-length: 0` (no body: `with_request_body` is never
//! set), the headers in `allowed_headers` (a repeated header folded into one line joined by `,`),
//! and `x-envoy-internal`, `x-envoy-expected-rq-timeout-ms`. It carries no `context_extensions`
//! (no route names a destination: Baton matches hosts itself, as in-proxy mode does) and no peer
//! certificate (`source.principal`: `workload_identity` stands for the caller).
//!
//! Envoy's answer, read by its ext_authz HTTP client: 200 allows, copying the response headers
//! listed in `allowed_upstream_headers` (`authorization`, `dpop`) onto the request and removing
//! those named in `x-envoy-auth-headers-to-remove`; any other status is the reply the client gets,
//! with its body and the headers listed in `allowed_client_headers`.
//!
//! Bounds: request headers at most [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`] lines (else hyper
//! answers 431, which Envoy passes on: a refusal), the head read within [`HEADER_READ_TIMEOUT`], at
//! most [`MAX_CONNECTIONS`] open connections (more are closed at once), one task per connection,
//! keep-alive. A request with a body, a duplicate `host`, or an absolute-form target is not one
//! Envoy sends: refused `check_request_malformed`, and the connection closed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};

use crate::extract::AUTHORIZATION;
use crate::outcome;
use crate::respond;
use baton_core::authz::Current;
use baton_core::telemetry::Api;
use baton_decide::reason::{Denial, Reason};
use baton_decide::request::{Authorization, HeaderLines, Headers, Outbound};

/// The request head's bound (request line and headers): a subject token up to 16 KiB by default
/// (`subject_token.max_bytes`), and Envoy's own request-header bound (60 KiB by default) fits.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Header lines: Envoy sends the few Baton reads, and three of its own.
pub const MAX_HEADERS: usize = 64;
/// How long a connection may take to send a request head. Envoy's generated cluster closes an idle
/// connection before this (`envoy_config`), so it never sends on one Baton is closing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Open connections at once (Envoy opens one per concurrent authorization request, per worker).
pub const MAX_CONNECTIONS: usize = 4096;

/// Serve Envoy's HTTP authorization requests on `listener` until `stop` turns true; in-flight
/// requests then finish (each connection is shut down gracefully).
pub async fn serve_tcp(authz: Current, listener: TcpListener, stop: watch::Receiver<bool>) {
    serve(authz, stop, listener).await;
}

/// `serve_tcp` on a Unix socket.
pub async fn serve_uds(authz: Current, listener: UnixListener, stop: watch::Receiver<bool>) {
    serve(authz, stop, listener).await;
}

/// A listener's next connection.
trait Accept {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn next(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        let (stream, _) = self.accept().await?;
        // Without TCP_NODELAY a reply written in two segments waits for Envoy's delayed ACK.
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

/// Until `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve(authz: Current, stop: watch::Receiver<bool>, listener: impl Accept) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // Envoy ignores it: one less formatted header per answer.
        .auto_date_header(false);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = stopped(stop.clone()) => break,
            accepted = listener.next() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "authz_http: cannot accept a connection");
                    // A full file table: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(max = MAX_CONNECTIONS, "authz_http: too many connections, one closed");
            continue;
        };
        let (authz, builder, stop) = (authz.clone(), builder.clone(), stop.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let authz = authz.clone();
                async move { Ok::<_, Infallible>(answer(&authz, request).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopped(stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
    while connections.join_next().await.is_some() {}
}

/// One authorization request, from Envoy's HTTP request to the answer.
async fn answer(authz: &Current, request: Request<Incoming>) -> Response<Body> {
    let authz = authz.load_full();
    let lines = Lines::new(request.headers());
    let read = read(&request, &lines);
    let outbound = read.as_ref().map_err(|(denial, _)| denial);
    // Envoy's span context, when it traces, is among the request's headers (`outcome` reads them).
    // Envoy sends every header Baton may have removed (`respond::REMOVABLE`), when present.
    let carried = |name: &str| request.headers().contains_key(name);
    let reply = |outcome: &_, metadata| respond::http_answer(outcome, metadata, carried);
    let answer = outcome::decide_traced(&authz, Api::ExtAuthzHttp, || None, outbound, reply).await;
    let close = read.as_ref().err().is_some_and(|(_, close)| *close);
    response(answer, close)
}

/// The request as Baton's decision reads it; or why it is not a request Envoy sends (and whether
/// the connection must close: a body Baton does not read).
fn read<'a>(request: &'a Request<Incoming>, lines: &'a Lines<'a>) -> Result<Outbound<'a>, (Denial, bool)> {
    let malformed = |why: &'static str, close: bool| (Denial::new(Reason::CheckRequestMalformed, why), close);
    let body = request.body().size_hint();
    if !request.body().is_end_stream() && body.upper() != Some(0) {
        return Err(malformed("the authorization request has a body", true));
    }
    if request.uri().authority().is_some() || request.uri().scheme().is_some() {
        return Err(malformed(
            "the authorization request's target is not origin-form",
            false,
        ));
    }
    let mut hosts = request.headers().get_all(hyper::header::HOST).iter();
    let authority = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host
            .to_str()
            .map_err(|_| malformed("the host header is not visible ASCII", false))?,
        (None, _) => "",
        (Some(_), Some(_)) => return Err(malformed("the authorization request has more than one host", false)),
    };
    let headers = Headers::Lines(lines);
    Ok(Outbound {
        route_destination: None,
        authority,
        method: request.method().as_str(),
        path: request.uri().path_and_query().map_or("", |p| p.as_str()),
        source_principal: None,
        authorization: authorization(headers).map_err(|d| (d, false))?,
        headers,
    })
}

/// The `Authorization` header: Envoy folds repeated lines into one, joined by `,`, which no bearer
/// token contains (RFC 6750 b64token): several.
fn authorization(headers: Headers<'_>) -> Result<Authorization<'_>, Denial> {
    Ok(match headers.one(AUTHORIZATION)? {
        Authorization::One(value) if value.contains(',') => Authorization::Several,
        other => other,
    })
}

/// hyper's header map, read in place as [`HeaderLines`] (names are lower-case in hyper).
#[derive(Debug)]
struct Lines<'r>(Vec<(&'r str, Option<&'r str>)>);

impl<'r> Lines<'r> {
    fn new(headers: &'r hyper::HeaderMap) -> Self {
        Self(
            headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.to_str().ok()))
                .collect(),
        )
    }
}

impl HeaderLines for Lines<'_> {
    fn line(&self, index: usize) -> Option<(&str, Option<&str>)> {
        self.0.get(index).copied()
    }
}

/// Headers an allowing answer must carry whole: Envoy copies them upstream, and one left out
/// would let the caller's own `Authorization` through.
const CARRIED_UPSTREAM: [&str; 3] = ["authorization", "dpop", respond::HEADERS_TO_REMOVE];

/// The HTTP response of an answer. A metadata header whose value is not a valid HTTP value (a
/// `jti` with a control character, from a misbehaving token service) is left out, never sent; a
/// header Envoy carries upstream that cannot be sent turns the answer into a 500, which Envoy
/// treats as the authorization server's failure (`status_on_error`): closed, never the caller's
/// token forwarded.
fn response(answer: respond::HttpAnswer, close: bool) -> Response<Body> {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() =
        hyper::StatusCode::from_u16(answer.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (key, value) in answer.headers {
        match (HeaderName::try_from(key.as_str()), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ if answer.status == 200 && CARRIED_UPSTREAM.contains(&key.as_str()) => {
                tracing::error!(header = %key, "authz_http: an allowing answer's header is not a valid HTTP value");
                let mut failed = Response::new(Body::empty());
                *failed.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                return failed;
            }
            _ => {}
        }
    }
    if close {
        headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(authorization: &str) -> respond::HttpAnswer {
        respond::HttpAnswer {
            status: 200,
            headers: vec![
                ("authorization".to_owned(), authorization.to_owned()),
                ("jti".to_owned(), "a\u{7f}b".to_owned()),
            ],
            body: String::new(),
        }
    }

    #[test]
    fn an_allowing_answer_that_cannot_carry_its_authorization_fails_closed() {
        let sent = response(allow("Bearer abc"), false);
        assert_eq!(sent.status(), 200);
        assert_eq!(sent.headers()["authorization"], "Bearer abc");
        assert!(sent.headers().get("jti").is_none(), "a bad metadata value is left out");

        let failed = response(allow("Bearer abc\r\nx-injected: 1"), false);
        assert_eq!(failed.status(), 500, "never a 200 without the new Authorization");
        assert!(failed.headers().get("authorization").is_none());
    }
}
