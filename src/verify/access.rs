//! Access tokens (`typ: at+jwt`) issued by a token issuer, accepted beside
//! assertions when the verifier is given [`AccessTokens`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::checked::CheckedAssertion;
use super::json::{StrVal, parse_claims};
use super::{
    KnownHeader, Lookups, Reason, Segments, Verifier, VerifyError, check_audience, dates,
    issuer_and_subject, malformed, required_str, time_rules, to_datetime,
};
use crate::key::Algorithm;
use crate::principal::{Principal, TokenKind};
use crate::token::SigningKeys;

/// What a [`Verifier`] needs to accept a token issuer's access tokens: the
/// issuer's name and its published signing keys. Made by
/// [`TokenIssuer::access_tokens`](crate::token::TokenIssuer::access_tokens).
#[derive(Clone)]
pub struct AccessTokens {
    pub(crate) issuer: String,
    pub(crate) keys: SigningKeys,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// An access token: RS256 by a published signing key; `iss` the issuer;
    /// `aud` one of ours; the time rules without maximum age; and the
    /// machine key it was issued for still there, the user's, unexpired.
    pub(super) async fn access_token(
        &self,
        access: &AccessTokens,
        segments: &Segments<'_>,
        header: &KnownHeader,
        now: DateTime<Utc>,
        lookups: Lookups,
        span: &tracing::Span,
    ) -> Result<(Principal, Option<CheckedAssertion>), VerifyError> {
        let (alg, kid) = (header.alg, &*header.kid);
        let v = &self.inner.validation;
        let now_secs = now.timestamp_micros() as f64 / 1e6;
        if alg != Algorithm::RS256 {
            return Err(Reason::Algorithm("access tokens are signed with RS256").into());
        }
        let c = parse_claims(segments.payload())?;
        if let Some(StrVal::Str(sub)) = &c.sub {
            span.record("enduser.id", &**sub);
        }
        if let Some(StrVal::Str(key_id)) = &c.key_id {
            span.record("jwt_profile.key_id", &**key_id);
        }
        let (iss, sub) = issuer_and_subject(&c)?;
        if iss != access.issuer {
            return Err(Reason::Issuer.into());
        }
        let key_id = required_str(
            &c.key_id,
            "key_id is missing",
            "key_id is not a string",
            "key_id is empty",
        )?;
        let key_sequence = match &c.key_sequence {
            Some(StrVal::Str(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<u64>()
                .map_err(|_| malformed("key_sequence is not a sequence"))?,
            None => return Err(malformed("key_sequence is missing")),
            Some(_) => return Err(malformed("key_sequence is not a sequence")),
        };
        let (exp, iat, nbf) = dates(&c)?;
        let scopes: Vec<String> = match &c.scope {
            None => Vec::new(),
            Some(StrVal::Other) => return Err(malformed("scope is not a string")),
            Some(StrVal::Str(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        };
        check_audience(&c.aud, v)?;
        time_rules(exp, iat, nbf, v.leeway, None, now_secs)?;
        let signing = match lookups {
            Lookups::Any => access.keys.verifying_key(kid).await,
            // A key not in the published set may mean a reload: not here.
            Lookups::CachedOnly => match access.keys.published(kid) {
                Some(key) => Ok(Some(key)),
                None => std::future::pending().await,
            },
        };
        let signing = match signing {
            Ok(Some(key)) => key,
            Ok(None) => return Err(Reason::UnknownKey.into()),
            Err(e) => return Err(VerifyError::Unavailable(e.to_string())),
        };
        if !signing.verify(segments.signing_input, segments.signature()) {
            return Err(Reason::Signature.into());
        }
        // On every use: the machine key must still be there (a removal
        // revokes its access tokens), the user's, and unexpired.
        let machine: Arc<crate::key::VerifyingKey> =
            self.owned_key(key_id, sub, now, lookups).await?;
        let stored = machine.key();
        // Exactly the stored key it was issued for: a key stored later under
        // the same id (an id reused after a removal, through a custom id
        // generator) has another sequence, and does not bring the removed
        // key's tokens back.
        if key_sequence != stored.details.sequence {
            return Err(Reason::UnknownKey.into());
        }
        let principal = machine.principal(
            to_datetime(exp),
            to_datetime(iat),
            TokenKind::AccessToken,
            scopes.into(),
        );
        if !self.remembers() {
            return Ok((principal, None));
        }
        let entry = CheckedAssertion {
            key_sequence: stored.details.sequence,
            principal: principal.clone(),
            exp,
            iat,
            nbf,
            kind: TokenKind::AccessToken,
            signing_key: Some(kid.into()),
            last_valid: exp + v.leeway,
            lifetime: Duration::ZERO,
        };
        Ok((principal, Some(entry)))
    }
}
