//! The token endpoint over a real server: discovery, the jwt-bearer grant
//! and its errors, scopes, lifetimes, the JWKS checked by an independent
//! library, revocation of access tokens, rotation, and hostile tokens.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use jwt_profile::http::{KeyApi, TokenApi};
use jwt_profile::policy::DefaultPolicy;
use jwt_profile::store::{CachedStore, KeyStore, MemoryStore, SigningKeyStore};
use jwt_profile::token::{IssuerError, IssuerSettings, MasterKey, TokenIssuer};
use jwt_profile::{
    AssertionSigner, CreateKey, JwtProfileLayer, KeyService, ManualClock, Principal, Validation,
    Verifier,
};
use serde_json::{Value, json};

use crate::common::{Answer, Http, ORG};

const FORM: &str = "application/x-www-form-urlencoded";
const GRANT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
const SERVICE: &str = "https://api.example.com";

/// A running token endpoint and protected service on one address.
pub struct TokenApp {
    pub http: Http,
    pub issuer_name: String,
    pub keys: KeyService,
    pub store: CachedStore,
    pub clock: ManualClock,
    pub issuer: TokenIssuer,
    pub verifier: Verifier,
}

async fn whoami(who: Principal) -> axum::Json<Value> {
    axum::Json(json!({
        "userId": who.user_id, "orgId": who.org_id, "keyId": who.key_id,
        "kind": who.kind.as_str(), "scopes": who.scopes,
    }))
}

/// The app over `keys` and `signing` (one backend, or two), with `master`.
pub async fn token_app_on(
    keys: Arc<dyn KeyStore>,
    signing: Arc<dyn SigningKeyStore>,
    master: MasterKey,
    clock: ManualClock,
) -> TokenApp {
    token_replica(keys, signing, master, clock, None).await
}

/// The app, named `issuer` (replicas of one issuer share its name), or its
/// own address.
pub async fn token_replica(
    keys: Arc<dyn KeyStore>,
    signing: Arc<dyn SigningKeyStore>,
    master: MasterKey,
    clock: ManualClock,
    issuer: Option<&str>,
) -> TokenApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let issuer_name = issuer.map_or_else(|| format!("http://{addr}"), String::from);
    let store = CachedStore::new(keys);
    let verifier =
        Verifier::new(store.clone(), Validation::new([SERVICE])).with_clock(clock.clone());
    let issuer = TokenIssuer::open(
        IssuerSettings::new(&issuer_name),
        signing,
        master,
        &verifier,
    )
    .await
    .expect("issuer");
    let verifier = verifier.with_access_tokens(issuer.access_tokens());
    let keys = KeyService::new(store.clone())
        .with_clock(clock.clone())
        .with_policy(DefaultPolicy::new().with_admin(ORG, "admin"));
    let protected = Router::new()
        .route("/whoami", get(whoami))
        .merge(KeyApi::new(keys.clone()).router())
        .layer(JwtProfileLayer::new(verifier.clone()));
    let app = Router::new()
        .merge(TokenApi::new(issuer.clone()).router())
        .merge(protected);
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    TokenApp {
        http: Http::new(addr),
        issuer_name,
        keys,
        store,
        clock,
        issuer,
        verifier,
    }
}

pub async fn token_app() -> TokenApp {
    let backend = Arc::new(MemoryStore::new());
    token_app_over(backend.clone(), backend).await
}

/// The app over `keys` and `signing`, with a new master key, on the
/// system's time.
pub async fn token_app_over(
    keys: Arc<dyn KeyStore>,
    signing: Arc<dyn SigningKeyStore>,
) -> TokenApp {
    token_app_on(
        keys,
        signing,
        MasterKey::generate().expect("master"),
        ManualClock::now_system(),
    )
    .await
}

impl TokenApp {
    /// A machine with a server-generated key in organization `default`.
    pub async fn machine(&self, user: &str) -> AssertionSigner {
        self.machine_until(user, None).await
    }

    pub async fn machine_until(
        &self,
        user: &str,
        expiration: Option<chrono::DateTime<chrono::Utc>>,
    ) -> AssertionSigner {
        let me = Principal::new(user, ORG, "-");
        let created = self
            .keys
            .create(
                &me,
                None,
                user,
                CreateKey {
                    expiration_date: expiration,
                    ..CreateKey::default()
                },
            )
            .await
            .expect("create key");
        AssertionSigner::from_key_file(&created.key_file.expect("key file")).expect("signer")
    }

