//! The one API error type. Every error response has the body
//! `{"error": {"code": "...", "message": "..."}}` with a stable `code`.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::hub::HubError;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: a 400 with a specific code.
    #[error("{message}")]
    BadRequest {
        /// Stable error code.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// The request is larger than a configured cap.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Credentials were refused.
    #[error("{message}")]
    Unauthorized {
        /// Stable error code naming the reason.
        code: &'static str,
        /// Human-readable detail (never contains the token).
        message: String,
    },
    /// Valid credentials lack the right.
    #[error("{0}")]
    Forbidden(String),
    /// The route or channel does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A limit was hit; retry after the given time.
    #[error("{message}")]
    TooManyRequests {
        /// Which limit.
        limit: &'static str,
        /// Human-readable detail.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// The server is draining or out of capacity.
    #[error("{message}")]
    Unavailable {
        /// Stable error code.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
}

impl ApiError {
    /// A 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
        }
    }
}

/// Builds the standard error response by hand (also used outside handlers).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let mut response = error_response(status, code, &self.to_string());
        match &self {
            Self::TooManyRequests { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Self::Unauthorized { .. } => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match &e {
            HubError::InvalidChannel(_) => Self::bad_request("invalid_channel", e.to_string()),
            HubError::InvalidEventType(_) => Self::bad_request("invalid_event_type", e.to_string()),
            HubError::EventTooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
            HubError::TooManyChannels(_) => Self::Unavailable {
                code: "channel_capacity",
                message: e.to_string(),
            },
        }
    }
}
