//! The layer in front of a plain hyper 1 service, through `tower`, with no
//! axum: builds with `--no-default-features`.
//!
//! ```sh
//! cargo run --no-default-features --example hyper_service -- bot-key.json
//! ```
//!
//! It creates a machine key for user `ci-bot` in an in-memory store, writes
//! its key file to the path given (mode 0600), prints
//! `listening on http://ADDR` and answers `GET /` with `hello <userId>` for
//! a valid assertion (audience `http://ADDR`), 401 otherwise. Log in with
//! `cargo run --example machine_login -- bot-key.json http://ADDR/`.

use std::convert::Infallible;
use std::io::Write;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use jwt_profile::CreateKey;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{JwtProfileLayer, KeyService, Principal, Validation, Verifier};
use tower::ServiceBuilder;

/// The protected service: plain hyper types, the `Principal` from the
/// request's extensions.
async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let user = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.user_id.clone())
        .unwrap_or_default();
    Ok(Response::new(Full::new(Bytes::from(format!(
        "hello {user}\n"
    )))))
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(key_path) = std::env::args().nth(1) else {
        eprintln!("usage: hyper_service KEY_FILE_PATH");
        return ExitCode::from(2);
    };
    let listen = std::env::var("JWT_PROFILE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(addr) = listener.local_addr() else {
        eprintln!("cannot read the bound address");
        return ExitCode::from(2);
    };

    let store = CachedStore::new(MemoryStore::new());
    let keys = KeyService::new(store.clone());
    let me = Principal::new("ci-bot", "default", "bootstrap");
    let file = match keys.create(&me, None, "ci-bot", CreateKey::default()).await {
        Ok(created) => created.key_file,
        Err(e) => {
            eprintln!("cannot create the key: {e}");
            return ExitCode::from(2);
        }
    };
    let written = file
        .ok_or_else(|| std::io::Error::other("no key file"))
        .and_then(|file| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key_path)?
                .write_all(&file.to_json())
        });
    if let Err(e) = written {
        eprintln!("cannot write {key_path}: {e}");
        return ExitCode::from(2);
    }

    let audience = format!("http://{addr}");
    let verifier = Verifier::new(store, Validation::new([audience.as_str()]));
    let service = ServiceBuilder::new()
        .layer(JwtProfileLayer::new(verifier))
        .service_fn(hello);
    println!("listening on {audience}");
    let _ = std::io::stdout().flush();

    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
