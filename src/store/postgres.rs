use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::broadcast;

use super::{
    KeyEvent, KeyPage, KeyStore, ListQuery, NewKey, Removed, SELECT_SIGNING_KEYS, SigningKeyStore,
    StoreError, StoredSigningKey, db_error, key_from_row, signing_key_from_row, to_millis,
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
///
/// As a [`SigningKeyStore`] it keeps the token endpoint's signing keys in
/// the table `signing_keys`, shared by every replica on the database: the
/// unique generation makes replicas rotating at once store one key, not
/// two. Signing-key changes are not announced; readers list the keys again.
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
    // Until the feed is up nothing it would announce is known: caches are
    // told so, again every CHECK_EVERY (caches made meanwhile included).
    // A Stalled sent after the Flush below is ended by the feed's next
    // Current.
    struct Stalling(tokio::task::JoinHandle<()>);
    impl Drop for Stalling {
        // Also when the store (and so this task) is dropped first.
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let stalling = Stalling(tokio::spawn({
        let events = events.clone();
        async move {
            loop {
                let _ = events.send(KeyEvent::Stalled);
                tokio::time::sleep(CHECK_EVERY).await;
            }
        }
    }));
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
                drop(stalling);
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
const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
/// How far behind the feed may be before it counts as stalled: the age of
/// this store's newest heartbeat that has come back through the feed.
const STALE_AFTER: Duration = Duration::from_millis(700);
/// How often the listener checks that the feed is current.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// Heartbeat payloads start with this (a key notification starts with `+`
/// or `-`).
const HEARTBEAT_PREFIX: char = '~';

/// The heartbeats this store sent: their numbers and when they were sent,
/// so the listener can tell how current the feed is.
#[derive(Default)]
struct Beats {
    sent: std::collections::VecDeque<(u64, std::time::Instant)>,
    /// When the newest heartbeat that came back had been sent.
    current_as_of: Option<std::time::Instant>,
}

/// Announces a heartbeat (`~<store id>:<n>`) on the channel every
/// [`HEARTBEAT_EVERY`], through the pool. Notifications are delivered in
/// commit order, so when heartbeat n comes back, every change committed
/// before it was sent has been delivered: the feed is current as of its
/// sending.
async fn heartbeat(
    pool: PgPool,
    channel: String,
    me: String,
    beats: std::sync::Arc<std::sync::Mutex<Beats>>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        {
            let mut beats = beats.lock().unwrap_or_else(|e| e.into_inner());
            beats.sent.push_back((n, std::time::Instant::now()));
            // Heartbeats that never came back are kept only as long as
            // they could matter.
            while beats.sent.len() > 64 {
                beats.sent.pop_front();
            }
        }
        let ping = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&channel)
            .bind(format!("{HEARTBEAT_PREFIX}{me}:{n}"))
            .execute(&pool);
        // Failures are the listener's to notice (no heartbeat comes back).
        if let Ok(Err(sqlx::Error::PoolClosed)) = tokio::time::timeout(STALE_AFTER, ping).await {
            return;
        }
    }
}

/// A random id for this store's heartbeats.
fn store_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    format!("{:016x}", u64::from_le_bytes(bytes))
}

