//! [`Verifier`]: the validation rules for JWT-profile assertions, with no
//! knowledge of tower or HTTP. Call it directly from tests, benchmarks or
//! other frameworks; [`JwtProfileLayer`](crate::JwtProfileLayer) wraps it.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use jwt_profile::{KeyService, Principal, Validation, Verifier};
//! use jwt_profile::AssertionSigner;
//! use jwt_profile::CreateKey;
//! use jwt_profile::store::{CachedStore, MemoryStore};
//!
//! let store = CachedStore::new(MemoryStore::new());
//! let keys = KeyService::new(store.clone());
//! let me = Principal::new("ci-bot", "default", "-");
//! let created = keys.create(&me, None, "ci-bot", CreateKey::default()).await.unwrap();
//! let signer = AssertionSigner::from_key_file(&created.key_file.unwrap()).unwrap();
//!
//! let verifier = Verifier::new(store, Validation::new(["https://api.example.com"]));
//! let token = signer.sign("https://api.example.com").unwrap();
//! let principal = verifier.verify(&token).await.unwrap();
//! assert_eq!(&*principal.user_id, "ci-bot");
//! assert!(verifier.verify("not.a.token").await.is_err());
//! # });
//! ```

mod access;
mod checked;
mod json;
mod reason;
mod validation;

pub use access::AccessTokens;
pub use reason::{Reason, VerifyError};
pub use validation::Validation;

use checked::{AssertionCache, CheckedAssertion, DEFAULT_ASSERTION_CACHE_ENTRIES, assertion_cache};
use json::{AudVal, NumVal, RawClaims, StrVal, parse_claims, parse_header};
use validation::MAX_NUMERIC_DATE;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::key::Algorithm;
use crate::key::VerifyingKey;
use crate::principal::{Principal, TokenKind};
use crate::replay::{MAX_JTI_BYTES, ReplayStore};
use crate::store::{CachedStore, KeyLookup, StoreError};
use crate::telemetry::{CacheResult, key_cache};

/// Validates JWT-profile assertions against the keys of a [`KeyLookup`]
/// (normally a [`CachedStore`](crate::store::CachedStore)) and, when given
/// [`AccessTokens`], the access tokens of a token issuer. Cheap to clone;
/// clones share one cache of checked tokens, while a verifier made by one of
/// the `with_*` builders starts with its own, empty.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    keys: Keys,
    validation: Validation,
    clock: Arc<dyn Clock>,
    checked: Option<AssertionCache>,
    replay: Option<Arc<dyn ReplayStore>>,
    /// Access tokens accepted beside assertions, when configured.
    access: Option<AccessTokens>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("validation", &self.inner.validation)
            .finish_non_exhaustive()
    }
}

fn malformed(why: &'static str) -> VerifyError {
    VerifyError::Invalid(Reason::Malformed(why))
}

impl Verifier {
    /// A verifier over `keys` with `validation`, on the system clock, with
    /// a cache of checked assertions (see
    /// [`with_assertion_cache`](Self::with_assertion_cache)).
    pub fn new(keys: impl KeyLookup, validation: Validation) -> Verifier {
        if validation.audiences.is_empty() {
            tracing::warn!("jwt-profile verifier has no audience configured: it accepts nothing");
        }
        Verifier {
            inner: Arc::new(Inner {
                keys: Keys::new(keys),
                validation,
                clock: Arc::new(SystemClock),
                checked: Some(assertion_cache(DEFAULT_ASSERTION_CACHE_ENTRIES)),
                replay: None,
                access: None,
            }),
        }
    }

    /// The same verifier with `change` applied to its settings, and a cache
    /// of checked tokens of its own, empty: what a verifier with other
    /// settings remembered (a clone this one was made from, which may
    /// accept no access tokens, or another issuer's) is not this one's to
    /// accept.
    fn with_inner(self, change: impl FnOnce(&mut Inner)) -> Verifier {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.checked = inner
            .checked
            .as_ref()
            .map(|c| assertion_cache(c.max_entries()));
        change(&mut inner);
        Verifier {
            inner: Arc::new(inner),
        }
    }

    #[cfg(feature = "test-util")]
    /// The same verifier reading time from `clock` (for tests). Its cache of
    /// checked assertions starts empty.
    pub fn with_clock(self, clock: impl Clock) -> Verifier {
        self.with_inner(|inner| inner.clock = Arc::new(clock))
    }

    /// Remembers up to `max_entries` assertions whose signature was
    /// verified (default 10 000; each thread also mirrors up to 64 of
    /// their recent hits), so a machine that reuses one assertion
    /// for many requests pays for the signature once. Each entry lives no
    /// longer than the assertion can pass the time rules. An entry holds no
    /// authority of its own: on every use the key is looked up again and
    /// must still be the stored key that verified the signature (same id
    /// and sequence), and the time claims and the key's expiration date are
    /// checked again — so a removed or expired key refuses the assertion
    /// at once.
    pub fn with_assertion_cache(self, max_entries: u64) -> Verifier {
        self.with_inner(|inner| inner.checked = Some(assertion_cache(max_entries)))
    }

    /// Accepts each (`iss`, `jti`) once: `jti` becomes required (a string
    /// of 1–256 bytes), a second use is refused (`TOKEN-replayed`), and the
    /// cache of checked assertions is bypassed. Each `jti` is remembered
    /// until the last moment its assertion could pass the time rules —
    /// min(`exp`, `iat` + max age) + leeway — whatever `exp` the client
    /// wrote. When `store` cannot remember one more (full, or unreachable)
    /// the answer is "unavailable" (503), never acceptance.
    pub fn with_replay_protection(self, store: impl ReplayStore) -> Verifier {
        self.with_inner(|inner| inner.replay = Some(Arc::new(store)))
    }

