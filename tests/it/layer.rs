//! The tower layer over real HTTP: plain hyper 1 and axum, the response
//! shapes of SPEC §3, its options, and a table of hostile tokens.

use crate::common;

use std::convert::Infallible;

use aws_lc_rs::encoding::AsDer;
use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{
    AssertionSigner, JwtProfileLayer, KeyService, Principal, Rejection, RejectionKind, Validation,
    Verifier,
};
use serde_json::json;
use tower::ServiceBuilder;

const AUD: &str = "https://api.example.com";

struct Setup {
    store: CachedStore,
    verifier: Verifier,
    bot: AssertionSigner,
    other: AssertionSigner,
}

async fn setup_with(store: CachedStore) -> Setup {
    let keys = KeyService::new(store.clone());
    let mk = |user: &'static str| {
        let keys = keys.clone();
        async move {
            let me = Principal::new(user, ORG, "-");
            let created = keys
                .create(&me, None, user, Default::default())
                .await
                .expect("create");
            AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer")
        }
    };
    let bot = mk("bot").await;
    let other = mk("other").await;
    let verifier = Verifier::new(store.clone(), Validation::new([AUD]));
    Setup {
        store,
        verifier,
        bot,
        other,
    }
}

async fn setup() -> Setup {
    setup_with(CachedStore::new(MemoryStore::new())).await
}

async fn who(principal: Option<Principal>) -> String {
    principal
        .map(|p| p.user_id.to_string())
        .unwrap_or_else(|| "anonymous".to_string())
}

