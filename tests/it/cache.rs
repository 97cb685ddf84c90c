//! The cache of checked tokens (moka and each thread's mirror) against the
//! full check, right now: through time passing, key removal and a key
//! stored again under the same id, every answer of a cached verifier (and of
//! the layer's in-place attempt) is the full check's. (Written by an
//! outside review of the mirror.)

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jwt_profile::policy::DefaultPolicy;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{
    AssertionSigner, CreateKey, JwtProfileLayer, KeyService, ManualClock, Principal, Validation,
    Verifier, VerifyError,
};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt, service_fn};

const AUD: &str = "https://api.example.com";

type Seen = Result<(String, String), VerifyError>;

fn seen(r: Result<Principal, VerifyError>) -> Seen {
    r.map(|p| (p.user_id.to_string(), p.org_id.to_string()))
}

/// Every token, many times on every worker (so each thread's mirror holds
/// it), through `verify` and through the layer (in-place attempt), each
/// answer compared with the full check's.
async fn compare(phase: &str, cached: &Verifier, full: &Verifier, tokens: &[String]) {
    for (i, t) in tokens.iter().enumerate() {
        let want = seen(full.verify(t).await);
        let mut tasks = Vec::new();
        for _ in 0..24 {
            let (cached, t) = (cached.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                let direct = seen(cached.verify(&t).await);
                let svc = ServiceBuilder::new()
                    .layer(JwtProfileLayer::new(cached.clone()))
                    .service(service_fn(|req: Request<Full<Bytes>>| async move {
                        let who = req.extensions().get::<Principal>().cloned();
                        Ok::<_, std::convert::Infallible>(http::Response::new(format!(
                            "{:?}",
                            who.map(|p| (p.user_id.to_string(), p.org_id.to_string()))
                        )))
                    }));
                let req = Request::builder()
                    .header("authorization", format!("Bearer {t}"))
                    .body(Full::new(Bytes::new()))
                    .expect("req");
                let res = svc.oneshot(req).await.expect("svc");
                let status = res.status().as_u16();
                let reason = res
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap_or("").to_string());
                (direct, status, reason)
            }));
            tokio::task::yield_now().await;
        }
        let want_status = if want.is_ok() { 200 } else { 401 };
        for task in tasks {
            let (direct, status, reason) = task.await.expect("join");
            assert_eq!(
                direct, want,
                "{phase}: token {i}: cached {direct:?}, full {want:?}"
            );
            assert_eq!(
                status, want_status,
                "{phase}: token {i}: layer {status} {reason:?}, full {want:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_hits_answer_as_the_full_check_through_key_churn_and_time() {
    let store = CachedStore::new(MemoryStore::new());
    let clock = ManualClock::at_unix(1_000_000);
    let keys = KeyService::new(store.clone())
        .with_clock(clock.clone())
        .with_policy(DefaultPolicy::new().with_admin("default", "admin"))
        .with_id_generator(|| "k1".to_string());
    let admin = Principal::new("admin", "default", "-");
    let pair = jwt_profile::generate_rsa_key_pair().expect("pair");
    let pem = pair.public_key.to_pem();
    let signer =
        AssertionSigner::from_pem("bot", "k1", pair.private_key_pem.as_bytes()).expect("signer");
    let create = |org: &'static str, expires: i64| {
        let (keys, admin, pem) = (keys.clone(), admin.clone(), pem.clone());
        async move {
            keys.create(
                &admin,
                Some(org),
                "bot",
                CreateKey {
                    public_key: Some(pem.into_bytes()),
                    expiration_date: chrono::DateTime::from_timestamp(expires, 0),
                    ..CreateKey::default()
                },
            )
            .await
            .expect("create")
        }
    };
    create("default", 1_005_000).await;
    let cached = Verifier::new(store.clone(), Validation::new([AUD])).with_clock(clock.clone());
    let full = cached.clone().without_assertion_cache();
    let sign = |iat: f64, exp: f64, nbf: Option<f64>| {
        let mut c = json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": iat, "exp": exp});
        if let Some(n) = nbf {
            c["nbf"] = json!(n);
        }
        signer.sign_claims(&c).expect("sign")
    };
    let tokens = vec![
        sign(1_000_000.0, 1_000_300.0, None),
        sign(1_000_000.0, 1_009_000.0, None), // max age decides
        sign(1_000_000.5, 1_000_100.000_000_4, None), // fractions
        sign(999_990.0, 1_000_200.0, Some(1_000_050.0)), // nbf in leeway
        sign(1_000_000.0, 1_000_000_000.0, None),
    ];
    compare("fresh", &cached, &full, &tokens).await;
    compare("again", &cached, &full, &tokens).await;
    clock.set(chrono::DateTime::from_timestamp_micros(1_000_160_000_000).expect("t"));
    compare("at an exp edge", &cached, &full, &tokens).await;
    clock.set(chrono::DateTime::from_timestamp_micros(1_000_160_000_001).expect("t"));
    compare("past an exp edge", &cached, &full, &tokens).await;
    clock.advance_secs(200);
    compare("later", &cached, &full, &tokens).await;
    clock.set(chrono::DateTime::from_timestamp(1_000_100, 0).expect("t"));
    compare("back in time", &cached, &full, &tokens).await;
    // Removed, then stored again under the same id with the same public
    // key, in another organization and expiring sooner.
    keys.remove(&admin, Some("default"), "bot", "k1")
        .await
        .expect("remove");
    compare("removed", &cached, &full, &tokens).await;
    create("other", 1_000_400).await;
    compare("re-created elsewhere", &cached, &full, &tokens).await;
    compare("re-created again", &cached, &full, &tokens).await;
    clock.set(chrono::DateTime::from_timestamp(1_000_400, 0).expect("t"));
    compare("key expired", &cached, &full, &tokens).await;
}
