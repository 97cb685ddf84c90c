//! The key API over gRPC and gRPC-web (feature `grpc`): a real tonic client
//! over h2c and hand-made gRPC-web over HTTP/1.1, against the same server as
//! the REST tests (REST, gRPC and gRPC-web on one port).
#![cfg(feature = "grpc")]

use crate::common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{ADMIN, App, AppOptions, ORG, Outage, app, app_with};
use http::{Method, StatusCode};
use jwt_profile::generate_rsa_key_pair;
use jwt_profile::grpc::pb::machine_key_service_client::MachineKeyServiceClient;
use jwt_profile::grpc::pb::{
    AddKeyRequest, AddKeyResponse, GetKeyRequest, GetKeyResponse, KeyType, ListKeysRequest,
    ListQuery, RemoveKeyRequest,
};
use jwt_profile::grpc::{KeyGrpc, error_detail};
use jwt_profile::store::MemoryStore;
use jwt_profile::{AssertionSigner, JwtProfileLayer, KeyFile, KeyService, Validation, Verifier};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

type Client = MachineKeyServiceClient<Channel>;

async fn connect(url: &str) -> Client {
    let channel = Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("gRPC connection (h2c)");
    MachineKeyServiceClient::new(channel)
}

async fn client(app: &App) -> Client {
    connect(&app.http.base).await
}

/// `message` with `authorization: Bearer <token>` and optional org metadata.
fn authed<T>(message: T, token: &str, org: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    let auth: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    req.metadata_mut().insert("authorization", auth);
    if let Some(org) = org {
        req.metadata_mut()
            .insert("x-zitadel-orgid", org.parse().expect("metadata"));
    }
    req
}

fn get_req(user: &str, key: &str) -> GetKeyRequest {
    GetKeyRequest {
        user_id: user.into(),
        key_id: key.into(),
    }
}

fn remove_req(user: &str, key: &str) -> RemoveKeyRequest {
    RemoveKeyRequest {
        user_id: user.into(),
        key_id: key.into(),
    }
}

fn list_req(user: &str) -> ListKeysRequest {
    ListKeysRequest {
        user_id: user.into(),
        query: None,
    }
}

fn detail_id(status: &Status) -> String {
    error_detail(status)
        .unwrap_or_else(|| panic!("no ErrorDetail in {status:?}"))
        .id
}

#[tokio::test]
async fn a_tonic_client_adds_gets_lists_and_removes_keys() {
    let app = app().await;
    let mut grpc = client(&app).await;
    let token = app.admin_token();

    let added = grpc
        .add_key(authed(
            AddKeyRequest {
                user_id: "ci-bot".into(),
                r#type: KeyType::Json as i32,
                ..Default::default()
            },
            &token,
            None,
        ))
        .await
        .expect("AddKey")
        .into_inner();
    let details = added.details.expect("details");
    assert_eq!(details.resource_owner, ORG);
    assert!(details.sequence > 0);
    assert!(details.creation_date.is_some() && details.change_date.is_some());
    // key_details is the key file itself (bytes), not base64 of it.
    let file = KeyFile::from_json(&added.key_details).expect("key file");
    assert_eq!(file.key_id, added.key_id);
    assert_eq!(file.user_id, "ci-bot");

    let got = grpc
        .get_key(authed(get_req("ci-bot", &added.key_id), &token, None))
        .await
        .expect("GetKey")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(got.id, added.key_id);
    assert_eq!(got.r#type, KeyType::Json as i32);
    // The default expiration: 9999-12-31T23:59:59Z.
    assert_eq!(got.expiration_date.expect("exp").seconds, 253_402_300_799);

    // A second key with the user's own public key and an expiration date.
    let pair = generate_rsa_key_pair().expect("pair");
    let expires = chrono::Utc::now().timestamp() + 3600;
    let own = grpc
        .add_key(authed(
            AddKeyRequest {
                user_id: "ci-bot".into(),
                r#type: KeyType::Unspecified as i32,
                expiration_date: Some(prost_types::Timestamp {
                    seconds: expires,
                    nanos: 0,
                }),
                public_key: pair.public_key.to_pem().into_bytes(),
            },
            &token,
            None,
        ))
        .await
        .expect("AddKey with own key")
        .into_inner();
    assert!(own.key_details.is_empty(), "no key file for an own key");

    let page = grpc
        .list_keys(authed(
            ListKeysRequest {
                user_id: "ci-bot".into(),
                query: Some(ListQuery {
                    offset: 0,
                    limit: 10,
                    asc: true,
                }),
            },
            &token,
            None,
        ))
        .await
        .expect("ListKeys")
        .into_inner();
    assert_eq!(page.details.expect("details").total_result, 2);
    let ids: Vec<_> = page.result.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, [added.key_id.as_str(), own.key_id.as_str()]);
    assert_eq!(
        page.result[1].expiration_date.expect("exp").seconds,
        expires
    );

    let removed = grpc
        .remove_key(authed(remove_req("ci-bot", &added.key_id), &token, None))
        .await
        .expect("RemoveKey")
        .into_inner()
        .details
        .expect("details");
    assert!(removed.sequence > details.sequence);
    assert_eq!(removed.resource_owner, ORG);

    let gone = grpc
        .get_key(authed(get_req("ci-bot", &added.key_id), &token, None))
        .await
        .expect_err("removed key");
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(detail_id(&gone), "KEY-not-found");
}

