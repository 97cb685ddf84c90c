//! gRPC-style error codes, the JSON error body
//! (`{"code":…,"message":…,"details":[{"@type":…,"id":…,"message":…}]}`)
//! and its HTTP mapping.
//!
//! Every failure the crate reports — from the key service, the verifier or an
//! adapter — is an [`Error`]: a [`Code`] (the gRPC status code), a stable
//! machine-readable `id` (e.g. `KEY-expiration-past`) and a human message.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The `@type` of the one entry in an error body's `details`.
pub const ERROR_DETAIL_TYPE: &str = "type.googleapis.com/jwtprofile.v1.ErrorDetail";

/// A gRPC status code, as used in error bodies and `grpc-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// 3: bad body, bad path parameter, bad public key, past expiration (HTTP 400).
    InvalidArgument,
    /// 5: no such key for this user and organization (HTTP 404).
    NotFound,
    /// 6: key id collision (HTTP 409).
    AlreadyExists,
    /// 7: the permission policy said no (HTTP 403).
    PermissionDenied,
    /// 8: a configured limit was hit (HTTP 429).
    ResourceExhausted,
    /// 9: the user is bound to another organization (HTTP 400).
    FailedPrecondition,
    /// 13: a bug; never used for bad input (HTTP 500).
    Internal,
    /// 14: the key store cannot be reached (HTTP 503).
    Unavailable,
    /// 16: no or bad assertion (HTTP 401).
    Unauthenticated,
}

impl Code {
    /// The numeric gRPC code.
    pub fn as_i32(self) -> i32 {
        match self {
            Code::InvalidArgument => 3,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::Unauthenticated => 16,
        }
    }

    /// The HTTP status for this code (3 and 9 → 400, 16 → 401, 7 → 403,
    /// 5 → 404, 6 → 409, 8 → 429, 13 → 500, 14 → 503).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// The cause of an [`Error`]: every stable id the crate reports, with its
/// gRPC code. [`Reason`](crate::Reason) is the same for refused tokens;
/// [`ErrorKind::Token`] carries it.
///
/// ```
/// use jwt_profile::{Code, ErrorKind};
/// let err = ErrorKind::KeyNotFound.error("no such key for this user and organization");
/// assert_eq!(err.kind(), ErrorKind::KeyNotFound);
/// assert_eq!(err.id(), "KEY-not-found");
/// assert_eq!(err.code(), Code::NotFound);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A user id (path or setting) breaks the id rules: 1–200 bytes, no control character, no `/`. (`PARAM-user-id-invalid`)
    UserIdInvalid,
    /// A key id breaks the id rules. (`PARAM-key-id-invalid`)
    KeyIdInvalid,
    /// The target organization breaks the id rules. (`PARAM-org-id-invalid`)
    OrgIdInvalid,
    /// A path parameter could not be read. (`PARAM-invalid`)
    PathInvalid,
    /// The request body is not a valid JSON object (or message) of the expected shape. (`BODY-malformed`)
    BodyMalformed,
    /// The request body is larger than the limit. (`BODY-too-large`)
    BodyTooLarge,
    /// The request body could not be read. (`BODY-unreadable`)
    BodyUnreadable,
    /// The key type is not `KEY_TYPE_JSON` / `KEY_TYPE_UNSPECIFIED` / 0 / 1. (`KEY-type-invalid`)
    KeyTypeInvalid,
    /// The expiration date is not an RFC 3339 timestamp. (`KEY-expiration-invalid`)
    ExpirationInvalid,
    /// The expiration date is not in the future. (`KEY-expiration-past`)
    ExpirationPast,
    /// The expiration date is after 9999-12-31T23:59:59Z. (`KEY-expiration-too-late`)
    ExpirationTooLate,
    /// The public key document is larger than 16 KiB. (`KEY-public-key-too-large`)
    PublicKeyTooLarge,
    /// The public key is not base64. (`KEY-public-key-bad-base64`)
    PublicKeyBadBase64,
    /// The public key is not a PEM public key document. (`KEY-public-key-bad-pem`)
    PublicKeyBadPem,
    /// The public key's DER does not parse. (`KEY-public-key-bad-der`)
    PublicKeyBadDer,
    /// A certificate was given instead of a public key. (`KEY-public-key-certificate`)
    PublicKeyCertificate,
    /// A private key was given instead of a public key. (`KEY-public-key-private`)
    PublicKeyPrivate,
    /// The key algorithm or curve is not RSA, P-256, P-384 or Ed25519. (`KEY-public-key-unsupported`)
    PublicKeyUnsupported,
    /// The public key is malformed for its algorithm. (`KEY-public-key-invalid`)
    PublicKeyInvalid,
    /// An RSA key under 2048 bits. (`KEY-public-key-rsa-too-small`)
    RsaTooSmall,
    /// An RSA key over 8192 bits. (`KEY-public-key-rsa-too-large`)
    RsaTooLarge,
    /// An RSA public exponent that is even or below 3. (`KEY-public-key-rsa-exponent`)
    RsaExponent,
    /// A list page size above 1000. (`LIST-limit-too-large`)
    ListLimitTooLarge,
    /// A list query field of the wrong type or range. (`LIST-query-invalid`)
    ListQueryInvalid,
    /// No such key for this user and organization. (`KEY-not-found`)
    KeyNotFound,
    /// A key with this id exists already. (`KEY-id-exists`)
    KeyIdExists,
    /// The user's keys belong to another organization. (`KEY-user-other-org`)
    UserInOtherOrg,
    /// The user holds the most keys allowed. (`KEY-limit-reached`)
    KeyLimitReached,
    /// RSA key generation failed. (`KEY-generation-failed`)
    KeyGenerationFailed,
    /// No bearer token in the request (or no `Principal` for a route that needs one). (`AUTH-missing`)
    CredentialsMissing,
    /// The permission policy refused the operation. (`AUTH-permission-denied`)
    PermissionDenied,
    /// A key file is not valid JSON of the key-file shape. (`KEYFILE-malformed`)
    KeyFileMalformed,
    /// A key file could not be read. (`KEYFILE-unreadable`)
    KeyFileUnreadable,
    /// A key file's private key cannot be used for signing. (`KEYFILE-bad-private-key`)
    PrivateKeyInvalid,
    /// Signing failed. (`KEYFILE-sign-failed`)
    SigningFailed,
    /// The key store (or replay store) cannot be reached; the request may succeed later. (`STORE-unavailable`)
    StoreUnavailable,
    /// A refused token, with its reason (`TOKEN-…`).
    Token(crate::verify::Reason),
}

