//! [`Verifier`]: the validation rules for JWT-profile assertions, with no
//! knowledge of tower or HTTP. Call it directly from tests, benchmarks or
//! other frameworks; [`JwtProfileLayer`](crate::JwtProfileLayer) wraps it.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use jwt_profile::{KeyService, Principal, Validation, Verifier};
//! use jwt_profile::key_file::AssertionSigner;
//! use jwt_profile::service::CreateKey;
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
//! assert_eq!(principal.user_id, "ci-bot");
//! assert!(verifier.verify("not.a.token").await.is_err());
//! # });
//! ```

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::future::Cache;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::clock::{Clock, SystemClock};
use crate::error::{Code, Error};
use crate::key::Algorithm;
use crate::principal::Principal;
use crate::replay::{MAX_JTI_BYTES, ReplayStore};
use crate::store::{KeyLookup, StoreError};

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z.
pub const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// What the verifier checks, with safe defaults: leeway 60 s, maximum age
/// 1 h, every asymmetric algorithm, tokens up to 8 KiB.
///
/// There is no default audience: an assertion is only accepted when its
/// `aud` names one of the audiences given here. An empty list accepts
/// nothing.
///
/// ```
/// use std::time::Duration;
/// use jwt_profile::Validation;
/// use jwt_profile::key::Algorithm;
/// let v = Validation::new(["https://api.example.com"])
///     .leeway(Duration::from_secs(30))
///     .max_age(Duration::from_secs(600))
///     .algorithms([Algorithm::RS256, Algorithm::ES256]);
/// assert_eq!(v.audiences(), ["https://api.example.com"]);
/// ```
#[derive(Clone, Debug)]
pub struct Validation {
    audiences: Vec<String>,
    leeway: f64,
    max_age: f64,
    algorithms: [bool; 9],
    max_token_bytes: usize,
}

impl Validation {
    /// Accept assertions whose `aud` names one of `audiences` exactly.
    pub fn new<I, S>(audiences: I) -> Validation
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Validation {
            audiences: audiences.into_iter().map(Into::into).collect(),
            leeway: 60.0,
            max_age: 3600.0,
            algorithms: [true; 9],
            max_token_bytes: 8 * 1024,
        }
    }

    /// Clock skew tolerated on `exp`, `iat`, `nbf` (default 60 s). Never
    /// applied to a key's expiration date.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.as_secs_f64();
        self
    }

    /// How long after its `iat` an assertion is accepted (default 1 h).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age.as_secs_f64();
        self
    }

    /// The allowed algorithms (default: all of [`Algorithm::ALL`]). An
    /// algorithm must also fit the stored key's type.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = [false; 9];
        for a in algorithms {
            self.algorithms[a as usize] = true;
        }
        self
    }

    /// Largest token accepted, in bytes (default 8 KiB); larger tokens are
    /// refused before any decoding.
    pub fn max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// The accepted audiences.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms[alg as usize]
    }
}

/// Why an assertion was refused. Each has a stable [`id`](Reason::id) and a
/// short [`description`](Reason::description) (used in
/// `WWW-Authenticate: … error_description="…"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
            VerifyError::Invalid(r) => Error::new(Code::Unauthenticated, r.id(), r.description()),
            VerifyError::Unavailable(_) => Error::new(
                Code::Unavailable,
                "STORE-unavailable",
                "the key store cannot be reached; try again",
            ),
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

/// Validates JWT-profile assertions against the keys of a [`KeyLookup`]
/// (normally a [`CachedStore`](crate::store::CachedStore)). Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    keys: Arc<dyn KeyLookup>,
    validation: Validation,
    clock: Arc<dyn Clock>,
    checked: Option<Cache<String, Arc<CheckedAssertion>>>,
    replay: Option<Arc<dyn ReplayStore>>,
}

/// An assertion whose form, key and signature were verified; its time
/// claims are checked again on every use. It holds no key: on every use the
/// key is looked up again (a cache hit) and must still be the same stored
/// key (id and sequence), so a removal anywhere the key lookup sees it
/// refuses the assertion at once.
struct CheckedAssertion {
    /// The key's id and the sequence it was stored with.
    key_id: String,
    key_sequence: u64,
    principal: Principal,
    exp: f64,
    iat: f64,
    nbf: Option<f64>,
    lifetime: Duration,
}

struct CheckedExpiry;