/// Serves `layer` in front of a `/` route answering the principal's user id.
async fn serve_layer(layer: JwtProfileLayer) -> Http {
    let app = Router::new().route("/", get(who)).layer(layer);
    Http::new(serve(app).await)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn plain_hyper_server_behind_the_layer() {
    let s = setup().await;
    let svc = ServiceBuilder::new()
        .layer(JwtProfileLayer::new(s.verifier.clone()))
        .service_fn(|req: Request<Incoming>| async move {
            let who = req
                .extensions()
                .get::<Principal>()
                .map(|p| p.user_id.to_string())
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let http = Http::new(addr);
    let ok = http
        .call(Method::GET, "/", &s.bot.sign(AUD).expect("sign"), &[], "")
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "bot");
    let refused = http.call(Method::GET, "/", "a.b.c", &[], "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.code(), 16);
}

#[tokio::test]
async fn refusals_follow_rfc6750() {
    let s = setup().await;
    let http = serve_layer(JwtProfileLayer::new(s.verifier.clone()).realm("api \"x\"")).await;
    let missing = http.send(Method::GET, "/", &[], "").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.header("www-authenticate"),
        "Bearer realm=\"api x\"",
        "no error attribute without credentials"
    );
    assert_eq!(missing.error_id(), "AUTH-missing");
    let basic = http
        .send(
            Method::GET,
            "/",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            "",
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    assert_eq!(basic.header("www-authenticate"), "Bearer realm=\"api x\"");
    let expired = s
        .bot
        .sign_at(AUD, unix_now() - 7200, unix_now() - 3600)
        .expect("sign");
    let bad = http
        .send(
            Method::GET,
            "/",
            &[("authorization", &bearer(&expired))],
            "",
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad.header("www-authenticate"),
        "Bearer realm=\"api x\", error=\"invalid_token\", error_description=\"token expired\""
    );
    assert_eq!(bad.header("content-type"), "application/json");
    assert_eq!(bad.code(), 16);
    assert_eq!(bad.error_id(), "TOKEN-expired");
    assert_eq!(bad.json()["message"], "token expired");
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let s = setup().await;
    let http = serve_layer(JwtProfileLayer::new(s.verifier.clone())).await;
    let token = s.bot.sign(AUD).expect("sign");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {token}");
        let res = http
            .send(Method::GET, "/", &[("authorization", &value)], "")
            .await;
        assert_eq!(res.status, StatusCode::OK, "{scheme}");
        assert_eq!(res.body, "bot");
    }
}

#[tokio::test]
async fn extractor_refuses_routes_not_behind_the_layer() {
    async fn needs(p: Principal) -> String {
        p.user_id.to_string()
    }
    let http = Http::new(serve(Router::new().route("/", get(needs))).await);
    let res = http.send(Method::GET, "/", &[], "").await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.error_id(), "AUTH-missing");
    // A client cannot smuggle a principal in: only the layer makes one.
    let res = http
        .send(Method::GET, "/", &[("authorization", "Bearer x")], "")
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn optional_mode_lets_anonymous_requests_through() {
    let s = setup().await;
    let http = serve_layer(JwtProfileLayer::new(s.verifier.clone()).optional()).await;
    let anon = http.send(Method::GET, "/", &[], "").await;
    assert_eq!(
        (anon.status, anon.body.clone()),
        (StatusCode::OK, Bytes::from("anonymous"))
    );
    let basic = http
        .send(
            Method::GET,
            "/",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            "",
        )
        .await;
    assert_eq!(basic.body, "anonymous");
    let good = http
        .call(Method::GET, "/", &s.bot.sign(AUD).expect("sign"), &[], "")
        .await;
    assert_eq!(good.body, "bot");
    // A token that is present must be valid.
    let bad = http
        .call(
            Method::GET,
            "/",
            &s.bot.sign("https://elsewhere").expect("sign"),
            &[],
            "",
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.error_id(), "TOKEN-audience");
}

#[tokio::test]
async fn token_can_come_from_another_header() {
    let s = setup().await;
    let layer = JwtProfileLayer::new(s.verifier.clone())
        .token_header(http::HeaderName::from_static("x-machine-token"));
    let http = serve_layer(layer).await;
    let token = s.bot.sign(AUD).expect("sign");
    let raw = http
        .send(Method::GET, "/", &[("x-machine-token", &token)], "")
        .await;
    assert_eq!(raw.body, "bot");
    let prefixed = http
        .send(
            Method::GET,
            "/",
            &[("x-machine-token", &bearer(&token))],
            "",
        )
        .await;
    assert_eq!(prefixed.body, "bot");
    let in_authorization = http
        .send(Method::GET, "/", &[("authorization", &bearer(&token))], "")
        .await;
    assert_eq!(in_authorization.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rejection_hook_shapes_the_response() {
    let s = setup().await;
    let layer = JwtProfileLayer::new(s.verifier.clone()).on_rejection(|r: &Rejection| {
        let text = match r.kind() {
            RejectionKind::MissingCredentials => "log in first".to_string(),
            RejectionKind::InvalidToken(reason) => format!("no: {}", reason.id()),
            RejectionKind::StoreUnavailable => "later".to_string(),
            other => format!("{other:?}"),
        };
        let mut res = Response::new(Bytes::from(text));
        *res.status_mut() = if r.is_grpc() {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        res
    });
    let http = serve_layer(layer).await;
    let missing = http.send(Method::GET, "/", &[], "").await;
    assert_eq!(
        (missing.status, missing.body),
        (StatusCode::FORBIDDEN, Bytes::from("log in first"))
    );
    let bad = http.call(Method::GET, "/", "x.y.z", &[], "").await;
    assert_eq!(bad.body, "no: TOKEN-malformed");
    let good = http
        .call(Method::GET, "/", &s.bot.sign(AUD).expect("sign"), &[], "")
        .await;
    assert_eq!(good.body, "bot");
}

#[tokio::test]
async fn grpc_requests_get_trailers_only_status() {
    let outage = Outage::new();
    let s = setup_with(CachedStore::new(outage.clone())).await;
    let http = serve_layer(JwtProfileLayer::new(s.verifier.clone())).await;
    let grpc = ("content-type", "application/grpc+proto");
    let missing = http.send(Method::GET, "/", &[grpc], "").await;
    assert_eq!(missing.status, StatusCode::OK);
    assert_eq!(missing.header("grpc-status"), "16");
    // The request's gRPC content type is echoed (gRPC-web clients get theirs).
    assert_eq!(missing.header("content-type"), "application/grpc+proto");
    assert!(missing.body.is_empty());
    let bad = http.call(Method::GET, "/", "x.y.z", &[grpc], "").await;
    assert_eq!(bad.header("grpc-status"), "16");
    assert_eq!(
        bad.header("grpc-message"),
        "header is not canonical base64url"
    );
    outage.set_down(true);
    let unknown_key = http
        .call(
            Method::GET,
            "/",
            &s.other.sign(AUD).expect("sign"),
            &[grpc],
            "",
        )
        .await;
    assert_eq!(
        unknown_key.header("grpc-status"),
        "14",
        "store down is never 16"
    );
}

#[tokio::test]
async fn store_down_is_503_then_recovers_by_itself() {
    let outage = Outage::new();
    let s = setup_with(CachedStore::new(outage.clone())).await;
    let http = serve_layer(JwtProfileLayer::new(s.verifier.clone())).await;
    let token = s.bot.sign(AUD).expect("sign");
    outage.set_down(true);
    let down = http.call(Method::GET, "/", &token, &[], "").await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.code(), 14);
    assert_eq!(down.error_id(), "STORE-unavailable");
    assert_eq!(down.header("www-authenticate"), "", "the token may be fine");
    // Failures are not cached: the next request after recovery passes.
    outage.set_down(false);
    let up = http.call(Method::GET, "/", &token, &[], "").await;
    assert_eq!(up.status, StatusCode::OK);
    // Once cached, the key keeps working through an outage.
    outage.set_down(true);
    assert_eq!(
        http.call(Method::GET, "/", &token, &[], "").await.status,
        StatusCode::OK
    );
    assert!(s.store.entry_count() <= 2);
}

/// RFC 8725 and well-known JWT-library attacks: every one is a 401 with
/// `error="invalid_token"`, none a panic or a 500.
#[tokio::test]
async fn hostile_tokens_are_refused_with_401() {
    let s = setup().await;
    let http = serve_layer(JwtProfileLayer::new(s.verifier.clone())).await;
    let kid = s.bot.key_id().to_string();
    let now = unix_now();
    let claims = json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now, "exp": now + 300});
    let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let signed = |h: serde_json::Value, c: &serde_json::Value| {
        s.bot
            .sign_parts(h.to_string().as_bytes(), c.to_string().as_bytes())
            .expect("sign")
    };
    let good = signed(json!({"alg": "RS256", "kid": kid}), &claims);
    let parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let spki = jwt_profile::store::KeyStore::get(&s.store, &kid)
        .await
        .expect("get")
        .expect("key")
        .public_key;
    let hmac = |secret: &[u8]| {
        let input = format!(
            "{}.{}",
            enc(&json!({"alg": "HS256", "kid": kid})),
            enc(&claims)
        );
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
            input.as_bytes(),
        );
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    let attacker =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let attacker_pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&attacker).expect("der");
    let attacker_pem = rsa::pkcs1::der::pem::encode_string(
        "PRIVATE KEY",
        rsa::pkcs1::LineEnding::LF,
        attacker_pkcs8.as_ref(),
    )
    .expect("pem");
    let forger = AssertionSigner::from_pem("bot", &kid, attacker_pem.as_bytes()).expect("forger");
    let forged = |h: serde_json::Value| {
        forger
            .sign_parts(h.to_string().as_bytes(), claims.to_string().as_bytes())
            .expect("sign")
    };

    let cases: Vec<(&str, String)> = vec![
        ("alg none", format!("{}.{}.", enc(&json!({"alg": "none", "kid": kid})), enc(&claims))),
        ("alg none with signature", format!("{}.{}.{}", enc(&json!({"alg": "none", "kid": kid})), enc(&claims), parts[2])),
        ("alg NONE", format!("{}.{}.{}", enc(&json!({"alg": "NONE", "kid": kid})), enc(&claims), parts[2])),
        ("alg missing", format!("{}.{}.{}", enc(&json!({"kid": kid})), enc(&claims), parts[2])),
        ("alg numeric", format!("{}.{}.{}", enc(&json!({"alg": 256, "kid": kid})), enc(&claims), parts[2])),
        ("HS256 keyed with PEM", hmac(spki.to_pem().as_bytes())),
        ("HS256 keyed with DER", hmac(spki.spki_der())),
        ("another user's kid", signed(json!({"alg": "RS256", "kid": s.other.key_id()}), &claims)),
        ("attacker jwk", forged(json!({"alg": "RS256", "kid": kid, "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}))),
        ("attacker jku", forged(json!({"alg": "RS256", "kid": kid, "jku": "http://127.0.0.1:9/jwks.json"}))),
        ("attacker x5u", forged(json!({"alg": "RS256", "kid": kid, "x5u": "http://127.0.0.1:9/cert"}))),
        ("attacker x5c", forged(json!({"alg": "RS256", "kid": kid, "x5c": ["MIIB"]}))),
        ("crit", signed(json!({"alg": "RS256", "kid": kid, "crit": ["exp"]}), &claims)),
        ("duplicate alg", s.bot.sign_parts(format!("{{\"alg\":\"RS256\",\"alg\":\"none\",\"kid\":\"{kid}\"}}").as_bytes(), claims.to_string().as_bytes()).expect("s")),
        ("duplicate sub", s.bot.sign_parts(format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\"}}").as_bytes(), format!("{{\"iss\":\"bot\",\"sub\":\"bot\",\"sub\":\"admin\",\"aud\":\"{AUD}\",\"iat\":{now},\"exp\":{}}}", now + 300).as_bytes()).expect("s")),
        ("trailing dot", format!("{good}.")),
        ("doubled dots", good.replace('.', "..")),
        ("leading dot", format!(".{good}")),
        ("padding", format!("{}=.{}.{}", parts[0], parts[1], parts[2])),
        ("standard alphabet", format!("{}.{}.{}", parts[0], parts[1], parts[2].replace('-', "+").replace('_', "/") + "+")),
        ("kid of unknown key", signed(json!({"alg": "RS256", "kid": "1"}), &claims)),
        ("kid numeric", signed(json!({"alg": "RS256", "kid": 1}), &claims)),
        ("oversized", signed(json!({"alg": "RS256", "kid": kid, "pad": "p".repeat(9000)}), &claims)),
        ("exp string", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now, "exp": (now + 300).to_string()}))),
        ("exp 1e300", s.bot.sign_parts(format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\"}}").as_bytes(), format!("{{\"iss\":\"bot\",\"sub\":\"bot\",\"aud\":\"{AUD}\",\"iat\":{now},\"exp\":1e300}}").as_bytes()).expect("s")),
        ("exp negative", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now, "exp": -1}))),
        ("aud with non-strings", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "bot", "aud": [AUD, 1], "iat": now, "exp": now + 300}))),
        ("not base64", "!!!.???.***".to_string()),
        ("empty", "".to_string()),
        ("non-ASCII", "ü.ö.ä".to_string()),
        ("HS384", format!("{}.{}.{}", enc(&json!({"alg": "HS384", "kid": kid})), enc(&claims), parts[2])),
        ("HS512", format!("{}.{}.{}", enc(&json!({"alg": "HS512", "kid": kid})), enc(&claims), parts[2])),
        ("alg empty", format!("{}.{}.{}", enc(&json!({"alg": "", "kid": kid})), enc(&claims), parts[2])),
        ("alg array", format!("{}.{}.{}", enc(&json!({"alg": ["RS256"], "kid": kid})), enc(&claims), parts[2])),
        ("alg ES256 for an RSA key", signed(json!({"alg": "ES256", "kid": kid}), &claims)),
        ("kid array", signed(json!({"alg": "RS256", "kid": [kid]}), &claims)),
        ("kid with NUL", signed(json!({"alg": "RS256", "kid": format!("{kid}\u{0}")}), &claims)),
        ("duplicate kid via escape", s.bot.sign_parts(format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\",\"k\\u0069d\":\"1\"}}").as_bytes(), claims.to_string().as_bytes()).expect("s")),
        ("header is a string", s.bot.sign_parts(b"\"RS256\"", claims.to_string().as_bytes()).expect("s")),
        ("payload is an array", s.bot.sign_parts(format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\"}}").as_bytes(), b"[1,2]").expect("s")),
        ("payload trailing garbage", s.bot.sign_parts(format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\"}}").as_bytes(), format!("{claims} x").as_bytes()).expect("s")),
        ("exp float", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now, "exp": 1e12}))),
        ("iat string", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now.to_string(), "exp": now + 300}))),
        ("exp missing", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now}))),
        ("aud nested array", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "bot", "aud": [[AUD]], "iat": now, "exp": now + 300}))),
        ("aud prefix", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "bot", "aud": format!("{AUD}.evil"), "iat": now, "exp": now + 300}))),
        ("iss differs from sub", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "bot", "sub": "admin", "aud": AUD, "iat": now, "exp": now + 300}))),
        ("issuer of another user", signed(json!({"alg": "RS256", "kid": kid}), &json!({"iss": "other", "sub": "other", "aud": AUD, "iat": now, "exp": now + 300}))),
        ("deeply nested header value", s.bot.sign_parts(format!("{{\"alg\":\"RS256\",\"kid\":{}{}}}", "[".repeat(2000), "]".repeat(2000)).as_bytes(), claims.to_string().as_bytes()).expect("s")),
        ("3000 dots", ".".repeat(3000)),
        ("signature truncated", format!("{}.{}.{}", parts[0], parts[1], &parts[2][..parts[2].len() - 4])),
        ("signature of another token", format!("{}.{}.{}", parts[0], enc(&json!({"iss": "bot", "sub": "bot", "aud": AUD, "iat": now, "exp": now + 301})), parts[2])),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (name, token) in &cases {
        let res = http
            .send(
                Method::GET,
                "/",
                &[("authorization", &format!("Bearer {token}"))],
                "",
            )
            .await;
        assert_eq!(
            res.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {:?}",
            res.body
        );
        let challenge = res.header("www-authenticate");
        assert!(
            challenge.contains("error=\"invalid_token\"")
                || (token.is_empty() && challenge.starts_with("Bearer realm")),
            "{name}: {challenge}"
        );
        assert_eq!(res.code(), 16, "{name}");
    }
    // The original token still works: the table refused for the right reasons.
    assert_eq!(
        http.call(Method::GET, "/", &good, &[], "").await.body,
        "bot"
    );
}

