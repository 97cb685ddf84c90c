//! Model-based property test: random sequences of key creation, removal,
//! clock moves past key expiration dates and token lifetimes, waits past
//! the caches' lifetimes, and verification of old and new tokens — checked
//! against a plain reference model of the key and validation rules. The
//! verifier (with every cache on) must answer exactly what the model
//! answers: never accept what it refuses, never refuse what it accepts.
//!
//! Runs on the memory store and on SQLite files; on PostgreSQL too when
//! `JWT_PROFILE_TEST_POSTGRES` is set (it is in CI).

use crate::common;

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::backends::{self, Backend};
use jwt_profile::CreateKey;
use jwt_profile::generate_rsa_key_pair;
use jwt_profile::store::{CacheSettings, CachedStore};
use jwt_profile::{
    AssertionSigner, Clock, KeyService, ManualClock, Principal, Validation, Verifier,
};
use proptest::prelude::*;
use proptest::sample::Index;

const AUD: &str = "https://api.example.com";
const LEEWAY: i64 = 60;
const MAX_AGE: i64 = 3600;
/// The key cache's lifetime here (60 s in production); `WaitPastCaches`
/// sleeps longer than this and than the negative lifetime.
const KEY_TTL: Duration = Duration::from_millis(30);

#[derive(Clone, Debug)]
enum Op {
    /// A new key for user `user`, expiring `lifetime` seconds from now
    /// (`None`: the default, 9999-12-31).
    Create { user: u8, lifetime: Option<u32> },
    /// Removes one of the created keys (if it still exists).
    Remove { key: Index },
    /// Signs a token with one of the created keys (removed ones too):
    /// `iat` now, `exp` now + `lifetime`.
    Sign { key: Index, lifetime: u32 },
    /// Verifies one of the signed tokens; `latest` picks the newest.
    Verify { token: Index, latest: bool },
    /// Moves the clock forward.
    Advance { secs: u32 },
    /// Waits (real time) past the key cache's and the negative cache's
    /// lifetimes.
    WaitPastCaches,
    /// Waits (real time) 60 % of the caches' lifetime: two of these put a
    /// key-cache expiry between two uses of the caches' entries.
    WaitPartOfCaches,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..2, prop::option::of(prop_oneof![Just(30u32), Just(90), Just(4000)]))
            .prop_map(|(user, lifetime)| Op::Create { user, lifetime }),
        1 => any::<Index>().prop_map(|key| Op::Remove { key }),
        3 => (any::<Index>(), prop_oneof![Just(30u32), Just(120), Just(7200)])
            .prop_map(|(key, lifetime)| Op::Sign { key, lifetime }),
        5 => (any::<Index>(), any::<bool>()).prop_map(|(token, latest)| Op::Verify { token, latest }),
        2 => prop_oneof![Just(1u32), Just(31), Just(61), Just(100), Just(3700)]
            .prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::WaitPastCaches),
        1 => Just(Op::WaitPartOfCaches),
    ]
}

/// RSA pairs made once for the whole run (generation is the slow part).
fn pairs() -> &'static [(String, String)] {
    static PAIRS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        (0..3)
            .map(|_| {
                let pair = generate_rsa_key_pair().expect("generate");
                (pair.public_key.to_pem(), pair.private_key_pem)
            })
            .collect()
    })
}

/// The model's view of a key.
struct ModelKey {
    signer: AssertionSigner,
    expires: DateTime<Utc>,
    removed: bool,
}

/// The model's view of a token.
struct ModelToken {
    key: usize,
    token: String,
    iat: i64,
    exp: i64,
}

/// The rules, stated plainly: the key exists and has not expired (no
/// leeway), and the token's times pass with leeway.
fn model_accepts(key: &ModelKey, token: &ModelToken, now: DateTime<Utc>) -> bool {
    let t = now.timestamp();
    !key.removed
        && key.expires > now
        && t < token.exp + LEEWAY
        && token.iat <= t + LEEWAY
        && t - token.iat <= MAX_AGE + LEEWAY
}

