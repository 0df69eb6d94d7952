//! CORS policy from config (`[cors]`), as a tower-http [`CorsLayer`].
//!
//! With no `allowed_origins`, CORS is off: no layer is installed and browsers
//! on other origins cannot read responses. Origins are matched exactly, so
//! write them as the browser sends them: `scheme://host[:port]`, lower case,
//! no path and no trailing slash. `"*"` allows any origin, but never together
//! with `allow_credentials`: the spec forbids it and browsers refuse it, so
//! [`CorsConfig::validate`] refuses it at start.
//!
//! The defaults make the two browser cases work once an origin is listed:
//! publishing with an `Authorization` header (a preflighted `POST`), and
//! `EventSource` (a simple `GET`, which sends `Last-Event-ID` on reconnect;
//! with `withCredentials: true` it also needs `allow_credentials = true` so
//! the cookie token is sent).

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, Any, CorsLayer, ExposeHeaders};

/// Longest preflight cache a config may ask for (browsers cap it lower).
const MAX_AGE_LIMIT_SECS: u64 = 86_400;

/// CORS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to call Herald from a browser, e.g.
    /// `["https://app.example.com"]`, or `["*"]` for any. Empty: CORS off.
    pub allowed_origins: Vec<String>,
    /// Methods allowed in preflight, or `["*"]` (not with credentials).
    pub allowed_methods: Vec<String>,
    /// Request headers allowed in preflight, or `["*"]` (not with credentials).
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read, beyond the CORS-safelisted ones.
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` on cross-origin requests
    /// (`EventSource` with `withCredentials: true`). Needs explicit origins.
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer, in seconds.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "POST", "OPTIONS"].map(String::from).to_vec(),
            allowed_headers: ["authorization", "content-type", "last-event-id"]
                .map(String::from)
                .to_vec(),
            expose_headers: ["retry-after", "x-request-id"].map(String::from).to_vec(),
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

/// Why a `[cors]` section cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorsConfigError {
    /// `"*"` listed next to other values.
    #[error("{0}: \"*\" must be the only entry")]
    WildcardNotAlone(&'static str),
    /// A wildcard together with `allow_credentials`.
    #[error("{0} = [\"*\"] cannot be combined with allow_credentials; list the values explicitly")]
    WildcardWithCredentials(&'static str),
    /// An origin browsers would never send, or that cannot be trusted.
    #[error("allowed_origins: {origin:?} {why}")]
    BadOrigin {
        /// The configured origin.
        origin: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Not an HTTP method.
    #[error("allowed_methods: {0:?} is not an HTTP method")]
    BadMethod(String),
    /// Not a header name.
    #[error("{key}: {value:?} is not a header name")]
    BadHeader {
        /// `allowed_headers` or `expose_headers`.
        key: &'static str,
        /// The configured value.
        value: String,
    },
    /// A preflight cache longer than browsers honour.
    #[error("max_age_secs must be at most {MAX_AGE_LIMIT_SECS}")]
    MaxAgeTooLong,
}

impl CorsConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), CorsConfigError> {
        let wildcard = |list: &[String]| list.iter().any(|v| v == "*");
        for (key, list) in [
            ("allowed_origins", &self.allowed_origins),
            ("allowed_methods", &self.allowed_methods),
            ("allowed_headers", &self.allowed_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            if wildcard(list) && list.len() > 1 {
                return Err(CorsConfigError::WildcardNotAlone(key));
            }
            if wildcard(list) && self.allow_credentials {
                return Err(CorsConfigError::WildcardWithCredentials(key));
            }
        }
        if !wildcard(&self.allowed_origins) {
            for origin in &self.allowed_origins {
                check_origin(origin)?;
            }
        }
        if !wildcard(&self.allowed_methods) {
            for m in &self.allowed_methods {
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| CorsConfigError::BadMethod(m.clone()))?;
            }
        }
        for (key, list) in [
            ("allowed_headers", &self.allowed_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            if !wildcard(list) {
                for h in list {
                    HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        CorsConfigError::BadHeader {
                            key,
                            value: h.clone(),
                        }
                    })?;
                }
            }
        }
        if self.max_age_secs > MAX_AGE_LIMIT_SECS {
            return Err(CorsConfigError::MaxAgeTooLong);
        }
        Ok(())
    }
}

/// Checks one explicit origin: `scheme://host[:port]`, lower case, no path.
fn check_origin(origin: &str) -> Result<(), CorsConfigError> {
    let bad = |why: &'static str| {
        Err(CorsConfigError::BadOrigin {
            origin: origin.to_string(),
            why,
        })
    };
    if origin == "null" {
        return bad("is the opaque origin of sandboxed pages and files; it cannot be trusted");
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("must look like https://host[:port]");
    };
    if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
        return bad("must look like https://host[:port], with no path or trailing slash");
    }
    if origin.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("must be lower case, as browsers send it");
    }
    if HeaderValue::from_str(origin).is_err() || origin.contains(['*', ' ', ',']) {
        return bad("is not a valid origin");
    }
    Ok(())
}

