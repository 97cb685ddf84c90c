//! Where machine keys live: the [`KeyStore`] trait and its backends.
//!
//! A store persists and finds; it does not judge expiry, permissions or
//! input — that is [`KeyService`](crate::KeyService)'s job. The one rule a
//! store enforces is the one that needs atomicity: a user's keys all live in
//! one organization ([`StoreError::UserInOtherOrg`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::key::{KeyType, MachineKey, PublicKey};

/// The columns a stored key is read from: one list for every SQL backend.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! key_columns {
    () => {
        "id, user_id, resource_owner, public_key, expiration_ms, sequence, created_ms, changed_ms"
    };
}

/// One key by id; `$id` is the backend's placeholder (`?` or `$1`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! select_key_sql {
    ($id:literal) => {
        concat!(
            "SELECT ",
            key_columns!(),
            " FROM machine_keys WHERE id = ",
            $id
        )
    };
}

/// A page of a user's keys in one organization, for every SQL backend: one
/// query with the total as a window count, and a count only when the page
/// is empty (offset past the end, or limit 0). The placeholders are the
/// backend's, for user, organization, limit and offset.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! list_page {
    ($pool:expr, $user:expr, $org:expr, $query:expr, [$u:literal, $o:literal, $l:literal, $off:literal]) => {{
        macro_rules! page_sql {
            ($order:literal) => {
                concat!(
                    "SELECT ",
                    key_columns!(),
                    ", COUNT(*) OVER () AS total FROM machine_keys WHERE user_id = ",
                    $u,
                    " AND resource_owner = ",
                    $o,
                    " ORDER BY sequence ",
                    $order,
                    " LIMIT ",
                    $l,
                    " OFFSET ",
                    $off
                )
            };
        }
        let sql = if $query.asc {
            page_sql!("ASC")
        } else {
            page_sql!("DESC")
        };
        let rows = sqlx::query(sql)
            .bind($user)
            .bind($org)
            .bind(i64::from($query.limit))
            .bind(i64::try_from($query.offset).unwrap_or(i64::MAX))
            .fetch_all($pool)
            .await
            .map_err(db_error)?;
        let total: i64 = match rows.first() {
            Some(row) => sqlx::Row::try_get(row, "total")
                .map_err(|e| StoreError::Unavailable(e.to_string()))?,
            None => sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM machine_keys WHERE user_id = ",
                $u,
                " AND resource_owner = ",
                $o
            ))
            .bind($user)
            .bind($org)
            .fetch_one($pool)
            .await
            .map_err(db_error)?,
        };
        let keys = rows
            .iter()
            .map(key_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyPage {
            total: u64::try_from(total).unwrap_or_default(),
            view_timestamp: chrono::Utc::now(),
            keys,
        })
    }};
}

/// The per-user key limit, checked inside the insert's transaction `$tx`
/// (which must already exclude concurrent inserts for the user); the
/// placeholders are the backend's.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! check_key_limit {
    ($tx:expr, $new:expr, [$u:literal, $o:literal]) => {
        if let Some(max) = $new.max_keys_per_user {
            let held: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM machine_keys WHERE user_id = ",
                $u,
                " AND resource_owner = ",
                $o
            ))
            .bind(&$new.user_id)
            .bind(&$new.resource_owner)
            .fetch_one(&mut *$tx)
            .await
            .map_err(db_error)?;
            if u64::try_from(held).unwrap_or_default() >= max {
                return Err(StoreError::KeyLimit(max));
            }
        }
    };
}

/// The columns of `signing_keys`, in the order every SQL backend reads and
/// writes them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! signing_key_columns {
    () => {
        "id, generation, public_key, sealed_private_key, created_ms, signs_from_ms"
    };
}

