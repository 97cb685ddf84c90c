//! One conformance suite for every `KeyStore` backend (SPEC §4), and for
//! each as a `SigningKeyStore` (SPEC §6). A backend joins with one line at
//! the bottom: `conformance!(name, opener);`.

use crate::common;

use std::collections::HashSet;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use common::backends::{self, Backend};
use jwt_profile::store::{ListQuery, NewKey, StoreError, StoredSigningKey};
use jwt_profile::{KeyType, PublicKey, generate_rsa_key_pair};

fn public_key() -> PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| generate_rsa_key_pair().expect("key").public_key)
        .clone()
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("time")
}

fn new_key(id: &str, user: &str, org: &str) -> NewKey {
    NewKey {
        id: id.to_string(),
        user_id: user.to_string(),
        resource_owner: org.to_string(),
        key_type: KeyType::Json,
        public_key: public_key(),
        expiration_date: at(1_900_000_000_123),
        created_at: at(1_800_000_000_456),
        max_keys_per_user: None,
    }
}

fn q(offset: u64, limit: u32, asc: bool) -> ListQuery {
    ListQuery { offset, limit, asc }
}

fn ids(keys: &[jwt_profile::MachineKey]) -> Vec<String> {
    keys.iter().map(|k| k.id.clone()).collect()
}

async fn insert_and_get(b: &dyn Backend) {
    let store = b.store();
    let inserted = store
        .insert(new_key("k1", "bot", "org"))
        .await
        .expect("insert");
    assert_eq!(inserted.id, "k1");
    assert!(inserted.details.sequence > 0);
    assert_eq!(inserted.details.resource_owner, "org");
    let got = store.get("k1").await.expect("get").expect("found");
    assert_eq!(got, inserted, "what is read back is what was stored");
    assert_eq!(got.public_key, public_key());
    assert_eq!(got.expiration_date, at(1_900_000_000_123));
    assert_eq!(got.details.creation_date, at(1_800_000_000_456));
    assert_eq!(store.get("nope").await.expect("get"), None);
    assert_eq!(
        store.insert(new_key("k1", "bot", "org")).await.err(),
        Some(StoreError::DuplicateId)
    );
    assert_eq!(
        store.insert(new_key("k1", "someone", "else")).await.err(),
        Some(StoreError::DuplicateId)
    );
    // Ids are exact: no case folding, no prefix match.
    assert_eq!(store.get("K1").await.expect("get"), None);
    assert_eq!(store.get("k").await.expect("get"), None);
}

async fn list_paging_and_ordering(b: &dyn Backend) {
    let store = b.store();
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(
            store
                .insert(new_key(&format!("a{i}"), "bot", "org"))
                .await
                .expect("insert")
                .id,
        );
    }
    store
        .insert(new_key("other", "bot2", "org"))
        .await
        .expect("insert");
    let asc = store
        .list("bot", "org", q(0, 100, true))
        .await
        .expect("list");
    assert_eq!(asc.total, 5);
    assert_eq!(ids(&asc.keys), made);
    let desc = store
        .list("bot", "org", q(0, 100, false))
        .await
        .expect("list");
    assert_eq!(
        ids(&desc.keys),
        made.iter().rev().cloned().collect::<Vec<_>>()
    );
    let page = store.list("bot", "org", q(1, 2, true)).await.expect("list");
    assert_eq!((page.total, ids(&page.keys)), (5, made[1..3].to_vec()));
    let past_end = store
        .list("bot", "org", q(10, 2, true))
        .await
        .expect("list");
    assert_eq!((past_end.total, past_end.keys.len()), (5, 0));
    let huge_offset = store
        .list("bot", "org", q(u64::MAX, 2, true))
        .await
        .expect("list");
    assert_eq!((huge_offset.total, huge_offset.keys.len()), (5, 0));
    let zero = store.list("bot", "org", q(0, 0, true)).await.expect("list");
    assert_eq!((zero.total, zero.keys.len()), (5, 0));
    let other_org = store
        .list("bot", "elsewhere", q(0, 100, true))
        .await
        .expect("list");
    assert_eq!((other_org.total, other_org.keys.len()), (0, 0));
    let nobody = store
        .list("nobody", "org", q(0, 100, true))
        .await
        .expect("list");
    assert_eq!(nobody.total, 0);
}

