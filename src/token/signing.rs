//! The issuer's signing keys: their lifecycle, the sealed private halves,
//! and the published set (JWKS).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair as _, ParsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::IssuerError;
use super::seal::MasterKey;
use crate::clock::Clock;
use crate::key::{Algorithm, PublicKey};
use crate::store::{SigningKeyStore, StoreError, StoredSigningKey};

/// The published signing keys, as served at the JWKS endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Jwks {
    /// Every published key.
    pub keys: Vec<Jwk>,
}

/// One published signing key (RFC 7517): the public half only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Jwk {
    /// Always `RSA`.
    pub kty: &'static str,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: &'static str,
    /// Always `RS256`.
    pub alg: &'static str,
    /// The key id, the `kid` of the tokens it signs.
    pub kid: String,
    /// The modulus, base64url without padding.
    pub n: String,
    /// The public exponent, base64url without padding.
    pub e: String,
}

/// Lifecycle settings of the signing keys.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifecycle {
    /// How long each key signs.
    pub(crate) rotation: Duration,
    /// How long before it signs a new key is published.
    pub(crate) lead: Duration,
    /// How long a retired key stays published: the token lifetime + leeway.
    pub(crate) retention: Duration,
    /// How often the keys are read again from the store (other replicas'
    /// rotations) and the lifecycle is applied.
    pub(crate) refresh: Duration,
}

/// A signing key ready to use: public half parsed, private half opened.
pub(crate) struct LiveKey {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) signs_from: DateTime<Utc>,
    verifying: ParsedPublicKey,
    signing: aws_lc_rs::rsa::KeyPair,
    jwk: Jwk,
}

impl LiveKey {
    fn open(stored: &StoredSigningKey, master: &MasterKey) -> Result<LiveKey, IssuerError> {
        let pkcs8 = master
            .open(&stored.id, &stored.sealed_private_key)
            .map_err(|_| IssuerError::WrongMasterKey)?;
        let signing = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).map_err(|_| {
            IssuerError::Damaged(format!("signing key {} is not an RSA key", stored.id))
        })?;
        let public = PublicKey::from_spki_der(&stored.public_key_der)
            .map_err(|e| IssuerError::Damaged(format!("signing key {}: {e}", stored.id)))?;
        let verifying = public.parse_for(Algorithm::RS256).ok_or_else(|| {
            IssuerError::Damaged(format!("signing key {} cannot verify RS256", stored.id))
        })?;
        // The sealed private half must belong to the stored public half.
        let own = signing
            .public_key()
            .as_der()
            .map_err(|_| IssuerError::Damaged(format!("signing key {}", stored.id)))?;
        if own.as_ref() != public.spki_der() {
            return Err(IssuerError::Damaged(format!(
                "signing key {}: private and public halves differ",
                stored.id
            )));
        }
        let (n, e) = rsa_components(public.spki_der())
            .ok_or_else(|| IssuerError::Damaged(format!("signing key {}", stored.id)))?;
        Ok(LiveKey {
            jwk: Jwk {
                kty: "RSA",
                use_: "sig",
                alg: "RS256",
                kid: stored.id.clone(),
                n,
                e,
            },
            id: stored.id.clone(),
            generation: stored.generation,
            signs_from: stored.signs_from,
            verifying,
            signing,
        })
    }

    /// Verifies an RS256 signature made with this key.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verifying.verify_sig(message, signature).is_ok()
    }

    /// Signs `message` with RS256.
    pub(crate) fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        let mut sig = vec![0; self.signing.public_modulus_len()];
        self.signing
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut sig,
            )
            .ok()?;
        Some(sig)
    }
}

/// Modulus and exponent of an RSA SubjectPublicKeyInfo, base64url.
fn rsa_components(spki_der: &[u8]) -> Option<(String, String)> {
    use rsa::pkcs1::der::Decode;
    let spki = rsa::pkcs8::spki::SubjectPublicKeyInfoRef::from_der(spki_der).ok()?;
    let key = rsa::pkcs1::RsaPublicKey::from_der(spki.subject_public_key.as_bytes()?).ok()?;
    let trim = |b: &[u8]| URL_SAFE_NO_PAD.encode(crate::key::strip_zeros(b));
    Some((
        trim(key.modulus.as_bytes()),
        trim(key.public_exponent.as_bytes()),
    ))
}

