//! The cache of checked assertions: an optimisation with no authority of
//! its own (see [`CheckedAssertion`]).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use moka::{Equivalent, Expiry};

use crate::principal::Principal;

/// A token (an assertion or an access token) whose form, keys and
/// signature were verified; its time
/// claims are checked again on every use. It holds no key: on every use the
/// key is looked up again (a cache hit) and must still be the same stored
/// key (id and sequence), so a removal anywhere the key lookup sees it
/// refuses the assertion at once.
pub(crate) struct CheckedAssertion {
    /// The sequence its key (`principal.key_id`) was stored with.
    pub(crate) key_sequence: u64,
    pub(crate) principal: Principal,
    pub(crate) exp: f64,
    pub(crate) iat: f64,
    pub(crate) nbf: Option<f64>,
    /// An assertion (the maximum-age rule applies; with replay protection
    /// on, a repeat is a replay) or an access token.
    pub(crate) kind: crate::principal::TokenKind,
    /// For an access token, the `kid` of the issuer's signing key that
    /// signed it: on every use it must still be published (a removed
    /// signing key refuses its tokens, remembered or not).
    pub(crate) signing_key: Option<Box<str>>,
    /// The last moment (seconds) the token can pass the time rules.
    pub(crate) last_valid: f64,
    /// How long the entry lives (set when it is remembered).
    pub(crate) lifetime: Duration,
}

/// A remembered assertion, the whole token. A hit needs the whole token to
/// be equal (`Eq` and [`TokenRef`]'s `Equivalent` compare every byte); only
/// the hash is cheap: it covers the length and the last
/// [`HASHED_TAIL`] bytes — the end of the signature, which no one can choose
/// for a token that verified, while the hasher's key is random per process.
/// Hashing the whole token (SipHash over ~700 bytes) was the largest single
/// cost of a repeat.
#[derive(PartialEq, Eq)]
pub(crate) struct TokenKey(Box<str>);

/// A token being looked up; see [`TokenKey`].
pub(crate) struct TokenRef<'a>(pub(crate) &'a str);

/// How many bytes at the end of a token its hash covers.
const HASHED_TAIL: usize = 32;

fn hash_token<H: Hasher>(token: &str, state: &mut H) {
    let bytes = token.as_bytes();
    state.write_usize(bytes.len());
    state.write(&bytes[bytes.len().saturating_sub(HASHED_TAIL)..]);
}

impl TokenKey {
    pub(crate) fn new(token: &str) -> TokenKey {
        TokenKey(token.into())
    }
}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_token(&self.0, state);
    }
}

impl Hash for TokenRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_token(self.0, state);
    }
}

impl Equivalent<TokenKey> for TokenRef<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        // The whole token, every byte: a hit is never more permissive than
        // the full check that put it here.
        *self.0 == *key.0
    }
}

struct CheckedExpiry;

