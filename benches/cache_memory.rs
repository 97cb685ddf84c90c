//! Resident memory of 100 000 keys in the key cache, each parsed and ready
//! to verify (the state of a busy verifier).
//!
//! `cargo bench --bench cache_memory`
//!
//! The store is filled first; the figure is the growth of the process's
//! resident set (from /proc/self/statm) while the cache fills.

use jwt_profile::key::{KeyType, generate_rsa_key_pair};
use jwt_profile::store::{CacheSettings, CachedStore, KeyLookup, KeyStore, MemoryStore, NewKey};

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
        let public_key = generate_rsa_key_pair().expect("key").public_key;
        let store = MemoryStore::new();
        for i in 0..KEYS {
            let key = NewKey {
                id: format!("{:018}", 100_000_000_000_000_000u64 + i as u64),
                user_id: format!("machine-{i}"),
                resource_owner: "org".to_string(),
                key_type: KeyType::Json,
                public_key: public_key.clone(),
                expiration_date: jwt_profile::key::default_expiration(),
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
