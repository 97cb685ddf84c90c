//! The example server and the machine_login example, run as the README runs
//! them: real processes, real files, real HTTP on 127.0.0.1.

use crate::common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::Http;
use http::{Method, StatusCode};

/// `target/<profile>/examples/<name>`, built by `cargo test` with the tests.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built; run the tests with cargo test",
        path.display()
    );
    path
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(example("server"));
    cmd.current_dir(dir)
        .env("JWT_PROFILE_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, addr }
}

/// A second replica in `dir` of the server started in `first`: the same
/// settings and the first one's master key, which seals the signing keys
/// they share (without it the replica refuses to start: the store holds
/// sealed keys).
fn start_replica(dir: &Path, first: &Path, env: &[(&str, &str)]) -> Server {
    let master = first.join("master-key");
    let mut env = env.to_vec();
    env.push((
        "JWT_PROFILE_MASTER_KEY_FILE",
        master.to_str().expect("path"),
    ));
    start(dir, &env)
}

fn machine_login(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(example("machine_login"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[tokio::test]
async fn readme_walkthrough_works_against_the_example_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &[]);
    let key_file = dir.path().join("admin-key.json");
    let mode = std::fs::metadata(&key_file)
        .expect("admin key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let http = Http::new(server.addr.parse().expect("addr"));
    assert_eq!(
        http.send(Method::GET, "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.send(Method::GET, "/whoami", &[], "").await.status,
        StatusCode::UNAUTHORIZED
    );

    let whoami = format!("http://{}/whoami", server.addr);
    let (ok, token) = machine_login(dir.path(), &["--print-token", "admin-key.json", &whoami]);
    assert!(ok);
    let created = http
        .call(Method::POST, "/users/ci-bot/keys", &token, &[], "{}")
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let file = STANDARD
        .decode(created.json()["keyDetails"].as_str().expect("keyDetails"))
        .expect("b64");
    std::fs::write(dir.path().join("ci-bot.json"), file).expect("write");

    let (ok, out) = machine_login(dir.path(), &["ci-bot.json", &whoami]);
    assert!(ok, "{out}");
    let me: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(me["userId"], "ci-bot");
    assert_eq!(me["orgId"], "default");
    assert_eq!(me["keyId"], created.json()["keyId"]);
    // RFC 3339 in UTC, whole seconds (as `exp`): `…T…:…:…Z`.
    let expires_at = me["expiresAt"].as_str().expect("expiresAt");
    assert_eq!(
        expires_at.len(),
        "2026-01-01T00:00:00Z".len(),
        "{expires_at}"
    );
    assert!(expires_at.ends_with('Z'), "{expires_at}");
    chrono::DateTime::parse_from_rfc3339(expires_at).expect("RFC 3339");

    let (ok, out) = machine_login(dir.path(), &["admin-key.json", &whoami]);
    assert!(ok);
    assert!(out.contains("\"userId\":\"admin\""), "{out}");
}

#[tokio::test]
async fn settings_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(
        dir.path(),
        &[
            (
                "JWT_PROFILE_AUDIENCE",
                "https://a.example, https://b.example",
            ),
            ("JWT_PROFILE_ADMIN_USER", "root"),
            ("JWT_PROFILE_ORG", "ops"),
            ("JWT_PROFILE_ADMIN_KEY_FILE", "keys/root.json"),
        ],
    );
    let url = format!("http://{}/whoami", server.addr);
    for aud in ["https://a.example", "https://b.example"] {
        let (ok, out) = machine_login(dir.path(), &["--audience", aud, "keys/root.json", &url]);
        assert!(ok, "{aud}: {out}");
        assert!(
            out.contains("\"userId\":\"root\"") && out.contains("\"orgId\":\"ops\""),
            "{out}"
        );
    }
    let (ok, _) = machine_login(dir.path(), &["keys/root.json", &url]);
    assert!(
        !ok,
        "the listen address is not an accepted audience when JWT_PROFILE_AUDIENCE is set"
    );
}

#[test]
fn bad_settings_exit_2_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a-file"), "").expect("write");
    for (env, expect) in [
        (("JWT_PROFILE_STORE", "mongodb://x"), "JWT_PROFILE_STORE"),
        (("JWT_PROFILE_LISTEN", "not-an-address"), "cannot listen"),
        (
            ("JWT_PROFILE_ADMIN_KEY_FILE", "a-file/key.json"),
            "cannot write",
        ),
        (("JWT_PROFILE_REPLAY", "nonsense"), "JWT_PROFILE_REPLAY"),
        (("JWT_PROFILE_REPLAY", "on"), "JWT_PROFILE_REPLAY"),
        (("JWT_PROFILE_AUDIENCE", ","), "JWT_PROFILE_AUDIENCE"),
        (("JWT_PROFILE_ORG", "o/x"), "JWT_PROFILE_ORG"),
        (("JWT_PROFILE_ORG", "o\tx"), "JWT_PROFILE_ORG"),
        (("JWT_PROFILE_ADMIN_USER", "a/b"), "JWT_PROFILE_ADMIN_USER"),
        (
            ("JWT_PROFILE_MAX_KEYS_PER_USER", " 5"),
            "JWT_PROFILE_MAX_KEYS_PER_USER",
        ),
        (("JWT_PROFILE_AUDIENCE", " , "), "JWT_PROFILE_AUDIENCE"),
        (
            ("JWT_PROFILE_MAX_KEYS_PER_USER", "abc"),
            "JWT_PROFILE_MAX_KEYS_PER_USER",
        ),
        (
            ("JWT_PROFILE_MAX_KEYS_PER_USER", "-1"),
            "JWT_PROFILE_MAX_KEYS_PER_USER",
        ),
        (
            ("JWT_PROFILE_ASSERTION_CACHE", "maybe"),
            "JWT_PROFILE_ASSERTION_CACHE",
        ),
        (
            ("JWT_PROFILE_ISSUER", "auth.example.com"),
            "JWT_PROFILE_ISSUER",
        ),
        (
            ("JWT_PROFILE_ISSUER", "https://auth.example.com/"),
            "JWT_PROFILE_ISSUER",
        ),
        (
            ("JWT_PROFILE_TOKEN_LIFETIME", "599"),
            "JWT_PROFILE_TOKEN_LIFETIME",
        ),
        (
            ("JWT_PROFILE_TOKEN_LIFETIME", "86401"),
            "JWT_PROFILE_TOKEN_LIFETIME",
        ),
        (
            ("JWT_PROFILE_TOKEN_LIFETIME", "1h"),
            "JWT_PROFILE_TOKEN_LIFETIME",
        ),
        (
            ("JWT_PROFILE_TOKEN_LIFETIME", "+700"),
            "JWT_PROFILE_TOKEN_LIFETIME",
        ),
        (
            ("JWT_PROFILE_ISSUER", "http://user:secret@a.example"),
            "JWT_PROFILE_ISSUER",
        ),
        (
            ("JWT_PROFILE_MASTER_KEY_FILE", "/dev/zero"),
            "JWT_PROFILE_MASTER_KEY_FILE",
        ),
        (
            ("JWT_PROFILE_MASTER_KEY_FILE", "a-file/master"),
            "JWT_PROFILE_MASTER_KEY_FILE",
        ),
        #[cfg(feature = "redis")]
        (
            ("JWT_PROFILE_REPLAY", "redis://127.0.0.1:1"),
            "cannot reach Redis",
        ),
        #[cfg(not(feature = "redis"))]
        (
            ("JWT_PROFILE_REPLAY", "redis://127.0.0.1:6379"),
            "no Redis support",
        ),
    ] {
        let mut cmd = Command::new(example("server"));
        cmd.current_dir(dir.path())
            .env("JWT_PROFILE_LISTEN", "127.0.0.1:0")
            .env(env.0, env.1);
        let (code, stderr) = run_to_exit(cmd, dir.path());
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(expect), "{env:?}: {stderr}");
    }
}

