//! The filter's own cache, one per Envoy worker (each worker runs its own Wasm VM): the sidecar's
//! answers by destination (its parameter digest) and subject token (the token itself, as
//! baton-decide's `request::subject_token` reads it, compared byte for byte), each until its expiry
//! and only under the revocation generation it was made in. Bounded by `max_entries`; it never
//! serves an entry past its expiry or from an older generation.
//!
//! Keyed by the token rather than by a digest of it: a hit then hashes the token with the map's
//! keyed SipHash instead of SHA-256 (most of the filter's own work per hit before), and two requests
//! share an entry exactly when their tokens are equal, with no hash to trust. The price is memory:
//! an entry holds the subject token beside the delegated one (`config::MAX_ENTRIES` bounds both).
//! Neither is ever logged.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

/// A destination's share of a cache key (`config::Destination::params`).
pub type Destination = baton_decide::key::Key;

/// One answer of the sidecar's, kept.
#[derive(Debug)]
pub struct Entry {
    /// `Bearer <token>`: what `Authorization` becomes. Never logged.
    pub authorization: Rc<str>,
    /// Unix seconds: served while `now < expires_at`.
    pub expires_at: u64,
    /// The verified subject's claims the per-hit policy judges with (`None`: verification off).
    pub claims: Option<Map<String, Value>>,
    /// The sidecar's name for the delegation, for a Purge when the destination refuses it.
    pub served: Option<crate::purge::Handle>,
}

/// Where one entry is, and which one it was (a later answer for the same token replaces it):
/// what a request that went out with it needs to forget it, without a copy of any token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    destination: Destination,
    token: Rc<str>,
    stamp: u64,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    stamp: u64,
}

#[derive(Debug)]
pub struct Cache {
    entries: HashMap<Destination, HashMap<Rc<str>, Slot>>,
    len: usize,
    max_entries: usize,
    /// The sidecar's revocation generation the entries were made under; `None` until one is known.
    generation: Option<u64>,
    /// Tells apart the entries one token has had, one after the other.
    next_stamp: u64,
}

impl Cache {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            len: 0,
            max_entries: max_entries.max(1),
            generation: None,
            next_stamp: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// The entry for `token` at `destination`, if it is still good at `now`, with where it is
    /// held. One lookup: an expired entry is left for the answer that replaces it, or for
    /// `insert`'s sweep when the cache is full.
    pub fn get(&self, destination: &Destination, token: &str, now: u64) -> Option<(&Entry, Held)> {
        let (token, slot) = self.entries.get(destination)?.get_key_value(token)?;
        if slot.entry.expires_at <= now {
            return None;
        }
        let held = Held {
            destination: *destination,
            token: token.clone(),
            stamp: slot.stamp,
        };
        Some((&slot.entry, held))
    }

    /// Drop the entry `held` names if it is still the one there (the delegation a destination
    /// refused, not a newer one): the sidecar's name for it, if it had one.
    pub fn forget(&mut self, held: &Held) -> Option<crate::purge::Handle> {
        let tokens = self.entries.get_mut(&held.destination)?;
        if tokens.get(&held.token)?.stamp != held.stamp {
            return None;
        }
        self.len -= 1;
        tokens.remove(&held.token)?.entry.served
    }

    /// The epoch the sidecar answered: a different one (a revocation, a purge, a reload, or a
    /// restarted sidecar) drops everything.
    pub fn epoch(&mut self, generation: u64) {
        if self.generation != Some(generation) {
            self.clear();
            self.generation = Some(generation);
        }
    }

