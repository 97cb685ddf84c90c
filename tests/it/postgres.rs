//! PostgreSQL as the store of many replicas: revocation across processes,
//! and an unreachable database (503, then recovery by itself).
#![cfg(feature = "postgres")]

use crate::common;

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use common::backends::{drop_schema, postgres_schema, postgres_url};
use common::{Http, Proxy, serve};
use http::{Method, StatusCode};
use jwt_profile::store::{CachedStore, KeyLookup, PostgresSettings, PostgresStore};
use jwt_profile::{AssertionSigner, JwtProfileLayer, KeyService, Principal, Validation, Verifier};

const AUD: &str = "https://api.example.com";

use crate::common::machine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_see_new_keys_at_once_and_drop_removed_keys_within_a_second() {
    let Some((schema, options)) = postgres_schema().await else {
        return;
    };
    let a = CachedStore::new(
        PostgresStore::connect_with(options.clone(), Default::default())
            .await
            .expect("a"),
    );
    let b = CachedStore::new(
        PostgresStore::connect_with(options.clone(), Default::default())
            .await
            .expect("b"),
    );
    let keys_a = KeyService::new(a.clone());
    let keys_b = KeyService::new(b.clone());

    // A key made on replica A is usable on replica B at once.
    let signer = machine(&keys_a, "bot").await;
    let verifier_b = Verifier::new(b.clone(), Validation::new([AUD]));
    let principal = verifier_b
        .verify(&signer.sign(AUD).expect("sign"))
        .await
        .expect("B accepts A's key");
    assert_eq!(&*principal.user_id, "bot");
    assert!(
        signer.key_id().len() >= 18,
        "ids come from the database sequence: {}",
        signer.key_id()
    );
    // And the other way round, with ids that never collide.
    let from_b = machine(&keys_b, "bot2").await;
    assert_ne!(from_b.key_id(), signer.key_id());

    // B has the key cached; A removes it; B drops it within a second.
    assert!(b.lookup(signer.key_id()).await.expect("lookup").is_some());
    let me = Principal::new("bot", "default", "-");
    let started = Instant::now();
    keys_a
        .remove(&me, None, "bot", signer.key_id())
        .await
        .expect("remove");
    let mut refused = false;
    while started.elapsed() < Duration::from_secs(1) {
        if verifier_b
            .verify(&signer.sign(AUD).expect("sign"))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    assert!(
        refused,
        "replica B still accepted the removed key after {elapsed:?}"
    );
    eprintln!("replica B refused the removed key after {elapsed:?}");
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_is_503_and_recovery_is_automatic() {
    let Some((schema, options)) = postgres_schema().await else {
        return;
    };
    let url = url_parts(&postgres_url());
    let proxy = Proxy::start(url).await;
    let settings = PostgresSettings {
        acquire_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let via_proxy = options.clone().host("127.0.0.1").port(proxy.addr.port());
    let store = CachedStore::new(
        PostgresStore::connect_with(via_proxy, settings)
            .await
            .expect("connect"),
    );
    let keys = KeyService::new(store.clone());
    let used = machine(&keys, "used").await;
    let unused = machine(&keys, "unused").await;
    let verifier = Verifier::new(store.clone(), Validation::new([AUD]));
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|p: Principal| async move { p.user_id.to_string() }),
        )
        .layer(JwtProfileLayer::new(verifier));
    let http = Http::new(serve(app).await);
    let call = |s: &AssertionSigner| {
        let http = http.clone();
        let token = s.sign(AUD).expect("sign");
        async move { http.call(Method::GET, "/", &token, &[], "").await }
    };
    assert_eq!(call(&used).await.status, StatusCode::OK);

    proxy.cut();
    let down = call(&unused).await;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        down.body
    );
    assert_eq!(down.code(), 14);
    // While the database is away this replica cannot hear removals made
    // elsewhere, so its cache vouches for nothing: the cached key is 503
    // too (fail closed), not served for the cache's lifetime.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(call(&used).await.status, StatusCode::SERVICE_UNAVAILABLE);

    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if call(&unused).await.status == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "no recovery within 5 s of the database coming back"
    );
    assert_eq!(call(&used).await.status, StatusCode::OK);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_never_answers() {
    // Port 1 on loopback: nothing listens, connections are refused.
    let err = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .expect_err("refused");
    assert!(matches!(
        err,
        jwt_profile::store::StoreError::Unavailable(_)
    ));
    // Started lazily, the layer answers 503 (never 401) until it answers.
    let options: sqlx::postgres::PgConnectOptions =
        "postgres://postgres@127.0.0.1:1/test".parse().expect("url");
    let settings = PostgresSettings {
        acquire_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let store = CachedStore::new(PostgresStore::connect_lazy_with(options, settings));
    let verifier = Verifier::new(store, Validation::new([AUD]));
    let signer = AssertionSigner::from_pem(
        "bot",
        "123",
        jwt_profile::generate_rsa_key_pair()
            .expect("k")
            .private_key_pem
            .as_bytes(),
    )
    .expect("s");
    let err = verifier
        .verify(&signer.sign(AUD).expect("sign"))
        .await
        .expect_err("unavailable");
    assert!(
        matches!(err, jwt_profile::VerifyError::Unavailable(_)),
        "{err}"
    );
}

fn url_parts(url: &str) -> std::net::SocketAddr {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().expect("url");
    (opts.get_host(), opts.get_port())
        .to_socket_addrs()
        .expect("resolve")
        .next()
        .expect("addr")
}

/// A lazily connected store tells caches its feed is stalled, again and
/// again, until the feed is up (a cache made meanwhile would otherwise
/// trust a feed that announces nothing); once up: Flush, then Current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_store_is_stalled_until_its_feed_is_up() {
    use jwt_profile::store::{KeyEvent, KeyStore};
    async fn next(events: &mut tokio::sync::broadcast::Receiver<KeyEvent>) -> KeyEvent {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .expect("event")
    }
    let settings = || PostgresSettings {
        acquire_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let down = PostgresStore::connect_lazy_with(
        "postgres://postgres@127.0.0.1:1/test".parse().expect("url"),
        settings(),
    );
    let mut events = down.events().expect("a feed");
    for _ in 0..3 {
        assert_eq!(next(&mut events).await, KeyEvent::Stalled);
    }
    // Dropped, it stops telling (nothing left running).
    drop(down);
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while !matches!(
            events.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Closed)
        ) {}
    });
    assert!(closed.await.is_ok(), "the feed of a dropped store goes on");
    let Some((schema, options)) = postgres_schema().await else {
        return;
    };
    let up = PostgresStore::connect_lazy_with(options, settings());
    let mut events = up.events().expect("a feed");
    let mut seen = Vec::new();
    while seen.last() != Some(&KeyEvent::Current) {
        seen.push(next(&mut events).await);
        assert!(seen.len() < 100, "no Current: {seen:?}");
    }
    let flush = seen
        .iter()
        .position(|e| *e == KeyEvent::Flush)
        .expect("a Flush before Current");
    assert!(
        seen[..flush].iter().all(|e| *e == KeyEvent::Stalled),
        "{seen:?}"
    );
    drop(up);
    drop_schema(&schema).await;
}
