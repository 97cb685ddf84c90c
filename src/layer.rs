//! [`JwtProfileLayer`]: a tower layer that validates the request's assertion
//! with a [`Verifier`] and hands the inner service a [`Principal`] in the
//! request's extensions. It only extracts the token and shapes the answer;
//! every rule lives in the verifier.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use jwt_profile::{JwtProfileLayer, Principal, Validation, Verifier};
//! use jwt_profile::store::{CachedStore, MemoryStore};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let verifier = Verifier::new(CachedStore::new(MemoryStore::new()), Validation::new(["https://api.example.com"]));
//! let svc = ServiceBuilder::new()
//!     .layer(JwtProfileLayer::new(verifier))
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         let who = req.extensions().get::<Principal>().map(|p| p.user_id.to_string());
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(who.unwrap_or_default()))))
//!     }));
//! let res = svc.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;
use crate::principal::Principal;
use crate::verify::{Reason, Verifier, VerifyError};

type RejectionHook = dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync;
type OutcomeHook = dyn Fn(&Outcome<'_>) + Send + Sync;

/// What the layer decided for one request, as passed to
/// [`JwtProfileLayer::on_outcome`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// The token was valid: the request goes on with this principal.
    Accepted(&'a Principal),
    /// The request was refused (no credentials, a bad token, or the store
    /// could not be asked); [`Rejection::kind`] says which.
    Refused(&'a Rejection),
}

impl Outcome<'_> {
    /// The reason a token was refused, when it was.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Outcome::Refused(r) => match r.kind() {
                RejectionKind::InvalidToken(reason) => Some(*reason),
                _ => None,
            },
            Outcome::Accepted(_) => None,
        }
    }
}

#[derive(Clone)]
struct Options {
    optional: bool,
    header: HeaderName,
    realm: String,
    on_rejection: Option<Arc<RejectionHook>>,
    on_outcome: Option<Arc<OutcomeHook>>,
}

/// Validates JWT-profile assertions in front of any tower service (axum,
/// hyper 1, tonic).
///
/// By default the token comes from `Authorization: Bearer <token>`, every
/// request must carry one, and refusals are answered 401 with
/// `WWW-Authenticate: Bearer` (and `error="invalid_token"` for a bad token),
/// 503 when the key store cannot be asked, or a gRPC status for gRPC
/// requests.
#[derive(Clone)]
pub struct JwtProfileLayer {
    verifier: Verifier,
    options: Arc<Options>,
}

impl std::fmt::Debug for JwtProfileLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProfileLayer")
            .field("optional", &self.options.optional)
            .field("header", &self.options.header)
            .field("realm", &self.options.realm)
            .finish_non_exhaustive()
    }
}

impl JwtProfileLayer {
    /// A layer validating with `verifier`.
    pub fn new(verifier: Verifier) -> JwtProfileLayer {
        JwtProfileLayer {
            verifier,
            options: Arc::new(Options {
                optional: false,
                header: AUTHORIZATION,
                realm: "jwt-profile".to_string(),
                on_rejection: None,
                on_outcome: None,
            }),
        }
    }

    fn options_mut(&mut self) -> &mut Options {
        // Builder methods normally run before the layer is shared.
        Arc::make_mut(&mut self.options)
    }

    /// Lets requests without credentials through, without a [`Principal`]
    /// (handlers decide). A token that is present must still be valid.
    pub fn optional(mut self) -> Self {
        self.options_mut().optional = true;
        self
    }

    /// Takes the token from another header. Its value is the token itself
    /// (a leading `Bearer ` is accepted too).
    pub fn token_header(mut self, name: HeaderName) -> Self {
        self.options_mut().header = name;
        self
    }

    /// The realm named in `WWW-Authenticate` (default `jwt-profile`).
    /// Quotes and backslashes are removed.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        let realm: String = realm
            .into()
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
            .collect();
        self.options_mut().realm = realm;
        self
    }

    /// Shapes refusal responses yourself; the hook receives the
    /// [`Rejection`] (whose [`Rejection::default_response`] is what the
    /// layer would send) and returns the response to send.
    pub fn on_rejection(
        mut self,
        hook: impl Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.options_mut().on_rejection = Some(Arc::new(hook));
        self
    }
}

