//! Shared test harness: a real axum server on 127.0.0.1 and a real HTTP
//! client. Each test file uses the parts it needs.
#![allow(dead_code)]

pub mod backends;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jwt_profile::CreateKey;
use jwt_profile::http::KeyApi;
use jwt_profile::policy::DefaultPolicy;
use jwt_profile::store::{CachedStore, KeyStore, MemoryStore};
use jwt_profile::{
    AssertionSigner, JwtProfileLayer, KeyService, ManualClock, Principal, Validation, Verifier,
};
use serde_json::Value;

pub const ORG: &str = "default";
pub const ADMIN: &str = "admin";

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `details[0].id` of a JSON error body, after checking its shape.
    pub fn error_id(&self) -> String {
        let j = self.json();
        assert!(j["code"].is_i64(), "no code in {j}");
        assert!(j["message"].is_string(), "no message in {j}");
        assert_eq!(
            j["details"][0]["@type"],
            "type.googleapis.com/jwtprofile.v1.ErrorDetail"
        );
        j["details"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn code(&self) -> i64 {
        self.json()["code"].as_i64().unwrap_or(-1)
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    pub base: String,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("request");
        let res = self.client.request(req).await.expect("HTTP request");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A request with `Authorization: Bearer <token>` plus `headers`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let auth = format!("Bearer {token}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.send(method, path, &all, body).await
    }
}

/// A request being built: `http.get(path).token(t).header(k, v).send()`.
pub struct Call<'h> {
    http: &'h Http,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Http {
    fn request(&self, method: Method, path: impl Into<String>) -> Call<'_> {
        Call {
            http: self,
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(&self, path: impl Into<String>) -> Call<'_> {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: impl Into<String>) -> Call<'_> {
        self.request(Method::POST, path)
    }

    pub fn delete(&self, path: impl Into<String>) -> Call<'_> {
        self.request(Method::DELETE, path)
    }
}

impl Call<'_> {
    /// `Authorization: Bearer <token>`.
    pub fn token(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn headers(mut self, headers: &[(&str, &str)]) -> Self {
        for (k, v) in headers {
            self.headers.push((k.to_string(), v.to_string()));
        }
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body.
    pub fn json(self, body: &Value) -> Self {
        self.body(body.to_string())
    }

    pub async fn send(self) -> Answer {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.http
            .send(self.method, &self.path, &headers, self.body)
            .await
    }
}

/// Serves `router` on 127.0.0.1 (any port) until the test ends.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    addr
}

async fn whoami(who: Principal) -> axum::Json<Value> {
    axum::Json(serde_json::json!({
        "userId": who.user_id, "orgId": who.org_id, "keyId": who.key_id,
    }))
}

/// A store that counts reads of keys by id, around any other store. With
/// `list_ids` false it hides the inner store's `key_ids`, as a store that
/// cannot list its ids does (no directory of key ids in the cache).
pub struct Counting {
    pub inner: std::sync::Arc<dyn KeyStore>,
    pub gets: std::sync::atomic::AtomicUsize,
    pub list_ids: bool,
}

impl Counting {
    pub fn new(inner: std::sync::Arc<dyn KeyStore>) -> std::sync::Arc<Counting> {
        std::sync::Arc::new(Counting {
            inner,
            gets: Default::default(),
            list_ids: true,
        })
    }

    pub fn unlisted(inner: std::sync::Arc<dyn KeyStore>) -> std::sync::Arc<Counting> {
        std::sync::Arc::new(Counting {
            inner,
            gets: Default::default(),
            list_ids: false,
        })
    }

    pub fn reads(&self) -> usize {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl KeyStore for Counting {
    async fn insert(
        &self,
        key: jwt_profile::store::NewKey,
    ) -> Result<jwt_profile::MachineKey, jwt_profile::store::StoreError> {
        self.inner.insert(key).await
    }
    async fn get(
        &self,
        key_id: &str,
    ) -> Result<Option<jwt_profile::MachineKey>, jwt_profile::store::StoreError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Not ready at the first poll, as a database read is not: a caller
        // that gives up on a pending read has still made it.
        tokio::task::yield_now().await;
        self.inner.get(key_id).await
    }
    async fn list(
        &self,
        u: &str,
        o: &str,
        q: jwt_profile::store::ListQuery,
    ) -> Result<jwt_profile::store::KeyPage, jwt_profile::store::StoreError> {
        self.inner.list(u, o, q).await
    }
    async fn remove(
        &self,
        id: &str,
    ) -> Result<Option<jwt_profile::store::Removed>, jwt_profile::store::StoreError> {
        self.inner.remove(id).await
    }
    async fn allocate_id(&self) -> Result<Option<String>, jwt_profile::store::StoreError> {
        self.inner.allocate_id().await
    }
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<jwt_profile::store::KeyEvent>> {
        self.inner.events()
    }
    async fn key_ids(&self) -> Result<Option<Vec<String>>, jwt_profile::store::StoreError> {
        if self.list_ids {
            self.inner.key_ids().await
        } else {
            Ok(None)
        }
    }
}

/// A machine: `user` creates its own server-generated key (in
/// organization `default`) through `keys`; a signer for it.
pub async fn machine(keys: &KeyService, user: &str) -> AssertionSigner {
    let me = Principal::new(user, ORG, "-");
    let created = keys
        .create(&me, None, user, CreateKey::default())
        .await
        .expect("create key");
    AssertionSigner::from_key_file(&created.key_file.expect("key file")).expect("signer")
}

/// A running app: the key API and `/whoami` behind the layer, an admin.
pub struct App {
    pub http: Http,
    pub audience: String,
    pub store: CachedStore,
    pub keys: KeyService,
    pub clock: ManualClock,
    pub admin: AssertionSigner,
}

impl App {
    /// A token for the admin.
    pub fn admin_token(&self) -> String {
        self.admin.sign(&self.audience).expect("sign")
    }

    /// Creates a server-generated key for `user` in org `org` (as admin)
    /// through the service and returns a signer for it.
    pub async fn machine(&self, user: &str, org: Option<&str>) -> AssertionSigner {
        let admin = Principal::new(ADMIN, ORG, "-");
        let created = self
            .keys
            .create(&admin, org, user, CreateKey::default())
            .await
            .expect("create key");
        AssertionSigner::from_key_file(&created.key_file.expect("key file")).expect("signer")
    }
}

pub struct AppOptions {
    pub keys: Box<dyn FnOnce(KeyService) -> KeyService>,
    pub api: Box<dyn FnOnce(KeyApi) -> KeyApi>,
    pub store: Option<std::sync::Arc<dyn KeyStore>>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            keys: Box::new(|k| k),
            api: Box::new(|a| a),
            store: None,
        }
    }
}