impl ErrorKind {
    /// The stable, machine-readable id.
    pub fn id(self) -> &'static str {
        match self {
            ErrorKind::UserIdInvalid => "PARAM-user-id-invalid",
            ErrorKind::KeyIdInvalid => "PARAM-key-id-invalid",
            ErrorKind::OrgIdInvalid => "PARAM-org-id-invalid",
            ErrorKind::PathInvalid => "PARAM-invalid",
            ErrorKind::BodyMalformed => "BODY-malformed",
            ErrorKind::BodyTooLarge => "BODY-too-large",
            ErrorKind::BodyUnreadable => "BODY-unreadable",
            ErrorKind::KeyTypeInvalid => "KEY-type-invalid",
            ErrorKind::ExpirationInvalid => "KEY-expiration-invalid",
            ErrorKind::ExpirationPast => "KEY-expiration-past",
            ErrorKind::ExpirationTooLate => "KEY-expiration-too-late",
            ErrorKind::PublicKeyTooLarge => "KEY-public-key-too-large",
            ErrorKind::PublicKeyBadBase64 => "KEY-public-key-bad-base64",
            ErrorKind::PublicKeyBadPem => "KEY-public-key-bad-pem",
            ErrorKind::PublicKeyBadDer => "KEY-public-key-bad-der",
            ErrorKind::PublicKeyCertificate => "KEY-public-key-certificate",
            ErrorKind::PublicKeyPrivate => "KEY-public-key-private",
            ErrorKind::PublicKeyUnsupported => "KEY-public-key-unsupported",
            ErrorKind::PublicKeyInvalid => "KEY-public-key-invalid",
            ErrorKind::RsaTooSmall => "KEY-public-key-rsa-too-small",
            ErrorKind::RsaTooLarge => "KEY-public-key-rsa-too-large",
            ErrorKind::RsaExponent => "KEY-public-key-rsa-exponent",
            ErrorKind::ListLimitTooLarge => "LIST-limit-too-large",
            ErrorKind::ListQueryInvalid => "LIST-query-invalid",
            ErrorKind::KeyNotFound => "KEY-not-found",
            ErrorKind::KeyIdExists => "KEY-id-exists",
            ErrorKind::UserInOtherOrg => "KEY-user-other-org",
            ErrorKind::KeyLimitReached => "KEY-limit-reached",
            ErrorKind::KeyGenerationFailed => "KEY-generation-failed",
            ErrorKind::CredentialsMissing => "AUTH-missing",
            ErrorKind::PermissionDenied => "AUTH-permission-denied",
            ErrorKind::KeyFileMalformed => "KEYFILE-malformed",
            ErrorKind::KeyFileUnreadable => "KEYFILE-unreadable",
            ErrorKind::PrivateKeyInvalid => "KEYFILE-bad-private-key",
            ErrorKind::SigningFailed => "KEYFILE-sign-failed",
            ErrorKind::StoreUnavailable => "STORE-unavailable",
            ErrorKind::Token(reason) => reason.id(),
        }
    }

    /// The gRPC code.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::UserIdInvalid => Code::InvalidArgument,
            ErrorKind::KeyIdInvalid => Code::InvalidArgument,
            ErrorKind::OrgIdInvalid => Code::InvalidArgument,
            ErrorKind::PathInvalid => Code::InvalidArgument,
            ErrorKind::BodyMalformed => Code::InvalidArgument,
            ErrorKind::BodyTooLarge => Code::InvalidArgument,
            ErrorKind::BodyUnreadable => Code::InvalidArgument,
            ErrorKind::KeyTypeInvalid => Code::InvalidArgument,
            ErrorKind::ExpirationInvalid => Code::InvalidArgument,
            ErrorKind::ExpirationPast => Code::InvalidArgument,
            ErrorKind::ExpirationTooLate => Code::InvalidArgument,
            ErrorKind::PublicKeyTooLarge => Code::InvalidArgument,
            ErrorKind::PublicKeyBadBase64 => Code::InvalidArgument,
            ErrorKind::PublicKeyBadPem => Code::InvalidArgument,
            ErrorKind::PublicKeyBadDer => Code::InvalidArgument,
            ErrorKind::PublicKeyCertificate => Code::InvalidArgument,
            ErrorKind::PublicKeyPrivate => Code::InvalidArgument,
            ErrorKind::PublicKeyUnsupported => Code::InvalidArgument,
            ErrorKind::PublicKeyInvalid => Code::InvalidArgument,
            ErrorKind::RsaTooSmall => Code::InvalidArgument,
            ErrorKind::RsaTooLarge => Code::InvalidArgument,
            ErrorKind::RsaExponent => Code::InvalidArgument,
            ErrorKind::ListLimitTooLarge => Code::InvalidArgument,
            ErrorKind::ListQueryInvalid => Code::InvalidArgument,
            ErrorKind::KeyNotFound => Code::NotFound,
            ErrorKind::KeyIdExists => Code::AlreadyExists,
            ErrorKind::UserInOtherOrg => Code::FailedPrecondition,
            ErrorKind::KeyLimitReached => Code::ResourceExhausted,
            ErrorKind::KeyGenerationFailed => Code::Internal,
            ErrorKind::CredentialsMissing => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::KeyFileMalformed => Code::InvalidArgument,
            ErrorKind::KeyFileUnreadable => Code::InvalidArgument,
            ErrorKind::PrivateKeyInvalid => Code::InvalidArgument,
            ErrorKind::SigningFailed => Code::Internal,
            ErrorKind::StoreUnavailable => Code::Unavailable,
            ErrorKind::Token(_) => Code::Unauthenticated,
        }
    }

    /// An [`Error`] of this kind with `message`.
    pub fn error(self, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            kind: self,
            message: message.into(),
            source: None,
        }
    }
}

