//! The token endpoint's core (RFC 7523 §2.1): a [`TokenIssuer`] exchanges a
//! machine's assertion for an access token, publishes discovery and its
//! signing keys (JWKS), and rotates those keys. Transport-free, like the
//! [`Verifier`]; [`http::TokenApi`](crate::http::TokenApi) serves it over
//! HTTP.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use jwt_profile::{AssertionSigner, CreateKey, KeyService, Principal, TokenKind, Validation, Verifier};
//! use jwt_profile::store::{CachedStore, MemoryStore};
//! use jwt_profile::token::{IssuerSettings, MasterKey, TokenIssuer, TokenRequest};
//!
//! let backend = Arc::new(MemoryStore::new());
//! let store = CachedStore::new(backend.clone());
//! let verifier = Verifier::new(store.clone(), Validation::new(["https://api.example.com"]));
//! let issuer = TokenIssuer::open(
//!     IssuerSettings::new("https://auth.example.com"),
//!     backend,
//!     MasterKey::generate().unwrap(),
//!     &verifier,
//! )
//! .await
//! .unwrap();
//! // The layer's verifier accepts the issuer's access tokens too.
//! let verifier = verifier.with_access_tokens(issuer.access_tokens());
//!
//! let keys = KeyService::new(store);
//! let me = Principal::new("ci-bot", "default", "-");
//! let created = keys.create(&me, None, "ci-bot", CreateKey::default()).await.unwrap();
//! let signer = AssertionSigner::from_key_file(&created.key_file.unwrap()).unwrap();
//!
//! let assertion = signer.sign("https://auth.example.com").unwrap();
//! let request = TokenRequest::new(assertion).with_scope("openid");
//! let response = issuer.exchange(&request).await.unwrap();
//! let principal = verifier.verify(&response.access_token).await.unwrap();
//! assert_eq!(principal.kind, TokenKind::AccessToken);
//! assert_eq!(&*principal.user_id, "ci-bot");
//! # });
//! ```

mod seal;
mod signing;

pub use seal::{MASTER_KEY_BYTES, MasterKey, MasterKeyError};
pub(crate) use signing::SigningKeys;
pub use signing::{Jwk, Jwks};

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::store::{SigningKeyStore, StoreError};
use crate::verify::{AccessTokens, Reason, Verifier, VerifyError};
use signing::Lifecycle;

/// The grant type of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Largest token request body, in bytes.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;
/// Shortest access-token lifetime accepted by [`IssuerSettings`].
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// Longest access-token lifetime accepted by [`IssuerSettings`].
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);
/// Most project audiences one token request is granted (scopes
/// `urn:zitadel:iam:org:project:id:<id>:aud`); more are dropped, so a token
/// stays well under the verifier's size limit.
pub const MAX_PROJECT_AUDIENCES: usize = 16;

const PROJECT_SCOPE_PREFIX: &str = "urn:zitadel:iam:org:project:id:";
const PROJECT_SCOPE_SUFFIX: &str = ":aud";
/// The access token's claim naming the machine user's organization.
pub const RESOURCE_OWNER_CLAIM: &str = "urn:zitadel:iam:user:resourceowner:id";

/// The claim of our access tokens that names the stored machine key they
/// were issued for, exactly: its `sequence` (decimal), which no other key
/// in the store has, one stored later under a reused id included.
pub const KEY_SEQUENCE_CLAIM: &str = "key_sequence";

/// Settings of a [`TokenIssuer`].
///
/// ```
/// use std::time::Duration;
/// use jwt_profile::token::IssuerSettings;
/// let s = IssuerSettings::new("https://auth.example.com")
///     .token_lifetime(Duration::from_secs(900))
///     .rotation(Duration::from_secs(86_400));
/// assert_eq!(s.issuer(), "https://auth.example.com");
/// ```
#[derive(Clone, Debug)]
pub struct IssuerSettings {
    issuer: String,
    token_lifetime: Duration,
    rotation: Duration,
    publish_lead: Duration,
    refresh: Duration,
    project_audiences: Option<Vec<String>>,
}

