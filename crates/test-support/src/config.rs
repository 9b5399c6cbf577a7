//! The configuration the tests share: the client's credentials, the destinations' audiences, and
//! the sections of Baton's YAML that every test writes the same way.

use crate::scratch::Scratch;

pub const CLIENT_ID: &str = "baton";
pub const CLIENT_SECRET: &str = "baton-secret";
pub const ORDERS: &str = "https://orders.example";
pub const BILLING: &str = "https://billing.example";
/// An audience no token service here will issue for.
pub const FORBIDDEN: &str = "https://forbidden.example";

/// A `token_service:` body: `locator` (`token_endpoint: URL` or `issuer: URL`), client_secret_basic.
pub fn basic_auth_to(scratch: &Scratch, locator: &str) -> String {
    let secret = scratch.write("baton-client-secret", CLIENT_SECRET);
    format!(
        "  {locator}\n  client_id: {CLIENT_ID}\n  auth:\n    method: client_secret_basic\n    secret_file: {}\n  timeout: 1s",
        secret.display()
    )
}
