//! SPEC §2 over real HTTP: the key routes, their JSON shapes, and every row
//! of the error table.

use crate::common;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use http::{Method, StatusCode};
use jwt_profile::KeyFile;
use jwt_profile::{AssertionSigner, KeyService};
use serde_json::{Value, json};

fn pem(label: &str, der: &[u8]) -> String {
    rsa::pkcs1::der::pem::encode_string(label, rsa::pkcs1::LineEnding::LF, der).expect("pem")
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

async fn create(app: &App, user: &str, token: &str, body: Value) -> common::Answer {
    app.http
        .post(format!("/users/{user}/keys"))
        .token(token)
        .json(&body)
        .send()
        .await
}

async fn whoami(app: &App, signer: &AssertionSigner) -> common::Answer {
    let token = signer.sign(&app.audience).expect("sign");
    app.http.get("/whoami").token(&token).send().await
}

#[tokio::test]
async fn generated_key_file_is_zitadel_shaped_and_logs_in() {
    let app = app().await;
    let res = create(&app, "ci-bot", &app.admin_token(), json!({})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    let body = res.json();
    let key_id = body["keyId"].as_str().expect("keyId");
    assert!(
        key_id.chars().all(|c| c.is_ascii_digit()),
        "decimal id: {key_id}"
    );
    assert!(
        body["details"]["sequence"].is_string(),
        "64-bit ints are strings"
    );
    assert_eq!(body["details"]["resourceOwner"], ORG);
    let created = body["details"]["creationDate"].as_str().expect("date");
    assert!(created.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(created).is_ok());

    let file_json = STANDARD
        .decode(body["keyDetails"].as_str().expect("keyDetails"))
        .expect("b64");
    let file: Value = serde_json::from_slice(&file_json).expect("json");
    assert_eq!(file["type"], "serviceaccount");
    assert_eq!(file["keyId"], key_id);
    assert_eq!(file["userId"], "ci-bot");
    assert_eq!(file["expirationDate"], "9999-12-31T23:59:59Z");
    assert!(
        file["key"]
            .as_str()
            .expect("key")
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
    );

    let signer = AssertionSigner::from_key_file(&KeyFile::from_json(&file_json).expect("file"))
        .expect("signer");
    let me = whoami(&app, &signer).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["userId"], "ci-bot");
    assert_eq!(me.json()["orgId"], ORG);
    assert_eq!(me.json()["keyId"], key_id);
}

#[tokio::test]
async fn assertions_from_an_independent_signer_are_accepted() {
    let app = app().await;
    let res = create(&app, "go-client", &app.admin_token(), json!({})).await;
    let file_json = STANDARD
        .decode(res.json()["keyDetails"].as_str().expect("kd"))
        .expect("b64");
    let file = KeyFile::from_json(&file_json).expect("file");
    // jsonwebtoken is a different implementation of JWS signing: it proves
    // the key file works with other clients, not only with our signer.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(file.key_id.clone());
    let now = unix_now();
    let claims = json!({"iss": file.user_id, "sub": file.user_id, "aud": app.audience, "iat": now, "exp": now + 300});
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(file.key.as_bytes()).expect("pem");
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("encode");
    let me = app.http.get("/whoami").token(&token).send().await;
    assert_eq!(me.status, StatusCode::OK, "{:?}", me.body);
    assert_eq!(me.json()["userId"], "go-client");
}

#[tokio::test]
async fn users_own_public_keys_of_every_kind_log_in() {
    let app = app().await;
    let token = app.admin_token();

    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let rsa_pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).expect("der");
    let rsa_spki =
        AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(rsa.public_key()).expect("spki");
    let p256 = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("p256");
    let p384 = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).expect("p384");
    let ed = Ed25519KeyPair::generate().expect("ed");

    let cases: Vec<(&str, String, String)> = vec![
        (
            "rsa-spki",
            pem("PUBLIC KEY", rsa_spki.as_ref()),
            pem("PRIVATE KEY", rsa_pkcs8.as_ref()),
        ),
        (
            "rsa-pkcs1",
            pem("RSA PUBLIC KEY", rsa.public_key().as_ref()),
            pem("PRIVATE KEY", rsa_pkcs8.as_ref()),
        ),
        (
            "p256",
            pem(
                "PUBLIC KEY",
                p256.public_key().as_der().expect("spki").as_ref(),
            ),
            pem("PRIVATE KEY", p256.to_pkcs8v1().expect("pkcs8").as_ref()),
        ),
        (
            "p384",
            pem(
                "PUBLIC KEY",
                p384.public_key().as_der().expect("spki").as_ref(),
            ),
            pem("PRIVATE KEY", p384.to_pkcs8v1().expect("pkcs8").as_ref()),
        ),
        (
            "ed25519",
            pem(
                "PUBLIC KEY",
                ed.public_key().as_der().expect("spki").as_ref(),
            ),
            pem("PRIVATE KEY", ed.to_pkcs8().expect("pkcs8").as_ref()),
        ),
    ];
    for (i, (name, public, private)) in cases.into_iter().enumerate() {
        // Alternate the two base64 alphabets proto3 JSON allows.
        let encoded = if i % 2 == 0 {
            STANDARD.encode(&public)
        } else {
            URL_SAFE_NO_PAD.encode(&public)
        };
        let user = format!("own-{name}");
        let res = create(
            &app,
            &user,
            &token,
            json!({"publicKey": encoded, "type": "KEY_TYPE_JSON"}),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{name}: {:?}", res.body);
        assert!(
            res.json().get("keyDetails").is_none(),
            "{name}: no key file for a supplied key"
        );
        let key_id = res.json()["keyId"].as_str().expect("id").to_string();
        let signer = AssertionSigner::from_pem(&user, &key_id, private.as_bytes()).expect("signer");
        let me = whoami(&app, &signer).await;
        assert_eq!(me.status, StatusCode::OK, "{name}: {:?}", me.body);
        assert_eq!(me.json()["userId"], user);
    }
}