async fn remove(b: &dyn Backend) {
    let store = b.store();
    let first = store
        .insert(new_key("r1", "bot", "org"))
        .await
        .expect("insert");
    let second = store
        .insert(new_key("r2", "bot", "org"))
        .await
        .expect("insert");
    let removed = store
        .remove("r1")
        .await
        .expect("remove")
        .expect("was there");
    assert_eq!(removed.resource_owner, "org");
    assert!(
        removed.sequence > second.details.sequence,
        "a removal takes a new, higher sequence"
    );
    assert!(second.details.sequence > first.details.sequence);
    assert_eq!(store.get("r1").await.expect("get"), None);
    assert_eq!(store.remove("r1").await.expect("remove"), None);
    assert_eq!(store.remove("never").await.expect("remove"), None);
    let left = store
        .list("bot", "org", q(0, 100, true))
        .await
        .expect("list");
    assert_eq!(ids(&left.keys), vec!["r2".to_string()]);
    // The id may be used again after removal.
    store
        .insert(new_key("r1", "bot", "org"))
        .await
        .expect("reinsert");
}

async fn organization_binding(b: &dyn Backend) {
    let store = b.store();
    store
        .insert(new_key("o1", "nomad", "a"))
        .await
        .expect("insert");
    store
        .insert(new_key("o2", "nomad", "a"))
        .await
        .expect("same org");
    assert_eq!(
        store.insert(new_key("o3", "nomad", "b")).await.err(),
        Some(StoreError::UserInOtherOrg("a".into()))
    );
    assert_eq!(
        store.get("o3").await.expect("get"),
        None,
        "a refused insert leaves nothing"
    );
    store.remove("o1").await.expect("remove");
    store.remove("o2").await.expect("remove");
    store
        .insert(new_key("o3", "nomad", "b"))
        .await
        .expect("bound to b once a's keys are gone");
}

