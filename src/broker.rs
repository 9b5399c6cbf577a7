//! `baton.v1.DelegationBroker`: the same destinations, verification, policy, cache and token service
//! as the Envoy path, for callers that hand Baton a user's token directly (batch jobs, async
//! workers that kept the user's token and ask at execution time, so the decision is made then). The
//! caller authenticates with a bearer token in the call's `authorization` metadata, verified like a
//! subject token; its `sub` is the policy's `source`. Refusals are gRPC errors here (there is no
//! Envoy to answer for), with the same reason codes.

use tonic::{Request, Response, Status};

use crate::authz::{Allow, Authz, Caller};
use crate::cache;
use crate::config::{BrokerCallers, is_scope_token};
use crate::extract::{Authorization, Headers, check_token, subject_token};
use crate::reason::{Denial, Reason};
use crate::reload::Current;
use crate::telemetry::{Api, Decided};

pub mod pb {
    tonic::include_proto!("baton.v1");
}

use pb::delegation_broker_server::DelegationBroker;
use pb::{ExchangeRequest, ExchangeResponse};

#[derive(Debug)]
pub struct Broker {
    authz: Current,
}

impl Broker {
    pub fn new(authz: Current) -> Self {
        Self { authz }
    }
}

#[tonic::async_trait]
impl DelegationBroker for Broker {
    async fn exchange(&self, request: Request<ExchangeRequest>) -> Result<Response<ExchangeResponse>, Status> {
        // A malformed call is not a delegation decision: refused before it is observed.
        if let Some(bad) = request.get_ref().scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(Status::invalid_argument(format!("`{bad}` is not a valid scope")));
        }
        let authz = self.authz.load_full();
        let observation = authz.telemetry().observe(Api::Broker, request.metadata(), None);
        let caller = caller(&authz, &request).await;
        let request = request.into_inner();
        let route = authz.route_for(&request.destination, &request.scopes);
        let source = caller.as_ref().ok().and_then(|c| c.as_deref());
        let outcome = match (
            &caller,
            check_token(&request.subject_token, authz.max_token_bytes()),
            &route,
        ) {
            (Err(denial), _, _) => Err(denial.clone()),
            (_, Err(denial), _) => Err(denial),
            (Ok(_), Ok(_), None) => Err(Denial::new(
                Reason::DestinationNotConfigured,
                "no destination has this name",
            )),
            (Ok(_), Ok(subject), Some(route)) => {
                // No HTTP request here: destinations with method or path rules refuse broker calls.
                let caller = Caller {
                    source,
                    method: "",
                    path: "",
                    headers: Headers::Lines(&[]),
                };
                observation
                    .run(authz.delegate(route, subject, &caller))
                    .await
                    .map(|(token, cache)| Allow::Delegate {
                        destination: route.clone(),
                        token,
                        cache,
                    })
            }
        };
        observation.finish(Decided {
            outcome: &outcome,
            destination: route.as_ref(),
            source,
        });
        match outcome {
            Ok(Allow::Delegate { token, .. }) => Ok(Response::new(ExchangeResponse {
                access_token: token.token().to_owned(),
                issued_token_type: token.issued_token_type().unwrap_or_default().to_owned(),
                token_type: token.token_type().to_owned(),
                expires_at: i64::try_from(token.expires_at).unwrap_or(i64::MAX),
                scope: token.scope().unwrap_or_default().to_owned(),
            })),
            // `delegate` only ever delegates.
            Ok(Allow::Strip | Allow::Passthrough) => Err(Status::internal("no token was delegated")),
            Err(denial) => Err(status(&denial)),
        }
    }
}

/// Who is calling: the verified `sub` of the call's bearer token, or under `callers: mtls` the
/// verified identity of its TLS client certificate (`None` under `callers: any`).
async fn caller(authz: &Authz, request: &Request<ExchangeRequest>) -> Result<Option<String>, Denial> {
    if authz.broker_callers == BrokerCallers::Any {
        return Ok(None);
    }
    if authz.broker_callers == BrokerCallers::Mtls {
        // Set only by the mutual-TLS listener, after the certificate chain and allow-list checks.
        return match request.extensions().get::<crate::tls::PeerIdentity>() {
            Some(peer) => Ok(Some(peer.identity.to_string())),
            None => Err(Denial::new(
                Reason::CallerUnauthenticated,
                "broker.callers is mtls and the call did not come over the mutual-TLS listener",
            )),
        };
    }
    let unauthenticated = |why: &'static str| Denial::new(Reason::CallerUnauthenticated, why);
    if !authz.verifies() {
        return Err(unauthenticated(
            "the broker authenticates callers against trusted_issuers, and none is configured",
        ));
    }
    let header = match request.metadata().get("authorization").map(|v| v.to_str()) {
        None => Authorization::Missing,
        Some(Ok(v)) => Authorization::One(v),
        Some(Err(_)) => return Err(unauthenticated("the caller's authorization metadata is not text")),
    };
    let token = subject_token(&header, authz.max_token_bytes())?
        .ok_or_else(|| unauthenticated("the call carries no bearer token of its caller"))?;
    let subject = authz.verify(token, &cache::digest(token)).await?;
    let sub = subject.as_deref().and_then(|s| s.sub()).map(str::to_owned);
    sub.map(Some)
        .ok_or_else(|| unauthenticated("the caller's token names no subject"))
}

fn status(denial: &Denial) -> Status {
    Status::new(denial.reason.class().grpc_code(), denial.to_string())
}
