//! The one API error type, and the one place where errors become
//! responses. Every error response has the body
//! `{"error": {"code": "...", "message": "..."}}` with a stable `code`.
//! Domain errors (hub, auth, limits) carry no HTTP types; their statuses
//! and codes are decided here.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::broker::BrokerError;
use crate::hub::HubError;
use crate::limits::Limited;

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
    /// The request head is larger than the cap.
    #[error("the request head is too large")]
    HeaderTooLarge,
    /// The body is not `application/json`.
    #[error("send the body as application/json")]
    UnsupportedMediaType,
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
    /// The request conflicts with an earlier one (422).
    #[error("{message}")]
    Conflict {
        /// Stable error code.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// The route exists, but not for this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A non-streaming request ran past its deadline.
    #[error("the request took too long")]
    RequestTimeout,
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
    /// The server is draining, out of capacity, or a dependency is down.
    #[error("{message}")]
    Unavailable {
        /// Stable error code.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// A fault of the server itself.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The 503 every refused request gets while the server drains.
    pub fn draining() -> Self {
        Self::Unavailable {
            code: "draining",
            message: "the server is shutting down".into(),
        }
    }

    /// The status and stable code of this error.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::HeaderTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
            ),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The standard error response for a status, code and message.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
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

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Hub(h) => h.into(),
            BrokerError::Unavailable(message) => Self::Unavailable {
                code: "broker_unavailable",
                message,
            },
            BrokerError::IdempotencyConflict => Self::Conflict {
                code: "idempotency_key_reused",
                message: e.to_string(),
            },
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match &e {
            // A server that cannot verify tokens is not the client's fault.
            AuthError::Config(_) => Self::Unavailable {
                code: e.code(),
                message: e.to_string(),
            },
            AuthError::Forbidden { .. } => Self::Forbidden(e.to_string()),
            _ => Self::Unauthorized {
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}

impl From<Limited> for ApiError {
    fn from(l: Limited) -> Self {
        ApiError::TooManyRequests {
            limit: l.limit,
            message: format!("too many requests ({} limit); retry later", l.limit),
            retry_after: l.retry_after,
        }
    }
}

/// Rewrites the plain-text rejections of axum and tower-http (body too
/// large, deadline passed, unreadable body) into the JSON error shape, so
/// every API error has the same body. JSON errors pass through.
pub async fn json_rejection(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        s if s.is_server_error() => ApiError::Internal(message),
        _ => ApiError::bad_request("bad_request", message),
    };
    let mut fixed = error.into_response();
    // Keep the status even where the variant's differs (an odd 4xx).
    *fixed.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_error_has_one_status_and_code() {
        let limited = Limited {
            limit: "publish",
            retry_after: Duration::from_millis(500),
        };
        assert_eq!(
            ApiError::from(limited).parts(),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
        );
        assert_eq!(
            ApiError::from(AuthError::Config("x".into())).parts(),
            (StatusCode::SERVICE_UNAVAILABLE, "auth_config")
        );
        assert_eq!(
            ApiError::from(AuthError::Expired).parts(),
            (StatusCode::UNAUTHORIZED, "expired")
        );
        let forbidden = AuthError::Forbidden {
            action: "publish",
            channel: "a".into(),
        };
        assert_eq!(
            ApiError::from(forbidden).parts(),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        assert_eq!(
            ApiError::from(HubError::TooManyChannels(1)).parts(),
            (StatusCode::SERVICE_UNAVAILABLE, "channel_capacity")
        );
        assert_eq!(
            ApiError::UnsupportedMediaType.parts(),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        );
    }
}
