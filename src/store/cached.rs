use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::future::Cache;

use super::{KeyPage, KeyStore, ListQuery, NewKey, Removed, StoreError};
use crate::key::{MachineKey, VerifyingKey};

/// Finds the ready-to-verify key for a `kid`. The verifier's only view of
/// storage.
#[async_trait]
pub trait KeyLookup: Send + Sync + 'static {
    /// The key with this id (whoever owns it), or `None`.
    async fn lookup(&self, key_id: &str) -> Result<Option<Arc<VerifyingKey>>, StoreError>;
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
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 100_000,
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
        CachedStore {
            store: Arc::new(store),
            cache,
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Drops one key id from the cache (found or unknown).
    pub async fn invalidate(&self, key_id: &str) {
        self.cache.invalidate(key_id).await;
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
        let store = &self.store;
        self.cache
            .try_get_with(key_id.to_owned(), async move {
                let found = store.get(key_id).await?;
                Ok::<_, StoreError>(found.map(|k| Arc::new(VerifyingKey::new(k))))
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

#[async_trait]
impl KeyStore for CachedStore {
    async fn insert(&self, key: NewKey) -> Result<MachineKey, StoreError> {
        let id = key.id.clone();
        let inserted = self.store.insert(key).await;
        // Forget a remembered "unknown" for this id.
        self.cache.invalidate(&id).await;
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
        self.cache.invalidate(key_id).await;
        removed
    }
}
