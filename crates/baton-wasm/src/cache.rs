//! The filter's own cache, one per Envoy worker (each worker runs its own Wasm VM): the sidecar's
//! answers for (destination, subject token), keyed by baton-decide's digests of both (never the token),
//! each until its expiry and only under the revocation generation it was made in. Bounded by
//! `max_entries`; it never serves an entry past its expiry or from an older generation.

use std::collections::HashMap;

use serde_json::{Map, Value};

pub use crate::key::Key;

/// One answer of the sidecar's, kept.
#[derive(Debug)]
pub struct Entry {
    /// `Bearer <token>`: what `Authorization` becomes. Never logged.
    pub authorization: String,
    /// Unix seconds: served while `now < expires_at`.
    pub expires_at: u64,
    /// The verified subject's claims the per-hit policy judges with (`None`: verification off).
    pub claims: Option<Map<String, Value>>,
    /// The sidecar's name for the delegation, for a Purge when the destination refuses it.
    pub served: Option<crate::purge::Handle>,
}

#[derive(Debug)]
pub struct Cache {
    entries: HashMap<Key, Entry>,
    max_entries: usize,
    /// The sidecar's revocation generation the entries were made under; `None` until one is known.
    generation: Option<u64>,
}

impl Cache {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            generation: None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// The entry for `key`, if it is still good at `now`; an expired one is dropped.
    pub fn get(&mut self, key: &Key, now: u64) -> Option<&Entry> {
        if self.entries.get(key).is_some_and(|e| e.expires_at <= now) {
            self.entries.remove(key);
        }
        self.entries.get(key)
    }

    /// Drop the entry for `key` if it still holds `authorization` (the delegation a destination
    /// refused, not a newer one): the sidecar's name for it, if it had one.
    pub fn forget(&mut self, key: &Key, authorization: &str) -> Option<crate::purge::Handle> {
        if self.entries.get(key)?.authorization != authorization {
            return None;
        }
        self.entries.remove(key)?.served
    }

    /// The epoch the sidecar answered: a different one (a revocation, a purge, a reload, or a
    /// restarted sidecar) drops everything.
    pub fn epoch(&mut self, generation: u64) {
        if self.generation != Some(generation) {
            self.entries.clear();
            self.generation = Some(generation);
        }
    }

    /// Keep an answer made under `generation`, unless it is older than the one known (a
    /// revocation came in between: it may be exactly what the revocation ended) or already
    /// expired. A newer generation drops everything else first. Full: expired entries go, and if
    /// none had, everything (a bound, not an eviction policy: refills cost one Decide each).
    pub fn insert(&mut self, key: Key, entry: Entry, generation: u64, now: u64) -> bool {
        match self.generation {
            Some(known) if generation < known => return false,
            Some(known) if generation == known => {}
            _ => {
                self.entries.clear();
                self.generation = Some(generation);
            }
        }
        if entry.expires_at <= now {
            return false;
        }
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires_at > now);
            if self.entries.len() >= self.max_entries {
                self.entries.clear();
            }
        }
        self.entries.insert(key, entry);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> Key {
        ([7; 32], [i; 32])
    }

    fn entry(expires_at: u64) -> Entry {
        Entry {
            authorization: "Bearer t".to_owned(),
            expires_at,
            claims: None,
            served: None,
        }
    }

    #[test]
    fn an_entry_is_served_until_its_expiry_only() {
        let mut cache = Cache::new(4);
        assert!(cache.insert(k(1), entry(100), 0, 10));
        assert!(cache.get(&k(1), 99).is_some());
        assert!(cache.get(&k(1), 100).is_none());
        assert!(cache.is_empty(), "an expired entry is dropped");
        assert!(!cache.insert(k(2), entry(10), 0, 10), "already expired: not kept");
    }

    #[test]
    fn a_new_epoch_drops_everything_and_an_older_answer_is_not_kept() {
        let mut cache = Cache::new(4);
        assert!(cache.insert(k(1), entry(100), 3, 0));
        cache.epoch(3);
        assert_eq!(cache.len(), 1, "the same epoch keeps the entries");
        cache.epoch(4);
        assert!(cache.is_empty(), "a revocation drops everything");
        assert!(!cache.insert(k(1), entry(100), 3, 0), "made before the revocation");
        assert!(cache.insert(k(1), entry(100), 5, 0));
        assert_eq!(cache.generation(), Some(5));
        cache.epoch(0);
        assert!(
            cache.is_empty(),
            "a restarted sidecar (a lower epoch) drops everything too"
        );
    }

    #[test]
    fn a_refused_delegation_is_forgotten_only_while_it_is_the_one_held() {
        let mut cache = Cache::new(4);
        let handle = crate::purge::Handle {
            served: vec![7; 32],
            issued: "sha256:abc".to_owned(),
        };
        let mut held = entry(100);
        held.served = Some(handle.clone());
        assert!(cache.insert(k(1), held, 0, 0));
        assert_eq!(cache.forget(&k(1), "Bearer other"), None, "a newer token is kept");
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.forget(&k(1), "Bearer t"), Some(handle));
        assert!(cache.is_empty());
        assert_eq!(cache.forget(&k(1), "Bearer t"), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = Cache::new(2);
        for i in 0..10u8 {
            assert!(cache.insert(k(i), entry(100), 0, 0));
            assert!(cache.len() <= 2);
        }
        assert!(cache.get(&k(9), 0).is_some(), "the newest entry is kept");
    }
}