async fn run(backend: Box<dyn Backend>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::now_system();
    let store = CachedStore::with_settings(
        backend.store(),
        CacheSettings {
            ttl: KEY_TTL,
            negative_ttl: KEY_TTL,
            ..CacheSettings::default()
        },
    );
    let keys = KeyService::new(store.clone()).with_clock(clock.clone());
    let verifier = Verifier::new(
        store.clone(),
        Validation::new([AUD])
            .leeway(Duration::from_secs(LEEWAY as u64))
            .max_age(Duration::from_secs(MAX_AGE as u64)),
    )
    .with_clock(clock.clone());
    let mut model_keys: Vec<ModelKey> = Vec::new();
    let mut tokens: Vec<ModelToken> = Vec::new();
    let mut outcome = Ok(());
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Create { user, lifetime } => {
                let user = format!("bot-{user}");
                let me = Principal::new(user.as_str(), "default", "-");
                let (public, private) = &pairs()[model_keys.len() % pairs().len()];
                let expiration_date =
                    lifetime.map(|s| clock.now() + chrono::Duration::seconds(s.into()));
                let created = keys
                    .create(
                        &me,
                        None,
                        &user,
                        CreateKey {
                            expiration_date,
                            public_key: Some(public.clone().into_bytes()),
                            ..CreateKey::default()
                        },
                    )
                    .await
                    .expect("create");
                model_keys.push(ModelKey {
                    signer: AssertionSigner::from_pem(&user, &created.key.id, private.as_bytes())
                        .expect("signer"),
                    expires: created.key.expiration_date,
                    removed: false,
                });
            }
            Op::Remove { ref key } => {
                if model_keys.is_empty() {
                    continue;
                }
                let n = key.index(model_keys.len());
                if let Some(k) = model_keys.get_mut(n).filter(|k| !k.removed) {
                    let me = Principal::new(k.signer.user_id(), "default", "-");
                    keys.remove(&me, None, k.signer.user_id(), k.signer.key_id())
                        .await
                        .expect("remove");
                    k.removed = true;
                }
            }
            Op::Sign { ref key, lifetime } => {
                if model_keys.is_empty() {
                    continue;
                }
                let key = key.index(model_keys.len());
                if let Some(k) = model_keys.get(key) {
                    let iat = clock.now().timestamp();
                    let exp = iat + i64::from(lifetime);
                    let token = k.signer.sign_at(AUD, iat as u64, exp as u64).expect("sign");
                    tokens.push(ModelToken {
                        key,
                        token,
                        iat,
                        exp,
                    });
                }
            }
            Op::Verify { ref token, latest } => {
                if tokens.is_empty() {
                    continue;
                }
                let n = if latest {
                    tokens.len() - 1
                } else {
                    token.index(tokens.len())
                };
                if let Some(t) = tokens.get(n) {
                    let expected = model_accepts(&model_keys[t.key], t, clock.now());
                    let got = verifier.verify(&t.token).await;
                    if let Err(jwt_profile::VerifyError::Unavailable(why)) = &got {
                        outcome = Err(TestCaseError::fail(format!(
                            "step {step}: store unavailable: {why}"
                        )));
                        break;
                    }
                    if got.is_ok() != expected {
                        outcome = Err(TestCaseError::fail(format!(
                            "step {step} ({op:?}): the model says {}, the verifier {got:?}",
                            if expected { "accept" } else { "refuse" }
                        )));
                        break;
                    }
                }
            }
            Op::Advance { secs } => clock.advance_secs(secs.into()),
            Op::WaitPastCaches => tokio::time::sleep(KEY_TTL + Duration::from_millis(15)).await,
            Op::WaitPartOfCaches => tokio::time::sleep(KEY_TTL * 3 / 5).await,
        }
    }
    backend.cleanup().await;
    outcome
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn the_verifier_answers_what_the_model_answers_on_memory(ops in prop::collection::vec(op(), 1..40)) {
        let rt = runtime();
        rt.block_on(async { run(backends::memory().await.expect("memory"), ops).await })?;
    }
}

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    fn the_verifier_answers_what_the_model_answers_on_sqlite(ops in prop::collection::vec(op(), 1..40)) {
        let rt = runtime();
        rt.block_on(async { run(backends::sqlite().await.expect("sqlite"), ops).await })?;
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn the_verifier_answers_what_the_model_answers_on_postgres(ops in prop::collection::vec(op(), 1..40)) {
        if std::env::var("JWT_PROFILE_TEST_POSTGRES").is_ok() {
            let rt = runtime();
            rt.block_on(async {
                let backend = backends::postgres().await.expect("postgres is required when JWT_PROFILE_TEST_POSTGRES is set");
                run(backend, ops).await
            })?;
        }
    }
}

/// The generator reaches the interleavings that matter: a token verified
/// after its key was removed, after its key expired, and after a wait past
/// the caches, each following an earlier acceptance of the same token.
#[test]
fn the_generator_reaches_the_interesting_interleavings() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(op(), 1..40);
    let (mut removed_after_use, mut waited_after_use) = (0, 0);
    for _ in 0..64 {
        let ops = strategy.new_tree(&mut runner).expect("tree").current();
        let mut verified = false;
        for op in &ops {
            match op {
                Op::Verify { .. } => verified = true,
                Op::Remove { .. } if verified => removed_after_use += 1,
                Op::WaitPastCaches if verified => waited_after_use += 1,
                _ => {}
            }
        }
    }
    assert!(removed_after_use > 20, "{removed_after_use}");
    assert!(waited_after_use > 20, "{waited_after_use}");
}
