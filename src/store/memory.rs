use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    KeyPage, KeyStore, ListQuery, NewKey, Removed, SigningKeyStore, StoreError, StoredSigningKey,
};
use crate::key::MachineKey;

/// An in-process store: fast, shared by clones of an `Arc`, gone at exit.
///
/// It keeps machine keys and, as a [`SigningKeyStore`], the token
/// endpoint's signing keys, both under one mutex and both lost when the
/// process exits (a restarted server starts with a new signing key).
///
/// ```
/// use jwt_profile::store::MemoryStore;
/// let store = MemoryStore::new();
/// # let _ = store;
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sequence: u64,
    keys: HashMap<String, MachineKey>,
    /// Per user: the key ids in creation order.
    by_user: HashMap<String, Vec<String>>,
    /// The signing keys by generation.
    signing: BTreeMap<u64, StoredSigningKey>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code path panics while holding the lock; recover anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert(&self, new: NewKey) -> Result<MachineKey, StoreError> {
        let mut inner = self.lock();
        if inner.keys.contains_key(&new.id) {
            return Err(StoreError::DuplicateId);
        }
        if let Some(first) = inner
            .by_user
            .get(&new.user_id)
            .and_then(|ids| ids.first())
            .and_then(|id| inner.keys.get(id))
            && first.resource_owner != new.resource_owner
        {
            return Err(StoreError::UserInOtherOrg(first.resource_owner.clone()));
        }
        if let Some(max) = new.max_keys_per_user {
            let held = inner.by_user.get(&new.user_id).map_or(0, Vec::len) as u64;
            if held >= max {
                return Err(StoreError::KeyLimit(max));
            }
        }
        inner.sequence += 1;
        let key = new.into_key(inner.sequence);
        inner.keys.insert(key.id.clone(), key.clone());
        inner
            .by_user
            .entry(key.user_id.clone())
            .or_default()
            .push(key.id.clone());
        Ok(key)
    }

    async fn get(&self, key_id: &str) -> Result<Option<MachineKey>, StoreError> {
        Ok(self.lock().keys.get(key_id).cloned())
    }

    async fn list(
        &self,
        user_id: &str,
        org_id: &str,
        query: ListQuery,
    ) -> Result<KeyPage, StoreError> {
        let inner = self.lock();
        let mine: Vec<&MachineKey> = inner
            .by_user
            .get(user_id)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| inner.keys.get(id))
                    .filter(|k| k.resource_owner == org_id)
                    .collect()
            })
            .unwrap_or_default();
        let total = mine.len() as u64;
        let skip = usize::try_from(query.offset).unwrap_or(usize::MAX);
        let take = query.limit as usize;
        let keys = if query.asc {
            mine.iter()
                .skip(skip)
                .take(take)
                .map(|k| (*k).clone())
                .collect()
        } else {
            mine.iter()
                .rev()
                .skip(skip)
                .take(take)
                .map(|k| (*k).clone())
                .collect()
        };
        Ok(KeyPage {
            total,
            view_timestamp: chrono::Utc::now(),
            keys,
        })
    }

    async fn key_ids(&self) -> Result<Option<Vec<String>>, StoreError> {
        Ok(Some(self.lock().keys.keys().cloned().collect()))
    }

    async fn remove(&self, key_id: &str) -> Result<Option<Removed>, StoreError> {
        let mut inner = self.lock();
        let Some(key) = inner.keys.remove(key_id) else {
            return Ok(None);
        };
        if let Some(ids) = inner.by_user.get_mut(&key.user_id) {
            ids.retain(|id| id != key_id);
            if ids.is_empty() {
                inner.by_user.remove(&key.user_id);
            }
        }
        inner.sequence += 1;
        Ok(Some(Removed {
            sequence: inner.sequence,
            resource_owner: key.resource_owner,
        }))
    }
}

/// `t` at millisecond precision, as the durable stores keep it.
fn at_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

#[async_trait]
impl SigningKeyStore for MemoryStore {
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        Ok(self.lock().signing.values().cloned().collect())
    }

    async fn insert_signing_key(&self, key: StoredSigningKey) -> Result<bool, StoreError> {
        // What the SQL backends can store (BIGINT), so every backend
        // accepts the same keys.
        if i64::try_from(key.generation).is_err() {
            return Err(StoreError::Unavailable(format!(
                "signing key {}: generation {} is too large to store",
                key.id, key.generation
            )));
        }
        let mut inner = self.lock();
        // The generation first, as the SQL backends check it.
        if inner.signing.contains_key(&key.generation) {
            return Ok(false);
        }
        if inner.signing.values().any(|k| k.id == key.id) {
            return Err(StoreError::DuplicateId);
        }
        let key = StoredSigningKey {
            created_at: at_millis(key.created_at),
            signs_from: at_millis(key.signs_from),
            ..key
        };
        inner.signing.insert(key.generation, key);
        Ok(true)
    }

    async fn remove_signing_key(&self, id: &str) -> Result<(), StoreError> {
        self.lock().signing.retain(|_, k| k.id != id);
        Ok(())
    }
}
