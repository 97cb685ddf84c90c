//! Properties of every entry point that takes untrusted input: the verifier,
//! public-key parsing, and the key API's bodies and paths. Whatever the
//! input: no panic, a refusal (never acceptance of garbage), never a 500.

use std::sync::OnceLock;

use axum::Router;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, Request, StatusCode};
use jwt_profile::PublicKey;
use jwt_profile::http::KeyApi;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{KeyService, Principal, Validation, Verifier};
use proptest::prelude::*;
use tower::ServiceExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::new(
            CachedStore::new(MemoryStore::new()),
            Validation::new(["aud"]),
        )
    })
}

/// The key API with an administrator already authenticated (the layer is
/// not under test here).
fn api() -> Router {
    static API: OnceLock<Router> = OnceLock::new();
    API.get_or_init(|| {
        let keys = KeyService::new(CachedStore::new(MemoryStore::new()))
            .with_policy(jwt_profile::policy::DefaultPolicy::new().with_admin("default", "admin"));
        KeyApi::new(keys)
            .router()
            .layer(axum::Extension(Principal::new("admin", "default", "-")))
    })
    .clone()
}

fn call(method: Method, path: &str, body: Vec<u8>) -> StatusCode {
    let Ok(request) = Request::builder()
        .method(method)
        .uri(path)
        .body(axum::body::Body::from(body))
    else {
        return StatusCode::BAD_REQUEST; // not even a valid URI: never reaches a server
    };
    runtime()
        .block_on(api().oneshot(request))
        .expect("infallible")
        .status()
}

/// JSON text of a random shape, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("KEY_TYPE_JSON"),
            Just("2030-01-01T00:00:00Z"),
            Just("RS256"),
            Just("aud")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("expirationDate".to_string()),
                    Just("publicKey".to_string()),
                    Just("query".to_string()),
                    Just("offset".to_string()),
                    Just("limit".to_string()),
                    Just("asc".to_string()),
                    Just("alg".to_string()),
                    Just("kid".to_string()),
                    Just("iss".to_string()),
                    Just("sub".to_string()),
                    Just("aud".to_string()),
                    Just("exp".to_string()),
                    Just("iat".to_string()),
                    Just("nbf".to_string()),
                    ".{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn verifier_refuses_arbitrary_text(token in ".{0,300}") {
        prop_assert!(runtime().block_on(verifier().verify(&token)).is_err());
    }

    #[test]
    fn verifier_refuses_arbitrary_segments(a in prop::collection::vec(any::<u8>(), 0..200), b in prop::collection::vec(any::<u8>(), 0..400), c in prop::collection::vec(any::<u8>(), 0..300)) {
        let token = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(a), URL_SAFE_NO_PAD.encode(b), URL_SAFE_NO_PAD.encode(c));
        prop_assert!(runtime().block_on(verifier().verify(&token)).is_err());
    }

    #[test]
    fn verifier_refuses_arbitrary_json(header in json_value(), claims in json_value(), sig in prop::collection::vec(any::<u8>(), 0..300)) {
        let token = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()), URL_SAFE_NO_PAD.encode(sig));
        prop_assert!(runtime().block_on(verifier().verify(&token)).is_err());
    }

    #[test]
    fn public_key_parsing_refuses_arbitrary_input(bytes in prop::collection::vec(any::<u8>(), 0..2000), label in prop_oneof![Just("PUBLIC KEY"), Just("RSA PUBLIC KEY"), Just("CERTIFICATE"), Just("X")]) {
        prop_assert!(PublicKey::from_pem(&bytes).is_err());
        let pem = format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", STANDARD.encode(&bytes));
        let parsed = PublicKey::from_pem(pem.as_bytes());
        prop_assert!(parsed.is_err());
        prop_assert_eq!(parsed.err().map(|e| e.code().http_status()), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn create_key_never_answers_500(body in json_value(), raw in prop::collection::vec(any::<u8>(), 0..200)) {
        // Whatever is sent: 200 (a valid body) or 4xx, never a 5xx.
        for bytes in [body.to_string().into_bytes(), raw] {
            let status = call(Method::POST, "/users/prop/keys", bytes);
            prop_assert!(status == StatusCode::OK || status.is_client_error(), "{status}");
        }
    }

    #[test]
    fn list_and_read_never_answer_500(body in json_value(), user in "[^/?#]{0,30}", key in "[^/?#]{0,30}") {
        let user = urlencode(&user);
        let key = urlencode(&key);
        for (method, path, bytes) in [
            (Method::POST, format!("/users/{user}/keys/_search"), body.to_string().into_bytes()),
            (Method::GET, format!("/users/{user}/keys/{key}"), Vec::new()),
            (Method::DELETE, format!("/users/{user}/keys/{key}"), Vec::new()),
        ] {
            let status = call(method, &path, bytes);
            prop_assert!(status.is_success() || status.is_client_error(), "{path}: {status}");
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
