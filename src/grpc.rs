//! The key API over gRPC and gRPC-web (feature `grpc`).
//!
//! [`KeyGrpc`] serves `jwtprofile.v1.MachineKeyService`
//! (`proto/jwtprofile/v1/machine_keys.proto`) over [`KeyService`]. Like the
//! REST routes it only translates: messages and metadata in, messages and a
//! gRPC status out. Every rule is the key service's, so both adapters answer
//! the same input with the same code and message.
//!
//! - The caller is the [`Principal`] that [`JwtProfileLayer`](crate::JwtProfileLayer)
//!   put in the request's extensions; without one a call is `UNAUTHENTICATED`.
//! - The target organization is the `x-zitadel-orgid` metadata (configurable
//!   with [`KeyGrpc::org_header`]), else the caller's own.
//! - A failed call carries the [`Code`](crate::Code) and message of the
//!   [`Error`], and a `grpc-status-details-bin` trailer: a `google.rpc.Status`
//!   whose one detail is a [`pb::ErrorDetail`] with the error's stable id
//!   (read it back with [`error_detail`]).
//! - Messages over 64 KiB are refused, as REST bodies are; a request that
//!   cannot be read is `INVALID_ARGUMENT` (see [`KeyGrpcServer`]).
//!
//! [`KeyGrpc::router`] gives the routes as an axum [`Router`], gRPC and
//! gRPC-web (through `tonic-web`) on the same path, ready to merge next to the
//! REST routes and to serve on one port (HTTP/1.1 and h2c):
//!
//! ```
//! use axum::Router;
//! use jwt_profile::{JwtProfileLayer, KeyService, Validation, Verifier};
//! use jwt_profile::grpc::KeyGrpc;
//! use jwt_profile::http::KeyApi;
//! use jwt_profile::store::{CachedStore, MemoryStore};
//!
//! let store = CachedStore::new(MemoryStore::new());
//! let keys = KeyService::new(store.clone());
//! let verifier = Verifier::new(store, Validation::new(["https://api.example.com"]));
//! let app: Router = Router::new()
//!     .merge(KeyApi::new(keys.clone()).router())
//!     .merge(KeyGrpc::new(keys).router())
//!     .layer(JwtProfileLayer::new(verifier));
//! # let _ = app;
//! ```
//!
//! With tonic's own server, add [`KeyGrpc::into_server`] and put the layer
//! in front with `Server::builder().layer(JwtProfileLayer::new(verifier))`.

use axum::Router;
use chrono::{DateTime, Utc};
use http::HeaderName;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::adapter;
use crate::error::{ERROR_DETAIL_TYPE, Error, ErrorKind};
use crate::key::{Details, MachineKey};
use crate::principal::{MissingPrincipal, Principal};
use crate::service::{CreateKey, KeyService};
use crate::store::ListQuery;

/// The messages and the tonic server and client generated from
/// `proto/jwtprofile/v1/machine_keys.proto` (package `jwtprofile.v1`).
pub mod pb {
    tonic::include_proto!("jwtprofile.v1");
}

pub use crate::adapter::{MAX_BODY_BYTES, ORG_HEADER};
use pb::machine_key_service_server::{MachineKeyService, MachineKeyServiceServer};

/// The proto file the service is generated from, for clients of other
/// languages and for tools such as grpcurl.
pub const PROTO: &str = include_str!("../proto/jwtprofile/v1/machine_keys.proto");

/// `jwtprofile.v1.MachineKeyService` over a [`KeyService`].
#[derive(Clone, Debug)]
pub struct KeyGrpc {
    service: KeyService,
    org_header: HeaderName,
}

impl KeyGrpc {
    /// The gRPC service over `service`, reading the target organization from
    /// the `x-zitadel-orgid` metadata.
    pub fn new(service: KeyService) -> KeyGrpc {
        KeyGrpc {
            service,
            org_header: HeaderName::from_static(ORG_HEADER),
        }
    }

    /// Reads the target organization from other metadata (a lowercase
    /// ASCII name).
    pub fn org_header(mut self, name: HeaderName) -> KeyGrpc {
        self.org_header = name;
        self
    }