impl Expiry<String, Arc<CheckedAssertion>> for CheckedExpiry {
    fn expire_after_create(
        &self,
        _token: &String,
        value: &Arc<CheckedAssertion>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// Default number of checked assertions remembered by a [`Verifier`].
pub const DEFAULT_ASSERTION_CACHE_ENTRIES: u64 = 10_000;

fn assertion_cache(max_entries: u64) -> Cache<String, Arc<CheckedAssertion>> {
    Cache::builder()
        .max_capacity(max_entries)
        .expire_after(CheckedExpiry)
        .build()
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
                keys: Arc::new(keys),
                validation,
                clock: Arc::new(SystemClock),
                checked: Some(assertion_cache(DEFAULT_ASSERTION_CACHE_ENTRIES)),
                replay: None,
            }),
        }
    }

    /// The same verifier with `change` applied to its settings.
    fn with_inner(self, change: impl FnOnce(&mut Inner)) -> Verifier {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        change(&mut inner);
        Verifier {
            inner: Arc::new(inner),
        }
    }

    /// The same verifier reading time from `clock` (for tests). Its cache of
    /// checked assertions starts empty.
    pub fn with_clock(self, clock: impl Clock) -> Verifier {
        self.with_inner(|inner| {
            inner.clock = Arc::new(clock);
            inner.checked = inner
                .checked
                .as_ref()
                .map(|c| assertion_cache(c.policy().max_capacity().unwrap_or(0)));
        })
    }

    /// Remembers up to `max_entries` assertions whose signature was
    /// verified (default 10 000), so a machine that reuses one assertion
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
    pub async fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        let v = &self.inner.validation;
        // 1. Size, before any decoding.
        if token.len() > v.max_token_bytes {
            return Err(Reason::TooLarge.into());
        }
        let now = self.inner.clock.now();
        let now_secs = now.timestamp_micros() as f64 / 1e6;
        // A repeat of an assertion checked before: only what can have
        // changed since is checked again.
        if let Some(checked) = &self.inner.checked
            && self.inner.replay.is_none()
            && let Some(hit) = checked.get(token).await
        {
            // The key as the lookup sees it now; anything else (removed,
            // replaced, store down) goes through the full check.
            if let Ok(Some(key)) = self.inner.keys.lookup(&hit.key_id).await
                && key.key().details.sequence == hit.key_sequence
                && key.key().user_id == hit.principal.user_id
            {
                check_times(hit.exp, hit.iat, hit.nbf, v, now_secs)?;
                if key.key().expiration_date <= now {
                    return Err(Reason::KeyExpired.into());
                }
                return Ok(hit.principal.clone());
            }
            checked.invalidate(token).await;
        }
        // 2. Form: three canonical base64url segments.
        let mut parts = token.splitn(4, '.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("token must be three base64url segments"));
        };
        if h64.is_empty() || p64.is_empty() || s64.is_empty() {
            return Err(malformed("empty token segment"));
        }
        // Decoded on the stack when they fit (they nearly always do).
        let (mut header_buf, mut payload_buf, mut signature_buf) =
            ([0u8; 512], [0u8; 2048], [0u8; 1024]);
        let (mut header_heap, mut payload_heap, mut signature_heap) =
            (Vec::new(), Vec::new(), Vec::new());
        let header = decode_segment(h64, &mut header_buf, &mut header_heap)
            .ok_or_else(|| malformed("header is not canonical base64url"))?;
        let payload = decode_segment(p64, &mut payload_buf, &mut payload_heap)
            .ok_or_else(|| malformed("payload is not canonical base64url"))?;
        let signature = decode_segment(s64, &mut signature_buf, &mut signature_heap)
            .ok_or_else(|| malformed("signature is not canonical base64url"))?;
        let header = parse_header(header)?;
        // 3. Header.
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
                // The id rules, before any store read: a kid no key can
                // have costs nothing.
                Some(problem) => return Err(malformed(kid_problem(problem))),
            },
        };
        // 6 (form and values first: cheap, and spares the store and the
        // signature check for tokens that cannot pass anyway).
        let claims = parse_claims(payload)?;
        let checked = check_claims(&claims, v, now_secs)?;
        // 4. Key: by (iss, kid), never from the token.
        let key = match self.inner.keys.lookup(&kid).await {
            Ok(Some(key)) => key,
            Ok(None) => return Err(Reason::UnknownKey.into()),
            Err(StoreError::Unavailable(why)) => return Err(VerifyError::Unavailable(why)),
            Err(other) => return Err(VerifyError::Unavailable(other.to_string())),
        };
        let stored = key.key();
        if stored.user_id != checked.issuer {
            return Err(Reason::UnknownKey.into());
        }
        if stored.expiration_date <= now {
            return Err(Reason::KeyExpired.into());
        }
        if !alg.fits(stored.public_key.kind()) {
            return Err(Reason::AlgorithmMismatch.into());
        }
        // 5. Signature over "header.payload", exactly as received.
        let signing_input = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        if !key.verify(alg, signing_input, signature) {
            return Err(Reason::Signature.into());
        }
        // 7. Replay: only assertions that passed every other rule use up
        // their jti.
        if let Some(replay) = &self.inner.replay {
            let jti = match checked.jti {
                None => return Err(malformed("jti is required")),
                Some("") => return Err(malformed("jti is empty")),
                Some(j) if j.len() > MAX_JTI_BYTES => {
                    return Err(malformed("jti is longer than 256 bytes"));
                }
                Some(j) => j,
            };
            // Remembered while the assertion could still pass rule 6, and
            // no longer.
            let until = to_datetime(checked.exp.min(checked.iat + v.max_age) + v.leeway);
            match replay.first_use(checked.issuer, jti, until, now).await {
                Ok(true) => {}
                Ok(false) => return Err(Reason::Replayed.into()),
                Err(e) => return Err(VerifyError::Unavailable(e.to_string())),
            }
        }
        let principal = Principal {
            user_id: stored.user_id.clone(),
            org_id: stored.resource_owner.clone(),
            key_id: stored.id.clone(),
            expires_at: to_datetime(checked.exp),
            issued_at: to_datetime(checked.iat),
        };
        if let Some(cache) = self
            .inner
            .checked
            .as_ref()
            .filter(|_| self.inner.replay.is_none())
        {
            // No longer than the assertion can pass the time rules.
            let last_valid = checked.exp.min(checked.iat + v.max_age) + v.leeway;
            let lifetime = Duration::from_secs_f64((last_valid - now_secs).clamp(0.0, 86_400.0));
            if !lifetime.is_zero() {
                let entry = CheckedAssertion {
                    key_id: stored.id.clone(),
                    key_sequence: stored.details.sequence,
                    principal: principal.clone(),
                    exp: checked.exp,
                    iat: checked.iat,
                    nbf: checked.nbf,
                    lifetime,
                };
                cache.insert(token.to_owned(), Arc::new(entry)).await;
            }
        }
        Ok(principal)
    }
}

