use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::{
    KeyPage, KeyStore, ListQuery, NewKey, Removed, SELECT_SIGNING_KEYS, SigningKeyStore,
    StoreError, StoredSigningKey, db_error, key_from_row, signing_key_from_row, to_millis,
};
use crate::key::MachineKey;

/// An embedded, durable store in one SQLite file (feature `sqlite`).
///
/// Migrations are embedded and run on open. The file is in WAL mode: reads
/// go through a small pool and never wait for writes; writes go through one
/// connection, so they are serialized without `SQLITE_BUSY` retries.
///
/// As a [`SigningKeyStore`] it keeps the token endpoint's signing keys in
/// the table `signing_keys` of the same file.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use jwt_profile::store::{CachedStore, SqliteStore};
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open_path(dir.path().join("keys.db")).await.unwrap();
/// let cached = CachedStore::new(store);
/// # let _ = cached;
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
}

async fn next_sequence(tx: &mut Transaction<'static, Sqlite>) -> Result<i64, StoreError> {
    sqlx::query_scalar("UPDATE key_sequence SET value = value + 1 WHERE id = 1 RETURNING value")
        .fetch_one(&mut **tx)
        .await
        .map_err(db_error)
}

impl SqliteStore {
    /// Opens (creating if missing) the database named by a URL such as
    /// `sqlite://jwt-profile.db` or `sqlite:///var/lib/keys.db`.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL {url:?}: {e}")))?;
        SqliteStore::open_with(options).await
    }

    /// Opens (creating if missing) the database file at `path`.
    pub async fn open_path(path: impl AsRef<std::path::Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<SqliteStore, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let unavailable = |e: sqlx::Error| StoreError::Unavailable(e.to_string());
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Unavailable(format!("SQLite migration failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Ok(SqliteStore { reader, writer })
    }

    /// Closes the database (waits for connections in use).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert(&self, new: NewKey) -> Result<MachineKey, StoreError> {
        // IMMEDIATE takes the write lock first, so the checks below and the
        // insert are atomic even against other processes on the same file.
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)?;
        let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM machine_keys WHERE id = ?")
            .bind(&new.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if taken.is_some() {
            return Err(StoreError::DuplicateId);
        }
        let owner: Option<String> =
            sqlx::query_scalar("SELECT resource_owner FROM machine_keys WHERE user_id = ? LIMIT 1")
                .bind(&new.user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        if let Some(owner) = owner
            && owner != new.resource_owner
        {
            return Err(StoreError::UserInOtherOrg(owner));
        }
        check_key_limit!(tx, new, ["?", "?"]);
        let sequence = next_sequence(&mut tx).await?;
        let created = to_millis(new.created_at);
        sqlx::query(
            "INSERT INTO machine_keys (id, user_id, resource_owner, key_type, public_key, expiration_ms, sequence, created_ms, changed_ms) \
             VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
        )
        .bind(&new.id)
        .bind(&new.user_id)
        .bind(&new.resource_owner)
        .bind(new.public_key.spki_der())
        .bind(to_millis(new.expiration_date))
        .bind(sequence)
        .bind(created)
        .bind(created)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(new.into_key(u64::try_from(sequence).unwrap_or_default()))
    }

    async fn get(&self, key_id: &str) -> Result<Option<MachineKey>, StoreError> {
        let row = sqlx::query(select_key_sql!("?"))
            .bind(key_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list(
        &self,
        user_id: &str,
        org_id: &str,
        query: ListQuery,
    ) -> Result<KeyPage, StoreError> {
        list_page!(&self.reader, user_id, org_id, query, ["?", "?", "?", "?"])
    }

    async fn key_ids(&self) -> Result<Option<Vec<String>>, StoreError> {
        let ids = sqlx::query_scalar("SELECT id FROM machine_keys")
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        Ok(Some(ids))
    }

    async fn remove(&self, key_id: &str) -> Result<Option<Removed>, StoreError> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)?;
        let owner: Option<String> =
            sqlx::query_scalar("DELETE FROM machine_keys WHERE id = ? RETURNING resource_owner")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some(resource_owner) = owner else {
            return Ok(None);
        };
        let sequence = next_sequence(&mut tx).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(Removed {
            sequence: u64::try_from(sequence).unwrap_or_default(),
            resource_owner,
        }))
    }
}

#[async_trait]
impl SigningKeyStore for SqliteStore {
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let rows = sqlx::query(SELECT_SIGNING_KEYS)
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        rows.iter().map(signing_key_from_row).collect()
    }

    async fn insert_signing_key(&self, key: StoredSigningKey) -> Result<bool, StoreError> {
        // One statement, so atomic on its own; through the writer like every
        // write. Another process inserting the same generation at once
        // waits for the file's write lock, then finds the generation taken.
        insert_signing_key!(&self.writer, key, ["?", "?", "?", "?", "?", "?"])
    }

    async fn remove_signing_key(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM signing_keys WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