    /// The tonic service, for `tonic::transport::Server::add_service` or
    /// `tonic::service::Routes`; see [`KeyGrpcServer`].
    pub fn into_server(self) -> KeyGrpcServer {
        KeyGrpcServer {
            inner: MachineKeyServiceServer::new(self)
                .max_decoding_message_size(MAX_BODY_BYTES)
                .max_encoding_message_size(MAX_BODY_BYTES),
        }
    }

    /// The service as axum routes under `/jwtprofile.v1.MachineKeyService/`,
    /// answering gRPC (HTTP/2) and gRPC-web (`application/grpc-web…`, any
    /// HTTP version). Requests to other paths fall through to the routes it
    /// is merged with.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        use tonic::server::NamedService;
        use tower_layer::Layer;
        let path = format!("/{}/{{*method}}", MachineKeyServiceServer::<KeyGrpc>::NAME);
        let service = tonic_web::GrpcWebLayer::new().layer(self.into_server());
        Router::new().route_service(&path, service)
    }

    /// The caller and the target organization of a request.
    fn context<'a, T>(
        &self,
        request: &'a Request<T>,
    ) -> Result<(&'a Principal, Option<&'a str>), Error> {
        let caller = request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| MissingPrincipal.error())?;
        let org = adapter::org(request.metadata().as_ref(), &self.org_header)?;
        Ok((caller, org))
    }
}

/// The tonic service of [`KeyGrpc`] (`jwtprofile.v1.MachineKeyService`).
///
/// It is tonic's generated server with two settings and one translation:
/// - messages over [`MAX_BODY_BYTES`] are refused (tonic answers
///   `OUT_OF_RANGE`), as REST bodies over 64 KiB are;
/// - a request tonic cannot read — bytes that are not the protobuf message, a
///   truncated frame, no message at all — is `INVALID_ARGUMENT` with the id
///   `BODY-malformed`, as a malformed REST body is. tonic itself answers
///   `INTERNAL` there; this crate keeps `INTERNAL` for its own bugs.
#[derive(Clone, Debug)]
pub struct KeyGrpcServer {
    inner: MachineKeyServiceServer<KeyGrpc>,
}

impl tonic::server::NamedService for KeyGrpcServer {
    const NAME: &'static str =
        <MachineKeyServiceServer<KeyGrpc> as tonic::server::NamedService>::NAME;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ServerFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;

impl<B> tower_service::Service<http::Request<B>> for KeyGrpcServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = ServerFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move { answer.await.map(malformed_is_invalid) })
    }
}

/// Turns tonic's own `INTERNAL` answer to an unreadable request into
/// `INVALID_ARGUMENT`. The service's own errors always carry
/// `grpc-status-details-bin` (see [`status`]); tonic's do not.
fn malformed_is_invalid(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers();
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"13")
        || headers.contains_key("grpc-status-details-bin")
    {
        return response;
    }
    let told = Status::from_header_map(headers)
        .map(|s| s.message().to_string())
        .unwrap_or_default();
    let err = ErrorKind::BodyMalformed.error(format!("request message could not be read: {told}"));
    status(&err).into_http()
}

// ---- errors -----------------------------------------------------------------