#[tokio::test]
async fn no_or_bad_credentials_are_unauthenticated() {
    let app = app().await;
    let mut grpc = client(&app).await;
    let get = || get_req(ADMIN, "1");

    let none = grpc.get_key(get()).await.expect_err("no credentials");
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    assert!(!none.message().is_empty());

    let garbage = grpc
        .get_key(authed(get(), "not.a.token", None))
        .await
        .expect_err("garbage token");
    assert_eq!(garbage.code(), Code::Unauthenticated, "{garbage:?}");

    // A well-formed assertion for another audience.
    let other_aud = app.admin.sign("https://elsewhere.example").expect("sign");
    let wrong = grpc
        .get_key(authed(get(), &other_aud, None))
        .await
        .expect_err("wrong audience");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(wrong.message().contains("aud"), "{wrong:?}");

    // A removed key no longer logs in over gRPC either.
    let machine = app.machine("robot", None).await;
    let token = machine.sign(&app.audience).expect("sign");
    let mine = list_req("robot");
    grpc.list_keys(authed(mine.clone(), &token, None))
        .await
        .expect("valid key");
    grpc.remove_key(authed(remove_req("robot", machine.key_id()), &token, None))
        .await
        .expect("remove own key");
    let after = grpc
        .list_keys(authed(mine, &token, None))
        .await
        .expect_err("removed key");
    assert_eq!(after.code(), Code::Unauthenticated, "{after:?}");
}

#[tokio::test]
async fn unknown_keys_are_not_found() {
    let app = app().await;
    let mut grpc = client(&app).await;
    let token = app.admin_token();
    for (user, key) in [(ADMIN, "424242424242424242"), ("nobody", "1")] {
        let get = grpc
            .get_key(authed(get_req(user, key), &token, None))
            .await
            .expect_err("unknown key");
        assert_eq!(get.code(), Code::NotFound, "{get:?}");
        assert_eq!(detail_id(&get), "KEY-not-found");
        let remove = grpc
            .remove_key(authed(remove_req(user, key), &token, None))
            .await
            .expect_err("unknown key");
        assert_eq!(remove.code(), Code::NotFound, "{remove:?}");
    }
    // The admin's own key, asked for in another organization, is not there.
    let other_org = grpc
        .get_key(authed(
            get_req(ADMIN, app.admin.key_id()),
            &token,
            Some("elsewhere"),
        ))
        .await
        .expect_err("other organization");
    assert_eq!(other_org.code(), Code::NotFound, "{other_org:?}");
}

