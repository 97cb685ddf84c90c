//! Replay protection (SPEC §3 item 7, opt-in): each (`iss`, `jti`) is
//! accepted once until the assertion expires.
//!
//! Turn it on with [`Verifier::with_replay_protection`](crate::Verifier::with_replay_protection);
//! then `jti` is required (a string of at most 256 bytes), and the cache of
//! checked assertions is bypassed (a repeat is, by definition, a replay).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use chrono::{Duration, Utc};
//! use jwt_profile::replay::{MemoryReplayStore, ReplayStore};
//! let seen = MemoryReplayStore::new();
//! let until = Utc::now() + Duration::minutes(5);
//! assert!(seen.first_use("bot", "jti-1", until).await.unwrap());
//! assert!(!seen.first_use("bot", "jti-1", until).await.unwrap());
//! assert!(seen.first_use("other-bot", "jti-1", until).await.unwrap());
//! # });
//! ```

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::future::Cache;

use crate::store::StoreError;

/// Longest accepted `jti`, in bytes.
pub const MAX_JTI_BYTES: usize = 256;

/// Remembers which assertions were used.
#[async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Records (`issuer`, `jti`) until `until`, atomically. True when this
    /// is its first use; false when it was recorded before and has not
    /// expired.
    async fn first_use(
        &self,
        issuer: &str,
        jti: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

fn lifetime(until: DateTime<Utc>) -> Duration {
    (until - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(1))
}

struct UntilExpiry;

impl Expiry<(String, String), Duration> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &(String, String),
        lifetime: &Duration,
        _now: Instant,
    ) -> Option<Duration> {
        Some(*lifetime)
    }
}

/// In-process replay protection (moka): bounded, each entry lives until its
/// assertion's `exp` + leeway. One process's view: replicas need
/// [`RedisReplayStore`] (feature `redis`).
///
/// When more distinct assertions are live than the bound (default
/// 1 000 000), the cache evicts some, and a replay of an evicted one would
/// pass: size the bound above the assertions you expect within their
/// lifetime.
#[derive(Clone)]
pub struct MemoryReplayStore {
    seen: Cache<(String, String), Duration>,
}

impl std::fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayStore")
            .field("entries", &self.seen.entry_count())
            .finish()
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        MemoryReplayStore::with_capacity(1_000_000)
    }
}

impl MemoryReplayStore {
    /// A store remembering up to 1 000 000 assertions.
    pub fn new() -> MemoryReplayStore {
        MemoryReplayStore::default()
    }

    /// A store remembering up to `max_entries` assertions.
    pub fn with_capacity(max_entries: u64) -> MemoryReplayStore {
        MemoryReplayStore {
            seen: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExpiry)
                .build(),
        }
    }
}

#[async_trait]
impl ReplayStore for MemoryReplayStore {
    async fn first_use(
        &self,
        issuer: &str,
        jti: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // `entry().or_insert` is atomic per key: of many concurrent copies,
        // exactly one finds the entry fresh.
        let entry = self
            .seen
            .entry((issuer.to_owned(), jti.to_owned()))
            .or_insert(lifetime(until))
            .await;
        Ok(entry.is_fresh())
    }
}

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};

    /// Replay protection in Redis (feature `redis`), shared by every replica:
    /// one atomic `SET key 1 NX PX <ms until exp + leeway>` per assertion.
    /// When Redis cannot be reached the verifier answers "unavailable"
    /// (503), never acceptance.
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
        /// `jwt-profile:jti:`.
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
        ) -> Result<bool, StoreError> {
            // The issuer's length keeps ("a:b", "c") and ("a", "b:c") apart.
            let key = format!("{}{}:{issuer}:{jti}", self.prefix, issuer.len());
            let millis = u64::try_from(lifetime(until).as_millis()).unwrap_or(u64::MAX);
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