/// Runs `cmd` and returns its exit code and stderr; a server that starts
/// instead of exiting (a setting silently ignored) is killed after 20 s and
/// fails the test instead of hanging it.
fn run_to_exit(mut cmd: Command, dir: &Path) -> (Option<i32>, String) {
    let err_path = dir.join("stderr.txt");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!("still running after 20 s instead of exiting: {stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status.code(), stderr)
}

fn signer_from(path: &Path) -> jwt_profile::AssertionSigner {
    let file = jwt_profile::KeyFile::load(path).expect("key file");
    jwt_profile::AssertionSigner::from_key_file(&file).expect("signer")
}

/// Creates a key for `user` through the server's API (as admin) and returns
/// a signer for it.
async fn create_machine(
    http: &Http,
    admin: &jwt_profile::AssertionSigner,
    aud: &str,
    user: &str,
) -> jwt_profile::AssertionSigner {
    create_machine_with(http, &admin.sign(aud).expect("sign"), user).await
}

/// An assertion for `aud` with a random `jti`, valid for five minutes.
fn sign_with_jti(signer: &jwt_profile::AssertionSigner, aud: &str) -> String {
    let mut jti = [0u8; 12];
    aws_lc_rs::rand::fill(&mut jti).expect("rng");
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let now = common::unix_now();
    let claims = serde_json::json!({"iss": signer.user_id(), "sub": signer.user_id(), "aud": aud, "iat": now, "exp": now + 300, "jti": jti});
    signer.sign_claims(&claims).expect("sign")
}

/// Creates a key for `user` with `token` (an administrator's assertion).
async fn create_machine_with(http: &Http, token: &str, user: &str) -> jwt_profile::AssertionSigner {
    let res = http
        .call(
            Method::POST,
            &format!("/users/{user}/keys"),
            token,
            &[],
            "{}",
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    let file = STANDARD
        .decode(res.json()["keyDetails"].as_str().expect("keyDetails"))
        .expect("b64");
    jwt_profile::AssertionSigner::from_key_file(
        &jwt_profile::KeyFile::from_json(&file).expect("file"),
    )
    .expect("signer")
}

async fn whoami_status(
    http: &Http,
    signer: &jwt_profile::AssertionSigner,
    aud: &str,
) -> StatusCode {
    http.call(
        Method::GET,
        "/whoami",
        &signer.sign(aud).expect("sign"),
        &[],
        "",
    )
    .await
    .status
}

#[tokio::test]
async fn replay_memory_accepts_each_jti_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let aud = "https://api.test";
    let server = start(
        dir.path(),
        &[
            ("JWT_PROFILE_AUDIENCE", aud),
            ("JWT_PROFILE_REPLAY", "memory"),
        ],
    );
    let admin = signer_from(&dir.path().join("admin-key.json"));
    let http = Http::new(server.addr.parse().expect("addr"));
    let token = sign_with_jti(&admin, aud);
    let first = http.call(Method::GET, "/whoami", &token, &[], "").await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.header("content-type"), "application/json");
    assert_eq!(first.json()["userId"], "admin");
    let again = http.call(Method::GET, "/whoami", &token, &[], "").await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(again.error_id(), "TOKEN-replayed");
    // Another jti is another assertion; none at all is refused.
    assert_eq!(
        http.call(Method::GET, "/whoami", &sign_with_jti(&admin, aud), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    let bare = http
        .call(
            Method::GET,
            "/whoami",
            &admin
                .sign_claims(&serde_json::json!({"iss": "admin", "sub": "admin", "aud": aud, "iat": common::unix_now(), "exp": common::unix_now() + 300}))
                .expect("sign"),
            &[],
            "",
        )
        .await;
    assert_eq!(bare.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bare.json()["message"], "jti is required");
}

#[tokio::test]
async fn replay_is_off_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let aud = "https://api.test";
    let server = start(dir.path(), &[("JWT_PROFILE_AUDIENCE", aud)]);
    let admin = signer_from(&dir.path().join("admin-key.json"));
    let http = Http::new(server.addr.parse().expect("addr"));
    let token = sign_with_jti(&admin, aud);
    for _ in 0..2 {
        assert_eq!(
            http.call(Method::GET, "/whoami", &token, &[], "")
                .await
                .status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn max_keys_per_user_is_read_and_0_means_no_limit() {
    let aud = "https://api.test";
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(
        dir.path(),
        &[
            ("JWT_PROFILE_AUDIENCE", aud),
            ("JWT_PROFILE_STORE", "memory"),
            ("JWT_PROFILE_MAX_KEYS_PER_USER", "2"),
        ],
    );
    let admin = signer_from(&dir.path().join("admin-key.json"));
    let http = Http::new(server.addr.parse().expect("addr"));
    create_machine(&http, &admin, aud, "bot").await;
    create_machine(&http, &admin, aud, "bot").await;
    let third = http
        .call(
            Method::POST,
            "/users/bot/keys",
            &admin.sign(aud).expect("sign"),
            &[],
            "{}",
        )
        .await;
    assert_eq!(
        third.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        third.body
    );
    assert_eq!(third.code(), 8);
    // Another user has a budget of its own.
    create_machine(&http, &admin, aud, "other").await;
    drop(server);

    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(
        dir.path(),
        &[
            ("JWT_PROFILE_AUDIENCE", aud),
            ("JWT_PROFILE_STORE", "memory"),
            ("JWT_PROFILE_MAX_KEYS_PER_USER", "0"),
        ],
    );
    let admin = signer_from(&dir.path().join("admin-key.json"));
    let http = Http::new(server.addr.parse().expect("addr"));
    for _ in 0..3 {
        create_machine(&http, &admin, aud, "bot").await;
    }
}

#[tokio::test]
async fn sqlite_is_the_default_and_keys_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let aud = "https://api.test";
    let env = [("JWT_PROFILE_AUDIENCE", aud)];
    let first = start(dir.path(), &env);
    assert!(
        dir.path().join("jwt-profile.db").exists(),
        "the default store is sqlite://jwt-profile.db"
    );
    let admin = signer_from(&dir.path().join("admin-key.json"));
    let http = Http::new(first.addr.parse().expect("addr"));
    let bot = create_machine(&http, &admin, aud, "ci-bot").await;
    assert_eq!(whoami_status(&http, &bot, aud).await, StatusCode::OK);
    drop(first); // SIGKILL: no clean shutdown

    let key_file_before = std::fs::read(dir.path().join("admin-key.json")).expect("read");
    let second = start(dir.path(), &env);
    let http = Http::new(second.addr.parse().expect("addr"));
    assert_eq!(
        whoami_status(&http, &bot, aud).await,
        StatusCode::OK,
        "machine key survived"
    );
    assert_eq!(
        whoami_status(&http, &admin, aud).await,
        StatusCode::OK,
        "admin key survived"
    );
    let key_file_after = std::fs::read(dir.path().join("admin-key.json")).expect("read");
    assert_eq!(
        key_file_before, key_file_after,
        "a valid admin key is not replaced"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_database() {
    let Some((schema, _)) = common::backends::postgres_schema().await else {
        return;
    };
    let url = format!(
        "{}?options=-c%20search_path%3D{schema}",
        common::backends::postgres_url()
    );
    let aud = "https://api.test";
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("JWT_PROFILE_STORE", url.as_str()),
        ("JWT_PROFILE_AUDIENCE", aud),
    ];
    let a = start(dir.path(), &env);
    let b_dir = tempfile::tempdir().expect("tempdir");
    let b = start_replica(b_dir.path(), dir.path(), &env);
    assert!(
        !b_dir.path().join("admin-key.json").exists(),
        "B found the admin key A created"
    );
    let admin = signer_from(&dir.path().join("admin-key.json"));
    let (http_a, http_b) = (
        Http::new(a.addr.parse().expect("a")),
        Http::new(b.addr.parse().expect("b")),
    );

    let bot = create_machine(&http_a, &admin, aud, "ci-bot").await;
    assert_eq!(
        whoami_status(&http_b, &bot, aud).await,
        StatusCode::OK,
        "B sees A's new key at once"
    );

    let path = format!("/users/ci-bot/keys/{}", bot.key_id());
    let removed = http_a
        .call(
            Method::DELETE,
            &path,
            &admin.sign(aud).expect("sign"),
            &[],
            "",
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK);
    let started = std::time::Instant::now();
    let mut refused = false;
    while started.elapsed() < std::time::Duration::from_secs(1) {
        if whoami_status(&http_b, &bot, aud).await == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
    }
    assert!(refused, "B still accepted the removed key after 1 s");

    let kept = create_machine(&http_b, &admin, aud, "kept").await;
    drop(a);
    drop(b);
    let again = start(dir.path(), &env);
    let http = Http::new(again.addr.parse().expect("addr"));
    assert_eq!(
        whoami_status(&http, &kept, aud).await,
        StatusCode::OK,
        "keys survive a restart on PostgreSQL"
    );
    drop(again);
    common::backends::drop_schema(&schema).await;
}

/// Two example servers on one PostgreSQL database and one Redis: of 100
/// concurrent copies of one assertion spread over both, exactly one is
/// accepted.
#[cfg(all(feature = "postgres", feature = "redis"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_replay_protection_through_redis() {
    let redis = std::env::var("JWT_PROFILE_TEST_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    if let Err(e) = jwt_profile::replay::RedisReplayStore::connect(&redis).await {
        let required = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("JWT_PROFILE_TEST_REDIS").is_ok();
        assert!(
            !required,
            "Redis at {redis} is required here but unreachable: {e}"
        );
        eprintln!(
            "SKIPPED: no Redis at {redis} ({e}); set JWT_PROFILE_TEST_REDIS to run this test"
        );
        return;
    }
    let Some((schema, _)) = common::backends::postgres_schema().await else {
        return;
    };
    let url = format!(
        "{}?options=-c%20search_path%3D{schema}",
        common::backends::postgres_url()
    );
    let aud = "https://api.test";
    let env = [
        ("JWT_PROFILE_STORE", url.as_str()),
        ("JWT_PROFILE_AUDIENCE", aud),
        ("JWT_PROFILE_REPLAY", redis.as_str()),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(dir.path(), &env);
    let b_dir = tempfile::tempdir().expect("tempdir");
    let b = start_replica(b_dir.path(), dir.path(), &env);
    let admin = signer_from(&dir.path().join("admin-key.json"));
    let servers = [
        Http::new(a.addr.parse().expect("a")),
        Http::new(b.addr.parse().expect("b")),
    ];
    let bot = create_machine_with(&servers[0], &sign_with_jti(&admin, aud), "bot").await;
    let token = sign_with_jti(&bot, aud);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let http = servers[i % 2].clone();
            let token = token.clone();
            tokio::spawn(async move { http.call(Method::GET, "/whoami", &token, &[], "").await })
        })
        .collect();
    let (mut ok, mut replayed) = (0, 0);
    for t in tasks {
        let res = t.await.expect("join");
        match res.status {
            StatusCode::OK => ok += 1,
            StatusCode::UNAUTHORIZED if res.error_id() == "TOKEN-replayed" => replayed += 1,
            other => panic!("unexpected {other}: {:?}", res.body),
        }
    }
    assert_eq!((ok, replayed), (1, 99));
    drop(a);
    drop(b);
    common::backends::drop_schema(&schema).await;
}

/// Runs the server on `store`, asserts exit code 2, returns its stderr.
#[cfg(feature = "postgres")]
fn exit_2_with_store(dir: &Path, store: &str) -> String {
    let out = Command::new(example("server"))
        .current_dir(dir)
        .env("JWT_PROFILE_LISTEN", "127.0.0.1:0")
        .env("JWT_PROFILE_STORE", store)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[cfg(feature = "postgres")]
#[test]
fn unreachable_postgres_is_a_message_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = exit_2_with_store(dir.path(), "postgres://postgres:s3cr3t@127.0.0.1:1/test");
    assert!(
        !stderr.contains("s3cr3t"),
        "the password is printed: {stderr}"
    );
    assert!(
        stderr.contains("cannot reach the PostgreSQL store"),
        "{stderr}"
    );
}

/// With `grpc`, the example server answers REST, gRPC (h2c) and gRPC-web on
/// its one address, all behind the same layer.
#[cfg(feature = "grpc")]
#[tokio::test]
async fn the_example_server_serves_rest_and_grpc_on_one_port() {
    use jwt_profile::grpc::pb::machine_key_service_client::MachineKeyServiceClient;
    use jwt_profile::grpc::pb::{AddKeyRequest, ListKeysRequest, RemoveKeyRequest};

    fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
        req
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &[]);
    let aud = format!("http://{}", server.addr);
    let admin = signer_from(&dir.path().join("admin-key.json"));
    let channel = tonic::transport::Channel::from_shared(aud.clone())
        .expect("url")
        .connect()
        .await
        .expect("h2c connection");
    let mut grpc = MachineKeyServiceClient::new(channel);

    let added = grpc
        .add_key(authed(
            AddKeyRequest {
                user_id: "grpc-bot".into(),
                ..Default::default()
            },
            &admin.sign(&aud).expect("sign"),
        ))
        .await
        .expect("AddKey")
        .into_inner();
    // The key file it returned logs in over REST on the same port.
    let file = jwt_profile::KeyFile::from_json(&added.key_details).expect("key file");
    let bot = jwt_profile::AssertionSigner::from_key_file(&file).expect("signer");
    let http = Http::new(server.addr.parse().expect("addr"));
    let token = bot.sign(&aud).expect("sign");
    let who = http.call(Method::GET, "/whoami", &token, &[], "").await;
    assert_eq!(who.status, StatusCode::OK, "{who:?}");
    assert_eq!(who.json()["keyId"], added.key_id);

    // The bot manages its own keys over gRPC with its own assertion.
    let page = grpc
        .list_keys(authed(
            ListKeysRequest {
                user_id: "grpc-bot".into(),
                query: None,
            },
            &token,
        ))
        .await
        .expect("ListKeys")
        .into_inner();
    assert_eq!(page.result.len(), 1);
    grpc.remove_key(authed(
        RemoveKeyRequest {
            user_id: "grpc-bot".into(),
            key_id: added.key_id.clone(),
        },
        &token,
    ))
    .await
    .expect("RemoveKey");
    let refused = grpc
        .list_keys(authed(
            ListKeysRequest {
                user_id: "grpc-bot".into(),
                query: None,
            },
            &token,
        ))
        .await
        .expect_err("removed key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // REST still answers on the same port, over HTTP/1.1, and so does the
    // proto file, open to anyone who wants to generate a client.
    assert_eq!(
        http.send(Method::GET, "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    let proto = http
        .send(
            Method::GET,
            "/proto/jwtprofile/v1/machine_keys.proto",
            &[],
            "",
        )
        .await;
    assert_eq!(proto.status, StatusCode::OK);
    assert_eq!(
        proto.body,
        std::fs::read("proto/jwtprofile/v1/machine_keys.proto").expect("proto file")
    );
}

/// The example that puts the layer in front of a tonic service of its own.
#[cfg(feature = "grpc")]
#[test]
fn the_grpc_service_example_refuses_then_greets() {
    let out = Command::new(example("grpc_service"))
        .output()
        .expect("run grpc_service");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("without an assertion: Unauthenticated: no bearer token in the request"),
        "{stdout}"
    );
    assert!(
        stdout.contains("with an assertion: hello ci-bot of default (signed)"),
        "{stdout}"
    );
}

/// `examples/hyper_service.rs`, built as a user would with
/// `--no-default-features` (no axum, no SQLite) into a target directory of
/// its own, and run: the layer in front of a plain hyper 1 service.
#[tokio::test]
async fn the_hyper_service_example_builds_without_default_features_and_refuses_then_greets() {
    let outer = example("server");
    let target = outer
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .join("no-default-features");
    let build = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--no-default-features",
            "--example",
            "hyper_service",
        ])
        .status()
        .expect("cargo build");
    assert!(
        build.success(),
        "the example does not build without default features"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("bot-key.json");
    let mut child = Command::new(target.join("debug/examples/hyper_service"))
        .arg(&key_path)
        .env("JWT_PROFILE_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let server = Server {
        addr: line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string(),
        child,
    };
    let http = Http::new(server.addr.parse().expect("addr"));
    let anonymous = http.send(Method::GET, "/", &[], "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.header("www-authenticate").starts_with("Bearer"));
    let signer = signer_from(&key_path);
    let token = signer
        .sign(&format!("http://{}", server.addr))
        .expect("sign");
    let ok = http.call(Method::GET, "/", &token, &[], "").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "hello ci-bot\n");
    let bad = http.call(Method::GET, "/", "a.b.c", &[], "").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.error_id(), "TOKEN-malformed");
}

/// A PostgreSQL password never reaches stderr, wherever the URL carries it.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn store_passwords_are_never_printed() {
    let Some((schema, _)) = common::backends::postgres_schema().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::backends::postgres_url();
    let with_userinfo = base.replacen("postgres@", "postgres:s3cr3t-a@", 1);
    for url in [
        format!("{base}?options=-c%20search_path%3D{schema}&password=s3cr3t-q"),
        format!("{with_userinfo}?options=-c%20search_path%3D{schema}"),
    ] {
        let mut child = Command::new(example("server"))
            .current_dir(dir.path())
            .env("JWT_PROFILE_LISTEN", "127.0.0.1:0")
            .env("JWT_PROFILE_STORE", &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert!(line.starts_with("listening on"), "{line:?}");
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("key store: postgres://"), "{stderr}");
        assert!(
            !stderr.contains("s3cr3t"),
            "a password is printed: {stderr}"
        );
    }
    // A keyword string is not a store URL; the message hides its password.
    let stderr = exit_2_with_store(dir.path(), "host=127.0.0.1 password=s3cr3t-k dbname=test");
    assert!(
        !stderr.contains("s3cr3t"),
        "a password is printed: {stderr}"
    );
    common::backends::drop_schema(&schema).await;
}

