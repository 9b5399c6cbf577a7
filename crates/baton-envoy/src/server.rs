//! Serving: Envoy's `Authorization/Check` and Baton's broker API on the gRPC listeners (a Unix
//! socket, and TCP: plain on loopback, or mutual TLS through `tls::Acceptor`), `/healthz`,
//! `/readyz` and `/metrics` on the admin listener. `serve` takes bound listeners and a shutdown future, so a test can run it on port 0 and stop it; on shutdown,
//! readiness turns false first and in-flight requests finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::broker::Broker;
use crate::broker::pb::delegation_broker_server::DelegationBrokerServer;
use crate::check_wire::CheckServer;
use crate::ext_proc::ExtProcService;
use crate::extract;
use crate::outcome;
use crate::respond;
use crate::tls::Acceptor;
use baton_core::authz::{Authz, Current};
use baton_core::telemetry::Api;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bound sockets to serve on.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: Option<TcpListener>,
    /// When set, `grpc` accepts only mutual-TLS connections from allowed callers.
    pub grpc_tls: Option<Acceptor>,
    pub grpc_uds: Option<UnixListener>,
    pub admin: Option<TcpListener>,
    /// Envoy's ext_authz over HTTP (`authz_http`): loopback TCP and/or a Unix socket.
    pub authz_http: Option<TcpListener>,
    pub authz_http_uds: Option<UnixListener>,
}

/// Serve until `shutdown` completes, then drain.
pub async fn serve(
    authz: Current,
    plugin: crate::in_proxy::PluginDigest,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let stopping = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let grpc = |mut builder: tonic::transport::Server| {
        builder
            // Decoding only the CheckRequest fields Baton reads (`check_wire`, issue 15).
            .add_service(CheckServer::new(CheckService { authz: authz.clone() }))
            .add_service(ExternalProcessorServer::new(ExtProcService::new(authz.clone())))
            .add_service(DelegationBrokerServer::new(Broker::new(authz.clone())))
            .add_service(crate::in_proxy::service(authz.clone(), plugin.clone()))
    };
    let mut tasks: tokio::task::JoinSet<Result<(), BoxError>> = tokio::task::JoinSet::new();
    match (listeners.grpc, listeners.grpc_tls) {
        (Some(tcp), Some(tls)) => {
            // A connection lives at most MAX_CONNECTION_AGE, so that a caller whose certificate
            // expired, or whose CA or identity is no longer trusted, is verified again soon.
            let builder = tonic::transport::Server::builder()
                .max_connection_age(crate::tls::MAX_CONNECTION_AGE)
                .max_connection_age_grace(crate::tls::MAX_CONNECTION_AGE_GRACE);
            let tls = grpc(builder).serve_with_incoming_shutdown(tls.incoming(tcp), stopped(stop_rx.clone()));
            tasks.spawn(async move { Ok(tls.await?) });
        }
        (Some(tcp), None) => {
            // Without TCP_NODELAY a reply written in two segments waits for Envoy's delayed ACK (~40 ms).
            let incoming = TcpIncoming::from(tcp).with_nodelay(Some(true));
            // A reply in one write, not two (`one_write`).
            let incoming = tokio_stream::StreamExt::map(incoming, |s| s.map(crate::one_write::OneWrite));
            let tcp = grpc(tonic::transport::Server::builder())
                .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
            tasks.spawn(async move { Ok(tcp.await?) });
        }
        (None, _) => {}
    }
    if let Some(uds) = listeners.grpc_uds {
        let incoming =
            tokio_stream::StreamExt::map(UnixListenerStream::new(uds), |s| s.map(crate::one_write::OneWrite));
        let uds =
            grpc(tonic::transport::Server::builder()).serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
        tasks.spawn(async move { Ok(uds.await?) });
    }
    if let Some(tcp) = listeners.authz_http {
        let serving = crate::authz_http::serve_tcp(authz.clone(), tcp, stop_rx.clone());
        tasks.spawn(async move {
            serving.await;
            Ok(())
        });
    }
    if let Some(uds) = listeners.authz_http_uds {
        let serving = crate::authz_http::serve_uds(authz.clone(), uds, stop_rx.clone());
        tasks.spawn(async move {
            serving.await;
            Ok(())
        });
    }
    if let Some(admin) = listeners.admin {
        let router = admin_router(authz.clone(), stopping.clone());
        let rx = stop_rx.clone();
        tasks.spawn(async move { Ok(axum::serve(admin, router).with_graceful_shutdown(stopped(rx)).await?) });
    }

    shutdown.await;
    tracing::info!("shutting down: not ready, draining in-flight requests");
    stopping.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e, "server stopped with an error");
        }
    }
    Ok(())
}

