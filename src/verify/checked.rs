//! The cache of checked assertions: an optimisation with no authority of
//! its own (see [`CheckedAssertion`]).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::{Equivalent, Expiry};

use crate::principal::Principal;

/// A token (an assertion or an access token) whose form, keys and
/// signature were verified; its time
/// claims are checked again on every use. It holds no key: on every use the
/// key is looked up again (a cache hit) and must still be the same stored
/// key (id and sequence), so a removal anywhere the key lookup sees it
/// refuses the assertion at once.
pub(crate) struct CheckedAssertion {
    /// The key's id and the sequence it was stored with.
    pub(crate) key_id: String,
    pub(crate) key_sequence: u64,
    pub(crate) principal: Principal,
    pub(crate) exp: f64,
    pub(crate) iat: f64,
    pub(crate) nbf: Option<f64>,
    /// An assertion (the maximum-age rule applies; with replay protection
    /// on, a repeat is a replay) or an access token.
    pub(crate) kind: crate::principal::TokenKind,
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

pub(crate) type AssertionCache = Cache<TokenKey, Arc<CheckedAssertion>>;

pub(crate) fn assertion_cache(max_entries: u64) -> AssertionCache {
    Cache::builder()
        .max_capacity(max_entries)
        .expire_after(CheckedExpiry)
        .build()
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

    #[tokio::test]
    async fn the_cache_tells_tokens_with_one_tail_apart() {
        let cache = assertion_cache(10);
        let entry = |user: &str| {
            Arc::new(CheckedAssertion {
                key_id: "k".into(),
                key_sequence: 1,
                principal: Principal::new(user, "o", "k"),
                exp: 0.0,
                iat: 0.0,
                nbf: None,
                kind: crate::principal::TokenKind::Assertion,
                last_valid: 0.0,
                lifetime: Duration::from_secs(60),
            })
        };
        let tail = "x".repeat(HASHED_TAIL);
        let a = format!("a.b.{tail}");
        let b = format!("c.d.{tail}");
        cache.insert(TokenKey::new(&a), entry("a")).await;
        assert!(cache.get(&TokenRef(&b)).await.is_none());
        cache.insert(TokenKey::new(&b), entry("b")).await;
        let got = |t: String| {
            let cache = cache.clone();
            async move {
                cache
                    .get(&TokenRef(&t))
                    .await
                    .map(|e| e.principal.user_id.clone())
            }
        };
        assert_eq!(got(a).await.as_deref(), Some("a"));
        assert_eq!(got(b).await.as_deref(), Some("b"));
    }
}
