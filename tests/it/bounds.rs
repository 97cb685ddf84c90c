//! Bounds under hostile input: a flood of made-up key ids reaches the store
//! a bounded number of times and the cache stays bounded.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use jwt_profile::store::{CacheSettings, CachedStore, MemoryStore};
use jwt_profile::{
    AssertionSigner, KeyService, Principal, Reason, Validation, Verifier, VerifyError,
};
use serde_json::json;

const AUD: &str = "https://api.example.com";

use crate::common::Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_reaches_the_store_a_bounded_number_of_times() {
    let counting = Counting::unlisted(Arc::new(MemoryStore::new()));
    let settings = CacheSettings {
        max_entries: 10_000,
        max_misses_per_second: 1_000,
        ..Default::default()
    };
    let store = CachedStore::with_settings(counting.clone(), settings);
    let keys = KeyService::new(store.clone());
    let me = Principal::new("bot", "default", "-");
    let created = keys
        .create(&me, None, "bot", Default::default())
        .await
        .expect("create");
    let bot = AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
    let verifier = Verifier::new(store.clone(), Validation::new([AUD])).without_assertion_cache();
    // A genuine machine logs in before the flood; its key is cached.
    let genuine = bot.sign(AUD).expect("sign");
    verifier.verify(&genuine).await.expect("accepted");

    // 100 000 distinct made-up kids, with claims that pass every check that
    // comes before the key lookup. (One real signature reused: the lookup
    // happens before the signature check.)
    let now = Utc::now().timestamp();
    let claims =
        json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now, "exp": now + 300}).to_string();
    let template = bot
        .sign_parts(
            json!({"alg": "RS256", "kid": "000000"})
                .to_string()
                .as_bytes(),
            claims.as_bytes(),
        )
        .expect("sign");
    let (_, rest) = template.split_once('.').expect("dot");
    let started = Instant::now();
    let (mut unknown, mut unavailable) = (0, 0);
    for i in 0..100_000u32 {
        let header = base64_url(&json!({"alg": "RS256", "kid": format!("{i:06}")}).to_string());
        match verifier.verify(&format!("{header}.{rest}")).await {
            Err(VerifyError::Invalid(Reason::UnknownKey)) => unknown += 1,
            Err(VerifyError::Unavailable(_)) => unavailable += 1,
            other => panic!("unexpected {other:?}"),
        }
        if i % 20_000 == 0 {
            // The genuine machine keeps working throughout.
            verifier
                .verify(&genuine)
                .await
                .expect("cached key unaffected");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reads = counting.reads();
    let allowed = 1_000.0 + 1_000.0 * elapsed + 2.0;
    eprintln!(
        "flood: {unknown} unknown, {unavailable} unavailable, {reads} store reads in {elapsed:.2} s"
    );
    assert!(
        (reads as f64) <= allowed,
        "{reads} store reads in {elapsed:.2} s (budget {allowed:.0})"
    );
    assert!(unknown >= 1_000, "the budget was used for real answers");
    assert_eq!(unknown + unavailable, 100_000);
    store_entries_bounded(&store, 10_000).await;
}

async fn store_entries_bounded(store: &CachedStore, max: u64) {
    // moka applies its bound in the background; give it a moment.
    for _ in 0..50 {
        if store.entry_count() <= max {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("cache holds {} entries, bound {max}", store.entry_count());
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
