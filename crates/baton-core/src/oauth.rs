//! The OAuth names Baton speaks (token-type URNs, grant types, the client-assertion type): one
//! spelling each, shared by the client (`exchange`), the verifier, the cache key and the development
//! token service. Constants only.

/// RFC 8693 section 3.
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// RFC 8693 section 2.1.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 7523 section 2.1, the grant Entra ID's on-behalf-of flow uses.
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// RFC 7523 section 2.2.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
