//! Why a request was denied: one stable, low-cardinality code per cause, shared by the Envoy reply,
//! the log line and (later) the audit record and metric label. This module owns the code, its HTTP
//! status and its gRPC code; it never holds request data, so a `Denial` cannot carry a token.

use std::borrow::Cow;
use std::fmt;

/// Every reason Baton refuses a request. `as_str` is the wire name: never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    // The caller's token (401).
    MissingToken,
    MultipleAuthorizationHeaders,
    UnsupportedAuthorizationScheme,
    EmptyToken,
    MalformedToken,
    TokenTooLarge,
    SubjectTokenExpired,
    /// The token service said `invalid_grant`: it does not accept the subject token.
    SubjectTokenRejected,
    // Baton's own verification of the subject token (401).
    SubjectTokenMalformed,
    SubjectTokenUnsigned,
    SubjectTokenAlgorithmNotAllowed,
    SubjectTokenIssuerUntrusted,
    SubjectTokenKeyUnknown,
    SubjectTokenSignatureInvalid,
    SubjectTokenNotYetValid,
    SubjectTokenAudienceMismatch,
    SubjectTokenOpaque,
    /// The subject token's JOSE header lists in `crit` a parameter Baton does not understand
    /// (RFC 7515 section 4.1.11).
    SubjectTokenCritUnsupported,
    /// Introspection (RFC 7662) says the token is not active.
    SubjectTokenInactive,
    /// The subject (or its session) was revoked after this token was issued (`revocation`).
    SubjectRevoked,
    /// No signing keys of the issuer could be fetched yet.
    IssuerKeysUnavailable,
    /// The broker API's caller did not authenticate.
    CallerUnauthenticated,
    /// The broker API's caller presented a verified token that is not a caller's (a user's token,
    /// or a client's without the broker's audience): `broker.caller_audience` /
    /// `caller_client_ids`.
    CallerNotWorkload,
    // Delegation policy (403): the reason names the rule that refused.
    SourceNotAllowed,
    ClaimRequirementFailed,
    MethodNotAllowed,
    PathNotAllowed,
    ScopeNotHeld,
    PolicyExpressionFalse,
    PolicyExpressionError,
    DelegationTooDeep,
    /// A broker call asked for a scope outside the destination's `broker_allowed_scopes`.
    ScopeNotAllowed,
    /// The broker API is off: the configuration has no `broker:` section.
    BrokerDisabled,
    // Where the request goes, and what the token service will grant (403).
    DestinationUnknown,
    DestinationNotConfigured,
    /// The token service said `invalid_target`.
    TargetRefused,
    /// The token service said `unauthorized_client`.
    ClientUnauthorized,
    /// The token service said `invalid_scope`.
    ScopeRefused,
    /// Envoy sent a CheckRequest without the HTTP attributes Baton needs.
    CheckRequestMalformed,
    /// The path has no canonical form (an encoded `/`, a backslash, a control character, an encoded or
    /// disguised dot segment, a bad escape, not origin-form, too long): path rules cannot judge it.
    PathNotCanonical,
    /// The authority is not a host name or bracketed IPv6 address with an optional port 1-65535
    /// written without leading zeros.
    AuthorityMalformed,
    /// The route names a destination whose `hosts` do not claim the request's authority.
    DestinationHostMismatch,
    // The token service could not give an answer (503). Fail closed.
    TokenServiceUnavailable,
    TokenServiceTimeout,
    TokenServiceError,
    TokenServiceBusy,
    /// The token service refused Baton's own client credentials (`invalid_client`): a
    /// deployment problem, not the caller's, so 503 rather than 401.
    TokenServiceClientRejected,
    TokenServiceBadResponse,
    /// The token service's circuit breaker is open: it failed too often lately, so Baton answers
    /// at once without calling it.
    TokenServiceCircuitOpen,
    /// The workload's own (actor) token could not be read or obtained.
    ActorTokenUnavailable,
    // The token service issued a token Baton will not use (503): the token service misbehaves, the
    // caller did nothing wrong. Never cached, never remembered as a refusal.
    /// The issued token is the subject token (or the actor token) itself.
    IssuedTokenIsSubjectToken,
    /// The issued JWT's `aud` does not name the audience or resource asked for.
    IssuedTokenAudienceMismatch,
    /// The issued JWT's `exp` has passed.
    IssuedTokenExpired,
    /// Baton sent an actor token, and the issued JWT's `act` does not name that actor.
    IssuedTokenActorMissing,
    /// More scope was granted than Baton asked for.
    IssuedTokenScopeExceeded,
    /// The issued JWT breaks a JWT rule (`crit`, a time that is not a NumericDate).
    IssuedTokenMalformed,
    /// An actor of the subject's or the issued token's `act` chain matches none of the
    /// destination's `allowed_actors` (403).
    ActorNotAllowed,
    /// `verify_issued`: the issued token's signature does not verify against the token service's
    /// keys (503).
    IssuedTokenSignatureInvalid,
    // Deferred jobs (`deferred`): Defer and Redeem on the broker API.
    /// A job grant presented to Redeem does not verify, or is not a grant Baton asked for.
    GrantInvalid,
    /// The job grant's `exp` has passed.
    GrantExpired,
    /// The job was revoked (`{"job": ...}`) after its grant was issued.
    JobRevoked,
    /// Redeem asked for a destination the job grant does not name.
    DestinationNotInGrant,
    /// A Defer or Redeem request is malformed (job id, destinations, max age).
    JobRequestInvalid,
    /// Deferred jobs are off: the configuration has no `deferred:` section.
    DeferredDisabled,
    /// A job grant was presented as an ordinary subject token: only Redeem may use it.
    GrantAsSubjectToken,
    /// The token service answered Defer with a token that does not carry the job's binding.
    IssuedGrantUnbound,
    /// Redeem by a broker caller other than the one the grant is bound to (`deferred.bind_caller`).
    GrantCallerMismatch,
    /// `deferred.introspection_endpoint` says the job grant is no longer active (401).
    GrantInactive,
    /// `deferred.introspection_endpoint` did not answer, or not as RFC 7662 says: fail closed (503).
    GrantIntrospectionFailed,
    // Identity chaining across trust domains (`profile: identity_chaining`).
    /// The home token service refused to issue the grant (an OAuth error) (403).
    ChainingGrantRefused,
    /// The home token service's answer for the grant is unusable (not a token response, an HTTP
    /// error) (503).
    ChainingGrantFailed,
    /// The grant is not a JWT for the foreign authorization server's audience, from the expected
    /// issuer, unexpired (503).
    ChainingGrantInvalid,
    /// The foreign authorization server refused the grant (RFC 7523 jwt-bearer) (403).
    ChainingAssertionRefused,
    // DPoP (RFC 9449) binding, `binding: dpop` destinations.
    /// The issued token is not DPoP-bound: `token_type` is not `DPoP`, or the JWT has no `cnf.jkt` (503).
    IssuedTokenNotDpopBound,
    /// The issued JWT's `cnf.jkt` names another key than Baton's (503).
    IssuedTokenJktMismatch,
    /// The subject token is itself DPoP-bound (`cnf`), and `dpop.bound_subject_tokens` is `refuse` (401).
    SubjectTokenBound,
    /// Baton could not sign a DPoP proof with its key (503).
    DpopProofUnavailable,
    /// In-proxy mode (`baton.wasm`): the filter could not get a decision from the Baton sidecar
    /// (unreachable, timed out, a bad answer), or has not heard its revocation epoch lately.
    SidecarUnavailable,
}