    /// Accepts the access tokens of a token issuer beside assertions: a
    /// token whose header `typ` is `at+jwt` must be signed (RS256) by one of
    /// the issuer's published signing keys, name the issuer as `iss` and
    /// one of this verifier's audiences in `aud`, pass the time rules (with
    /// leeway, but no maximum age: the issuer set its lifetime), and — on
    /// every use — the machine key it was issued for (`key_id`) must still
    /// exist, belong to `sub` and not be expired. Removing that machine key
    /// refuses its access tokens at once.
    pub fn with_access_tokens(self, tokens: AccessTokens) -> Verifier {
        self.with_inner(|inner| inner.access = Some(tokens))
    }

    /// The verifier of the token endpoint: the same keys, clock, rules and
    /// replay store, with `audiences`; no access tokens, and no cache of
    /// checked assertions (its entries were checked for other audiences).
    pub(crate) fn for_audiences(&self, audiences: Vec<String>) -> Verifier {
        let mut inner = (*self.inner).clone();
        inner.validation.audiences = audiences;
        inner.checked = None;
        inner.access = None;
        Verifier {
            inner: Arc::new(inner),
        }
    }

    /// The verifier's clock.
    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    /// The stored machine key `id`, as the verifier sees it now.
    pub(crate) async fn machine_key(
        &self,
        id: &str,
    ) -> Result<Option<Arc<crate::key::VerifyingKey>>, VerifyError> {
        self.inner
            .keys
            .find(id, Lookups::Any)
            .await
            .map_err(store_unavailable)
    }

    /// Whether `key` made the signature of `token` (its form and header
    /// are read again; nothing else is checked): tells the key that
    /// verified an assertion from another key stored since under its id.
    pub(crate) fn signed_by(&self, token: &str, key: &crate::key::VerifyingKey) -> bool {
        let Ok(segments) = form(token) else {
            return false;
        };
        let Ok(header) = read_header(&segments, &self.inner.validation) else {
            return false;
        };
        key.verify(header.alg, segments.signing_input, segments.signature())
    }

    /// Checks every assertion in full, every time.
    pub fn without_assertion_cache(self) -> Verifier {
        self.with_inner(|inner| inner.checked = None)
    }

    /// The validation settings.
    pub fn validation(&self) -> &Validation {
        &self.inner.validation
    }