/// `google.rpc.Status`, the standard payload of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The gRPC status of an [`Error`]: its code and message, and its stable id
/// as a [`pb::ErrorDetail`] in `grpc-status-details-bin`.
pub fn status(err: &Error) -> Status {
    let code = tonic::Code::from_i32(err.code().as_i32());
    let detail = pb::ErrorDetail {
        id: err.id().to_string(),
        message: err.message().to_string(),
    };
    let details = RpcStatus {
        code: err.code().as_i32(),
        message: err.message().to_string(),
        details: vec![prost_types::Any {
            type_url: ERROR_DETAIL_TYPE.to_string(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(code, err.message(), details.encode_to_vec().into())
}

/// The [`pb::ErrorDetail`] a status from this service carries, if any: the
/// stable id of the cause, the same as in the REST error body.
pub fn error_detail(status: &Status) -> Option<pb::ErrorDetail> {
    let rpc = RpcStatus::decode(status.details()).ok()?;
    rpc.details
        .iter()
        .find(|any| any.type_url == ERROR_DETAIL_TYPE)
        .and_then(|any| pb::ErrorDetail::decode(any.value.as_slice()).ok())
}

// ---- messages ---------------------------------------------------------------

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn expiration(t: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, Error> {
    let Some(t) = t else { return Ok(None) };
    u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .map(Some)
        .ok_or_else(|| {
            ErrorKind::ExpirationInvalid.error(format!(
                "expirationDate is not a valid timestamp ({}s, {}ns)",
                t.seconds, t.nanos
            ))
        })
}

fn details(d: &Details) -> pb::ObjectDetails {
    pb::ObjectDetails {
        sequence: d.sequence,
        creation_date: Some(timestamp(d.creation_date)),
        change_date: Some(timestamp(d.change_date)),
        resource_owner: d.resource_owner.clone(),
    }
}

fn key(k: &MachineKey) -> pb::Key {
    pb::Key {
        id: k.id.clone(),
        details: Some(details(&k.details)),
        r#type: pb::KeyType::Json as i32,
        expiration_date: Some(timestamp(k.expiration_date)),
    }
}

// ---- the service --------------------------------------------------------------

/// The gRPC answer of one operation: the message, or the error's status.
fn reply<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| status(&e))
}

impl KeyGrpc {
    async fn add(&self, request: &Request<pb::AddKeyRequest>) -> Result<pb::AddKeyResponse, Error> {
        let (caller, org) = self.context(request)?;
        let body = request.get_ref();
        let create = CreateKey {
            key_type: adapter::key_type_number(i64::from(body.r#type))?,
            expiration_date: expiration(body.expiration_date)?,
            public_key: Some(body.public_key.clone()).filter(|k| !k.is_empty()),
        };
        let created = self
            .service
            .create(caller, org, &body.user_id, create)
            .await?;
        Ok(pb::AddKeyResponse {
            key_id: created.key.id.clone(),
            key_details: created
                .key_file
                .map(|file| file.to_json())
                .unwrap_or_default(),
            details: Some(details(&created.key.details)),
        })
    }

    async fn get(&self, request: &Request<pb::GetKeyRequest>) -> Result<pb::GetKeyResponse, Error> {
        let (caller, org) = self.context(request)?;
        let body = request.get_ref();
        let found = self
            .service
            .get(caller, org, &body.user_id, &body.key_id)
            .await?;
        Ok(pb::GetKeyResponse {
            key: Some(key(&found)),
        })
    }

    async fn list(
        &self,
        request: &Request<pb::ListKeysRequest>,
    ) -> Result<pb::ListKeysResponse, Error> {
        let (caller, org) = self.context(request)?;
        let body = request.get_ref();
        let query = body.query.unwrap_or_default();
        let list = ListQuery {
            offset: query.offset,
            limit: query.limit,
            asc: query.asc,
        };
        let page = self.service.list(caller, org, &body.user_id, list).await?;
        Ok(pb::ListKeysResponse {
            details: Some(pb::ListDetails {
                total_result: page.total,
                view_timestamp: Some(timestamp(page.view_timestamp)),
            }),
            result: page.keys.iter().map(key).collect(),
        })
    }

    async fn remove(
        &self,
        request: &Request<pb::RemoveKeyRequest>,
    ) -> Result<pb::RemoveKeyResponse, Error> {
        let (caller, org) = self.context(request)?;
        let body = request.get_ref();
        let removed = self
            .service
            .remove(caller, org, &body.user_id, &body.key_id)
            .await?;
        Ok(pb::RemoveKeyResponse {
            details: Some(pb::ObjectDetails {
                sequence: removed.sequence,
                creation_date: None,
                change_date: Some(timestamp(removed.change_date)),
                resource_owner: removed.resource_owner,
            }),
        })
    }
}

#[tonic::async_trait]
impl MachineKeyService for KeyGrpc {
    async fn add_key(
        &self,
        request: Request<pb::AddKeyRequest>,
    ) -> Result<Response<pb::AddKeyResponse>, Status> {
        reply(self.add(&request).await)
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        reply(self.get(&request).await)
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        reply(self.list(&request).await)
    }

    async fn remove_key(
        &self,
        request: Request<pb::RemoveKeyRequest>,
    ) -> Result<Response<pb::RemoveKeyResponse>, Status> {
        reply(self.remove(&request).await)
    }
}
