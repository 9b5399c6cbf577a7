//! `baton.v1.DelegationBroker`: the same destinations, cache and token service as the Envoy path,
//! for callers that hand Baton a user's token directly (batch jobs, async workers). Refusals are
//! gRPC errors here (there is no Envoy to answer for), with the same reason codes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::authz::{Allow, Authz};
use crate::config::is_scope_token;
use crate::extract::check_token;
use crate::reason::{Denial, Reason};
use crate::telemetry::{Api, Decided};

pub mod pb {
    tonic::include_proto!("baton.v1");
}

use pb::delegation_broker_server::DelegationBroker;
use pb::{ExchangeRequest, ExchangeResponse};

#[derive(Debug)]
pub struct Broker {
    authz: Arc<Authz>,
}

impl Broker {
    pub fn new(authz: Arc<Authz>) -> Self {
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
        let observation = self.authz.telemetry().observe(Api::Broker, request.metadata(), None);
        let request = request.into_inner();
        let route = self.authz.route_for(&request.destination, &request.scopes);
        let outcome = match (
            check_token(&request.subject_token, self.authz.max_token_bytes()),
            &route,
        ) {
            (Err(denial), _) => Err(denial),
            (Ok(_), None) => Err(Denial::new(
                Reason::DestinationNotConfigured,
                "no destination has this name",
            )),
            (Ok(subject), Some(route)) => {
                observation
                    .run(self.authz.delegate(route, subject))
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
            source: None,
        });
        match outcome {
            Ok(Allow::Delegate { token, .. }) => Ok(Response::new(ExchangeResponse {
                access_token: token.token.expose().to_owned(),
                issued_token_type: token.issued_token_type.clone().unwrap_or_default(),
                token_type: token.token_type.clone(),
                expires_at: i64::try_from(token.expires_at).unwrap_or(i64::MAX),
                scope: token.scope.clone().unwrap_or_default(),
            })),
            // `delegate` only ever delegates.
            Ok(Allow::Strip | Allow::Passthrough) => Err(Status::internal("no token was delegated")),
            Err(denial) => Err(status(&denial)),
        }
    }
}

fn status(denial: &Denial) -> Status {
    Status::new(denial.reason.class().grpc_code(), denial.to_string())
}
