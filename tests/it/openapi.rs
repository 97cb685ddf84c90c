//! Keeps `openapi/openapi.json` honest: every documented operation exists,
//! and real answers of every kind match their documented schema exactly
//! (no undocumented field, no missing required one, right types).

use crate::common;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};

fn doc() -> Value {
    serde_json::from_str(jwt_profile::http::OPENAPI_JSON).expect("openapi.json is JSON")
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let path = r.trim_start_matches("#/").split('/');
            let mut node = doc;
            for part in path {
                node = &node[part];
            }
            resolve(doc, node)
        }
        None => schema,
    }
}

/// Checks `value` against the subset of JSON Schema the document uses.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|o| std::panic::catch_unwind(|| check(doc, o, value, at)).is_ok())
            .count();
        assert_eq!(matching, 1, "{at}: {value} matches {matching} of oneOf");
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        assert!(allowed.contains(value), "{at}: {value} not in {allowed:?}");
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: {value} is not an object"));
            let properties = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().expect("name");
                assert!(
                    object.contains_key(name),
                    "{at}: required {name} missing in {value}"
                );
            }
            for (name, v) in object {
                let Some(s) = properties.get(name) else {
                    panic!("{at}: undocumented field {name} in {value}")
                };
                check(doc, s, v, &format!("{at}.{name}"));
            }
        }
        Some("array") => {
            for (i, item) in value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array"))
                .iter()
                .enumerate()
            {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("string") => {
            let s = value
                .as_str()
                .unwrap_or_else(|| panic!("{at}: {value} is not a string"));
            match schema.get("format").and_then(Value::as_str) {
                Some("date-time") => assert!(
                    chrono::DateTime::parse_from_rfc3339(s).is_ok(),
                    "{at}: {s} is not date-time"
                ),
                Some("byte") => {
                    use base64::Engine;
                    assert!(
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
                        "{at}: not base64"
                    );
                }
                _ => {}
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                && p == "^[0-9]+$"
            {
                assert!(
                    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
                    "{at}: {s} is not digits"
                );
            }
        }
        Some("integer") => assert!(
            value.is_i64() || value.is_u64(),
            "{at}: {value} is not an integer"
        ),
        Some("boolean") => assert!(value.is_boolean(), "{at}: {value} is not a boolean"),
        _ => {}
    }
}

fn response_schema(doc: &Value, path: &str, method: &str, status: StatusCode) -> Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let response = op["responses"]
        .get(status.as_str())
        .unwrap_or_else(|| panic!("{method} {path}: status {status} is not documented"));
    let response = resolve(doc, response);
    response["content"]["application/json"]["schema"].clone()
}

fn conforms(doc: &Value, path: &str, method: &str, answer: &Answer) {
    let schema = response_schema(doc, path, method, answer.status);
    check(
        doc,
        &schema,
        &answer.json(),
        &format!("{method} {path} {}", answer.status),
    );
}

#[tokio::test]
async fn every_documented_operation_exists_and_needs_a_caller() {
    let doc = doc();
    let app = app().await;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("ops").keys() {
            let concrete = path.replace("{userId}", "bot").replace("{keyId}", "1");
            let res = app
                .http
                .send(
                    method.to_uppercase().parse().expect("method"),
                    &concrete,
                    &[],
                    "{}",
                )
                .await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            conforms(&doc, path, method, &res);
        }
    }
}

#[tokio::test]
async fn real_answers_match_the_document() {
    let doc = doc();
    let app = app().await;
    let admin = app.admin_token();
    let bot = app.machine("bot", None).await;
    let bot_token = bot.sign(&app.audience).expect("sign");
    let keys = "/users/{userId}/keys";
    let one = "/users/{userId}/keys/{keyId}";
    let search = "/users/{userId}/keys/_search";

    let created = app
        .http
        .post("/users/doc/keys")
        .token(&admin)
        .body("{}")
        .send()
        .await;
    conforms(&doc, keys, "post", &created);
    let id = created.json()["keyId"].as_str().expect("id").to_string();
    let own_pem = jwt_profile::generate_rsa_key_pair()
        .expect("key")
        .public_key
        .to_pem();
    use base64::Engine;
    let body = json!({"publicKey": base64::engine::general_purpose::STANDARD.encode(own_pem), "expirationDate": "2031-01-01T00:00:00Z", "type": "KEY_TYPE_JSON"});
    conforms(
        &doc,
        keys,
        "post",
        &app.http
            .post("/users/doc/keys")
            .token(&admin)
            .json(&body)
            .send()
            .await,
    );
    for (status_body, token) in [("{\"type\":9}", admin.as_str()), ("{}", bot_token.as_str())] {
        conforms(
            &doc,
            keys,
            "post",
            &app.http
                .post("/users/doc/keys")
                .token(token)
                .body(status_body)
                .send()
                .await,
        );
    }
    conforms(
        &doc,
        keys,
        "post",
        &app.http
            .post("/users/doc/keys")
            .token(&admin)
            .headers(&[("x-zitadel-orgid", "other")])
            .body("{}")
            .send()
            .await,
    );

    conforms(
        &doc,
        one,
        "get",
        &app.http
            .get(format!("/users/doc/keys/{id}"))
            .token(&admin)
            .send()
            .await,
    );
    conforms(
        &doc,
        one,
        "get",
        &app.http
            .get("/users/doc/keys/nope")
            .token(&admin)
            .send()
            .await,
    );
    conforms(
        &doc,
        one,
        "get",
        &app.http
            .get(format!("/users/doc/keys/{id}"))
            .token(&bot_token)
            .send()
            .await,
    );

    conforms(
        &doc,
        search,
        "post",
        &app.http
            .post("/users/doc/keys/_search")
            .token(&admin)
            .body("{\"query\":{\"limit\":1,\"offset\":\"1\",\"asc\":true}}")
            .send()
            .await,
    );
    conforms(
        &doc,
        search,
        "post",
        &app.http
            .post("/users/doc/keys/_search")
            .token(&admin)
            .body("{\"query\":{\"limit\":5000}}")
            .send()
            .await,
    );

    conforms(
        &doc,
        one,
        "delete",
        &app.http
            .delete(format!("/users/doc/keys/{id}"))
            .token(&admin)
            .send()
            .await,
    );
    conforms(
        &doc,
        one,
        "delete",
        &app.http
            .delete(format!("/users/doc/keys/{id}"))
            .token(&admin)
            .send()
            .await,
    );
}
