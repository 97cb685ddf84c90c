//! [`Validation`]: what the verifier checks, with safe defaults.

use std::time::Duration;

use crate::key::Algorithm;

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z.
pub(crate) const MAX_NUMERIC_DATE: f64 = crate::key::MAX_UNIX_SECS as f64;

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
/// use jwt_profile::Algorithm;
/// let v = Validation::new(["https://api.example.com"])
///     .leeway(Duration::from_secs(30))
///     .max_age(Duration::from_secs(600))
///     .algorithms([Algorithm::RS256, Algorithm::ES256]);
/// assert_eq!(v.audiences(), ["https://api.example.com"]);
/// ```
#[derive(Clone, Debug)]
pub struct Validation {
    pub(super) audiences: Vec<String>,
    pub(super) leeway: f64,
    pub(super) max_age: f64,
    pub(super) algorithms: [bool; 9],
    pub(super) max_token_bytes: usize,
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

    /// The leeway, in seconds.
    pub(crate) fn leeway_secs(&self) -> f64 {
        self.leeway
    }

    pub(crate) fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms[alg as usize]
    }
}