/// Inserts the [`StoredSigningKey`] `$key` through `$executor` unless its
/// generation is taken, for every SQL backend: `Ok(true)` when inserted,
/// `Ok(false)` when a key of that generation exists (`ON CONFLICT
/// (generation)`, checked before any other constraint by SQLite and
/// PostgreSQL alike); an id that is taken is a unique violation, so
/// [`StoreError::DuplicateId`]. The placeholders are the backend's.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! insert_signing_key {
    ($executor:expr, $key:expr, [$p1:literal, $p2:literal, $p3:literal, $p4:literal, $p5:literal, $p6:literal]) => {{
        let key: &StoredSigningKey = &$key;
        let generation = i64::try_from(key.generation).map_err(|_| {
            StoreError::Unavailable(format!(
                "signing key {}: generation {} is too large to store",
                key.id, key.generation
            ))
        })?;
        sqlx::query(concat!(
            "INSERT INTO signing_keys (",
            signing_key_columns!(),
            ") VALUES (",
            $p1,
            ", ",
            $p2,
            ", ",
            $p3,
            ", ",
            $p4,
            ", ",
            $p5,
            ", ",
            $p6,
            ") ON CONFLICT (generation) DO NOTHING"
        ))
        .bind(&key.id)
        .bind(generation)
        .bind(&key.public_key_der)
        .bind(&key.sealed_private_key)
        .bind(to_millis(key.created_at))
        .bind(to_millis(key.signs_from))
        .execute($executor)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(db_error)
    }};
}

mod cached;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod signing;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use cached::{CacheSettings, CachedStore, KeyLookup};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresSettings, PostgresStore};
pub use signing::{SigningKeyStore, StoredSigningKey};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// A change to stored keys made by another process, announced by stores
/// shared between processes (PostgreSQL). [`CachedStore`] listens, drops
/// the key from its cache and updates its directory of existing key ids.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyEvent {
    /// The key with this id was inserted.
    Inserted(String),
    /// The key with this id was removed.
    Removed(String),
    /// The key with this id was inserted or removed (which is not known).
    Changed(String),
    /// Changes may have been missed (the feed reconnected): forget everything.
    /// Also ends a [`Stalled`](KeyEvent::Stalled) period.
    Flush,
    /// The feed cannot show that it delivers changes (no heartbeat, or its
    /// connection failed): until the next [`Flush`](KeyEvent::Flush) (or
    /// [`Current`](KeyEvent::Current)), a cache must not answer from what it
    /// holds, only from the store.
    Stalled,
    /// The feed is current (repeated while it is, at most every 100 ms on
    /// PostgreSQL). Ends a [`Stalled`](KeyEvent::Stalled) period for a
    /// cache that lost the [`Flush`](KeyEvent::Flush) which ended it: a
    /// receiver that lags flushes everything, and the lag does not end the
    /// stall by itself.
    Current,
}

/// A key to insert; the store assigns its `sequence`.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// The key id, chosen by the service; must be unique in the store.
    pub id: String,
    /// The machine user.
    pub user_id: String,
    /// The organization.
    pub resource_owner: String,
    /// The key type.
    pub key_type: KeyType,
    /// The public key.
    pub public_key: PublicKey,
    /// The expiration date.
    pub expiration_date: DateTime<Utc>,
    /// Creation (and change) time.
    pub created_at: DateTime<Utc>,
    /// When set, the insert fails with [`StoreError::KeyLimit`] if the user
    /// already holds this many keys in the organization — checked
    /// atomically with the insert, so concurrent creates cannot pass it.
    pub max_keys_per_user: Option<u64>,
}

impl NewKey {
    /// The stored key this becomes with `sequence`. Timestamps are kept at
    /// millisecond precision, as every backend stores them.
    pub fn into_key(self, sequence: u64) -> MachineKey {
        let millis =
            |t: DateTime<Utc>| DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t);
        let created = millis(self.created_at);
        MachineKey {
            details: crate::key::Details {
                sequence,
                creation_date: created,
                change_date: created,
                resource_owner: self.resource_owner.clone(),
            },
            id: self.id,
            user_id: self.user_id,
            resource_owner: self.resource_owner,
            key_type: self.key_type,
            public_key: self.public_key,
            expiration_date: millis(self.expiration_date),
        }
    }
}

