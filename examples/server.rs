//! The crate's main demonstration: the key API and a protected route on one
//! axum app. Settings come from the environment (SPEC §5):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `JWT_PROFILE_LISTEN` | `127.0.0.1:8080` | address to bind |
//! | `JWT_PROFILE_STORE` | `sqlite://jwt-profile.db` | `memory`, `sqlite://PATH` or `postgres://…` (feature `postgres`) |
//! | `JWT_PROFILE_AUDIENCE` | `http://<listen address>` | accepted `aud`, comma-separated for several; none left after trimming: exit 2 |
//! | `JWT_PROFILE_ADMIN_USER` | `admin` | the administrator machine user |
//! | `JWT_PROFILE_ORG` | `default` | the administrator's organization |
//! | `JWT_PROFILE_ADMIN_KEY_FILE` | `admin-key.json` | where to write the admin key file |
//! | `JWT_PROFILE_ASSERTION_CACHE` | `on` | `off`: check every assertion in full |
//! | `JWT_PROFILE_REPLAY` | `off` | replay protection (SPEC §3 rule 7): `off`, `memory` (this process) or `redis://HOST:PORT` (shared; feature `redis`, Redis with `maxmemory-policy noeviction`) |
//! | `JWT_PROFILE_MAX_KEYS_PER_USER` | `100` | keys one user may hold; one more is 429; `0` = no limit |
//! | `JWT_PROFILE_ISSUER` | `http://<listen address>` | the token endpoint's issuer: an absolute URL without a trailing slash |
//! | `JWT_PROFILE_MASTER_KEY_FILE` | `master-key` | 32 bytes (raw or base64) sealing the token-signing keys; created (mode 0600) only when missing and the store holds no signing key |
//! | `JWT_PROFILE_TOKEN_LIFETIME` | `3600` | access-token lifetime in seconds, 600–86400 |
//! | `JWT_PROFILE_LOG_FORMAT` | `text` | logs on stderr: `text` (human-readable) or `json`; the level comes from `RUST_LOG` (default `info`) |
//!
//! An empty variable means its default. A value the server cannot use is a
//! message on stderr and exit code 2, never a silent default.
//!
//! Run it with `cargo run --example server`. Built with `--features
//! metrics` it also serves `GET /metrics` (Prometheus text format). Built with `--features grpc`, it
//! also serves `jwtprofile.v1.MachineKeyService` (gRPC and gRPC-web) on the
//! same address.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use chrono::{SecondsFormat, Utc};
use jwt_profile::http::{KeyApi, TokenApi};
use jwt_profile::policy::DefaultPolicy;
use jwt_profile::replay::MemoryReplayStore;
use jwt_profile::store::{CachedStore, KeyStore, ListQuery, MemoryStore, SigningKeyStore};
use jwt_profile::token::{IssuerError, IssuerSettings, MasterKey, TokenIssuer};
use jwt_profile::{
    CreateKey, ErrorKind, JwtProfileLayer, KeyFile, KeyService, Principal, Validation, Verifier,
};

#[cfg(feature = "sqlite")]
const DEFAULT_STORE: &str = "sqlite://jwt-profile.db";
#[cfg(not(feature = "sqlite"))]
const DEFAULT_STORE: &str = "memory";

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// What `JWT_PROFILE_REPLAY` asks for.
enum ReplayMode {
    Off,
    Memory,
    Redis(String),
}

fn replay_mode(value: &str) -> Result<ReplayMode, String> {
    match value {
        "off" => Ok(ReplayMode::Off),
        "memory" => Ok(ReplayMode::Memory),
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            if cfg!(feature = "redis") {
                Ok(ReplayMode::Redis(url.to_string()))
            } else {
                Err(format!(
                    "JWT_PROFILE_REPLAY={:?}: this build has no Redis support; run with `--features redis`",
                    redacted(url)
                ))
            }
        }
        other => Err(format!(
            "JWT_PROFILE_REPLAY={other:?} is not a replay mode; use off, memory or redis://HOST:PORT"
        )),
    }
}