/// The class of a reason, which fixes the HTTP status and the gRPC code of the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Unauthenticated,
    PermissionDenied,
    Unavailable,
}

impl Reason {
    /// Every reason, for reading a wire name back (`from_name`): a test holds it to `as_str`.
    pub const ALL: [Reason; 78] = [
        Self::MissingToken,
        Self::MultipleAuthorizationHeaders,
        Self::UnsupportedAuthorizationScheme,
        Self::EmptyToken,
        Self::MalformedToken,
        Self::TokenTooLarge,
        Self::SubjectTokenExpired,
        Self::SubjectTokenRejected,
        Self::SubjectTokenMalformed,
        Self::SubjectTokenUnsigned,
        Self::SubjectTokenAlgorithmNotAllowed,
        Self::SubjectTokenIssuerUntrusted,
        Self::SubjectTokenKeyUnknown,
        Self::SubjectTokenSignatureInvalid,
        Self::SubjectTokenNotYetValid,
        Self::SubjectTokenAudienceMismatch,
        Self::SubjectTokenOpaque,
        Self::SubjectTokenCritUnsupported,
        Self::SubjectTokenInactive,
        Self::SubjectRevoked,
        Self::IssuerKeysUnavailable,
        Self::CallerUnauthenticated,
        Self::CallerNotWorkload,
        Self::ScopeNotAllowed,
        Self::BrokerDisabled,
        Self::SourceNotAllowed,
        Self::ClaimRequirementFailed,
        Self::MethodNotAllowed,
        Self::PathNotAllowed,
        Self::ScopeNotHeld,
        Self::PolicyExpressionFalse,
        Self::PolicyExpressionError,
        Self::DelegationTooDeep,
        Self::ActorTokenUnavailable,
        Self::DestinationUnknown,
        Self::DestinationNotConfigured,
        Self::TargetRefused,
        Self::ClientUnauthorized,
        Self::ScopeRefused,
        Self::CheckRequestMalformed,
        Self::PathNotCanonical,
        Self::AuthorityMalformed,
        Self::DestinationHostMismatch,
        Self::TokenServiceUnavailable,
        Self::TokenServiceTimeout,
        Self::TokenServiceError,
        Self::TokenServiceBusy,
        Self::TokenServiceClientRejected,
        Self::TokenServiceBadResponse,
        Self::TokenServiceCircuitOpen,
        Self::IssuedTokenIsSubjectToken,
        Self::IssuedTokenAudienceMismatch,
        Self::IssuedTokenExpired,
        Self::IssuedTokenActorMissing,
        Self::IssuedTokenScopeExceeded,
        Self::IssuedTokenMalformed,
        Self::ActorNotAllowed,
        Self::IssuedTokenSignatureInvalid,
        Self::GrantInvalid,
        Self::GrantExpired,
        Self::JobRevoked,
        Self::DestinationNotInGrant,
        Self::JobRequestInvalid,
        Self::DeferredDisabled,
        Self::GrantAsSubjectToken,
        Self::IssuedGrantUnbound,
        Self::GrantCallerMismatch,
        Self::GrantInactive,
        Self::GrantIntrospectionFailed,
        Self::ChainingGrantRefused,
        Self::ChainingGrantFailed,
        Self::ChainingGrantInvalid,
        Self::ChainingAssertionRefused,
        Self::IssuedTokenNotDpopBound,
        Self::IssuedTokenJktMismatch,
        Self::SubjectTokenBound,
        Self::DpopProofUnavailable,
        Self::SidecarUnavailable,
    ];

