use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};

use super::{KeyEvent, KeyPage, KeyStore, ListQuery, NewKey, Removed, StoreError};
use crate::key::{MachineKey, VerifyingKey};

/// Finds the ready-to-verify key for a `kid`. The verifier's only view of
/// storage.
#[async_trait]
pub trait KeyLookup: Send + Sync + 'static {
    /// The key with this id (whoever owns it), or `None`.
    async fn lookup(&self, key_id: &str) -> Result<Option<Arc<VerifyingKey>>, StoreError>;

    /// How long a found key may be used without asking the store again;
    /// bounds how long the verifier trusts an assertion it checked before.
    fn ttl(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// Settings of a [`CachedStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long a found key is served from the cache (default 60 s). Bounds
    /// how long another process keeps accepting a key removed elsewhere.
    pub ttl: Duration,
    /// How long an unknown key id is remembered as unknown (default 5 s).
    pub negative_ttl: Duration,
    /// Most entries held (default 100 000).
    pub max_entries: u64,
    /// Most store reads per second for ids not in the cache (default
    /// 1 000, with bursts of as many). Past it, lookups of uncached ids are
    /// answered "unavailable" (503, try again) without asking the store, so
    /// a flood of made-up `kid`s costs the store a bounded number of reads.
    /// Keys already cached are not affected.
    pub max_misses_per_second: u32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 100_000,
            max_misses_per_second: 1_000,
        }
    }
}

type Entry = Option<Arc<VerifyingKey>>;

struct EntryExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry<String, Entry> for EntryExpiry {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }
}

/// A cache (moka) in front of any [`KeyStore`].
///
/// Hits hold the parsed, ready-to-verify key and never touch the store;
/// unknown ids are remembered briefly so a flood of made-up `kid`s cannot
/// hammer the store; concurrent misses for one id share one store call.
/// Keys inserted or removed through this value are updated in the cache at
/// once. Clones share the cache.
///
/// ```
/// use jwt_profile::store::{CachedStore, MemoryStore};
/// let store = CachedStore::new(MemoryStore::new());
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct CachedStore {
    store: Arc<dyn KeyStore>,
    cache: Cache<String, Entry>,
    ttl: Duration,
    misses: Arc<MissBudget>,
}