/// `url` without its user and password, for messages: the userinfo of a
/// URL, and any `password=` parameter (of a URL's query or of a keyword
/// string), are replaced with `…`.
fn redacted(url: &str) -> String {
    let hidden = match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_string(),
    };
    let mut out = String::with_capacity(hidden.len());
    let mut rest = hidden.as_str();
    while let Some(at) = rest.to_ascii_lowercase().find("password=") {
        let value = at + "password=".len();
        out.push_str(&rest[..value]);
        out.push('…');
        let end = rest[value..]
            .find(['&', ' ', ';'])
            .map_or(rest.len(), |e| value + e);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `JWT_PROFILE_MAX_KEYS_PER_USER`: `None` for no limit (`0`).
fn max_keys_per_user(value: &str) -> Result<Option<u64>, String> {
    match value.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(format!(
            "JWT_PROFILE_MAX_KEYS_PER_USER={value:?} is not a number of keys (0 = no limit)"
        )),
    }
}

fn audiences(value: &str) -> Result<Vec<String>, String> {
    let audiences: Vec<String> = value
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if audiences.is_empty() {
        return Err(format!(
            "JWT_PROFILE_AUDIENCE={value:?} names no audience; give one or more, comma-separated"
        ));
    }
    Ok(audiences)
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("jwt-profile server: {message}");
    ExitCode::from(2)
}

/// One backend, seen as the machine-key store and as the signing-key store.
type Stores = (Arc<dyn KeyStore>, Arc<dyn SigningKeyStore>);

fn both<S: KeyStore + SigningKeyStore>(store: S) -> Stores {
    let store = Arc::new(store);
    (store.clone(), store)
}

async fn open_store(url: &str) -> Result<Stores, String> {
    if url == "memory" {
        return Ok(both(MemoryStore::new()));
    }
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return jwt_profile::store::SqliteStore::open(url)
            .await
            .map(both)
            .map_err(|e| format!("cannot open the SQLite store {}: {e}", redacted(url)));
        #[cfg(not(feature = "sqlite"))]
        return Err("this build has no SQLite support (feature `sqlite`)".to_string());
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return jwt_profile::store::PostgresStore::connect(url)
            .await
            .map(both)
            .map_err(|e| format!("cannot reach the PostgreSQL store: {e}"));
        #[cfg(not(feature = "postgres"))]
        return Err(
            "this build has no PostgreSQL support; run with `--features postgres`".to_string(),
        );
    }
    Err(format!(
        "JWT_PROFILE_STORE={:?} is not a store; use memory, sqlite://PATH or postgres://…",
        redacted(url)
    ))
}

/// The body of `/whoami`, serialized straight from the principal's fields
/// (no `serde_json::Value` map built per request), members sorted.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WhoAmI<'a> {
    expires_at: String,
    key_id: &'a str,
    kind: &'static str,
    org_id: &'a str,
    scopes: &'a [String],
    user_id: &'a str,
}