    /// Validates `token` (the compact JWS, without `Bearer `) and returns
    /// who it proves the caller to be.
    ///
    /// The rules run as named steps: size, repeat (an
    /// assertion checked before), form, header, claims, key, signature,
    /// replay. Claims are checked before the key (the rules' order puts
    /// them after the signature): they are cheap, name the issuer the key
    /// must belong to, and spare the store and the signature check for
    /// tokens that cannot pass anyway. Which rules a token breaks never
    /// depends on the order; only which one is reported first.
    ///
    /// Each verification runs in a `jwt_profile.verify` span (DEBUG, as
    /// tower-http's request spans: at INFO, under `tracing-subscriber`'s
    /// formatter, it cost a reused `/whoami` a third of its throughput) with the
    /// fields `enduser.id`, `jwt_profile.org_id`, `jwt_profile.key_id`,
    /// `jwt_profile.kind` (`assertion` or `access_token`) and, on refusal,
    /// `error.type` (the reason's stable id); a refusal is one DEBUG event,
    /// never louder, so a flood of bad tokens cannot flood the logs. The
    /// token itself is never recorded.
    pub async fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        self.verify_with(token, Lookups::Any, self.span()).await
    }

    /// The span of one verification (see [`verify`](Self::verify)).
    pub(crate) fn span(&self) -> tracing::Span {
        use tracing::field::Empty;
        let span = tracing::debug_span!(
            "jwt_profile.verify",
            enduser.id = Empty,
            jwt_profile.org_id = Empty,
            jwt_profile.key_id = Empty,
            jwt_profile.kind = Empty,
            error.type = Empty,
        );
        // A span no subscriber collects becomes no span at all, so the
        // verification's records and polls skip it at once (with tracing's
        // `log` feature a disabled span keeps its metadata, and each record
        // looks its field up by name) — unless tracing's `log` fallback may
        // still write its lines, which it does only for a `log` logger at
        // DEBUG or finer.
        let log_fallback = log::max_level() >= log::LevelFilter::Debug;
        if span.is_disabled() && !log_fallback {
            tracing::Span::none()
        } else {
            span
        }
    }

    /// [`verify`](Self::verify) in `span` (made by [`span`](Self::span)).
    pub(crate) async fn verify_in(
        &self,
        token: &str,
        span: tracing::Span,
    ) -> Result<Principal, VerifyError> {
        self.verify_with(token, Lookups::Any, span).await
    }

    /// [`verify`](Self::verify) for a caller that polls the future once, in
    /// place, and needs no box when it is ready then: it answers exactly as
    /// `verify` does when everything it needs is in the caches, and
    /// otherwise stays pending having read no store and used up no `jti`
    /// (it never runs with replay protection on). The caller then
    /// drops it and runs [`verify_in`](Self::verify_in) in the same
    /// `span`, so one verification has one span whichever way it went
    /// (an abandoned attempt records nothing the full check does not
    /// record again, and no outcome).
    pub(crate) async fn verify_cached(
        &self,
        token: &str,
        span: &tracing::Span,
    ) -> Result<Principal, VerifyError> {
        if self.inner.replay.is_some() {
            return std::future::pending().await;
        }
        self.verify_with(token, Lookups::CachedOnly, span.clone())
            .await
    }

    async fn verify_with(
        &self,
        token: &str,
        lookups: Lookups,
        span: tracing::Span,
    ) -> Result<Principal, VerifyError> {
        use tracing::Instrument;
        let started = crate::telemetry::Started::now();
        let mut kind = TokenKind::Assertion;
        let now = self.inner.clock.now();
        // The steps record into this span, never into `Span::current()`:
        // for a span that is not entered (a disabled one), that was
        // whatever span enclosed the verification, which could thus get
        // the token's unverified `iss` as its `enduser.id`.
        #[expect(clippy::result_large_err, reason = "see `verify_now`")]
        let result = match span.in_scope(|| self.verify_now(token, now, &mut kind, &span)) {
            Ok(principal) => Ok(principal),
            Err(Later::Refused(refused)) => Err(refused),
            Err(later) => {
                self.verify_later(token, later, now, &mut kind, lookups, &span)
                    .instrument(span.clone())
                    .await
            }
        };
        span.record("jwt_profile.kind", kind.as_str());
        match &result {
            Ok(p) => {
                span.record("enduser.id", &*p.user_id);
                span.record("jwt_profile.org_id", &*p.org_id);
                span.record("jwt_profile.key_id", &*p.key_id);
            }
            Err(VerifyError::Invalid(reason)) => {
                span.record("error.type", reason.id());
                tracing::debug!(parent: &span, error.type = reason.id(), reason = reason.description(), "token refused");
            }
            Err(VerifyError::Unavailable(why)) => {
                span.record("error.type", "STORE-unavailable");
                tracing::debug!(parent: &span, error.type = "STORE-unavailable", %why, "token not checked: store unavailable");
            }
        }
        crate::telemetry::verification(kind, &result, started);
        result
    }

    /// The rules from where [`verify_now`](Self::verify_now) stopped
    /// (`later`), with the lookups they need (a store read, a signing-key
    /// reload, a replay check, an access token); `kind` is set as soon as
    /// the token says which kind it is.
    async fn verify_later(
        &self,
        token: &str,
        later: Later<'_>,
        now: DateTime<Utc>,
        kind: &mut TokenKind,
        lookups: Lookups,
        span: &tracing::Span,
    ) -> Result<Principal, VerifyError> {
        let v = &self.inner.validation;
        let now_secs = now.timestamp_micros() as f64 / 1e6;
        let (segments, header) = match later {
            Later::Refused(refused) => return Err(refused),
            Later::Read(segments, header) => (segments, header),
            // The size was checked by `verify_now`.
            Later::Start => {
                if let Some(hit) = self.repeat_hit(token, now_secs, kind) {
                    let key = match self.still_signed(&hit) {
                        true => (self.inner.keys.find(&hit.principal.key_id, lookups).await)
                            .ok()
                            .flatten(),
                        false => None,
                    };
                    if let Some(principal) = self.repeated(token, &hit, key, now, now_secs)? {
                        return Ok(principal);
                    }
                }
                read(token, v, span)?
            }
        };
        if header.typ == Typ::AccessToken {
            *kind = TokenKind::AccessToken;
            let Some(access) = &self.inner.access else {
                return Err(Reason::TokenType.into());
            };
            let (principal, entry) = self
                .access_token(access, &segments, &header, now, lookups, span)
                .await?;
            self.remember(token, entry, now_secs);
            return Ok(principal);
        }
        let claims = parse_claims(segments.payload())?;
        let checked = assertion_claims(&claims, v, now_secs, span)?;
        let found = self.inner.keys.find(&header.kid, lookups).await;
        let key = key_and_signature(found, &checked, &header, &segments, now)?;
        self.replay(&checked, now).await?;
        Ok(self.accept(token, &key, &checked, now_secs))
    }

    /// The rules with what the caches hold (a repeat in the cache of
    /// checked tokens, the key in this thread's mirror of the key cache),
    /// with no future and in the same order as
    /// [`verify_later`](Self::verify_later), which it answers for whenever
    /// it can: a verification that needs nothing else costs no more than
    /// its steps. Past a refusal, [`Later`] says where `verify_later` takes
    /// over; nothing was then used up or remembered.
    #[expect(
        clippy::result_large_err,
        reason = "`Later` hands the decoded segments on, once per verification; \
                  boxing them would cost an access token an allocation"
    )]
    fn verify_now<'t>(
        &self,
        token: &'t str,
        now: DateTime<Utc>,
        kind: &mut TokenKind,
        span: &tracing::Span,
    ) -> Result<Principal, Later<'t>> {
        let v = &self.inner.validation;
        // Size, before any decoding.
        if token.len() > v.max_token_bytes {
            return Err(Reason::TooLarge.into());
        }
        // A replay check is a store's answer.
        if self.inner.replay.is_some() {
            return Err(Later::Start);
        }
        let now_secs = now.timestamp_micros() as f64 / 1e6;
        if let Some(hit) = self.repeat_hit(token, now_secs, kind) {
            let key = match self.still_signed(&hit) {
                true => {
                    let key = self.mirrored(&hit.principal.key_id).ok_or(Later::Start)?;
                    key_cache(CacheResult::Hit);
                    Some(key)
                }
                false => None,
            };
            if let Some(principal) = self.repeated(token, &hit, key, now, now_secs)? {
                return Ok(principal);
            }
        }
        let (segments, header) = read(token, v, span)?;
        // Looked up before the claims are read (so that `Later` can hand
        // the segments on), used and counted only after they passed.
        let mirrored = match header.typ {
            Typ::Assertion => self.mirrored(&header.kid),
            Typ::AccessToken => None,
        };
        let Some(key) = mirrored else {
            return Err(Later::Read(segments, header));
        };
        let claims = parse_claims(segments.payload())?;
        let checked = assertion_claims(&claims, v, now_secs, span)?;
        key_cache(CacheResult::Hit);
        let key = key_and_signature(Ok(Some(key)), &checked, &header, &segments, now)?;
        Ok(self.accept(token, &key, &checked, now_secs))
    }

    /// The key `key_id` if this thread's mirror of the key cache holds it
    /// (the caller counts the hit when it uses the key, as a lookup would).
    fn mirrored(&self, key_id: &str) -> Option<Arc<VerifyingKey>> {
        match &self.inner.keys {
            Keys::Cached(cached) => cached.mirrored(key_id),
            Keys::Other(_) => None,
        }
    }

    /// An accepted assertion: the principal of its key, and the assertion
    /// remembered (never with replay protection on: then a repeat is a
    /// replay).
    fn accept(
        &self,
        token: &str,
        key: &VerifyingKey,
        checked: &Checked<'_>,
        now_secs: f64,
    ) -> Principal {
        let principal = key.principal(
            to_datetime(checked.exp),
            to_datetime(checked.iat),
            TokenKind::Assertion,
            crate::principal::no_scopes(),
        );
        if self.inner.replay.is_none() && self.remembers() {
            let entry = CheckedAssertion {
                key_sequence: key.key().details.sequence,
                principal: principal.clone(),
                exp: checked.exp,
                iat: checked.iat,
                nbf: checked.nbf,
                kind: TokenKind::Assertion,
                signing_key: None,
                last_valid: checked.last_valid(&self.inner.validation),
                lifetime: Duration::ZERO,
            };
            self.remember(token, Some(entry), now_secs);
        }
        principal
    }

    /// A token checked before, from this thread's mirror or the cache of
    /// checked tokens (`kind` set to its kind); `None` when there is none,
    /// or when it is an assertion and replay protection is on (a repeated
    /// assertion is then a replay: the full check, which uses up its `jti`,
    /// decides, whatever a cache shared with a verifier without replay
    /// protection holds).
    fn repeat_hit(
        &self,
        token: &str,
        now_secs: f64,
        kind: &mut TokenKind,
    ) -> Option<Arc<CheckedAssertion>> {
        let checked = self.inner.checked.as_ref()?;
        let hit = checked
            .mirrored(token, now_secs)
            .or_else(|| checked.get(token))?;
        *kind = hit.kind;
        if hit.kind == TokenKind::Assertion && self.inner.replay.is_some() {
            return None;
        }
        Some(hit)
    }

    /// Whether a remembered token's signer is still there: for an access
    /// token, its signing key must still be published, as the full check
    /// finds it (from the set in memory); an assertion's key is looked up.
    fn still_signed(&self, hit: &CheckedAssertion) -> bool {
        match &hit.signing_key {
            None => true,
            Some(kid) => (self.inner.access.as_ref())
                .is_some_and(|access| access.keys.published(kid).is_some()),
        }
    }

    /// A repeat of a token checked before: only what can have changed
    /// since is checked again — the key as the lookup sees it now, `key`
    /// (it must still be the same stored key, not expired) and the time
    /// claims. `Ok(None)` forgets the token and sends it through the full
    /// check (removed, replaced, store down, or no longer signed).
    fn repeated(
        &self,
        token: &str,
        hit: &CheckedAssertion,
        key: Option<Arc<VerifyingKey>>,
        now: DateTime<Utc>,
        now_secs: f64,
    ) -> Result<Option<Principal>, VerifyError> {
        if let Some(key) = key
            && key.key().details.sequence == hit.key_sequence
            && *key.key().user_id == *hit.principal.user_id
        {
            let v = &self.inner.validation;
            let max_age = (hit.kind == TokenKind::Assertion).then_some(v.max_age);
            time_rules(hit.exp, hit.iat, hit.nbf, v.leeway, max_age, now_secs)?;
            if key.key().expiration_date <= now {
                return Err(Reason::KeyExpired.into());
            }
            return Ok(Some(hit.principal.clone()));
        }
        if let Some(checked) = &self.inner.checked {
            checked.invalidate(token);
        }
        Ok(None)
    }

    /// The machine key `id`: it must exist, belong to `user` (else it is
    /// "unknown", never a match) and not be expired (no leeway).
    async fn owned_key(
        &self,
        id: &str,
        user: &str,
        now: DateTime<Utc>,
        lookups: Lookups,
    ) -> Result<Arc<crate::key::VerifyingKey>, VerifyError> {
        owned(self.inner.keys.find(id, lookups).await, user, now)
    }

    /// Replay protection, when on: only assertions that passed every other
    /// rule use up their `jti`, which is remembered while the assertion
    /// could still pass the time rules, and no longer.
    async fn replay(&self, checked: &Checked<'_>, now: DateTime<Utc>) -> Result<(), VerifyError> {
        let Some(replay) = &self.inner.replay else {
            return Ok(());
        };
        let jti = match checked.jti {
            None => return Err(malformed("jti is required")),
            Some("") => return Err(malformed("jti is empty")),
            Some(j) if j.len() > MAX_JTI_BYTES => {
                return Err(malformed("jti is longer than 256 bytes"));
            }
            Some(j) => j,
        };
        let v = &self.inner.validation;
        let until = to_datetime_after(checked.last_valid(v));
        match replay.first_use(checked.issuer, jti, until, now).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Reason::Replayed.into()),
            Err(e) => Err(VerifyError::Unavailable(e.to_string())),
        }
    }

    /// Whether accepted tokens are remembered (a cache of checked tokens).
    fn remembers(&self) -> bool {
        self.inner.checked.is_some()
    }

    /// Remembers an accepted token (when there is an `entry`) for no
    /// longer than it can pass the time rules.
    fn remember(&self, token: &str, entry: Option<CheckedAssertion>, now_secs: f64) {
        let (Some(cache), Some(mut entry)) = (self.inner.checked.as_ref(), entry) else {
            return;
        };
        entry.lifetime =
            Duration::from_secs_f64((entry.last_valid - now_secs).clamp(0.0, 86_400.0));
        if !entry.lifetime.is_zero() {
            cache.insert(token, Arc::new(entry));
        }
    }
}