impl JwtProfileLayer {
    /// Calls `hook` with every decision: accepted (with the
    /// [`Principal`]) or refused (with the [`Rejection`]), for applications
    /// that count or log in their own way. Requests let through without
    /// credentials by [`optional`](Self::optional) are no decision and do
    /// not call it. The hook runs on the request's task: keep it quick.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use jwt_profile::{JwtProfileLayer, Outcome, Validation, Verifier};
    /// use jwt_profile::store::{CachedStore, MemoryStore};
    /// let refused = Arc::new(AtomicU64::new(0));
    /// let counter = refused.clone();
    /// let verifier = Verifier::new(CachedStore::new(MemoryStore::new()), Validation::new(["aud"]));
    /// let layer = JwtProfileLayer::new(verifier).on_outcome(move |outcome| {
    ///     if let Outcome::Refused(_) = outcome {
    ///         counter.fetch_add(1, Ordering::Relaxed);
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_outcome(mut self, hook: impl Fn(&Outcome<'_>) + Send + Sync + 'static) -> Self {
        self.options_mut().on_outcome = Some(Arc::new(hook));
        self
    }
}

impl<S> Layer<S> for JwtProfileLayer {
    type Service = JwtProfile<S>;

    fn layer(&self, inner: S) -> JwtProfile<S> {
        JwtProfile {
            inner,
            verifier: self.verifier.clone(),
            options: self.options.clone(),
        }
    }
}

/// The service made by [`JwtProfileLayer`].
#[derive(Clone)]
pub struct JwtProfile<S> {
    inner: S,
    verifier: Verifier,
    options: Arc<Options>,
}

impl<S> JwtProfile<S> {
    /// The layer that makes this service, as tower-http's middlewares offer:
    /// `JwtProfile::layer(verifier)` is `JwtProfileLayer::new(verifier)`.
    pub fn layer(verifier: Verifier) -> JwtProfileLayer {
        JwtProfileLayer::new(verifier)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes this service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> std::fmt::Debug for JwtProfile<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProfile").finish_non_exhaustive()
    }
}

/// What kind of refusal a [`Rejection`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No credentials (no header, or another scheme than Bearer).
    MissingCredentials,
    /// The token was refused.
    InvalidToken(Reason),
    /// The key store could not be asked.
    StoreUnavailable,
}

/// A refused request, as passed to [`JwtProfileLayer::on_rejection`].
#[derive(Clone, Debug)]
pub struct Rejection {
    kind: RejectionKind,
    error: Error,
    /// The request's gRPC content type (`application/grpc…`), echoed in the
    /// trailers-only answer; `None` for other requests.
    grpc: Option<HeaderValue>,
    realm: String,
}

impl Rejection {
    fn new(kind: RejectionKind, grpc: Option<HeaderValue>, realm: &str) -> Rejection {
        let error = match &kind {
            RejectionKind::MissingCredentials => Error::missing_credentials(),
            RejectionKind::InvalidToken(r) => VerifyError::Invalid(*r).to_error(),
            RejectionKind::StoreUnavailable => VerifyError::Unavailable(String::new()).to_error(),
        };
        Rejection {
            kind,
            error,
            grpc,
            realm: realm.to_string(),
        }
    }

    /// What kind of refusal this is.
    pub fn kind(&self) -> &RejectionKind {
        &self.kind
    }

    /// The error (code 16 or 14, stable id, message).
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// Whether the request was a gRPC or gRPC-web request
    /// (`content-type: application/grpc…`).
    pub fn is_grpc(&self) -> bool {
        self.grpc.is_some()
    }

    /// The response the layer sends by default: for HTTP a 401 with
    /// `WWW-Authenticate` (or 503) and the JSON error body; for gRPC a
    /// trailers-only response with `grpc-status` and `grpc-message`, and the
    /// request's content type (so gRPC-web clients get a gRPC-web answer).
    pub fn default_response(&self) -> Response<Bytes> {
        if let Some(content_type) = &self.grpc {
            let mut res = Response::new(Bytes::new());
            let h = res.headers_mut();
            h.insert(CONTENT_TYPE, content_type.clone());
            h.insert("grpc-status", HeaderValue::from(self.error.code().as_i32()));
            if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(self.error.message())) {
                h.insert("grpc-message", v);
            }
            return res;
        }
        let mut res = self.error.to_http_response();
        let challenge = match &self.kind {
            RejectionKind::MissingCredentials => format!("Bearer realm=\"{}\"", self.realm),
            RejectionKind::InvalidToken(r) => format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                self.realm,
                r.description()
            ),
            RejectionKind::StoreUnavailable => return res,
        };
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            res.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        res
    }
}

