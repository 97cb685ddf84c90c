//! The security promises under adversarial timing: a removed key, a flood
//! of unknown kids, concurrent creates past the key limit, key generation
//! that must not stall the server. Real HTTP servers on 127.0.0.1, real
//! SQLite files and the real PostgreSQL server.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::backends::{self, Backend};
use common::{Http, serve};
use http::{Method, StatusCode};
use jwt_profile::CreateKey;
use jwt_profile::store::{
    CacheSettings, CachedStore, KeyLookup, KeyStore, MemoryStore, StoreError,
};
use jwt_profile::{
    AssertionSigner, JwtProfileLayer, KeyService, ManualClock, Principal, Validation, Verifier,
};
use serde_json::json;

const AUD: &str = "https://api.example.com";

use crate::common::Counting;

/// One process: a cache over `store`, the key service and the layer on a
/// real HTTP server, all on one settable clock.
struct Replica {
    keys: KeyService,
    http: Http,
}

async fn replica(
    store: Arc<dyn KeyStore>,
    settings: CacheSettings,
    clock: &ManualClock,
) -> Replica {
    let store = CachedStore::with_settings(store, settings);
    store.load_directory().await.expect("directory");
    let keys = KeyService::new(store.clone()).with_clock(clock.clone());
    let verifier = Verifier::new(store.clone(), Validation::new([AUD])).with_clock(clock.clone());
    let app = Router::new()
        .route(
            "/whoami",
            get(|p: Principal| async move { p.key_id.to_string() }),
        )
        .layer(JwtProfileLayer::new(verifier));
    Replica {
        keys,
        http: Http::new(serve(app).await),
    }
}

impl Replica {
    async fn machine(&self, user: &str) -> AssertionSigner {
        common::machine(&self.keys, user).await
    }

    async fn remove(&self, signer: &AssertionSigner) {
        let me = Principal::new(signer.user_id(), "default", "-");
        self.keys
            .remove(&me, None, signer.user_id(), signer.key_id())
            .await
            .expect("remove");
    }

    async fn status(&self, token: &str) -> StatusCode {
        self.http
            .call(Method::GET, "/whoami", token, &[], "")
            .await
            .status
    }
}

fn token_at(signer: &AssertionSigner, clock: &ManualClock) -> String {
    let now = clock.now_secs();
    signer.sign_at(AUD, now, now + 3600).expect("sign")
}

trait NowSecs {
    fn now_secs(&self) -> u64;
}

impl NowSecs for ManualClock {
    fn now_secs(&self) -> u64 {
        use jwt_profile::Clock;
        u64::try_from(self.now().timestamp()).expect("after 1970")
    }
}

fn key_cache(ttl: Duration) -> CacheSettings {
    CacheSettings {
        ttl,
        ..CacheSettings::default()
    }
}

/// The key cache's lifetime in these tests (60 s in production).
const KEY_TTL: Duration = Duration::from_millis(400);

/// The report's sequence on `r`, scaled down: T0 loads the key into the key
/// cache; T1, later, is remembered as checked (for longer than the key's
/// cache entry has left); the key's entry expires and T0 loads a new copy.
/// Returns (T0, T1), both accepted so far.
async fn remember_across_a_key_reload(
    r: &Replica,
    bot: &AssertionSigner,
    clock: &ManualClock,
    key_ttl: Duration,
) -> (String, String) {
    let t0 = token_at(bot, clock);
    assert_eq!(r.status(&t0).await, StatusCode::OK);
    tokio::time::sleep(key_ttl * 3 / 4).await;
    clock.advance_secs(50);
    let t1 = token_at(bot, clock);
    assert_eq!(
        r.status(&t1).await,
        StatusCode::OK,
        "T1 checked and remembered"
    );
    assert_eq!(r.status(&t1).await, StatusCode::OK, "T1 from the cache");
    // Past the key cache entry's lifetime, within T1's entry's.
    tokio::time::sleep(key_ttl * 7 / 20).await;
    clock.advance_secs(13);
    assert_eq!(r.status(&t0).await, StatusCode::OK, "T0 loads a new copy");
    (t0, t1)
}