/// The verifier's keys. A [`CachedStore`] (the usual case) is called
/// directly, so a key-cache hit needs no boxed future; any other
/// [`KeyLookup`] through the trait.
#[derive(Clone)]
enum Keys {
    Cached(CachedStore),
    Other(Arc<dyn KeyLookup>),
}

impl Keys {
    fn new<K: KeyLookup>(keys: K) -> Keys {
        match (&keys as &dyn std::any::Any).downcast_ref::<CachedStore>() {
            Some(cached) => Keys::Cached(cached.clone()),
            None => Keys::Other(Arc::new(keys)),
        }
    }

    /// The key `key_id`. With [`Lookups::CachedOnly`], a key the cache
    /// cannot answer for leaves the future pending, without a store read.
    async fn find(
        &self,
        key_id: &str,
        lookups: Lookups,
    ) -> Result<Option<Arc<VerifyingKey>>, StoreError> {
        match (self, lookups) {
            (Keys::Cached(cached), Lookups::Any) => cached.find(key_id).await,
            (Keys::Other(keys), Lookups::Any) => keys.lookup(key_id).await,
            (Keys::Cached(cached), Lookups::CachedOnly) => match cached.find_cached(key_id).await {
                Some(found) => found,
                None => std::future::pending().await,
            },
            (Keys::Other(_), Lookups::CachedOnly) => std::future::pending().await,
        }
    }
}

