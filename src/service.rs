//! [`KeyService`]: create, get, list and remove machine keys — the one home
//! of the key operations' rules (input, organization scoping, permission,
//! binding, limits).
//! The REST adapter (and any other) only translates to and from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorKind};
use crate::key::{self, Details, KeyType, MachineKey, PublicKey};
use crate::key_file::KeyFile;
use crate::policy::{Action, DefaultPolicy, KeyAccess, Policy};
use crate::principal::Principal;
use crate::store::{CachedStore, KeyPage, KeyStore, ListQuery, NewKey, StoreError};

/// Page size when a list request names none (or 0).
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Largest page size a list request may ask for.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// What kind of identifier is being checked; names the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdKind {
    /// A machine user id.
    User,
    /// A key id.
    Key,
    /// An organization id.
    Org,
}

impl IdKind {
    fn name(self) -> &'static str {
        match self {
            IdKind::User => "userId",
            IdKind::Key => "keyId",
            IdKind::Org => "organization id",
        }
    }

    fn error_kind(self) -> ErrorKind {
        match self {
            IdKind::User => ErrorKind::UserIdInvalid,
            IdKind::Key => ErrorKind::KeyIdInvalid,
            IdKind::Org => ErrorKind::OrgIdInvalid,
        }
    }
}

/// Checks an identifier: 1–200 bytes of UTF-8, no control
/// characters, no `/`.
pub(crate) fn validate_id(kind: IdKind, value: &str) -> Result<(), Error> {
    match key::id_problem(value) {
        Some(p) => Err(kind.error_kind().error(format!("{} {p}", kind.name()))),
        None => Ok(()),
    }
}

/// A request to create a key.
#[derive(Clone, Debug, Default)]
pub struct CreateKey {
    /// The key type (only JSON exists).
    pub key_type: KeyType,
    /// When the key expires; `None` means `9999-12-31T23:59:59Z`.
    pub expiration_date: Option<DateTime<Utc>>,
    /// The user's own public key as a PEM document; `None` means the server
    /// generates an RSA-2048 key pair and returns its key file once.
    pub public_key: Option<Vec<u8>>,
}

/// The result of [`KeyService::create`].
#[derive(Debug)]
pub struct CreatedKey {
    /// The stored key.
    pub key: MachineKey,
    /// The key file with the private key, when the server generated the pair.
    /// It exists only here: it is never stored.
    pub key_file: Option<KeyFile>,
}

type IdGenerator = dyn Fn() -> String + Send + Sync;

/// The key operations (create, get, list, remove) over a [`KeyStore`].
///
/// ```
/// # tokio_test_block(async {
/// use jwt_profile::{KeyService, Principal};
/// use jwt_profile::policy::DefaultPolicy;
/// use jwt_profile::CreateKey;
/// use jwt_profile::store::{CachedStore, MemoryStore};
///
/// let store = CachedStore::new(MemoryStore::new());
/// let keys = KeyService::new(store).with_policy(DefaultPolicy::new().with_admin("default", "admin"));
/// let admin = Principal::new("admin", "default", "bootstrap");
/// let created = keys.create(&admin, None, "ci-bot", CreateKey::default()).await.unwrap();
/// assert!(created.key_file.is_some());
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn KeyStore>,
    policy: Arc<dyn Policy>,
    clock: Arc<dyn Clock>,
    ids: Option<Arc<IdGenerator>>,
    max_keys_per_user: Option<u64>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService").finish_non_exhaustive()
    }
}

fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::DuplicateId => {
            ErrorKind::KeyIdExists.error("a key with this id exists already")
        }
        // Which organization is not said: a caller allowed to manage keys
        // in one organization learns nothing about another.
        StoreError::UserInOtherOrg(_) => {
            ErrorKind::UserInOtherOrg.error("the user's keys belong to another organization")
        }
        StoreError::KeyLimit(max) => key_limit(max),
        StoreError::Unavailable(why) => {
            tracing::warn!(%why, "key store unavailable");
            Error::unavailable(why)
        }
    }
}

