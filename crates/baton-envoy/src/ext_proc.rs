//! Envoy's ext_proc API (`envoy.service.ext_proc.v3.ExternalProcessor/Process`): one bidirectional
//! stream per HTTP request. Baton answers the request-headers message with the same decision as
//! ext_authz's Check (`Authz::decide`) and continues every other phase unchanged; it never holds a
//! stream Envoy has closed, and a stream that breaks the protocol gets a gRPC error, never a panic.
//!
//! ext_proc has no `context_extensions`: a route names its destination with a per-route
//! `ExtProcPerRoute.overrides.grpc_initial_metadata` entry, `baton-destination: NAME`, which Envoy
//! sends as gRPC metadata when it opens the stream (see `envoy_config`).
//!
//! The generated configuration skips response headers and lets Baton override that per stream
//! (`allow_mode_override`): a request Baton delegated is answered with a `mode_override` asking for
//! its response headers (`delegated_mode`), no other is. Envoy's own reply to a request it refused
//! before any filter ran (a malformed request line) then never waits on Baton: under a static
//! `response_header_mode: SEND`, Envoy resets that stream while ext_proc holds the reply, and the
//! client gets an empty connection instead of a 400 (docs/envoy-istio.md).
//!
//! With the response headers sent, the stream keeps the cache entry that served the request
//! (its key and token, never the subject token) until the response headers arrive: a 401 whose
//! challenge says `invalid_token` purges exactly that entry (`refused`, `Authz::purge_served`), so the
//! next request exchanges again. Every other response changes nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{BodySendMode, HeaderSendMode};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::extract;
use crate::outcome;
use crate::refused;
use crate::respond;
use baton_core::authz::{Authz, Current};
use baton_core::cache::{Delegated, Key};
use baton_core::decision::Allow;
use baton_core::telemetry::Api;
use baton_decide::reason::{Denial, Reason};

/// The gRPC metadata key a route sets to name its destination.
pub const DESTINATION_METADATA: &str = "baton-destination";

/// Envoy sends the request headers as it opens the stream; a peer that opens one and says nothing
/// is not Envoy, and does not get to hold it open.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);

type Replies = Pin<Box<dyn futures_util::Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[derive(Debug)]
pub struct ExtProcService {
    authz: Current,
}

impl ExtProcService {
    pub fn new(authz: Current) -> Self {
        Self { authz }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = Replies;

    async fn process(&self, request: Request<Streaming<ProcessingRequest>>) -> Result<Response<Replies>, Status> {
        let stream = Stream {
            // One configuration for the stream's life, even if a reload lands meanwhile.
            authz: self.authz.load_full(),
            destination: route_destination(request.metadata()),
            metadata: request.metadata().clone(),
            inbound: request.into_inner(),
            state: State::AwaitingHeaders,
            served: None,
        };
        Ok(Response::new(Box::pin(futures_util::stream::unfold(
            stream,
            Stream::next,
        ))))
    }
}

/// The route's destination name from the stream's metadata: none, one, or a denial when it cannot
/// be read (not text, or named twice), since Baton must not guess which was meant.
fn route_destination(metadata: &MetadataMap) -> Result<Option<String>, Denial> {
    let mut values = metadata.get_all(DESTINATION_METADATA).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => value.to_str().map(|v| Some(v.to_owned())).map_err(|_| {
            Denial::new(
                Reason::DestinationNotConfigured,
                "the route's baton-destination is not text",
            )
        }),
        (Some(_), Some(_)) => Err(Denial::new(
            Reason::DestinationNotConfigured,
            "the route names more than one baton-destination",
        )),
    }
}

// === impl Stream ===

/// One HTTP request's stream.
struct Stream {
    authz: Arc<Authz>,
    destination: Result<Option<String>, Denial>,
    /// The stream's gRPC metadata: where Envoy puts the `traceparent` of its span for the stream.
    metadata: MetadataMap,
    inbound: Streaming<ProcessingRequest>,
    state: State,
    /// The cache entry that served this request, until its response headers are seen.
    served: Option<Served>,
}

/// What a destination's `invalid_token` purges: one entry, named by its key and held token.
struct Served {
    destination: Arc<str>,
    key: Key,
    token: Arc<Delegated>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHeaders,
    Decided,
    Closed,
}

