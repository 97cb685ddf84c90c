//! Time, settable in tests.

#[cfg(feature = "test-util")]
use std::sync::Arc;
#[cfg(feature = "test-util")]
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// A source of the current time. The verifier and the key service read the
/// time only through this trait, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved; clones share one time (feature
/// `test-util`).
///
/// ```
/// use jwt_profile::{Clock, ManualClock};
/// let clock = ManualClock::at_unix(1_000);
/// clock.advance_secs(30);
/// assert_eq!(clock.now().timestamp(), 1_030);
/// ```
#[cfg(feature = "test-util")]
#[derive(Clone, Debug)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
}

#[cfg(feature = "test-util")]
impl ManualClock {
    /// A clock at `secs` seconds after the Unix epoch.
    pub fn at_unix(secs: i64) -> Self {
        ManualClock {
            micros: Arc::new(AtomicI64::new(secs.saturating_mul(1_000_000))),
        }
    }

    /// A clock at the current system time.
    pub fn now_system() -> Self {
        ManualClock {
            micros: Arc::new(AtomicI64::new(Utc::now().timestamp_micros())),
        }
    }

    /// Sets the time.
    pub fn set(&self, at: DateTime<Utc>) {
        self.micros.store(at.timestamp_micros(), Ordering::SeqCst);
    }

    /// Moves the clock by `secs` seconds (negative moves it back).
    pub fn advance_secs(&self, secs: i64) {
        self.micros
            .fetch_add(secs.saturating_mul(1_000_000), Ordering::SeqCst);
    }
}

#[cfg(feature = "test-util")]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.micros.load(Ordering::SeqCst)).unwrap_or_default()
    }
}