/// The same bad input over REST and gRPC gives the same code, message and id.
#[tokio::test]
async fn errors_match_rest_code_message_and_id() {
    let app = app().await;
    let mut grpc = client(&app).await;
    let token = app.admin_token();
    let machine = app.machine("worker", None).await;
    let worker = machine.sign(&app.audience).expect("sign");
    let rsa1024 = include_bytes!("data/rsa1024.pub.pem").to_vec();
    let past = chrono::Utc::now().timestamp() - 10;

    struct Case {
        name: &'static str,
        token: String,
        org: Option<&'static str>,
        user: &'static str,
        grpc: AddKeyRequest,
        rest: serde_json::Value,
    }
    let cases = [
        Case {
            name: "small RSA key",
            token: token.clone(),
            org: None,
            user: "u1",
            grpc: AddKeyRequest {
                public_key: rsa1024.clone(),
                ..Default::default()
            },
            rest: serde_json::json!({"publicKey": STANDARD.encode(&rsa1024)}),
        },
        Case {
            name: "past expiration",
            token: token.clone(),
            org: None,
            user: "u1",
            grpc: AddKeyRequest {
                expiration_date: Some(prost_types::Timestamp {
                    seconds: past,
                    nanos: 0,
                }),
                ..Default::default()
            },
            rest: serde_json::json!({
                "expirationDate": chrono::DateTime::from_timestamp(past, 0).unwrap().to_rfc3339()
            }),
        },
        Case {
            name: "unknown key type",
            token: token.clone(),
            org: None,
            user: "u1",
            grpc: AddKeyRequest {
                r#type: 7,
                ..Default::default()
            },
            rest: serde_json::json!({"type": 7}),
        },
        Case {
            name: "bad user id",
            token: token.clone(),
            org: None,
            user: "a\u{7}b",
            grpc: AddKeyRequest::default(),
            rest: serde_json::json!({}),
        },
        Case {
            name: "another user's keys",
            token: worker.clone(),
            org: None,
            user: "someone-else",
            grpc: AddKeyRequest::default(),
            rest: serde_json::json!({}),
        },
        Case {
            name: "another organization, not an admin",
            token: worker.clone(),
            org: Some("elsewhere"),
            user: "worker",
            grpc: AddKeyRequest::default(),
            rest: serde_json::json!({}),
        },
    ];
    for case in cases {
        let mut request = case.grpc;
        request.user_id = case.user.into();
        let status = grpc
            .add_key(authed(request, &case.token, case.org))
            .await
            .expect_err(case.name);
        let path = format!("/users/{}/keys", case.user.replace('\u{7}', "%07"));
        let headers: Vec<(&str, &str)> = case
            .org
            .map(|o| vec![("x-zitadel-orgid", o)])
            .unwrap_or_default();
        let rest = app
            .http
            .call(
                Method::POST,
                &path,
                &case.token,
                &headers,
                case.rest.to_string(),
            )
            .await;
        assert!(rest.status.is_client_error(), "{}: {rest:?}", case.name);
        assert_eq!(status.code() as i64, rest.code(), "{}", case.name);
        assert_eq!(status.message(), rest.json()["message"], "{}", case.name);
        assert_eq!(detail_id(&status), rest.error_id(), "{}", case.name);
    }
}