    /// The reason whose wire name is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MultipleAuthorizationHeaders => "multiple_authorization_headers",
            Self::UnsupportedAuthorizationScheme => "unsupported_authorization_scheme",
            Self::EmptyToken => "empty_token",
            Self::MalformedToken => "malformed_token",
            Self::TokenTooLarge => "token_too_large",
            Self::SubjectTokenExpired => "subject_token_expired",
            Self::SubjectTokenRejected => "subject_token_rejected",
            Self::SubjectTokenMalformed => "subject_token_malformed",
            Self::SubjectTokenUnsigned => "subject_token_unsigned",
            Self::SubjectTokenAlgorithmNotAllowed => "subject_token_algorithm_not_allowed",
            Self::SubjectTokenIssuerUntrusted => "subject_token_issuer_untrusted",
            Self::SubjectTokenKeyUnknown => "subject_token_key_unknown",
            Self::SubjectTokenSignatureInvalid => "subject_token_signature_invalid",
            Self::SubjectTokenNotYetValid => "subject_token_not_yet_valid",
            Self::SubjectTokenAudienceMismatch => "subject_token_audience_mismatch",
            Self::SubjectTokenOpaque => "subject_token_opaque",
            Self::SubjectTokenCritUnsupported => "subject_token_crit_unsupported",
            Self::SubjectTokenInactive => "subject_token_inactive",
            Self::SubjectRevoked => "subject_revoked",
            Self::IssuerKeysUnavailable => "issuer_keys_unavailable",
            Self::CallerUnauthenticated => "caller_unauthenticated",
            Self::CallerNotWorkload => "caller_not_workload",
            Self::ScopeNotAllowed => "scope_not_allowed",
            Self::BrokerDisabled => "broker_disabled",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::ClaimRequirementFailed => "claim_requirement_failed",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PathNotAllowed => "path_not_allowed",
            Self::ScopeNotHeld => "scope_not_held",
            Self::PolicyExpressionFalse => "policy_expression_false",
            Self::PolicyExpressionError => "policy_expression_error",
            Self::DelegationTooDeep => "delegation_too_deep",
            Self::ActorTokenUnavailable => "actor_token_unavailable",
            Self::DestinationUnknown => "destination_unknown",
            Self::DestinationNotConfigured => "destination_not_configured",
            Self::TargetRefused => "target_refused",
            Self::ClientUnauthorized => "client_unauthorized",
            Self::ScopeRefused => "scope_refused",
            Self::CheckRequestMalformed => "check_request_malformed",
            Self::PathNotCanonical => "path_not_canonical",
            Self::AuthorityMalformed => "authority_malformed",
            Self::DestinationHostMismatch => "destination_host_mismatch",
            Self::TokenServiceUnavailable => "token_service_unavailable",
            Self::TokenServiceTimeout => "token_service_timeout",
            Self::TokenServiceError => "token_service_error",
            Self::TokenServiceBusy => "token_service_busy",
            Self::TokenServiceClientRejected => "token_service_client_rejected",
            Self::TokenServiceBadResponse => "token_service_bad_response",
            Self::TokenServiceCircuitOpen => "token_service_circuit_open",
            Self::IssuedTokenIsSubjectToken => "issued_token_is_subject_token",
            Self::IssuedTokenAudienceMismatch => "issued_token_audience_mismatch",
            Self::IssuedTokenExpired => "issued_token_expired",
            Self::IssuedTokenActorMissing => "issued_token_actor_missing",
            Self::IssuedTokenScopeExceeded => "issued_token_scope_exceeded",
            Self::IssuedTokenMalformed => "issued_token_malformed",
            Self::ActorNotAllowed => "actor_not_allowed",
            Self::IssuedTokenSignatureInvalid => "issued_token_signature_invalid",
            Self::GrantInvalid => "grant_invalid",
            Self::GrantExpired => "grant_expired",
            Self::JobRevoked => "job_revoked",
            Self::DestinationNotInGrant => "destination_not_in_grant",
            Self::JobRequestInvalid => "job_request_invalid",
            Self::DeferredDisabled => "deferred_disabled",
            Self::GrantAsSubjectToken => "grant_as_subject_token",
            Self::IssuedGrantUnbound => "issued_grant_unbound",
            Self::GrantCallerMismatch => "grant_caller_mismatch",
            Self::GrantInactive => "grant_inactive",
            Self::GrantIntrospectionFailed => "grant_introspection_failed",
            Self::ChainingGrantRefused => "chaining_grant_refused",
            Self::ChainingGrantFailed => "chaining_grant_failed",
            Self::ChainingGrantInvalid => "chaining_grant_invalid",
            Self::ChainingAssertionRefused => "chaining_assertion_refused",
            Self::IssuedTokenNotDpopBound => "issued_token_not_dpop_bound",
            Self::IssuedTokenJktMismatch => "issued_token_jkt_mismatch",
            Self::SubjectTokenBound => "subject_token_bound",
            Self::DpopProofUnavailable => "dpop_proof_unavailable",
            Self::SidecarUnavailable => "sidecar_unavailable",
        }
    }

    /// The token service refused for a reason that will not change on a retry (the subject token,
    /// the target, the client, the scope), as opposed to failing to answer.
    pub const fn is_definite_refusal(self) -> bool {
        matches!(
            self,
            Self::SubjectTokenRejected
                | Self::TargetRefused
                | Self::ClientUnauthorized
                | Self::ScopeRefused
                | Self::ChainingGrantRefused
                | Self::ChainingAssertionRefused
        )
    }

    pub const fn class(self) -> Class {
        match self {
            Self::MissingToken
            | Self::MultipleAuthorizationHeaders
            | Self::UnsupportedAuthorizationScheme
            | Self::EmptyToken
            | Self::MalformedToken
            | Self::TokenTooLarge
            | Self::SubjectTokenExpired
            | Self::SubjectTokenRejected
            | Self::SubjectTokenMalformed
            | Self::SubjectTokenUnsigned
            | Self::SubjectTokenAlgorithmNotAllowed
            | Self::SubjectTokenIssuerUntrusted
            | Self::SubjectTokenKeyUnknown
            | Self::SubjectTokenSignatureInvalid
            | Self::SubjectTokenNotYetValid
            | Self::SubjectTokenAudienceMismatch
            | Self::SubjectTokenOpaque
            | Self::SubjectTokenCritUnsupported
            | Self::SubjectTokenInactive
            | Self::SubjectRevoked
            | Self::IssuerKeysUnavailable
            | Self::CallerUnauthenticated
            | Self::CallerNotWorkload
            | Self::GrantInvalid
            | Self::GrantExpired
            | Self::JobRevoked
            | Self::GrantAsSubjectToken
            | Self::GrantInactive
            | Self::SubjectTokenBound => Class::Unauthenticated,
            Self::DestinationUnknown
            | Self::DestinationNotConfigured
            | Self::TargetRefused
            | Self::ClientUnauthorized
            | Self::ScopeRefused
            | Self::CheckRequestMalformed
            | Self::PathNotCanonical
            | Self::AuthorityMalformed
            | Self::DestinationHostMismatch
            | Self::SourceNotAllowed
            | Self::ClaimRequirementFailed
            | Self::MethodNotAllowed
            | Self::PathNotAllowed
            | Self::ScopeNotHeld
            | Self::PolicyExpressionFalse
            | Self::PolicyExpressionError
            | Self::DelegationTooDeep
            | Self::ScopeNotAllowed
            | Self::BrokerDisabled
            | Self::ActorNotAllowed
            | Self::DestinationNotInGrant
            | Self::JobRequestInvalid
            | Self::DeferredDisabled
            | Self::GrantCallerMismatch
            | Self::ChainingGrantRefused
            | Self::ChainingAssertionRefused => Class::PermissionDenied,
            Self::TokenServiceUnavailable
            | Self::TokenServiceTimeout
            | Self::TokenServiceError
            | Self::TokenServiceBusy
            | Self::TokenServiceClientRejected
            | Self::TokenServiceBadResponse
            | Self::TokenServiceCircuitOpen
            | Self::ActorTokenUnavailable
            | Self::IssuedTokenIsSubjectToken
            | Self::IssuedTokenAudienceMismatch
            | Self::IssuedTokenExpired
            | Self::IssuedTokenActorMissing
            | Self::IssuedTokenScopeExceeded
            | Self::IssuedTokenMalformed
            | Self::IssuedTokenSignatureInvalid
            | Self::IssuedGrantUnbound
            | Self::GrantIntrospectionFailed
            | Self::ChainingGrantFailed
            | Self::ChainingGrantInvalid
            | Self::IssuedTokenNotDpopBound
            | Self::IssuedTokenJktMismatch
            | Self::DpopProofUnavailable
            | Self::SidecarUnavailable => Class::Unavailable,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Class {
    pub const fn http_status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::Unavailable => 503,
        }
    }
}