#[tokio::test]
async fn get_returns_the_key_without_private_material() {
    let app = app().await;
    let res = create(
        &app,
        "bot",
        &app.admin_token(),
        json!({"expirationDate": "2030-01-01T00:00:00Z"}),
    )
    .await;
    let key_id = res.json()["keyId"].as_str().expect("id").to_string();
    let got = app
        .http
        .get(format!("/users/bot/keys/{key_id}"))
        .token(&app.admin_token())
        .send()
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let key = &got.json()["key"];
    assert_eq!(key["id"], key_id);
    assert_eq!(key["type"], "KEY_TYPE_JSON");
    assert_eq!(key["expirationDate"], "2030-01-01T00:00:00Z");
    assert_eq!(key["details"]["resourceOwner"], ORG);
    assert_eq!(
        key["details"]["sequence"],
        res.json()["details"]["sequence"]
    );
    assert!(!String::from_utf8_lossy(&got.body).contains("PRIVATE"));
}

#[tokio::test]
async fn list_pages_and_orders_by_creation() {
    let app = app().await;
    let token = app.admin_token();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let res = create(&app, "lister", &token, json!({})).await;
        ids.push(res.json()["keyId"].as_str().expect("id").to_string());
    }
    let search = |body: Value| {
        let app = &app;
        let token = token.clone();
        async move {
            app.http
                .post("/users/lister/keys/_search")
                .token(&token)
                .json(&body)
                .send()
                .await
        }
    };
    let listed = |a: &common::Answer| -> Vec<String> {
        a.json()["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|k| k["id"].as_str().expect("id").to_string())
            .collect()
    };
    let newest_first = search(json!({})).await;
    assert_eq!(newest_first.status, StatusCode::OK);
    assert_eq!(newest_first.json()["details"]["totalResult"], "3");
    assert!(newest_first.json()["details"]["viewTimestamp"].is_string());
    assert_eq!(
        listed(&newest_first),
        vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    let asc = search(json!({"query": {"asc": true}})).await;
    assert_eq!(listed(&asc), ids);
    let page = search(json!({"query": {"offset": "1", "limit": 1, "asc": true}})).await;
    assert_eq!(listed(&page), vec![ids[1].clone()]);
    assert_eq!(page.json()["details"]["totalResult"], "3");
    let numeric_offset = search(json!({"query": {"offset": 2, "limit": "0", "asc": true}})).await;
    assert_eq!(listed(&numeric_offset), vec![ids[2].clone()]);
    let too_many = search(json!({"query": {"limit": 1001}})).await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_many.error_id(), "LIST-limit-too-large");
    let max = search(json!({"query": {"limit": 1000}})).await;
    assert_eq!(max.status, StatusCode::OK);
    let negative = search(json!({"query": {"offset": -1}})).await;
    assert_eq!(negative.status, StatusCode::BAD_REQUEST);
    let array = search(json!([null])).await;
    assert_eq!(
        array.status,
        StatusCode::BAD_REQUEST,
        "found by schemathesis"
    );
    assert_eq!(array.error_id(), "BODY-malformed");
    // An empty body is an empty query.
    let empty = app
        .http
        .post("/users/lister/keys/_search")
        .token(&token)
        .send()
        .await;
    assert_eq!(listed(&empty).len(), 3);
}

