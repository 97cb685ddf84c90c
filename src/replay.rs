//! Replay protection (opt-in): each (`iss`, `jti`) is
//! accepted once.
//!
//! Turn it on with [`Verifier::with_replay_protection`](crate::Verifier::with_replay_protection);
//! then `jti` is required (a string of 1–256 bytes), and the cache of checked
//! assertions is bypassed (a repeat is, by definition, a replay).
//!
//! **Retention.** The verifier asks the store to remember a `jti` until the
//! last moment its assertion could still pass the time rules —
//! min(`exp`, `iat` + max age) + leeway — and no longer, so what a store
//! holds is bounded by the login rate, not by what a client writes in `exp`.
//! Every call carries the verifier's clock (`now`); stores compute lifetimes
//! from it, never from the system clock.
//!
//! **Never forget a live `jti` early.** When a store cannot remember one more
//! assertion — [`MemoryReplayStore`] at its capacity, Redis unreachable — it
//! answers [`StoreError::Unavailable`], which the verifier turns into 503
//! (code 14): the assertion is refused, never accepted unremembered. An
//! entry whose `until` has passed may be forgotten.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use chrono::{Duration, Utc};
//! use jwt_profile::replay::{MemoryReplayStore, ReplayStore};
//! let seen = MemoryReplayStore::with_capacity(2);
//! let now = Utc::now();
//! let until = now + Duration::minutes(5);
//! assert!(seen.first_use("bot", "jti-1", until, now).await.unwrap());
//! assert!(!seen.first_use("bot", "jti-1", until, now).await.unwrap());
//! assert!(seen.first_use("other-bot", "jti-1", until, now).await.unwrap());
//! // Full: a third live assertion is refused, not remembered at the cost of another.
//! assert!(seen.first_use("bot", "jti-2", until, now).await.is_err());
//! // Once their `until` has passed, the entries are forgotten and room is made.
//! let later = until + Duration::seconds(1);
//! assert!(seen.first_use("bot", "jti-2", later + Duration::minutes(5), later).await.unwrap());
//! assert_eq!(seen.len(), 1);
//! # });
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::store::StoreError;

/// Longest accepted `jti`, in bytes.
pub const MAX_JTI_BYTES: usize = 256;

/// Remembers which assertions were used.
///
/// Implementations must be atomic per (`issuer`, `jti`) — of many concurrent
/// first uses exactly one gets `Ok(true)` — and must never forget an entry
/// before its `until`: when one more cannot be remembered, the answer is
/// `Err(StoreError::Unavailable(..))`, never `Ok(true)`.
#[async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Records (`issuer`, `jti`) until `until`, atomically. True when this
    /// is its first use; false when it was recorded before and its `until`
    /// is still after `now`. `now` is the verifier's clock: lifetimes and
    /// expiry are computed from it, never from the system clock.
    async fn first_use(
        &self,
        issuer: &str,
        jti: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

type Key = Arc<(String, String)>;

/// Expired entries dropped per call at most, besides a full purge when the
/// store is at capacity: each call adds at most one entry and drops up to
/// this many, so expired entries never pile up, and no single call pays for
/// a mass expiry.
const PURGE_STEP: usize = 4;

#[derive(Default)]
struct Seen {
    /// Every remembered (`issuer`, `jti`) and its `until`.
    until: HashMap<Key, DateTime<Utc>>,
    /// The same entries, soonest `until` first. An entry re-remembered after
    /// its `until` passed leaves a stale element behind, recognised when
    /// popped because its time no longer matches the map.
    expiry: BinaryHeap<Reverse<(DateTime<Utc>, Key)>>,
}

impl Seen {
    /// Forgets up to `max` entries whose `until` is not after `now`.
    fn purge(&mut self, now: DateTime<Utc>, max: usize) {
        for _ in 0..max {
            match self.expiry.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => return,
            }
            let Some(Reverse((at, key))) = self.expiry.pop() else {
                return;
            };
            if self.until.get(&key) == Some(&at) {
                self.until.remove(&key);
            }
        }
    }
}

/// In-process replay protection: an exact, bounded record of live
/// assertions. One process's view: replicas need [`RedisReplayStore`]
/// (feature `redis`).
///
/// Each entry is kept until its `until` (see the [module docs](self)) and
/// then purged, a few at a time as new assertions arrive (from a min-heap
/// ordered by `until`). It never evicts a live entry: when `capacity` live
/// assertions are remembered, one more is refused with
/// [`StoreError::Unavailable`] (503) until some expire. Size the capacity
/// above your login rate × (max age + leeway); each entry costs about
/// 150 bytes plus its issuer and `jti`.
///
/// Clones share one record.
#[derive(Clone)]
pub struct MemoryReplayStore {
    seen: Arc<Mutex<Seen>>,
    capacity: usize,
}

impl std::fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayStore")
            .field("entries", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        MemoryReplayStore::with_capacity(1_000_000)
    }
}

impl MemoryReplayStore {
    /// A store remembering up to 1 000 000 live assertions.
    pub fn new() -> MemoryReplayStore {
        MemoryReplayStore::default()
    }

