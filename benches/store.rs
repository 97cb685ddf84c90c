//! Key lookup cost: a cache hit, and a miss on each durable backend.
//!
//! `cargo bench --all-features --bench store`
//!
//! A miss goes through the same path the verifier takes on an unknown key:
//! the cache's per-key lock, the store read, and parsing the public key. It is
//! measured with a cache that holds nothing (capacity 0). The PostgreSQL case
//! uses `JWT_PROFILE_TEST_POSTGRES` (default: the local server) and is left
//! out, with a note, when no database answers.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use jwt_profile::store::{CacheSettings, CachedStore, KeyLookup, KeyStore, MemoryStore, NewKey};
use jwt_profile::{KeyType, generate_rsa_key_pair};

fn new_key(id: &str) -> NewKey {
    NewKey {
        id: id.to_string(),
        user_id: "bench".to_string(),
        resource_owner: "org".to_string(),
        key_type: KeyType::Json,
        public_key: generate_rsa_key_pair().expect("key").public_key,
        expiration_date: jwt_profile::default_expiration(),
        created_at: chrono::Utc::now(),
        max_keys_per_user: None,
    }
}

fn no_cache() -> CacheSettings {
    // Entries expire the moment they are made: every lookup is a miss.
    CacheSettings {
        ttl: std::time::Duration::ZERO,
        negative_ttl: std::time::Duration::ZERO,
        max_entries: 0,
        // Misses are what this measures: no budget.
        max_misses_per_second: u32::MAX,
    }
}

fn lookups(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("lookup");

    let memory: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    rt.block_on(memory.insert(new_key("1"))).expect("insert");
    let hit = CachedStore::new(memory.clone());
    rt.block_on(hit.lookup("1")).expect("warm");
    group.bench_function("cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { hit.lookup("1").await.expect("lookup").expect("found") })
    });
    let miss = CachedStore::with_settings(memory, no_cache());
    group.bench_function("miss_memory", |b| {
        b.to_async(&rt)
            .iter(|| async { miss.lookup("1").await.expect("lookup").expect("found") })
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = rt
        .block_on(jwt_profile::store::SqliteStore::open_path(
            dir.path().join("bench.db"),
        ))
        .expect("sqlite");
    rt.block_on(sqlite.insert(new_key("1"))).expect("insert");
    let sqlite = CachedStore::with_settings(sqlite, no_cache());
    group.bench_function("miss_sqlite", |b| {
        b.to_async(&rt)
            .iter(|| async { sqlite.lookup("1").await.expect("lookup").expect("found") })
    });

    let url = std::env::var("JWT_PROFILE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match rt.block_on(postgres(&url)) {
        Some((store, schema)) => {
            group.bench_function("miss_postgres", |b| {
                b.to_async(&rt)
                    .iter(|| async { store.lookup("1").await.expect("lookup").expect("found") })
            });
            rt.block_on(drop_schema(&url, &schema));
        }
        None => eprintln!("lookup/miss_postgres SKIPPED: no PostgreSQL at {url}"),
    }
    group.finish();
}

async fn postgres(url: &str) -> Option<(CachedStore, String)> {
    use std::str::FromStr;
    let admin = sqlx::PgPool::connect(url).await.ok()?;
    let schema = format!("jwtp_bench_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&admin)
    .await
    .ok()?;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .ok()?
        .options([("search_path", schema.as_str())]);
    let store = jwt_profile::store::PostgresStore::connect_with(options, Default::default())
        .await
        .ok()?;
    store.insert(new_key("1")).await.ok()?;
    Some((CachedStore::with_settings(store, no_cache()), schema))
}

async fn drop_schema(url: &str, schema: &str) {
    if let Ok(admin) = sqlx::PgPool::connect(url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&admin)
        .await;
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