    /// An assertion for the issuer, at the app's clock.
    pub fn assertion(&self, signer: &AssertionSigner) -> String {
        let now = self.clock.now_unix();
        signer
            .sign_at(&self.issuer_name, now, now + 300)
            .expect("sign")
    }

    pub async fn exchange_body(&self, body: &str) -> Answer {
        self.http
            .post("/oauth/v2/token")
            .header("content-type", FORM)
            .body(body.to_string())
            .send()
            .await
    }

    pub async fn exchange(&self, assertion: &str, scope: Option<&str>) -> Answer {
        let mut body = format!("grant_type={GRANT}&assertion={assertion}");
        if let Some(scope) = scope {
            body.push_str("&scope=");
            body.push_str(&scope.replace(' ', "+").replace(':', "%3A"));
        }
        self.exchange_body(&body).await
    }

    /// An access token for `signer`.
    pub async fn access_token(&self, signer: &AssertionSigner) -> String {
        let answer = self.exchange(&self.assertion(signer), Some("openid")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        answer.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    pub async fn whoami(&self, token: &str) -> Answer {
        self.http.get("/whoami").token(token).send().await
    }
}

trait UnixNow {
    fn now_unix(&self) -> u64;
}

impl UnixNow for ManualClock {
    fn now_unix(&self) -> u64 {
        use jwt_profile::Clock;
        u64::try_from(self.now().timestamp()).expect("after 1970")
    }
}

/// The header and claims of a JWT, read without checking anything.
fn parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut it = token.split('.');
    let mut next = || {
        serde_json::from_slice(&b64.decode(it.next().expect("segment")).expect("b64"))
            .expect("json")
    };
    (next(), next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_names_the_issuer_byte_for_byte() {
    let app = token_app().await;
    let i = &app.issuer_name;
    let expected = json!({
        "issuer": i,
        "token_endpoint": format!("{i}/oauth/v2/token"),
        "jwks_uri": format!("{i}/oauth/v2/keys"),
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid"],
    });
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let answer = app.http.get(path).send().await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.json(), expected, "{path}");
        // Byte for byte, as Go clients compare it.
        let text = String::from_utf8_lossy(&answer.body).to_string();
        assert!(text.contains(&format!("\"issuer\":\"{i}\"")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_is_exchanged_for_an_access_token_the_layer_accepts() {
    let app = token_app().await;
    let bot = app.machine("ci-bot").await;
    // The issuer and the token endpoint URL are both accepted audiences.
    for aud in [
        app.issuer_name.clone(),
        format!("{}/oauth/v2/token", app.issuer_name),
    ] {
        let now = app.clock.now_unix();
        let assertion = bot.sign_at(&aud, now, now + 300).expect("sign");
        let answer = app.exchange(&assertion, Some("openid")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.header("cache-control"), "no-store");
        assert_eq!(answer.header("pragma"), "no-cache");
        let body = answer.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["scope"], "openid");
        let token = body["access_token"].as_str().expect("token");
        let (header, claims) = parts(token);
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], "RS256");
        assert_eq!(claims["iss"], app.issuer_name.as_str());
        assert_eq!(claims["sub"], "ci-bot");
        assert_eq!(claims["client_id"], "ci-bot");
        assert_eq!(claims["aud"], SERVICE);
        assert_eq!(claims["key_id"], bot.key_id());
        assert_eq!(claims["urn:zitadel:iam:user:resourceowner:id"], ORG);
        assert_eq!(claims["scope"], "openid");
        assert_eq!(
            claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
            3600
        );
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 22));
        let me = app.whoami(token).await;
        assert_eq!(me.status, 200, "{:?}", me.body);
        let me = me.json();
        assert_eq!(me["userId"], "ci-bot");
        assert_eq!(me["orgId"], ORG);
        assert_eq!(me["keyId"], bot.key_id());
        assert_eq!(me["kind"], "access_token");
        assert_eq!(me["scopes"], json!(["openid"]));
    }
    // The assertion itself is not accepted by the layer (its audience is
    // the issuer, not the service).
    let assertion = app.assertion(&bot);
    assert_eq!(app.whoami(&assertion).await.status, 401);
}

