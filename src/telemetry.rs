//! What the crate tells operators, in one place: the names of its tracing
//! spans and events, and (feature `metrics`) its metrics through the
//! `metrics` facade — no recorder installed, no cost worth measuring.
//!
//! Label values are bounded: kinds, outcomes, stable reason ids, actions;
//! never a user, key or token. Nothing secret is ever recorded: no token,
//! signature, private key or key file.

use crate::error::{Code, Error};
use crate::principal::{Principal, TokenKind};
use crate::verify::VerifyError;

/// Target of the audit events of key operations.
pub(crate) const AUDIT_TARGET: &str = "jwt_profile::audit";

/// `accepted`, `refused` or `unavailable`, and the reason id on refusal.
#[cfg(feature = "metrics")]
fn outcome_of(result: &Result<Principal, VerifyError>) -> (&'static str, &'static str) {
    match result {
        Ok(_) => ("accepted", ""),
        Err(VerifyError::Invalid(reason)) => ("refused", reason.id()),
        Err(VerifyError::Unavailable(_)) => ("unavailable", "STORE-unavailable"),
    }
}

/// When a verification started: read from the clock only when metrics are
/// built in (the duration histogram is its one use).
#[derive(Clone, Copy)]
pub(crate) struct Started(#[cfg(feature = "metrics")] std::time::Instant);

impl Started {
    pub(crate) fn now() -> Started {
        Started(
            #[cfg(feature = "metrics")]
            std::time::Instant::now(),
        )
    }
}

/// One verification's outcome, as metrics (the span carries the rest).
pub(crate) fn verification(
    kind: TokenKind,
    result: &Result<Principal, VerifyError>,
    started: Started,
) {
    #[cfg(feature = "metrics")]
    {
        let (outcome, error_type) = outcome_of(result);
        metrics::counter!(
            "jwt_profile_verifications_total",
            "kind" => kind.as_str(),
            "outcome" => outcome,
            "error_type" => error_type
        )
        .increment(1);
        metrics::histogram!(
            "jwt_profile_verification_duration_seconds",
            "kind" => kind.as_str()
        )
        .record(started.0.elapsed().as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (kind, result, started);
}

/// What a key-cache lookup found.
#[derive(Clone, Copy)]
pub(crate) enum CacheResult {
    Hit,
    NegativeHit,
    Miss,
}

/// A key-cache lookup, counted where it happens (in the cache).
pub(crate) fn key_cache(result: CacheResult) {
    #[cfg(feature = "metrics")]
    {
        let result = match result {
            CacheResult::Hit => "hit",
            CacheResult::NegativeHit => "negative_hit",
            CacheResult::Miss => "miss",
        };
        metrics::counter!("jwt_profile_key_cache_total", "result" => result).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = result;
}

/// How full the key cache is (entries, capacity).
pub(crate) fn key_cache_size(entries: u64, capacity: u64) {
    fill(
        "jwt_profile_key_cache_entries",
        "jwt_profile_key_cache_capacity",
        entries,
        capacity,
    );
}

/// How full the in-process replay store is (entries, capacity).
pub(crate) fn replay_size(entries: usize, capacity: usize) {
    fill(
        "jwt_profile_replay_entries",
        "jwt_profile_replay_capacity",
        entries as u64,
        capacity as u64,
    );
}

/// The two gauges of a bounded store, so an operator sees it filling
/// before it refuses.
fn fill(entries_name: &'static str, capacity_name: &'static str, entries: u64, capacity: u64) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!(entries_name).set(entries as f64);
        metrics::gauge!(capacity_name).set(capacity as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (entries_name, capacity_name, entries, capacity);
}

/// A key operation: a metric for every one, and an INFO audit event for
/// the ones that change keys (create, remove).
pub(crate) fn key_operation(
    action: &'static str,
    caller: &Principal,
    org_id: &str,
    user_id: &str,
    key_id: Option<&str>,
    result: Result<(), &Error>,
) {
    let (outcome, error_type): (&'static str, &str) = match result {
        Ok(()) => ("ok", ""),
        Err(e) if matches!(e.code(), Code::Unavailable | Code::Internal) => ("unavailable", e.id()),
        Err(e) => ("refused", e.id()),
    };
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "jwt_profile_key_operations_total",
        "action" => action,
        "outcome" => outcome
    )
    .increment(1);
    let key_id = key_id.unwrap_or_default();
    if matches!(action, "create" | "remove") {
        tracing::info!(
            target: AUDIT_TARGET,
            action,
            caller.user_id = %caller.user_id,
            caller.org_id = %caller.org_id,
            user_id,
            key_id,
            org_id,
            outcome,
            error.type = error_type,
            "key {action}: {outcome}"
        );
    } else {
        tracing::debug!(
            target: AUDIT_TARGET,
            action,
            caller.user_id = %caller.user_id,
            user_id,
            key_id,
            org_id,
            outcome,
            error.type = error_type,
            "key {action}: {outcome}"
        );
    }
}

/// An access token issued (never the token itself).
pub(crate) fn token_issued(principal: &Principal, signing_key: &str, scope: &str, expires_in: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!("jwt_profile_tokens_issued_total").increment(1);
    tracing::info!(
        target: AUDIT_TARGET,
        action = "issue_token",
        enduser.id = %principal.user_id,
        jwt_profile.org_id = %principal.org_id,
        jwt_profile.key_id = %principal.key_id,
        signing_key,
        scope,
        expires_in,
        "access token issued"
    );
}