#[tokio::test]
async fn a_store_outage_is_unavailable_never_unauthenticated() {
    let outage = Outage::new();
    let app = app_with(AppOptions {
        store: Some(outage.clone()),
        ..Default::default()
    })
    .await;
    let mut grpc = client(&app).await;
    let token = app.admin_token();
    let list = || list_req(ADMIN);
    grpc.list_keys(authed(list(), &token, None))
        .await
        .expect("store up");
    outage.set_down(true);
    // The admin's key is cached, so the layer lets the call through; the
    // key service then cannot reach the store.
    let down = grpc
        .list_keys(authed(list(), &token, None))
        .await
        .expect_err("store down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert_eq!(detail_id(&down), "STORE-unavailable");
    // A key the cache has never seen: the layer itself answers 14.
    let stranger = AssertionSigner::from_pem(
        "stranger",
        "123456789012345678",
        generate_rsa_key_pair()
            .expect("pair")
            .private_key_pem
            .as_bytes(),
    )
    .expect("signer")
    .sign(&app.audience)
    .expect("sign");
    let unknown = grpc
        .list_keys(authed(list(), &stranger, None))
        .await
        .expect_err("store down");
    assert_eq!(unknown.code(), Code::Unavailable, "{unknown:?}");
    outage.set_down(false);
    grpc.list_keys(authed(list(), &token, None))
        .await
        .expect("store back");
}

#[tokio::test]
async fn invalid_messages_are_invalid_argument() {
    let app = app().await;
    let mut grpc = client(&app).await;
    let token = app.admin_token();
    let bad_nanos = grpc
        .add_key(authed(
            AddKeyRequest {
                user_id: "u".into(),
                expiration_date: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp() + 60,
                    nanos: -1,
                }),
                ..Default::default()
            },
            &token,
            None,
        ))
        .await
        .expect_err("negative nanos");
    assert_eq!(bad_nanos.code(), Code::InvalidArgument, "{bad_nanos:?}");
    assert_eq!(detail_id(&bad_nanos), "KEY-expiration-invalid");

    let too_late = grpc
        .add_key(authed(
            AddKeyRequest {
                user_id: "u".into(),
                expiration_date: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &token,
            None,
        ))
        .await
        .expect_err("year beyond chrono");
    assert_eq!(too_late.code(), Code::InvalidArgument, "{too_late:?}");

    let limit = grpc
        .list_keys(authed(
            ListKeysRequest {
                user_id: ADMIN.into(),
                query: Some(ListQuery {
                    offset: 0,
                    limit: 1001,
                    asc: false,
                }),
            },
            &token,
            None,
        ))
        .await
        .expect_err("limit over 1000");
    assert_eq!(limit.code(), Code::InvalidArgument, "{limit:?}");
    assert_eq!(detail_id(&limit), "LIST-limit-too-large");

    // A message over 64 KiB is refused before it reaches the service.
    let huge = grpc
        .add_key(authed(
            AddKeyRequest {
                user_id: "u".into(),
                public_key: vec![b'A'; 70 * 1024],
                ..Default::default()
            },
            &token,
            None,
        ))
        .await
        .expect_err("oversized message");
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");
    assert!(huge.message().contains("too large"), "{huge:?}");
}

#[tokio::test]
async fn a_key_created_over_grpc_logs_in_over_rest() {
    let app = app().await;
    let mut grpc = client(&app).await;
    let added = grpc
        .add_key(authed(
            AddKeyRequest {
                user_id: "deployer".into(),
                ..Default::default()
            },
            &app.admin_token(),
            Some("team-b"),
        ))
        .await
        .expect("AddKey")
        .into_inner();
    let file = KeyFile::from_json(&added.key_details).expect("key file");
    let signer = AssertionSigner::from_key_file(&file).expect("signer");
    let token = signer.sign(&app.audience).expect("sign");
    let who = app.http.call(Method::GET, "/whoami", &token, &[], "").await;
    assert_eq!(who.status, StatusCode::OK, "{who:?}");
    let who = who.json();
    assert_eq!(who["userId"], "deployer");
    assert_eq!(who["orgId"], "team-b");
    assert_eq!(who["keyId"], added.key_id);

    // And the REST API sees the key the gRPC API made.
    let rest = app
        .http
        .call(
            Method::GET,
            &format!("/users/deployer/keys/{}", added.key_id),
            &token,
            &[],
            "",
        )
        .await;
    assert_eq!(rest.status, StatusCode::OK, "{rest:?}");
    assert_eq!(rest.json()["key"]["details"]["resourceOwner"], "team-b");
}

// ---- gRPC-web by hand over HTTP/1.1 -----------------------------------------

/// One length-prefixed gRPC (and gRPC-web) message frame around `body`.
fn frame(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    out.freeze()
}