/// Which key lookups a verification may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookups {
    /// Any: a miss reads the store.
    Any,
    /// Cache hits only: anything else leaves the verification pending,
    /// with nothing read and nothing used up (see
    /// [`Verifier::verify_cached`]).
    CachedOnly,
}

/// Where [`Verifier::verify_now`] stopped: a refusal, or what
/// [`Verifier::verify_later`] needs to go on.
enum Later<'t> {
    /// A rule refused the token.
    Refused(VerifyError),
    /// Not started: the whole check needs the lookups.
    Start,
    /// No repeat, the form and header read (the key id recorded): the rest
    /// needs the lookups.
    Read(Segments<'t>, KnownHeader),
}

impl From<VerifyError> for Later<'_> {
    fn from(refused: VerifyError) -> Self {
        Later::Refused(refused)
    }
}

impl From<Reason> for Later<'_> {
    fn from(reason: Reason) -> Self {
        Later::Refused(reason.into())
    }
}

/// The form and the header; what is known of the caller goes into the span
/// as soon as it is read, so a refusal says whose token it was (`kid`
/// follows the id rules: no control characters, at most 200 bytes).
fn read<'t>(
    token: &'t str,
    v: &Validation,
    span: &tracing::Span,
) -> Result<(Segments<'t>, KnownHeader), VerifyError> {
    let segments = form(token)?;
    let header = read_header(&segments, v)?;
    span.record("jwt_profile.key_id", &*header.kid);
    Ok((segments, header))
}

/// An assertion's claims (its `iss` recorded in the span as soon as it is
/// read, before it is checked).
fn assertion_claims<'a>(
    claims: &'a RawClaims<'_>,
    v: &Validation,
    now_secs: f64,
    span: &tracing::Span,
) -> Result<Checked<'a>, VerifyError> {
    if let Some(StrVal::Str(iss)) = &claims.iss {
        span.record("enduser.id", &**iss);
    }
    check_claims(claims, v, now_secs)
}

/// The key the lookup `found` by (`iss`, `kid`), never from the token: it
/// must exist, belong to the issuer, not be expired (no leeway) and fit
/// `alg`; and its signature over "header.payload", exactly as received.
fn key_and_signature(
    found: Result<Option<Arc<VerifyingKey>>, StoreError>,
    checked: &Checked<'_>,
    header: &KnownHeader,
    segments: &Segments<'_>,
    now: DateTime<Utc>,
) -> Result<Arc<VerifyingKey>, VerifyError> {
    let key = owned(found, checked.issuer, now)?;
    if !header.alg.fits(key.key().public_key.kind()) {
        return Err(Reason::AlgorithmMismatch.into());
    }
    if !key.verify(header.alg, segments.signing_input, segments.signature()) {
        return Err(Reason::Signature.into());
    }
    Ok(key)
}

/// The machine key a lookup `found`: it must exist, belong to `user` (else
/// it is "unknown", never a match) and not be expired (no leeway).
fn owned(
    found: Result<Option<Arc<VerifyingKey>>, StoreError>,
    user: &str,
    now: DateTime<Utc>,
) -> Result<Arc<VerifyingKey>, VerifyError> {
    let key = match found {
        Ok(Some(key)) => key,
        Ok(None) => return Err(Reason::UnknownKey.into()),
        Err(e) => return Err(store_unavailable(e)),
    };
    if key.key().user_id != user {
        return Err(Reason::UnknownKey.into());
    }
    if key.key().expiration_date <= now {
        return Err(Reason::KeyExpired.into());
    }
    Ok(key)
}

fn store_unavailable(e: StoreError) -> VerifyError {
    match e {
        StoreError::Unavailable(why) => VerifyError::Unavailable(why),
        other => VerifyError::Unavailable(other.to_string()),
    }
}

/// A token's decoded segments, in one allocation (a small future: the
/// segments live across the key lookup), and the bytes its signature
/// covers.
struct Segments<'t> {
    bytes: Vec<u8>,
    /// The header as read before from the same bytes, if it was; then
    /// `header` is empty (not decoded).
    known: Option<KnownHeader>,
    /// The header segment as received.
    h64: &'t str,
    header: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
    signature: std::ops::Range<usize>,
    signing_input: &'t [u8],
}

impl Segments<'_> {
    fn header(&self) -> &[u8] {
        &self.bytes[self.header.clone()]
    }
    fn payload(&self) -> &[u8] {
        &self.bytes[self.payload.clone()]
    }
    fn signature(&self) -> &[u8] {
        &self.bytes[self.signature.clone()]
    }
}

/// The form: exactly three canonical base64url segments.
fn form(token: &str) -> Result<Segments<'_>, VerifyError> {
    let three = || malformed("token must be three base64url segments");
    let dot = |from: usize| memchr::memchr(b'.', &token.as_bytes()[from..]).map(|i| from + i);
    let Some(first) = dot(0) else {
        return Err(three());
    };
    let Some(second) = dot(first + 1) else {
        return Err(three());
    };
    // A further dot can only be in the last segment, whose decoding
    // refuses it ('.' is not base64url): it is looked for only when
    // something was refused, and then reported first, as the form is
    // checked first. So the signature is not scanned twice.
    decode_segments(token, first, second).map_err(|refused| {
        match token[second + 1..].contains('.') {
            true => three(),
            false => refused,
        }
    })
}

