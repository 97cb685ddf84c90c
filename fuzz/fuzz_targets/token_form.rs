//! The token endpoint's form parser, alone and through the real router
//! (with a real issuer over a memory store): any answer but a 5xx is fine;
//! a 5xx (or a panic) is a crash.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::Router;
use http::{Method, Request};
use jwt_profile::http::TokenApi;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::token::{IssuerSettings, MasterKey, TokenIssuer, TokenRequest};
use jwt_profile::{Validation, Verifier};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

fn setup() -> &'static (tokio::runtime::Runtime, Router) {
    static S: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let router = rt.block_on(async {
            let backend = Arc::new(MemoryStore::new());
            let verifier = Verifier::new(
                CachedStore::new(backend.clone()),
                Validation::new(["https://api.example.com"]),
            );
            let issuer = TokenIssuer::open(
                IssuerSettings::new("https://auth.example.com"),
                backend,
                MasterKey::generate().expect("master"),
                &verifier,
            )
            .await
            .expect("issuer");
            TokenApi::new(issuer).router()
        });
        (rt, router)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = TokenRequest::from_form(Some("application/x-www-form-urlencoded"), data);
    let (rt, router) = setup();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/oauth/v2/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(data.to_vec()))
        .expect("request");
    let status = rt
        .block_on(router.clone().oneshot(request))
        .expect("infallible")
        .status();
    assert!(!status.is_server_error(), "{status}");
});