    /// A store remembering up to `capacity` live assertions (at least 1).
    pub fn with_capacity(capacity: usize) -> MemoryReplayStore {
        MemoryReplayStore {
            seen: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// How many assertions it remembers now, counting those whose `until`
    /// has passed but which were not purged yet.
    pub fn len(&self) -> usize {
        self.lock().until.len()
    }

    /// True when it remembers no assertion.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many live assertions it can remember at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        // Nothing in the critical sections can leave the record inconsistent
        // in a way that matters (at worst a stale heap element).
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ReplayStore for MemoryReplayStore {
    async fn first_use(
        &self,
        issuer: &str,
        jti: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let key: Key = Arc::new((issuer.to_owned(), jti.to_owned()));
        // One lock for lookup and insert: of many concurrent copies, exactly
        // one finds no live entry.
        let mut seen = self.lock();
        seen.purge(now, PURGE_STEP);
        let known = seen.until.get(&key).copied();
        if known.is_some_and(|at| at > now) {
            return Ok(false);
        }
        // An expired entry for the same key is replaced, not added to.
        if known.is_none() && seen.until.len() >= self.capacity {
            seen.purge(now, usize::MAX);
            if seen.until.len() >= self.capacity {
                return Err(StoreError::Unavailable(format!(
                    "replay store full ({} live assertions remembered); \
                     refusing rather than forgetting one early",
                    self.capacity
                )));
            }
        }
        seen.until.insert(key.clone(), until);
        seen.expiry.push(Reverse((until, key)));
        crate::telemetry::replay_size(seen.until.len(), self.capacity);
        Ok(true)
    }
}

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use std::time::Duration;

    /// `until` − `now` in whole milliseconds, rounded up, at least 1 (`PX 0`
    /// is an error in Redis).
    pub(super) fn px_millis(until: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
        let micros = (until - now).num_microseconds().unwrap_or(i64::MAX);
        if micros <= 0 {
            1
        } else {
            (micros / 1000 + i64::from(micros % 1000 != 0)).max(1)
        }
    }

    /// Replay protection in Redis (feature `redis`), shared by every replica:
    /// one atomic `SET key 1 NX PX <ms>` per assertion, where `<ms>` is
    /// `until` − `now` in milliseconds (rounded up, at least 1), so Redis
    /// forgets the `jti` once its assertion can no longer pass the time rules.
    ///
    /// **Run Redis with `maxmemory-policy noeviction`.** An evicting policy
    /// (`allkeys-lru`, `volatile-ttl`, …) lets Redis drop a live `jti` when
    /// memory runs short, and a replay of it would then be accepted. With
    /// `noeviction` a full Redis refuses the `SET`, which is answered like an
    /// unreachable Redis: [`StoreError::Unavailable`], 503 (code 14), never
    /// acceptance.
    #[derive(Clone)]
    pub struct RedisReplayStore {
        connection: ConnectionManager,
        prefix: String,
    }

    impl std::fmt::Debug for RedisReplayStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisReplayStore")
                .field("prefix", &self.prefix)
                .finish_non_exhaustive()
        }
    }

    impl RedisReplayStore {
        /// Connects to `url` (`redis://host:port`); keys start with
        /// `jwt-profile:jti:`. A Redis that cannot be reached is
        /// [`StoreError::Unavailable`], here and on every later call (the
        /// verifier answers 503); the connection is re-established when
        /// Redis is back.
        pub async fn connect(url: &str) -> Result<RedisReplayStore, StoreError> {
            RedisReplayStore::connect_with_prefix(url, "jwt-profile:jti:").await
        }

        /// Connects with another key prefix (e.g. one per environment).
        pub async fn connect_with_prefix(
            url: &str,
            prefix: &str,
        ) -> Result<RedisReplayStore, StoreError> {
            let client = redis::Client::open(url)
                .map_err(|e| StoreError::Unavailable(format!("bad Redis URL: {e}")))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)))
                .set_number_of_retries(1);
            let connection = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            Ok(RedisReplayStore {
                connection,
                prefix: prefix.to_string(),
            })
        }
    }

    #[async_trait]
    impl ReplayStore for RedisReplayStore {
        async fn first_use(
            &self,
            issuer: &str,
            jti: &str,
            until: DateTime<Utc>,
            now: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            // The issuer's length keeps ("a:b", "c") and ("a", "b:c") apart.
            let key = format!("{}{}:{issuer}:{jti}", self.prefix, issuer.len());
            let millis = px_millis(until, now);
            let mut connection = self.connection.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(millis)
                .query_async(&mut connection)
                .await
                .map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
            Ok(set.is_some())
        }
    }
}

