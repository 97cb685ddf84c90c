//! The cache of checked assertions: an optimisation with no authority of
//! its own (see [`CheckedAssertion`]).

use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use moka::future::Cache;

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

struct CheckedExpiry;

impl Expiry<String, Arc<CheckedAssertion>> for CheckedExpiry {
    fn expire_after_create(
        &self,
        _token: &String,
        value: &Arc<CheckedAssertion>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// Default number of checked assertions remembered by a [`Verifier`].
pub(crate) const DEFAULT_ASSERTION_CACHE_ENTRIES: u64 = 10_000;

pub(crate) fn assertion_cache(max_entries: u64) -> Cache<String, Arc<CheckedAssertion>> {
    Cache::builder()
        .max_capacity(max_entries)
        .expire_after(CheckedExpiry)
        .build()
}