pub async fn app() -> App {
    app_with(AppOptions::default()).await
}

pub async fn app_with(options: AppOptions) -> App {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let audience = format!("http://{addr}");
    let clock = ManualClock::now_system();
    let store = match options.store {
        Some(s) => CachedStore::new(s),
        None => CachedStore::new(MemoryStore::new()),
    };
    let keys = (options.keys)(
        KeyService::new(store.clone())
            .with_clock(clock.clone())
            .with_policy(DefaultPolicy::new().with_admin(ORG, ADMIN)),
    );
    let verifier =
        Verifier::new(store.clone(), Validation::new([audience.clone()])).with_clock(clock.clone());
    let router = Router::new()
        .route("/whoami", get(whoami))
        .merge((options.api)(KeyApi::new(keys.clone())).router());
    // With `grpc`, the same key service over gRPC and gRPC-web on the same port.
    #[cfg(feature = "grpc")]
    let router = router.merge(jwt_profile::grpc::KeyGrpc::new(keys.clone()).router());
    let router = router.layer(JwtProfileLayer::new(verifier));
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    let admin_principal = Principal::new(ADMIN, ORG, "-");
    let created = keys
        .create(&admin_principal, None, ADMIN, CreateKey::default())
        .await
        .expect("admin key");
    let admin = AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
    App {
        http: Http::new(addr),
        audience,
        store,
        keys,
        clock,
        admin,
    }
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// A store whose backend is switched off: every call fails as a lost
/// connection would. (A real unreachable database is tested with the
/// PostgreSQL backend.)
pub struct Outage {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

impl Outage {
    pub fn new() -> std::sync::Arc<Outage> {
        std::sync::Arc::new(Outage {
            inner: MemoryStore::new(),
            down: false.into(),
        })
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), jwt_profile::store::StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(jwt_profile::store::StoreError::Unavailable(
                "connection refused".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl KeyStore for Outage {
    async fn insert(
        &self,
        key: jwt_profile::store::NewKey,
    ) -> Result<jwt_profile::MachineKey, jwt_profile::store::StoreError> {
        self.check()?;
        self.inner.insert(key).await
    }
    async fn get(
        &self,
        key_id: &str,
    ) -> Result<Option<jwt_profile::MachineKey>, jwt_profile::store::StoreError> {
        self.check()?;
        self.inner.get(key_id).await
    }
    async fn list(
        &self,
        user_id: &str,
        org_id: &str,
        query: jwt_profile::store::ListQuery,
    ) -> Result<jwt_profile::store::KeyPage, jwt_profile::store::StoreError> {
        self.check()?;
        self.inner.list(user_id, org_id, query).await
    }
    async fn remove(
        &self,
        key_id: &str,
    ) -> Result<Option<jwt_profile::store::Removed>, jwt_profile::store::StoreError> {
        self.check()?;
        self.inner.remove(key_id).await
    }
}

/// A TCP proxy on 127.0.0.1 to `upstream` that can be cut and restored,
/// or frozen (connections stay open, nothing is relayed): real network
/// failures between the service and its database.
pub struct Proxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    lag: std::sync::Arc<std::sync::Mutex<std::time::Duration>>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Copies `from` to `to`, holding every byte while `frozen` is set, and
/// delaying each chunk by `lag` when this is a LISTEN connection and `lag`
/// is set (the chunk's order is kept: it is written at arrival + lag).
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    listening: std::sync::Arc<std::sync::atomic::AtomicBool>,
    marks_listen: bool,
    lag: std::sync::Arc<std::sync::Mutex<std::time::Duration>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if marks_listen && buf[..n].windows(7).any(|w| w == b"LISTEN ") {
            listening.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let delay = if !marks_listen && listening.load(std::sync::atomic::Ordering::SeqCst) {
            *lag.lock().expect("lag")
        } else {
            std::time::Duration::ZERO
        };
        if tx
            .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lag: std::sync::Arc<std::sync::Mutex<std::time::Duration>> = Default::default();
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (up2, frozen2, lag2, links2) = (up.clone(), frozen.clone(), lag.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound); // refused: connection closed at once
                    continue;
                }
                let frozen = frozen2.clone();
                let lag = lag2.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = outbound.into_split();
                        let listening =
                            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                        tokio::select! {
                            _ = relay(ir, ow, frozen.clone(), listening.clone(), true, lag.clone()) => {}
                            _ = relay(or, iw, frozen, listening, false, lag) => {}
                        }
                    }
                });
                links2.lock().expect("lock").push(task.abort_handle());
            }
        });
        Proxy {
            addr,
            up,
            frozen,
            lag,
            links,
        }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().expect("lock").drain(..) {
            link.abort();
        }
    }

    /// Delays what the database sends on LISTEN connections (only those)
    /// by `lag`: a change feed that works but lags behind.
    pub fn lag_listen(&self, lag: std::time::Duration) {
        *self.lag.lock().expect("lag") = lag;
    }

    /// Stops relaying without closing anything: a silent stall.
    pub fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
