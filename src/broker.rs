//! `baton.v1.DelegationBroker`: the same destinations, cache and token service as the Envoy path,
//! for callers that hand Baton a user's token directly (batch jobs, async workers). Refusals are
//! gRPC errors here (there is no Envoy to answer for), with the same reason codes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::authz::Authz;
use crate::config::is_scope_token;
use crate::extract::check_token;
use crate::reason::{Denial, Reason};

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
        let request = request.into_inner();
        let subject = check_token(&request.subject_token, self.authz.max_token_bytes()).map_err(|d| status(&d))?;
        if let Some(bad) = request.scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(Status::invalid_argument(format!("`{bad}` is not a valid scope")));
        }
        let route = self
            .authz
            .route_for(&request.destination, &request.scopes)
            .ok_or_else(|| {
                status(&Denial::new(
                    Reason::DestinationNotConfigured,
                    "no destination has this name",
                ))
            })?;
        let (token, _cache) = self.authz.delegate(&route, subject).await.map_err(|d| status(&d))?;
        Ok(Response::new(ExchangeResponse {
            access_token: token.token.expose().to_owned(),
            issued_token_type: token.issued_token_type.clone().unwrap_or_default(),
            token_type: token.token_type.clone(),
            expires_at: i64::try_from(token.expires_at).unwrap_or(i64::MAX),
            scope: token.scope.clone().unwrap_or_default(),
        }))
    }
}

fn status(denial: &Denial) -> Status {
    Status::new(denial.reason.class().grpc_code(), denial.to_string())
}
