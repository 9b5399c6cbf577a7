//! The filter's side of `baton.v1.InProxy` (crates/baton-envoy/proto/baton/v1/in_proxy.proto),
//! written by hand with prost (no protoc, no build script in a Wasm crate): the same field numbers,
//! held to the sidecar's generated code by tests/wasm.rs. Also the `GrpcService` message Envoy
//! takes to name the sidecar's cluster.

use prost::Message as _;

pub const SERVICE: &str = "baton.v1.InProxy";
pub const DECIDE: &str = "Decide";
pub const EPOCH: &str = "Epoch";
pub const PURGE: &str = "Purge";
/// A reply larger than this is a bad answer (a token, 8 KiB of claims, a denial body).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DecideRequest {
    #[prost(string, tag = "1")]
    pub authority: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(string, tag = "3")]
    pub path: String,
    #[prost(message, repeated, tag = "4")]
    pub headers: Vec<Header>,
}

/// `DecideReply.action`.
pub mod action {
    pub const DENY: i32 = 0;
    pub const DELEGATE: i32 = 1;
    pub const STRIP: i32 = 2;
    pub const PASSTHROUGH: i32 = 3;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DecideReply {
    #[prost(int32, tag = "1")]
    pub action: i32,
    #[prost(string, tag = "2")]
    pub authorization: String,
    #[prost(uint64, tag = "3")]
    pub expires_at: u64,
    #[prost(string, tag = "4")]
    pub claims: String,
    #[prost(uint32, tag = "5")]
    pub status: u32,
    #[prost(string, tag = "6")]
    pub reason: String,
    #[prost(string, tag = "7")]
    pub body: String,
    #[prost(message, repeated, tag = "8")]
    pub headers: Vec<Header>,
    #[prost(string, tag = "9")]
    pub destination: String,
    #[prost(uint64, tag = "10")]
    pub generation: u64,
    /// The sidecar's cache entry that served the delegation (a digest), for a later Purge.
    #[prost(bytes = "vec", tag = "11")]
    pub served: Vec<u8>,
    /// The issued token's fingerprint (never the token), for a later Purge.
    #[prost(string, tag = "12")]
    pub issued: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EpochRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EpochReply {
    #[prost(uint64, tag = "1")]
    pub generation: u64,
    /// The sidecar's `baton_decide::key::plugin_digest` of the plugin configuration its file generates.
    #[prost(bytes = "vec", tag = "2")]
    pub config: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PurgeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub served: Vec<u8>,
    #[prost(string, tag = "2")]
    pub issued: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PurgeReply {
    #[prost(bool, tag = "1")]
    pub purged: bool,
    #[prost(uint64, tag = "2")]
    pub generation: u64,
}

/// `envoy.config.core.v3.GrpcService` with `envoy_grpc.cluster_name`: what `dispatch_grpc_call`
/// takes as its upstream (a bare cluster name can be mistaken for a serialized message).
#[derive(Clone, PartialEq, prost::Message)]
struct GrpcService {
    #[prost(message, optional, tag = "1")]
    envoy_grpc: Option<EnvoyGrpc>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    cluster_name: String,
}

/// The serialized GrpcService for `cluster` (ASCII, validated by `config`, so the bytes are text).
pub fn grpc_service(cluster: &str) -> String {
    let bytes = GrpcService {
        envoy_grpc: Some(EnvoyGrpc {
            cluster_name: cluster.to_owned(),
        }),
    }
    .encode_to_vec();
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_service_names_the_cluster() {
        let s = grpc_service("baton");
        assert_eq!(s.as_bytes(), b"\x0a\x07\x0a\x05baton");
    }

    #[test]
    fn a_reply_round_trips() {
        let reply = DecideReply {
            action: action::DELEGATE,
            authorization: "Bearer x".to_owned(),
            generation: 7,
            ..Default::default()
        };
        let back = DecideReply::decode(reply.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back, reply);
    }
}
