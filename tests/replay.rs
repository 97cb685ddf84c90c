//! Replay protection (SPEC §3 item 7) over real HTTP: in process, and
//! across two servers sharing the Redis at 127.0.0.1:6379.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{Http, serve};
use http::{Method, StatusCode};
use jwt_profile::replay::{MemoryReplayStore, ReplayStore};
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{AssertionSigner, JwtProfileLayer, KeyService, Principal, Validation, Verifier};
use serde_json::json;

const AUD: &str = "https://api.example.com";

async fn machine(store: &CachedStore, user: &str) -> AssertionSigner {
    let keys = KeyService::new(store.clone());
    let me = Principal::new(user, "default", "-");
    let created = keys
        .create(&me, None, user, Default::default())
        .await
        .expect("create");
    AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer")
}

async fn server(store: &CachedStore, replay: impl ReplayStore) -> Http {
    let verifier =
        Verifier::new(store.clone(), Validation::new([AUD])).with_replay_protection(replay);
    let app = Router::new()
        .route("/", get(|p: Principal| async move { p.user_id }))
        .layer(JwtProfileLayer::new(verifier));
    Http::new(serve(app).await)
}

fn assertion(signer: &AssertionSigner, jti: serde_json::Value) -> String {
    let now = common::unix_now();
    let mut claims = json!({"iss": signer.user_id(), "sub": signer.user_id(), "aud": AUD, "iat": now, "exp": now + 300});
    if !jti.is_null() {
        claims["jti"] = jti;
    }
    signer.sign_claims(&claims).expect("sign")
}

