//! What a delegated answer must carry, judged the same way by both load drivers (`load`, closed
//! loop, and `open_loop`'s soak): the upstream received exactly one bearer token, not the user's,
//! a JWT for the destination's audience on behalf of the user, not expired. Unverified: the drivers
//! verify signatures apart (`TokenService::verify`, the soak's JWKS pass). Never registers or logs
//! the token; the caller decides which tokens the leak scans learn.

use serde_json::Value;

use crate::tokens::{audiences, jwt_claims, unix_now};

/// What the upstream must have received for one request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Delegation<'a> {
    /// The user's own token, which must never reach the upstream.
    pub(crate) user_token: &'a str,
    pub(crate) sub: &'a str,
    pub(crate) aud: &'a str,
    /// The issuer the token must name, if the test knows it.
    pub(crate) issuer: Option<&'a str>,
}

impl Delegation<'_> {
    /// The token the upstream received (the echo's JSON `body`), if it is what this delegation
    /// should have produced; otherwise what is wrong with it.
    pub(crate) fn check<'b>(&self, body: &'b Value) -> Result<&'b str, String> {
        if body["authorization_count"] != 1 {
            return Err(format!(
                "{} Authorization headers upstream",
                body["authorization_count"]
            ));
        }
        let token = body["authorization"]
            .as_str()
            .ok_or("no Authorization upstream")?
            .strip_prefix("Bearer ")
            .ok_or("not a bearer token upstream")?;
        if token == self.user_token {
            return Err("the user's own token reached the upstream".into());
        }
        let claims = jwt_claims(token).ok_or("the upstream's token is not a JWT")?;
        if audiences(&claims) != [self.aud] {
            return Err(format!("aud {:?}", audiences(&claims)));
        }
        if claims["sub"] != self.sub {
            return Err(format!("sub {}", claims["sub"]));
        }
        if let Some(issuer) = self.issuer
            && claims["iss"] != issuer
        {
            return Err(format!("iss {}", claims["iss"]));
        }
        // Never served past its life.
        let now = unix_now();
        match claims["exp"].as_u64() {
            Some(exp) if exp > now => Ok(token),
            exp => Err(format!("exp {exp:?} is not after now ({now})")),
        }
    }
}