fn grpc_web_frame(message: &impl Message) -> Bytes {
    frame(&message.encode_to_vec())
}

/// Splits a gRPC-web response body into its data frames and its trailers.
fn grpc_web_frames(mut body: Bytes) -> (Vec<Bytes>, Vec<(String, String)>) {
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    while body.has_remaining() {
        assert!(body.len() >= 5, "truncated frame header: {body:?}");
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        let payload = body.split_to(len);
        if flags & 0x80 != 0 {
            let text = std::str::from_utf8(&payload).expect("trailers are text");
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                let (k, v) = line.split_once(':').expect("trailer line");
                trailers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        } else {
            data.push(payload);
        }
    }
    (data, trailers)
}

fn trailer<'a>(trailers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    trailers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A grpc-web-text body: base64, possibly several padded pieces in a row
/// (one per frame).
fn decode_grpc_web_text(body: &[u8]) -> Vec<u8> {
    let mut text = std::str::from_utf8(body).expect("grpc-web-text is ASCII");
    let mut out = Vec::new();
    while !text.is_empty() {
        let end = match text.find('=') {
            Some(i) => i + text[i..].len() - text[i..].trim_start_matches('=').len(),
            None => text.len(),
        };
        out.extend(STANDARD.decode(&text[..end]).expect("base64 piece"));
        text = &text[end..];
    }
    out
}

const ADD_KEY: &str = "/jwtprofile.v1.MachineKeyService/AddKey";
const GET_KEY: &str = "/jwtprofile.v1.MachineKeyService/GetKey";

#[tokio::test]
async fn grpc_web_over_http1_is_answered() {
    let app = app().await;
    let token = app.admin_token();
    let auth = format!("Bearer {token}");
    let headers = [
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
        ("authorization", auth.as_str()),
    ];
    let add = AddKeyRequest {
        user_id: "browser-bot".into(),
        ..Default::default()
    };
    let res = app
        .http
        .send(Method::POST, ADD_KEY, &headers, grpc_web_frame(&add))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    assert!(
        res.header("content-type")
            .starts_with("application/grpc-web"),
        "{res:?}"
    );
    let (data, trailers) = grpc_web_frames(res.body);
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"), "{trailers:?}");
    assert_eq!(data.len(), 1);
    let added = AddKeyResponse::decode(data[0].clone()).expect("AddKeyResponse");
    assert_eq!(
        KeyFile::from_json(&added.key_details)
            .expect("key file")
            .user_id,
        "browser-bot"
    );

    // grpc-web-text: the same exchange in base64.
    let get = get_req("browser-bot", &added.key_id);
    let text_headers = [
        ("content-type", "application/grpc-web-text"),
        ("accept", "application/grpc-web-text"),
        ("authorization", auth.as_str()),
    ];
    let res = app
        .http
        .send(
            Method::POST,
            GET_KEY,
            &text_headers,
            STANDARD.encode(grpc_web_frame(&get)),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    let decoded = decode_grpc_web_text(&res.body);
    let (data, trailers) = grpc_web_frames(Bytes::from(decoded));
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"), "{trailers:?}");
    let key = GetKeyResponse::decode(data[0].clone())
        .expect("GetKeyResponse")
        .key
        .expect("key");
    assert_eq!(key.id, added.key_id);

    // An error: tonic answers trailers-only, so the status and its details
    // come in the response headers and the body is empty.
    let missing = get_req("browser-bot", "1");
    let res = app
        .http
        .send(Method::POST, GET_KEY, &headers, grpc_web_frame(&missing))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    assert!(res.body.is_empty(), "{res:?}");
    assert_eq!(res.header("grpc-status"), "5", "{res:?}");
    assert!(
        res.header("content-type")
            .starts_with("application/grpc-web")
    );
    let details = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(res.header("grpc-status-details-bin").trim_end_matches('='))
        .expect("base64 details");
    let status = Status::with_details(Code::NotFound, "", details.into());
    assert_eq!(detail_id(&status), "KEY-not-found");
}

/// What tonic cannot read is the caller's fault: INVALID_ARGUMENT with
/// `BODY-malformed`, never INTERNAL (kept for bugs).
#[tokio::test]
async fn unreadable_requests_are_invalid_argument_not_internal() {
    let app = app().await;
    let auth = format!("Bearer {}", app.admin_token());
    let headers = [
        ("content-type", "application/grpc-web+proto"),
        ("authorization", auth.as_str()),
    ];
    let not_protobuf = Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
    let truncated = Bytes::from_static(&[0, 0, 0, 0, 100, 0x0a, 0x01]);
    let wrong_type = {
        // Field 1 (user_id, a string) sent as a varint.
        Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01])
    };
    for (name, body) in [
        ("not protobuf", not_protobuf),
        ("truncated frame", truncated),
        ("wrong wire type", wrong_type),
        ("no message", Bytes::new()),
    ] {
        let res = app.http.send(Method::POST, ADD_KEY, &headers, body).await;
        assert_eq!(res.status, StatusCode::OK, "{name}: {res:?}");
        assert_eq!(res.header("grpc-status"), "3", "{name}: {res:?}");
        assert!(
            res.header("grpc-message")
                .replace("%20", " ")
                .starts_with("request message could not be read"),
            "{name}: {res:?}"
        );
        let details = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(res.header("grpc-status-details-bin").trim_end_matches('='))
            .expect("base64 details");
        let status = Status::with_details(Code::InvalidArgument, "", details.into());
        assert_eq!(detail_id(&status), "BODY-malformed", "{name}");
    }
    // The service's own answers are left as they are.
    let ok = app
        .http
        .send(
            Method::POST,
            GET_KEY,
            &headers,
            grpc_web_frame(&get_req(ADMIN, app.admin.key_id())),
        )
        .await;
    let (_, trailers) = grpc_web_frames(ok.body);
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"));
}