/// Percent-encodes a grpc-message as the gRPC HTTP/2 spec asks.
fn grpc_percent_encode(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn grpc_content_type<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers()
        .get(CONTENT_TYPE)
        .filter(|v| v.as_bytes().starts_with(b"application/grpc"))
        .cloned()
}

/// Where the token sits in the header value.
enum Credentials {
    None,
    Token { value: HeaderValue, start: usize },
}

fn credentials(value: Option<&HeaderValue>, scheme_required: bool) -> Credentials {
    let Some(value) = value else {
        return Credentials::None;
    };
    let bytes = value.as_bytes();
    let has_scheme = bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ");
    let start = if has_scheme {
        7 + bytes[7..].iter().take_while(|b| **b == b' ').count()
    } else if scheme_required {
        // Another scheme (e.g. Basic): not our credentials.
        return Credentials::None;
    } else {
        0
    };
    Credentials::Token {
        value: value.clone(),
        start,
    }
}

/// What kind of refusal a verification error is.
fn rejection_kind(e: VerifyError) -> RejectionKind {
    match e {
        VerifyError::Invalid(reason) => RejectionKind::InvalidToken(reason),
        VerifyError::Unavailable(why) => {
            tracing::warn!(%why, "key store unavailable during verification");
            RejectionKind::StoreUnavailable
        }
    }
}

type VerifyFuture = Pin<Box<dyn Future<Output = Result<Principal, VerifyError>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for JwtProfile<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let grpc = grpc_content_type(&req);
        let options = self.options.clone();
        let scheme_required = options.header == AUTHORIZATION;
        let creds = credentials(req.headers().get(&options.header), scheme_required);
        // A Principal must only ever come from this layer.
        req.extensions_mut().remove::<Principal>();
        let state = match creds {
            Credentials::None if options.optional => State::Calling {
                fut: self.inner.call(req),
            },
            Credentials::None => State::Rejected {
                rejection: Some(Rejection::new(
                    RejectionKind::MissingCredentials,
                    grpc.clone(),
                    &options.realm,
                )),
            },
            Credentials::Token { value, start } => {
                // Most verifications need only what the caches hold: then
                // the check runs here, pinned in place, with no boxed
                // future; the inner service, driven ready by `poll_ready`,
                // is called here and needs no clone. Anything else (a store
                // read, a replay check) starts over as a boxed future.
                let token = std::str::from_utf8(&value.as_bytes()[start..])
                    .map(|t| t.trim_end_matches([' ', '\t']));
                let now = match token {
                    Err(_) => Ok(Err(VerifyError::Invalid(Reason::Malformed(
                        "token is not ASCII",
                    )))),
                    Ok(token) => {
                        // One span for the verification, whichever way it goes.
                        let span = self.verifier.span();
                        let ready = {
                            let attempt = std::pin::pin!(self.verifier.verify_cached(token, &span));
                            attempt.poll(&mut Context::from_waker(std::task::Waker::noop()))
                        };
                        match ready {
                            Poll::Ready(answer) => Ok(answer),
                            Poll::Pending => Err(span),
                        }
                    }
                };
                let answer = match now {
                    Ok(answer) => answer,
                    Err(span) => {
                        let verifier = self.verifier.clone();
                        let mut verify: VerifyFuture = Box::pin(async move {
                            // Checked above: valid UTF-8.
                            let token =
                                std::str::from_utf8(&value.as_bytes()[start..]).unwrap_or_default();
                            verifier
                                .verify_in(token.trim_end_matches([' ', '\t']), span)
                                .await
                        });
                        // A future that must wait registers the real waker
                        // when the response future polls it again (only the
                        // latest poll's waker counts).
                        match verify
                            .as_mut()
                            .poll(&mut Context::from_waker(std::task::Waker::noop()))
                        {
                            Poll::Ready(answer) => answer,
                            Poll::Pending => {
                                // The service that was driven to readiness is
                                // the one that must be called; keep it and
                                // leave a clone in its place (see tower's
                                // guide on `Service::call` and cloning).
                                let clone = self.inner.clone();
                                let ready = std::mem::replace(&mut self.inner, clone);
                                return ResponseFuture {
                                    state: State::Verifying {
                                        verify,
                                        svc: Some(ready),
                                        req: Some(req),
                                    },
                                    options,
                                    grpc,
                                };
                            }
                        }
                    }
                };
                match answer {
                    Ok(principal) => {
                        if let Some(hook) = &options.on_outcome {
                            hook(&Outcome::Accepted(&principal));
                        }
                        req.extensions_mut().insert(principal);
                        State::Calling {
                            fut: self.inner.call(req),
                        }
                    }
                    Err(e) => State::Rejected {
                        rejection: Some(Rejection::new(
                            rejection_kind(e),
                            grpc.clone(),
                            &options.realm,
                        )),
                    },
                }
            }
        };
        ResponseFuture {
            state,
            options,
            grpc,
        }
    }
}