/// The segments of `token`, split at its dots at `first` and `second`,
/// decoded.
fn decode_segments(token: &str, first: usize, second: usize) -> Result<Segments<'_>, VerifyError> {
    let (h64, p64, s64) = (
        &token[..first],
        &token[first + 1..second],
        &token[second + 1..],
    );
    if h64.is_empty() || p64.is_empty() || s64.is_empty() {
        return Err(malformed("empty token segment"));
    }
    let estimate = |s: &str| s.len() / 4 * 3 + 2;
    // Reserved once, never zeroed: each segment is decoded into the spare
    // capacity (SIMD; canonical base64url only, as with `base64`).
    let mut bytes = Vec::with_capacity(estimate(h64) + estimate(p64) + estimate(s64));
    let mut decode = |segment: &str, what: &'static str| {
        let at = bytes.len();
        base64_simd::URL_SAFE_NO_PAD
            .decode_append(segment, &mut bytes)
            .map_err(|_| malformed(what))?;
        Ok::<_, VerifyError>(at..bytes.len())
    };
    let known = header_memo::get(h64);
    let header = match known {
        Some(_) => 0..0,
        None => decode(h64, "header is not canonical base64url")?,
    };
    let payload = decode(p64, "payload is not canonical base64url")?;
    let signature = decode(s64, "signature is not canonical base64url")?;
    Ok(Segments {
        bytes,
        known,
        h64,
        header,
        payload,
        signature,
        signing_input: &token.as_bytes()[..second],
    })
}

/// A header that passed every rule but the allowed algorithms (which
/// depend on the verifier): what it says.
#[derive(Clone)]
struct KnownHeader {
    alg: Algorithm,
    kid: Arc<str>,
    typ: Typ,
}

/// The header step: from the memo when these exact bytes were read before
/// on this thread (only the allowed algorithms are checked again), else
/// read in full and remembered.
fn read_header(segments: &Segments<'_>, v: &Validation) -> Result<KnownHeader, VerifyError> {
    if let Some(known) = &segments.known {
        if !v.allows(known.alg) {
            return Err(Reason::Algorithm("alg not allowed").into());
        }
        return Ok(known.clone());
    }
    let (alg, kid, typ) = header(segments.header(), v)?;
    let known = KnownHeader {
        alg,
        kid: kid.into(),
        typ,
    };
    header_memo::put(segments.h64, known.clone());
    Ok(known)
}

/// Headers read before, per thread: a machine sends the same header (its
/// `alg` and `kid`) on every assertion, so reading it is a pure function
/// of bytes seen many times. A small direct-mapped table keyed by the exact
/// segment: a hit returns what reading those bytes returned; a collision
/// replaces the entry. Nothing but a header that passed is remembered, and
/// remembering grants nothing: key, claims and signature are checked in
/// full on every token.
mod header_memo {
    use super::KnownHeader;
    use std::cell::RefCell;

    const SLOTS: usize = 64;
    /// Longer headers are read every time.
    const MAX_BYTES: usize = 512;

    type Slot = Option<(Box<str>, KnownHeader)>;

    thread_local! {
        static MEMO: RefCell<[Slot; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
    }

    fn slot(h64: &str) -> usize {
        crate::key::table_slot(h64.as_bytes(), SLOTS)
    }

    pub(super) fn get(h64: &str) -> Option<KnownHeader> {
        if h64.len() > MAX_BYTES {
            return None;
        }
        MEMO.with_borrow(|memo| match &memo[slot(h64)] {
            Some((segment, known)) if **segment == *h64 => Some(known.clone()),
            _ => None,
        })
    }

    pub(super) fn put(h64: &str, known: KnownHeader) {
        if h64.len() > MAX_BYTES {
            return;
        }
        MEMO.with_borrow_mut(|memo| memo[slot(h64)] = Some((h64.into(), known)));
    }
}

/// What the header's `typ` says the token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Typ {
    /// No `typ`, or any other: read as an assertion.
    Assertion,
    /// `at+jwt` (or `application/at+jwt`, case-insensitive): an access token.
    AccessToken,
}

/// The header: no `crit`; `alg` allowed (never `none` or HMAC); `kid` a
/// string that follows the id rules, checked before any store read; `typ`
/// says whether it is an access token.
fn header<'a>(
    bytes: &'a [u8],
    v: &Validation,
) -> Result<(Algorithm, std::borrow::Cow<'a, str>, Typ), VerifyError> {
    let header = parse_header(bytes)?;
    let typ = match &header.typ {
        None => Typ::Assertion,
        Some(StrVal::Other) => return Err(malformed("typ is not a string")),
        Some(StrVal::Str(t)) => {
            let t = t.strip_prefix("application/").unwrap_or(t);
            if t.eq_ignore_ascii_case("at+jwt") {
                Typ::AccessToken
            } else {
                Typ::Assertion
            }
        }
    };
    if header.crit {
        return Err(Reason::Crit.into());
    }
    let alg = match header.alg {
        None => return Err(malformed("alg is missing")),
        Some(StrVal::Other) => return Err(malformed("alg is not a string")),
        Some(StrVal::Str(name)) => match Algorithm::from_name(&name) {
            Some(alg) if v.allows(alg) => alg,
            Some(_) => return Err(Reason::Algorithm("alg not allowed").into()),
            None if name.eq_ignore_ascii_case("none") => {
                return Err(Reason::Algorithm("alg none is never accepted").into());
            }
            None if name
                .as_bytes()
                .get(..2)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"HS")) =>
            {
                return Err(Reason::Algorithm("HMAC algorithms are never accepted").into());
            }
            None => return Err(Reason::Algorithm("alg not supported").into()),
        },
    };
    let kid = match header.kid {
        None => return Err(malformed("kid is missing")),
        Some(StrVal::Other) => return Err(malformed("kid is not a string")),
        Some(StrVal::Str(kid)) => match crate::key::id_problem(&kid) {
            None => kid,
            Some(problem) => return Err(malformed(kid_problem(problem))),
        },
    };
    Ok((alg, kid, typ))
}

/// The id rule a `kid` broke, as a static description.
fn kid_problem(problem: &str) -> &'static str {
    match problem {
        "must not be empty" => "kid is empty",
        "is longer than 200 bytes" => "kid is longer than 200 bytes",
        "contains '/'" => "kid contains '/'",
        _ => "kid contains a control character",
    }
}

