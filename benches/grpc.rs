//! One key read through each adapter, end to end on 127.0.0.1: REST and
//! gRPC on the same server, the same key, the same assertion.
//!
//! `cargo bench --features grpc --bench grpc`
//!
//! The server is the example server's shape (REST, gRPC and gRPC-web behind
//! one `JwtProfileLayer`, memory store). The assertion is reused, so the
//! layer answers from its cache of checked assertions and what differs
//! between the cases is the adapter and the wire protocol. Cases:
//!
//! - `api/rest_h2`: `GET /users/{u}/keys/{k}` over HTTP/2 (h2c), the baseline
//!   of the same transport as gRPC;
//! - `api/grpc`: `GetKey` with a tonic client over h2c;
//! - `api/grpc_raw_h2`: the same `GetKey` framed by hand and sent with the
//!   hyper client of `rest_h2`, so that against `rest_h2` only the server side
//!   differs (tonic's client adds a buffer task of its own);
//! - `api/rest_h1`: the REST read over HTTP/1.1 (keep-alive);
//! - `api/grpc_web_h1`: `GetKey` as gRPC-web over HTTP/1.1, framed by hand.
//!
//! After criterion's output, one line per ratio:
//! `ratio <name> <median ÷ baseline median>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::routing::get;
use bytes::{BufMut, Bytes, BytesMut};
use criterion::Criterion;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jwt_profile::CreateKey;
use jwt_profile::grpc::KeyGrpc;
use jwt_profile::grpc::pb::GetKeyRequest;
use jwt_profile::grpc::pb::machine_key_service_client::MachineKeyServiceClient;
use jwt_profile::http::KeyApi;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{AssertionSigner, JwtProfileLayer, KeyService, Principal, Validation, Verifier};
use prost::Message;

struct Setup {
    addr: SocketAddr,
    token: String,
    key_id: String,
}

async fn start() -> Setup {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let audience = format!("http://{addr}");
    let store = CachedStore::new(MemoryStore::new());
    let keys = KeyService::new(store.clone());
    let created = keys
        .create(
            &Principal::new("bench", "org", "-"),
            None,
            "bench",
            CreateKey::default(),
        )
        .await
        .expect("key");
    let signer = AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
    let verifier = Verifier::new(store, Validation::new([audience.clone()]));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(
            Router::new()
                .merge(KeyApi::new(keys.clone()).router())
                .merge(KeyGrpc::new(keys).router())
                .layer(JwtProfileLayer::new(verifier)),
        );
    // TCP_NODELAY on accepted connections, as the example server (and
    // tonic's own server) set it; `BENCH_SERVER_NAGLE=1` leaves it off to
    // show why: a gRPC answer is two writes (HEADERS+DATA, then trailers).
    let nagle = std::env::var("BENCH_SERVER_NAGLE").is_ok();
    let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
        if !nagle {
            let _ = tcp.set_nodelay(true);
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    Setup {
        addr,
        token: signer.sign(&audience).expect("sign"),
        key_id: created.key.id,
    }
}

/// A gRPC (and gRPC-web) length-prefixed message frame.
fn grpc_web_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Bytes {
    let res = client.request(req).await.expect("request");
    assert!(res.status().is_success(), "{}", res.status());
    res.into_body().collect().await.expect("body").to_bytes()
}

fn bench_api(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let setup = rt.block_on(start());
    let base = format!("http://{}", setup.addr);
    let auth = format!("Bearer {}", setup.token);
    let rest_uri = format!("{base}/users/bench/keys/{}", setup.key_id);
    let rest = |uri: &str| {
        Request::get(uri)
            .header("authorization", auth.as_str())
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // TCP_NODELAY as tonic's client sets it: a request of two frames
    // (HEADERS, DATA) must not wait for a delayed ACK.
    let connector = || {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c
    };
    let h1 = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector());
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Full<Bytes>>(connector());
    let channel = rt.block_on(async {
        tonic::transport::Channel::from_shared(base.clone())
            .expect("url")
            .connect()
            .await
            .expect("h2c")
    });
    let get = GetKeyRequest {
        user_id: "bench".into(),
        key_id: setup.key_id.clone(),
    };

    let mut group = c.benchmark_group("api");
    group.bench_function("rest_h2", |b| {
        b.to_async(rt).iter(|| send(&h2, rest(&rest_uri)))
    });
    group.bench_function("grpc", |b| {
        b.to_async(rt).iter(|| {
            let mut client = MachineKeyServiceClient::new(channel.clone());
            let mut req = tonic::Request::new(get.clone());
            req.metadata_mut()
                .insert("authorization", auth.parse().expect("metadata"));
            async move { client.get_key(req).await.expect("GetKey").into_inner() }
        })
    });
    let grpc_uri = format!("{base}/jwtprofile.v1.MachineKeyService/GetKey");
    let frame = grpc_web_frame(&get);
    group.bench_function("grpc_raw_h2", |b| {
        b.to_async(rt).iter(|| {
            let req = Request::post(grpc_uri.as_str())
                .header("authorization", auth.as_str())
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(frame.clone()))
                .expect("request");
            send(&h2, req)
        })
    });
    group.bench_function("rest_h1", |b| {
        b.to_async(rt).iter(|| send(&h1, rest(&rest_uri)))
    });
    group.bench_function("grpc_web_h1", |b| {
        b.to_async(rt).iter(|| {
            let req = Request::post(grpc_uri.as_str())
                .header("authorization", auth.as_str())
                .header("content-type", "application/grpc-web+proto")
                .body(Full::new(frame.clone()))
                .expect("request");
            send(&h1, req)
        })
    });
    group.finish();
}

fn criterion_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_string());
    PathBuf::from(target).join("criterion")
}

fn median_ns(name: &str) -> Option<f64> {
    let path = criterion_dir()
        .join("api")
        .join(name)
        .join("new")
        .join("estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_ratios() {
    println!();
    for (label, a, b) in [
        ("grpc_vs_rest_h2", "grpc", "rest_h2"),
        ("grpc_raw_vs_rest_h2", "grpc_raw_h2", "rest_h2"),
        ("grpc_web_vs_rest_h1", "grpc_web_h1", "rest_h1"),
    ] {
        match (median_ns(a), median_ns(b)) {
            (Some(x), Some(y)) => println!(
                "ratio {label} {:.2}   ({a} {:.2} µs / {b} {:.2} µs)",
                x / y,
                x / 1000.0,
                y / 1000.0
            ),
            _ => println!("ratio {label} n/a (not measured in this run)"),
        }
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut c = Criterion::default().configure_from_args();
    bench_api(&mut c, &rt);
    c.final_summary();
    print_ratios();
}