pin_project! {
    /// The response future of [`JwtProfile`].
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
        options: Arc<Options>,
        grpc: Option<HeaderValue>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Verifying {
            verify: VerifyFuture,
            svc: Option<S>,
            req: Option<Request<ReqB>>,
        },
        Calling {
            #[pin]
            fut: S::Future,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
    }
}

impl<S, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

fn render<B>(options: &Options, rejection: &Rejection) -> Response<ResponseBody<B>> {
    if let Some(hook) = &options.on_outcome {
        hook(&Outcome::Refused(rejection));
    }
    let res = match &options.on_rejection {
        Some(hook) => hook(rejection),
        None => rejection.default_response(),
    };
    res.map(ResponseBody::full)
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Verifying { verify, svc, req } => {
                    let outcome = ready!(verify.as_mut().poll(cx));
                    let kind = match outcome {
                        Ok(principal) => {
                            let (Some(mut svc), Some(mut req)) = (svc.take(), req.take()) else {
                                panic!("ResponseFuture polled after completion");
                            };
                            if let Some(hook) = &this.options.on_outcome {
                                hook(&Outcome::Accepted(&principal));
                            }
                            req.extensions_mut().insert(principal);
                            let fut = svc.call(req);
                            this.state.set(State::Calling { fut });
                            continue;
                        }
                        Err(e) => rejection_kind(e),
                    };
                    let rejection = Rejection::new(kind, this.grpc.take(), &this.options.realm);
                    return Poll::Ready(Ok(render(this.options, &rejection)));
                }
                StateProj::Calling { fut } => {
                    return fut
                        .poll(cx)
                        .map(|r| r.map(|res| res.map(ResponseBody::inner)));
                }
                StateProj::Rejected { rejection } => {
                    let Some(rejection) = rejection.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    return Poll::Ready(Ok(render(this.options, &rejection)));
                }
            }
        }
    }
}

pin_project! {
    /// The response body of [`JwtProfile`]: the inner service's body, or
    /// the layer's own refusal body.
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Full {
            body: Option<Bytes>,
        },
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl<B> ResponseBody<B> {
    fn inner(body: B) -> Self {
        ResponseBody {
            kind: BodyKind::Inner { body },
        }
    }

    fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: BodyKind::Full {
                body: if bytes.is_empty() { None } else { Some(bytes) },
            },
        }
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Full { body } => {
                Poll::Ready(body.take().map(|b| Ok(http_body::Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Full { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Full { body } => {
                http_body::SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(value: &str, scheme_required: bool) -> Option<String> {
        let header = HeaderValue::from_str(value).expect("header");
        match credentials(Some(&header), scheme_required) {
            Credentials::None => None,
            Credentials::Token { value, start } => {
                Some(String::from_utf8_lossy(&value.as_bytes()[start..]).into_owned())
            }
        }
    }

    #[test]
    fn credentials_take_the_bearer_token_in_any_case_and_skip_other_schemes() {
        assert_eq!(token("Bearer abc", true).as_deref(), Some("abc"));
        assert_eq!(token("bEaReR   abc", true).as_deref(), Some("abc"));
        assert_eq!(token("Basic dXNlcg==", true), None);
        assert_eq!(token("Bearer", true), None, "a scheme with no token");
        assert_eq!(token("Bearerabc", true), None);
        // A custom header carries the token itself, Bearer optional.
        assert_eq!(token("abc", false).as_deref(), Some("abc"));
        assert_eq!(token("Bearer abc", false).as_deref(), Some("abc"));
        assert!(matches!(credentials(None, true), Credentials::None));
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_percent_encode("token expired"), "token expired");
        assert_eq!(grpc_percent_encode("100%"), "100%25");
        assert_eq!(grpc_percent_encode("é\n"), "%C3%A9%0A");
        assert_eq!(grpc_percent_encode("\u{7f}"), "%7F");
    }
}