/// Decodes one canonical base64url segment into `stack` when it fits, else
/// into `heap`; `None` when it is not canonical base64url.
fn decode_segment<'b>(
    segment: &str,
    stack: &'b mut [u8],
    heap: &'b mut Vec<u8>,
) -> Option<&'b [u8]> {
    if base64::decoded_len_estimate(segment.len()) <= stack.len() {
        let n = URL_SAFE_NO_PAD.decode_slice(segment, stack).ok()?;
        Some(&stack[..n])
    } else {
        *heap = URL_SAFE_NO_PAD.decode(segment).ok()?;
        Some(heap)
    }
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

fn to_datetime(secs: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((secs * 1e6) as i64).unwrap_or_default()
}

struct Checked<'a> {
    issuer: &'a str,
    exp: f64,
    iat: f64,
    nbf: Option<f64>,
    jti: Option<&'a str>,
}

fn check_claims<'a>(
    c: &'a RawClaims<'_>,
    v: &Validation,
    now: f64,
) -> Result<Checked<'a>, VerifyError> {
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
    if iss != sub {
        return Err(Reason::IssuerSubject.into());
    }
    let exp = required_date(c.exp, "exp is missing", "exp is not a valid NumericDate")?;
    let iat = required_date(c.iat, "iat is missing", "iat is not a valid NumericDate")?;
    let nbf = match c.nbf {
        None => None,
        Some(n) => Some(required_date(
            Some(n),
            "",
            "nbf is not a valid NumericDate",
        )?),
    };
    let audience_ok = match &c.aud {
        None => return Err(malformed("aud is missing")),
        Some(AudVal::Other) => {
            return Err(malformed("aud must be a string or an array of strings"));
        }
        Some(AudVal::One(a)) => v.audiences.iter().any(|x| x == a),
        Some(AudVal::Many(list)) => list.iter().any(|a| v.audiences.iter().any(|x| x == a)),
    };
    if !audience_ok {
        return Err(Reason::Audience.into());
    }
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