/// The signing keys as last read from the store, oldest generation first.
struct KeySet {
    keys: Vec<Arc<LiveKey>>,
    read_at: Instant,
}

/// The issuer's signing keys: read from the store, opened with the master
/// key, rotated and retired on schedule. Clones share one set.
#[derive(Clone)]
pub(crate) struct SigningKeys {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SigningKeyStore>,
    master: MasterKey,
    clock: Arc<dyn Clock>,
    lifecycle: Lifecycle,
    set: RwLock<Arc<KeySet>>,
    /// One reload or rotation at a time in this process.
    busy: tokio::sync::Mutex<()>,
}

impl SigningKeys {
    /// Opens the keys in `store`: every stored key must open with `master`
    /// (else [`IssuerError::WrongMasterKey`]); then the lifecycle runs
    /// once (a first key is made for an empty store).
    pub(crate) async fn open(
        store: Arc<dyn SigningKeyStore>,
        master: MasterKey,
        clock: Arc<dyn Clock>,
        lifecycle: Lifecycle,
    ) -> Result<SigningKeys, IssuerError> {
        let keys = SigningKeys {
            inner: Arc::new(Inner {
                store,
                master,
                clock,
                lifecycle,
                set: RwLock::new(Arc::new(KeySet {
                    keys: Vec::new(),
                    read_at: Instant::now(),
                })),
                busy: tokio::sync::Mutex::new(()),
            }),
        };
        keys.maintain().await?;
        Ok(keys)
    }

    fn set(&self) -> Arc<KeySet> {
        self.inner
            .set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the keys from the store, opening any not held yet.
    async fn reload(&self) -> Result<(), IssuerError> {
        let stored = self.inner.store.signing_keys().await?;
        let held = self.set();
        let mut keys = Vec::with_capacity(stored.len());
        for s in &stored {
            match held
                .keys
                .iter()
                .find(|k| k.id == s.id && k.generation == s.generation)
            {
                Some(k) => keys.push(k.clone()),
                None => keys.push(Arc::new(LiveKey::open(s, &self.inner.master)?)),
            }
        }
        keys.sort_by_key(|k| k.generation);
        *self.inner.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(KeySet {
            keys,
            read_at: Instant::now(),
        });
        Ok(())
    }

    /// Applies the lifecycle now: reads the keys, makes the next key when
    /// the current one is due to hand over (published `lead` before it
    /// signs), deletes retired keys past their retention, and reads again.
    pub(crate) async fn maintain(&self) -> Result<(), IssuerError> {
        let _busy = self.inner.busy.lock().await;
        self.reload().await?;
        let now = self.inner.clock.now();
        let l = self.inner.lifecycle;
        let set = self.set();
        let mut changed = false;
        match set.keys.last() {
            None => {
                // An empty store: the first key signs at once.
                changed |= self.create(1, now, now).await?;
            }
            Some(newest) if newest.signs_from <= now => {
                let hand_over = newest.signs_from + delta(l.rotation);
                if now + delta(l.lead) >= hand_over {
                    let signs_from = hand_over.max(now + delta(l.lead));
                    changed |= self.create(newest.generation + 1, now, signs_from).await?;
                }
            }
            Some(_) => {} // the next key is published and waiting
        }
        // A key retires when its successor starts signing; it stays
        // published for the retention, then goes.
        for pair in set.keys.windows(2) {
            let (old, next) = (&pair[0], &pair[1]);
            if next.signs_from <= now && now >= next.signs_from + delta(l.retention) {
                self.inner.store.remove_signing_key(&old.id).await?;
                changed = true;
            }
        }
        if changed {
            self.reload().await?;
        }
        Ok(())
    }

    /// Stores a new key of `generation`; false when another process stored
    /// that generation first.
    async fn create(
        &self,
        generation: u64,
        now: DateTime<Utc>,
        signs_from: DateTime<Utc>,
    ) -> Result<bool, IssuerError> {
        let damaged =
            |what: &str| IssuerError::Damaged(format!("cannot make a signing key: {what}"));
        let pair = tokio::task::spawn_blocking(|| {
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        })
        .await
        .map_err(|_| damaged("key generation stopped"))?
        .map_err(|_| damaged("key generation failed"))?;
        let pkcs8 = pair.as_der().map_err(|_| damaged("export"))?;
        let spki = pair.public_key().as_der().map_err(|_| damaged("export"))?;
        let id = new_key_id().ok_or_else(|| damaged("no randomness"))?;
        let sealed = self
            .inner
            .master
            .seal(&id, pkcs8.as_ref())
            .map_err(|e| damaged(&e.to_string()))?;
        let millis =
            |t: DateTime<Utc>| DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t);
        let stored = StoredSigningKey {
            id,
            generation,
            public_key_der: spki.as_ref().to_vec(),
            sealed_private_key: sealed,
            created_at: millis(now),
            signs_from: millis(signs_from),
        };
        let inserted = self.inner.store.insert_signing_key(stored).await?;
        if inserted {
            tracing::info!(generation, "new token signing key published");
        }
        Ok(inserted)
    }