#[tokio::test]
async fn removed_key_stops_logging_in_at_once() {
    let app = app().await;
    let res = create(&app, "leaver", &app.admin_token(), json!({})).await;
    let file_json = STANDARD
        .decode(res.json()["keyDetails"].as_str().expect("kd"))
        .expect("b64");
    let signer =
        AssertionSigner::from_key_file(&KeyFile::from_json(&file_json).expect("f")).expect("s");
    assert_eq!(
        whoami(&app, &signer).await.status,
        StatusCode::OK,
        "cached and accepted"
    );
    let key_id = res.json()["keyId"].as_str().expect("id").to_string();
    let path = format!("/users/leaver/keys/{key_id}");
    // The machine may remove its own key.
    let own = signer.sign(&app.audience).expect("sign");
    let removed = app.http.delete(path.to_string()).token(&own).send().await;
    assert_eq!(removed.status, StatusCode::OK, "{:?}", removed.body);
    let details = &removed.json()["details"];
    assert!(
        details["sequence"]
            .as_str()
            .expect("seq")
            .parse::<u64>()
            .expect("num")
            > res.json()["details"]["sequence"]
                .as_str()
                .expect("seq")
                .parse::<u64>()
                .expect("num")
    );
    assert_eq!(details["resourceOwner"], ORG);
    assert!(details["changeDate"].is_string());
    let after = whoami(&app, &signer).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.error_id(), "TOKEN-unknown-key");
    let again = app
        .http
        .delete(path.to_string())
        .token(&app.admin_token())
        .send()
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let got = app
        .http
        .get(path.to_string())
        .token(&app.admin_token())
        .send()
        .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn organization_header_scopes_every_operation() {
    let app = app().await;
    let token = app.admin_token();
    let org = [("x-zitadel-orgid", "acme")];
    let res = app
        .http
        .post("/users/bot/keys")
        .token(&token)
        .headers(&org)
        .body("{}")
        .send()
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["details"]["resourceOwner"], "acme");
    let key_id = res.json()["keyId"].as_str().expect("id").to_string();
    let path = format!("/users/bot/keys/{key_id}");
    // The machine's principal carries the key's organization.
    let file_json = STANDARD
        .decode(res.json()["keyDetails"].as_str().expect("kd"))
        .expect("b64");
    let signer =
        AssertionSigner::from_key_file(&KeyFile::from_json(&file_json).expect("f")).expect("s");
    assert_eq!(whoami(&app, &signer).await.json()["orgId"], "acme");
    // Without the header the admin's own organization is the target: 404.
    let other_org = app.http.get(path.to_string()).token(&token).send().await;
    assert_eq!(other_org.status, StatusCode::NOT_FOUND);
    assert_eq!(other_org.error_id(), "KEY-not-found");
    let in_org = app
        .http
        .get(path.to_string())
        .token(&token)
        .headers(&org)
        .send()
        .await;
    assert_eq!(in_org.status, StatusCode::OK);
    let listed = app
        .http
        .post("/users/bot/keys/_search")
        .token(&token)
        .body("{}")
        .send()
        .await;
    assert_eq!(listed.json()["details"]["totalResult"], "0");
    let removed_elsewhere = app.http.delete(path.to_string()).token(&token).send().await;
    assert_eq!(removed_elsewhere.status, StatusCode::NOT_FOUND);
    // The machine manages its own keys in its own organization, no header needed.
    let own = signer.sign(&app.audience).expect("sign");
    assert_eq!(
        app.http
            .get(path.to_string())
            .token(&own)
            .send()
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn org_header_name_is_configurable() {
    let app = app_with(AppOptions {
        api: Box::new(|api| api.org_header(http::HeaderName::from_static("x-org"))),
        ..Default::default()
    })
    .await;
    let res = app
        .http
        .post("/users/bot/keys")
        .token(&app.admin_token())
        .headers(&[("x-org", "beta")])
        .body("{}")
        .send()
        .await;
    assert_eq!(res.json()["details"]["resourceOwner"], "beta");
    let ignored = app
        .http
        .post("/users/bot2/keys")
        .token(&app.admin_token())
        .headers(&[("x-zitadel-orgid", "beta")])
        .body("{}")
        .send()
        .await;
    assert_eq!(ignored.json()["details"]["resourceOwner"], ORG);
}

#[tokio::test]
async fn unknown_fields_nulls_and_numeric_types_are_accepted() {
    let app = app().await;
    let token = app.admin_token();
    for body in [
        json!({"somethingElse": 1, "type": null}),
        json!({"type": 1}),
        json!({"type": 0}),
        json!({"type": "KEY_TYPE_UNSPECIFIED", "publicKey": ""}),
    ] {
        let res = create(&app, "flex", &token, body.clone()).await;
        assert_eq!(res.status, StatusCode::OK, "{body}: {:?}", res.body);
        assert!(res.json()["keyDetails"].is_string(), "{body}: generated");
    }
    let empty = app.http.post("/users/flex/keys").token(&token).send().await;
    assert_eq!(empty.status, StatusCode::OK);
}

// ---- the error table --------------------------------------------------------

#[tokio::test]
async fn invalid_argument_400_for_every_kind_of_bad_input() {
    let app = app().await;
    let token = app.admin_token();
    let rsa_1024 = include_str!("data/rsa1024.pub.pem");
    let cert = include_str!("data/cert.pem");
    let private = pem("RSA PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
    let p521 = include_str!("data/p521.pub.pem");
    let huge = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        "A".repeat(17 * 1024)
    );
    let cases: Vec<(Value, &str)> = vec![
        (json!({"type": "KEY_TYPE_PEM"}), "KEY-type-invalid"),
        (json!({"type": 2}), "KEY-type-invalid"),
        (json!({"type": true}), "KEY-type-invalid"),
        (
            json!({"expirationDate": "2001-01-01T00:00:00Z"}),
            "KEY-expiration-past",
        ),
        (
            json!({"expirationDate": "tomorrow"}),
            "KEY-expiration-invalid",
        ),
        (json!({"expirationDate": 5}), "BODY-malformed"),
        (
            json!({"publicKey": "!!!not base64!!!"}),
            "KEY-public-key-bad-base64",
        ),
        (json!({"publicKey": b64("hello")}), "KEY-public-key-bad-pem"),
        (
            json!({"publicKey": b64(rsa_1024)}),
            "KEY-public-key-rsa-too-small",
        ),
        (
            json!({"publicKey": b64(cert)}),
            "KEY-public-key-certificate",
        ),
        (
            json!({"publicKey": b64(&private)}),
            "KEY-public-key-private",
        ),
        (
            json!({"publicKey": b64(p521)}),
            "KEY-public-key-unsupported",
        ),
        (json!({"publicKey": b64(&huge)}), "KEY-public-key-too-large"),
        (json!([1, 2]), "BODY-malformed"),
        // Found by schemathesis: serde reads structs from arrays too.
        (json!([null]), "BODY-malformed"),
        (json!([]), "BODY-malformed"),
        (json!("text"), "BODY-malformed"),
    ];
    for (body, id) in cases {
        let res = create(&app, "bad", &token, body.clone()).await;
        assert_eq!(
            res.status,
            StatusCode::BAD_REQUEST,
            "{body}: {:?}",
            res.body
        );
        assert_eq!(res.code(), 3, "{body}");
        assert_eq!(res.error_id(), id, "{body}: {}", res.json());
        assert!(
            !res.json()["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }
    let raw_cases: Vec<(&str, String, &str)> = vec![
        ("/users/bad/keys", "{not json".to_string(), "BODY-malformed"),
        (
            "/users/bad/keys",
            "{\"type\":1,\"type\":1}".to_string(),
            "BODY-malformed",
        ),
        (
            "/users/bad/keys",
            format!("{{\"x\":\"{}\"}}", "a".repeat(70 * 1024)),
            "BODY-too-large",
        ),
        (
            "/users/%01bad/keys",
            "{}".to_string(),
            "PARAM-user-id-invalid",
        ),
        (
            "/users/a%2Fb/keys",
            "{}".to_string(),
            "PARAM-user-id-invalid",
        ),
        ("/users/%FF/keys", "{}".to_string(), "PARAM-invalid"),
    ];
    for (path, body, id) in raw_cases {
        let res = app
            .http
            .post(path)
            .token(&token)
            .body(body.clone())
            .send()
            .await;
        assert_eq!(
            res.status,
            StatusCode::BAD_REQUEST,
            "{path}: {:?}",
            res.body
        );
        assert_eq!(res.error_id(), id, "{path} {}", &body[..body.len().min(40)]);
    }
    let long_user = format!("/users/{}/keys", "u".repeat(201));
    let res = app
        .http
        .post(long_user.to_string())
        .token(&token)
        .body("{}")
        .send()
        .await;
    assert_eq!(res.error_id(), "PARAM-user-id-invalid");
    let ok_user = format!("/users/{}/keys", "u".repeat(200));
    assert_eq!(
        app.http
            .post(ok_user.to_string())
            .token(&token)
            .body("{}")
            .send()
            .await
            .status,
        StatusCode::OK
    );
    let long_key = format!("/users/bot/keys/{}", "1".repeat(201));
    let res = app
        .http
        .get(long_key.to_string())
        .token(&token)
        .send()
        .await;
    assert_eq!(res.error_id(), "PARAM-key-id-invalid");
    let empty_org = app
        .http
        .post("/users/bot/keys")
        .token(&token)
        .headers(&[("x-zitadel-orgid", "")])
        .body("{}")
        .send()
        .await;
    assert_eq!(empty_org.status, StatusCode::BAD_REQUEST);
    assert_eq!(empty_org.error_id(), "PARAM-org-id-invalid");
}

#[tokio::test]
async fn failed_precondition_when_user_is_bound_to_another_org() {
    let app = app().await;
    let token = app.admin_token();
    let first = app
        .http
        .post("/users/nomad/keys")
        .token(&token)
        .headers(&[("x-zitadel-orgid", "a")])
        .body("{}")
        .send()
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = app
        .http
        .post("/users/nomad/keys")
        .token(&token)
        .headers(&[("x-zitadel-orgid", "b")])
        .body("{}")
        .send()
        .await;
    assert_eq!(second.status, StatusCode::BAD_REQUEST);
    assert_eq!(second.code(), 9);
    assert_eq!(second.error_id(), "KEY-user-other-org");
    // The binding is to the organization of existing keys: once they are
    // gone the user may start over elsewhere.
    let key_id = first.json()["keyId"].as_str().expect("id").to_string();
    let del = app
        .http
        .delete(format!("/users/nomad/keys/{key_id}"))
        .token(&token)
        .headers(&[("x-zitadel-orgid", "a")])
        .send()
        .await;
    assert_eq!(del.status, StatusCode::OK);
    let third = app
        .http
        .post("/users/nomad/keys")
        .token(&token)
        .headers(&[("x-zitadel-orgid", "b")])
        .body("{}")
        .send()
        .await;
    assert_eq!(third.status, StatusCode::OK);
}

#[tokio::test]
async fn unauthenticated_401_without_an_assertion() {
    let app = app().await;
    for (method, path) in [
        (Method::POST, "/users/bot/keys"),
        (Method::GET, "/users/bot/keys/1"),
        (Method::POST, "/users/bot/keys/_search"),
        (Method::DELETE, "/users/bot/keys/1"),
    ] {
        let res = app.http.send(method.clone(), path, &[], "{}").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(res.code(), 16);
        assert_eq!(
            res.header("www-authenticate"),
            "Bearer realm=\"jwt-profile\""
        );
    }
}

#[tokio::test]
async fn permission_denied_403_before_any_stored_state_is_read() {
    let app = app().await;
    let bot = app.machine("bot", None).await;
    let token = bot.sign(&app.audience).expect("sign");
    let other = app.machine("other", None).await;
    let other_key = format!("/users/other/keys/{}", other.key_id());
    for (method, path, headers) in [
        (Method::POST, "/users/other/keys".to_string(), vec![]),
        (Method::GET, other_key.clone(), vec![]),
        (Method::GET, "/users/other/keys/999".to_string(), vec![]),
        (
            Method::POST,
            "/users/other/keys/_search".to_string(),
            vec![],
        ),
        (Method::DELETE, other_key.clone(), vec![]),
        // Its own keys, but naming another organization.
        (
            Method::POST,
            "/users/bot/keys".to_string(),
            vec![("x-zitadel-orgid", "elsewhere")],
        ),
        (
            Method::GET,
            format!("/users/bot/keys/{}", bot.key_id()),
            vec![("x-zitadel-orgid", "elsewhere")],
        ),
    ] {
        let res = app
            .http
            .call(method.clone(), &path, &token, &headers, "{}")
            .await;
        assert_eq!(
            res.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {:?}",
            res.body
        );
        assert_eq!(res.code(), 7);
        assert_eq!(res.error_id(), "AUTH-permission-denied");
    }
    // A refused caller cannot tell a real key from a made-up one.
    let real = app
        .http
        .get(other_key.to_string())
        .token(&token)
        .send()
        .await;
    let fake = app
        .http
        .get("/users/other/keys/999")
        .token(&token)
        .send()
        .await;
    assert_eq!(real.body, fake.body);
    // Its own keys in its own organization are allowed (explicit header too).
    let own = app
        .http
        .post("/users/bot/keys")
        .token(&token)
        .headers(&[("x-zitadel-orgid", ORG)])
        .body("{}")
        .send()
        .await;
    assert_eq!(own.status, StatusCode::OK);
}

#[tokio::test]
async fn not_found_404_for_unknown_or_foreign_keys() {
    let app = app().await;
    let token = app.admin_token();
    let bot = app.machine("bot", None).await;
    app.machine("other", None).await;
    for path in [
        "/users/bot/keys/12345".to_string(),
        // bot's key, asked for as another user's.
        format!("/users/other/keys/{}", bot.key_id()),
    ] {
        for method in [Method::GET, Method::DELETE] {
            let res = app.http.call(method.clone(), &path, &token, &[], "").await;
            assert_eq!(res.status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(res.code(), 5);
            assert_eq!(res.error_id(), "KEY-not-found");
        }
    }
}

#[tokio::test]
async fn already_exists_409_on_key_id_collision() {
    let app = app_with(AppOptions {
        keys: Box::new(|k: KeyService| k.with_id_generator(|| "42".to_string())),
        ..Default::default()
    })
    .await;
    // The admin's own key took id 42 at start-up.
    let res = create(&app, "bot", &app.admin_token(), json!({})).await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{:?}", res.body);
    assert_eq!(res.code(), 6);
    assert_eq!(res.error_id(), "KEY-id-exists");
}

#[tokio::test]
async fn resource_exhausted_429_when_the_key_limit_is_hit() {
    let app = app_with(AppOptions {
        keys: Box::new(|k: KeyService| k.with_max_keys_per_user(2)),
        ..Default::default()
    })
    .await;
    let token = app.admin_token();
    assert_eq!(
        create(&app, "bot", &token, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        create(&app, "bot", &token, json!({})).await.status,
        StatusCode::OK
    );
    let third = create(&app, "bot", &token, json!({})).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.code(), 8);
    assert_eq!(third.error_id(), "KEY-limit-reached");
}

#[tokio::test]
async fn unavailable_503_when_the_store_is_down() {
    let outage = Outage::new();
    let app = app_with(AppOptions {
        store: Some(outage.clone()),
        ..Default::default()
    })
    .await;
    // The admin's key is cached by its first use; the store goes down after.
    let token = app.admin_token();
    assert_eq!(
        app.http
            .post("/users/x/keys/_search")
            .token(&token)
            .send()
            .await
            .status,
        StatusCode::OK
    );
    outage.set_down(true);
    for (method, path) in [
        (Method::POST, "/users/x/keys"),
        (Method::POST, "/users/x/keys/_search"),
        (Method::GET, "/users/x/keys/1"),
        (Method::DELETE, "/users/x/keys/1"),
    ] {
        let res = app.http.call(method.clone(), path, &token, &[], "{}").await;
        assert_eq!(
            res.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(res.code(), 14);
        assert_eq!(res.error_id(), "STORE-unavailable");
    }
    outage.set_down(false);
    assert_eq!(
        app.http
            .post("/users/x/keys")
            .token(&token)
            .body("{}")
            .send()
            .await
            .status,
        StatusCode::OK
    );
}