/// The time rules, with leeway L: now < exp + L, iat ≤ now + L,
/// now − iat ≤ max age + L, nbf ≤ now + L.
fn check_times(
    exp: f64,
    iat: f64,
    nbf: Option<f64>,
    v: &Validation,
    now: f64,
) -> Result<(), VerifyError> {
    let l = v.leeway;
    if now >= exp + l {
        return Err(Reason::Expired.into());
    }
    if iat > now + l {
        return Err(Reason::IssuedInFuture.into());
    }
    if now - iat > v.max_age + l {
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

// ---- Strict JSON reading --------------------------------------------------
//
// One pass over each JSON object with serde_json: members are read into
// typed slots without copying strings that need no unescaping, every member
// name is checked for duplicates (serde_json itself lets the last one win),
// and a value of the wrong JSON type is recorded rather than failing, so the
// error can name the claim. Nesting depth is bounded by serde_json's
// recursion limit (128).

/// A JSON value expected to be a string.
enum StrVal<'a> {
    Str(Cow<'a, str>),
    Other,
}

/// A JSON value expected to be a number.
#[derive(Clone, Copy)]
enum NumVal {
    Num(f64),
    Other,
}

/// `aud`: a string or an array of strings.
enum AudVal<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
    Other,
}

#[derive(Default)]
struct RawHeader<'a> {
    alg: Option<StrVal<'a>>,
    kid: Option<StrVal<'a>>,
    crit: bool,
    duplicate: bool,
}

#[derive(Default)]
struct RawClaims<'a> {
    iss: Option<StrVal<'a>>,
    sub: Option<StrVal<'a>>,
    aud: Option<AudVal<'a>>,
    exp: Option<NumVal>,
    iat: Option<NumVal>,
    nbf: Option<NumVal>,
    jti: Option<StrVal<'a>>,
    duplicate: bool,
}

fn parse_header(bytes: &[u8]) -> Result<RawHeader<'_>, VerifyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let header = de
        .deserialize_map(ObjectVisitor::<RawHeader>::default())
        .and_then(|h| de.end().map(|()| h))
        .map_err(|_| malformed("header is not a JSON object"))?;
    if header.duplicate {
        return Err(malformed("duplicate member in header"));
    }
    Ok(header)
}

fn parse_claims(bytes: &[u8]) -> Result<RawClaims<'_>, VerifyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let claims = de
        .deserialize_map(ObjectVisitor::<RawClaims>::default())
        .and_then(|c| de.end().map(|()| c))
        .map_err(|_| malformed("payload is not a JSON object"))?;
    if claims.duplicate {
        return Err(malformed("duplicate member in payload"));
    }
    // `jti` is read for replay protection; only its type is checked here.
    if let Some(StrVal::Other) = claims.jti {
        return Err(malformed("jti is not a string"));
    }
    Ok(claims)
}

/// Tracks member names seen in one object.
#[derive(Default)]
struct Seen<'a> {
    /// The first names, on the stack: objects in real tokens are small.
    few: [Cow<'a, str>; 16],
    len: usize,
    many: HashSet<Cow<'a, str>>,
}

impl<'a> Seen<'a> {
    /// Records `name`; false when it was seen before.
    fn insert(&mut self, name: Cow<'a, str>) -> bool {
        if self.few[..self.len].contains(&name) || self.many.contains(&name) {
            return false;
        }
        if self.len < self.few.len() {
            self.few[self.len] = name;
            self.len += 1;
        } else {
            self.many.insert(name);
        }
        true
    }
}

/// Reads the members of one JSON object into `T`'s slots.
trait Slots<'de>: Default {
    /// Reads the value of member `name`.
    fn read<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error>;
    fn mark_duplicate(&mut self);
}