impl IssuerSettings {
    /// An issuer named `issuer`: an absolute `http` or `https` URL without a
    /// trailing slash, compared byte for byte by clients. Lifetime 3600 s,
    /// rotation every 7 days.
    pub fn new(issuer: impl Into<String>) -> IssuerSettings {
        IssuerSettings {
            issuer: issuer.into(),
            token_lifetime: Duration::from_secs(3600),
            rotation: Duration::from_secs(7 * 86_400),
            publish_lead: Duration::from_secs(6 * 60),
            refresh: Duration::from_secs(30),
            project_audiences: None,
        }
    }

    /// Grants the scope `urn:zitadel:iam:org:project:id:<id>:aud` (which
    /// adds `<id>` to the token's `aud`) only for these ids; other project
    /// scopes are dropped. Without this list any well-formed id is granted
    /// to any machine that asks, so a machine can get tokens naming every
    /// service that trusts this issuer with an id-shaped audience: set it
    /// when several services share one issuer.
    pub fn project_audiences<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.project_audiences = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// The issuer's name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Access-token lifetime (default 3600 s; 600–86 400 s). A token never
    /// outlives the machine key it was issued for.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// How long each signing key signs before the next takes over (default
    /// 7 days; at least 1 hour).
    pub fn rotation(mut self, rotation: Duration) -> Self {
        self.rotation = rotation;
        self
    }

    /// How long before it signs a new signing key is published (default
    /// 6 minutes: JWKS caches hold keys for 5 minutes, and replicas read
    /// the store every 30 seconds). At least 5 minutes.
    pub fn publish_lead(mut self, lead: Duration) -> Self {
        self.publish_lead = lead;
        self
    }

    /// Checks the settings (what [`TokenIssuer::open`] checks first): the
    /// issuer an absolute `http(s)` URL with a host, no trailing slash, no
    /// query or fragment; lifetime 600–86 400 s; rotation at least 1 hour;
    /// publication at least 5 minutes ahead.
    pub fn validate(&self) -> Result<(), IssuerError> {
        self.check().map_err(IssuerError::Setting)
    }

    fn check(&self) -> Result<(), String> {
        let i = &self.issuer;
        let rest = i
            .strip_prefix("https://")
            .or_else(|| i.strip_prefix("http://"))
            .ok_or_else(|| format!("issuer {i:?} must be an absolute http:// or https:// URL"))?;
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() {
            return Err(format!("issuer {i:?} has no host"));
        }
        if host.contains('@') {
            // Not echoed: it may hold a password.
            return Err("the issuer must not carry a user or password".into());
        }
        if i.ends_with('/') {
            return Err(format!("issuer {i:?} must not end with '/'"));
        }
        if i.contains(['?', '#']) || i.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "issuer {i:?} must have no query, fragment, space or control character"
            ));
        }
        if !(MIN_TOKEN_LIFETIME..=MAX_TOKEN_LIFETIME).contains(&self.token_lifetime) {
            return Err(format!(
                "token lifetime {} s is outside 600-86400 s",
                self.token_lifetime.as_secs()
            ));
        }
        if self.rotation < Duration::from_secs(3600) {
            return Err("signing key rotation must be at least 1 hour".into());
        }
        if self.publish_lead < Duration::from_secs(300) {
            return Err("a signing key must be published at least 5 minutes before use".into());
        }
        Ok(())
    }
}

/// Why a [`TokenIssuer`] could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssuerError {
    /// A setting is out of range or malformed; the text says which.
    Setting(String),
    /// The stored signing keys do not open with the master key given.
    WrongMasterKey,
    /// A stored signing key is damaged.
    Damaged(String),
    /// The store could not be asked.
    Store(StoreError),
}

impl fmt::Display for IssuerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssuerError::Setting(why) => f.write_str(why),
            IssuerError::WrongMasterKey => f.write_str(&MasterKeyError::WrongKey.to_string()),
            IssuerError::Damaged(why) => write!(f, "a stored signing key is damaged: {why}"),
            IssuerError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for IssuerError {}

impl From<StoreError> for IssuerError {
    fn from(e: StoreError) -> Self {
        IssuerError::Store(e)
    }
}