#[cfg(feature = "redis")]
pub use redis_store::RedisReplayStore;

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("time")
    }

    async fn use_once(store: &MemoryReplayStore, jti: &str, until: i64, now: i64) -> bool {
        store
            .first_use("bot", jti, t(until), t(now))
            .await
            .expect("not full")
    }

    #[tokio::test]
    async fn entries_are_purged_soonest_first_once_their_until_passed() {
        let store = MemoryReplayStore::with_capacity(100);
        assert!(use_once(&store, "late", 300, 0).await);
        assert!(use_once(&store, "soon", 100, 0).await);
        assert!(use_once(&store, "middle", 200, 0).await);
        assert_eq!(store.len(), 3);
        // At `until` exactly the entry is no longer live.
        assert!(
            !use_once(&store, "soon", 100, 99).await,
            "live before its until"
        );
        assert!(use_once(&store, "other", 1000, 150).await);
        assert_eq!(store.len(), 3, "soon purged, other added");
        assert!(!store.lock().until.keys().any(|k| k.1 == "soon"));
        assert!(!use_once(&store, "middle", 200, 199).await);
        assert!(!use_once(&store, "late", 300, 299).await);
        assert!(use_once(&store, "another", 1000, 301).await);
        let left: Vec<String> = store.lock().until.keys().map(|k| k.1.clone()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&"other".to_string()) && left.contains(&"another".to_string()));
    }

    #[tokio::test]
    async fn full_of_live_entries_refuses_and_evicts_nothing() {
        let store = MemoryReplayStore::with_capacity(50);
        for i in 0..50 {
            assert!(use_once(&store, &format!("j{i}"), 10, 0).await);
        }
        let full = store.first_use("bot", "new", t(100), t(5)).await;
        assert!(matches!(full, Err(StoreError::Unavailable(ref m)) if m.contains("full")));
        assert_eq!(store.len(), 50);
        for i in 0..50 {
            assert!(
                !use_once(&store, &format!("j{i}"), 10, 5).await,
                "j{i} forgotten"
            );
        }
        // Once they expire there is room again.
        assert!(use_once(&store, "new", 100, 10).await);
    }

    #[tokio::test]
    async fn purge_is_bounded_per_call_and_catches_up() {
        let store = MemoryReplayStore::with_capacity(1000);
        for i in 0..40 {
            assert!(use_once(&store, &format!("j{i}"), 10, 0).await);
        }
        assert!(use_once(&store, "x", 100, 20).await);
        assert_eq!(store.len(), 41 - PURGE_STEP);
        for i in 0..20 {
            assert!(use_once(&store, &format!("y{i}"), 100, 20).await);
        }
        assert_eq!(store.len(), 21, "the 40 expired ones are gone");
        assert_eq!(store.lock().expiry.len(), 21);
    }

    #[tokio::test]
    async fn at_capacity_stale_heap_elements_do_not_block_a_full_purge() {
        let store = MemoryReplayStore::with_capacity(3);
        for j in ["a", "b", "c"] {
            assert!(use_once(&store, j, 10, 0).await);
        }
        // Each re-use after its until replaces the entry (no growth) and
        // leaves a stale heap element behind.
        for round in 1..=3 {
            let (until, now) = (10 * (round + 1), 10 * round);
            for j in ["a", "b", "c"] {
                assert!(
                    use_once(&store, j, until, now).await,
                    "{j} in round {round}"
                );
            }
        }
        assert_eq!(store.len(), 3);
        // Everything expired at 40: a new one fits, whatever the stale elements.
        assert!(use_once(&store, "d", 1000, 40).await);
        assert!(store.len() <= 3);
    }

    #[tokio::test]
    async fn an_expired_entry_is_replaced_without_leaving_the_new_one_to_a_stale_pop() {
        let store = MemoryReplayStore::with_capacity(2);
        assert!(use_once(&store, "j", 10, 0).await);
        assert!(use_once(&store, "k", 1000, 0).await);
        // Full, but "j" is expired: its slot is reused.
        assert!(use_once(&store, "j", 500, 20).await);
        assert_eq!(store.len(), 2);
        // The stale heap element for ("bot", "j", 10) must not drop the new entry.
        store.lock().purge(t(30), usize::MAX);
        assert!(!use_once(&store, "j", 500, 30).await, "j is live until 500");
        assert!(!use_once(&store, "k", 1000, 30).await);
    }

    #[tokio::test]
    async fn issuers_are_apart_and_capacity_counts_both() {
        let store = MemoryReplayStore::with_capacity(2);
        let (until, now) = (t(100), t(0));
        assert!(store.first_use("a", "j", until, now).await.expect("ok"));
        assert!(store.first_use("b", "j", until, now).await.expect("ok"));
        assert!(store.first_use("c", "j", until, now).await.is_err());
        assert!(!store.first_use("a", "j", until, now).await.expect("ok"));
        assert_eq!((store.len(), store.capacity()), (2, 2));
        assert_eq!(MemoryReplayStore::new().capacity(), 1_000_000);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_lifetimes_round_up_and_are_at_least_one_millisecond() {
        use chrono::Duration;
        use redis_store::px_millis;
        assert_eq!(px_millis(t(10), t(0)), 10_000);
        assert_eq!(px_millis(t(0) + Duration::microseconds(1), t(0)), 1);
        assert_eq!(px_millis(t(0) + Duration::microseconds(1001), t(0)), 2);
        assert_eq!(px_millis(t(0), t(0)), 1);
        assert_eq!(px_millis(t(0), t(100)), 1);
    }
}