async fn ten_thousand_keys(b: &dyn Backend) {
    let store = b.store();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (t..10_000).step_by(8) {
                    store
                        .insert(new_key(&format!("m{i:05}"), "many", "org"))
                        .await
                        .expect("insert");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
    let all = store
        .list("many", "org", q(0, 1000, true))
        .await
        .expect("list");
    assert_eq!(all.total, 10_000);
    assert_eq!(all.keys.len(), 1000);
    let tail = store
        .list("many", "org", q(9_950, 100, true))
        .await
        .expect("list");
    assert_eq!(tail.keys.len(), 50);
    let newest = store
        .list("many", "org", q(0, 1, false))
        .await
        .expect("list");
    let oldest = store
        .list("many", "org", q(0, 1, true))
        .await
        .expect("list");
    assert!(newest.keys[0].details.sequence > oldest.keys[0].details.sequence);
    let mut seen = HashSet::new();
    let mut last = 0;
    for page in 0..10 {
        let keys = store
            .list("many", "org", q(page * 1000, 1000, true))
            .await
            .expect("list")
            .keys;
        for k in keys {
            assert!(k.details.sequence > last, "ascending by sequence");
            last = k.details.sequence;
            assert!(seen.insert(k.id));
        }
    }
    assert_eq!(seen.len(), 10_000);
    assert!(store.get("m04321").await.expect("get").is_some());
}

async fn concurrent_creates(b: &dyn Backend) {
    let store = b.store();
    let n = 64;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = match store.allocate_id().await.expect("allocate") {
                    Some(id) => id,
                    None => format!("c{i}"),
                };
                store
                    .insert(new_key(&id, &format!("user{}", i % 4), "org"))
                    .await
                    .expect("insert")
            })
        })
        .collect();
    let mut keys = Vec::new();
    for t in tasks {
        keys.push(t.await.expect("join"));
    }
    let distinct_ids: HashSet<_> = keys.iter().map(|k| k.id.clone()).collect();
    assert_eq!(distinct_ids.len(), n, "N tasks, N distinct ids");
    let mut sequences: Vec<u64> = keys.iter().map(|k| k.details.sequence).collect();
    sequences.sort_unstable();
    sequences.dedup();
    assert_eq!(sequences.len(), n, "N distinct sequences");
    let after = store
        .insert(new_key("after", "user0", "org"))
        .await
        .expect("insert");
    assert!(
        after.details.sequence > *sequences.last().expect("some"),
        "sequences only grow"
    );

    // One user, two organizations, at once: exactly one organization wins.
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let org = if i % 2 == 0 { "a" } else { "b" };
                store
                    .insert(new_key(&format!("race{i}"), "contended", org))
                    .await
            })
        })
        .collect();
    let mut orgs = HashSet::new();
    for r in racers {
        match r.await.expect("join") {
            Ok(k) => {
                orgs.insert(k.resource_owner);
            }
            Err(StoreError::UserInOtherOrg(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(orgs.len(), 1, "the binding held under contention: {orgs:?}");
}

async fn persistence(b: &dyn Backend) {
    let store = b.store();
    let stored = store
        .insert(new_key("p1", "bot", "org"))
        .await
        .expect("insert");
    store
        .insert(new_key("p2", "bot", "org"))
        .await
        .expect("insert");
    store.remove("p2").await.expect("remove");
    drop(store);
    let reopened = b.reopen().await;
    let got = reopened.get("p1").await.expect("get");
    if b.durable() {
        assert_eq!(got, Some(stored));
        assert_eq!(reopened.get("p2").await.expect("get"), None);
        let next = reopened
            .insert(new_key("p3", "bot", "org"))
            .await
            .expect("insert");
        assert!(
            next.details.sequence > 2,
            "the sequence continues after a restart"
        );
        assert_eq!(
            reopened.insert(new_key("p1", "bot", "org")).await.err(),
            Some(StoreError::DuplicateId)
        );
    } else {
        assert_eq!(got, None, "a non-durable store starts empty");
    }
}

/// Signing keys, like machine keys, survive a restart on durable backends.
async fn signing_key_persistence(b: &dyn Backend) {
    let signing = b.signing();
    assert!(
        signing
            .insert_signing_key(signing_key("s1", 1))
            .await
            .expect("insert")
    );
    assert!(
        signing
            .insert_signing_key(signing_key("s2", 2))
            .await
            .expect("insert")
    );
    signing.remove_signing_key("s2").await.expect("remove");
    drop(signing);
    let reopened = b.reopen().await;
    let keys = reopened.signing_keys().await.expect("list");
    if b.durable() {
        assert_eq!(keys, vec![stored(signing_key("s1", 1))]);
        assert!(
            !reopened
                .insert_signing_key(signing_key("other", 1))
                .await
                .expect("insert"),
            "the generation is still taken after a restart"
        );
        assert_eq!(
            reopened.insert_signing_key(signing_key("s1", 3)).await,
            Err(StoreError::DuplicateId)
        );
    } else {
        assert_eq!(keys, vec![], "a non-durable store starts empty");
    }
}

async fn key_limit(b: &dyn Backend) {
    let store = b.store();
    let limited = |id: &str, max: u64| NewKey {
        max_keys_per_user: Some(max),
        ..new_key(id, "capped", "org")
    };
    store.insert(limited("l1", 2)).await.expect("first");
    store.insert(limited("l2", 2)).await.expect("second");
    assert_eq!(
        store.insert(limited("l3", 2)).await.err(),
        Some(StoreError::KeyLimit(2))
    );
    assert_eq!(
        store.get("l3").await.expect("get"),
        None,
        "nothing inserted"
    );
    // Other users and other limits are not affected.
    store
        .insert(NewKey {
            max_keys_per_user: Some(2),
            ..new_key("l4", "other", "org")
        })
        .await
        .expect("another user");
    store
        .insert(limited("l5", 3))
        .await
        .expect("a higher limit");
    store.remove("l1").await.expect("remove");
    store
        .insert(limited("l6", 3))
        .await
        .expect("room after a removal");
    // Concurrent inserts cannot pass it.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert(NewKey {
                        max_keys_per_user: Some(4),
                        ..new_key(&format!("c{i}"), "racer", "org")
                    })
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(StoreError::KeyLimit(4)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 4);
}

async fn key_ids(b: &dyn Backend) {
    let store = b.store();
    for id in ["k1", "k2", "k3"] {
        store
            .insert(new_key(id, "lister", "org"))
            .await
            .expect("insert");
    }
    store.remove("k2").await.expect("remove");
    let mut ids = store
        .key_ids()
        .await
        .expect("key_ids")
        .expect("every backend lists its ids");
    ids.sort();
    assert_eq!(ids, vec!["k1".to_string(), "k3".to_string()]);
}

/// A signing key whose timestamps have sub-millisecond parts and whose
/// bytes are not text, distinct per id.
fn signing_key(id: &str, generation: u64) -> StoredSigningKey {
    let micros = |ms: i64, us: i64| at(ms) + chrono::Duration::microseconds(us);
    StoredSigningKey {
        id: id.to_string(),
        generation,
        public_key_der: [&[0x30, 0x82, 0x00, 0xff][..], id.as_bytes()].concat(),
        sealed_private_key: [id.as_bytes(), &[0x00, 0x80, 0xfe, 0xff][..]].concat(),
        created_at: micros(1_800_000_000_456, 789),
        signs_from: micros(1_800_000_300_456, 999),
    }
}

/// `key` as every backend gives it back: timestamps at millisecond
/// precision.
fn stored(key: StoredSigningKey) -> StoredSigningKey {
    let millis = |t: DateTime<Utc>| at(t.timestamp_millis());
    StoredSigningKey {
        created_at: millis(key.created_at),
        signs_from: millis(key.signs_from),
        ..key
    }
}

fn generations(keys: &[StoredSigningKey]) -> Vec<(String, u64)> {
    keys.iter().map(|k| (k.id.clone(), k.generation)).collect()
}

async fn signing_keys(b: &dyn Backend) {
    let store = b.signing();
    assert_eq!(store.signing_keys().await.expect("list"), vec![]);
    let first = signing_key("s1", 1);
    assert!(
        store
            .insert_signing_key(first.clone())
            .await
            .expect("insert")
    );
    let listed = store.signing_keys().await.expect("list");
    assert_eq!(listed, vec![stored(first.clone())], "every field read back");
    assert_eq!(listed[0].created_at, at(1_800_000_000_456));
    assert_eq!(listed[0].signs_from, at(1_800_000_300_456));

    // Another caller rotating to the same generation: not inserted.
    assert!(
        !store
            .insert_signing_key(signing_key("s1-rival", 1))
            .await
            .expect("insert")
    );
    // The same id again: taken, whatever the generation.
    assert_eq!(
        store.insert_signing_key(signing_key("s1", 2)).await,
        Err(StoreError::DuplicateId)
    );
    // Same id and same generation: the generation is checked first, so a
    // caller retrying its own insert reads the keys again.
    assert!(
        !store
            .insert_signing_key(signing_key("s1", 1))
            .await
            .expect("insert")
    );
    assert_eq!(
        store.signing_keys().await.expect("list"),
        vec![stored(first.clone())],
        "refused inserts leave nothing"
    );

    // Oldest generation first, as numbers (10 after 3), whatever the
    // order of insertion.
    for (id, generation) in [("s2", 2), ("s10", 10), ("s3", 3)] {
        assert!(
            store
                .insert_signing_key(signing_key(id, generation))
                .await
                .expect("insert")
        );
    }
    let listed = store.signing_keys().await.expect("list");
    assert_eq!(
        generations(&listed),
        vec![
            ("s1".to_string(), 1),
            ("s2".to_string(), 2),
            ("s3".to_string(), 3),
            ("s10".to_string(), 10)
        ]
    );
    assert_eq!(listed[1], stored(signing_key("s2", 2)));

    store.remove_signing_key("s2").await.expect("remove");
    store
        .remove_signing_key("s2")
        .await
        .expect("removing an absent key is not an error");
    store.remove_signing_key("never").await.expect("remove");
    // Ids are exact: no case folding, no prefix match.
    store.remove_signing_key("S1").await.expect("remove");
    store.remove_signing_key("s").await.expect("remove");
    assert_eq!(
        generations(&store.signing_keys().await.expect("list")),
        vec![
            ("s1".to_string(), 1),
            ("s3".to_string(), 3),
            ("s10".to_string(), 10)
        ]
    );
    // A removed key's id and generation are free again.
    assert!(
        store
            .insert_signing_key(signing_key("s2", 2))
            .await
            .expect("insert")
    );
    // Signing keys and machine keys are apart: a machine key may carry a
    // signing key's id.
    b.store()
        .insert(new_key("s1", "bot", "org"))
        .await
        .expect("insert a machine key");
    assert_eq!(store.signing_keys().await.expect("list").len(), 4);
    // Generations beyond what SQL stores (i64) are refused on every
    // backend, not wrapped.
    match store
        .insert_signing_key(signing_key("huge", u64::MAX))
        .await
    {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("huge"), "{why}"),
        other => panic!("u64::MAX cannot be stored: {other:?}"),
    }
    assert_eq!(store.signing_keys().await.expect("list").len(), 4);
}

