//! Baton's own gRPC API (`baton.v1.DelegationBroker/Exchange`) from the caller's side, and the
//! guarded broker the broker, trust and adversarial tests stand up alike: callers told from users by
//! an audience of their own and a client allow-list, `baton sts` as the issuer of both kinds of
//! token and as the token service. Never logs the tokens it sends.

use baton_envoy::broker::pb::delegation_broker_client::DelegationBrokerClient;
use baton_envoy::broker::pb::{ExchangeRequest, ExchangeResponse};
use tonic::transport::Channel;

use crate::config::{BILLING, ORDERS, basic_auth_to};
use crate::leaks;
use crate::scratch::Scratch;
use crate::sidecar::Baton;
use crate::token_service::{Peer, TokenService};
use crate::tokens::bearer;

/// The audience of a broker caller's token (`broker.caller_audience`).
pub const CALLER_AUDIENCE: &str = "baton-broker";
/// The one client the guarded broker lists (`broker.caller_client_ids`).
pub const CALLER_CLIENT: &str = "batch-worker";

/// A client of the broker on Baton's gRPC port.
pub async fn broker_client(grpc: u16) -> DelegationBrokerClient<Channel> {
    DelegationBrokerClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("connect to the broker")
}

/// The request for `subject`'s token to `destination`, narrowed to `scopes`; with `caller`'s token
/// as `Bearer` in the call's `authorization` metadata, if given.
pub fn broker_request(
    caller: Option<&str>,
    subject: &str,
    destination: &str,
    scopes: &[&str],
) -> tonic::Request<ExchangeRequest> {
    let mut request = tonic::Request::new(ExchangeRequest {
        subject_token: subject.to_owned(),
        destination: destination.to_owned(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    });
    if let Some(caller) = caller {
        leaks::secret(caller);
        request
            .metadata_mut()
            .insert("authorization", bearer(caller).parse().expect("metadata"));
    }
    request
}

/// One exchange through the broker (see `broker_request`).
pub async fn broker_exchange(
    client: &mut DelegationBrokerClient<Channel>,
    caller: Option<&str>,
    subject: &str,
    destination: &str,
    scopes: &[&str],
) -> Result<ExchangeResponse, tonic::Status> {
    let request = broker_request(caller, subject, destination, scopes);
    client.exchange(request).await.map(tonic::Response::into_inner)
}

/// Baton with a guarded broker: `baton sts` (`idp`) is the trusted issuer (audiences `frontend`
/// and `CALLER_AUDIENCE`) and the token service; `orders` (scope `orders.read`) and `billing`
/// (scope `invoices.read`, a caller may ask for `invoices.write` too); callers must be
/// `CALLER_CLIENT` with a token for `CALLER_AUDIENCE`.
#[derive(Debug)]
pub struct GuardedBroker {
    pub idp: TokenService,
    pub baton: Baton,
}

impl GuardedBroker {
    pub async fn start(scratch: &Scratch) -> Self {
        let idp = TokenService::start(Peer::BatonSts, scratch).await;
        let token_service = basic_auth_to(scratch, &format!("token_endpoint: {}", idp.token_endpoint));
        let body = format!(
            r#"token_service:
{token_service}
trusted_issuers:
  - issuer: {issuer}
    audiences: [frontend, {CALLER_AUDIENCE}]
destinations:
  - name: orders
    audience: {ORDERS}
    scopes: [orders.read]
  - name: billing
    audience: {BILLING}
    scopes: [invoices.read]
    broker_allowed_scopes: [invoices.read, invoices.write]
broker:
  callers: authenticated
  caller_audience: {CALLER_AUDIENCE}
  caller_client_ids: [{CALLER_CLIENT}]
"#,
            issuer = idp.issuer
        );
        let baton = Baton::start_raw(scratch, &body, "baton=debug,info").await;
        Self { idp, baton }
    }

    pub async fn client(&self) -> DelegationBrokerClient<Channel> {
        broker_client(self.baton.grpc).await
    }

    /// A token of the trusted issuer (see `mint_for`).
    pub async fn token(&self, sub: &str, aud: &str, claims: &str, extra: &[(&str, &str)]) -> String {
        mint_for(&self.idp, sub, aud, claims, extra).await
    }
}

/// A token of `service` for `sub` with this `aud`, `claims` (a JSON object) and further mint
/// fields, holding every scope the guarded broker's destinations name.
pub async fn mint_for(service: &TokenService, sub: &str, aud: &str, claims: &str, extra: &[(&str, &str)]) -> String {
    let mut form = vec![
        ("sub", sub),
        ("aud", aud),
        ("scope", "orders.read invoices.read invoices.write"),
        ("claims", claims),
    ];
    form.extend_from_slice(extra);
    service.mint_with(&form).await
}