async fn whoami(who: Principal) -> axum::response::Response {
    use axum::response::IntoResponse;
    let answer = WhoAmI {
        // RFC 3339 as one string: chrono's own serde form writes it in
        // pieces, each escaped on its own (about 1 500 instructions more
        // per answer under callgrind).
        expires_at: who.expires_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        key_id: &who.key_id,
        kind: who.kind.as_str(),
        org_id: &who.org_id,
        scopes: &who.scopes,
        user_id: &who.user_id,
    };
    // Into a buffer that fits the usual answer (about 130 bytes) at once:
    // axum's `Json` starts at 128 bytes and grows.
    let mut body = Vec::with_capacity(256);
    match serde_json::to_writer(&mut body, &answer) {
        Ok(()) => {
            let mut response = axum::response::Response::new(axum::body::Body::from(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `JWT_PROFILE_TOKEN_LIFETIME`: whole seconds, 600–86400.
fn token_lifetime(value: &str) -> Result<std::time::Duration, String> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u64>() {
        Ok(secs) if digits && (600..=86_400).contains(&secs) => {
            Ok(std::time::Duration::from_secs(secs))
        }
        _ => Err(format!(
            "JWT_PROFILE_TOKEN_LIFETIME={value:?} is not a lifetime; give whole seconds from 600 to 86400"
        )),
    }
}

/// The master key: read from `path`; created there (mode 0600) only when
/// the file is missing and the store holds no sealed signing key — a new
/// key could not open them, so it is never made over them.
async fn master_key(path: &Path, signing: &dyn SigningKeyStore) -> Result<MasterKey, String> {
    match std::fs::metadata(path) {
        Ok(_) => MasterKey::read_file(path)
            .map_err(|e| format!("JWT_PROFILE_MASTER_KEY_FILE={}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let sealed = signing
                .signing_keys()
                .await
                .map_err(|e| format!("cannot read the signing keys from the store: {e}"))?;
            if !sealed.is_empty() {
                return Err(format!(
                    "the master key file {} is missing, but the store holds {} signing key(s) sealed with a master key; restore that file (a new key cannot open them)",
                    path.display(),
                    sealed.len()
                ));
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let key = MasterKey::create_file(path).map_err(|e| e.to_string())?;
            tracing::info!(
                "created master key {} (mode 0600): keep it; the token-signing keys are sealed with it",
                path.display()
            );
            Ok(key)
        }
        Err(e) => Err(format!(
            "JWT_PROFILE_MASTER_KEY_FILE={}: {e}",
            path.display()
        )),
    }
}

/// Opens (creating, mode 0600) the file the admin key file goes to — before
/// the key is made, so a path that cannot be written leaves no key behind
/// that nobody holds.
fn open_key_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` only applies to a new file; an old one may have been wider.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(out)
}

fn write_key_file(mut out: std::fs::File, file: &KeyFile) -> std::io::Result<()> {
    out.write_all(&file.to_json())?;
    out.write_all(b"\n")
}

/// Creates the administrator's key when it has no valid one, acting as the
/// administrator itself (the default policy lets a user manage its own keys).
async fn bootstrap_admin(
    keys: &KeyService,
    admin: &Principal,
    key_file: &Path,
) -> Result<(), String> {
    let list = ListQuery {
        offset: 0,
        limit: 1000,
        asc: false,
    };
    let page = keys
        .list(admin, None, &admin.user_id, list)
        .await
        .map_err(|e| format!("cannot list the admin's keys: {e}"))?;
    let now = Utc::now();
    if page.keys.iter().any(|k| k.expiration_date > now) {
        tracing::info!(
            "admin user {:?} has a valid key; not creating one",
            admin.user_id
        );
        return Ok(());
    }
    let out =
        open_key_file(key_file).map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    let created = keys
        .create(admin, None, &admin.user_id, CreateKey::default())
        .await
        .map_err(|e| format!("cannot create the admin key: {e}"))?;
    let file = created
        .key_file
        .ok_or_else(|| "the admin key was created without a key file".to_string())?;
    write_key_file(out, &file).map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    tracing::info!(
        "created key {} for admin user {:?}; key file written to {} (mode 0600)",
        file.key_id,
        admin.user_id,
        key_file.display()
    );
    Ok(())
}

/// Logs on stderr (stdout carries the `listening on` line): human-readable
/// or JSON, at the level `RUST_LOG` names (default `info`).
fn init_logs(format: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "text" => logs.init(),
        "json" => logs.json().init(),
        other => {
            return Err(format!(
                "JWT_PROFILE_LOG_FORMAT={other:?}: use text or json"
            ));
        }
    }
    Ok(())
}

/// With `metrics`: a Prometheus recorder for every `jwt_profile_*` metric,
/// rendered at `GET /metrics`.
#[cfg(feature = "metrics")]
fn metrics_route() -> Result<Router, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("jwt_profile_verification_duration_seconds".into()),
            &[
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        )
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = init_logs(&setting("JWT_PROFILE_LOG_FORMAT", "text")) {
        return fail(e);
    }
    #[cfg(feature = "metrics")]
    let metrics = match metrics_route() {
        Ok(route) => route,
        Err(e) => return fail(e),
    };
    let listen = setting("JWT_PROFILE_LISTEN", "127.0.0.1:8080");
    let store_url = setting("JWT_PROFILE_STORE", DEFAULT_STORE);
    let admin_user = setting("JWT_PROFILE_ADMIN_USER", "admin");
    let org = setting("JWT_PROFILE_ORG", "default");
    let key_file = setting("JWT_PROFILE_ADMIN_KEY_FILE", "admin-key.json");
    // Settings that need nothing else are checked before anything is opened.
    let policy = match DefaultPolicy::new().try_with_admin(org.clone(), admin_user.clone()) {
        Ok(policy) => policy,
        Err(e) => {
            let name = if e.kind() == ErrorKind::OrgIdInvalid {
                ("JWT_PROFILE_ORG", &org)
            } else {
                ("JWT_PROFILE_ADMIN_USER", &admin_user)
            };
            return fail(format!("{}={:?}: {}", name.0, name.1, e.message()));
        }
    };
    let replay = match replay_mode(&setting("JWT_PROFILE_REPLAY", "off")) {
        Ok(mode) => mode,
        Err(e) => return fail(e),
    };
    let max_keys = match max_keys_per_user(&setting("JWT_PROFILE_MAX_KEYS_PER_USER", "100")) {
        Ok(max) => max,
        Err(e) => return fail(e),
    };
    let assertion_cache = match setting("JWT_PROFILE_ASSERTION_CACHE", "on").as_str() {
        "on" => true,
        "off" => false,
        other => {
            return fail(format!(
                "JWT_PROFILE_ASSERTION_CACHE={other:?}: use on or off"
            ));
        }
    };

    let lifetime = match token_lifetime(&setting("JWT_PROFILE_TOKEN_LIFETIME", "3600")) {
        Ok(lifetime) => lifetime,
        Err(e) => return fail(e),
    };
    let master_key_file = setting("JWT_PROFILE_MASTER_KEY_FILE", "master-key");

    let (store, signing_store) = match open_store(&store_url).await {
        Ok((keys, signing)) => (CachedStore::new(keys), signing),
        Err(e) => return fail(e),
    };
    tracing::info!("key store: {}", redacted(&store_url));
    // The directory of existing key ids, so a flood of made-up kids is
    // refused without store reads from the first request on.
    match store.load_directory().await {
        Ok(true) => tracing::info!("key directory: {} key ids", store.directory_len()),
        Ok(false) => tracing::info!("key directory: not available for this store"),
        Err(e) => return fail(format!("cannot read the key ids from the store: {e}")),
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {listen}: {e}")),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return fail(format!("cannot read the bound address: {e}")),
    };
    let audiences = match audiences(&setting("JWT_PROFILE_AUDIENCE", &format!("http://{addr}"))) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let issuer_name = setting("JWT_PROFILE_ISSUER", &format!("http://{addr}"));
    let issuer_settings = IssuerSettings::new(issuer_name.clone()).token_lifetime(lifetime);
    if let Err(e) = issuer_settings.validate() {
        return fail(format!(
            "JWT_PROFILE_ISSUER={:?}: {e}",
            redacted(&issuer_name)
        ));
    }

    let verifier = Verifier::new(store.clone(), Validation::new(audiences.clone()));
    let verifier = if assertion_cache {
        verifier
    } else {
        verifier.without_assertion_cache()
    };
    let verifier = match replay {
        ReplayMode::Off => {
            tracing::info!("replay protection: off");
            verifier
        }
        ReplayMode::Memory => {
            let seen = MemoryReplayStore::new();
            tracing::info!(
                "replay protection: memory (this process only, up to {} live assertions)",
                seen.capacity()
            );
            verifier.with_replay_protection(seen)
        }
        #[cfg(feature = "redis")]
        ReplayMode::Redis(url) => {
            match jwt_profile::replay::RedisReplayStore::connect(&url).await {
                Ok(seen) => {
                    tracing::info!("replay protection: Redis at {} (shared)", redacted(&url));
                    verifier.with_replay_protection(seen)
                }
                Err(e) => {
                    let why = match e {
                        jwt_profile::store::StoreError::Unavailable(why) => why,
                        other => other.to_string(),
                    };
                    return fail(format!("cannot reach Redis at {}: {why}", redacted(&url)));
                }
            }
        }
        #[cfg(not(feature = "redis"))]
        ReplayMode::Redis(url) => {
            // replay_mode refuses it first; kept so that no path panics.
            return fail(format!(
                "JWT_PROFILE_REPLAY={:?}: this build has no Redis support",
                redacted(&url)
            ));
        }
    };

    // The token endpoint: assertions for the issuer exchanged for access
    // tokens, which the layer accepts beside assertions.
    let master = match master_key(Path::new(&master_key_file), &*signing_store).await {
        Ok(key) => key,
        Err(e) => return fail(e),
    };
    let issuer = match TokenIssuer::open(issuer_settings, signing_store, master, &verifier).await {
        Ok(issuer) => issuer,
        Err(IssuerError::Setting(why)) => return fail(format!("JWT_PROFILE_ISSUER: {why}")),
        Err(IssuerError::WrongMasterKey) => {
            return fail(format!(
                "the master key in {master_key_file} does not open the stored signing keys (wrong key?); refusing to start"
            ));
        }
        Err(e) => return fail(format!("cannot open the token-signing keys: {e}")),
    };
    tracing::info!(
        "token endpoint: issuer {issuer_name}, access tokens valid {} s",
        lifetime.as_secs()
    );
    let verifier = verifier.with_access_tokens(issuer.access_tokens());

    let keys = KeyService::new(store).with_policy(policy);
    let keys = match max_keys {
        Some(max) => {
            tracing::info!("at most {max} keys per user");
            keys.with_max_keys_per_user(max)
        }
        None => {
            tracing::info!("no limit on keys per user");
            keys
        }
    };
    let admin = Principal::new(admin_user, org, "bootstrap");
    if let Err(e) = bootstrap_admin(&keys, &admin, Path::new(&key_file)).await {
        return fail(e);
    }

    let protected = Router::new()
        .route("/whoami", get(whoami))
        .merge(KeyApi::new(keys.clone()).router());
    // With `grpc`: the same key API over gRPC and gRPC-web, on the same port
    // (HTTP/1.1 and h2c), behind the same layer.
    #[cfg(feature = "grpc")]
    let protected = protected.merge(jwt_profile::grpc::KeyGrpc::new(keys).router());
    let protected = protected.layer(JwtProfileLayer::new(verifier).realm(audiences[0].clone()));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(TokenApi::new(issuer).router())
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    jwt_profile::http::OPENAPI_JSON,
                )
            }),
        )
        .merge(protected);
    #[cfg(feature = "metrics")]
    let app = app.merge(metrics);
    // With `grpc`: the proto file, for generating clients (grpcurl's -proto).
    #[cfg(feature = "grpc")]
    let app = app.route(
        "/proto/jwtprofile/v1/machine_keys.proto",
        get(|| async { jwt_profile::grpc::PROTO }),
    );

    tracing::info!(
        "accepting assertions for audience(s): {}",
        audiences.join(", ")
    );
    #[cfg(feature = "grpc")]
    tracing::info!("gRPC and gRPC-web: jwtprofile.v1.MachineKeyService on the same address");
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // TCP_NODELAY, as tonic's own server sets it: a gRPC answer is two
    // writes (HEADERS+DATA, then the trailers), and with Nagle the second
    // waits for the client's ACK (measured: gRPC medians 1.6-2.0x REST's
    // without it, 1.1-1.4x with it; BENCHMARKS.md).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("TCP_NODELAY not set on a connection: {e}");
        }
    });
    match axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("server error: {e}")),
    }
}
