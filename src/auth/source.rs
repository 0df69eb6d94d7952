//! Where a request's token comes from. The first source present wins, in
//! this order, and a bad token in an earlier source is an error, never
//! skipped:
//!
//! 1. the `Authorization: Bearer <token>` header;
//! 2. the cookie named [`AuthConfig::cookie_name`] (default `herald_token`);
//! 3. the `access_token` query parameter, for `EventSource`, which cannot set
//!    headers, unless [`AuthConfig::query_param_enabled`] is false.

use axum::http::{HeaderMap, header};

use super::config::AuthConfig;
use super::error::AuthError;

/// Query parameter that carries a token for `EventSource` clients.
pub const QUERY_PARAM: &str = "access_token";

/// The token sources a config enables.
#[derive(Debug, Clone)]
pub(crate) struct TokenSources {
    cookie_name: String,
    query_param_enabled: bool,
}

impl TokenSources {
    /// The sources of `cfg`.
    pub(crate) fn new(cfg: &AuthConfig) -> Self {
        Self {
            cookie_name: cfg.cookie_name.clone(),
            query_param_enabled: cfg.query_param_enabled,
        }
    }

    /// Picks the token from the first source present; `query_token` is the
    /// request's `access_token` value, if any (see [`query_token`]).
    pub(crate) fn find<'a>(
        &self,
        headers: &'a HeaderMap,
        query_token: Option<&'a str>,
    ) -> Result<Option<&'a str>, AuthError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
            // Other schemes (Basic, ...) are not ours: fall through to the cookie.
            if let Some((scheme, token)) = value.split_once(' ')
                && scheme.eq_ignore_ascii_case("bearer")
            {
                let token = token.trim();
                return if token.is_empty() {
                    Err(AuthError::Malformed)
                } else {
                    Ok(Some(token))
                };
            }
            if value.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::Malformed);
            }
        }
        if let Some(token) = cookie_value(headers, &self.cookie_name) {
            return Ok(Some(token));
        }
        if self.query_param_enabled
            && let Some(token) = query_token
        {
            return Ok(Some(token));
        }
        Ok(None)
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The percent-decoded `access_token` value of a raw query string, to pass
/// to [`Authenticator::authenticate_with_refresh`](super::Authenticator::authenticate_with_refresh).
pub fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == QUERY_PARAM)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{authenticator, bearer, hs, hs_config, valid_claims};
    use axum::http::HeaderValue;

    #[test]
    fn query_token_extraction() {
        assert_eq!(
            query_token(Some("channel=a&access_token=t%2Bk")),
            Some("t+k".into())
        );
        assert_eq!(query_token(Some("channel=a")), None);
        assert_eq!(query_token(None), None);
        assert_eq!(query_token(Some("access%5Ftoken=x")), Some("x".into()));
    }

    #[tokio::test]
    async fn valid_token_from_each_source() {
        let auth = authenticator(&hs_config());
        let token = hs(valid_claims());

        let claims = auth
            .authenticate_with_refresh(&bearer(&token), None)
            .await
            .expect("bearer ok")
            .expect("claims");
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert!(claims.can_subscribe("news/x"));
        assert!(!claims.can_subscribe("sport/x"));
        assert!(claims.can_publish("news/a"));
        assert!(!claims.can_publish("news/b"));

        let mut cookies = HeaderMap::new();
        cookies.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; herald_token={token}; x=1"))
                .expect("ascii"),
        );
        assert!(
            auth.authenticate_with_refresh(&cookies, None)
                .await
                .expect("cookie ok")
                .is_some()
        );

        let none = HeaderMap::new();
        assert!(
            auth.authenticate_with_refresh(&none, Some(&token))
                .await
                .expect("query")
                .is_some()
        );
        assert_eq!(auth.authenticate_with_refresh(&none, None).await, Ok(None));
    }

    #[tokio::test]
    async fn query_source_can_be_disabled() {
        let auth = authenticator(&AuthConfig {
            query_param_enabled: false,
            ..hs_config()
        });
        let token = hs(valid_claims());
        assert_eq!(
            auth.authenticate_with_refresh(&HeaderMap::new(), Some(&token))
                .await,
            Ok(None)
        );
    }

    #[tokio::test]
    async fn header_wins_over_cookie_and_a_bad_header_is_not_skipped() {
        let auth = authenticator(&hs_config());
        let good = hs(valid_claims());
        let mut headers = bearer("not.a.jwt");
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("herald_token={good}")).expect("ascii"),
        );
        assert_eq!(
            auth.authenticate_with_refresh(&headers, Some(&good)).await,
            Err(AuthError::Malformed)
        );

        // A non-bearer scheme is not ours: the cookie is used.
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Zm9vOmJhcg=="),
        );
        assert!(
            auth.authenticate_with_refresh(&headers, None)
                .await
                .expect("cookie")
                .is_some()
        );

        let empty = {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
            h
        };
        assert_eq!(
            auth.authenticate_with_refresh(&empty, None).await,
            Err(AuthError::Malformed)
        );
    }
}