/// `secs` as a date, truncated to the microsecond (for display: a
/// principal's dates).
fn to_datetime(secs: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((secs * 1e6) as i64).unwrap_or_default()
}

/// A date no earlier than `secs`: rounded up to the microsecond, plus one
/// for the float rounding of `secs * 1e6`. What is remembered until then
/// (a used `jti`) is never forgotten while a token with a sub-microsecond
/// date can still pass the time rules. Past the latest date there is (an
/// enormous leeway), the latest date: never an early one.
fn to_datetime_after(secs: f64) -> DateTime<Utc> {
    let micros = (secs * 1e6).ceil();
    // `i64::MAX as f64` is 2^63: anything below it converts exactly enough.
    if micros.is_nan() || micros >= i64::MAX as f64 {
        return DateTime::<Utc>::MAX_UTC;
    }
    DateTime::from_timestamp_micros((micros as i64).saturating_add(1))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

struct Checked<'a> {
    issuer: &'a str,
    exp: f64,
    iat: f64,
    nbf: Option<f64>,
    jti: Option<&'a str>,
}

impl Checked<'_> {
    /// The last moment the assertion can pass the time rules:
    /// min(`exp`, `iat` + max age) + leeway. A remembered assertion and a
    /// remembered `jti` live exactly this long.
    fn last_valid(&self, v: &Validation) -> f64 {
        self.exp.min(self.iat + v.max_age) + v.leeway
    }
}

fn check_claims<'a>(
    c: &'a RawClaims<'_>,
    v: &Validation,
    now: f64,
) -> Result<Checked<'a>, VerifyError> {
    let (iss, sub) = issuer_and_subject(c)?;
    if iss != sub {
        return Err(Reason::IssuerSubject.into());
    }
    let (exp, iat, nbf) = dates(c)?;
    check_audience(&c.aud, v)?;
    check_times(exp, iat, nbf, v, now)?;
    let jti = match &c.jti {
        Some(StrVal::Str(j)) => Some(j.as_ref()),
        _ => None,
    };
    Ok(Checked {
        issuer: iss,
        exp,
        iat,
        nbf,
        jti,
    })
}

/// `aud`: a string or an array of strings naming an accepted audience
/// exactly.
fn check_audience(aud: &Option<AudVal<'_>>, v: &Validation) -> Result<(), VerifyError> {
    let ok = match aud {
        None => return Err(malformed("aud is missing")),
        Some(AudVal::Other) => {
            return Err(malformed("aud must be a string or an array of strings"));
        }
        Some(AudVal::One(a)) => v.audiences.iter().any(|x| x == a),
        Some(AudVal::Many(list)) => list.iter().any(|a| v.audiences.iter().any(|x| x == a)),
    };
    if ok {
        Ok(())
    } else {
        Err(Reason::Audience.into())
    }
}

/// `iss` and `sub`: present, non-empty strings.
fn issuer_and_subject<'a>(c: &'a RawClaims<'_>) -> Result<(&'a str, &'a str), VerifyError> {
    let iss = required_str(
        &c.iss,
        "iss is missing",
        "iss is not a string",
        "iss is empty",
    )?;
    let sub = required_str(
        &c.sub,
        "sub is missing",
        "sub is not a string",
        "sub is empty",
    )?;
    Ok((iss, sub))
}

/// `exp` and `iat` (required) and `nbf` (optional): valid NumericDates.
fn dates(c: &RawClaims<'_>) -> Result<(f64, f64, Option<f64>), VerifyError> {
    let exp = required_date(c.exp, "exp is missing", "exp is not a valid NumericDate")?;
    let iat = required_date(c.iat, "iat is missing", "iat is not a valid NumericDate")?;
    let nbf = c
        .nbf
        .map(|n| required_date(Some(n), "", "nbf is not a valid NumericDate"))
        .transpose()?;
    Ok((exp, iat, nbf))
}

/// The time rules of an assertion, with leeway L: now < exp + L,
/// iat ≤ now + L, now − iat ≤ max age + L, nbf ≤ now + L.
fn check_times(
    exp: f64,
    iat: f64,
    nbf: Option<f64>,
    v: &Validation,
    now: f64,
) -> Result<(), VerifyError> {
    time_rules(exp, iat, nbf, v.leeway, Some(v.max_age), now)
}

/// The time rules with leeway `l`; the age rule only with a `max_age`
/// (access tokens have none: their issuer set their lifetime).
fn time_rules(
    exp: f64,
    iat: f64,
    nbf: Option<f64>,
    l: f64,
    max_age: Option<f64>,
    now: f64,
) -> Result<(), VerifyError> {
    if now >= exp + l {
        return Err(Reason::Expired.into());
    }
    if iat > now + l {
        return Err(Reason::IssuedInFuture.into());
    }
    if let Some(max_age) = max_age
        && now - iat > max_age + l
    {
        return Err(Reason::TooOld.into());
    }
    if let Some(nbf) = nbf
        && nbf > now + l
    {
        return Err(Reason::NotYetValid.into());
    }
    Ok(())
}

fn required_str<'a>(
    v: &'a Option<StrVal<'_>>,
    missing: &'static str,
    wrong: &'static str,
    empty: &'static str,
) -> Result<&'a str, VerifyError> {
    match v {
        None => Err(malformed(missing)),
        Some(StrVal::Other) => Err(malformed(wrong)),
        Some(StrVal::Str(s)) if s.is_empty() => Err(malformed(empty)),
        Some(StrVal::Str(s)) => Ok(s),
    }
}