/// A refusal: the reason code and a sentence for a human. The sentence is built by Baton, never
/// copied from a token or from the token service's free text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub description: Cow<'static, str>,
    /// Whole seconds after which the same request may pass (`Retry-After` on the reply), when
    /// Baton knows: its circuit breaker is open, or the token service asked for a pause.
    pub retry_after: Option<u32>,
}

impl Denial {
    pub fn new(reason: Reason, description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason,
            description: description.into(),
            retry_after: None,
        }
    }

    /// Tell the caller to wait `wait`, rounded up to whole seconds (at least one).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX));
        self
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.description)
    }
}

impl std::error::Error for Denial {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_the_statuses_envoy_users_expect() {
        assert_eq!(Reason::MissingToken.class().http_status(), 401);
        assert_eq!(Reason::SubjectTokenRejected.class().http_status(), 401);
        assert_eq!(Reason::TargetRefused.class().http_status(), 403);
        assert_eq!(Reason::DestinationUnknown.class().http_status(), 403);
        assert_eq!(Reason::TokenServiceTimeout.class().http_status(), 503);
        assert_eq!(Reason::TokenServiceCircuitOpen.class().http_status(), 503);
    }

    /// `ALL` lists every reason `as_str` names, once, so every wire name reads back.
    #[test]
    fn all_reasons_read_back_from_their_names() {
        let source = include_str!("reason.rs");
        let names: Vec<&str> = source
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("Self::")?
                    .split_once(" => \"")?
                    .1
                    .strip_suffix("\",")
            })
            .collect();
        assert_eq!(Reason::ALL.len(), names.len());
        for name in names {
            let reason = Reason::from_name(name).unwrap_or_else(|| panic!("`{name}` is not in Reason::ALL"));
            assert_eq!(reason.as_str(), name);
        }
        assert_eq!(Reason::from_name("no_such_reason"), None);
    }

    /// Every wire name (read from `as_str` above) has a row in the reason table of
    /// docs/operations.md, so an operator can look up any code Baton sends.
    #[test]
    fn every_reason_is_in_the_operations_table() {
        let source = include_str!("reason.rs");
        let operations = include_str!("../../../docs/operations.md");
        let table: Vec<&str> = operations
            .lines()
            .filter(|l| l.starts_with("| 40") || l.starts_with("| 50"))
            .collect();
        let names: Vec<&str> = source
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("Self::")?
                    .split_once(" => \"")?
                    .1
                    .strip_suffix("\",")
            })
            .collect();
        assert!(names.len() > 40, "as_str was not read: {names:?}");
        let missing: Vec<&&str> = names
            .iter()
            .filter(|name| !table.iter().any(|row| row.contains(&format!("`{name}`"))))
            .collect();
        assert!(
            missing.is_empty(),
            "reasons without a row in docs/operations.md: {missing:?}"
        );
    }
}
