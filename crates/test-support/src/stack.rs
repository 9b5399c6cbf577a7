//! A whole stack in one call: a token service, Baton, the upstream and the real Envoy in one scratch
//! directory.

use std::path::Path;
use std::sync::Arc;

use crate::client::{Reply, send};
use crate::envoy::{Api, Envoy};
use crate::scratch::Scratch;
use crate::sidecar::Baton;
use crate::token_service::{Peer, TokenService};
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Stack {
    pub service: TokenService,
    pub baton: Baton,
    pub upstream: Upstream,
    pub envoy: Envoy,
    pub scratch: Arc<Scratch>,
}

impl Stack {
    /// A stack whose Envoy asks Baton by ext_authz; `baton` is the binary under test.
    pub async fn start(baton: impl AsRef<Path>, peer: Peer, name: &str) -> Self {
        Self::start_for(baton, Api::ExtAuthz, peer, name).await
    }

    /// A stack whose Envoy asks Baton through `api`.
    pub async fn start_for(bin: impl AsRef<Path>, api: Api, peer: Peer, name: &str) -> Self {
        let scratch = Arc::new(Scratch::new(bin.as_ref(), name));
        let service = TokenService::start(peer, &scratch).await;
        let baton = Baton::start(&scratch, &service.token_endpoint, "").await;
        let upstream = Upstream::start().await;
        let envoy = Envoy::start_for(api, &scratch, baton.port_for(api), upstream.port).await;
        Self {
            service,
            baton,
            upstream,
            envoy,
            scratch,
        }
    }

    /// A GET through Envoy with this Host and Authorization.
    pub async fn get(&self, host: &str, path: &str, authorization: Option<&str>) -> Reply {
        send(&self.envoy, host, path, authorization).await
    }
}