fn key_limit(max: u64) -> Error {
    ErrorKind::KeyLimitReached.error(format!(
        "the user holds {max} keys already; at most {max} are allowed"
    ))
}

/// Bounds how many RSA key pairs are generated at once, process-wide:
/// generation runs on tokio's blocking pool, at most one per core, so
/// creating keys can neither stall the async executor nor queue unbounded
/// work.
fn keygen_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// Generates an RSA-2048 key pair off the async executor.
async fn generate_key_pair() -> Result<key::GeneratedKeyPair, Error> {
    let internal = || ErrorKind::KeyGenerationFailed.error("RSA key generation failed");
    let _permit = keygen_permits().acquire().await.map_err(|_| internal())?;
    tokio::task::spawn_blocking(key::generate_rsa_key_pair)
        .await
        .map_err(|_| internal())?
}

fn not_found() -> Error {
    ErrorKind::KeyNotFound.error("no such key for this user and organization")
}

impl KeyService {
    /// A service over `store` with the default policy and no administrators.
    ///
    /// It takes the [`CachedStore`] — not a bare [`KeyStore`] — so every
    /// write goes through the cache the verifier reads: give the verifier a
    /// clone of the same value, and a removal takes effect there at once.
    pub fn new(store: CachedStore) -> KeyService {
        KeyService {
            store: Arc::new(store),
            policy: Arc::new(DefaultPolicy::new()),
            clock: Arc::new(SystemClock),
            ids: None,
            max_keys_per_user: None,
        }
    }

    /// Replaces the permission policy.
    pub fn with_policy(mut self, policy: impl Policy) -> KeyService {
        self.policy = Arc::new(policy);
        self
    }

    #[cfg(feature = "test-util")]
    /// Replaces the clock (for tests).
    pub fn with_clock(mut self, clock: impl Clock) -> KeyService {
        self.clock = Arc::new(clock);
        self
    }

    /// Replaces the key id generator. Ids must be unique in the store; a
    /// collision is reported as `ALREADY_EXISTS`. Without one, ids come from
    /// the store when it allocates them (PostgreSQL), else from a generator
    /// of ZITADEL-like decimal ids (time in the high bits, then a counter and
    /// random bits).
    pub fn with_id_generator(
        mut self,
        ids: impl Fn() -> String + Send + Sync + 'static,
    ) -> KeyService {
        self.ids = Some(Arc::new(ids));
        self
    }

    async fn next_id(&self) -> Result<String, Error> {
        if let Some(ids) = &self.ids {
            return Ok(ids());
        }
        match self.store.allocate_id().await.map_err(store_error)? {
            Some(id) => Ok(id),
            None => Ok(generate_id()),
        }
    }

    /// The current time at millisecond precision, as timestamps are shown.
    fn now(&self) -> DateTime<Utc> {
        let now = self.clock.now();
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
    }

    /// Limits how many keys one user may hold in its organization (default:
    /// no limit). Creating one more is refused with `RESOURCE_EXHAUSTED`
    /// (429); the store checks the limit atomically with the insert.
    pub fn with_max_keys_per_user(mut self, max: u64) -> KeyService {
        self.max_keys_per_user = Some(max);
        self
    }