/// `on_outcome` sees every decision, over real HTTP: accepted with the
/// principal, refused with the reason, missing credentials refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_outcome_sees_every_decision() {
    use std::sync::{Arc, Mutex};
    let s = setup().await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let layer = JwtProfileLayer::new(s.verifier.clone()).on_outcome(move |outcome| {
        let line = match outcome {
            jwt_profile::Outcome::Accepted(p) => format!("accepted {}", p.user_id),
            jwt_profile::Outcome::Refused(r) => match outcome.reason() {
                Some(reason) => format!("refused {}", reason.id()),
                None => format!("refused {:?}", r.kind()),
            },
            _ => "other".to_string(),
        };
        log.lock().expect("lock").push(line);
    });
    let app = Router::new()
        .route(
            "/",
            get(|p: Principal| async move { p.user_id.to_string() }),
        )
        .layer(layer);
    let http = Http::new(serve(app).await);
    let token = s.bot.sign(AUD).expect("sign");
    assert_eq!(
        http.get("/").token(&token).send().await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get("/").token(&token).send().await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get("/").token("a.b.c").send().await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(http.get("/").send().await.status, StatusCode::UNAUTHORIZED);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        [
            "accepted bot".to_string(),
            "accepted bot".to_string(),
            "refused TOKEN-malformed".to_string(),
            "refused MissingCredentials".to_string(),
        ]
    );
}