/// Forwards notifications as [`KeyEvent`]s. The feed must prove it is
/// current: unless this store's own heartbeat sent at most [`STALE_AFTER`]
/// ago has come back through it (a silent, broken, or merely slow
/// connection), caches are told [`KeyEvent::Stalled`] and ask the store for
/// every key until the feed is current again, which is announced with
/// [`KeyEvent::Flush`] (and, while it lasts, with [`KeyEvent::Current`]
/// every [`CHECK_EVERY`], for caches whose receiver lagged). A partition, a stalled connection or a lagging feed
/// therefore fails closed within a second; it never leaves caches serving
/// removed keys.
async fn forward(
    mut listener: PgListener,
    events: broadcast::Sender<KeyEvent>,
    pool: PgPool,
    channel: String,
) {
    let me = store_id();
    let beats = std::sync::Arc::new(std::sync::Mutex::new(Beats::default()));
    let beating = tokio::spawn(heartbeat(pool, channel, me.clone(), beats.clone()));
    let mine = format!("{HEARTBEAT_PREFIX}{me}:");
    // The listener was subscribed just before this: everything committed
    // from then on reaches it, and nothing before matters to caches that
    // load after subscribing. So the feed starts current as of now, and
    // must prove it again within STALE_AFTER.
    beats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .current_as_of = Some(std::time::Instant::now());
    let mut stalled = false;
    let mut said_current = std::time::Instant::now();
    loop {
        let received = tokio::time::timeout(CHECK_EVERY, listener.try_recv()).await;
        match received {
            Err(_tick) => {}
            Ok(Ok(Some(n))) => {
                let payload = n.payload();
                if let Some(number) = payload.strip_prefix(&mine) {
                    if let Ok(number) = number.parse::<u64>() {
                        let mut beats = beats.lock().unwrap_or_else(|e| e.into_inner());
                        while let Some(&(k, at)) = beats.sent.front() {
                            if k > number {
                                break;
                            }
                            beats.sent.pop_front();
                            if k == number {
                                beats.current_as_of = Some(at);
                            }
                        }
                    }
                } else if !payload.starts_with(HEARTBEAT_PREFIX) {
                    let _ = events.send(event_of(payload));
                }
            }
            // Lost and re-established (eager reconnect): what was announced
            // meanwhile is unknown; the next heartbeat that comes back
            // proves the new connection.
            Ok(Ok(None)) => {
                beats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .current_as_of = None;
            }
            Ok(Err(sqlx::Error::PoolClosed)) => break,
            Ok(Err(why)) => {
                tracing::warn!(%why, "lost the PostgreSQL change feed; reconnecting");
                beats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .current_as_of = None;
                // Told before the pause, not after it.
                stalled = true;
                let _ = events.send(KeyEvent::Stalled);
                tokio::time::sleep(CHECK_EVERY).await;
            }
        }
        let current = beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current_as_of
            .is_some_and(|at| at.elapsed() <= STALE_AFTER);
        if current && stalled {
            stalled = false;
            said_current = std::time::Instant::now();
            let _ = events.send(KeyEvent::Flush);
        } else if current && said_current.elapsed() >= CHECK_EVERY {
            // Repeated while it lasts, so a cache whose receiver lagged
            // (and lost a Flush) learns the feed is current again.
            said_current = std::time::Instant::now();
            let _ = events.send(KeyEvent::Current);
        } else if !current {
            // Repeated while it lasts, so a cache that lagged behind the
            // feed and missed the first one is told again within
            // CHECK_EVERY.
            stalled = true;
            let _ = events.send(KeyEvent::Stalled);
        }
    }
    beating.abort();
}

/// A read of a key is trusted only when the database answered it within
/// this time: an older answer could predate a removal that other replicas
/// must honour within a second.
const FRESH_READ: Duration = Duration::from_millis(750);

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
        check_key_limit!(tx, new, ["$1", "$2"]);
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
        // Waiting for a connection is not the read; the read itself must be
        // fresh (FRESH_READ).
        let mut connection = self.pool.acquire().await.map_err(db_error)?;
        let read = sqlx::query(select_key_sql!("$1"))
            .bind(key_id)
            .fetch_optional(&mut *connection);
        let row = tokio::time::timeout(FRESH_READ, read)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "PostgreSQL took longer than {FRESH_READ:?} to read a key"
                ))
            })?
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

/// The signing-key operations, without their time limit.
impl PostgresStore {
    async fn signing_keys_now(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let rows = sqlx::query(SELECT_SIGNING_KEYS)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(signing_key_from_row).collect()
    }

    async fn insert_signing_key_now(&self, key: StoredSigningKey) -> Result<bool, StoreError> {
        // ON CONFLICT (generation) waits for a concurrent insert of the same
        // generation to commit or roll back, so exactly one replica wins.
        insert_signing_key!(&self.pool, key, ["$1", "$2", "$3", "$4", "$5", "$6"])
    }

    async fn remove_signing_key_now(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM signing_keys WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// Every operation is bounded by [`PostgresSettings::query_timeout`].
#[async_trait]
impl SigningKeyStore for PostgresStore {
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        self.timed(self.signing_keys_now()).await
    }

    async fn insert_signing_key(&self, key: StoredSigningKey) -> Result<bool, StoreError> {
        self.timed(self.insert_signing_key_now(key)).await
    }

    async fn remove_signing_key(&self, id: &str) -> Result<(), StoreError> {
        self.timed(self.remove_signing_key_now(id)).await
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
