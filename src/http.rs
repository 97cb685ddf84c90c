//! The REST routes of the key API (ZITADEL-shaped: create, get, list and
//! remove a machine user's keys) over [`KeyService`] (feature `axum`).
//!
//! This module only translates: JSON bodies, path parameters and the
//! organization header in; proto3-JSON bodies and the JSON error body out.
//! Every rule is the key service's.
//!
//! | route | operation |
//! |---|---|
//! | `POST /users/{userId}/keys` | [`KeyService::create`] |
//! | `GET /users/{userId}/keys/{keyId}` | [`KeyService::get`] |
//! | `POST /users/{userId}/keys/_search` | [`KeyService::list`] |
//! | `DELETE /users/{userId}/keys/{keyId}` | [`KeyService::remove`] |
//!
//! The routes need a [`Principal`] from [`JwtProfileLayer`](crate::JwtProfileLayer);
//! without one they answer 401. Request bodies are limited to 64 KiB.
//!
//! ```
//! use axum::Router;
//! use jwt_profile::{JwtProfileLayer, KeyService, Validation, Verifier};
//! use jwt_profile::http::KeyApi;
//! use jwt_profile::store::{CachedStore, MemoryStore};
//!
//! let store = CachedStore::new(MemoryStore::new());
//! let api = KeyApi::new(KeyService::new(store.clone()));
//! let verifier = Verifier::new(store, Validation::new(["https://api.example.com"]));
//! let app: Router = Router::new()
//!     .merge(api.router())
//!     .layer(JwtProfileLayer::new(verifier));
//! # let _ = app;
//! ```

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::request::Parts;
use http::{HeaderName, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::adapter;
use crate::error::{Error, ErrorKind};
use crate::key::{Details, KeyType, MachineKey};
use crate::principal::{MissingPrincipal, Principal};
use crate::service::{CreateKey, KeyService};
use crate::store::ListQuery;

/// The OpenAPI 3 document of these routes (`openapi/openapi.json`), for
/// serving next to them; the example server serves it at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi/openapi.json");

pub use crate::adapter::{MAX_BODY_BYTES, ORG_HEADER};

/// The REST key API: [`KeyService`] plus the name of the organization header.
#[derive(Clone, Debug)]
pub struct KeyApi {
    service: KeyService,
    org_header: HeaderName,
}

impl KeyApi {
    /// The API over `service`, reading the target organization from
    /// `x-zitadel-orgid`.
    pub fn new(service: KeyService) -> KeyApi {
        KeyApi {
            service,
            org_header: HeaderName::from_static(ORG_HEADER),
        }
    }

    /// Reads the target organization from another header.
    pub fn org_header(mut self, name: HeaderName) -> KeyApi {
        self.org_header = name;
        self
    }

    /// The routes, ready to merge into an application's router (any state).
    /// A `Router<()>` is also a tower `Service`.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new()
            .route("/users/{user_id}/keys", post(create))
            .route("/users/{user_id}/keys/_search", post(list))
            .route("/users/{user_id}/keys/{key_id}", get(read).delete(remove))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self)
    }
}

// ---- responses --------------------------------------------------------------

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailsJson {
    sequence: String,
    creation_date: String,
    change_date: String,
    resource_owner: String,
}

impl From<&Details> for DetailsJson {
    fn from(d: &Details) -> Self {
        DetailsJson {
            sequence: d.sequence.to_string(),
            creation_date: timestamp(d.creation_date),
            change_date: timestamp(d.change_date),
            resource_owner: d.resource_owner.clone(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyJson {
    id: String,
    details: DetailsJson,
    #[serde(rename = "type")]
    key_type: &'static str,
    expiration_date: String,
}

impl From<&MachineKey> for KeyJson {
    fn from(k: &MachineKey) -> Self {
        KeyJson {
            id: k.id.clone(),
            details: (&k.details).into(),
            key_type: k.key_type.as_str(),
            expiration_date: timestamp(k.expiration_date),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AddKeyResponse {
    key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_details: Option<String>,
    details: DetailsJson,
}

#[derive(Serialize)]
struct GetKeyResponse {
    key: KeyJson,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListDetailsJson {
    total_result: String,
    view_timestamp: String,
}

#[derive(Serialize)]
struct ListKeysResponse {
    details: ListDetailsJson,
    result: Vec<KeyJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangeDetailsJson {
    sequence: String,
    change_date: String,
    resource_owner: String,
}

#[derive(Serialize)]
struct RemoveKeyResponse {
    details: ChangeDetailsJson,
}

/// The JSON error body with its HTTP status: handlers return
/// `Result<Json<_>, Error>`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.to_http_response().map(Body::from)
    }
}

// ---- requests ---------------------------------------------------------------

/// The authenticated caller: the [`Principal`] the layer put in the
/// request's extensions; 401 without one.
struct Caller(Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| MissingPrincipal.error())
    }
}

/// Path parameters, with a malformed one answered as the JSON error body.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Params(value)),
            Err(e) => {
                Err(ErrorKind::PathInvalid
                    .error(format!("invalid path parameter: {}", e.body_text())))
            }
        }
    }
}

/// The target organization: the configured header when present (checked
/// against the id rules by the service), else the caller's own (`None`).
struct TargetOrg(Option<String>);

impl FromRequestParts<KeyApi> for TargetOrg {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, api: &KeyApi) -> Result<Self, Error> {
        adapter::org(&parts.headers, &api.org_header).map(|org| TargetOrg(org.map(str::to_owned)))
    }
}

/// A proto3-JSON request body: at most 64 KiB, a JSON object (or empty,
/// meaning every field absent), unknown fields ignored.
struct Body64<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> FromRequest<S> for Body64<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Error> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| match e {
                BytesRejection::FailedToBufferBody(_)
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    ErrorKind::BodyTooLarge.error(format!(
                        "request body is larger than {MAX_BODY_BYTES} bytes"
                    ))
                }
                other => ErrorKind::BodyUnreadable
                    .error(format!("request body could not be read: {other}")),
            })?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Ok(Body64(T::default())),
            // serde would also read a struct from a JSON array; bodies are
            // proto3 JSON messages, which are objects.
            Some(b'{') => {}
            Some(_) => {
                return Err(ErrorKind::BodyMalformed.error("request body must be a JSON object"));
            }
        }
        serde_json::from_slice(&bytes)
            .map(Body64)
            .map_err(|e| ErrorKind::BodyMalformed.error(format!("request body is not valid: {e}")))
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AddKeyBody {
    #[serde(rename = "type")]
    key_type: Option<Value>,
    expiration_date: Option<String>,
    public_key: Option<String>,
}

