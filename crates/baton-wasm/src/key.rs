//! The filter's cache key: the destination's parameter digest and the subject token's SHA-256
//! (`baton_decide::key::{params_digest, digest}`). A pair rather than one digest of both: a hit
//! then hashes the token once (its SHA-256 is most of the filter's own work on a hit), and two
//! keys are equal exactly when both digests are. It never holds a token, only its digest.

/// (destination parameter digest, subject token SHA-256).
pub type Key = (baton_decide::key::Key, baton_decide::key::Key);