#[tokio::test]
async fn the_token_endpoint_logs_a_machine_in_with_the_settings_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(
        dir.path(),
        &[
            ("JWT_PROFILE_TOKEN_LIFETIME", "900"),
            ("JWT_PROFILE_MASTER_KEY_FILE", "secrets/master"),
        ],
    );
    // Created on first start, 32 bytes, mode 0600.
    let master = dir.path().join("secrets/master");
    let meta = std::fs::metadata(&master).expect("master key created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let issuer = format!("http://{}", server.addr);
    let http = Http::new(server.addr.parse().expect("addr"));
    let discovery = http
        .send(Method::GET, "/.well-known/openid-configuration", &[], "")
        .await
        .json();
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(
        discovery["token_endpoint"],
        format!("{issuer}/oauth/v2/token")
    );
    let whoami = format!("{issuer}/whoami");
    let (ok, token) = machine_login(
        dir.path(),
        &[
            "--token-endpoint",
            "--print-token",
            "admin-key.json",
            &whoami,
        ],
    );
    assert!(ok, "{token}");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        900
    );
    assert_eq!(claims["iss"], issuer.as_str());
    let (ok, out) = machine_login(dir.path(), &["--token-endpoint", "admin-key.json", &whoami]);
    assert!(ok, "{out}");
    assert!(out.contains("\"kind\":\"access_token\""), "{out}");
    assert!(out.contains("\"userId\":\"admin\""), "{out}");
}