fn parse_key_type(v: Option<&Value>) -> Result<KeyType, Error> {
    match v {
        None | Some(Value::Null) => Ok(KeyType::Json),
        Some(Value::String(s)) if s == "KEY_TYPE_JSON" || s == "KEY_TYPE_UNSPECIFIED" => {
            Ok(KeyType::Json)
        }
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) => adapter::key_type_number(n),
            None => Err(adapter::key_type_error(n)),
        },
        Some(other) => Err(adapter::key_type_error(other)),
    }
}

fn parse_expiration(v: Option<&str>) -> Result<Option<DateTime<Utc>>, Error> {
    match v {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| {
                ErrorKind::ExpirationInvalid
                    .error(format!("expirationDate is not an RFC 3339 timestamp: {e}"))
            }),
    }
}

/// proto3 JSON `bytes`: standard or URL-safe base64, padding optional.
fn parse_public_key(v: Option<&str>) -> Result<Option<Vec<u8>>, Error> {
    let Some(s) = v.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let alphabet = if s.contains(['-', '_']) {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config)
        .decode(s)
        .map(Some)
        .map_err(|e| {
            ErrorKind::PublicKeyBadBase64.error(format!("publicKey is not valid base64: {e}"))
        })
}

#[derive(Deserialize, Default)]
struct ListBody {
    query: Option<ListQueryBody>,
}

#[derive(Deserialize, Default)]
struct ListQueryBody {
    offset: Option<Value>,
    limit: Option<Value>,
    asc: Option<bool>,
}

/// proto3 JSON integers: a number or a decimal string.
fn parse_uint(v: Option<&Value>, name: &str, max: u64) -> Result<u64, Error> {
    let n = match v {
        None | Some(Value::Null) => Some(0),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n <= max => Ok(n),
        _ => Err(ErrorKind::ListQueryInvalid.error(format!(
            "query.{name} must be an unsigned integer of at most {max}"
        ))),
    }
}

// ---- handlers ---------------------------------------------------------------

async fn create(
    State(api): State<KeyApi>,
    Caller(caller): Caller,
    Params(user_id): Params<String>,
    TargetOrg(org): TargetOrg,
    Body64(body): Body64<AddKeyBody>,
) -> Result<Json<AddKeyResponse>, Error> {
    let request = CreateKey {
        key_type: parse_key_type(body.key_type.as_ref())?,
        expiration_date: parse_expiration(body.expiration_date.as_deref())?,
        public_key: parse_public_key(body.public_key.as_deref())?,
    };
    let created = api
        .service
        .create(&caller, org.as_deref(), &user_id, request)
        .await?;
    let key_details = created
        .key_file
        .as_ref()
        .map(|file| STANDARD.encode(file.to_json()));
    Ok(Json(AddKeyResponse {
        key_id: created.key.id.clone(),
        key_details,
        details: (&created.key.details).into(),
    }))
}

async fn read(
    State(api): State<KeyApi>,
    Caller(caller): Caller,
    Params((user_id, key_id)): Params<(String, String)>,
    TargetOrg(org): TargetOrg,
) -> Result<Json<GetKeyResponse>, Error> {
    let key = api
        .service
        .get(&caller, org.as_deref(), &user_id, &key_id)
        .await?;
    Ok(Json(GetKeyResponse { key: (&key).into() }))
}

