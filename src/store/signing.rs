//! Where the token endpoint's own signing keys live: [`SigningKeyStore`].
//!
//! Every backend keeps them beside the machine keys (the memory store in
//! memory, so they are gone at exit; SQLite and PostgreSQL in the table
//! `signing_keys`). The private half is stored sealed (AES-256-GCM under
//! the master key); a store never sees it in clear and never judges the
//! keys' lifecycle — that is the issuer's job.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;

/// A token-signing key as stored: the public half in clear, the private half
/// sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    /// The key id (`kid` of the access tokens it signs); unique in the store.
    pub id: String,
    /// 1 for a store's first key, one more for each rotation. Unique in the
    /// store, so two processes rotating at once insert one key, not two.
    pub generation: u64,
    /// The public key, DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// The private key, sealed under the master key (never in clear).
    pub sealed_private_key: Vec<u8>,
    /// When the key was stored (and so published in the JWKS). Millisecond
    /// precision, as every backend keeps it.
    pub created_at: DateTime<Utc>,
    /// When the key starts signing. Millisecond precision.
    pub signs_from: DateTime<Utc>,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("created_at", &self.created_at)
            .field("signs_from", &self.signs_from)
            .finish_non_exhaustive()
    }
}

/// Persistent storage of the token endpoint's signing keys.
///
/// Implementations must be safe under concurrent calls, from one process or
/// many sharing the store.
#[async_trait]
pub trait SigningKeyStore: Send + Sync + 'static {
    /// Every stored signing key, oldest generation first.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError>;

    /// Inserts `key` unless a key of the same generation exists, atomically:
    /// `Ok(true)` when inserted, `Ok(false)` when another caller stored that
    /// generation first (then read the keys again).
    /// [`StoreError::DuplicateId`] when the id is taken.
    async fn insert_signing_key(&self, key: StoredSigningKey) -> Result<bool, StoreError>;

    /// Deletes the signing key with this id; deleting an absent key is not
    /// an error.
    async fn remove_signing_key(&self, id: &str) -> Result<(), StoreError>;
}

#[async_trait]
impl<S: SigningKeyStore + ?Sized> SigningKeyStore for std::sync::Arc<S> {
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        (**self).signing_keys().await
    }
    async fn insert_signing_key(&self, key: StoredSigningKey) -> Result<bool, StoreError> {
        (**self).insert_signing_key(key).await
    }
    async fn remove_signing_key(&self, id: &str) -> Result<(), StoreError> {
        (**self).remove_signing_key(id).await
    }
}
