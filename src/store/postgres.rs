use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::broadcast;

use super::{
    KeyEvent, KeyPage, KeyStore, ListQuery, NewKey, Removed, StoreError, db_error, key_from_row,
    to_millis,
};
use crate::key::MachineKey;

/// Settings of a [`PostgresStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresSettings {
    /// Most connections in the pool (default 10). One more is held by the
    /// change listener.
    pub max_connections: u32,
    /// How long a request waits for a connection before the store counts as
    /// unavailable (default 3 s).
    pub acquire_timeout: Duration,
    /// The LISTEN/NOTIFY channel on which key changes are announced
    /// (default `jwt_profile_keys`). Processes sharing a database must agree.
    pub channel: String,
    /// How long one store operation may take before the store counts as
    /// unavailable (default 3 s): a stalled connection answers 503, it does
    /// not hang the request.
    pub query_timeout: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            channel: "jwt_profile_keys".to_string(),
            query_timeout: Duration::from_secs(3),
        }
    }
}

/// A store in PostgreSQL, shared by many replicas (feature `postgres`).
///
/// Migrations are embedded and run on connect. Key ids and sequences come
/// from database sequences, so they are unique and increasing across every
/// process on the database. The organization binding is checked under a
/// per-user advisory lock. Every insert and removal is announced with
/// `NOTIFY`; each store listens, and a [`CachedStore`](super::CachedStore) in
/// front of it drops the key at once (in practice within milliseconds).
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    channel: String,
    query_timeout: Duration,
    events: broadcast::Sender<KeyEvent>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) with default
    /// settings, runs migrations and starts listening for changes.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        PostgresStore::connect_with(options, PostgresSettings::default()).await
    }

    /// Connects with explicit options (e.g. a `search_path`) and settings.
    pub async fn connect_with(
        options: PgConnectOptions,
        settings: PostgresSettings,
    ) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL migration failed: {e}")))?;
        PostgresStore::start(pool, settings.channel, settings.query_timeout).await
    }

    /// Like [`connect_with`](Self::connect_with), but connects lazily: the
    /// first request that needs the database opens the connection (and runs
    /// the migrations). Starts even when the database is down; requests
    /// answer "unavailable" until it is up.
    pub fn connect_lazy_with(
        options: PgConnectOptions,
        settings: PostgresSettings,
    ) -> PostgresStore {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options);
        let (events, _) = broadcast::channel(1024);
        let listener = tokio::spawn(listen(
            pool.clone(),
            settings.channel.clone(),
            events.clone(),
        ));
        PostgresStore {
            pool,
            channel: settings.channel,
            query_timeout: settings.query_timeout,
            events,
            listener,
        }
    }

    async fn start(
        pool: PgPool,
        channel: String,
        query_timeout: Duration,
    ) -> Result<PostgresStore, StoreError> {
        let (events, _) = broadcast::channel(1024);
        // Subscribe before returning, so no change after `connect` is missed.
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        listener
            .listen(&channel)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let task = tokio::spawn(forward(
            listener,
            events.clone(),
            pool.clone(),
            channel.clone(),
        ));
        Ok(PostgresStore {
            pool,
            channel,
            query_timeout,
            events,
            listener: task,
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Lazily connected stores migrate and subscribe once the database answers.
async fn listen(pool: PgPool, channel: String, events: broadcast::Sender<KeyEvent>) {
    loop {
        let ready = async {
            sqlx::migrate!("migrations/postgres")
                .run(&pool)
                .await
                .map_err(|e| e.to_string())?;
            let mut listener = PgListener::connect_with(&pool)
                .await
                .map_err(|e| e.to_string())?;
            listener.listen(&channel).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(listener)
        };
        match ready.await {
            Ok(listener) => {
                let _ = events.send(KeyEvent::Flush);
                return forward(listener, events, pool, channel).await;
            }
            Err(why) => {
                tracing::debug!(%why, "PostgreSQL not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A notification's payload as an event: `+ID` inserted, `-ID` removed.
/// The sign is always written, so only the first character is read as one
/// (a key id may itself start with `+` or `-`).
fn event_of(payload: &str) -> KeyEvent {
    match payload.as_bytes().first() {
        Some(b'+') => KeyEvent::Inserted(payload[1..].to_string()),
        Some(b'-') => KeyEvent::Removed(payload[1..].to_string()),
        // From a process that does not say which.
        _ => KeyEvent::Changed(payload.to_string()),
    }
}

/// How often each store announces a heartbeat on the channel.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// Silence after which the feed counts as stalled.
const STALL_AFTER: Duration = Duration::from_millis(700);
/// The heartbeat's payload (a key id is never empty).
const HEARTBEAT: &str = "";

/// Announces a heartbeat on the channel every [`HEARTBEAT_EVERY`], through
/// the pool, so every listener on the database hears from the feed at least
/// that often while it works.
async fn heartbeat(pool: PgPool, channel: String) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ping = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&channel)
            .bind(HEARTBEAT)
            .execute(&pool);
        // Failures are the listener's to notice (it hears no heartbeat).
        if let Ok(Err(sqlx::Error::PoolClosed)) = tokio::time::timeout(STALL_AFTER, ping).await {
            return;
        }
    }
}

/// Forwards notifications as [`KeyEvent`]s. The feed must prove it works:
/// when nothing (not even a heartbeat) arrives for [`STALL_AFTER`], or the
/// connection fails, caches are told [`KeyEvent::Stalled`] and ask the
/// store for every key until the feed is back, which is announced with
/// [`KeyEvent::Flush`] (changes in between are unknown). A partition or a
/// silently stalled connection therefore fails closed within a second; it
/// never leaves caches serving removed keys.
async fn forward(
    mut listener: PgListener,
    events: broadcast::Sender<KeyEvent>,
    pool: PgPool,
    channel: String,
) {
    let beats = tokio::spawn(heartbeat(pool, channel));
    let mut stalled = false;
    let stall = |stalled: &mut bool| {
        if !*stalled {
            *stalled = true;
            let _ = events.send(KeyEvent::Stalled);
        }
    };
    loop {
        match tokio::time::timeout(STALL_AFTER, listener.try_recv()).await {
            Err(_silence) => stall(&mut stalled),
            Ok(Ok(Some(n))) => {
                if stalled {
                    stalled = false;
                    let _ = events.send(KeyEvent::Flush);
                }
                if n.payload() != HEARTBEAT {
                    let _ = events.send(event_of(n.payload()));
                }
            }
            // Lost and re-established (eager reconnect): what was announced
            // meanwhile is unknown. The next notification (a heartbeat
            // within HEARTBEAT_EVERY) proves the new connection and flushes.
            Ok(Ok(None)) => stall(&mut stalled),
            Ok(Err(sqlx::Error::PoolClosed)) => break,
            Ok(Err(why)) => {
                tracing::warn!(%why, "lost the PostgreSQL change feed; reconnecting");
                stall(&mut stalled);
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            }
        }
    }
    beats.abort();
}

/// The operations, without their time limit.
impl PostgresStore {
    async fn insert_now(&self, new: NewKey) -> Result<MachineKey, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // Serializes inserts for one user across all processes, so two
        // organizations cannot both win the binding check.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7523))")
            .bind(&new.user_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT resource_owner FROM machine_keys WHERE user_id = $1 LIMIT 1",
        )
        .bind(&new.user_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if let Some(owner) = owner
            && owner != new.resource_owner
        {
            return Err(StoreError::UserInOtherOrg(owner));
        }
        // Still under the user's advisory lock: no concurrent insert for
        // this user can pass the limit.
        if let Some(max) = new.max_keys_per_user {
            let held: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM machine_keys WHERE user_id = $1 AND resource_owner = $2",
            )
            .bind(&new.user_id)
            .bind(&new.resource_owner)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
            if u64::try_from(held).unwrap_or_default() >= max {
                return Err(StoreError::KeyLimit(max));
            }
        }
        let created = to_millis(new.created_at);
        let sequence: i64 = sqlx::query_scalar(
            "INSERT INTO machine_keys (id, user_id, resource_owner, key_type, public_key, expiration_ms, sequence, created_ms, changed_ms) \
             VALUES ($1, $2, $3, 1, $4, $5, nextval('key_event_sequence'), $6, $6) RETURNING sequence",
        )
        .bind(&new.id)
        .bind(&new.user_id)
        .bind(&new.resource_owner)
        .bind(new.public_key.spki_der())
        .bind(to_millis(new.expiration_date))
        .bind(created)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(format!("+{}", new.id))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(new.into_key(u64::try_from(sequence).unwrap_or_default()))
    }

    async fn get_now(&self, key_id: &str) -> Result<Option<MachineKey>, StoreError> {
        let row = sqlx::query(select_key_sql!("$1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_now(
        &self,
        user_id: &str,
        org_id: &str,
        query: ListQuery,
    ) -> Result<KeyPage, StoreError> {
        list_page!(&self.pool, user_id, org_id, query, ["$1", "$2", "$3", "$4"])
    }

    async fn remove_now(&self, key_id: &str) -> Result<Option<Removed>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let owner: Option<String> =
            sqlx::query_scalar("DELETE FROM machine_keys WHERE id = $1 RETURNING resource_owner")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some(resource_owner) = owner else {
            return Ok(None);
        };
        let sequence: i64 = sqlx::query_scalar("SELECT nextval('key_event_sequence')")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        // Delivered to every listener when the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(format!("-{key_id}"))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(Removed {
            sequence: u64::try_from(sequence).unwrap_or_default(),
            resource_owner,
        }))
    }

    async fn allocate_id_now(&self) -> Result<Option<String>, StoreError> {
        let id: i64 = sqlx::query_scalar("SELECT nextval('key_ids')")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(Some(id.to_string()))
    }

    async fn key_ids_now(&self) -> Result<Option<Vec<String>>, StoreError> {
        let ids = sqlx::query_scalar("SELECT id FROM machine_keys")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(Some(ids))
    }
}

/// Every operation is bounded by [`PostgresSettings::query_timeout`].
#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert(&self, new: NewKey) -> Result<MachineKey, StoreError> {
        self.timed(self.insert_now(new)).await
    }

    async fn get(&self, key_id: &str) -> Result<Option<MachineKey>, StoreError> {
        self.timed(self.get_now(key_id)).await
    }

    async fn list(
        &self,
        user_id: &str,
        org_id: &str,
        query: ListQuery,
    ) -> Result<KeyPage, StoreError> {
        self.timed(self.list_now(user_id, org_id, query)).await
    }

    async fn remove(&self, key_id: &str) -> Result<Option<Removed>, StoreError> {
        self.timed(self.remove_now(key_id)).await
    }

    async fn allocate_id(&self) -> Result<Option<String>, StoreError> {
        self.timed(self.allocate_id_now()).await
    }

    async fn key_ids(&self) -> Result<Option<Vec<String>>, StoreError> {
        self.timed(self.key_ids_now()).await
    }

    fn events(&self) -> Option<broadcast::Receiver<KeyEvent>> {
        Some(self.events.subscribe())
    }
}

impl PostgresStore {
    async fn timed<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.query_timeout, operation)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {:?}",
                    self.query_timeout
                )))
            })
    }
}