fn required_date(
    v: Option<NumVal>,
    missing: &'static str,
    wrong: &'static str,
) -> Result<f64, VerifyError> {
    match v {
        None => Err(malformed(missing)),
        Some(NumVal::Num(n)) if n.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&n) => Ok(n),
        Some(_) => Err(malformed(wrong)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validation {
        Validation::new(["aud"])
            .leeway(Duration::from_secs(60))
            .max_age(Duration::from_secs(3600))
    }

    /// The header step on a token with `header` (JSON) as its header.
    fn header_of(header: &str, v: &Validation) -> Result<(Algorithm, String, Typ), VerifyError> {
        let b64 = |s: &[u8]| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
        let token = format!("{}.{}.{}", b64(header.as_bytes()), b64(b"{}"), b64(b"sig"));
        let segments = form(&token)?;
        read_header(&segments, v).map(|h| (h.alg, h.kid.to_string(), h.typ))
    }

    /// The same, on a new thread: nothing remembered.
    fn header_of_fresh(
        header: &str,
        v: &Validation,
    ) -> Result<(Algorithm, String, Typ), VerifyError> {
        let (header, v) = (header.to_string(), v.clone());
        std::thread::spawn(move || header_of(&header, &v))
            .join()
            .expect("thread")
    }

    #[test]
    fn a_remembered_header_answers_as_reading_it_does() {
        let headers = [
            r#"{"alg":"RS256","kid":"k1"}"#,
            r#"{"alg":"ES256","kid":"k2","typ":"JWT"}"#,
            r#"{"alg":"RS256","kid":"sig-1","typ":"at+jwt"}"#,
            r#"{"alg":"RS256","kid":"k1","crit":["exp"]}"#,
            r#"{"alg":"none","kid":"k1"}"#,
            r#"{"alg":"HS256","kid":"k1"}"#,
            r#"{"alg":"RS256","kid":"a/b"}"#,
            r#"{"alg":"RS256","kid":"k1","kid":"k2"}"#,
            r#"{"alg":"RS256"}"#,
        ];
        let all = v();
        let rsa_only = v().algorithms([Algorithm::RS256]);
        let ec_only = v().algorithms([Algorithm::ES256]);
        for header in headers {
            // Read, remembered (when it passed), then asked of verifiers
            // that allow other algorithms: each answer is the answer of a
            // thread that never saw the header.
            for v in [&all, &all, &rsa_only, &ec_only, &all] {
                assert_eq!(header_of(header, v), header_of_fresh(header, v), "{header}");
            }
        }
        assert_eq!(
            header_of(r#"{"alg":"RS256","kid":"k1"}"#, &ec_only),
            Err(Reason::Algorithm("alg not allowed").into())
        );
    }

    #[test]
    fn only_headers_that_passed_are_remembered_and_never_for_other_bytes() {
        std::thread::spawn(|| {
            let v = v();
            let crit = r#"{"alg":"RS256","kid":"k1","crit":["exp"]}"#;
            assert!(header_of(crit, &v).is_err());
            let h64 = base64_simd::URL_SAFE_NO_PAD.encode_to_string(crit);
            assert!(header_memo::get(&h64).is_none());
            // Many headers, one table: a lookup finds its own header or
            // nothing, never another's.
            let kids: Vec<String> = (0..500).map(|i| format!("key-{i}")).collect();
            for kid in &kids {
                let header = format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#);
                assert_eq!(header_of(&header, &v).expect("valid").1, *kid);
            }
            let mut found = 0;
            for kid in &kids {
                let header = format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#);
                let h64 = base64_simd::URL_SAFE_NO_PAD.encode_to_string(&header);
                if let Some(known) = header_memo::get(&h64) {
                    assert_eq!(&*known.kid, kid.as_str());
                    found += 1;
                }
            }
            assert!((1..=64).contains(&found), "{found} remembered");
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn time_rules_hold_at_their_edges() {
        let now = 1_000_000.0;
        let ok = |exp: f64, iat: f64, nbf: Option<f64>| check_times(exp, iat, nbf, &v(), now);
        assert!(ok(now + 1.0, now, None).is_ok());
        // exp: now < exp + L
        assert!(ok(now - 59.9, now - 10.0, None).is_ok());
        assert_eq!(
            ok(now - 60.0, now - 10.0, None),
            Err(Reason::Expired.into())
        );
        // iat: iat <= now + L
        assert!(ok(now + 600.0, now + 60.0, None).is_ok());
        assert_eq!(
            ok(now + 600.0, now + 60.5, None),
            Err(Reason::IssuedInFuture.into())
        );
        // age: now - iat <= max age + L
        assert!(ok(now + 600.0, now - 3660.0, None).is_ok());
        assert_eq!(
            ok(now + 600.0, now - 3660.5, None),
            Err(Reason::TooOld.into())
        );
        // nbf: nbf <= now + L
        assert!(ok(now + 600.0, now, Some(now + 60.0)).is_ok());
        assert_eq!(
            ok(now + 600.0, now, Some(now + 61.0)),
            Err(Reason::NotYetValid.into())
        );
    }

    #[test]
    fn kid_problems_name_the_kid() {
        for (kid, why) in [
            ("", "kid is empty"),
            ("a/b", "kid contains '/'"),
            ("a\u{0}b", "kid contains a control character"),
        ] {
            let problem = crate::key::id_problem(kid).expect("a problem");
            assert_eq!(kid_problem(problem), why);
        }
        let long = "k".repeat(201);
        let problem = crate::key::id_problem(&long).expect("a problem");
        assert_eq!(kid_problem(problem), "kid is longer than 200 bytes");
        assert_eq!(crate::key::id_problem("69629023906488334"), None);
    }

    /// A verification's span is no span at all when the subscriber does
    /// not collect it (nothing to record into, nothing to enter), and the
    /// real span when it does. (With a `log` logger at DEBUG, the disabled
    /// span is kept for tracing's `log` fallback; no test sets one.)
    #[test]
    fn the_span_is_none_unless_collected() {
        use tracing::Level;
        let store = crate::store::CachedStore::new(crate::store::MemoryStore::new());
        let verifier = Verifier::new(store, v());
        let at = |level: Level| tracing_subscriber::fmt().with_max_level(level).finish();
        tracing::subscriber::with_default(at(Level::INFO), || {
            assert!(verifier.span().is_none());
        });
        tracing::subscriber::with_default(at(Level::DEBUG), || {
            let span = verifier.span();
            assert!(!span.is_disabled());
            assert_eq!(
                span.metadata().map(|m| m.name()),
                Some("jwt_profile.verify")
            );
        });
    }
}
