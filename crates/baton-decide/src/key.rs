//! Cache keys: SHA-256 digests of what identifies an exchange (the destination's parameters, the
//! scope asked for, the subject token). Pure, so the sidecar and an in-proxy filter derive the same
//! key from the same request. A key never holds a token, only its digest.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Key = [u8; 32];

/// Digest of the parameters that, with the subject token, identify an exchange. Each field is
/// length-prefixed so no two inputs can collide by moving a boundary.
pub fn params_digest(fields: &[&str]) -> Key {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().into()
}

/// SHA-256 of a subject token: computed once per request, it keys both the verification cache
/// and (inside `key`) the token cache.
pub fn digest(subject_token: &str) -> Key {
    Sha256::digest(subject_token.as_bytes()).into()
}

/// The cache key: the destination's parameter digest, the scope asked for when policy narrowed it
/// (else empty), then the subject token's digest.
pub fn key(params: &Key, scope: &str, subject_digest: &Key) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(params);
    hasher.update((scope.len() as u64).to_be_bytes());
    hasher.update(scope.as_bytes());
    hasher.update(subject_digest);
    hasher.finalize().into()
}

/// The cache key of a DPoP-bound token (`binding: dpop`): `key` with the RFC 7638 thumbprint of the
/// key it is bound to, so a rotated key never finds a token bound to the one before.
pub fn bound(key: &Key, thumbprint: &str) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(key);
    hasher.update(b"dpop");
    hasher.update((thumbprint.len() as u64).to_be_bytes());
    hasher.update(thumbprint.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(key: &Key) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The FIPS 180-2 vector, so keys are SHA-256 whatever library computes them.
    #[test]
    fn the_digest_is_sha256() {
        assert_eq!(
            hex(&digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn moving_a_field_boundary_changes_the_key() {
        assert_ne!(params_digest(&["ab", "c"]), params_digest(&["a", "bc"]));
        let params = params_digest(&["destination", "orders"]);
        let subject = digest("token");
        assert_ne!(key(&params, "", &subject), key(&params, "read", &subject));
        assert_eq!(key(&params, "read", &subject), key(&params, "read", &subject));
    }

    #[test]
    fn a_bound_key_changes_with_the_thumbprint() {
        let k = key(&params_digest(&["orders"]), "", &digest("token"));
        assert_ne!(bound(&k, "jkt-1"), k);
        assert_ne!(bound(&k, "jkt-1"), bound(&k, "jkt-2"));
        assert_eq!(bound(&k, "jkt-1"), bound(&k, "jkt-1"));
    }
}