async fn list(
    State(api): State<KeyApi>,
    Caller(caller): Caller,
    Params(user_id): Params<String>,
    TargetOrg(org): TargetOrg,
    Body64(body): Body64<ListBody>,
) -> Result<Json<ListKeysResponse>, Error> {
    let query = body.query.unwrap_or_default();
    let request = ListQuery {
        offset: parse_uint(query.offset.as_ref(), "offset", u64::MAX)?,
        limit: parse_uint(query.limit.as_ref(), "limit", u64::from(u32::MAX))? as u32,
        asc: query.asc.unwrap_or(false),
    };
    let page = api
        .service
        .list(&caller, org.as_deref(), &user_id, request)
        .await?;
    Ok(Json(ListKeysResponse {
        details: ListDetailsJson {
            total_result: page.total.to_string(),
            view_timestamp: timestamp(page.view_timestamp),
        },
        result: page.keys.iter().map(KeyJson::from).collect(),
    }))
}

async fn remove(
    State(api): State<KeyApi>,
    Caller(caller): Caller,
    Params((user_id, key_id)): Params<(String, String)>,
    TargetOrg(org): TargetOrg,
) -> Result<Json<RemoveKeyResponse>, Error> {
    let details = api
        .service
        .remove(&caller, org.as_deref(), &user_id, &key_id)
        .await?;
    Ok(Json(RemoveKeyResponse {
        details: ChangeDetailsJson {
            sequence: details.sequence.to_string(),
            change_date: timestamp(details.change_date),
            resource_owner: details.resource_owner,
        },
    }))
}

// ---- the token endpoint -----------------------------------------------------

/// The token endpoint's routes over a [`TokenIssuer`](crate::token::TokenIssuer):
///
/// | route | what |
/// |---|---|
/// | `GET /.well-known/openid-configuration` | discovery |
/// | `GET /.well-known/oauth-authorization-server` | the same document |
/// | `POST /oauth/v2/token` | the jwt-bearer grant (form body, at most 16 KiB) |
/// | `GET /oauth/v2/keys` | the published signing keys (JWKS) |
///
/// All are open: they sit beside the key API, outside the layer (the
/// assertion is the token request's credential). Answers to token requests,
/// errors included, carry `Cache-Control: no-store`; the JWKS
/// `Cache-Control: public, max-age=300`. Mount them at the issuer's path.
///
/// ```no_run
/// # async fn run(issuer: jwt_profile::token::TokenIssuer) {
/// use jwt_profile::http::TokenApi;
/// let app: axum::Router = TokenApi::new(issuer).router();
/// # let _ = app;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TokenApi {
    issuer: crate::token::TokenIssuer,
}

impl TokenApi {
    /// The routes of `issuer`.
    pub fn new(issuer: crate::token::TokenIssuer) -> TokenApi {
        TokenApi { issuer }
    }

    /// The routes, ready to merge into an application's router (any state).
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        use crate::token::{KEYS_PATH, TOKEN_PATH};
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/oauth-authorization-server", get(discovery))
            .route(TOKEN_PATH, post(token))
            .route(KEYS_PATH, get(jwks))
            .layer(DefaultBodyLimit::disable())
            .with_state(self)
    }
}

async fn discovery(State(api): State<TokenApi>) -> Json<crate::token::Discovery> {
    Json(api.issuer.discovery())
}

async fn jwks(State(api): State<TokenApi>) -> Response {
    (
        [(http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(api.issuer.jwks()),
    )
        .into_response()
}

async fn token(State(api): State<TokenApi>, request: Request) -> Response {
    use crate::token::{MAX_TOKEN_REQUEST_BYTES, TokenError, TokenRequest};
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A declared length over the limit is refused before any byte is read
    // (no `100 Continue`); a body that trickles is given 10 seconds.
    let read = async {
        if declared.is_some_and(|n| n > MAX_TOKEN_REQUEST_BYTES as u64) {
            return Err(());
        }
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            axum::body::to_bytes(body, MAX_TOKEN_REQUEST_BYTES),
        )
        .await
        .map_err(|_| ())?
        .map_err(|_| ())
    };
    let answer = match read.await {
        Err(()) => Err(TokenError::InvalidRequest(
            "request body is larger than 16 KiB, unreadable or too slow".into(),
        )),
        Ok(body) => match TokenRequest::from_form(content_type, &body) {
            Ok(request) => api.issuer.exchange(&request).await,
            Err(e) => Err(e),
        },
    };
    let no_store = [
        (http::header::CACHE_CONTROL, "no-store"),
        (http::header::PRAGMA, "no-cache"),
    ];
    match answer {
        Ok(response) => (no_store, Json(response)).into_response(),
        Err(e) => {
            let mut res = (e.status(), no_store, Json(e.to_json())).into_response();
            if matches!(e, TokenError::Unavailable(_)) {
                res.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("5"),
                );
            }
            res
        }
    }
}