/// Twelve callers rotating to the same generation at once: exactly one
/// inserts, and exactly one key of that generation is stored.
async fn signing_keys_concurrent_rotation(b: &dyn Backend) {
    let store = b.signing();
    for generation in [1, 2] {
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = format!("g{generation}-{i}");
                    let inserted = store
                        .insert_signing_key(signing_key(&id, generation))
                        .await
                        .expect("insert");
                    (id, inserted)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            let (id, inserted) = t.await.expect("join");
            if inserted {
                winners.push(id);
            }
        }
        assert_eq!(winners.len(), 1, "one winner for generation {generation}");
        let of_generation: Vec<_> = store
            .signing_keys()
            .await
            .expect("list")
            .into_iter()
            .filter(|k| k.generation == generation)
            .collect();
        assert_eq!(
            of_generation,
            vec![stored(signing_key(&winners[0], generation))]
        );
    }
}

/// A row no store would have written makes the store unavailable, with a
/// message naming the key, never a panic (SQL backends).
async fn signing_keys_bad_rows(b: &dyn Backend) {
    let store = b.signing();
    assert!(
        store
            .insert_signing_key(signing_key("negative", 1))
            .await
            .expect("insert")
    );
    if !b
        .raw_sql("UPDATE signing_keys SET generation = -1 WHERE id = 'negative'")
        .await
    {
        return;
    }
    match store.signing_keys().await {
        Err(StoreError::Unavailable(why)) => {
            assert!(why.contains("negative"), "names the key: {why}");
            assert!(why.contains("generation -1"), "says what is wrong: {why}");
        }
        other => panic!("a negative generation must be refused: {other:?}"),
    }
    store.remove_signing_key("negative").await.expect("remove");
    assert!(
        store
            .insert_signing_key(signing_key("timeless", 1))
            .await
            .expect("insert")
    );
    assert!(
        b.raw_sql(&format!(
            "UPDATE signing_keys SET created_ms = {} WHERE id = 'timeless'",
            i64::MAX
        ))
        .await
    );
    match store.signing_keys().await {
        Err(StoreError::Unavailable(why)) => {
            assert!(why.contains("timeless"), "names the key: {why}");
            assert!(why.contains("created_ms"), "says what is wrong: {why}");
        }
        other => panic!("a timestamp out of range must be refused: {other:?}"),
    }
    store.remove_signing_key("timeless").await.expect("remove");
    assert_eq!(store.signing_keys().await.expect("list"), vec![]);
}

