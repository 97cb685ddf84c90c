//! Resident memory of 100 000 keys in the key cache, each parsed and ready
//! to verify (the state of a busy verifier), and of the directory of
//! existing key ids for 1 000 000 keys.
//!
//! `cargo bench --bench cache_memory`
//!
//! The store is filled first; the figure is the growth of the process's
//! resident set (from /proc/self/statm) while the cache fills (or the
//! directory loads: there, the bytes the Rust allocator holds, counted
//! exactly).

use std::sync::Mutex;

use async_trait::async_trait;

use jwt_profile::store::{
    CacheSettings, CachedStore, KeyLookup, KeyPage, KeyStore, ListQuery, MemoryStore, NewKey,
    Removed, StoreError,
};
use jwt_profile::{KeyType, MachineKey, generate_rsa_key_pair};

const DIRECTORY_KEYS: usize = 1_000_000;

/// Counts the bytes the Rust allocator holds, for the directory's figure
/// (exact, unlike the resident set, which depends on what malloc returns
/// to the system). The key cache's figure stays the resident set: parsed
/// keys live in aws-lc's C allocations.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// A store that only lists ids: the list is built up front and handed over
/// once, so the reading after the load is the directory alone.
struct IdsOnly(Mutex<Option<Vec<String>>>);

#[async_trait]
impl KeyStore for IdsOnly {
    async fn insert(&self, _: NewKey) -> Result<MachineKey, StoreError> {
        Err(StoreError::Unavailable("read-only".into()))
    }
    async fn get(&self, _: &str) -> Result<Option<MachineKey>, StoreError> {
        Ok(None)
    }
    async fn list(&self, _: &str, _: &str, _: ListQuery) -> Result<KeyPage, StoreError> {
        Ok(KeyPage {
            total: 0,
            view_timestamp: chrono::Utc::now(),
            keys: Vec::new(),
        })
    }
    async fn remove(&self, _: &str) -> Result<Option<Removed>, StoreError> {
        Ok(None)
    }
    async fn key_ids(&self) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self.0.lock().expect("lock").take())
    }
}

const KEYS: usize = 100_000;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss");
    pages * 4096
}

fn main() {
    // `cargo bench` passes --bench; nothing to configure.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let make_ids = || -> Vec<String> {
            (0..DIRECTORY_KEYS)
                .map(|i| format!("{:018}", 300_000_000_000_000_000u64 + i as u64))
                .collect()
        };
        let before = live_bytes();
        let store = IdsOnly(Mutex::new(Some(make_ids())));
        let directory = CachedStore::new(store);
        assert!(directory.load_directory().await.expect("load"));
        // The id list was handed over and freed by the load.
        let grown = (live_bytes() - before) as u64;
        println!(
            "memory directory of {} key ids: {:.1} MiB allocated ({} bytes per key; ids held: {})",
            DIRECTORY_KEYS,
            grown as f64 / (1024.0 * 1024.0),
            grown / DIRECTORY_KEYS as u64,
            directory.directory_len()
        );

        let public_key = generate_rsa_key_pair().expect("key").public_key;
        let store = MemoryStore::new();
        for i in 0..KEYS {
            let key = NewKey {
                id: format!("{:018}", 100_000_000_000_000_000u64 + i as u64),
                user_id: format!("machine-{i}"),
                resource_owner: "org".to_string(),
                key_type: KeyType::Json,
                public_key: public_key.clone(),
                expiration_date: jwt_profile::default_expiration(),
                created_at: chrono::Utc::now(),
                max_keys_per_user: None,
            };
            store.insert(key).await.expect("insert");
        }
        let cache = CachedStore::with_settings(store, CacheSettings { max_entries: KEYS as u64, max_misses_per_second: u32::MAX, ..Default::default() });
        let before = resident_bytes();
        for i in 0..KEYS {
            let id = format!("{:018}", 100_000_000_000_000_000u64 + i as u64);
            cache.lookup(&id).await.expect("lookup").expect("found");
        }
        let after = resident_bytes();
        let grown = after.saturating_sub(before);
        println!(
            "memory {} cached RSA-2048 keys: {:.1} MiB resident growth ({} bytes per key; entries held: {})",
            KEYS,
            grown as f64 / (1024.0 * 1024.0),
            grown / KEYS as u64,
            cache.entry_count()
        );

    });
}
