//! The `identity_chaining:` section of a token service with `profile: identity_chaining`: the
//! home token service that issues the grant, and what the grant must be. Validated here; the two
//! steps themselves are `exchange::chaining`'s. Holds no secret.

use serde::Deserialize;

use baton_decide::settings::Errors;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    /// The token service (by name) that issues the grant: the home authorization server.
    pub home: Option<String>,
    /// The grant's audience: the foreign authorization server's issuer identifier (default: this
    /// token service's `issuer`, as written).
    pub grant_audience: Option<String>,
    /// An RFC 8707 `resource` to ask the home service for, besides the audience.
    pub grant_resource: Option<String>,
    /// Scopes to ask the home service to put in the grant (space-separated).
    pub grant_scope: Option<String>,
    /// The grant's `iss` must be this (the home authorization server's issuer), when set.
    pub grant_issuer: Option<String>,
    /// Grants kept at once (default 10000).
    pub max_grants: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub home: String,
    pub grant_audience: String,
    pub grant_resource: Option<String>,
    pub grant_scope: Option<String>,
    pub grant_issuer: Option<String>,
    pub max_grants: u64,
}

impl Raw {
    /// `issuer`: the token service's own `issuer` setting, as written (the default audience).
    pub(crate) fn validate(self, issuer: Option<&str>, at: &str, errors: &mut Errors) -> Option<Settings> {
        let field = |name: &str| format!("{at}.{name}");
        let home = self.home.filter(|h| !h.is_empty());
        if home.is_none() {
            errors.add(field("home"), "is required: the token service that issues the grant");
        }
        let grant_audience = self.grant_audience.or_else(|| issuer.map(str::to_owned));
        match &grant_audience {
            None => errors.add(
                field("grant_audience"),
                "is required (the foreign authorization server's issuer), unless the token service sets `issuer`",
            ),
            Some(a) if a.is_empty() || a.len() > 2048 || a.chars().any(char::is_control) => {
                errors.add(field("grant_audience"), "must be 1 to 2048 printable characters");
            }
            Some(_) => {}
        }
        let scope = self.grant_scope.filter(|s| !s.trim().is_empty());
        if let Some(scope) = &scope
            && !scope
                .bytes()
                .all(|b| b == b' ' || (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        {
            errors.add(field("grant_scope"), "scopes are printable ASCII without `\"` or `\\`");
        }
        // RFC 8707 2: an absolute URI without a fragment.
        if let Some(resource) = &self.grant_resource
            && !url::Url::parse(resource).is_ok_and(|u| u.fragment().is_none())
        {
            errors.add(field("grant_resource"), "must be an absolute URI without a fragment");
        }
        let max_grants = self.max_grants.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_grants) {
            errors.add(field("max_grants"), "must be between 1 and 1000000");
        }
        Some(Settings {
            home: home?,
            grant_audience: grant_audience?,
            grant_resource: self.grant_resource,
            grant_scope: scope,
            grant_issuer: self.grant_issuer,
            max_grants,
        })
    }
}