/// A token bucket of store reads for cache misses.
#[derive(Debug)]
struct MissBudget {
    per_second: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl MissBudget {
    fn new(per_second: u32) -> MissBudget {
        let per_second = f64::from(per_second);
        MissBudget {
            per_second,
            state: std::sync::Mutex::new((per_second, Instant::now())),
        }
    }

    /// Takes one read from the budget; false when it is spent.
    fn take(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second)
            .min(self.per_second);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl CachedStore {
    /// A cache with default settings in front of `store`.
    pub fn new(store: impl KeyStore) -> CachedStore {
        CachedStore::with_settings(store, CacheSettings::default())
    }

    /// A cache with `settings` in front of `store`.
    pub fn with_settings(store: impl KeyStore, settings: CacheSettings) -> CachedStore {
        let cache = Cache::builder()
            .max_capacity(settings.max_entries)
            .expire_after(EntryExpiry {
                ttl: settings.ttl,
                negative_ttl: settings.negative_ttl,
            })
            .build();
        if let Some(events) = store.events() {
            follow(events, cache.clone());
        }
        CachedStore {
            store: Arc::new(store),
            cache,
            ttl: settings.ttl,
            misses: Arc::new(MissBudget::new(settings.max_misses_per_second)),
        }
    }

    /// How long a found key is served from the cache.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Drops one key id from the cache (found or unknown), after any load
    /// of it in flight; the next lookup asks the store.
    pub async fn invalidate(&self, key_id: &str) {
        self.forget(key_id).await;
    }

    /// Approximate number of cached entries.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[async_trait]
impl KeyLookup for CachedStore {
    async fn lookup(&self, key_id: &str) -> Result<Option<Arc<VerifyingKey>>, StoreError> {
        if let Some(hit) = self.cache.get(key_id).await {
            return Ok(hit);
        }
        // Loads and removals of one id go through moka's per-key compute
        // lock, so a load in flight when a key is removed cannot put the old
        // key back after the removal; concurrent misses share one load.
        let store = &self.store;
        let misses = &self.misses;
        let outcome = self
            .cache
            .entry_by_ref(key_id)
            .and_try_compute_with(|existing| async move {
                if existing.is_some() {
                    return Ok(Op::Nop);
                }
                if !misses.take() {
                    return Err(StoreError::Unavailable(
                        "too many lookups of unknown keys; try again".to_string(),
                    ));
                }
                let found = store.get(key_id).await?;
                Ok::<_, StoreError>(Op::Put(found.map(|k| Arc::new(VerifyingKey::new(k)))))
            })
            .await?;
        Ok(match outcome {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                e.into_value()
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => None,
        })
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl CachedStore {
    /// Drops `key_id` from the cache after any load of it in flight.
    async fn forget(&self, key_id: &str) {
        forget(&self.cache, key_id).await;
    }
}

async fn forget(cache: &Cache<String, Entry>, key_id: &str) {
    cache
        .entry_by_ref(key_id)
        .and_compute_with(|existing| async move {
            // Whoever still holds this copy (the verifier's cache of checked
            // assertions) must look the key up again.
            if let Some(Some(key)) = existing.as_ref().map(|e| e.value()) {
                key.mark_stale();
            }
            Op::Remove
        })
        .await;
}

fn forget_all(cache: &Cache<String, Entry>) {
    for (_, entry) in cache.iter() {
        if let Some(key) = entry {
            key.mark_stale();
        }
    }
    cache.invalidate_all();
}

/// Applies changes announced by other processes to the cache, until the
/// store's feed closes (the store was dropped).
fn follow(mut events: tokio::sync::broadcast::Receiver<KeyEvent>, cache: Cache<String, Entry>) {
    use tokio::sync::broadcast::error::RecvError;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            "no tokio runtime: changes by other processes reach this cache only by expiry"
        );
        return;
    };
    runtime.spawn(async move {
        loop {
            match events.recv().await {
                Ok(KeyEvent::Changed(key_id)) => forget(&cache, &key_id).await,
                Ok(KeyEvent::Flush) | Err(RecvError::Lagged(_)) => forget_all(&cache),
                Err(RecvError::Closed) => return,
            }
        }
    });
}

#[async_trait]
impl KeyStore for CachedStore {
    async fn insert(&self, key: NewKey) -> Result<MachineKey, StoreError> {
        let id = key.id.clone();
        let inserted = self.store.insert(key).await;
        // Forget a remembered "unknown" for this id.
        self.forget(&id).await;
        inserted
    }

    async fn get(&self, key_id: &str) -> Result<Option<MachineKey>, StoreError> {
        self.store.get(key_id).await
    }

    async fn list(
        &self,
        user_id: &str,
        org_id: &str,
        query: ListQuery,
    ) -> Result<KeyPage, StoreError> {
        self.store.list(user_id, org_id, query).await
    }

    async fn remove(&self, key_id: &str, at: DateTime<Utc>) -> Result<Option<Removed>, StoreError> {
        let removed = self.store.remove(key_id, at).await;
        self.forget(key_id).await;
        removed
    }

    async fn allocate_id(&self) -> Result<Option<String>, StoreError> {
        self.store.allocate_id().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyType, generate_rsa_key_pair};
    use crate::store::MemoryStore;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// A memory store whose `get` waits for a permit, and counts calls.
    struct Gated {
        inner: MemoryStore,
        gate: Semaphore,
        gets: AtomicUsize,
    }

    #[async_trait]
    impl KeyStore for Gated {
        async fn insert(&self, key: NewKey) -> Result<MachineKey, StoreError> {
            self.inner.insert(key).await
        }
        async fn get(&self, key_id: &str) -> Result<Option<MachineKey>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            let found = self.inner.get(key_id).await;
            let _permit = self.gate.acquire().await;
            found
        }
        async fn list(&self, u: &str, o: &str, q: ListQuery) -> Result<KeyPage, StoreError> {
            self.inner.list(u, o, q).await
        }
        async fn remove(&self, id: &str, at: DateTime<Utc>) -> Result<Option<Removed>, StoreError> {
            self.inner.remove(id, at).await
        }
    }

    fn new_key(id: &str) -> NewKey {
        NewKey {
            id: id.into(),
            user_id: "bot".into(),
            resource_owner: "org".into(),
            key_type: KeyType::Json,
            public_key: generate_rsa_key_pair().map(|p| p.public_key).expect("key"),
            expiration_date: crate::key::default_expiration(),
            created_at: Utc::now(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_in_flight_cannot_undo_a_removal() {
        let gated = Arc::new(Gated {
            inner: MemoryStore::new(),
            gate: Semaphore::new(0),
            gets: AtomicUsize::new(0),
        });
        let cached = CachedStore::new(gated.clone());
        cached.insert(new_key("1")).await.expect("insert");
        // A lookup reads the key from the store, then stalls before caching it.
        let loader = tokio::spawn({
            let cached = cached.clone();
            async move { cached.lookup("1").await }
        });
        while gated.gets.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The key is removed meanwhile; the removal waits for the load.
        let remover = tokio::spawn({
            let cached = cached.clone();
            async move { cached.remove("1", Utc::now()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gated.gate.add_permits(100);
        assert!(
            loader.await.expect("join").expect("lookup").is_some(),
            "read before removal"
        );
        assert!(remover.await.expect("join").expect("remove").is_some());
        assert!(
            cached.lookup("1").await.expect("lookup").is_none(),
            "stale key came back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_store_call_and_unknown_ids_are_remembered() {
        let gated = Arc::new(Gated {
            inner: MemoryStore::new(),
            gate: Semaphore::new(0),
            gets: AtomicUsize::new(0),
        });
        let cached = CachedStore::new(gated.clone());
        let lookups: Vec<_> = (0..20)
            .map(|_| {
                let cached = cached.clone();
                tokio::spawn(async move { cached.lookup("unknown").await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gated.gate.add_permits(1000);
        for l in lookups {
            assert!(l.await.expect("join").expect("lookup").is_none());
        }
        assert!(cached.lookup("unknown").await.expect("lookup").is_none());
        assert_eq!(gated.gets.load(Ordering::SeqCst), 1);
    }
}