/// Which page of a user's keys to list.
///
/// [`KeyService::list`](crate::KeyService::list) takes it as received (a
/// `limit` of 0 means 100; above 1000 is refused) and hands the store a
/// `limit` between 1 and 1000.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// How many keys to skip.
    pub offset: u64,
    /// How many keys to return at most.
    pub limit: u32,
    /// Oldest first when true; newest first otherwise.
    pub asc: bool,
}

/// One page of a user's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPage {
    /// How many keys the user has in the organization in all.
    pub total: u64,
    /// When the page was read: the system time as the store answered;
    /// [`KeyService::list`](crate::KeyService::list) replaces it with the
    /// time of its [`Clock`](crate::Clock) when the request began.
    pub view_timestamp: DateTime<Utc>,
    /// The keys of this page.
    pub keys: Vec<MachineKey>,
}

/// What a removal changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// The sequence allocated for the removal.
    pub sequence: u64,
    /// The organization the key belonged to.
    pub resource_owner: String,
}

/// Why a store operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// A key with this id exists already.
    DuplicateId,
    /// The user already has keys in another organization (named here, for
    /// logs; never shown to callers).
    UserInOtherOrg(String),
    /// The user holds this many keys already: the
    /// [`max_keys_per_user`](NewKey::max_keys_per_user) of the insert.
    KeyLimit(u64),
    /// The store cannot be reached (or answered with an I/O error).
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::DuplicateId => f.write_str("a key with this id exists"),
            StoreError::UserInOtherOrg(org) => {
                write!(f, "the user's keys belong to organization {org}")
            }
            StoreError::KeyLimit(max) => write!(f, "the user holds {max} keys already"),
            StoreError::Unavailable(why) => write!(f, "key store unavailable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Persistent storage of machine keys.
///
/// Implementations must be safe under concurrent calls. Key ids are unique
/// per store; `sequence` values only grow.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Inserts a key, allocating its sequence. Fails with
    /// [`StoreError::DuplicateId`] when the id is taken and with
    /// [`StoreError::UserInOtherOrg`] when the user has keys in another
    /// organization, and with [`StoreError::KeyLimit`] when the user holds
    /// [`max_keys_per_user`](NewKey::max_keys_per_user) keys there already —
    /// all checked atomically with the insert.
    async fn insert(&self, key: NewKey) -> Result<MachineKey, StoreError>;

    /// The key with this id, whoever owns it.
    async fn get(&self, key_id: &str) -> Result<Option<MachineKey>, StoreError>;

    /// A page of `user_id`'s keys in organization `org_id`, ordered by
    /// creation (sequence).
    async fn list(
        &self,
        user_id: &str,
        org_id: &str,
        query: ListQuery,
    ) -> Result<KeyPage, StoreError>;

    /// Removes the key with this id; `None` when there is none.
    async fn remove(&self, key_id: &str) -> Result<Option<Removed>, StoreError>;

    /// A new key id allocated by the store, for stores shared by several
    /// processes; `None` (the default) lets the service generate one.
    async fn allocate_id(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// Changes made by other processes, for stores that can announce them;
    /// `None` (the default) when there is no such feed.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<KeyEvent>> {
        None
    }

    /// Every stored key id, for [`CachedStore`]'s directory of existing
    /// ids (which answers "unknown key" without a store read). `None` (the
    /// default) when the store cannot list them: then every unknown id costs
    /// a store read, within the cache's miss budget.
    async fn key_ids(&self) -> Result<Option<Vec<String>>, StoreError> {
        Ok(None)
    }
}