impl Stream {
    /// The reply to Envoy's next message; `None` ends the stream with OK.
    async fn next(mut self) -> Option<(Result<ProcessingResponse, Status>, Self)> {
        loop {
            let message = match self.state {
                State::Closed => return None,
                State::AwaitingHeaders => {
                    match tokio::time::timeout(FIRST_MESSAGE_WAIT, self.inbound.message()).await {
                        Ok(message) => message,
                        Err(_) => return self.fail(Status::deadline_exceeded("no request_headers message arrived")),
                    }
                }
                State::Decided => self.inbound.message().await,
            };
            let request = match message {
                // Envoy closed its side: the HTTP request is over.
                Ok(None) => return None,
                Err(status) => {
                    tracing::debug!(code = ?status.code(), "ext_proc stream ended by the client");
                    return None;
                }
                Ok(Some(request)) => request,
            };
            if request.observability_mode {
                return self.fail(Status::failed_precondition(
                    "ext_proc observability_mode ignores replies, so Baton cannot set Authorization: turn it off",
                ));
            }
            match (&request.request, self.state) {
                (Some(Phase::RequestHeaders(_)), State::AwaitingHeaders) => {
                    let (reply, served) = self.decide(&request).await;
                    self.served = served;
                    self.state = State::Decided;
                    return Some((Ok(reply), self));
                }
                (Some(phase @ Phase::ResponseHeaders(response)), State::Decided) => {
                    // Once: the response's headers are the destination's answer.
                    if let Some(served) = self.served.take()
                        && refused::says_invalid_token(response)
                    {
                        self.authz.purge_served(
                            &served.destination,
                            &served.key,
                            &served.token,
                            outcome::trace_context(&self.metadata),
                        );
                    }
                    return Some((Ok(respond::continue_response(phase)), self));
                }
                (Some(Phase::RequestHeaders(_)), _) => {
                    return self.fail(Status::invalid_argument(
                        "a second request_headers message on one stream",
                    ));
                }
                // Envoy's own reply to a request that never reached this filter (refused before it,
                // e.g. a malformed request line): with response headers sent, the stream opens on
                // the response. Nothing was decided or served: continued as is.
                (Some(phase @ Phase::ResponseHeaders(_)), State::AwaitingHeaders) => {
                    self.state = State::Decided;
                    return Some((Ok(respond::continue_response(phase)), self));
                }
                (_, State::AwaitingHeaders) => {
                    return self.fail(Status::invalid_argument(
                        "the first ext_proc message must be request_headers: set processing_mode.request_header_mode to SEND",
                    ));
                }
                (Some(phase), _) => {
                    tracing::debug!("ext_proc message for a phase Baton does not process: continued");
                    return Some((Ok(respond::continue_response(phase)), self));
                }
                // A message without a phase (flow control only) needs no reply.
                (None, _) => {}
            }
        }
    }

    /// The reply to the request headers: the decision, observed (span, metrics, audit line), with
    /// Baton's dynamic metadata; and the cache entry that served it, if it was delegated.
    async fn decide(&self, request: &ProcessingRequest) -> (ProcessingResponse, Option<Served>) {
        let processing = self
            .destination
            .as_ref()
            .map(|name| extract::Processing::new(request, name.as_deref()));
        let outbound = match &processing {
            Ok(processing) => processing.outbound(),
            Err(denial) => Err(Denial::clone(denial)),
        };
        outcome::decide(
            &self.authz,
            Api::ExtProc,
            &self.metadata,
            outbound.as_ref(),
            reply_and_served,
        )
        .await
    }

    /// End the stream with this gRPC error.
    fn fail(mut self, status: Status) -> Option<(Result<ProcessingResponse, Status>, Self)> {
        tracing::warn!(code = ?status.code(), message = status.message(), "ext_proc stream refused");
        self.state = State::Closed;
        Some((Err(status), self))
    }
}

/// `respond::request_headers_reply`, and what a later `invalid_token` would purge.
fn reply_and_served(
    outcome: &Result<Allow, Denial>,
    metadata: Option<envoy_types::pb::google::protobuf::Struct>,
) -> (ProcessingResponse, Option<Served>) {
    let served = match outcome {
        Ok(Allow::Delegate {
            destination,
            token,
            key: Some(key),
            ..
        }) => Some(Served {
            destination: destination.name.clone(),
            key: *key,
            token: token.clone(),
        }),
        _ => None,
    };
    let mut reply = respond::request_headers_reply(outcome, metadata);
    if served.is_some() {
        reply.mode_override = Some(delegated_mode());
    }
    (reply, served)
}

