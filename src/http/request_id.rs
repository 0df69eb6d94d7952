//! Request ids: every response carries `x-request-id`, taken from the
//! request when the client (or a proxy) sent a sane one, otherwise made
//! here; the request span records it so a log line can be matched to the
//! response a client saw. Set and echoed by tower-http's request-id layers.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use tower_http::request_id::{MakeRequestId, RequestId};

/// The header, as the CORS config exposes it.
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id kept; longer ones are replaced, so a client cannot
/// push large values into every log line and span.
const MAX_INCOMING_LEN: usize = 64;

/// Makes ids `<process prefix>-<counter>`, both hex: unique per process
/// without a clock or a random draw per request.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NextId;

impl MakeRequestId for NextId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| fastrand::u32(..));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("{prefix:08x}-{n:x}"))
            .ok()
            .map(RequestId::new)
    }
}

/// Drops an incoming id that is too long or not plain visible ASCII, so the
/// layer makes a fresh one instead.
pub(super) async fn bound_incoming(mut req: Request) -> Request {
    let sane = req.headers().get(&X_REQUEST_ID).is_none_or(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= MAX_INCOMING_LEN && b.iter().all(|c| c.is_ascii_graphic())
    });
    if !sane {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

/// The request's id, for its span ("-" if the layer did not run).
pub(super) fn of(req: &Request) -> &str {
    req.extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-")
}