// === impl CheckService ===

struct CheckService {
    authz: Current,
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(
            check(&self.authz.load_full(), request.metadata(), request.get_ref()).await,
        ))
    }
}

/// One Check, from the request to the reply, observed (span, metrics, audit line, Envoy dynamic
/// metadata). `metadata` is the gRPC call's, where Envoy puts the `traceparent` of its own span.
pub async fn check(authz: &Authz, metadata: &tonic::metadata::MetadataMap, request: &CheckRequest) -> CheckResponse {
    let check = extract::Check::new(request);
    let outbound = check.outbound();
    outcome::decide(authz, Api::Check, metadata, outbound.as_ref(), respond::check_reply).await
}

// === admin ===

fn admin_router(authz: Current, stopping: Arc<AtomicBool>) -> axum::Router {
    use axum::routing::{get, post};
    let metrics = authz.clone();
    let revoking = authz.clone();
    let (logouts, replays) = (authz.clone(), Arc::new(baton_core::logout::Replays::new()));
    axum::Router::new()
        .merge(crate::ssf::router(authz.clone()))
        .route(
            "/backchannel-logout",
            post(move |headers, body| crate::backchannel::logout(logouts.load_full(), replays.clone(), headers, body)),
        )
        .route(
            "/revoke",
            post(move |headers, body| revoke(revoking.load_full(), headers, body)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = !stopping.load(Ordering::SeqCst) && authz.load().token_services().ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let authz = metrics.load_full();
                async move {
                    let telemetry = authz.telemetry();
                    let entries = i64::try_from(authz.cache().entry_count()).unwrap_or(i64::MAX);
                    telemetry.metrics().cache_entries.set(entries);
                    authz.revocations().expire(baton_core::clock::unix_now());
                    telemetry.revocations_held(authz.revocations());
                    (
                        [(axum::http::header::CONTENT_TYPE, baton_core::metrics::CONTENT_TYPE)],
                        telemetry.encode_metrics(),
                    )
                }
            }),
        )
}

/// `POST /revoke`: the operator's revocation signal. Off (404) without
/// `revocation.admin_secret_file`; 401 without its bearer secret; 400 with a stable `error` code for
/// a body that is not exactly one selector; 503 `revocation_store_full`. Nothing changes unless it
/// answers 200 with the entries purged.
async fn revoke(
    authz: Arc<baton_core::authz::Authz>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use baton_core::revocation::{MAX_REQUEST_BYTES, Selector};
    let answer = |status: StatusCode, body: serde_json::Value| (status, axum::Json(body)).into_response();
    let refuse = |status: StatusCode, code: &str, message: &str| {
        answer(status, serde_json::json!({ "error": code, "message": message }))
    };
    let settings = authz.revocation_settings();
    if settings.admin_secret.is_none() {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "revocation.admin_secret_file is not configured",
        );
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !settings.admits(presented) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "POST /revoke needs `Authorization: Bearer` with the admin secret",
        );
    }
    // One byte past the bound is enough to know it is too long.
    let bytes = match axum::body::to_bytes(body, MAX_REQUEST_BYTES + 1).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "body_too_large",
                &format!("the body is longer than {MAX_REQUEST_BYTES} bytes"),
            );
        }
    };
    let selector = match Selector::from_json(&bytes) {
        Ok(selector) => selector,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.code, &e.message),
    };
    if let Selector::Destination { name } = &selector
        && authz.route_for(name, &[]).is_err()
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "destination_not_configured",
            "no destination has this name",
        );
    }
    match authz.revoke("operator", &selector) {
        Ok(purged) => answer(
            StatusCode::OK,
            serde_json::json!({
                "revoked": selector.kind(),
                "purged": purged,
                "remembered": authz.revocations().len(),
                "max_entries": authz.revocations().max_entries(),
            }),
        ),
        Err(full) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "revocation_store_full",
            &full.to_string(),
        ),
    }
}