    /// Runs [`maintain`](Self::maintain) every refresh interval while any
    /// clone of these keys is alive.
    pub(crate) fn spawn_maintenance(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: signing keys rotate only when maintain() is called");
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.lifecycle.refresh;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(why) = (SigningKeys { inner }).maintain().await {
                    tracing::warn!(%why, "signing key maintenance failed; retrying");
                }
            }
        });
    }

    /// The key that signs now: the newest whose time has come.
    pub(crate) async fn signer(&self) -> Result<Arc<LiveKey>, IssuerError> {
        if let Some(key) = self.current() {
            return Ok(key);
        }
        // None yet (the store was down at start): try the lifecycle now.
        self.maintain().await?;
        self.current()
            .ok_or_else(|| IssuerError::Store(StoreError::Unavailable("no signing key yet".into())))
    }

    fn current(&self) -> Option<Arc<LiveKey>> {
        let now = self.inner.clock.now();
        self.set()
            .keys
            .iter()
            .rev()
            .find(|k| k.signs_from <= now)
            .cloned()
    }

    /// The published key `kid`, from the set in memory (no reload).
    pub(crate) fn published(&self, kid: &str) -> Option<Arc<LiveKey>> {
        let set = self.inner.set.read().unwrap_or_else(|e| e.into_inner());
        set.keys.iter().find(|k| k.id == kid).cloned()
    }

    /// The published key `kid`. An id not held is looked for in the store
    /// (another replica's new key), at most once a second.
    pub(crate) async fn verifying_key(
        &self,
        kid: &str,
    ) -> Result<Option<Arc<LiveKey>>, IssuerError> {
        // One reading of the set for both questions: a reload between them
        // must not make a new key look unknown.
        let set = self.set();
        if let Some(k) = set.keys.iter().find(|k| k.id == kid) {
            return Ok(Some(k.clone()));
        }
        if set.read_at.elapsed() < Duration::from_secs(1) {
            return Ok(None);
        }
        // Boxed: the store read's future would make every verification's
        // future larger.
        Box::pin(async {
            let _busy = self.inner.busy.lock().await;
            if self.set().read_at.elapsed() >= Duration::from_secs(1) {
                self.reload().await?;
            }
            Ok::<_, IssuerError>(())
        })
        .await?;
        Ok(self.set().keys.iter().find(|k| k.id == kid).cloned())
    }

    /// Every published key.
    pub(crate) fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.set().keys.iter().map(|k| k.jwk.clone()).collect(),
        }
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// A random key id: 128 bits, base64url.
fn new_key_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}
