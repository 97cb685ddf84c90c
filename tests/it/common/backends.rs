//! Key-store backends for tests: each opens a fresh, isolated store and can
//! reopen it (a new connection to the same storage).
#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use jwt_profile::store::{KeyStore, MemoryStore, SigningKeyStore};

/// Both store traits every backend implements, as one trait object.
pub trait Stores: KeyStore + SigningKeyStore {}

impl<S: KeyStore + SigningKeyStore + ?Sized> Stores for S {}

#[async_trait]
pub trait Backend: Send + Sync {
    /// The store under test.
    fn store(&self) -> Arc<dyn KeyStore>;
    /// The same store, as the signing keys' store.
    fn signing(&self) -> Arc<dyn SigningKeyStore>;
    /// A new store over the same storage (a restart).
    async fn reopen(&self) -> Arc<dyn Stores>;
    /// Whether keys survive `reopen`.
    fn durable(&self) -> bool;
    /// Runs `sql` on the backend's storage directly (to plant rows no store
    /// would write); `false` when the backend has no SQL.
    async fn raw_sql(&self, _sql: &str) -> bool {
        false
    }
    /// Frees what the backend created.
    async fn cleanup(&self) {}
}

pub struct Memory(Arc<MemoryStore>);

#[async_trait]
impl Backend for Memory {
    fn store(&self) -> Arc<dyn KeyStore> {
        self.0.clone()
    }
    fn signing(&self) -> Arc<dyn SigningKeyStore> {
        self.0.clone()
    }
    async fn reopen(&self) -> Arc<dyn Stores> {
        Arc::new(MemoryStore::new())
    }
    fn durable(&self) -> bool {
        false
    }
}

pub async fn memory() -> Option<Box<dyn Backend>> {
    Some(Box::new(Memory(Arc::new(MemoryStore::new()))))
}

#[cfg(feature = "sqlite")]
pub struct Sqlite {
    dir: tempfile::TempDir,
    store: Arc<jwt_profile::store::SqliteStore>,
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl Backend for Sqlite {
    fn store(&self) -> Arc<dyn KeyStore> {
        self.store.clone()
    }
    fn signing(&self) -> Arc<dyn SigningKeyStore> {
        self.store.clone()
    }
    async fn reopen(&self) -> Arc<dyn Stores> {
        self.store.close().await;
        Arc::new(
            jwt_profile::store::SqliteStore::open_path(self.dir.path().join("keys.db"))
                .await
                .expect("reopen"),
        )
    }
    fn durable(&self) -> bool {
        true
    }
    async fn raw_sql(&self, sql: &str) -> bool {
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(self.dir.path().join("keys.db"));
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("open the file");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&pool)
            .await
            .expect("raw SQL");
        pool.close().await;
        true
    }
}

#[cfg(feature = "sqlite")]
pub async fn sqlite() -> Option<Box<dyn Backend>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = jwt_profile::store::SqliteStore::open_path(dir.path().join("keys.db"))
        .await
        .expect("open");
    Some(Box::new(Sqlite {
        dir,
        store: Arc::new(store),
    }))
}

/// The PostgreSQL URL tests use: `JWT_PROFILE_TEST_POSTGRES`, else the local
/// server.
#[cfg(feature = "postgres")]
pub fn postgres_url() -> String {
    std::env::var("JWT_PROFILE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A fresh schema on the test database, or `None` (and a note) when no
/// database answers and none was asked for. Under `CI=true`, or with
/// `JWT_PROFILE_TEST_POSTGRES` set, an unreachable database fails the test.
#[cfg(feature = "postgres")]
pub async fn postgres_schema() -> Option<(String, sqlx::postgres::PgConnectOptions)> {
    use std::str::FromStr;
    let url = postgres_url();
    let admin = match sqlx::PgPool::connect(&url).await {
        Ok(pool) => pool,
        Err(e) => {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("JWT_PROFILE_TEST_POSTGRES").is_ok();
            if required {
                panic!(
                    "PostgreSQL at {url} is required here (CI=true or JWT_PROFILE_TEST_POSTGRES set) but unreachable: {e}"
                );
            }
            eprintln!(
                "SKIPPED: no PostgreSQL at {url} ({e}); set JWT_PROFILE_TEST_POSTGRES to run these tests"
            );
            return None;
        }
    };
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).expect("rng");
    let schema = format!("jwtp_test_{}", u64::from_le_bytes(random));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .expect("url")
        .options([("search_path", schema.as_str())]);
    Some((schema, options))
}

#[cfg(feature = "postgres")]
pub async fn drop_schema(schema: &str) {
    if let Ok(admin) = sqlx::PgPool::connect(&postgres_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

#[cfg(feature = "postgres")]
pub struct Postgres {
    schema: String,
    options: sqlx::postgres::PgConnectOptions,
    store: Arc<jwt_profile::store::PostgresStore>,
}

#[cfg(feature = "postgres")]
#[async_trait]
impl Backend for Postgres {
    fn store(&self) -> Arc<dyn KeyStore> {
        self.store.clone()
    }
    fn signing(&self) -> Arc<dyn SigningKeyStore> {
        self.store.clone()
    }
    async fn reopen(&self) -> Arc<dyn Stores> {
        Arc::new(
            jwt_profile::store::PostgresStore::connect_with(
                self.options.clone(),
                Default::default(),
            )
            .await
            .expect("reconnect"),
        )
    }
    fn durable(&self) -> bool {
        true
    }
    async fn raw_sql(&self, sql: &str) -> bool {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(self.store.pool())
            .await
            .expect("raw SQL");
        true
    }
    async fn cleanup(&self) {
        self.store.pool().close().await;
        drop_schema(&self.schema).await;
    }
}

#[cfg(feature = "postgres")]
pub async fn postgres() -> Option<Box<dyn Backend>> {
    let (schema, options) = postgres_schema().await?;
    let store =
        jwt_profile::store::PostgresStore::connect_with(options.clone(), Default::default())
            .await
            .expect("connect");
    Some(Box::new(Postgres {
        schema,
        options,
        store: Arc::new(store),
    }))
}