fn random_jti() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).expect("rng");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sends `copies` concurrent requests with `token`, spread over `servers`;
/// returns (accepted, refused as replayed).
async fn flood(servers: &[Http], token: &str, copies: usize) -> (usize, usize) {
    let tasks: Vec<_> = (0..copies)
        .map(|i| {
            let http = servers[i % servers.len()].clone();
            let token = token.to_string();
            tokio::spawn(async move { http.call(Method::GET, "/", &token, &[], "").await })
        })
        .collect();
    let (mut ok, mut replayed) = (0, 0);
    for t in tasks {
        let res = t.await.expect("join");
        match res.status {
            StatusCode::OK => ok += 1,
            StatusCode::UNAUTHORIZED if res.error_id() == "TOKEN-replayed" => replayed += 1,
            other => panic!("unexpected {other}: {:?}", res.body),
        }
    }
    (ok, replayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_copies_one_accepted_in_process() {
    let store = CachedStore::new(MemoryStore::new());
    let bot = machine(&store, "bot").await;
    let http = server(&store, MemoryReplayStore::new()).await;
    let token = assertion(&bot, json!(random_jti()));
    assert_eq!(
        flood(std::slice::from_ref(&http), &token, 100).await,
        (1, 99)
    );
    // Another jti is another assertion.
    assert_eq!(
        http.call(
            Method::GET,
            "/",
            &assertion(&bot, json!(random_jti())),
            &[],
            ""
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn jti_is_required_and_bounded_with_replay_protection_on() {
    let store = CachedStore::new(MemoryStore::new());
    let bot = machine(&store, "bot").await;
    let other = machine(&store, "other").await;
    let http = server(&store, MemoryReplayStore::new()).await;
    let refused = |token: String| {
        let http = http.clone();
        async move {
            let res = http.call(Method::GET, "/", &token, &[], "").await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED);
            res.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    assert_eq!(
        refused(assertion(&bot, serde_json::Value::Null)).await,
        "jti is required"
    );
    assert_eq!(refused(assertion(&bot, json!(""))).await, "jti is empty");
    assert_eq!(
        refused(assertion(&bot, json!("j".repeat(257)))).await,
        "jti is longer than 256 bytes"
    );
    assert_eq!(
        refused(assertion(&bot, json!(5))).await,
        "jti is not a string"
    );
    let ok = http
        .call(
            Method::GET,
            "/",
            &assertion(&bot, json!("j".repeat(256))),
            &[],
            "",
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    // The same jti from another issuer is another assertion.
    let shared = random_jti();
    assert_eq!(
        http.call(Method::GET, "/", &assertion(&bot, json!(shared)), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        http.call(Method::GET, "/", &assertion(&other, json!(shared)), &[], "")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_refused_assertion_does_not_use_up_its_jti() {
    let store = CachedStore::new(MemoryStore::new());
    let bot = machine(&store, "bot").await;
    let http = server(&store, MemoryReplayStore::new()).await;
    let jti = random_jti();
    // Signed by another key under bot's kid: refused for its signature.
    let pair = jwt_profile::key::generate_rsa_key_pair().expect("key");
    let forger = AssertionSigner::from_pem("bot", bot.key_id(), pair.private_key_pem.as_bytes())
        .expect("forger");
    let forged = http
        .call(Method::GET, "/", &assertion(&forger, json!(jti)), &[], "")
        .await;
    assert_eq!(forged.error_id(), "TOKEN-bad-signature");
    let genuine = http
        .call(Method::GET, "/", &assertion(&bot, json!(jti)), &[], "")
        .await;
    assert_eq!(genuine.status, StatusCode::OK);
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use common::Proxy;
    use jwt_profile::replay::RedisReplayStore;

    fn url() -> String {
        std::env::var("JWT_PROFILE_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
    }

    /// A store with a key prefix of its own, or `None` (with a note) when no
    /// Redis answers and none was asked for; under `CI=true` or with
    /// `JWT_PROFILE_TEST_REDIS` set, an unreachable Redis fails the test.
    async fn store(url: &str, prefix: &str) -> Option<RedisReplayStore> {
        match RedisReplayStore::connect_with_prefix(url, prefix).await {
            Ok(s) => Some(s),
            Err(e) => {
                let required = std::env::var("CI").is_ok_and(|v| v == "true")
                    || std::env::var("JWT_PROFILE_TEST_REDIS").is_ok();
                assert!(
                    !required,
                    "Redis at {url} is required here but unreachable: {e}"
                );
                eprintln!(
                    "SKIPPED: no Redis at {url} ({e}); set JWT_PROFILE_TEST_REDIS to run these tests"
                );
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundred_copies_across_two_servers_one_accepted() {
        let prefix = format!("jwtp-test:{}:", random_jti());
        let (Some(a), Some(b)) = (store(&url(), &prefix).await, store(&url(), &prefix).await)
        else {
            return;
        };
        let keys = CachedStore::new(MemoryStore::new());
        let bot = machine(&keys, "bot").await;
        let servers = [server(&keys, a).await, server(&keys, b).await];
        let token = assertion(&bot, json!(random_jti()));
        assert_eq!(flood(&servers, &token, 100).await, (1, 99));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_unreachable_is_503_not_acceptance() {
        let addr: std::net::SocketAddr = url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .parse()
            .expect("redis host:port");
        let proxy = Proxy::start(addr).await;
        let prefix = format!("jwtp-test:{}:", random_jti());
        let Some(replay) = store(&format!("redis://{}", proxy.addr), &prefix).await else {
            return;
        };
        let keys = CachedStore::new(MemoryStore::new());
        let bot = machine(&keys, "bot").await;
        let http = server(&keys, replay).await;
        assert_eq!(
            http.call(
                Method::GET,
                "/",
                &assertion(&bot, json!(random_jti())),
                &[],
                ""
            )
            .await
            .status,
            StatusCode::OK
        );
        proxy.cut();
        let down = http
            .call(
                Method::GET,
                "/",
                &assertion(&bot, json!(random_jti())),
                &[],
                "",
            )
            .await;
        assert_eq!(
            down.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{:?}",
            down.body
        );
        assert_eq!(down.code(), 14);
        proxy.restore();
        let mut recovered = false;
        for _ in 0..40 {
            if http
                .call(
                    Method::GET,
                    "/",
                    &assertion(&bot, json!(random_jti())),
                    &[],
                    "",
                )
                .await
                .status
                == StatusCode::OK
            {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(recovered, "no recovery after Redis came back");
    }

    #[tokio::test]
    async fn no_redis_at_all_is_an_error_at_connect() {
        let err = RedisReplayStore::connect("redis://127.0.0.1:1")
            .await
            .expect_err("refused");
        assert!(matches!(
            err,
            jwt_profile::store::StoreError::Unavailable(_)
        ));
    }
}
