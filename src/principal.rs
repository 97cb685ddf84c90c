//! The [`Principal`]: who a validated assertion proves the caller to be.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::Error;

/// Who a validated token (an assertion, or an access token issued for one)
/// proves the caller to be.
///
/// The layer inserts it into the request's extensions; handlers read it from
/// there (or, with the `axum` feature, take it as an extractor). Its
/// strings are shared (`Arc`), so the copies a request makes (from the
/// cache of checked tokens, from the extensions) allocate nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The machine user (`iss` = `sub` of the assertion).
    pub user_id: Arc<str>,
    /// The user's organization: the key's `resourceOwner`.
    pub org_id: Arc<str>,
    /// The id of the key that signed the assertion (`kid`).
    pub key_id: Arc<str>,
    /// The assertion's `exp`.
    pub expires_at: DateTime<Utc>,
    /// The assertion's `iat`.
    pub issued_at: DateTime<Utc>,
    /// Which kind of token proved it: the machine's own assertion, or an
    /// access token the token endpoint issued for one.
    pub kind: TokenKind,
    /// The scopes granted to an access token (empty for an assertion).
    pub scopes: Arc<[String]>,
}

/// Which kind of token a [`Principal`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenKind {
    /// A JWT-profile assertion signed by the machine's own key.
    Assertion,
    /// An access token (`typ: at+jwt`) issued by the token endpoint.
    AccessToken,
}

impl TokenKind {
    /// `assertion` or `access_token`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Assertion => "assertion",
            TokenKind::AccessToken => "access_token",
        }
    }
}

impl Principal {
    /// A principal for code that acts as a user without an assertion, such as
    /// a bootstrap step acting as the administrator. Both dates are `now`.
    pub fn new(user_id: impl AsRef<str>, org_id: impl AsRef<str>, key_id: impl AsRef<str>) -> Self {
        let now = Utc::now();
        Principal {
            user_id: Arc::from(user_id.as_ref()),
            org_id: Arc::from(org_id.as_ref()),
            key_id: Arc::from(key_id.as_ref()),
            expires_at: now,
            issued_at: now,
            kind: TokenKind::Assertion,
            scopes: no_scopes(),
        }
    }
}

/// The empty scope list, shared: a principal without scopes allocates none.
pub(crate) fn no_scopes() -> Arc<[String]> {
    static EMPTY: std::sync::LazyLock<Arc<[String]>> = std::sync::LazyLock::new(|| Arc::from([]));
    EMPTY.clone()
}

/// No [`Principal`] in a request: the route or method is not behind
/// [`JwtProfileLayer`](crate::JwtProfileLayer), or the layer is optional
/// and the request carried no credentials. As the rejection of the axum
/// extractor it answers 401 with the JSON error body; over gRPC it is
/// `UNAUTHENTICATED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingPrincipal;

impl MissingPrincipal {
    /// The error this rejection stands for.
    pub fn error(self) -> Error {
        Error::missing_credentials()
    }
}

#[cfg(feature = "axum")]
mod extract {
    use super::{MissingPrincipal, Principal};
    use axum::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum::response::{IntoResponse, Response};
    use http::request::Parts;

    impl IntoResponse for MissingPrincipal {
        fn into_response(self) -> Response {
            let res = self.error().to_http_response();
            let (mut parts, body) = res.into_parts();
            parts.headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Response::from_parts(parts, axum::body::Body::from(body))
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Principal {
        type Rejection = MissingPrincipal;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Principal>()
                .cloned()
                .ok_or(MissingPrincipal)
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Principal>().cloned())
        }
    }
}