/// The processing mode a delegated request's stream asks for: the configured one (request headers
/// only) with the response headers sent too, for a destination's `invalid_token`. Spelled out
/// whole: Envoy compares it, field by field, with the configuration's `allowed_override_modes`,
/// which allows exactly this mode (and refuses the override otherwise, leaving the purge off).
pub fn delegated_mode() -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send.into(),
        response_header_mode: HeaderSendMode::Send.into(),
        request_body_mode: BodySendMode::None.into(),
        response_body_mode: BodySendMode::None.into(),
        request_trailer_mode: HeaderSendMode::Skip.into(),
        response_trailer_mode: HeaderSendMode::Skip.into(),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
    use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
    use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingResponse};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::Channel;

    use super::*;
    use crate::file::Config;

    /// Baton's ext_proc service on a loopback port, with a token service nobody listens on: these
    /// tests never reach an exchange.
    async fn client() -> ExternalProcessorClient<Channel> {
        let yaml = "listen:\n  grpc: 127.0.0.1:0\ntoken_service:\n  token_endpoint: http://127.0.0.1:9/token\n  client_id: c\n  auth: { method: none }\ndestinations:\n  - name: orders\n    hosts: [orders.example]\n    audience: https://orders.example\n";
        let config = Config::from_yaml(yaml).expect("config");
        let services = config
            .decision
            .token_services
            .iter()
            .map(|ts| baton_core::exchange::TokenService::new(ts).expect("client"))
            .collect::<Vec<_>>();
        let authz = Authz::new(
            config.decision,
            baton_core::exchange::TokenServices::new(services),
            None,
        )
        .into_shared();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ExternalProcessorServer::new(ExtProcService::new(Arc::new(
                    arc_swap::ArcSwap::new(authz),
                ))))
                .serve_with_incoming(incoming),
        );
        ExternalProcessorClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
    }

    /// Only a request Baton delegated from a cache entry asks for its response headers (the one
    /// thing they are read for is purging that entry); nothing else costs Envoy a second message.
    #[test]
    fn only_a_delegated_stream_asks_for_its_response_headers() {
        use baton_core::cache::CacheStatus;
        let delegate = |key| {
            Ok(Allow::Delegate {
                destination: crate::respond::tests::orders(),
                token: crate::respond::tests::delegated(),
                cache: CacheStatus::Hit,
                key,
                bound: None,
            })
        };
        let (reply, served) = reply_and_served(&delegate(Some([7; 32])), None);
        assert_eq!(reply.mode_override, Some(delegated_mode()));
        assert_eq!(served.map(|s| s.key), Some([7; 32]));
        for outcome in [
            delegate(None),
            Ok(Allow::Strip),
            Ok(Allow::Passthrough),
            Err(Denial::new(Reason::MissingToken, "no token")),
        ] {
            let (reply, served) = reply_and_served(&outcome, None);
            assert_eq!(reply.mode_override, None);
            assert!(served.is_none());
        }
    }

    fn headers(lines: &[(&str, &str)]) -> HttpHeaders {
        HttpHeaders {
            headers: Some(HeaderMap {
                headers: lines
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).into(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    fn message(phase: Phase) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(phase),
            ..Default::default()
        }
    }

    /// Open a stream (with this `baton-destination`, if any); the sender and the replies.
    async fn open(route: Option<&str>) -> (mpsc::Sender<ProcessingRequest>, Streaming<ProcessingResponse>) {
        let mut client = client().await;
        let (tx, rx) = mpsc::channel(4);
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(name) = route {
            request
                .metadata_mut()
                .insert(DESTINATION_METADATA, name.parse().expect("metadata value"));
        }
        let replies = client.process(request).await.expect("process").into_inner();
        (tx, replies)
    }

    async fn reply(replies: &mut Streaming<ProcessingResponse>) -> Result<Option<Reply>, Status> {
        let next = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("a reply within 5 s")?;
        Ok(next.map(|r| r.response.expect("a response")))
    }

    #[tokio::test]
    async fn strips_an_unknown_destination_then_continues_other_phases_and_closes_cleanly() {
        let (tx, mut replies) = open(None).await;
        let request = headers(&[(":authority", "elsewhere.example"), ("authorization", "Bearer abc")]);
        tx.send(message(Phase::RequestHeaders(request))).await.expect("send");
        let Ok(Some(Reply::RequestHeaders(h))) = reply(&mut replies).await else {
            panic!("not a headers response")
        };
        let mutation = h.response.and_then(|c| c.header_mutation).expect("a header mutation");
        assert_eq!(mutation.remove_headers, ["authorization"]);
        assert!(mutation.set_headers.is_empty());

        tx.send(message(Phase::ResponseHeaders(headers(&[(":status", "200")]))))
            .await
            .expect("send");
        assert!(matches!(
            reply(&mut replies).await,
            Ok(Some(Reply::ResponseHeaders(h))) if h.response.is_none()
        ));
        drop(tx);
        assert!(matches!(reply(&mut replies).await, Ok(None)), "stream ends with OK");
    }

    #[tokio::test]
    async fn denies_with_an_immediate_response() {
        let (tx, mut replies) = open(None).await;
        let request = headers(&[(":authority", "orders.example"), (":path", "/")]);
        tx.send(message(Phase::RequestHeaders(request))).await.expect("send");
        let Ok(Some(Reply::ImmediateResponse(denied))) = reply(&mut replies).await else {
            panic!("not an immediate response")
        };
        assert_eq!(denied.status.expect("status").code, 401);
        assert_eq!(denied.details, "missing_token");
        let body: serde_json::Value = serde_json::from_slice(&denied.body).expect("json");
        assert_eq!(body["error"], "missing_token");

        // The route names a destination Baton does not have: 403, whatever the host.
        let (tx, mut replies) = open(Some("nonesuch")).await;
        let request = headers(&[(":authority", "orders.example"), ("authorization", "Bearer abc")]);
        tx.send(message(Phase::RequestHeaders(request))).await.expect("send");
        let Ok(Some(Reply::ImmediateResponse(denied))) = reply(&mut replies).await else {
            panic!("not an immediate response")
        };
        assert_eq!(
            (denied.status.expect("status").code, denied.details.as_str()),
            (403, "destination_not_configured")
        );
    }

    #[tokio::test]
    async fn a_stream_that_breaks_the_protocol_gets_a_grpc_error() {
        let (tx, mut replies) = open(None).await;
        tx.send(message(Phase::RequestBody(Default::default())))
            .await
            .expect("send");
        let status = reply(&mut replies).await.expect_err("not request_headers first");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("request_headers"), "{status:?}");

        let (tx, mut replies) = open(None).await;
        let request = headers(&[(":authority", "elsewhere.example")]);
        tx.send(message(Phase::RequestHeaders(request.clone())))
            .await
            .expect("send");
        assert!(matches!(reply(&mut replies).await, Ok(Some(Reply::RequestHeaders(_)))));
        tx.send(message(Phase::RequestHeaders(request))).await.expect("send");
        let status = reply(&mut replies).await.expect_err("second request_headers");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        let (tx, mut replies) = open(None).await;
        let mut observing = message(Phase::RequestHeaders(headers(&[(":authority", "orders.example")])));
        observing.observability_mode = true;
        tx.send(observing).await.expect("send");
        let status = reply(&mut replies).await.expect_err("observability mode");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }

    /// Envoy's own reply (a request refused before the filter) opens the stream on the response
    /// headers: continued, never an error (Envoy would reset the client's connection).
    #[tokio::test]
    async fn a_stream_opened_by_envoys_own_reply_is_continued() {
        let (tx, mut replies) = open(None).await;
        let response = headers(&[
            (":status", "401"),
            ("www-authenticate", "Bearer error=\"invalid_token\""),
        ]);
        tx.send(message(Phase::ResponseHeaders(response))).await.expect("send");
        assert!(matches!(
            reply(&mut replies).await,
            Ok(Some(Reply::ResponseHeaders(h))) if h.response.is_none()
        ));
        drop(tx);
        assert!(matches!(reply(&mut replies).await, Ok(None)), "stream ends with OK");
    }

    #[test]
    fn the_route_destination_must_be_one_text_value() {
        let mut metadata = MetadataMap::new();
        assert_eq!(route_destination(&metadata), Ok(None));
        metadata.insert(DESTINATION_METADATA, "orders".parse().expect("value"));
        assert_eq!(route_destination(&metadata), Ok(Some("orders".to_owned())));
        metadata.append(DESTINATION_METADATA, "billing".parse().expect("value"));
        assert_eq!(
            route_destination(&metadata).map_err(|d| d.reason),
            Err(Reason::DestinationNotConfigured)
        );
    }
}
