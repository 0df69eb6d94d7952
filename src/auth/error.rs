//! [`AuthError`]: why auth config or a token was refused, with the stable
//! code clients see and the reason label of `herald_auth_failures_total`.
//! Nothing here knows about HTTP; the edge maps errors onto statuses.

use crate::telemetry::metrics::AUTH_FAILURES;

/// Why authentication config or a token was refused.
///
/// Every variant has a stable [`code`](AuthError::code) for the JSON error
/// and a [`reason`](AuthError::reason) for
/// the `herald_auth_failures_total{reason}` metric. Messages never contain
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The configuration cannot work (reported at start, never to clients).
    #[error("{0}")]
    Config(String),
    /// The token header says `alg: none`.
    #[error("unsigned tokens (alg none) are not accepted")]
    AlgNone,
    /// The token header names an algorithm that is not pinned in config.
    #[error("the token's signing algorithm is not accepted")]
    AlgNotAllowed,
    /// The signature does not verify with any configured key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` is missing or does not name this service.
    #[error("the token's audience is not accepted")]
    BadAudience,
    /// `iss` is not a single string, or is missing or not the configured
    /// issuer.
    #[error("the token's issuer is not accepted")]
    BadIssuer,
    /// The token header has `crit`: it names extensions the recipient must
    /// understand (RFC 7515 §4.1.11), and Herald understands none.
    #[error("the token's header lists critical extensions (crit), which are not supported")]
    UnsupportedCrit,
    /// The token cannot be parsed, or lacks `exp`.
    #[error("the token is malformed")]
    Malformed,
    /// A right is needed and no token was presented.
    #[error("a token is required")]
    MissingToken,
    /// The token names a `kid` that is not in the JWKS (yet); retrying after
    /// the key set is refreshed may succeed.
    #[error("the token's signing key (kid) is not known")]
    UnknownKey,
    /// The token is valid but does not grant this right.
    #[error("the token does not grant {action} on channel {channel}")]
    Forbidden {
        /// `subscribe` or `publish`.
        action: &'static str,
        /// The channel that was refused.
        channel: String,
    },
}

impl AuthError {
    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Config(_) => "auth_config",
            AuthError::AlgNone => "alg_none",
            AuthError::AlgNotAllowed => "alg_not_allowed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadAudience => "bad_audience",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::UnsupportedCrit => "unsupported_crit",
            AuthError::Malformed => "malformed",
            AuthError::MissingToken => "missing_token",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Forbidden { .. } => "forbidden",
        }
    }

    /// Label value of `herald_auth_failures_total{reason}` (a small fixed set).
    pub fn reason(&self) -> &'static str {
        self.code()
    }

    /// Counts this failure in `herald_auth_failures_total`.
    pub(crate) fn record(&self) {
        metrics::counter!(AUTH_FAILURES, "reason" => self.reason()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statuses these go out with are the edge's business; see the
    /// integration test `edge::every_auth_error_has_its_status`.
    #[test]
    fn every_code_and_reason() {
        let expect = [
            (AuthError::AlgNone, "alg_none"),
            (AuthError::AlgNotAllowed, "alg_not_allowed"),
            (AuthError::BadSignature, "bad_signature"),
            (AuthError::Expired, "expired"),
            (AuthError::NotYetValid, "not_yet_valid"),
            (AuthError::BadAudience, "bad_audience"),
            (AuthError::BadIssuer, "bad_issuer"),
            (AuthError::UnsupportedCrit, "unsupported_crit"),
            (AuthError::Malformed, "malformed"),
            (AuthError::MissingToken, "missing_token"),
            (AuthError::UnknownKey, "unknown_key"),
            (
                AuthError::Forbidden {
                    action: "publish",
                    channel: "x".into(),
                },
                "forbidden",
            ),
            (AuthError::Config("x".into()), "auth_config"),
        ];
        for (err, code) in expect {
            assert_eq!(err.code(), code);
            assert_eq!(err.reason(), code);
        }
    }
}