#[test]
fn a_missing_or_wrong_master_key_over_sealed_keys_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // First start: the master key and the first signing key are made.
    drop(start(dir.path(), &[]));
    let master = dir.path().join("master-key");
    let original = std::fs::read(&master).expect("master key");
    // Missing: never a new key over sealed ones.
    std::fs::remove_file(&master).expect("rm");
    let mut cmd = Command::new(example("server"));
    cmd.current_dir(dir.path())
        .env("JWT_PROFILE_LISTEN", "127.0.0.1:0");
    let (code, stderr) = run_to_exit(cmd, dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
    assert!(!master.exists(), "no new master key was written");
    // Wrong: refused too.
    std::fs::write(&master, [7u8; 32]).expect("write");
    let mut cmd = Command::new(example("server"));
    cmd.current_dir(dir.path())
        .env("JWT_PROFILE_LISTEN", "127.0.0.1:0");
    let (code, stderr) = run_to_exit(cmd, dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("does not open"), "{stderr}");
    // Not a key at all.
    std::fs::write(&master, "short").expect("write");
    let mut cmd = Command::new(example("server"));
    cmd.current_dir(dir.path())
        .env("JWT_PROFILE_LISTEN", "127.0.0.1:0");
    let (code, stderr) = run_to_exit(cmd, dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("JWT_PROFILE_MASTER_KEY_FILE"), "{stderr}");
    // The right one (as base64 text, as secret stores hand it out) starts.
    std::fs::write(&master, STANDARD.encode(&original)).expect("write");
    drop(start(dir.path(), &[]));
}

