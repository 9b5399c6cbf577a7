//! Credentials in memory. `Secret` holds a token, client secret or key and prints only a short
//! fingerprint, so a `{:?}` in a log line or an error can never leak it. Nothing here writes a
//! secret anywhere; `expose` is the one door, used where the bytes go on the wire.

use std::fmt;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A credential whose Debug and Display print `sha256:<first 8 bytes, base64url>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        // A boxed str is exactly its length: no spare capacity kept for the life of a cached token.
        Self(value.into().into_boxed_str())
    }

    /// The raw value, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }

    /// Does `presented` (an `Authorization` value) carry this secret as its bearer credential? Both
    /// are hashed first, so the comparison takes the same time whatever their lengths and contents.
    pub fn admits_bearer(&self, presented: Option<&str>) -> bool {
        let Some(bearer) = presented
            .and_then(|p| p.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, b)| b.trim())
        else {
            return false;
        };
        let hash = |s: &str| digest::digest(&digest::SHA256, s.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(hash(bearer).as_ref(), hash(&self.0).as_ref()).is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", fingerprint(&self.0))
    }
}

/// A short, one-way name for a credential: enough to correlate log lines, useless to an attacker.
pub fn fingerprint(value: &str) -> String {
    let digest = digest::digest(&digest::SHA256, value.as_bytes());
    format!("sha256:{}", URL_SAFE_NO_PAD.encode(&digest.as_ref()[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_a_fingerprint_not_the_value() {
        let secret = Secret::new("eyJhbGciOiJFUzI1NiJ9.payload.signature");
        let printed = format!("{secret:?}");
        assert!(!printed.contains("payload"), "{printed}");
        assert!(printed.starts_with("Secret(sha256:"), "{printed}");
        assert_eq!(secret.fingerprint(), fingerprint(secret.expose()));
        assert_ne!(fingerprint("a"), fingerprint("b"));
    }
}