/// A verifier made from another by a builder (here `with_access_tokens`)
/// shares nothing with it that could accept a token: an access token
/// remembered by the verifier that accepts them is still refused by the
/// one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_without_access_tokens_refuses_one_its_sibling_remembered() {
    use jwt_profile::{Reason, VerifyError};
    let app = token_app().await;
    let bot = app.machine("ci-bot").await;
    let token = app.access_token(&bot).await;
    let plain =
        Verifier::new(app.store.clone(), Validation::new([SERVICE])).with_clock(app.clock.clone());
    let with_tokens = plain.clone().with_access_tokens(app.issuer.access_tokens());
    let refused = |r: Result<Principal, VerifyError>| {
        assert!(
            matches!(r, Err(VerifyError::Invalid(Reason::TokenType))),
            "{r:?}"
        )
    };
    refused(plain.verify(&token).await);
    let who = with_tokens.verify(&token).await.expect("accepted");
    assert_eq!(&*who.user_id, "ci-bot");
    // Remembered by `with_tokens`; a repeat there is still accepted.
    with_tokens.verify(&token).await.expect("accepted again");
    refused(plain.verify(&token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_row_answers_as_rfc_6749_says() {
    let app = token_app().await;
    let bot = app.machine("bot").await;
    let good = app.assertion(&bot);
    let now = app.clock.now_unix();
    let expired = bot
        .sign_at(&app.issuer_name, now - 7200, now - 3600)
        .expect("sign");
    let wrong_aud = bot.sign_at(SERVICE, now, now + 300).expect("sign");
    let mut forged = good.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let big = format!("grant_type={GRANT}&assertion={}", "a".repeat(17 * 1024));
    let g = format!("grant_type={GRANT}");
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "text/plain",
            format!("{g}&assertion={good}"),
            400,
            "invalid_request",
            "Content-Type",
        ),
        (
            "application/json",
            format!("{g}&assertion={good}"),
            400,
            "invalid_request",
            "Content-Type",
        ),
        (
            FORM,
            format!("assertion={good}"),
            400,
            "invalid_request",
            "grant_type is missing",
        ),
        (
            FORM,
            g.clone(),
            400,
            "invalid_request",
            "assertion is missing",
        ),
        (
            FORM,
            format!("{g}&{g}&assertion={good}"),
            400,
            "invalid_request",
            "grant_type is given more than once",
        ),
        (
            FORM,
            format!("{g}&assertion={good}&assertion={good}"),
            400,
            "invalid_request",
            "assertion is given more than once",
        ),
        (
            FORM,
            format!("{g}&assertion={good}&scope=openid&scope=openid"),
            400,
            "invalid_request",
            "scope is given more than once",
        ),
        (FORM, big, 400, "invalid_request", "16 KiB"),
        (
            FORM,
            format!("grant_type=client_credentials&assertion={good}"),
            400,
            "unsupported_grant_type",
            "jwt-bearer",
        ),
        (
            FORM,
            format!("{g}&assertion={expired}"),
            400,
            "invalid_grant",
            "token expired",
        ),
        (
            FORM,
            format!("{g}&assertion={wrong_aud}"),
            400,
            "invalid_grant",
            "audience not accepted",
        ),
        (
            FORM,
            format!("{g}&assertion={forged}"),
            400,
            "invalid_grant",
            "invalid signature",
        ),
        (
            FORM,
            format!("{g}&assertion=not.a.token"),
            400,
            "invalid_grant",
            "not canonical base64url",
        ),
        // Python's library sends client_id=None; unknown parameters are ignored.
        (
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            format!("{g}&assertion={good}&client_id=None&x=1"),
            200,
            "",
            "",
        ),
    ];
    for (content_type, body, status, error, description) in cases {
        let answer = app
            .http
            .post("/oauth/v2/token")
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await;
        let shown = &body[..body.len().min(80)];
        assert_eq!(
            answer.status, status,
            "{content_type} {shown}: {:?}",
            answer.body
        );
        assert_eq!(answer.header("cache-control"), "no-store", "{shown}");
        assert_eq!(answer.header("pragma"), "no-cache", "{shown}");
        if status != 200 {
            let j = answer.json();
            assert_eq!(j["error"], error, "{shown}: {j}");
            let text = j["error_description"].as_str().unwrap_or_default();
            assert!(text.contains(description), "{shown}: {text}");
        }
    }
    // Another method on the path.
    let answer = app.http.get("/oauth/v2/token").send().await;
    assert_eq!(answer.status, 405);
    // Garbage never answers 500.
    for body in [
        "%",
        "%%%%",
        "=&=&",
        "assertion",
        "grant_type=%FF%FE&assertion=%00",
        "\u{0}\u{1}",
    ] {
        let answer = app.exchange_body(body).await;
        assert_eq!(answer.status, 400, "{body:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_answers_503_temporarily_unavailable() {
    let outage = crate::common::Outage::new();
    let signing = Arc::new(MemoryStore::new());
    let app = token_app_over(outage.clone(), signing).await;
    let bot = app.machine("bot").await;
    outage.set_down(true);
    app.store.invalidate(bot.key_id()).await;
    let answer = app.exchange(&app.assertion(&bot), None).await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.json()["error"], "temporarily_unavailable");
    assert_eq!(answer.header("cache-control"), "no-store");
    assert!(!answer.header("retry-after").is_empty());
    outage.set_down(false);
    assert_eq!(app.exchange(&app.assertion(&bot), None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_grant_openid_and_project_audiences_only() {
    let app = token_app().await;
    let bot = app.machine("bot").await;
    let answer = app
        .exchange(
            &app.assertion(&bot),
            Some("profile urn:zitadel:iam:org:project:id:4711:aud openid email"),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(
        body["scope"],
        "urn:zitadel:iam:org:project:id:4711:aud openid"
    );
    let token = body["access_token"].as_str().expect("token");
    let (_, claims) = parts(token);
    assert_eq!(claims["aud"], json!([SERVICE, "4711"]));
    let me = app.whoami(token).await.json();
    assert_eq!(
        me["scopes"],
        json!(["urn:zitadel:iam:org:project:id:4711:aud", "openid"])
    );
    // No scope at all: nothing granted, still a token.
    let answer = app.exchange(&app.assertion(&bot), None).await;
    assert_eq!(answer.json()["scope"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_never_outlives_its_machine_key() {
    let app = token_app().await;
    let until = jwt_profile::Clock::now(&app.clock) + chrono::TimeDelta::seconds(900);
    let bot = app.machine_until("short", Some(until)).await;
    let answer = app.exchange(&app.assertion(&bot), None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body = answer.json();
    let token = body["access_token"].as_str().expect("token");
    let (_, claims) = parts(token);
    assert!(body["expires_in"].as_i64().expect("expires_in") <= 900);
    assert_eq!(claims["exp"].as_i64(), Some(until.timestamp()));
    // Past the key's expiration the token is refused, whatever its exp says.
    app.clock.advance_secs(901);
    let refused = app.whoami(token).await;
    assert_eq!(refused.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_library_checks_access_tokens_through_the_jwks() {
    let app = token_app().await;
    let bot = app.machine("bot").await;
    let token = app.access_token(&bot).await;
    let answer = app.http.get("/oauth/v2/keys").send().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("cache-control"), "public, max-age=300");
    let jwks = answer.json();
    for key in jwks["keys"].as_array().expect("keys") {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "private part {private} published"
            );
        }
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "RS256");
        assert_eq!(key["e"], "AQAB");
    }
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).expect("a JWK set");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    let jwk = set
        .find(header.kid.as_deref().expect("kid"))
        .expect("published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[SERVICE]);
    validation.set_issuer(&[app.issuer_name.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("valid");
    assert_eq!(data.claims["sub"], "bot");
    assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
    // A changed byte fails the independent check too.
    let mut bad = token.clone();
    let at = bad.len() - 10;
    bad.replace_range(at..at + 1, if &bad[at..at + 1] == "A" { "B" } else { "A" });
    assert!(jsonwebtoken::decode::<Value>(&bad, &key, &validation).is_err());
}

/// Removing a machine key refuses its access tokens at once, on the
/// replica that removed it, through the cache of checked tokens too.
async fn removal_revokes(keys: Arc<dyn KeyStore>, signing: Arc<dyn SigningKeyStore>) {
    let app = token_app_over(keys, signing).await;
    let bot = app.machine("bot").await;
    let token = app.access_token(&bot).await;
    // Twice: the second answer comes from the cache of checked tokens.
    assert_eq!(app.whoami(&token).await.status, 200);
    assert_eq!(app.whoami(&token).await.status, 200);
    let me = Principal::new("bot", ORG, "-");
    app.keys
        .remove(&me, None, "bot", bot.key_id())
        .await
        .expect("remove");
    let refused = app.whoami(&token).await;
    assert_eq!(refused.status, 401, "{:?}", refused.body);
    assert_eq!(refused.error_id(), "TOKEN-unknown-key");
    // And no new token is issued for it.
    let answer = app.exchange(&app.assertion(&bot), None).await;
    assert_eq!(answer.json()["error"], "invalid_grant");
}

/// A key id reused after a removal (a custom id generator may: here a
/// machine rotating its key under one fixed id, 30 s later) does not bring
/// the removed key's access tokens back: a token names the stored key it
/// was issued for by its sequence. (An outside review found it accepted
/// again while the check compared the key's creation with the token's
/// `iat` within the leeway.) A token for the new key is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_id_reused_after_a_removal_does_not_revive_its_access_tokens() {
    let app = token_app().await;
    let keys = app
        .keys
        .clone()
        .with_id_generator(|| "bot-primary".to_string());
    let me = Principal::new("bot", ORG, "-");
    let created = keys
        .create(&me, None, "bot", CreateKey::default())
        .await
        .expect("create");
    let old = AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
    let token = app.access_token(&old).await;
    assert_eq!(app.whoami(&token).await.status, 200);
    keys.remove(&me, None, "bot", "bot-primary")
        .await
        .expect("remove");
    assert_eq!(app.whoami(&token).await.status, 401, "revoked");
    app.clock.advance_secs(30);
    let created = keys
        .create(&me, None, "bot", CreateKey::default())
        .await
        .expect("create again");
    let answer = app.whoami(&token).await;
    assert_eq!(
        answer.status, 401,
        "the removed key's access token is accepted again: {:?}",
        answer.body
    );
    assert_eq!(answer.error_id(), "TOKEN-unknown-key");
    // An assertion of the removed key buys nothing from the new one.
    let refused = app.exchange(&app.assertion(&old), None).await;
    assert_eq!(refused.json()["error"], "invalid_grant");
    let new = AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
    let token = app.access_token(&new).await;
    assert_eq!(app.whoami(&token).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_machine_key_revokes_its_access_tokens_in_memory() {
    let backend = Arc::new(MemoryStore::new());
    removal_revokes(backend.clone(), backend).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_machine_key_revokes_its_access_tokens_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let backend = Arc::new(
        jwt_profile::store::SqliteStore::open_path(dir.path().join("keys.db"))
            .await
            .expect("open"),
    );
    removal_revokes(backend.clone(), backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_machine_key_revokes_its_access_tokens_on_postgres_replicas() {
    use jwt_profile::store::PostgresStore;
    let Some((schema, options)) = crate::common::backends::postgres_schema().await else {
        return;
    };
    let a = Arc::new(
        PostgresStore::connect_with(options.clone(), Default::default())
            .await
            .expect("a"),
    );
    let b = Arc::new(
        PostgresStore::connect_with(options, Default::default())
            .await
            .expect("b"),
    );
    let master = MasterKey::generate().expect("master");
    let clock = ManualClock::now_system();
    let app_a = token_app_on(a.clone(), a, master.clone(), clock.clone()).await;
    let app_b = token_replica(b.clone(), b, master, clock, Some(&app_a.issuer_name)).await;
    let bot = app_a.machine("bot").await;
    let token = app_a.access_token(&bot).await;
    // Replica B accepts replica A's token (same signing keys), and caches it.
    let tok_b = jsonwebtoken::decode_header(&token).expect("header");
    assert!(tok_b.kid.is_some());
    assert_eq!(
        app_b
            .verifier
            .verify(&token)
            .await
            .map(|p| p.user_id.to_string()),
        Ok("bot".into())
    );
    assert_eq!(
        app_b
            .verifier
            .verify(&token)
            .await
            .map(|p| p.user_id.to_string()),
        Ok("bot".into())
    );
    let me = Principal::new("bot", ORG, "-");
    app_a
        .keys
        .remove(&me, None, "bot", bot.key_id())
        .await
        .expect("remove");
    assert!(app_a.verifier.verify(&token).await.is_err(), "A at once");
    let start = std::time::Instant::now();
    loop {
        if app_b.verifier.verify(&token).await.is_err() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "B still accepts after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crate::common::backends::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_on_schedule() {
    let app = token_app().await;
    let bot = app.machine("bot").await;
    let kid = |t: &str| parts(t).0["kid"].as_str().unwrap_or_default().to_string();
    let published = |app: &TokenApp| -> Vec<String> {
        app.issuer.jwks().keys.into_iter().map(|k| k.kid).collect()
    };
    let first = app.access_token(&bot).await;
    let k1 = kid(&first);
    assert_eq!(published(&app), vec![k1.clone()]);
    // Six minutes before the hand-over the next key is published, not used.
    let week = 7 * 86_400;
    app.clock.advance_secs(week - 6 * 60 - 1);
    app.issuer.maintain().await.expect("maintain");
    assert_eq!(published(&app), vec![k1.clone()], "too early");
    app.clock.advance_secs(2);
    app.issuer.maintain().await.expect("maintain");
    let keys = published(&app);
    assert_eq!(keys.len(), 2, "{keys:?}");
    let k2 = keys[1].clone();
    let served: Value = app.http.get("/oauth/v2/keys").send().await.json();
    assert_eq!(served["keys"].as_array().map(Vec::len), Some(2));
    // Published, not yet signing: tokens still carry k1.
    let before = app.access_token(&bot).await;
    assert_eq!(kid(&before), k1);
    // A second maintenance makes no third key.
    app.issuer.maintain().await.expect("maintain");
    assert_eq!(published(&app).len(), 2);
    // After the hand-over k2 signs; k1's tokens stay valid until they expire.
    app.clock.advance_secs(6 * 60);
    app.issuer.maintain().await.expect("maintain");
    let after = app.access_token(&bot).await;
    assert_eq!(kid(&after), k2);
    assert_eq!(
        app.whoami(&before).await.status,
        200,
        "k1's token still accepted"
    );
    assert_eq!(app.whoami(&after).await.status, 200);
    assert_eq!(published(&app), [k1.clone(), k2.clone()]);
    // Token lifetime + leeway after the hand-over, k1 leaves the JWKS.
    app.clock.advance_secs(3600 + 60);
    app.issuer.maintain().await.expect("maintain");
    assert_eq!(published(&app), vec![k2.clone()]);
    assert_eq!(
        app.whoami(&before).await.status,
        401,
        "expired with its key"
    );
    assert_eq!(app.whoami(&after).await.status, 401, "expired too (1 h)");
    assert_eq!(app.whoami(&app.access_token(&bot).await).await.status, 200);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_rotating_at_once_make_one_key() {
    use jwt_profile::store::PostgresStore;
    let Some((schema, options)) = crate::common::backends::postgres_schema().await else {
        return;
    };
    let master = MasterKey::generate().expect("master");
    let clock = ManualClock::now_system();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(
            PostgresStore::connect_with(options.clone(), Default::default())
                .await
                .expect("connect"),
        );
        replicas.push(token_app_on(store.clone(), store, master.clone(), clock.clone()).await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    assert_eq!(a.issuer.jwks(), {
        b.issuer.maintain().await.expect("maintain");
        b.issuer.jwks()
    });
    assert_eq!(a.issuer.jwks().keys.len(), 1, "one first key for both");
    clock.advance_secs(7 * 86_400);
    let (ra, rb) = tokio::join!(a.issuer.maintain(), b.issuer.maintain());
    ra.expect("a");
    rb.expect("b");
    a.issuer.maintain().await.expect("a");
    b.issuer.maintain().await.expect("b");
    assert_eq!(a.issuer.jwks().keys.len(), 2, "{:?}", a.issuer.jwks());
    assert_eq!(a.issuer.jwks(), b.issuer.jwks());
    crate::common::backends::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_master_key_is_refused_and_nothing_is_replaced() {
    let backend = Arc::new(MemoryStore::new());
    let master = MasterKey::generate().expect("master");
    let app = token_app_on(
        backend.clone(),
        backend.clone(),
        master.clone(),
        ManualClock::now_system(),
    )
    .await;
    let before = app.issuer.jwks();
    let verifier = Verifier::new(
        CachedStore::new(backend.clone()),
        Validation::new([SERVICE]),
    );
    let wrong = TokenIssuer::open(
        IssuerSettings::new("http://127.0.0.1:1"),
        backend.clone(),
        MasterKey::generate().expect("other"),
        &verifier,
    )
    .await;
    assert!(
        matches!(wrong, Err(IssuerError::WrongMasterKey)),
        "{wrong:?}"
    );
    assert_eq!(backend.signing_keys().await.expect("keys").len(), 1);
    let right = TokenIssuer::open(
        IssuerSettings::new("http://127.0.0.1:1"),
        backend,
        master,
        &verifier,
    )
    .await
    .expect("the right key opens");
    assert_eq!(right.jwks(), before);
}

/// Tokens an attacker can make: none is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_access_tokens_are_refused() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let app = token_app().await;
    let bot = app.machine("bot").await;
    let token = app.access_token(&bot).await;
    let (header, claims) = parts(&token);
    let signature = token.rsplit('.').next().expect("sig").to_string();
    let kid = header["kid"].as_str().expect("kid").to_string();
    let unsigned = |h: &Value, c: &Value| {
        format!(
            "{}.{}",
            b64.encode(h.to_string()),
            b64.encode(c.to_string())
        )
    };
    let resigned = |h: &Value, c: &Value| format!("{}.{signature}", unsigned(h, c));
    // Another issuer on the same backend (so its keys are published here
    // too) signs a token naming itself.
    let other = {
        let verifier = Verifier::new(app.store.clone(), Validation::new([SERVICE]));
        let backend = Arc::new(MemoryStore::new());
        TokenIssuer::open(
            IssuerSettings::new("https://evil.example"),
            backend,
            MasterKey::generate().expect("m"),
            &verifier,
        )
        .await
        .expect("other issuer")
    };
    let foreign = other
        .exchange(&jwt_profile::token::TokenRequest::new(
            bot.sign_at(
                "https://evil.example",
                app.clock.now_unix(),
                app.clock.now_unix() + 300,
            )
            .expect("sign"),
        ))
        .await
        .expect("foreign token")
        .access_token;
    // The machine's own key signs a token dressed as an access token.
    let as_access = bot
        .sign_parts(
            json!({"alg": "RS256", "typ": "at+jwt", "kid": bot.key_id()})
                .to_string()
                .as_bytes(),
            claims.to_string().as_bytes(),
        )
        .expect("sign");
    let with_kid_of_signing_key = bot
        .sign_parts(
            json!({"alg": "RS256", "typ": "at+jwt", "kid": kid})
                .to_string()
                .as_bytes(),
            claims.to_string().as_bytes(),
        )
        .expect("sign");
    let mut other_user = claims.clone();
    other_user["sub"] = json!("admin");
    let mut other_aud = claims.clone();
    other_aud["aud"] = json!("https://other.example.com");
    let mut long_lived = claims.clone();
    long_lived["exp"] = json!(253402300799u64);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none, no signature",
            format!(
                "{}.",
                unsigned(&json!({"alg":"none","typ":"at+jwt","kid":kid}), &claims)
            ),
            "TOKEN-malformed",
        ),
        (
            "alg none",
            resigned(&json!({"alg":"none","typ":"at+jwt","kid":kid}), &claims),
            "TOKEN-algorithm",
        ),
        (
            "alg HS256",
            resigned(&json!({"alg":"HS256","typ":"at+jwt","kid":kid}), &claims),
            "TOKEN-algorithm",
        ),
        (
            "alg PS256",
            resigned(&json!({"alg":"PS256","typ":"at+jwt","kid":kid}), &claims),
            "TOKEN-algorithm",
        ),
        (
            "alg ES256",
            resigned(&json!({"alg":"ES256","typ":"at+jwt","kid":kid}), &claims),
            "TOKEN-algorithm",
        ),
        (
            "assertion dressed as access token",
            as_access,
            "TOKEN-unknown-key",
        ),
        (
            "machine key signs with the signing key's kid",
            with_kid_of_signing_key,
            "TOKEN-bad-signature",
        ),
        (
            "forged kid",
            resigned(
                &json!({"alg":"RS256","typ":"at+jwt","kid":"made-up"}),
                &claims,
            ),
            "TOKEN-unknown-key",
        ),
        (
            "sub changed",
            resigned(&header, &other_user),
            "TOKEN-bad-signature",
        ),
        (
            "aud changed",
            resigned(&header, &other_aud),
            "TOKEN-audience",
        ),
        (
            "exp changed",
            resigned(&header, &long_lived),
            "TOKEN-bad-signature",
        ),
        ("another issuer", foreign, "TOKEN-issuer"),
        (
            "typ removed",
            resigned(&json!({"alg":"RS256","kid":kid}), &claims),
            "TOKEN-iss-sub",
        ),
    ];
    for (name, hostile, id) in cases {
        let answer = app.whoami(&hostile).await;
        assert_eq!(answer.status, 401, "{name}: {:?}", answer.body);
        assert_eq!(answer.error_id(), id, "{name}");
    }
    // An access token is no assertion at the token endpoint.
    let answer = app.exchange(&token, None).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"], "invalid_grant");
    assert_eq!(
        answer.json()["error_description"],
        "token type not accepted here"
    );
    // The genuine token still works.
    assert_eq!(app.whoami(&token).await.status, 200);
}

/// A declared body over 16 KiB is refused before it is sent (no `100
/// Continue`), and a body that never arrives is given up on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_stalled_bodies_are_refused_without_waiting_for_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = token_app().await;
    let addr = app.http.base.trim_start_matches("http://").to_string();
    let ask = |head: String| {
        let addr = addr.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            tcp.write_all(head.as_bytes()).await.expect("write");
            let mut answer = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut answer))
                .await
                .expect("an answer in time")
                .expect("read");
            String::from_utf8_lossy(&answer[..n]).to_string()
        }
    };
    let huge = ask(format!(
        "POST /oauth/v2/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM}\r\nContent-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
    ))
    .await;
    assert!(huge.starts_with("HTTP/1.1 400"), "{huge}");
    assert!(huge.contains("invalid_request"), "{huge}");
    let started = std::time::Instant::now();
    let stalled = ask(format!(
        "POST /oauth/v2/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM}\r\nContent-Length: 16000\r\n\r\ngrant_type="
    ))
    .await;
    assert!(stalled.starts_with("HTTP/1.1 400"), "{stalled}");
    assert!(started.elapsed() < Duration::from_secs(14));
}

/// A remembered access token is refused once its signing key is no longer
/// published, as the full check refuses it (`TOKEN-unknown-key`): a repeat
/// checks the signing key again, not only the machine key. (An outside
/// review found the repeat accepting it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_access_token_dies_with_its_signing_key() {
    let backend = Arc::new(MemoryStore::new());
    let app = token_app_over(backend.clone(), backend.clone()).await;
    let bot = app.machine("bot").await;
    let token = app.access_token(&bot).await;
    // Accepted once by the layer: remembered.
    assert_eq!(app.whoami(&token).await.status, 200);
    let kid = parts(&token).0["kid"].as_str().expect("kid").to_string();
    // The signing key is taken out of the store (an operator revoking a
    // leaked key, or a retention shorter than some replica's tokens), and
    // the issuer reads its keys again: it is no longer published.
    SigningKeyStore::remove_signing_key(&*backend, &kid)
        .await
        .expect("remove signing key");
    app.issuer.maintain().await.expect("maintain");
    assert!(
        app.issuer.jwks().keys.iter().all(|k| k.kid != kid),
        "no longer published"
    );
    // The full check, right now: refused.
    let full = app.verifier.clone().without_assertion_cache();
    assert_eq!(
        full.verify(&token).await.map(|p| p.user_id.to_string()),
        Err(jwt_profile::VerifyError::Invalid(
            jwt_profile::Reason::UnknownKey
        )),
        "the full check refuses a token whose signing key is gone"
    );
    // The entry remembered by the layer's verifier: refused too.
    let hit = app
        .verifier
        .verify(&token)
        .await
        .map(|p| p.user_id.to_string());
    let http = app.whoami(&token).await.status;
    assert!(
        hit.is_err() && http == 401,
        "a remembered access token accepted after its signing key was removed: verify {hit:?}, /whoami {http}"
    );
}