    /// Resolves the target organization and asks the policy; every operation
    /// starts here, before it reads anything from the store.
    fn authorize<'a>(
        &self,
        caller: &'a Principal,
        target_org: Option<&'a str>,
        user_id: &'a str,
        action: Action,
    ) -> Result<&'a str, Error> {
        validate_id(IdKind::User, user_id)?;
        let org_id = match target_org {
            Some(org) => {
                validate_id(IdKind::Org, org)?;
                org
            }
            None => &caller.org_id,
        };
        let access = KeyAccess {
            caller,
            org_id,
            user_id,
            action,
        };
        if self.policy.allows(&access) {
            Ok(org_id)
        } else {
            Err(ErrorKind::PermissionDenied
                .error("the caller may not manage this user's keys in this organization"))
        }
    }

    /// Creates a key for `user_id` in the target organization.
    async fn create_op(
        &self,
        caller: &Principal,
        target_org: Option<&str>,
        user_id: &str,
        request: CreateKey,
    ) -> Result<CreatedKey, Error> {
        let org_id = self.authorize(caller, target_org, user_id, Action::Create)?;
        let now = self.now();
        let expiration_date = request
            .expiration_date
            .unwrap_or_else(key::default_expiration);
        if expiration_date <= now {
            return Err(ErrorKind::ExpirationPast.error("expirationDate must be in the future"));
        }
        if expiration_date > key::default_expiration() {
            return Err(ErrorKind::ExpirationTooLate
                .error("expirationDate must not be after 9999-12-31T23:59:59Z"));
        }
        // Before any expensive work (key generation takes tens of ms).
        if let Some(max) = self.max_keys_per_user {
            let held = self
                .store
                .list(
                    user_id,
                    org_id,
                    ListQuery {
                        offset: 0,
                        limit: 0,
                        asc: true,
                    },
                )
                .await
                .map_err(store_error)?
                .total;
            // A cheap early answer; the store checks again atomically with
            // the insert, so concurrent creates cannot pass the limit.
            if held >= max {
                return Err(key_limit(max));
            }
        }
        let (public_key, private_pem) = match request.public_key {
            Some(pem) => (PublicKey::from_pem(&pem)?, None),
            None => {
                let pair = generate_key_pair().await?;
                (pair.public_key, Some(pair.private_key_pem))
            }
        };
        let new = NewKey {
            id: self.next_id().await?,
            user_id: user_id.to_owned(),
            resource_owner: org_id.to_owned(),
            key_type: request.key_type,
            public_key,
            expiration_date,
            created_at: now,
            max_keys_per_user: self.max_keys_per_user,
        };
        let key = self.store.insert(new).await.map_err(store_error)?;
        let key_file = private_pem
            .map(|pem| KeyFile::new(key.id.clone(), key.user_id.clone(), pem, expiration_date));
        Ok(CreatedKey { key, key_file })
    }

    /// Reads one key of `user_id` in the target organization.
    async fn get_op(
        &self,
        caller: &Principal,
        target_org: Option<&str>,
        user_id: &str,
        key_id: &str,
    ) -> Result<MachineKey, Error> {
        let org_id = self.authorize(caller, target_org, user_id, Action::Get)?;
        validate_id(IdKind::Key, key_id)?;
        self.find(org_id, user_id, key_id).await
    }

    async fn find(&self, org_id: &str, user_id: &str, key_id: &str) -> Result<MachineKey, Error> {
        match self.store.get(key_id).await.map_err(store_error)? {
            Some(k) if k.user_id == user_id && k.resource_owner == org_id => Ok(k),
            _ => Err(not_found()),
        }
    }

    /// Lists `user_id`'s keys in the target organization.
    async fn list_op(
        &self,
        caller: &Principal,
        target_org: Option<&str>,
        user_id: &str,
        request: ListQuery,
    ) -> Result<KeyPage, Error> {
        let org_id = self.authorize(caller, target_org, user_id, Action::List)?;
        let limit = match request.limit {
            0 => DEFAULT_LIST_LIMIT,
            l if l > MAX_LIST_LIMIT => {
                return Err(ErrorKind::ListLimitTooLarge
                    .error(format!("limit must be at most {MAX_LIST_LIMIT}")));
            }
            l => l,
        };
        let query = ListQuery { limit, ..request };
        let view_timestamp = self.now();
        let page = self
            .store
            .list(user_id, org_id, query)
            .await
            .map_err(store_error)?;
        Ok(KeyPage {
            view_timestamp,
            ..page
        })
    }

    /// Removes a key of `user_id` in the target organization. From then on
    /// no assertion signed with it is accepted by this process.
    async fn remove_op(
        &self,
        caller: &Principal,
        target_org: Option<&str>,
        user_id: &str,
        key_id: &str,
    ) -> Result<Details, Error> {
        let org_id = self.authorize(caller, target_org, user_id, Action::Remove)?;
        validate_id(IdKind::Key, key_id)?;
        let key = self.find(org_id, user_id, key_id).await?;
        let now = self.now();
        let removed = self
            .store
            .remove(key_id)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)?;
        Ok(Details {
            sequence: removed.sequence,
            creation_date: key.details.creation_date,
            change_date: now,
            resource_owner: removed.resource_owner,
        })
    }
}

