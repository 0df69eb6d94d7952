//! Keys, configs and token builders shared by the unit tests of `auth`.

use std::path::PathBuf;

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::{AuthConfig, AuthError, Authenticator, Secret};

/// The HMAC secret of [`hs_config`], long enough for production rules.
pub(crate) const SECRET: &str = "a-test-secret-that-is-long-enough-for-prod";
pub(crate) const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa-private.pem");
pub(crate) const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa-public.pem");
pub(crate) const EC_PRIVATE: &[u8] =
    include_bytes!("../../tests/fixtures/keys/ec-p256-private.pem");
pub(crate) const ED_PRIVATE: &[u8] =
    include_bytes!("../../tests/fixtures/keys/ed25519-private.pem");

/// The path of a fixture key.
pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

pub(crate) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Auth enabled, HS256 with [`SECRET`].
pub(crate) fn hs_config() -> AuthConfig {
    AuthConfig {
        enabled: true,
        hs_secret: Some(Secret::new(SECRET)),
        ..AuthConfig::default()
    }
}

pub(crate) fn authenticator(cfg: &AuthConfig) -> Authenticator {
    Authenticator::from_config(cfg).expect("valid test config")
}

pub(crate) fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("test token signs")
}

/// HS256 with [`SECRET`].
pub(crate) fn hs(claims: serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims,
    )
}

/// Claims valid for ten minutes, with rights on `news/`.
pub(crate) fn valid_claims() -> serde_json::Value {
    json!({"sub": "alice", "exp": now() + 600,
           "herald": {"subscribe": ["news/*"], "publish": ["news/a"]}})
}

/// Unpadded base64url, to hand-build tokens.
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Headers carrying `token` as a bearer token.
pub(crate) fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii token"),
    );
    h
}

/// True for the errors the edge answers with 401: a token that is missing or
/// refused, as opposed to a missing right (403) or a config error.
pub(crate) fn is_token_refusal(e: &AuthError) -> bool {
    !matches!(e, AuthError::Forbidden { .. } | AuthError::Config(_))
}