impl<'de> Slots<'de> for RawHeader<'de> {
    fn read<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error> {
        match name {
            "alg" => self.alg = Some(map.next_value::<StrSeed>()?.0),
            "kid" => self.kid = Some(map.next_value::<StrSeed>()?.0),
            "crit" => {
                map.next_value::<IgnoredAny>()?;
                self.crit = true;
            }
            // jwk, jku, x5u, x5c and the rest are ignored: the key always
            // comes from the store.
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn mark_duplicate(&mut self) {
        self.duplicate = true;
    }
}

impl<'de> Slots<'de> for RawClaims<'de> {
    fn read<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error> {
        match name {
            "iss" => self.iss = Some(map.next_value::<StrSeed>()?.0),
            "sub" => self.sub = Some(map.next_value::<StrSeed>()?.0),
            "jti" => self.jti = Some(map.next_value::<StrSeed>()?.0),
            "aud" => self.aud = Some(map.next_value::<AudSeed>()?.0),
            "exp" => self.exp = Some(map.next_value::<NumSeed>()?.0),
            "iat" => self.iat = Some(map.next_value::<NumSeed>()?.0),
            "nbf" => self.nbf = Some(map.next_value::<NumSeed>()?.0),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn mark_duplicate(&mut self) {
        self.duplicate = true;
    }
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<T> Default for ObjectVisitor<T> {
    fn default() -> Self {
        ObjectVisitor(std::marker::PhantomData)
    }
}

impl<'de, T: Slots<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut out = T::default();
        let mut seen = Seen::default();
        while let Some(NameSeed(name)) = map.next_key::<NameSeed>()? {
            if !seen.insert(name.clone()) {
                out.mark_duplicate();
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            out.read(&name, &mut map)?;
        }
        Ok(out)
    }
}

/// A member name, borrowed from the input when it has no escapes.
struct NameSeed<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for NameSeed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NameSeed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(NameSeed(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NameSeed(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, kept when it is a string.
struct StrSeed<'a>(StrVal<'a>);

/// Consumes any JSON value, classifying it with `$on_*`.
macro_rules! any_value_visitor {
    ($V:ident, $Out:ty, str => $s:expr, num => $n:expr, seq => $seq:expr, other => $other:expr) => {
        struct $V;
        impl<'de> Visitor<'de> for $V {
            type Value = $Out;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                #[allow(clippy::redundant_closure_call)]
                Ok(($s)(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                #[allow(clippy::redundant_closure_call)]
                Ok(($s)(Cow::Owned(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                #[allow(clippy::redundant_closure_call)]
                Ok(($n)(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                #[allow(clippy::redundant_closure_call)]
                Ok(($n)(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                #[allow(clippy::redundant_closure_call)]
                Ok(($n)(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok($other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok($other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                #[allow(clippy::redundant_closure_call)]
                ($seq)(seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok($other)
            }
        }
    };
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de> de::Deserialize<'de> for StrSeed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        any_value_visitor!(V, StrSeed<'de>,
            str => |s| StrSeed(StrVal::Str(s)),
            num => |_| StrSeed(StrVal::Other),
            seq => |seq| skip_seq(seq).map(|()| StrSeed(StrVal::Other)),
            other => StrSeed(StrVal::Other));
        d.deserialize_any(V)
    }
}

/// Any JSON value, kept when it is a number.
struct NumSeed(NumVal);

impl<'de> de::Deserialize<'de> for NumSeed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        any_value_visitor!(V, NumSeed,
            str => |_: Cow<str>| NumSeed(NumVal::Other),
            num => |n| NumSeed(NumVal::Num(n)),
            seq => |seq| skip_seq(seq).map(|()| NumSeed(NumVal::Other)),
            other => NumSeed(NumVal::Other));
        d.deserialize_any(V)
    }
}

/// `aud`: a string, or an array whose elements must all be strings.
struct AudSeed<'a>(AudVal<'a>);

impl<'de> de::Deserialize<'de> for AudSeed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn read_list<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<AudSeed<'de>, A::Error> {
            let mut list = Vec::new();
            let mut all_strings = true;
            while let Some(StrSeed(item)) = seq.next_element::<StrSeed>()? {
                match item {
                    StrVal::Str(s) if all_strings => list.push(s),
                    _ => all_strings = false,
                }
            }
            Ok(AudSeed(if all_strings {
                AudVal::Many(list)
            } else {
                AudVal::Other
            }))
        }
        any_value_visitor!(V, AudSeed<'de>,
            str => |s| AudSeed(AudVal::One(s)),
            num => |_| AudSeed(AudVal::Other),
            seq => read_list,
            other => AudSeed(AudVal::Other));
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_found_past_the_small_set() {
        let mut json = String::from("{");
        for i in 0..40 {
            json.push_str(&format!("\"m{i}\":0,"));
        }
        json.push_str("\"m3\":1}");
        let claims = parse_claims(json.as_bytes());
        assert!(matches!(
            claims.err(),
            Some(VerifyError::Invalid(Reason::Malformed(
                "duplicate member in payload"
            )))
        ));
    }

    #[test]
    fn escaped_duplicate_names_are_duplicates() {
        let err = parse_header(br#"{"kid":"a","k\u0069d":"b"}"#).err();
        assert!(matches!(
            err,
            Some(VerifyError::Invalid(Reason::Malformed(
                "duplicate member in header"
            )))
        ));
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        // 100 000 levels would overflow the stack if skipping recursed.
        let json = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_claims(json.as_bytes()).is_ok());
        let json = format!("{{\"iss\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let claims = parse_claims(json.as_bytes()).ok();
        assert!(matches!(claims.and_then(|c| c.iss), Some(StrVal::Other)));
    }

    #[test]
    fn aud_with_non_string_element_is_malformed() {
        let c = parse_claims(br#"{"aud":["a",1]}"#).ok().and_then(|c| c.aud);
        assert!(matches!(c, Some(AudVal::Other)));
    }
}