#[tokio::test]
async fn grpc_web_without_credentials_is_refused_as_grpc_web() {
    let app = app().await;
    let get = get_req(ADMIN, "1");
    let res = app
        .http
        .send(
            Method::POST,
            GET_KEY,
            &[("content-type", "application/grpc-web+proto")],
            grpc_web_frame(&get),
        )
        .await;
    // Trailers-only: HTTP 200, the status in the headers, an empty body.
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    assert_eq!(res.header("grpc-status"), "16");
    assert_eq!(res.header("content-type"), "application/grpc-web+proto");
    assert!(!res.header("grpc-message").is_empty());
    assert!(res.body.is_empty());

    // REST next to it is untouched by the gRPC-web translation.
    let rest = app
        .http
        .send(Method::GET, "/users/admin/keys/1", &[], "")
        .await;
    assert_eq!(rest.status, StatusCode::UNAUTHORIZED);
    assert_eq!(rest.code(), 16);
}

/// The layer in front of tonic's own server: the Principal reaches the
/// service through the tonic `Request`'s extensions.
#[tokio::test]
async fn the_layer_protects_a_tonic_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let audience = format!("http://{addr}");
    let store = jwt_profile::store::CachedStore::new(MemoryStore::new());
    let keys = KeyService::new(store.clone());
    let created = keys
        .create(
            &jwt_profile::Principal::new("svc", ORG, "-"),
            None,
            "svc",
            Default::default(),
        )
        .await
        .expect("key");
    let signer = AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
    let verifier = Verifier::new(store, Validation::new([audience.clone()]));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(JwtProfileLayer::new(verifier))
            .add_service(KeyGrpc::new(keys).into_server())
            .serve_with_incoming(tokio_stream_listener(listener))
            .await
            .expect("tonic server");
    });
    let mut grpc = connect(&audience).await;
    let token = signer.sign(&audience).expect("sign");
    let page = grpc
        .list_keys(authed(list_req("svc"), &token, None))
        .await
        .expect("ListKeys behind the layer")
        .into_inner();
    assert_eq!(page.result.len(), 1);
    assert_eq!(page.result[0].id, signer.key_id());

    let refused = grpc
        .list_keys(list_req("svc"))
        .await
        .expect_err("no credentials");
    assert_eq!(refused.code(), Code::Unauthenticated);
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