/// The CORS layer for `cfg`, or `None` when no origin is allowed (CORS off).
/// A config that fails [`CorsConfig::validate`] also yields `None`: it was
/// refused at start, and refusing cross-origin access is the safe side.
pub fn layer(cfg: &CorsConfig) -> Option<CorsLayer> {
    if cfg.allowed_origins.is_empty() {
        return None;
    }
    if let Err(e) = cfg.validate() {
        tracing::error!(error = %e, "invalid CORS config; CORS stays off");
        return None;
    }
    let is_wildcard = |list: &[String]| list.len() == 1 && list[0] == "*";
    let origins = if is_wildcard(&cfg.allowed_origins) {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(
            cfg.allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let methods = if is_wildcard(&cfg.allowed_methods) {
        AllowMethods::from(Any)
    } else {
        AllowMethods::list(
            cfg.allowed_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok()),
        )
    };
    let headers = if is_wildcard(&cfg.allowed_headers) {
        AllowHeaders::from(Any)
    } else {
        AllowHeaders::list(header_names(&cfg.allowed_headers))
    };
    let expose = if is_wildcard(&cfg.expose_headers) {
        ExposeHeaders::from(Any)
    } else {
        ExposeHeaders::list(header_names(&cfg.expose_headers))
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(methods)
            .allow_headers(headers)
            .expose_headers(expose)
            .allow_credentials(cfg.allow_credentials)
            .max_age(Duration::from_secs(cfg.max_age_secs)),
    )
}

/// The headers the CORS layer adds to a response for a request without
/// `Origin` (its `Vary`), found by running the layer once: the lean publish
/// path, which never serves `Origin`, adds exactly these.
pub fn headers_without_origin(cfg: &CorsConfig) -> axum::http::HeaderMap {
    use futures_util::FutureExt as _;
    use tower::{Layer as _, ServiceExt as _};
    let Some(layer) = layer(cfg) else {
        return axum::http::HeaderMap::new();
    };
    let inner = tower::service_fn(|_req: axum::http::Request<axum::body::Body>| async {
        Ok::<_, std::convert::Infallible>(axum::http::Response::new(axum::body::Body::empty()))
    });
    let mut request = axum::http::Request::new(axum::body::Body::empty());
    *request.method_mut() = axum::http::Method::POST;
    layer
        .layer(inner)
        .oneshot(request)
        .now_or_never()
        .and_then(Result::ok)
        .map(|r| r.headers().clone())
        .unwrap_or_default()
}

fn header_names(list: &[String]) -> impl Iterator<Item = HeaderName> + '_ {
    list.iter()
        .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::{get, post};
    use tower::ServiceExt;

    fn origins(list: &[&str]) -> CorsConfig {
        CorsConfig {
            allowed_origins: list.iter().map(|s| s.to_string()).collect(),
            ..CorsConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid_and_off() {
        let cfg = CorsConfig::default();
        assert!(cfg.validate().is_ok());
        assert!(layer(&cfg).is_none());
    }

    #[test]
    fn wildcard_never_combines_with_credentials() {
        let any = origins(&["*"]);
        assert!(any.validate().is_ok());
        let with_creds = CorsConfig {
            allow_credentials: true,
            ..any
        };
        let err = with_creds.validate().unwrap_err().to_string();
        assert!(err.contains("allow_credentials"), "{err}");
        assert!(layer(&with_creds).is_none(), "never a panicking layer");

        let creds = CorsConfig {
            allow_credentials: true,
            ..origins(&["https://app.example.com"])
        };
        assert!(creds.validate().is_ok());
        for field in ["methods", "headers", "expose"] {
            let mut cfg = creds.clone();
            let star = vec!["*".to_string()];
            match field {
                "methods" => cfg.allowed_methods = star,
                "headers" => cfg.allowed_headers = star,
                _ => cfg.expose_headers = star,
            }
            assert!(cfg.validate().is_err(), "{field}");
        }
    }

    #[test]
    fn origins_must_be_exact() {
        for good in [
            "https://app.example.com",
            "http://localhost:8000",
            "http://[::1]:3000",
        ] {
            assert!(origins(&[good]).validate().is_ok(), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://App.example.com",
            "https://*.example.com",
            "null",
            "https://",
        ] {
            assert!(origins(&[bad]).validate().is_err(), "{bad}");
        }
        assert!(origins(&["*", "https://a.example"]).validate().is_err());
    }

    #[test]
    fn methods_headers_and_max_age_are_checked() {
        let base = origins(&["https://a.example"]);
        let bad = [
            CorsConfig {
                allowed_methods: vec!["GE T".into()],
                ..base.clone()
            },
            CorsConfig {
                allowed_headers: vec!["bad header".into()],
                ..base.clone()
            },
            CorsConfig {
                expose_headers: vec!["x:y".into()],
                ..base.clone()
            },
            CorsConfig {
                max_age_secs: 10_000_000,
                ..base.clone()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }

    fn app(cfg: &CorsConfig) -> Router {
        let router = Router::new()
            .route("/events", get(|| async { "stream" }))
            .route("/channels/{channel}/events", post(|| async { "ok" }));
        match layer(cfg) {
            Some(l) => router.layer(l),
            None => router,
        }
    }

    fn preflight(origin: &str) -> Request<Body> {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/channels/news/events")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .body(Body::empty())
            .expect("valid request")
    }

    #[tokio::test]
    async fn preflight_from_allowed_and_disallowed_origins() {
        let cfg = origins(&["https://app.example.com"]);
        let ok = app(&cfg)
            .oneshot(preflight("https://app.example.com"))
            .await
            .expect("infallible");
        assert_eq!(ok.status(), StatusCode::OK);
        let h = ok.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .expect("ascii");
        assert!(allowed.contains("authorization"), "{allowed}");
        let methods = h[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .expect("ascii");
        assert!(methods.contains("POST"), "{methods}");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());

        let denied = app(&cfg)
            .oneshot(preflight("https://evil.example.com"))
            .await
            .expect("infallible");
        assert!(
            denied
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
    }

    #[tokio::test]
    async fn credentialed_event_source() {
        let cfg = CorsConfig {
            allow_credentials: true,
            ..origins(&["https://app.example.com"])
        };
        let req = Request::builder()
            .uri("/events?channel=news")
            .header(header::ORIGIN, "https://app.example.com")
            .header(header::COOKIE, "herald_token=x")
            .body(Body::empty())
            .expect("valid request");
        let res = app(&cfg).oneshot(req).await.expect("infallible");
        let h = res.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        let expose = h[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .expect("ascii");
        assert!(expose.contains("retry-after"), "{expose}");
    }

    #[tokio::test]
    async fn wildcard_origin_without_credentials() {
        let res = app(&origins(&["*"]))
            .oneshot(preflight("https://anyone.example"))
            .await
            .expect("infallible");
        assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[tokio::test]
    async fn off_means_no_cors_headers() {
        let req = Request::builder()
            .uri("/events")
            .header(header::ORIGIN, "https://app.example.com")
            .body(Body::empty())
            .expect("valid request");
        let res = app(&CorsConfig::default())
            .oneshot(req)
            .await
            .expect("infallible");
        assert!(
            res.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
    }
}
