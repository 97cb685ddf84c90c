//! Replay protection (SPEC §3 item 7) over real HTTP: in process, and
//! across two servers sharing the Redis at 127.0.0.1:6379.

use crate::common;

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
    common::machine(&KeyService::new(store.clone()), user).await
}

async fn server(store: &CachedStore, replay: impl ReplayStore) -> Http {
    serve_verifier(
        Verifier::new(store.clone(), Validation::new([AUD])).with_replay_protection(replay),
    )
    .await
}

async fn serve_verifier(verifier: Verifier) -> Http {
    let app = Router::new()
        .route(
            "/",
            get(|p: Principal| async move { p.user_id.to_string() }),
        )
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

/// An assertion with the given times (Unix seconds).
fn assertion_at(signer: &AssertionSigner, jti: &str, iat: i64, exp: i64) -> String {
    let claims = json!({"iss": signer.user_id(), "sub": signer.user_id(), "aud": AUD, "iat": iat, "exp": exp, "jti": jti});
    signer.sign_claims(&claims).expect("sign")
}

/// 9999-12-31T23:59:59Z, the latest `exp` there is.
const END_OF_TIME: i64 = 253_402_300_799;

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
    let pair = jwt_profile::generate_rsa_key_pair().expect("key");
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

/// A full in-memory store refuses (503, code 14) instead of evicting a live
/// jti: the attack was to fill it with far-future assertions so that the
/// next ones were forgotten and could be replayed.
#[tokio::test]
async fn a_full_memory_store_refuses_new_jtis_and_never_accepts_one_twice() {
    let store = CachedStore::new(MemoryStore::new());
    let bot = machine(&store, "bot").await;
    let replay = MemoryReplayStore::with_capacity(10);
    let http = server(&store, replay.clone()).await;
    let now = common::unix_now() as i64;
    let fillers: Vec<String> = (0..10)
        .map(|_| assertion_at(&bot, &random_jti(), now, END_OF_TIME))
        .collect();
    for token in &fillers {
        let res = http.call(Method::GET, "/", token, &[], "").await;
        assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    }
    assert_eq!(replay.len(), 10);
    let mut accepted = std::collections::HashMap::<String, usize>::new();
    for _ in 0..10 {
        let token = assertion_at(&bot, &random_jti(), now, END_OF_TIME);
        for send in 0..2 {
            let res = http.call(Method::GET, "/", &token, &[], "").await;
            if res.status == StatusCode::OK {
                *accepted.entry(token.clone()).or_default() += 1;
            }
            if send == 0 {
                assert_eq!(
                    res.status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "a new jti while full: {:?}",
                    res.body
                );
                assert_eq!(res.code(), 14);
            }
        }
    }
    assert!(
        accepted.values().all(|&n| n <= 1),
        "a token was accepted twice: {accepted:?}"
    );
    assert!(accepted.is_empty(), "accepted while full: {accepted:?}");
    // The fillers were not evicted to make room: still replays.
    for token in &fillers {
        let res = http.call(Method::GET, "/", token, &[], "").await;
        assert_eq!(res.error_id(), "TOKEN-replayed");
    }
    assert_eq!(replay.len(), 10);
}

/// A jti is remembered until iat + max age + leeway when that comes before
/// exp + leeway, and then forgotten: an exp far in the future does not keep
/// it (nor fill the store) for centuries.
#[tokio::test]
async fn a_jti_is_forgotten_after_iat_plus_max_age_plus_leeway() {
    let store = CachedStore::new(MemoryStore::new());
    let bot = machine(&store, "bot").await;
    let replay = MemoryReplayStore::with_capacity(100);
    let t0 = common::unix_now() as i64;
    let clock = jwt_profile::ManualClock::at_unix(t0);
    let validation = Validation::new([AUD])
        .max_age(Duration::from_secs(600))
        .leeway(Duration::from_secs(30));
    let verifier = Verifier::new(store.clone(), validation)
        .with_clock(clock.clone())
        .with_replay_protection(replay.clone());
    let http = serve_verifier(verifier).await;
    let first = assertion_at(&bot, &random_jti(), t0, END_OF_TIME);
    let status = |token: String| {
        let http = http.clone();
        async move {
            let res = http.call(Method::GET, "/", &token, &[], "").await;
            if res.status == StatusCode::OK {
                "ok".to_string()
            } else {
                res.error_id()
            }
        }
    };
    assert_eq!(status(first.clone()).await, "ok");
    assert_eq!(replay.len(), 1);
    // Just before iat + max age + leeway: still remembered, still a replay.
    clock.advance_secs(629);
    assert_eq!(status(first.clone()).await, "TOKEN-replayed");
    assert_eq!(
        status(assertion_at(&bot, &random_jti(), t0 + 629, END_OF_TIME)).await,
        "ok"
    );
    assert_eq!(replay.len(), 2, "the first one is still remembered");
    // Past it: the next insert purges the first one.
    clock.advance_secs(2);
    assert_eq!(status(first.clone()).await, "TOKEN-too-old");
    assert_eq!(
        status(assertion_at(&bot, &random_jti(), t0 + 631, END_OF_TIME)).await,
        "ok"
    );
    assert_eq!(replay.len(), 2, "the first one was forgotten");
    // An exp that comes first bounds it instead: exp + leeway.
    let short = assertion_at(&bot, &random_jti(), t0 + 631, t0 + 700);
    assert_eq!(status(short.clone()).await, "ok");
    clock.advance_secs(98); // t0 + 729 < exp + leeway
    assert_eq!(status(short.clone()).await, "TOKEN-replayed");
    clock.advance_secs(2); // t0 + 731: past exp + leeway
    assert_eq!(
        status(assertion_at(&bot, &random_jti(), t0 + 731, END_OF_TIME)).await,
        "ok"
    );
    assert_eq!(
        replay.len(),
        3,
        "the short one was forgotten after exp + leeway"
    );
    assert_eq!(status(short).await, "TOKEN-expired");
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

/// A verifier with replay protection made from one without shares its cache
/// of checked tokens: an assertion the first accepted (and remembered) must
/// still use up its jti once, and only once, with the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_assertion_is_no_pass_for_a_verifier_with_replay_protection() {
    let store = CachedStore::new(MemoryStore::new());
    let signer = machine(&store, "bot").await;
    let open = Verifier::new(store.clone(), Validation::new([AUD]));
    let token = assertion(&signer, json!(random_jti()));
    assert!(open.verify(&token).await.is_ok());
    assert!(
        open.verify(&token).await.is_ok(),
        "a repeat, from the cache"
    );
    let guarded = open
        .clone()
        .with_replay_protection(MemoryReplayStore::new());
    assert!(guarded.verify(&token).await.is_ok(), "first use of the jti");
    assert_eq!(
        guarded.verify(&token).await.map_err(|e| e.reason()),
        Err(Some(jwt_profile::Reason::Replayed))
    );
}

/// A used `jti` is remembered while its assertion can still pass the time
/// rules, to the last microsecond: with a date that has a fraction below a
/// microsecond, the record's end is rounded up, never down. (An outside
/// review found the same assertion accepted twice 1 µs before the end.)
#[tokio::test]
async fn a_jti_is_not_forgotten_while_its_assertion_still_passes() {
    use jwt_profile::ManualClock;
    let store = CachedStore::new(MemoryStore::new());
    let bot = machine(&store, "bot").await;
    let clock = ManualClock::at_unix(1_000_000);
    let verifier = Verifier::new(store.clone(), Validation::new([AUD]))
        .with_clock(clock.clone())
        .with_replay_protection(MemoryReplayStore::new());
    // exp with a fraction below a microsecond (a JSON number, as allowed).
    let claims = json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": 1_000_000,
        "exp": 1_000_100.000_000_4_f64, "jti": "once"});
    let token = bot.sign_claims(&claims).expect("sign");
    assert!(verifier.verify(&token).await.is_ok(), "first use");
    assert_eq!(
        verifier.verify(&token).await.map_err(|e| e.reason()),
        Err(Some(jwt_profile::Reason::Replayed))
    );
    // exp + leeway = 1_000_160.0000004: at 1_000_160.000000 the time rules
    // still pass, so the jti must still be remembered.
    clock.set(chrono::DateTime::from_timestamp_micros(1_000_160_000_000).expect("time"));
    assert_eq!(
        verifier.verify(&token).await.map_err(|e| e.reason()),
        Err(Some(jwt_profile::Reason::Replayed)),
        "the same assertion (same jti) a second time"
    );
}

/// A leeway too large for a date (one meant to turn expiry off) leaves
/// replay protection on: the record of a used `jti` ends at the latest date
/// there is, never early, and nothing overflows. (An outside review found
/// a panic at 10^13 s and the `jti` forgotten at once at 8.5 * 10^12 s.)
#[tokio::test]
async fn a_huge_leeway_keeps_replay_protection() {
    let store = CachedStore::new(MemoryStore::new());
    let bot = machine(&store, "bot").await;
    for (secs, jti) in [
        (10_000_000_000_000, "once-a"),
        (8_500_000_000_000, "once-b"),
        (u64::MAX, "once-c"),
    ] {
        let verifier = Verifier::new(
            store.clone(),
            Validation::new([AUD]).leeway(Duration::from_secs(secs)),
        )
        .with_replay_protection(MemoryReplayStore::new());
        let token = assertion(&bot, json!(jti));
        let first = verifier.verify(&token).await;
        assert!(first.is_ok(), "leeway {secs}: {first:?}");
        assert_eq!(
            verifier.verify(&token).await.map_err(|e| e.reason()),
            Err(Some(jwt_profile::Reason::Replayed)),
            "leeway {secs}: the same assertion (same jti) a second time"
        );
    }
}