    /// Keep an answer made under `generation`, unless it is older than the one known (a
    /// revocation came in between: it may be exactly what the revocation ended) or already
    /// expired. A newer generation drops everything else first. Full: expired entries go, and if
    /// none had, everything (a bound, not an eviction policy: refills cost one Decide each).
    /// Where it is held, if kept.
    pub fn insert(
        &mut self,
        destination: Destination,
        token: Rc<str>,
        entry: Entry,
        generation: u64,
        now: u64,
    ) -> Option<Held> {
        match self.generation {
            Some(known) if generation < known => return None,
            Some(known) if generation == known => {}
            _ => {
                self.clear();
                self.generation = Some(generation);
            }
        }
        if entry.expires_at <= now {
            return None;
        }
        let replaces = self
            .entries
            .get(&destination)
            .is_some_and(|tokens| tokens.contains_key(&token));
        if !replaces && self.len >= self.max_entries {
            for tokens in self.entries.values_mut() {
                tokens.retain(|_, slot| slot.entry.expires_at > now);
            }
            self.entries.retain(|_, tokens| !tokens.is_empty());
            self.len = self.entries.values().map(HashMap::len).sum();
            if self.len >= self.max_entries {
                self.clear();
            }
        }
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        let slot = Slot { entry, stamp };
        if self
            .entries
            .entry(destination)
            .or_default()
            .insert(token.clone(), slot)
            .is_none()
        {
            self.len += 1;
        }
        Some(Held {
            destination,
            token,
            stamp,
        })
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: Destination = [7; 32];

    fn token(i: u8) -> Rc<str> {
        format!("user-token-{i}").into()
    }

    fn entry(expires_at: u64) -> Entry {
        Entry {
            authorization: "Bearer t".into(),
            expires_at,
            claims: None,
            served: None,
        }
    }

    #[test]
    fn an_entry_is_served_until_its_expiry_only() {
        let mut cache = Cache::new(4);
        assert!(cache.insert(ORDERS, token(1), entry(100), 0, 10).is_some());
        assert!(cache.get(&ORDERS, &token(1), 99).is_some());
        assert!(cache.get(&ORDERS, &token(1), 100).is_none());
        let mut full = Cache::new(1);
        assert!(full.insert(ORDERS, token(1), entry(100), 0, 10).is_some());
        assert!(full.insert(ORDERS, token(2), entry(200), 0, 150).is_some());
        assert_eq!(full.len(), 1, "a full cache sweeps out what expired");
        assert!(full.get(&ORDERS, &token(2), 150).is_some());
        assert!(
            cache.insert(ORDERS, token(2), entry(10), 0, 10).is_none(),
            "already expired: not kept"
        );
    }

    #[test]
    fn only_the_same_token_at_the_same_destination_is_served() {
        let mut cache = Cache::new(4);
        assert!(cache.insert(ORDERS, token(1), entry(100), 0, 0).is_some());
        assert!(cache.get(&ORDERS, "user-token-1", 0).is_some());
        for other in ["user-token-", "user-token-10", "user-token-1 ", "USER-TOKEN-1", ""] {
            assert!(cache.get(&ORDERS, other, 0).is_none(), "{other:?}");
        }
        assert!(cache.get(&[8; 32], "user-token-1", 0).is_none(), "another destination");
    }

    #[test]
    fn a_new_epoch_drops_everything_and_an_older_answer_is_not_kept() {
        let mut cache = Cache::new(4);
        assert!(cache.insert(ORDERS, token(1), entry(100), 3, 0).is_some());
        cache.epoch(3);
        assert_eq!(cache.len(), 1, "the same epoch keeps the entries");
        cache.epoch(4);
        assert!(cache.is_empty(), "a revocation drops everything");
        assert!(
            cache.insert(ORDERS, token(1), entry(100), 3, 0).is_none(),
            "made before the revocation"
        );
        assert!(cache.insert(ORDERS, token(1), entry(100), 5, 0).is_some());
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
        let mut first = entry(100);
        first.served = Some(handle.clone());
        let refused = cache.insert(ORDERS, token(1), first, 0, 0).expect("kept");
        let (_, held) = cache.get(&ORDERS, &token(1), 0).expect("a hit");
        assert_eq!(held, refused, "a hit names the entry it was served");

        let newer = cache.insert(ORDERS, token(1), entry(100), 0, 0).expect("kept");
        assert_eq!(cache.forget(&refused), None, "a newer delegation is kept");
        assert_eq!(cache.len(), 1);

        let mut again = entry(100);
        again.served = Some(handle.clone());
        cache.insert(ORDERS, token(1), again, 0, 0).expect("kept");
        assert_eq!(cache.forget(&newer), None);
        let (_, held) = cache.get(&ORDERS, &token(1), 0).expect("a hit");
        assert_eq!(cache.forget(&held), Some(handle));
        assert!(cache.is_empty());
        assert_eq!(cache.forget(&held), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = Cache::new(2);
        for i in 0..10u8 {
            let destination = [i % 3; 32];
            assert!(cache.insert(destination, token(i), entry(100), 0, 0).is_some());
            assert!(cache.len() <= 2);
        }
        assert!(cache.get(&[0; 32], &token(9), 0).is_some(), "the newest entry is kept");
        let before = cache.len();
        assert!(cache.insert([0; 32], token(9), entry(100), 0, 0).is_some());
        assert_eq!(cache.len(), before, "a replaced entry is counted once");
    }
}
