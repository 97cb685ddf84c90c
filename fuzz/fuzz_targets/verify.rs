//! The verifier on arbitrary bytes, with a real key in the store so that
//! well-formed inputs reach the key and signature checks.
#![no_main]

use std::sync::OnceLock;

use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{KeyService, Principal, Validation, Verifier};
use libfuzzer_sys::fuzz_target;

fn setup() -> &'static (tokio::runtime::Runtime, Verifier) {
    static S: OnceLock<(tokio::runtime::Runtime, Verifier)> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let store = CachedStore::new(MemoryStore::new());
        let keys = KeyService::new(store.clone()).with_id_generator(|| "1".to_string());
        let me = Principal::new("bot", "org", "-");
        rt.block_on(keys.create(&me, None, "bot", Default::default())).expect("key");
        let verifier = Verifier::new(store, Validation::new(["aud"]));
        (rt, verifier)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, verifier) = setup();
    let token = String::from_utf8_lossy(data);
    // Arbitrary input is never a valid assertion.
    assert!(rt.block_on(verifier.verify(&token)).is_err());
});
