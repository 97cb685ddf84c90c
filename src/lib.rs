//! # jwt-profile
//!
//! Machine logins for tower, axum and hyper services. Machine users hold
//! private keys; the service keeps their public keys; every request carries
//! a JWT signed by the machine — an RFC 7523 "JWT profile" assertion, as
//! ZITADEL's client libraries and key files make them.
//!
//! The crate gives you four parts that work together:
//!
//! 1. **Key operations** — [`KeyService`] (create, get, list, remove machine
//!    keys, with expiration dates, organizations and a permission
//!    [`Policy`](policy::Policy)), and its REST routes in `http` shaped like
//!    ZITADEL's management API.
//! 2. **A tower layer** — [`JwtProfileLayer`] validates assertions with a
//!    [`Verifier`] and hands your handlers a [`Principal`].
//! 3. **A pluggable [`KeyStore`](store::KeyStore)** with a cache
//!    ([`CachedStore`](store::CachedStore)) in front.
//! 4. **A token endpoint** — [`TokenIssuer`](token::TokenIssuer) exchanges
//!    assertions for access tokens (RFC 7523 §2.1), with discovery and
//!    JWKS, so ZITADEL's client libraries log in unchanged; the verifier
//!    accepts those access tokens too
//!    ([`Verifier::with_access_tokens`]).
//!
//! Operators get a `jwt_profile.verify` span per verification, audit
//! events for key changes and issued tokens, and (feature `metrics`)
//! counters and histograms through the `metrics` facade; see the README's
//! "Observability".
//!
//! ## Quick start (axum)
//!
//! ```
//! use axum::{Json, Router, routing::get};
//! use jwt_profile::{JwtProfileLayer, KeyService, Principal, Validation, Verifier};
//! use jwt_profile::http::KeyApi;
//! use jwt_profile::policy::DefaultPolicy;
//! use jwt_profile::store::{CachedStore, MemoryStore};
//!
//! async fn whoami(who: Principal) -> String {
//!     format!("hello {} of {}", who.user_id, who.org_id)
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! // One cache over the store, shared by the key API and the verifier, so a
//! // removed key stops working at once.
//! let store = CachedStore::new(MemoryStore::new());
//! let keys = KeyService::new(store.clone())
//!     .with_policy(DefaultPolicy::new().with_admin("default", "admin"));
//! let verifier = Verifier::new(store, Validation::new(["https://api.example.com"]));
//!
//! let app = Router::new()
//!     .route("/whoami", get(whoami))
//!     .merge(KeyApi::new(keys).router())
//!     .layer(JwtProfileLayer::new(verifier));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # if false {
//! axum::serve(listener, app).await?;
//! # }
//! # Ok(()) }
//! ```
//!
//! See the README for the validation rules and a walk-through.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "axum")]
mod adapter;
mod clock;
mod error;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "axum")]
pub mod http;
mod key;
mod key_file;
mod layer;
pub mod policy;
mod principal;
pub mod replay;
mod service;
pub mod store;
mod telemetry;
pub mod token;
mod verify;

#[cfg(feature = "test-util")]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use error::{Code, ERROR_DETAIL_TYPE, Error, ErrorBody, ErrorDetail, ErrorKind};
pub use key::{
    Algorithm, Details, GeneratedKeyPair, KeyKind, KeyType, MAX_ID_BYTES, MAX_PUBLIC_KEY_BYTES,
    MAX_RSA_BITS, MIN_RSA_BITS, MachineKey, PublicKey, VerifyingKey, default_expiration,
    generate_rsa_key_pair,
};
pub use key_file::{AssertionSigner, DEFAULT_ASSERTION_LIFETIME_SECS, KEY_FILE_TYPE, KeyFile};
pub use layer::{
    JwtProfile, JwtProfileLayer, Outcome, Rejection, RejectionKind, ResponseBody, ResponseFuture,
};
pub use principal::{MissingPrincipal, Principal, TokenKind};
pub use service::{CreateKey, CreatedKey, DEFAULT_LIST_LIMIT, KeyService, MAX_LIST_LIMIT};
pub use verify::{AccessTokens, Reason, Validation, Verifier, VerifyError};

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