#[async_trait]
impl<S: KeyStore + ?Sized> KeyStore for std::sync::Arc<S> {
    async fn insert(&self, key: NewKey) -> Result<MachineKey, StoreError> {
        (**self).insert(key).await
    }
    async fn get(&self, key_id: &str) -> Result<Option<MachineKey>, StoreError> {
        (**self).get(key_id).await
    }
    async fn list(
        &self,
        user_id: &str,
        org_id: &str,
        query: ListQuery,
    ) -> Result<KeyPage, StoreError> {
        (**self).list(user_id, org_id, query).await
    }
    async fn remove(&self, key_id: &str) -> Result<Option<Removed>, StoreError> {
        (**self).remove(key_id).await
    }
    async fn allocate_id(&self) -> Result<Option<String>, StoreError> {
        (**self).allocate_id().await
    }
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<KeyEvent>> {
        (**self).events()
    }
    async fn key_ids(&self) -> Result<Option<Vec<String>>, StoreError> {
        (**self).key_ids().await
    }
}

/// Milliseconds since the epoch, as durable stores keep timestamps.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Maps a database error: a unique violation is a duplicate id, anything
/// else means the store cannot serve the request.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn db_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::DuplicateId;
    }
    StoreError::Unavailable(e.to_string())
}

/// Reads a key from a row of `machine_keys` (any sqlx backend).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn key_from_row<'r, R>(row: &'r R) -> Result<MachineKey, StoreError>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'r [u8]: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let column = |e: sqlx::Error| StoreError::Unavailable(e.to_string());
    let id: String = row.try_get("id").map_err(column)?;
    let public_key: &[u8] = row.try_get("public_key").map_err(column)?;
    let public_key = PublicKey::from_spki_der(public_key)
        .map_err(|e| StoreError::Unavailable(format!("stored key {id} is unreadable: {e}")))?;
    let resource_owner: String = row.try_get("resource_owner").map_err(column)?;
    let sequence: i64 = row.try_get("sequence").map_err(column)?;
    Ok(MachineKey {
        id,
        user_id: row.try_get("user_id").map_err(column)?,
        key_type: KeyType::Json,
        public_key,
        expiration_date: from_millis(row.try_get("expiration_ms").map_err(column)?),
        details: crate::key::Details {
            sequence: u64::try_from(sequence).unwrap_or_default(),
            creation_date: from_millis(row.try_get("created_ms").map_err(column)?),
            change_date: from_millis(row.try_get("changed_ms").map_err(column)?),
            resource_owner: resource_owner.clone(),
        },
        resource_owner,
    })
}

/// Every stored signing key, oldest generation first (every SQL backend).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const SELECT_SIGNING_KEYS: &str = concat!(
    "SELECT ",
    signing_key_columns!(),
    " FROM signing_keys ORDER BY generation ASC"
);

/// Reads a signing key from a row of `signing_keys` (any sqlx backend). A
/// row no backend would have written (a negative generation, a timestamp
/// out of range) makes the store unavailable rather than yield a key.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn signing_key_from_row<'r, R>(row: &'r R) -> Result<StoredSigningKey, StoreError>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'r [u8]: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let column = |e: sqlx::Error| StoreError::Unavailable(e.to_string());
    let id: String = row.try_get("id").map_err(column)?;
    let bad = |what: String| {
        StoreError::Unavailable(format!("stored signing key {id} is unreadable: {what}"))
    };
    let generation: i64 = row.try_get("generation").map_err(column)?;
    let generation =
        u64::try_from(generation).map_err(|_| bad(format!("generation {generation}")))?;
    let time = |name: &'static str| -> Result<DateTime<Utc>, StoreError> {
        let ms: i64 = row.try_get(name).map_err(column)?;
        DateTime::from_timestamp_millis(ms).ok_or_else(|| bad(format!("{name} {ms}")))
    };
    let created_at = time("created_ms")?;
    let signs_from = time("signs_from_ms")?;
    let public_key: &[u8] = row.try_get("public_key").map_err(column)?;
    let sealed: &[u8] = row.try_get("sealed_private_key").map_err(column)?;
    Ok(StoredSigningKey {
        generation,
        public_key_der: public_key.to_vec(),
        sealed_private_key: sealed.to_vec(),
        created_at,
        signs_from,
        id,
    })
}