/// JSON logs on stderr (stdout keeps the `listening on` line) and, with the
/// `metrics` feature, `/metrics` in the Prometheus text format.
#[tokio::test]
async fn json_logs_and_prometheus_metrics_from_the_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let mut cmd = Command::new(example("server"));
    cmd.current_dir(dir.path())
        .env("JWT_PROFILE_LISTEN", "127.0.0.1:0")
        .env("JWT_PROFILE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = cmd.spawn().expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let server = Server { child, addr };
    let http = Http::new(server.addr.parse().expect("addr"));
    let whoami = format!("http://{}/whoami", server.addr);
    let (ok, _) = machine_login(dir.path(), &["admin-key.json", &whoami]);
    assert!(ok);
    let (ok, _) = machine_login(dir.path(), &["--token-endpoint", "admin-key.json", &whoami]);
    assert!(ok);
    assert_eq!(
        http.call(Method::GET, "/whoami", "x.y.z", &[], "")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let text = std::fs::read_to_string(&log).expect("log");
    // Every line, start-up messages included, is one JSON object.
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        events.iter().any(|e| e["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("key store: "))),
        "{text}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["target"] == "jwt_profile::audit" && e["fields"]["action"] == "create"),
        "{text}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["action"] == "issue_token"),
        "{text}"
    );
    #[cfg(feature = "metrics")]
    {
        let answer = http.send(Method::GET, "/metrics", &[], "").await;
        assert_eq!(answer.status, StatusCode::OK);
        let body = String::from_utf8(answer.body.to_vec()).expect("utf8");
        let samples = crate::observability::parse_prometheus(&body);
        let count = |kind: &str, outcome: &str| -> f64 {
            samples
                .iter()
                .filter(|(n, l, _)| {
                    n == "jwt_profile_verifications_total"
                        && l.get("kind").map(String::as_str) == Some(kind)
                        && l.get("outcome").map(String::as_str) == Some(outcome)
                })
                .map(|(_, _, v)| *v)
                .sum()
        };
        assert!(count("assertion", "accepted") >= 2.0, "{body}");
        assert!(count("access_token", "accepted") >= 1.0, "{body}");
        assert!(count("assertion", "refused") >= 1.0, "{body}");
        assert!(
            body.contains("# TYPE jwt_profile_verification_duration_seconds histogram"),
            "{body}"
        );
        assert!(
            samples
                .iter()
                .any(|(n, _, v)| n == "jwt_profile_tokens_issued_total" && *v >= 1.0)
        );
    }
}

/// A key file path that cannot be written is found before the admin key is
/// made: no key is left in the store that nobody holds.
#[test]
fn an_unwritable_admin_key_file_leaves_no_admin_key_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("adir")).expect("dir");
    let mut cmd = Command::new(example("server"));
    cmd.current_dir(dir.path())
        .env("JWT_PROFILE_LISTEN", "127.0.0.1:0")
        .env("JWT_PROFILE_ADMIN_KEY_FILE", "adir");
    let (code, stderr) = run_to_exit(cmd, dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot write"), "{stderr}");
    // Restarted with a good path, the server makes the admin a key and
    // writes its file.
    drop(start(dir.path(), &[]));
    assert!(dir.path().join("admin-key.json").exists());
}