/// The layer first checks a token in place, from the caches alone, and
/// starts over with a full check when anything is missing. The in-place
/// attempt must never read the store, never use up a `jti`, and never
/// accept what the full check would refuse: a cold cache, a removed key
/// (also behind a remembered assertion) and replay protection, in turn.
#[tokio::test]
async fn the_in_place_check_reads_nothing_and_uses_up_nothing() {
    use jwt_profile::replay::MemoryReplayStore;
    use std::sync::Arc;
    let counting = Counting::new(Arc::new(MemoryStore::new()));
    let store = CachedStore::new(counting.clone());
    let keys = KeyService::new(store.clone());
    let bot = machine(&keys, "bot").await;
    store.invalidate(bot.key_id()).await;
    let before = counting.reads();
    let http = serve_layer(JwtProfileLayer::new(Verifier::new(
        store.clone(),
        Validation::new([AUD]),
    )))
    .await;
    // Cold cache: the in-place attempt stops without a read; the full check
    // reads the key once.
    let t1 = bot.sign(AUD).expect("sign");
    let ok = http.call(Method::GET, "/", &t1, &[], "").await;
    assert_eq!((ok.status, &ok.body[..]), (StatusCode::OK, &b"bot"[..]));
    assert_eq!(counting.reads(), before + 1, "one read for a cold key");
    // Warm: fresh and repeated assertions are answered in place.
    let t2 = bot.sign(AUD).expect("sign");
    for t in [&t2, &t1, &t2] {
        assert_eq!(
            http.call(Method::GET, "/", t, &[], "").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(counting.reads(), before + 1, "no read for a cached key");
    // Removed: neither a fresh nor a remembered assertion passes.
    let me = Principal::new("bot", ORG, "-");
    keys.remove(&me, None, "bot", bot.key_id())
        .await
        .expect("remove");
    let t3 = bot.sign(AUD).expect("sign");
    for t in [&t1, &t2, &t3] {
        let refused = http.call(Method::GET, "/", t, &[], "").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.error_id(), "TOKEN-unknown-key");
    }

    // Replay protection, with a store that records the jti and then waits
    // for its answer (as Redis does): the jti is used up exactly once, by
    // the full check, so its first use passes.
    struct Remote(MemoryReplayStore);
    #[async_trait::async_trait]
    impl jwt_profile::replay::ReplayStore for Remote {
        async fn first_use(
            &self,
            issuer: &str,
            jti: &str,
            until: chrono::DateTime<chrono::Utc>,
            now: chrono::DateTime<chrono::Utc>,
        ) -> Result<bool, jwt_profile::store::StoreError> {
            let first = self.0.first_use(issuer, jti, until, now).await;
            tokio::task::yield_now().await;
            first
        }
    }
    let store = CachedStore::new(MemoryStore::new());
    let bot = machine(&KeyService::new(store.clone()), "bot").await;
    let http = serve_layer(JwtProfileLayer::new(
        Verifier::new(store.clone(), Validation::new([AUD]))
            .with_replay_protection(Remote(MemoryReplayStore::new())),
    ))
    .await;
    let warm = bot.sign(AUD).expect("sign");
    assert_eq!(
        http.call(Method::GET, "/", &warm, &[], "").await.status,
        StatusCode::OK
    );
    let once = bot.sign(AUD).expect("sign");
    assert_eq!(
        http.call(Method::GET, "/", &once, &[], "").await.status,
        StatusCode::OK
    );
    let again = http.call(Method::GET, "/", &once, &[], "").await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(again.error_id(), "TOKEN-replayed");
}