/// The attack of the report: after the sequence above, the key is
/// removed. T1 must be refused at once, like T0 and fresh tokens.
async fn removed_key_refuses_a_remembered_assertion(backend: Box<dyn Backend>) {
    let clock = ManualClock::now_system();
    let r = replica(backend.store(), key_cache(KEY_TTL), &clock).await;
    let bot = r.machine("bot").await;
    let (t0, t1) = remember_across_a_key_reload(&r, &bot, &clock, KEY_TTL).await;
    r.remove(&bot).await;
    assert_eq!(
        r.status(&t1).await,
        StatusCode::UNAUTHORIZED,
        "remembered T1"
    );
    assert_eq!(r.status(&t0).await, StatusCode::UNAUTHORIZED, "T0");
    let fresh = token_at(&bot, &clock);
    assert_eq!(r.status(&fresh).await, StatusCode::UNAUTHORIZED, "fresh");
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_refuses_a_remembered_assertion_on_memory() {
    removed_key_refuses_a_remembered_assertion(backends::memory().await.expect("memory")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_refuses_a_remembered_assertion_on_sqlite() {
    removed_key_refuses_a_remembered_assertion(backends::sqlite().await.expect("sqlite")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(feature = "postgres")]
async fn a_removed_key_refuses_a_remembered_assertion_on_postgres() {
    let Some(backend) = backends::postgres().await else {
        return;
    };
    removed_key_refuses_a_remembered_assertion(backend).await;
}

/// Polls `check` until it holds or `limit` passes; returns how long it took.
#[cfg(feature = "postgres")]
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Two replicas on one PostgreSQL database: B went through the report's
/// sequence (it remembers T1 across a reload of the key); the key is
/// removed on A; B refuses T1 within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(feature = "postgres")]
async fn another_postgres_replica_refuses_a_removed_key_within_a_second() {
    let Some((schema, options)) = backends::postgres_schema().await else {
        return;
    };
    let connect = || async {
        let store =
            jwt_profile::store::PostgresStore::connect_with(options.clone(), Default::default())
                .await
                .expect("connect");
        Arc::new(store) as Arc<dyn KeyStore>
    };
    let clock = ManualClock::now_system();
    let a = replica(connect().await, CacheSettings::default(), &clock).await;
    // Long enough that T1's entry on B outlives the removal by more than
    // 1 s (so only the change feed can make B refuse in time).
    let ttl = Duration::from_secs(3);
    let b = replica(connect().await, key_cache(ttl), &clock).await;
    let bot = a.machine("bot").await;
    let (_, t1) = remember_across_a_key_reload(&b, &bot, &clock, ttl).await;
    a.remove(&bot).await;
    assert_eq!(a.status(&t1).await, StatusCode::UNAUTHORIZED, "A at once");
    let took = within(Duration::from_secs(1), async || {
        b.status(&t1).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(took.is_some(), "B still accepts the removed key after 1 s");
    backends::drop_schema(&schema).await;
}

/// A `kid` that breaks the id rules is malformed, decided before any store
/// read — on PostgreSQL, where a NUL byte used to reach the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(feature = "postgres")]
async fn a_kid_with_a_nul_byte_is_malformed_without_a_store_read() {
    let Some(backend) = backends::postgres().await else {
        return;
    };
    let counting = Counting::new(backend.store());
    let clock = ManualClock::now_system();
    let r = replica(counting.clone(), CacheSettings::default(), &clock).await;
    let bot = r.machine("bot").await;
    let now = clock.now_secs();
    let claims = json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now, "exp": now + 300});
    for kid in ["a\u{0}b", "\u{0}", "a/b", &"k".repeat(201), "tab\there"] {
        let header = json!({"alg": "RS256", "kid": kid});
        let token = bot
            .sign_parts(header.to_string().as_bytes(), claims.to_string().as_bytes())
            .expect("sign");
        for _ in 0..3 {
            let res = r.http.call(Method::GET, "/whoami", &token, &[], "").await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "kid {kid:?}");
            assert_eq!(res.error_id(), "TOKEN-malformed", "kid {kid:?}");
        }
    }
    assert_eq!(counting.reads(), 0, "store reads");
    backend.cleanup().await;
}

fn public_key_pem() -> String {
    jwt_profile::generate_rsa_key_pair()
        .expect("generate")
        .public_key
        .to_pem()
}

fn random_kid() -> String {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("rng");
    u64::from_le_bytes(b).to_string()
}

/// Floods `target` with tokens of random kids from 4 tasks until `stop`.
fn flood(target: Http, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..4)
        .map(|_| {
            let target = target.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                // Bounded in count as well as in time.
                while !stop.load(Ordering::Relaxed) && sent < 200_000 {
                    let now = common::unix_now();
                    let header = json!({"alg": "RS256", "kid": random_kid()});
                    let claims = json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now, "exp": now + 300});
                    // Any signature: the key is unknown anyway.
                    let token = format!(
                        "{}.{}.c2ln",
                        b64(&header.to_string()),
                        b64(&claims.to_string())
                    );
                    let res = target.call(Method::GET, "/whoami", &token, &[], "").await;
                    // Refused: "unknown key", or 503 while the directory
                    // cannot be trusted (a loaded machine can delay the
                    // change feed past its 700 ms bound).
                    assert!(
                        res.status == StatusCode::UNAUTHORIZED
                            || res.status == StatusCode::SERVICE_UNAVAILABLE,
                        "{:?}",
                        res.body
                    );
                    sent += 1;
                }
                sent
            })
        })
        .collect()
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// During a flood of unknown kids, every fresh key's first login succeeds
/// on the replica that created it and on `other` (the same store seen by
/// another process), and reads of unknown ids stay within the budget.
async fn fresh_keys_log_in_during_a_flood(
    a: &Replica,
    b: &Replica,
    counting: &[&Counting],
    budget: u32,
) {
    let clock = ManualClock::now_system();
    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = flood(a.http.clone(), stop.clone());
    floods.extend(flood(b.http.clone(), stop.clone()));
    // Let the flood use up the budget first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let before: usize = counting.iter().map(|c| c.reads()).sum();
    let mut logins = 0;
    for i in 0..10 {
        let bot = a.machine(&format!("fresh-{i}")).await;
        let token = token_at(&bot, &clock);
        assert_eq!(
            a.status(&token).await,
            StatusCode::OK,
            "fresh key {i} on its replica"
        );
        let token = token_at(&bot, &clock);
        assert_eq!(
            b.status(&token).await,
            StatusCode::OK,
            "fresh key {i} on the other replica"
        );
        logins += 2;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for f in floods {
        sent += f.await.expect("flood task");
    }
    let elapsed = started.elapsed().as_secs_f64() + 0.3;
    let reads: usize = counting.iter().map(|c| c.reads()).sum::<usize>() - before;
    // Each replica: a burst of `budget`, then `budget` per second; plus
    // one read per fresh key per replica.
    let allowed = counting.len() as f64 * f64::from(budget) * (1.0 + elapsed) + logins as f64;
    eprintln!(
        "flood: {sent} unknown-kid requests, {reads} store reads (allowed {allowed:.0}) in {elapsed:.1} s"
    );
    assert!(sent > 1000, "the flood sent only {sent} requests");
    assert!((reads as f64) <= allowed, "{reads} store reads > {allowed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_does_not_cost_fresh_keys_their_first_login() {
    let budget = 20;
    let settings = CacheSettings {
        max_misses_per_second: budget,
        ..CacheSettings::default()
    };
    let clock = ManualClock::now_system();
    // In process: one memory store, two caches (two "replicas" of one
    // process's store).
    let memory: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let counting = Counting::new(memory);
    let a = replica(counting.clone(), settings, &clock).await;
    fresh_keys_log_in_during_a_flood(&a, &a, &[&counting], budget).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(feature = "postgres")]
async fn a_flood_of_unknown_kids_on_two_postgres_replicas_spares_fresh_keys() {
    let Some((schema, options)) = backends::postgres_schema().await else {
        return;
    };
    let budget = 20;
    let settings = CacheSettings {
        max_misses_per_second: budget,
        ..CacheSettings::default()
    };
    let connect = || async {
        let store =
            jwt_profile::store::PostgresStore::connect_with(options.clone(), Default::default())
                .await
                .expect("connect");
        Counting::new(Arc::new(store))
    };
    let clock = ManualClock::now_system();
    let (ca, cb) = (connect().await, connect().await);
    let a = replica(ca.clone(), settings, &clock).await;
    let b = replica(cb.clone(), settings, &clock).await;
    fresh_keys_log_in_during_a_flood(&a, &b, &[&ca, &cb], budget).await;
    backends::drop_schema(&schema).await;
}

/// Before the directory is loaded (or for a store that cannot list its
/// ids), the budget still bounds reads of unknown ids: past it the answer
/// is 503, and existing keys are unaffected once cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_directory_the_budget_answers_unavailable() {
    let store = Counting::unlisted(Arc::new(MemoryStore::new()));
    let cached = CachedStore::with_settings(
        store.clone(),
        CacheSettings {
            max_misses_per_second: 5,
            ..CacheSettings::default()
        },
    );
    assert!(
        !cached.load_directory().await.expect("load"),
        "cannot be current"
    );
    let mut unavailable = 0;
    for _ in 0..50 {
        match cached.lookup(&random_kid()).await {
            Ok(None) => {}
            Err(StoreError::Unavailable(_)) => unavailable += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(unavailable >= 40, "only {unavailable} of 50 held back");
    assert!(store.reads() <= 10);
}

/// The per-user key limit holds under concurrent creates, on every backend.
async fn concurrent_creates_stop_at_the_limit(backend: Box<dyn Backend>) {
    let store = CachedStore::new(backend.store());
    let keys = KeyService::new(store).with_max_keys_per_user(3);
    let me = Principal::new("bot", "default", "-");
    // Own public keys: the store's check, not key generation, is under test.
    let pem = public_key_pem();
    let creates: Vec<_> = (0..12)
        .map(|_| {
            let keys = keys.clone();
            let me = me.clone();
            let pem = pem.clone();
            tokio::spawn(async move {
                let request = CreateKey {
                    public_key: Some(pem.into_bytes()),
                    ..CreateKey::default()
                };
                keys.create(&me, None, "bot", request).await
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for c in creates {
        match c.await.expect("join") {
            Ok(_) => ok += 1,
            Err(e) if e.id() == "KEY-limit-reached" => {
                assert_eq!(e.code().http_status(), 429);
                limited += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, limited), (3, 9));
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_stop_at_the_limit_on_memory() {
    concurrent_creates_stop_at_the_limit(backends::memory().await.expect("memory")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_stop_at_the_limit_on_sqlite() {
    concurrent_creates_stop_at_the_limit(backends::sqlite().await.expect("sqlite")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(feature = "postgres")]
async fn concurrent_creates_stop_at_the_limit_on_postgres() {
    let Some(backend) = backends::postgres().await else {
        return;
    };
    concurrent_creates_stop_at_the_limit(backend).await;
}

/// RSA generation runs off the async executor: on a one-thread runtime, a
/// ticker keeps ticking while four keys are generated. (Counting ticks, not
/// timing them: generated inline, the ticker could tick only between keys.)
#[test]
fn key_generation_does_not_stall_the_executor() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let keys = KeyService::new(CachedStore::new(MemoryStore::new()));
        let me = Principal::new("bot", "default", "-");
        let done = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let (done, ticks) = (done.clone(), ticks.clone());
            async move {
                while !done.load(Ordering::SeqCst) {
                    tokio::task::yield_now().await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let creates: Vec<_> = (0..4)
            .map(|_| {
                let (keys, me) = (keys.clone(), me.clone());
                tokio::spawn(
                    async move { keys.create(&me, None, "bot", CreateKey::default()).await },
                )
            })
            .collect();
        for c in creates {
            assert!(c.await.expect("join").expect("create").key_file.is_some());
        }
        done.store(true, Ordering::SeqCst);
        ticker.await.expect("ticker");
        let ticks = ticks.load(Ordering::SeqCst);
        assert!(
            ticks > 100,
            "the executor ran only {ticks} ticks during key generation"
        );
    });
}

/// Binding a user to another organization is refused without naming it.
#[tokio::test]
async fn failed_precondition_does_not_name_the_other_organization() {
    let keys = KeyService::new(CachedStore::new(MemoryStore::new()))
        .with_policy(jwt_profile::policy::DefaultPolicy::new().with_admin("root", "admin"));
    let admin = Principal::new("admin", "root", "-");
    let pem = public_key_pem();
    let own = |pem: &str| CreateKey {
        public_key: Some(pem.as_bytes().to_vec()),
        ..CreateKey::default()
    };
    keys.create(&admin, Some("secret-org-name"), "bot", own(&pem))
        .await
        .expect("first");
    let err = keys
        .create(&admin, Some("other"), "bot", own(&pem))
        .await
        .expect_err("bound elsewhere");
    assert_eq!(err.id(), "KEY-user-other-org");
    assert!(!err.to_string().contains("secret-org-name"), "{err}");
    assert!(
        !err.message().contains("secret-org-name"),
        "{}",
        err.message()
    );
}

/// How the link between replica A and the database fails.
#[derive(Clone, Copy, Debug)]
#[cfg(feature = "postgres")]
enum LinkFailure {
    /// Connections closed, new ones refused (a partition that resets).
    Cut,
    /// Connections stay open and nothing is relayed (a silent stall).
    Freeze,
    /// Everything is relayed, but the change feed lags 3 s behind.
    LagFeed,
}

/// Replica A reaches PostgreSQL through a proxy that fails; B reaches it
/// directly. A accepted (and remembers) an assertion; B removes the key.
/// From 1 s after the removal, A must not accept it: it cannot hear the
/// change feed, so it must stop trusting its caches (503), not serve them
/// for their lifetime. Once the link is back, A refuses the key (401).
#[cfg(feature = "postgres")]
async fn a_replica_that_cannot_hear_the_feed_fails_closed(failure: LinkFailure) {
    let Some((schema, options)) = backends::postgres_schema().await else {
        return;
    };
    let upstream = {
        let url = backends::postgres_url();
        let host_port = url
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5432")
            .to_string();
        tokio::net::lookup_host(host_port)
            .await
            .expect("resolve")
            .next()
            .expect("address")
    };
    let proxy = common::Proxy::start(upstream).await;
    let settings = jwt_profile::store::PostgresSettings {
        acquire_timeout: Duration::from_millis(500),
        query_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let via_proxy = options.clone().host("127.0.0.1").port(proxy.addr.port());
    let store_a = jwt_profile::store::PostgresStore::connect_with(via_proxy, settings.clone())
        .await
        .expect("connect A");
    let store_b = jwt_profile::store::PostgresStore::connect_with(options.clone(), settings)
        .await
        .expect("connect B");
    let clock = ManualClock::now_system();
    let a = replica(Arc::new(store_a), CacheSettings::default(), &clock).await;
    let b = replica(Arc::new(store_b), CacheSettings::default(), &clock).await;
    let bot = b.machine("bot").await;
    let token = token_at(&bot, &clock);
    assert_eq!(a.status(&token).await, StatusCode::OK);
    assert_eq!(a.status(&token).await, StatusCode::OK, "remembered on A");
    match failure {
        LinkFailure::Cut => proxy.cut(),
        LinkFailure::Freeze => proxy.freeze(true),
        LinkFailure::LagFeed => {
            proxy.lag_listen(Duration::from_secs(3));
            // The lag takes hold: heartbeats come back 3 s late.
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(a.status(&token).await, StatusCode::OK, "still live");
        }
    }
    b.remove(&bot).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        let status = a.status(&token).await;
        assert_ne!(
            status,
            StatusCode::OK,
            "{failure:?}: A accepts a removed key"
        );
        let expected = match failure {
            // Reads still work: the store says the key is gone.
            LinkFailure::LagFeed => StatusCode::UNAUTHORIZED,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        assert_eq!(status, expected, "{failure:?}");
    }
    match failure {
        LinkFailure::Cut => proxy.restore(),
        LinkFailure::Freeze => proxy.freeze(false),
        LinkFailure::LagFeed => proxy.lag_listen(Duration::ZERO),
    }
    let recovered = within(Duration::from_secs(10), async || {
        a.status(&token).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(recovered.is_some(), "{failure:?}: A did not recover");
    // And A serves live keys from its cache again.
    let live = b.machine("live").await;
    let live_token = token_at(&live, &clock);
    let served = within(Duration::from_secs(5), async || {
        a.status(&live_token).await == StatusCode::OK
    })
    .await;
    assert!(
        served.is_some(),
        "{failure:?}: A does not accept live keys after recovery"
    );
    backends::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(feature = "postgres")]
async fn a_replica_cut_off_from_the_database_fails_closed_within_a_second() {
    a_replica_that_cannot_hear_the_feed_fails_closed(LinkFailure::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(feature = "postgres")]
async fn a_replica_whose_database_link_stalls_fails_closed_within_a_second() {
    a_replica_that_cannot_hear_the_feed_fails_closed(LinkFailure::Freeze).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_change_feed_lags_fails_closed_within_a_second() {
    a_replica_that_cannot_hear_the_feed_fails_closed(LinkFailure::LagFeed).await;
}