/// The public key operations: each runs its rules and reports its outcome
/// (a metric with feature `metrics`; an INFO audit event on target
/// `jwt_profile::audit` for create and remove, naming caller, action,
/// user, key id, organization and outcome — never key material).
impl KeyService {
    /// Creates a key for `user_id` in the target organization (`target_org`,
    /// else the caller's own): the user's own public key, or a generated
    /// RSA-2048 pair whose key file is returned once.
    pub async fn create(
        &self,
        caller: &Principal,
        target_org: Option<&str>,
        user_id: &str,
        request: CreateKey,
    ) -> Result<CreatedKey, Error> {
        let result = self.create_op(caller, target_org, user_id, request).await;
        let key_id = result.as_ref().ok().map(|c| c.key.id.as_str());
        report("create", caller, target_org, user_id, key_id, &result);
        result
    }

    /// Reads one key of `user_id` in the target organization.
    pub async fn get(
        &self,
        caller: &Principal,
        target_org: Option<&str>,
        user_id: &str,
        key_id: &str,
    ) -> Result<MachineKey, Error> {
        let result = self.get_op(caller, target_org, user_id, key_id).await;
        report("get", caller, target_org, user_id, Some(key_id), &result);
        result
    }

    /// Lists `user_id`'s keys in the target organization.
    pub async fn list(
        &self,
        caller: &Principal,
        target_org: Option<&str>,
        user_id: &str,
        request: ListQuery,
    ) -> Result<KeyPage, Error> {
        let result = self.list_op(caller, target_org, user_id, request).await;
        report("list", caller, target_org, user_id, None, &result);
        result
    }

    /// Removes a key of `user_id` in the target organization. From then on
    /// nothing signed with it — no assertion, no access token issued for
    /// one — is accepted by this process.
    pub async fn remove(
        &self,
        caller: &Principal,
        target_org: Option<&str>,
        user_id: &str,
        key_id: &str,
    ) -> Result<Details, Error> {
        let result = self.remove_op(caller, target_org, user_id, key_id).await;
        report("remove", caller, target_org, user_id, Some(key_id), &result);
        result
    }
}

/// Reports a key operation's outcome (the target organization: the one
/// asked for, else the caller's).
fn report<T>(
    action: &'static str,
    caller: &Principal,
    target_org: Option<&str>,
    user_id: &str,
    key_id: Option<&str>,
    result: &Result<T, Error>,
) {
    let org = target_org.unwrap_or(&caller.org_id);
    crate::telemetry::key_operation(
        action,
        caller,
        org,
        user_id,
        key_id,
        result.as_ref().map(|_| ()),
    );
}

/// Key ids like ZITADEL's: decimal, about 18 digits, increasing with time.
/// Milliseconds since 2020 in the high bits, then a per-process counter and
/// random bits, so ids made in one millisecond by several processes differ
/// with high probability; the store's uniqueness check catches the rest.
fn generate_id() -> String {
    const EPOCH_2020_MS: i64 = 1_577_836_800_000;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let ms = (Utc::now().timestamp_millis() - EPOCH_2020_MS).max(0) as u64;
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xfff;
    let mut random = [0u8; 2];
    // If the system RNG fails the counter still keeps ids of this process
    // apart.
    let _ = aws_lc_rs::rand::fill(&mut random);
    let random = u64::from(u16::from_le_bytes(random)) & 0x3ff;
    ((ms << 22) | (count << 10) | random).to_string()
}