macro_rules! conformance {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;

            async fn run(
                case: for<'a> fn(
                    &'a dyn Backend,
                ) -> std::pin::Pin<
                    Box<dyn std::future::Future<Output = ()> + Send + 'a>,
                >,
            ) {
                let Some(backend) = $open.await else { return };
                case(backend.as_ref()).await;
                backend.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn insert_and_get() {
                run(|b| Box::pin(super::insert_and_get(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_paging_and_ordering() {
                run(|b| Box::pin(super::list_paging_and_ordering(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn remove() {
                run(|b| Box::pin(super::remove(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn organization_binding() {
                run(|b| Box::pin(super::organization_binding(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ten_thousand_keys() {
                run(|b| Box::pin(super::ten_thousand_keys(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_creates() {
                run(|b| Box::pin(super::concurrent_creates(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn key_limit() {
                run(|b| Box::pin(super::key_limit(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn key_ids() {
                run(|b| Box::pin(super::key_ids(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn persistence() {
                run(|b| Box::pin(super::persistence(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn signing_keys() {
                run(|b| Box::pin(super::signing_keys(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn signing_keys_concurrent_rotation() {
                run(|b| Box::pin(super::signing_keys_concurrent_rotation(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn signing_keys_bad_rows() {
                run(|b| Box::pin(super::signing_keys_bad_rows(b))).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn signing_key_persistence() {
                run(|b| Box::pin(super::signing_key_persistence(b))).await;
            }
        }
    };
}

conformance!(memory, backends::memory());
#[cfg(feature = "sqlite")]
conformance!(sqlite, backends::sqlite());
#[cfg(feature = "postgres")]
conformance!(postgres, backends::postgres());
