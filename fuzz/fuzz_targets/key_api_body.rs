//! The key API's JSON bodies (create and list) through the real router.
//! Any answer but a 5xx is fine; a 5xx is a crash.
#![no_main]

use std::sync::OnceLock;

use axum::Router;
use http::{Method, Request};
use jwt_profile::http::KeyApi;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{KeyService, Principal};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

fn setup() -> &'static (tokio::runtime::Runtime, Router) {
    static S: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        // A limit of 0 keys: valid bodies end in a fast 429 instead of
        // generating RSA keys; parsing is what is under test.
        let keys = KeyService::new(CachedStore::new(MemoryStore::new())).with_max_keys_per_user(0);
        let router = KeyApi::new(keys).router().layer(axum::Extension(Principal::new("fuzz", "org", "-")));
        (rt, router)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, router) = setup();
    for path in ["/users/fuzz/keys", "/users/fuzz/keys/_search"] {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .body(axum::body::Body::from(data.to_vec()))
            .expect("request");
        let status = rt.block_on(router.clone().oneshot(request)).expect("infallible").status();
        assert!(!status.is_server_error(), "{path}: {status}");
    }
});