// ---- properties: no message, however malformed, is INTERNAL -----------------

mod properties {
    use super::*;
    use http_body_util::BodyExt;
    use jwt_profile::grpc::KeyGrpcServer;
    use jwt_profile::policy::DefaultPolicy;
    use jwt_profile::store::CachedStore;
    use proptest::prelude::*;
    use std::sync::OnceLock;
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

    fn server() -> KeyGrpcServer {
        static SERVER: OnceLock<KeyGrpcServer> = OnceLock::new();
        SERVER
            .get_or_init(|| {
                let keys = KeyService::new(CachedStore::new(MemoryStore::new()))
                    .with_policy(DefaultPolicy::new().with_admin(ORG, ADMIN));
                KeyGrpc::new(keys).into_server()
            })
            .clone()
    }

    /// The gRPC status code of one call: `message` (already encoded, or any
    /// bytes) in one frame, as the administrator.
    fn call(method: &str, message: Vec<u8>) -> i32 {
        let mut request = http::Request::post(format!("/jwtprofile.v1.MachineKeyService/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(frame(&message)))
            .expect("request");
        request
            .extensions_mut()
            .insert(jwt_profile::Principal::new(ADMIN, ORG, "-"));
        runtime().block_on(async {
            let response = server().oneshot(request).await.expect("infallible");
            let in_headers = response.headers().get("grpc-status").cloned();
            let collected = response.into_body().collect().await.expect("body");
            let code = in_headers
                .or_else(|| {
                    collected
                        .trailers()
                        .and_then(|t| t.get("grpc-status").cloned())
                })
                .expect("a grpc-status");
            code.to_str().expect("ascii").parse().expect("a number")
        })
    }

    /// What bad input may get: OK, or a code that blames the input.
    fn acceptable(code: i32) -> bool {
        // 0 OK, 3 INVALID_ARGUMENT, 5 NOT_FOUND, 9 FAILED_PRECONDITION,
        // 11 OUT_OF_RANGE (over 64 KiB).
        matches!(code, 0 | 3 | 5 | 9 | 11)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_get_internal(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            for method in ["AddKey", "GetKey", "ListKeys", "RemoveKey"] {
                // An AddKey that decodes to "generate a key" is valid; give
                // it a public key field so no RSA pair is made per case.
                let mut message = bytes.clone();
                if method == "AddKey" {
                    message.extend_from_slice(&[0x22, 0x01, b'x']);
                }
                let code = call(method, message);
                prop_assert!(acceptable(code), "{method}: {code}");
            }
        }

        #[test]
        fn arbitrary_fields_never_get_internal(
            user in ".{0,40}",
            key_type in any::<i32>(),
            seconds in any::<i64>(),
            nanos in any::<i32>(),
            public_key in prop::collection::vec(any::<u8>(), 1..200),
            offset in any::<u64>(),
            limit in any::<u32>(),
        ) {
            let add = AddKeyRequest {
                user_id: user.clone(),
                r#type: key_type,
                expiration_date: Some(prost_types::Timestamp { seconds, nanos }),
                public_key,
            };
            let code = call("AddKey", add.encode_to_vec());
            prop_assert!(acceptable(code) && code != 0, "AddKey: {code}");
            let list = ListKeysRequest {
                user_id: user.clone(),
                query: Some(ListQuery { offset, limit, asc: false }),
            };
            let code = call("ListKeys", list.encode_to_vec());
            prop_assert!(acceptable(code), "ListKeys: {code}");
            let get = GetKeyRequest { user_id: user, key_id: key_type.to_string() };
            let code = call("GetKey", get.encode_to_vec());
            prop_assert!(acceptable(code), "GetKey: {code}");
        }
    }
}