/// A token request (RFC 7523 §2.1): the assertion and the scopes asked for.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The machine's assertion.
    pub assertion: String,
    /// The scopes asked for, space-separated.
    pub scope: Option<String>,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The assertion is a credential: never printed.
        f.debug_struct("TokenRequest")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenRequest {
    /// A request for `assertion` with no scope.
    pub fn new(assertion: impl Into<String>) -> TokenRequest {
        TokenRequest {
            assertion: assertion.into(),
            scope: None,
        }
    }

    /// The same request asking for `scope` (space-separated).
    pub fn with_scope(mut self, scope: impl Into<String>) -> TokenRequest {
        self.scope = Some(scope.into());
        self
    }

    /// Reads a form body (`application/x-www-form-urlencoded`; the media type
    /// compared case-insensitively, parameters such as `charset` ignored;
    /// at most 16 KiB). `grant_type` must be the jwt-bearer grant and
    /// `assertion` present; `grant_type`, `assertion` or `scope` given twice
    /// is refused; `client_id` and unknown parameters are ignored.
    ///
    /// ```
    /// use jwt_profile::token::{TokenError, TokenRequest};
    /// let body = b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c&scope=openid";
    /// let r = TokenRequest::from_form(Some("application/x-www-form-urlencoded"), body).unwrap();
    /// assert_eq!(r.assertion, "a.b.c");
    /// let twice = TokenRequest::from_form(Some("application/x-www-form-urlencoded"), b"assertion=a&assertion=b");
    /// assert!(matches!(twice, Err(TokenError::InvalidRequest(_))));
    /// ```
    pub fn from_form(content_type: Option<&str>, body: &[u8]) -> Result<TokenRequest, TokenError> {
        let media = content_type
            .and_then(|t| t.split(';').next())
            .map(str::trim)
            .unwrap_or_default();
        if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(TokenError::InvalidRequest(
                "Content-Type must be application/x-www-form-urlencoded".into(),
            ));
        }
        if body.len() > MAX_TOKEN_REQUEST_BYTES {
            return Err(TokenError::InvalidRequest(
                "request body is larger than 16 KiB".into(),
            ));
        }
        let (mut grant, mut assertion, mut scope) = (None, None, None);
        for (name, value) in form_urlencoded::parse(body) {
            let slot = match &*name {
                "grant_type" => &mut grant,
                "assertion" => &mut assertion,
                "scope" => &mut scope,
                _ => continue,
            };
            if slot.is_some() {
                return Err(TokenError::InvalidRequest(
                    format!("{name} is given more than once").into(),
                ));
            }
            *slot = Some(value.into_owned());
        }
        match grant.as_deref() {
            None | Some("") => {
                return Err(TokenError::InvalidRequest("grant_type is missing".into()));
            }
            Some(JWT_BEARER_GRANT) => {}
            Some(_) => return Err(TokenError::UnsupportedGrantType),
        }
        let assertion = assertion
            .filter(|a| !a.is_empty())
            .ok_or_else(|| TokenError::InvalidRequest("assertion is missing".into()))?;
        Ok(TokenRequest { assertion, scope })
    }
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    /// The access token (a JWT, `typ: at+jwt`).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The scopes granted, space-separated.
    pub scope: String,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why a token request was refused (RFC 6749 §5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Missing or repeated parameter, wrong content type, body too large
    /// (400 `invalid_request`).
    InvalidRequest(Cow<'static, str>),
    /// `grant_type` is not the jwt-bearer grant (400 `unsupported_grant_type`).
    UnsupportedGrantType,
    /// The assertion broke a validation rule (400 `invalid_grant`).
    InvalidGrant(Reason),
    /// The key store, the replay store or the signing keys could not be used
    /// (503 `temporarily_unavailable`).
    Unavailable(String),
}

impl TokenError {
    /// The RFC 6749 `error` code.
    pub fn error(&self) -> &'static str {
        match self {
            TokenError::InvalidRequest(_) => "invalid_request",
            TokenError::UnsupportedGrantType => "unsupported_grant_type",
            TokenError::InvalidGrant(_) => "invalid_grant",
            TokenError::Unavailable(_) => "temporarily_unavailable",
        }
    }

    /// The `error_description`: for a refused assertion, the reason of the
    /// validation rules.
    pub fn description(&self) -> Cow<'static, str> {
        match self {
            TokenError::InvalidRequest(why) => why.clone(),
            TokenError::UnsupportedGrantType => {
                format!("grant_type must be {JWT_BEARER_GRANT}").into()
            }
            TokenError::InvalidGrant(reason) => reason.description().into(),
            TokenError::Unavailable(_) => "the service is unavailable; try again".into(),
        }
    }

    /// The HTTP status: 400, or 503 when unavailable.
    pub fn status(&self) -> http::StatusCode {
        match self {
            TokenError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON body `{"error":…,"error_description":…}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": self.error(), "error_description": self.description()})
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error(), self.description())
    }
}

impl std::error::Error for TokenError {}

impl From<VerifyError> for TokenError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Invalid(reason) => TokenError::InvalidGrant(reason),
            VerifyError::Unavailable(why) => TokenError::Unavailable(why),
        }
    }
}

/// The discovery document (OpenID Connect Discovery / RFC 8414).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Discovery {
    /// The issuer, byte for byte as configured.
    pub issuer: String,
    /// `<issuer>/oauth/v2/token`.
    pub token_endpoint: String,
    /// `<issuer>/oauth/v2/keys`.
    pub jwks_uri: String,
    /// The jwt-bearer grant only.
    pub grant_types_supported: [&'static str; 1],
    /// `none`: the assertion is the credential.
    pub token_endpoint_auth_methods_supported: [&'static str; 1],
    /// `token`.
    pub response_types_supported: [&'static str; 1],
    /// `public`.
    pub subject_types_supported: [&'static str; 1],
    /// `RS256`.
    pub id_token_signing_alg_values_supported: [&'static str; 1],
    /// `openid`.
    pub scopes_supported: [&'static str; 1],
}

/// Path of the token endpoint, below the issuer.
pub const TOKEN_PATH: &str = "/oauth/v2/token";
/// Path of the JWKS, below the issuer.
pub const KEYS_PATH: &str = "/oauth/v2/keys";

/// Exchanges assertions for access tokens and publishes its signing keys.
/// Cheap to clone.
#[derive(Clone)]
pub struct TokenIssuer {
    inner: Arc<IssuerInner>,
}

struct IssuerInner {
    settings: IssuerSettings,
    token_endpoint: String,
    /// The layer's rules for assertions, with the issuer and the token
    /// endpoint as audiences.
    assertions: Verifier,
    /// The protected service's audiences: every access token names them.
    audiences: Vec<String>,
    keys: SigningKeys,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.inner.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Opens an issuer: checks `settings`, reads the signing keys from
    /// `store` (the same backend as the machine keys), opens each with
    /// `master` — a key that does not open is
    /// [`IssuerError::WrongMasterKey`], never silently replaced — makes the
    /// first key of an empty store, and starts rotating in the background
    /// (within a tokio runtime).
    ///
    /// Assertions are checked by `verifier`'s rules, keys, clock and replay
    /// store, with the issuer or the token endpoint URL as audience; access
    /// tokens name `verifier`'s audiences (the protected service's).
    pub async fn open(
        settings: IssuerSettings,
        store: impl SigningKeyStore,
        master: MasterKey,
        verifier: &Verifier,
    ) -> Result<TokenIssuer, IssuerError> {
        settings.validate()?;
        let leeway = Duration::from_secs_f64(verifier.validation().leeway_secs());
        let lifecycle = Lifecycle {
            rotation: settings.rotation,
            lead: settings.publish_lead,
            retention: settings.token_lifetime + leeway,
            refresh: settings.refresh,
        };
        let keys = SigningKeys::open(Arc::new(store), master, verifier.clock(), lifecycle).await?;
        keys.spawn_maintenance();
        let token_endpoint = format!("{}{TOKEN_PATH}", settings.issuer);
        let assertions =
            verifier.for_audiences(vec![settings.issuer.clone(), token_endpoint.clone()]);
        Ok(TokenIssuer {
            inner: Arc::new(IssuerInner {
                audiences: verifier.validation().audiences().to_vec(),
                settings,
                token_endpoint,
                assertions,
                keys,
            }),
        })
    }

    /// The issuer's name.
    pub fn issuer(&self) -> &str {
        &self.inner.settings.issuer
    }

    /// The access-token lifetime.
    pub fn token_lifetime(&self) -> Duration {
        self.inner.settings.token_lifetime
    }

    /// What a [`Verifier`] needs to accept this issuer's access tokens
    /// ([`Verifier::with_access_tokens`]).
    pub fn access_tokens(&self) -> AccessTokens {
        AccessTokens {
            issuer: self.inner.settings.issuer.clone(),
            keys: self.inner.keys.clone(),
        }
    }

    /// The discovery document.
    pub fn discovery(&self) -> Discovery {
        let issuer = &self.inner.settings.issuer;
        Discovery {
            issuer: issuer.clone(),
            token_endpoint: self.inner.token_endpoint.clone(),
            jwks_uri: format!("{issuer}{KEYS_PATH}"),
            grant_types_supported: [JWT_BEARER_GRANT],
            token_endpoint_auth_methods_supported: ["none"],
            response_types_supported: ["token"],
            subject_types_supported: ["public"],
            id_token_signing_alg_values_supported: ["RS256"],
            scopes_supported: ["openid"],
        }
    }

    /// The published signing keys: the one signing now, the next one once
    /// it is published, and retired ones until their tokens have expired.
    pub fn jwks(&self) -> Jwks {
        self.inner.keys.jwks()
    }

    /// Applies the signing keys' lifecycle now (the background task does so
    /// every 30 seconds): reads the keys other replicas made, publishes the
    /// next key ahead of its use, deletes retired keys whose tokens have
    /// expired.
    pub async fn maintain(&self) -> Result<(), IssuerError> {
        self.inner.keys.maintain().await
    }

    /// Exchanges an assertion for an access token.
    pub async fn exchange(&self, request: &TokenRequest) -> Result<TokenResponse, TokenError> {
        let inner = &*self.inner;
        let principal = inner.assertions.verify(&request.assertion).await?;
        // The token may not outlive the machine key, and names it exactly
        // (its sequence): the key looked up now must be the one that signed
        // the assertion, not another stored since under its id.
        let machine = inner
            .assertions
            .machine_key(&principal.key_id)
            .await?
            .filter(|m| {
                *m.key().user_id == *principal.user_id
                    && inner.assertions.signed_by(&request.assertion, m)
            })
            .ok_or(TokenError::InvalidGrant(Reason::UnknownKey))?;
        let signer = inner.keys.signer().await.map_err(|e| match e {
            IssuerError::Store(StoreError::Unavailable(why)) => TokenError::Unavailable(why),
            other => TokenError::Unavailable(other.to_string()),
        })?;
        let iat = inner.assertions.clock().now().timestamp();
        let lifetime = i64::try_from(inner.settings.token_lifetime.as_secs()).unwrap_or(3600);
        let exp = (iat + lifetime).min(machine.key().expiration_date.timestamp());
        if exp <= iat {
            return Err(TokenError::InvalidGrant(Reason::KeyExpired));
        }
        let allowed = inner.settings.project_audiences.as_deref();
        let (granted, projects) = grant_scopes(request.scope.as_deref(), allowed);
        let mut aud = inner.audiences.clone();
        for p in projects {
            if !aud.contains(&p) {
                aud.push(p);
            }
        }
        let aud = match aud.as_slice() {
            [one] => serde_json::Value::from(one.clone()),
            many => serde_json::Value::from(many.to_vec()),
        };
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)
            .map_err(|_| TokenError::Unavailable("no randomness".into()))?;
        let scope = granted.join(" ");
        let claims = serde_json::json!({
            "iss": inner.settings.issuer,
            "sub": &*principal.user_id,
            "client_id": &*principal.user_id,
            "aud": aud,
            "iat": iat,
            "exp": exp,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "scope": scope,
            RESOURCE_OWNER_CLAIM: &*principal.org_id,
            "key_id": &*principal.key_id,
            KEY_SEQUENCE_CLAIM: machine.key().details.sequence.to_string(),
        });
        let header = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": signer.id});
        let mut token = String::with_capacity(1024);
        URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
        let signature = signer
            .sign(token.as_bytes())
            .ok_or_else(|| TokenError::Unavailable("signing failed".into()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        let expires_in = u64::try_from(exp - iat).unwrap_or_default();
        crate::telemetry::token_issued(&principal, &signer.id, &scope, expires_in);
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer",
            expires_in,
            scope,
        })
    }
}

/// The scopes granted and the project audiences they add: `openid`, and
/// `urn:zitadel:iam:org:project:id:<id>:aud` (at most
/// [`MAX_PROJECT_AUDIENCES`], and only ids in `allowed` when there is such
/// a list); anything else is dropped. Repeats count once.
fn grant_scopes(scope: Option<&str>, allowed: Option<&[String]>) -> (Vec<String>, Vec<String>) {
    let mut granted: Vec<String> = Vec::new();
    let mut projects: Vec<String> = Vec::new();
    for s in scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
    {
        if granted.iter().any(|g| g == s) {
            continue;
        }
        if s == "openid" {
            granted.push(s.to_string());
        } else if let Some(id) = s
            .strip_prefix(PROJECT_SCOPE_PREFIX)
            .and_then(|rest| rest.strip_suffix(PROJECT_SCOPE_SUFFIX))
            && crate::key::id_problem(id).is_none()
            && !id.contains(':')
            && allowed.is_none_or(|list| list.iter().any(|a| a == id))
            && projects.len() < MAX_PROJECT_AUDIENCES
        {
            granted.push(s.to_string());
            projects.push(id.to_string());
        }
    }
    (granted, projects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_keep_openid_and_project_audiences_only() {
        let asked = "profile urn:zitadel:iam:org:project:id:42:aud openid  openid urn:zitadel:iam:org:project:id::aud email urn:zitadel:iam:org:project:id:7:aud";
        let (granted, projects) = grant_scopes(Some(asked), None);
        assert_eq!(
            granted,
            [
                "urn:zitadel:iam:org:project:id:42:aud",
                "openid",
                "urn:zitadel:iam:org:project:id:7:aud"
            ]
        );
        assert_eq!(projects, ["42", "7"]);
        assert_eq!(grant_scopes(None, None), (vec![], vec![]));
        // With an allow-list only listed ids are granted.
        let allowed = ["7".to_string()];
        let (granted, projects) = grant_scopes(Some(asked), Some(&allowed));
        assert_eq!(granted, ["openid", "urn:zitadel:iam:org:project:id:7:aud"]);
        assert_eq!(projects, ["7"]);
        let many: Vec<String> = (0..40)
            .map(|i| format!("urn:zitadel:iam:org:project:id:{i}:aud"))
            .collect();
        let (_, projects) = grant_scopes(Some(&many.join(" ")), None);
        assert_eq!(projects.len(), MAX_PROJECT_AUDIENCES);
    }

    #[test]
    fn issuer_names_are_absolute_urls_without_trailing_slash() {
        for bad in [
            "",
            "auth.example.com",
            "https://",
            "https://a/",
            "https://a?x",
            "ftp://a",
            "http://u:p@a",
        ] {
            assert!(IssuerSettings::new(bad).check().is_err(), "{bad:?}");
        }
        for good in [
            "https://auth.example.com",
            "http://127.0.0.1:8080",
            "https://a.example/tenant",
        ] {
            assert!(IssuerSettings::new(good).check().is_ok(), "{good:?}");
        }
        let short = IssuerSettings::new("https://a").token_lifetime(Duration::from_secs(599));
        assert!(short.check().is_err());
        let long = IssuerSettings::new("https://a").token_lifetime(Duration::from_secs(86_401));
        assert!(long.check().is_err());
    }

    #[test]
    fn form_bodies_are_read_strictly() {
        let form = Some("Application/X-WWW-Form-URLEncoded; charset=UTF-8");
        let grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
        let ok = TokenRequest::from_form(
            form,
            format!("{grant}&assertion=x&client_id=None&scope=openid+profile").as_bytes(),
        );
        assert_eq!(ok.map(|r| r.scope), Ok(Some("openid profile".to_string())));
        let cases: [(Option<&str>, String, &str); 8] = [
            (
                Some("application/json"),
                format!("{grant}&assertion=x"),
                "invalid_request",
            ),
            (None, format!("{grant}&assertion=x"), "invalid_request"),
            (form, "assertion=x".into(), "invalid_request"),
            (form, grant.to_string(), "invalid_request"),
            (form, format!("{grant}&assertion="), "invalid_request"),
            (
                form,
                format!("{grant}&{grant}&assertion=x"),
                "invalid_request",
            ),
            (
                form,
                format!("{grant}&assertion=x&scope=a&scope=b"),
                "invalid_request",
            ),
            (
                form,
                "grant_type=client_credentials&assertion=x".into(),
                "unsupported_grant_type",
            ),
        ];
        for (ct, body, error) in cases {
            let got = TokenRequest::from_form(ct, body.as_bytes()).map_err(|e| e.error());
            assert_eq!(got, Err(error), "{ct:?} {body}");
        }
        let big = vec![b'a'; MAX_TOKEN_REQUEST_BYTES + 1];
        assert_eq!(
            TokenRequest::from_form(form, &big).map_err(|e| e.error()),
            Err("invalid_request")
        );
    }
}
