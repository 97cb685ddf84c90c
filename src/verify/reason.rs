//! Why an assertion was refused: [`Reason`] and [`VerifyError`].

use std::fmt;

use crate::error::{Error, ErrorKind};

/// Why an assertion was refused. Each has a stable [`id`](Reason::id) and a
/// short [`description`](Reason::description) (used in
/// `WWW-Authenticate: … error_description="…"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The token is larger than the configured maximum.
    TooLarge,
    /// The token's form or a claim's type is wrong; the text says which.
    Malformed(&'static str),
    /// `alg` is `none`, HMAC, unknown or not allowed; the text says which.
    Algorithm(&'static str),
    /// The header has a `crit` member.
    Crit,
    /// No key with this `kid` belongs to the `iss`.
    UnknownKey,
    /// The key's expiration date has passed.
    KeyExpired,
    /// `alg` does not fit the stored key's type.
    AlgorithmMismatch,
    /// The signature does not verify.
    Signature,
    /// `iss` and `sub` differ.
    IssuerSubject,
    /// `aud` names none of the accepted audiences.
    Audience,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iat` is in the future.
    IssuedInFuture,
    /// `iat` is older than the maximum age.
    TooOld,
    /// The (`iss`, `jti`) was used before (replay protection on).
    Replayed,
    /// An access token's `iss` is not the configured issuer.
    Issuer,
    /// The token's `typ` is not accepted here: an access token where only
    /// assertions are (the token endpoint, or a verifier without access
    /// tokens configured).
    TokenType,
}

impl Reason {
    /// Stable machine-readable id.
    pub fn id(self) -> &'static str {
        match self {
            Reason::TooLarge => "TOKEN-too-large",
            Reason::Malformed(_) => "TOKEN-malformed",
            Reason::Algorithm(_) => "TOKEN-algorithm",
            Reason::Crit => "TOKEN-crit",
            Reason::UnknownKey => "TOKEN-unknown-key",
            Reason::KeyExpired => "TOKEN-key-expired",
            Reason::AlgorithmMismatch => "TOKEN-algorithm-key-mismatch",
            Reason::Signature => "TOKEN-bad-signature",
            Reason::IssuerSubject => "TOKEN-iss-sub",
            Reason::Audience => "TOKEN-audience",
            Reason::Expired => "TOKEN-expired",
            Reason::NotYetValid => "TOKEN-not-yet-valid",
            Reason::IssuedInFuture => "TOKEN-iat-future",
            Reason::TooOld => "TOKEN-too-old",
            Reason::Replayed => "TOKEN-replayed",
            Reason::Issuer => "TOKEN-issuer",
            Reason::TokenType => "TOKEN-type",
        }
    }

    /// Short human description; never contains `"` or `\`.
    pub fn description(self) -> &'static str {
        match self {
            Reason::TooLarge => "token too large",
            Reason::Malformed(why) | Reason::Algorithm(why) => why,
            Reason::Crit => "crit header is not supported",
            Reason::UnknownKey => "unknown key",
            Reason::KeyExpired => "key expired",
            Reason::AlgorithmMismatch => "alg does not match the key type",
            Reason::Signature => "invalid signature",
            Reason::IssuerSubject => "iss and sub differ",
            Reason::Audience => "audience not accepted",
            Reason::Expired => "token expired",
            Reason::NotYetValid => "token not yet valid (nbf)",
            Reason::IssuedInFuture => "iat is in the future",
            Reason::TooOld => "token too old (iat)",
            Reason::Replayed => "token already used (jti)",
            Reason::Issuer => "iss is not the accepted issuer",
            Reason::TokenType => "token type not accepted here",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Why verification failed: the token is bad, or the key store could not be
/// asked (then the token may be fine).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is refused (401).
    Invalid(Reason),
    /// The key store cannot be reached (503).
    Unavailable(String),
}

impl VerifyError {
    /// The reason, when the token was refused.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            VerifyError::Invalid(r) => Some(*r),
            VerifyError::Unavailable(_) => None,
        }
    }

    /// As a crate [`Error`] (code 16 or 14).
    pub fn to_error(&self) -> Error {
        match self {
            VerifyError::Invalid(r) => ErrorKind::Token(*r).error(r.description()),
            VerifyError::Unavailable(why) => Error::unavailable(why),
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Invalid(r) => write!(f, "invalid token: {r}"),
            VerifyError::Unavailable(why) => write!(f, "key store unavailable: {why}"),
        }
    }
}

impl std::error::Error for VerifyError {}

impl From<Reason> for VerifyError {
    fn from(r: Reason) -> Self {
        VerifyError::Invalid(r)
    }
}