impl Expiry<TokenKey, Arc<CheckedAssertion>> for CheckedExpiry {
    fn expire_after_create(
        &self,
        _token: &TokenKey,
        value: &Arc<CheckedAssertion>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// Default number of checked assertions remembered by a [`Verifier`].
pub(crate) const DEFAULT_ASSERTION_CACHE_ENTRIES: u64 = 10_000;

/// The cache of checked tokens: moka's synchronous cache, so the
/// verification needs no future for it, with a small per-thread mirror of
/// its hits in front (as the key cache has), so a repeat on the same thread
/// reads no shared map and records no read. Clones share both.
///
/// Its reads never wait. A write (an insert, an invalidation) waits, the
/// thread sleeping in 50 µs steps, only while moka's write queue (384
/// entries in moka 0.12) is full and another thread holds its maintenance;
/// every insert follows a signature check that costs far more than
/// maintaining one entry, and only tokens that passed it, or entries
/// already there, cause writes, so a caller without a key cannot fill
/// that queue.
#[derive(Clone)]
pub(crate) struct AssertionCache {
    /// Tells this cache's mirrored entries from other caches'.
    id: u64,
    moka: Cache<TokenKey, Arc<CheckedAssertion>>,
}

pub(crate) fn assertion_cache(max_entries: u64) -> AssertionCache {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    AssertionCache {
        id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        moka: Cache::builder()
            .max_capacity(max_entries)
            .expire_after(CheckedExpiry)
            .build(),
    }
}

impl AssertionCache {
    /// The most entries moka keeps (each thread's mirror holds at most
    /// [`mirror::SLOTS`] more, all of them moka's hits).
    pub(crate) fn max_entries(&self) -> u64 {
        self.moka.policy().max_capacity().unwrap_or(0)
    }

    /// `token`'s entry, if it is in this thread's mirror and `now_secs` is
    /// not past the last moment it can pass the time rules (moka drops an
    /// entry then; the mirror never keeps one longer).
    pub(crate) fn mirrored(&self, token: &str, now_secs: f64) -> Option<Arc<CheckedAssertion>> {
        mirror::get(self.id, token, now_secs)
    }

    /// `token`'s entry in moka; a hit is mirrored on this thread.
    pub(crate) fn get(&self, token: &str) -> Option<Arc<CheckedAssertion>> {
        let hit = self.moka.get(&TokenRef(token))?;
        mirror::put(self.id, token, &hit);
        Some(hit)
    }

    /// Forgets `token`, in moka and in this thread's mirror. Other threads'
    /// mirrors may still hold it: a hit there checks the key again, as
    /// every hit does, and forgets it there when that check fails.
    pub(crate) fn invalidate(&self, token: &str) {
        mirror::forget(self.id, token);
        self.moka.invalidate(&TokenRef(token));
    }

    /// Remembers `entry` for `token` (in moka; the mirror takes it from a
    /// later hit).
    pub(crate) fn insert(&self, token: &str, entry: Arc<CheckedAssertion>) {
        self.moka.insert(TokenKey::new(token), entry);
    }
}

/// Each thread's mirror: a direct-mapped table of recent hits. A slot
/// answers only for the same cache and the same token, every byte.
mod mirror {
    use super::CheckedAssertion;
    use std::cell::RefCell;
    use std::sync::Arc;

    pub(super) const SLOTS: usize = 64;

    struct Slot {
        cache: u64,
        token: Box<str>,
        entry: Arc<CheckedAssertion>,
    }

    thread_local! {
        static SLOTS_OF_THREAD: RefCell<[Option<Slot>; SLOTS]> =
            const { RefCell::new([const { None }; SLOTS]) };
    }

    fn slot_of(token: &str) -> usize {
        crate::key::table_slot(token.as_bytes(), SLOTS)
    }

    pub(super) fn get(cache: u64, token: &str, now_secs: f64) -> Option<Arc<CheckedAssertion>> {
        let at = slot_of(token);
        SLOTS_OF_THREAD.with_borrow(|slots| {
            let slot = slots[at].as_ref()?;
            let current =
                slot.cache == cache && *slot.token == *token && now_secs <= slot.entry.last_valid;
            current.then(|| slot.entry.clone())
        })
    }

    pub(super) fn put(cache: u64, token: &str, entry: &Arc<CheckedAssertion>) {
        let at = slot_of(token);
        SLOTS_OF_THREAD.with_borrow_mut(|slots| {
            slots[at] = Some(Slot {
                cache,
                token: token.into(),
                entry: entry.clone(),
            });
        });
    }

    pub(super) fn forget(cache: u64, token: &str) {
        let at = slot_of(token);
        SLOTS_OF_THREAD.with_borrow_mut(|slots| {
            if slots[at]
                .as_ref()
                .is_some_and(|slot| slot.cache == cache && *slot.token == *token)
            {
                slots[at] = None;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn a_hit_needs_the_whole_token_not_just_its_hash() {
        let a = "aaaa.bbbb.same-signature-tail-0123456789abcdefghijklmnop";
        let b = "zzzz.bbbb.same-signature-tail-0123456789abcdefghijklmnop";
        let s = std::hash::RandomState::new();
        // Same length and tail: same hash, by design.
        assert_eq!(s.hash_one(TokenRef(a)), s.hash_one(TokenKey::new(b)));
        assert_eq!(s.hash_one(TokenRef(a)), s.hash_one(TokenKey::new(a)));
        assert!(!TokenRef(a).equivalent(&TokenKey::new(b)));
        assert!(TokenRef(a).equivalent(&TokenKey::new(a)));
        assert!(!TokenRef(&a[1..]).equivalent(&TokenKey::new(a)));
    }

    fn entry_until(user: &str, last_valid: f64) -> Arc<CheckedAssertion> {
        Arc::new(CheckedAssertion {
            key_sequence: 1,
            principal: Principal::new(user, "o", "k"),
            exp: last_valid,
            iat: 0.0,
            nbf: None,
            kind: crate::principal::TokenKind::Assertion,
            signing_key: None,
            last_valid,
            lifetime: Duration::from_secs(60),
        })
    }

    /// The mirror answers only for its cache, the same token and no later
    /// than the entry's last valid moment; a forgotten token is gone from
    /// it, and only what moka answered is mirrored.
    #[test]
    fn the_mirror_answers_only_what_moka_answered_for_this_cache() {
        let (one, other) = (assertion_cache(10), assertion_cache(10));
        let token = format!("h.p.{}", "s".repeat(40));
        let user = |hit: Option<Arc<CheckedAssertion>>| hit.map(|e| e.principal.user_id.clone());
        assert_eq!(user(one.mirrored(&token, 5.0)), None);
        one.insert(&token, entry_until("a", 10.0));
        // Inserted, not yet read: moka has it, the mirror not.
        assert_eq!(user(one.mirrored(&token, 5.0)), None);
        assert_eq!(user(one.get(&token)).as_deref(), Some("a"));
        assert_eq!(user(one.mirrored(&token, 5.0)).as_deref(), Some("a"));
        assert_eq!(user(one.mirrored(&token, 10.0)).as_deref(), Some("a"));
        // Past its last valid moment; another cache; another token of the
        // same length and tail (the same slot).
        assert_eq!(user(one.mirrored(&token, 10.001)), None);
        assert_eq!(user(other.mirrored(&token, 5.0)), None);
        let twin = format!("x.y.{}", "s".repeat(40));
        assert_eq!(user(one.mirrored(&twin, 5.0)), None);
        // Forgotten: gone from the mirror and from moka.
        one.invalidate(&token);
        assert_eq!(user(one.mirrored(&token, 5.0)), None);
        assert_eq!(user(one.get(&token)), None);
        // Each thread has its own mirror.
        one.insert(&token, entry_until("b", 10.0));
        assert!(one.get(&token).is_some());
        let (one2, token2) = (one.clone(), token.clone());
        let elsewhere = std::thread::spawn(move || one2.mirrored(&token2, 5.0).is_some());
        assert!(!elsewhere.join().expect("thread"));
        assert!(one.mirrored(&token, 5.0).is_some());
    }

    #[test]
    fn the_cache_tells_tokens_with_one_tail_apart() {
        let cache = assertion_cache(10);
        let entry = |user: &str| entry_until(user, 0.0);
        let tail = "x".repeat(HASHED_TAIL);
        let a = format!("a.b.{tail}");
        let b = format!("c.d.{tail}");
        cache.moka.insert(TokenKey::new(&a), entry("a"));
        assert!(cache.moka.get(&TokenRef(&b)).is_none());
        cache.moka.insert(TokenKey::new(&b), entry("b"));
        let got = |t: &str| (cache.moka.get(&TokenRef(t))).map(|e| e.principal.user_id.clone());
        assert_eq!(got(&a).as_deref(), Some("a"));
        assert_eq!(got(&b).as_deref(), Some("b"));
    }
}