/// An error: an [`ErrorKind`] (its stable id and gRPC code), a message,
/// and for [`ErrorKind::StoreUnavailable`] the underlying cause
/// ([`source`](std::error::Error::source)), which is logged, never shown.
///
/// ```
/// use jwt_profile::{Code, ErrorKind};
/// let err = ErrorKind::KeyNotFound.error("key not found");
/// assert_eq!(err.code().http_status(), 404);
/// assert_eq!(err.id(), "KEY-not-found");
/// ```
#[derive(Clone, Debug)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Error {}

impl Error {
    /// No credentials: no bearer token in the request, or a route that needs
    /// a [`Principal`](crate::Principal) reached without one (401).
    pub(crate) fn missing_credentials() -> Error {
        ErrorKind::CredentialsMissing.error("no bearer token in the request")
    }

    /// The key store (or replay store) cannot be reached, because of
    /// `cause`: 503, code 14, with one fixed message for callers.
    pub fn unavailable(cause: impl std::fmt::Display) -> Error {
        let cause: Box<dyn std::error::Error + Send + Sync> = cause.to_string().into();
        Error {
            kind: ErrorKind::StoreUnavailable,
            message: Cow::Borrowed("the key store cannot be reached; try again"),
            source: Some(std::sync::Arc::from(cause)),
        }
    }

    /// The cause.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.kind.code()
    }

    /// The stable, machine-readable id of the cause.
    pub fn id(&self) -> &str {
        self.kind.id()
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON error body: code, message and one detail with the stable id.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code().as_i32(),
            message: self.message.to_string(),
            details: vec![ErrorDetail {
                type_url: ERROR_DETAIL_TYPE.to_string(),
                id: self.id().to_string(),
                message: self.message.to_string(),
            }],
        }
    }

    /// The JSON error body, serialized.
    pub fn to_json(&self) -> Bytes {
        // Serializing a struct of strings and an integer cannot fail.
        Bytes::from(serde_json::to_vec(&self.to_body()).unwrap_or_default())
    }

    /// A complete HTTP response: the mapped status, `content-type:
    /// application/json` and the JSON body.
    pub fn to_http_response(&self) -> http::Response<Bytes> {
        let mut res = http::Response::new(self.to_json());
        *res.status_mut() = self.code().http_status();
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        res
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.id())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The JSON error body: `{"code":…,"message":"…","details":[…]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The numeric gRPC code.
    pub code: i32,
    /// The human-readable message.
    pub message: String,
    /// One [`ErrorDetail`] naming the cause.
    pub details: Vec<ErrorDetail>,
}

/// The one entry of an error body's `details`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Always [`ERROR_DETAIL_TYPE`].
    #[serde(rename = "@type")]
    pub type_url: String,
    /// The stable id of the cause.
    pub id: String,
    /// The human-readable message.
    pub message: String,
}
