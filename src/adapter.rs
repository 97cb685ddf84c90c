//! What the REST and gRPC adapters translate the same way: the organization
//! header (metadata) and the numeric key type. Rules stay in the key service.

use http::{HeaderMap, HeaderName};

use crate::error::{Error, ErrorKind};
use crate::key::KeyType;

/// The default organization header (gRPC: metadata key).
pub const ORG_HEADER: &str = "x-zitadel-orgid";

/// Largest accepted request body (REST) or message (gRPC), in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The target organization named in `headers`, if any. Its syntax is the key
/// service's to check; here only "is it text".
pub(crate) fn org<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, Error> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ErrorKind::OrgIdInvalid.error(format!("the {name} header is not valid text"))
        }),
    }
}

/// A key type given as its proto enum number: 0 (`KEY_TYPE_UNSPECIFIED`) and
/// 1 (`KEY_TYPE_JSON`) both mean JSON.
pub(crate) fn key_type_number(n: i64) -> Result<KeyType, Error> {
    match n {
        0 | 1 => Ok(KeyType::Json),
        other => Err(key_type_error(other)),
    }
}

/// The refusal of a key type that is not JSON, as the caller spelled it.
pub(crate) fn key_type_error(shown: impl std::fmt::Display) -> Error {
    ErrorKind::KeyTypeInvalid.error(format!("type {shown} is not supported; use KEY_TYPE_JSON"))
}
