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

/// An error with a gRPC code, a stable id and a message.
///
/// ```
/// use jwt_profile::{Code, Error};
/// let err = Error::new(Code::NotFound, "KEY-not-found", "key not found");
/// assert_eq!(err.code().http_status(), 404);
/// assert_eq!(err.id(), "KEY-not-found");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    code: Code,
    id: Cow<'static, str>,
    message: Cow<'static, str>,
}

impl Error {
    /// Creates an error.
    pub fn new(
        code: Code,
        id: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Error {
            code,
            id: id.into(),
            message: message.into(),
        }
    }

    /// Shorthand for an [`Code::InvalidArgument`] error.
    pub fn invalid(
        id: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Error::new(Code::InvalidArgument, id, message)
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The stable, machine-readable id of the cause.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON error body: code, message and one detail with the stable id.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.as_i32(),
            message: self.message.to_string(),
            details: vec![ErrorDetail {
                type_url: ERROR_DETAIL_TYPE.to_string(),
                id: self.id.to_string(),
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
        *res.status_mut() = self.code.http_status();
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        res
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.id)
    }
}

impl std::error::Error for Error {}

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
