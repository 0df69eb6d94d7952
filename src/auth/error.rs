//! [`AuthError`]: why auth config or a token was refused, with the stable
//! code clients see and the reason label of `herald_auth_failures_total`.
//! Nothing here knows about HTTP; the edge maps errors onto statuses.

use axum::http::StatusCode;

use crate::telemetry::metrics::AUTH_FAILURES;

/// Why authentication config or a token was refused.
///
/// Every variant has a stable [`code`](AuthError::code) for the JSON error,
/// a [`status`](AuthError::status), and a [`reason`](AuthError::reason) for
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
    /// `iss` is missing or is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    BadIssuer,
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
            AuthError::Malformed => "malformed",
            AuthError::MissingToken => "missing_token",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Forbidden { .. } => "forbidden",
        }
    }

    /// HTTP status: 401 for token problems, 403 for a missing right, 500 for
    /// a configuration error.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
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

    #[test]
    fn every_code_and_status() {
        let expect = [
            (AuthError::AlgNone, "alg_none", 401),
            (AuthError::AlgNotAllowed, "alg_not_allowed", 401),
            (AuthError::BadSignature, "bad_signature", 401),
            (AuthError::Expired, "expired", 401),
            (AuthError::NotYetValid, "not_yet_valid", 401),
            (AuthError::BadAudience, "bad_audience", 401),
            (AuthError::BadIssuer, "bad_issuer", 401),
            (AuthError::Malformed, "malformed", 401),
            (AuthError::MissingToken, "missing_token", 401),
            (AuthError::UnknownKey, "unknown_key", 401),
            (
                AuthError::Forbidden {
                    action: "publish",
                    channel: "x".into(),
                },
                "forbidden",
                403,
            ),
            (AuthError::Config("x".into()), "auth_config", 500),
        ];
        for (err, code, status) in expect {
            assert_eq!(err.code(), code);
            assert_eq!(err.reason(), code);
            assert_eq!(err.status().as_u16(), status, "{code}");
        }
    }
}
