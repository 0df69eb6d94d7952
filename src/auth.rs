//! JWT verification and channel-pattern rights.
//!
//! # Tokens
//!
//! [`Authenticator`] verifies JSON Web Tokens with the algorithms pinned in
//! [`AuthConfig::algorithms`]. The token header's `alg` is only ever checked
//! *against* that list, never trusted on its own:
//!
//! - `alg: none` (in any letter case) is refused with reason `alg_none`;
//! - any other algorithm that is not pinned is refused with `alg_not_allowed`
//!   before any signature is computed;
//! - each algorithm family has its own keys: the HMAC secret verifies only
//!   `HS*` tokens, PEM public keys only `RS*`/`PS*`, `ES*` or `EdDSA` tokens.
//!   The classic HS/RS confusion (an `HS256` token whose secret is the RSA
//!   public key) therefore fails.
//!
//! With [`AuthConfig::jwks_url`] set, asymmetric keys also come from a JWKS
//! (see [`crate::jwks`] for fetching and refreshing). An asymmetric token
//! whose header names a `kid` found in the set is verified with that key
//! only. A `kid` not in the set is tried against the static PEM keys; if
//! none verifies it, the answer is `401 unknown_key`, and the request may
//! trigger a rate-limited refresh of the set first
//! ([`Authenticator::authenticate_with_refresh`]). A token without a `kid`
//! uses the static PEM keys, as without a JWKS. `HS*` tokens never use JWKS
//! keys, whatever their `kid`.
//!
//! `exp` is required and checked; `nbf` is checked when present; `aud` and
//! `iss` are required and checked when configured. All time checks allow
//! [`AuthConfig::leeway_secs`] of clock skew.
//!
//! A request's token is taken from the first source present, in this order
//! (a bad token in an earlier source is an error, never skipped):
//!
//! 1. the `Authorization: Bearer <token>` header;
//! 2. the cookie named [`AuthConfig::cookie_name`] (default `herald_token`);
//! 3. the `access_token` query parameter, for `EventSource`, which cannot set
//!    headers, unless [`AuthConfig::query_param_enabled`] is false.
//!
//! Error messages never contain the token.
//!
//! # Rights
//!
//! Rights travel in the `herald` claim:
//!
//! ```json
//! {"sub": "alice", "exp": 1900000000,
//!  "herald": {"subscribe": ["news/*", "user/alice/**"], "publish": ["news/*"]}}
//! ```
//!
//! Subscribing needs a subscribe right for **every** requested channel, except
//! channels matching [`AuthConfig::anonymous_subscribe`], which anyone may
//! read. Publishing needs a publish right (or an
//! [`AuthConfig::anonymous_publish`] match, for development).
//!
//! # Channel patterns
//!
//! Patterns and channel names are split into segments at `/`. A pattern
//! matches a channel when its segments match the channel's segments:
//!
//! - a segment that is exactly `**` matches zero or more whole segments;
//! - in any other segment, `*` matches any run of zero or more characters
//!   within that one segment (it never crosses a `/`), and every other
//!   character matches only itself (case-sensitive);
//! - there are no other special characters: no `?`, no classes, no escapes.
//!
//! So `news/*` matches `news/a` but neither `news/a/b` nor `news`;
//! `user/alice/**` matches `user/alice`, `user/alice/x` and `user/alice/x/y`;
//! `*` matches `demo` but not `a/b`; `**` matches every channel; `price-*`
//! matches `price-eur`.
//!
//! # Expiry mid-stream
//!
//! [`Claims::expires_in`] tells the SSE handler how long the stream may stay
//! open; when it runs out the stream ends with a final event telling the
//! client to refresh its token, then a `retry:` hint.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::jwks::JwksCache;
use crate::telemetry::metrics::AUTH_FAILURES;

/// The HMAC secret shipped in `config/development.toml`. It is public, so a
/// config with [`AuthConfig::production`] set refuses to start with it.
pub const DEV_SECRET: &str = "herald-development-secret-do-not-use-in-production";

/// Shortest HMAC secret, in bytes, that a production config accepts.
pub const MIN_SECRET_BYTES: usize = 32;

/// Environment variable holding the HMAC secret; it wins over the config file.
pub const SECRET_ENV: &str = "HERALD_JWT_SECRET";

/// Query parameter that carries a token for `EventSource` clients.
pub const QUERY_PARAM: &str = "access_token";

/// Longest token accepted, in bytes; anything longer is `malformed` before
/// any decoding work is done.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest time [`Claims::expires_in`] reports (ten years).
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Most leeway a config may grant for clock skew.
const MAX_LEEWAY_SECS: u64 = 3600;

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
    fn record(&self) {
        metrics::counter!(AUTH_FAILURES, "reason" => self.reason()).increment(1);
    }
}

/// A secret string whose `Debug` output is redacted.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// JWT settings (`[auth]`).
///
/// The HMAC secret comes from, in order of precedence: the `HERALD_JWT_SECRET`
/// environment variable, the file named by `hs_secret_file`, then the inline
/// `hs_secret` (meant for the development config only).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Check tokens and rights. When false (the development default) every
    /// request is anonymous and every channel is open to everyone.
    pub enabled: bool,
    /// Refuse development-only settings: auth disabled, the development
    /// secret, an HMAC secret under 32 bytes, or anonymous publishing.
    /// `config/production.toml` sets it.
    pub production: bool,
    /// Accepted signing algorithms, e.g. `["HS256"]` or `["RS256", "ES256"]`.
    /// One of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    pub algorithms: Vec<String>,
    /// Inline HMAC secret; prefer `HERALD_JWT_SECRET` or `hs_secret_file`.
    pub hs_secret: Option<Secret>,
    /// File holding the HMAC secret (a trailing newline is ignored).
    pub hs_secret_file: Option<PathBuf>,
    /// PEM public keys (RSA, EC or Ed25519) for the asymmetric algorithms.
    /// Several keys of one family are tried in turn, which allows rotation.
    pub public_key_files: Vec<PathBuf>,
    /// Required `aud` value, checked when set.
    pub audience: Option<String>,
    /// Required `iss` value, checked when set.
    pub issuer: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Name of the cookie that may carry the token.
    pub cookie_name: String,
    /// Accept the token from the `access_token` query parameter.
    pub query_param_enabled: bool,
    /// Channel patterns anyone may subscribe to without a token.
    pub anonymous_subscribe: Vec<String>,
    /// Channel patterns anyone may publish to without a token (development
    /// only; refused when `production` is set).
    pub anonymous_publish: Vec<String>,
    /// An `http` or `https` URL of a JWKS with more public keys for the
    /// asymmetric algorithms (see [`crate::jwks`]). Needs an asymmetric
    /// algorithm in `algorithms`.
    pub jwks_url: Option<String>,
    /// Seconds between periodic JWKS fetches.
    pub jwks_refresh_secs: u64,
    /// Least seconds between two JWKS fetches of any kind, including those
    /// triggered by an unknown `kid`.
    pub jwks_min_refresh_interval_secs: u64,
    /// Seconds one JWKS fetch may take.
    pub jwks_timeout_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            production: false,
            algorithms: vec!["HS256".to_string()],
            hs_secret: None,
            hs_secret_file: None,
            public_key_files: Vec::new(),
            audience: None,
            issuer: None,
            leeway_secs: 30,
            cookie_name: "herald_token".to_string(),
            query_param_enabled: true,
            anonymous_subscribe: Vec::new(),
            anonymous_publish: Vec::new(),
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_min_refresh_interval_secs: 30,
            jwks_timeout_secs: 5,
        }
    }
}

impl AuthConfig {
    /// Reads secrets kept outside the config tree: `HERALD_JWT_SECRET`, then
    /// `hs_secret_file`. The secret is never logged.
    pub fn resolve_secrets(&mut self) -> Result<(), AuthError> {
        let from_env = match std::env::var(SECRET_ENV) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(AuthError::Config(format!(
                    "{SECRET_ENV} is not valid UTF-8"
                )));
            }
        };
        self.resolve_secrets_from(from_env)
    }

    /// [`resolve_secrets`](Self::resolve_secrets) with the env value given,
    /// so tests need not touch the process environment.
    pub fn resolve_secrets_from(&mut self, env_secret: Option<String>) -> Result<(), AuthError> {
        if let Some(value) = env_secret.filter(|v| !v.is_empty()) {
            self.hs_secret = Some(Secret(value));
            return Ok(());
        }
        if let Some(path) = &self.hs_secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                AuthError::Config(format!(
                    "cannot read hs_secret_file {}: {e}",
                    path.display()
                ))
            })?;
            let value = text.trim_end_matches(['\r', '\n']);
            if value.is_empty() {
                return Err(AuthError::Config(format!(
                    "hs_secret_file {} is empty",
                    path.display()
                )));
            }
            self.hs_secret = Some(Secret(value.to_string()));
        }
        Ok(())
    }

    /// True when the HMAC secret in use is the public development secret.
    pub fn uses_dev_secret(&self) -> bool {
        self.hs_secret
            .as_ref()
            .is_some_and(|s| s.expose() == DEV_SECRET.as_bytes())
    }

    /// Checks the settings; call after [`resolve_secrets`](Self::resolve_secrets).
    /// With `enabled`, this loads every key, so a missing or unreadable key
    /// stops the process before it binds.
    pub fn validate(&self) -> Result<(), AuthError> {
        let bad = |msg: String| Err(AuthError::Config(msg));
        let pinned = parse_algorithms(&self.algorithms)?;
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return bad(format!("leeway_secs must be at most {MAX_LEEWAY_SECS}"));
        }
        if self.cookie_name.is_empty()
            || !self
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return bad("cookie_name must be a non-empty cookie token".to_string());
        }
        for (key, patterns) in [
            ("anonymous_subscribe", &self.anonymous_subscribe),
            ("anonymous_publish", &self.anonymous_publish),
        ] {
            if let Some(p) = patterns.iter().find(|p| !is_valid_pattern(p)) {
                return bad(format!("{key}: {p:?} is not a valid channel pattern"));
            }
        }
        crate::jwks::validate(self, &pinned)?;
        if self.production {
            if !self.enabled {
                return bad("production requires enabled = true".to_string());
            }
            if !self.anonymous_publish.is_empty() {
                return bad("production refuses anonymous_publish".to_string());
            }
            if pinned.iter().any(|a| a.family() == AlgorithmFamily::Hmac) {
                if self.uses_dev_secret() {
                    return bad(format!(
                        "production refuses the development secret; set {SECRET_ENV}"
                    ));
                }
                if let Some(secret) = &self.hs_secret
                    && secret.expose().len() < MIN_SECRET_BYTES
                {
                    return bad(format!(
                        "production needs an HMAC secret of at least {MIN_SECRET_BYTES} bytes"
                    ));
                }
            }
        }
        if self.enabled {
            Authenticator::from_config(self)?;
        }
        Ok(())
    }
}

/// Parses and checks the pinned algorithm names.
fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, AuthError> {
    if names.is_empty() {
        return Err(AuthError::Config(
            "algorithms must not be empty".to_string(),
        ));
    }
    let mut pinned = Vec::with_capacity(names.len());
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            return Err(AuthError::Config(
                "algorithm none is never accepted".to_string(),
            ));
        }
        let alg = Algorithm::from_str(name)
            .map_err(|_| AuthError::Config(format!("unknown algorithm {name:?}")))?;
        if !pinned.contains(&alg) {
            pinned.push(alg);
        }
    }
    Ok(pinned)
}

/// The rights a token grants, from its `herald` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    /// Channel patterns the holder may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Channel patterns the holder may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// The verified claims Herald uses. Other claims are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// The holder, used as the rate-limit key.
    #[serde(default)]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<u64>,
    /// Per-channel rights.
    #[serde(default)]
    pub herald: Rights,
}

impl Claims {
    /// True when some subscribe pattern matches `channel`.
    pub fn can_subscribe(&self, channel: &str) -> bool {
        matches_any(&self.herald.subscribe, channel)
    }

    /// True when some publish pattern matches `channel`.
    pub fn can_publish(&self, channel: &str) -> bool {
        matches_any(&self.herald.publish, channel)
    }

    /// Time left before `exp`, measured on the system clock; `Some(ZERO)` once
    /// it has passed, `None` when the token has no `exp`. Capped at
    /// [`MAX_EXPIRES_IN`], so adding it to an `Instant` cannot overflow.
    pub fn expires_in(&self) -> Option<Duration> {
        let left = UNIX_EPOCH
            .checked_add(Duration::from_secs(self.exp?))
            .map_or(MAX_EXPIRES_IN, |exp| {
                exp.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
        Some(left.min(MAX_EXPIRES_IN))
    }
}

/// Accepts a JSON number (integer or float) as a NumericDate.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let number = Option::<serde_json::Number>::deserialize(d)?;
    let Some(number) = number else {
        return Ok(None);
    };
    if let Some(v) = number.as_u64() {
        return Ok(Some(v));
    }
    match number.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f.round() as u64)),
        _ => Err(serde::de::Error::custom("exp is not a NumericDate")),
    }
}

/// The keys and validation rules of one algorithm family.
#[derive(Debug, Clone)]
struct FamilyKeys {
    family: AlgorithmFamily,
    validation: Validation,
    keys: Vec<DecodingKey>,
}

/// Verifies tokens and checks per-channel rights. Built once at start from
/// [`AuthConfig`] and shared (it is cheap to clone).
#[derive(Debug, Clone)]
pub struct Authenticator {
    enabled: bool,
    pinned: Vec<Algorithm>,
    families: Vec<FamilyKeys>,
    jwks: Option<Arc<JwksCache>>,
    cookie_name: String,
    query_param_enabled: bool,
    anonymous_subscribe: Vec<String>,
    anonymous_publish: Vec<String>,
}

impl Authenticator {
    /// Loads the keys and builds the validation rules. When auth is disabled
    /// no key is loaded and every request is anonymous.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let pinned = parse_algorithms(&cfg.algorithms)?;
        let mut families: Vec<FamilyKeys> = Vec::new();
        let mut jwks = None;
        if cfg.enabled {
            jwks = JwksCache::from_config(cfg, &pinned)?;
            for alg in &pinned {
                let family = alg.family();
                if let Some(f) = families.iter_mut().find(|f| f.family == family) {
                    f.validation.algorithms.push(*alg);
                } else {
                    families.push(FamilyKeys {
                        family,
                        validation: validation_for(cfg, *alg),
                        keys: Vec::new(),
                    });
                }
            }
            load_keys(cfg, &mut families)?;
        }
        Ok(Self {
            enabled: cfg.enabled,
            pinned,
            families,
            jwks,
            cookie_name: cfg.cookie_name.clone(),
            query_param_enabled: cfg.query_param_enabled,
            anonymous_subscribe: cfg.anonymous_subscribe.clone(),
            anonymous_publish: cfg.anonymous_publish.clone(),
        })
    }

    /// True when tokens and rights are checked.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The JWKS key cache, when auth is enabled and `jwks_url` is set; the
    /// server fetches it at start and runs its refresher.
    pub fn jwks(&self) -> Option<&Arc<JwksCache>> {
        self.jwks.as_ref()
    }

    /// Finds and verifies the request's token. `query_token` is the value of
    /// the `access_token` query parameter, if the request had one; it is
    /// ignored when the query source is disabled in config.
    ///
    /// `Ok(None)` means anonymous: no token was presented, or auth is
    /// disabled. Failures are counted in `herald_auth_failures_total`.
    ///
    /// A token whose `kid` is not in the JWKS makes this request refresh the
    /// set and verify again, when the refresh rate limit allows one now (the
    /// fetch timeout bounds the wait). Otherwise it fails with `unknown_key`
    /// at once.
    pub async fn authenticate_with_refresh(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Option<Claims>, AuthError> {
        let Some(token) = self.presented_token(headers, query_token)? else {
            return Ok(None);
        };
        let mut verified = self.verify(token);
        if verified == Err(AuthError::UnknownKey)
            && let Some(jwks) = &self.jwks
            && jwks.refresh_for_unknown_kid().await
        {
            verified = self.verify(token);
        }
        verified.map(Some).inspect_err(AuthError::record)
    }

    /// The token to verify, or `None` when anonymous (or auth is disabled).
    fn presented_token<'a>(
        &self,
        headers: &'a HeaderMap,
        query_token: Option<&'a str>,
    ) -> Result<Option<&'a str>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        self.find_token(headers, query_token)
            .inspect_err(AuthError::record)
    }

    /// Picks the token from the first source present.
    fn find_token<'a>(
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

    /// Verifies one token against the pinned algorithms and their keys.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        // Read `alg` ourselves: jsonwebtoken cannot even parse `none`, and the
        // pinned list must be enforced before any key is touched.
        #[derive(Deserialize)]
        struct RawHeader {
            alg: String,
            #[serde(default)]
            kid: Option<String>,
        }
        let header_json = b64url_decode(header_b64).ok_or(AuthError::Malformed)?;
        let raw: RawHeader =
            serde_json::from_slice(&header_json).map_err(|_| AuthError::Malformed)?;
        if raw.alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgNone);
        }
        let alg = Algorithm::from_str(&raw.alg).map_err(|_| AuthError::AlgNotAllowed)?;
        if !self.pinned.contains(&alg) {
            return Err(AuthError::AlgNotAllowed);
        }
        let family = self
            .families
            .iter()
            .find(|f| f.family == alg.family())
            .ok_or(AuthError::AlgNotAllowed)?;
        if let (Some(kid), Some(jwks)) = (&raw.kid, &self.jwks)
            && family.family != AlgorithmFamily::Hmac
        {
            let keys = jwks.snapshot();
            if let Some(found) = keys.get(kid) {
                // The named key, and only it: no falling back to other keys.
                let key = found.for_alg(alg).ok_or(AuthError::BadSignature)?;
                return jsonwebtoken::decode::<Claims>(token, key, &family.validation)
                    .map(|data| data.claims)
                    .map_err(|e| map_jwt_error(e.kind()));
            }
            // Not in the set: a static PEM key may still have signed it.
            return match Self::verify_with(token, family) {
                Err(AuthError::BadSignature) => Err(AuthError::UnknownKey),
                other => other,
            };
        }
        Self::verify_with(token, family)
    }

    /// Tries each of the family's static keys in turn.
    fn verify_with(token: &str, family: &FamilyKeys) -> Result<Claims, AuthError> {
        let mut last = AuthError::BadSignature;
        for key in &family.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &family.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = map_jwt_error(e.kind());
                    // A verified signature with bad claims is final; only a
                    // signature mismatch means "try the next key".
                    if last != AuthError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// Checks that the holder may subscribe to every channel in `channels`:
    /// each must match an anonymous-subscribe pattern or a subscribe right.
    /// Without a token this fails with `missing_token` (401); with one, with
    /// `forbidden` (403). Failures are counted in `herald_auth_failures_total`.
    pub fn may_subscribe(
        &self,
        claims: Option<&Claims>,
        channels: &[String],
    ) -> Result<(), AuthError> {
        self.check_rights(claims, channels, "subscribe")
    }

    /// Checks that the holder may publish to `channel`.
    pub fn may_publish(&self, claims: Option<&Claims>, channel: &str) -> Result<(), AuthError> {
        self.check_rights(claims, std::slice::from_ref(&channel), "publish")
    }

    fn check_rights<S: AsRef<str>>(
        &self,
        claims: Option<&Claims>,
        channels: &[S],
        action: &'static str,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let (anonymous, granted) = match action {
            "subscribe" => (
                &self.anonymous_subscribe,
                claims.map(|c| &c.herald.subscribe),
            ),
            _ => (&self.anonymous_publish, claims.map(|c| &c.herald.publish)),
        };
        for channel in channels {
            let channel = channel.as_ref();
            if matches_any(anonymous, channel) {
                continue;
            }
            let err = match granted {
                None => AuthError::MissingToken,
                Some(patterns) if matches_any(patterns, channel) => continue,
                Some(_) => AuthError::Forbidden {
                    action,
                    channel: channel.to_string(),
                },
            };
            err.record();
            return Err(err);
        }
        Ok(())
    }
}

/// Builds the validation rules shared by one family's algorithms.
fn validation_for(cfg: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    match &cfg.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.validate_aud = true;
            required.push("aud");
        }
        // Without a configured audience, `aud` is not ours to judge.
        None => v.validate_aud = false,
    }
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

/// Fills each family with its keys: the HMAC secret, or the PEM files.
fn load_keys(cfg: &AuthConfig, families: &mut [FamilyKeys]) -> Result<(), AuthError> {
    for path in &cfg.public_key_files {
        let pem = std::fs::read(path).map_err(|e| {
            AuthError::Config(format!("cannot read public key {}: {e}", path.display()))
        })?;
        if String::from_utf8_lossy(&pem).contains("PRIVATE KEY") {
            return Err(AuthError::Config(format!(
                "{} is a private key; give Herald the public key only",
                path.display()
            )));
        }
        let slot = families.iter_mut().find_map(|f| {
            let key = match f.family {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem).ok(),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem).ok(),
                AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem).ok(),
                AlgorithmFamily::Hmac => None,
            }?;
            Some((f, key))
        });
        let Some((family, key)) = slot else {
            return Err(AuthError::Config(format!(
                "{} is not a PEM public key for any pinned algorithm",
                path.display()
            )));
        };
        family.keys.push(key);
    }
    for family in families.iter_mut() {
        if family.family == AlgorithmFamily::Hmac {
            match &cfg.hs_secret {
                Some(secret) if !secret.expose().is_empty() => {
                    family.keys.push(DecodingKey::from_secret(secret.expose()));
                }
                _ => {
                    return Err(AuthError::Config(format!(
                        "an HS algorithm is pinned but no secret is set: set {SECRET_ENV} \
                         or auth.hs_secret_file"
                    )));
                }
            }
        } else if family.keys.is_empty() && cfg.jwks_url.is_none() {
            return Err(AuthError::Config(format!(
                "{:?} is pinned but no matching key is in auth.public_key_files (or set auth.jwks_url)",
                family.validation.algorithms
            )));
        }
    }
    Ok(())
}

/// Maps a jsonwebtoken failure onto a stable reason.
fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        ErrorKind::InvalidIssuer => AuthError::BadIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::BadAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::BadIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::AlgNotAllowed,
        // A key that cannot verify this token's shape (e.g. a bad EC point)
        // is a signature failure from the client's point of view.
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthError::BadSignature
        }
        _ => AuthError::Malformed,
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
/// to [`Authenticator::authenticate_with_refresh`].
pub fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == QUERY_PARAM)
        .map(|(_, v)| v.into_owned())
}

/// Decodes unpadded base64url (RFC 4648 §5), as used by JWS: padding, the
/// standard alphabet and non-canonical trailing bits are all refused.
fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

/// True when some pattern in `patterns` matches `channel`.
fn matches_any(patterns: &[String], channel: &str) -> bool {
    patterns.iter().any(|p| glob_matches(p, channel))
}

/// True when `pattern` is usable in config: non-empty, and made only of the
/// channel alphabet (letters, digits, `_ - . : /`) plus `*`.
pub fn is_valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/*".contains(&b))
}

/// Matches `channel` against a glob `pattern` with the rules in the module
/// docs: `**` as a whole segment spans zero or more segments, `*` spans
/// characters within one segment.
pub fn glob_matches(pattern: &str, channel: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let chan: Vec<&str> = channel.split('/').collect();
    // Greedy wildcard matching over segments, with `**` as the star and every
    // other pattern segment consuming exactly one channel segment; on a
    // mismatch, let the last `**` absorb one more segment.
    let (mut p, mut c) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while c < chan.len() {
        if p < pat.len() && pat[p] == "**" {
            backtrack = Some((p, c));
            p += 1;
        } else if p < pat.len() && segment_matches(pat[p], chan[c]) {
            p += 1;
            c += 1;
        } else if let Some((star_p, star_c)) = backtrack {
            p = star_p + 1;
            c = star_c + 1;
            backtrack = Some((star_p, star_c + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|s| *s == "**")
}

/// Matches one segment, where `*` spans any run of characters.
fn segment_matches(pattern: &str, segment: &str) -> bool {
    let (pat, seg) = (pattern.as_bytes(), segment.as_bytes());
    let (mut p, mut s) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while s < seg.len() {
        if p < pat.len() && pat[p] == b'*' {
            backtrack = Some((p, s));
            p += 1;
        } else if p < pat.len() && pat[p] == seg[s] {
            p += 1;
            s += 1;
        } else if let Some((star_p, star_s)) = backtrack {
            p = star_p + 1;
            s = star_s + 1;
            backtrack = Some((star_p, star_s + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|b| *b == b'*')
}

/// What a minted token grants.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// The holder (`sub`).
    pub sub: String,
    /// Subscribe patterns.
    pub subscribe: Vec<String>,
    /// Publish patterns.
    pub publish: Vec<String>,
    /// Lifetime from now.
    pub ttl: Duration,
    /// `aud`; the configured audience when `None`.
    pub audience: Option<String>,
    /// `iss`; the configured issuer when `None`.
    pub issuer: Option<String>,
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    herald: Rights,
}

/// Mints a token as described by `request`, with the configured HMAC secret
/// and the first pinned HS algorithm; `aud` and `iss` default to the
/// configured ones.
pub fn mint(cfg: &AuthConfig, request: &TokenRequest) -> Result<String, AuthError> {
    let alg = parse_algorithms(&cfg.algorithms)?
        .into_iter()
        .find(|a| a.family() == AlgorithmFamily::Hmac)
        .ok_or_else(|| {
            AuthError::Config("minting needs an HS algorithm in auth.algorithms".to_string())
        })?;
    let secret = cfg
        .hs_secret
        .as_ref()
        .filter(|s| !s.expose().is_empty())
        .ok_or_else(|| {
            AuthError::Config(format!(
                "minting needs the HMAC secret: set {SECRET_ENV} or auth.hs_secret_file"
            ))
        })?;
    if let Some(bad) = request
        .subscribe
        .iter()
        .chain(&request.publish)
        .find(|p| !is_valid_pattern(p))
    {
        return Err(AuthError::Config(format!(
            "{bad:?} is not a valid channel pattern"
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AuthError::Config("the system clock is before 1970".to_string()))?
        .as_secs();
    let claims = MintedClaims {
        sub: &request.sub,
        iat: now,
        exp: now.saturating_add(request.ttl.as_secs()),
        aud: request.audience.as_deref().or(cfg.audience.as_deref()),
        iss: request.issuer.as_deref().or(cfg.issuer.as_deref()),
        herald: Rights {
            subscribe: request.subscribe.clone(),
            publish: request.publish.clone(),
        },
    };
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.expose()),
    )
    .map_err(|e| AuthError::Config(format!("cannot sign the token: {e}")))
}

/// Parses a lifetime such as `90`, `30s`, `15m`, `1h` or `7d` (a bare number
/// is seconds). Zero is refused.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 1h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("the ttl must be more than zero".to_string()),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("{text:?} is too long")),
    }
}

/// Command-line options of `herald token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The holder, the token's `sub`.
    #[arg(long)]
    pub sub: String,
    /// Channel pattern the holder may subscribe to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub subscribe: Vec<String>,
    /// Channel pattern the holder may publish to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub publish: Vec<String>,
    /// Lifetime: 30s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// `aud` claim; defaults to auth.audience.
    #[arg(long)]
    pub aud: Option<String>,
    /// `iss` claim; defaults to auth.issuer.
    #[arg(long)]
    pub iss: Option<String>,
}

/// Runs `herald token`: mints a token with the configured HMAC secret and
/// prints it on stdout.
pub fn run_token_command(cfg: &crate::config::Config, args: TokenArgs) -> anyhow::Result<()> {
    let token = mint(
        &cfg.auth,
        &TokenRequest {
            sub: args.sub,
            subscribe: args.subscribe,
            publish: args.publish,
            ttl: args.ttl,
            audience: args.aud,
            issuer: args.iss,
        },
    )?;
    if !cfg.auth.enabled {
        eprintln!("note: auth.enabled is false, so this server does not check tokens");
    }
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-prod";
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/keys/rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/keys/rsa-public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/keys/ec-p256-private.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/keys/ed25519-private.pem");

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(name)
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs_config() -> AuthConfig {
        AuthConfig {
            enabled: true,
            hs_secret: Some(Secret::new(SECRET)),
            ..AuthConfig::default()
        }
    }

    fn authenticator(cfg: &AuthConfig) -> Authenticator {
        Authenticator::from_config(cfg).expect("valid test config")
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).expect("test token signs")
    }

    fn hs(claims: serde_json::Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &claims,
        )
    }

    fn valid_claims() -> serde_json::Value {
        json!({"sub": "alice", "exp": now() + 600,
               "herald": {"subscribe": ["news/*"], "publish": ["news/a"]}})
    }

    fn b64url_encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii token"),
        );
        h
    }

    #[test]
    fn glob_rules() {
        let cases = [
            ("news/*", "news/a", true),
            ("news/*", "news/a/b", false),
            ("news/*", "news", false),
            ("user/alice/**", "user/alice", true),
            ("user/alice/**", "user/alice/x", true),
            ("user/alice/**", "user/alice/x/y", true),
            ("user/alice/**", "user/alicex", false),
            ("user/alice/**", "user/bob/x", false),
            ("*", "demo", true),
            ("*", "a/b", false),
            ("**", "a/b/c", true),
            ("**", "demo", true),
            ("demo", "demo", true),
            ("demo", "Demo", false),
            ("demo", "demo2", false),
            ("price-*", "price-eur", true),
            ("price-*", "prices", false),
            ("*-eur", "price-eur", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**/b", "b", true),
            ("**/b", "a/x/b", true),
            ("**/b", "a/x/bc", false),
            ("a/**/z", "a/z", true),
            ("a/**/z", "a/b/c/z", true),
            ("a/**/z", "a/b/c", false),
            ("a/**/*/z", "a/z", false),
            ("a/**/*/z", "a/q/z", true),
            ("a/**/**/z", "a/z", true),
        ];
        for (pattern, channel, expected) in cases {
            assert_eq!(
                glob_matches(pattern, channel),
                expected,
                "{pattern:?} vs {channel:?}"
            );
        }
    }

    #[test]
    fn glob_has_no_pathological_backtracking() {
        let pattern = "**/a/**/a/**/a/**/a/**/a/**/b";
        let channel = vec!["a"; 200].join("/");
        assert!(!glob_matches(pattern, &channel));
        assert!(!segment_matches("*a*a*a*a*a*b", &"a".repeat(2000)));
    }

    #[test]
    fn pattern_validity() {
        assert!(is_valid_pattern("news/*"));
        assert!(is_valid_pattern("user/alice/**"));
        assert!(!is_valid_pattern(""));
        assert!(!is_valid_pattern("news/?"));
        assert!(!is_valid_pattern("a b"));
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

    #[tokio::test]
    async fn disabled_auth_is_anonymous_and_open() {
        let auth = authenticator(&AuthConfig::default());
        assert!(!auth.enabled());
        assert_eq!(
            auth.authenticate_with_refresh(&bearer("garbage"), None)
                .await,
            Ok(None)
        );
        assert_eq!(auth.may_subscribe(None, &["any/thing".to_string()]), Ok(()));
        assert_eq!(auth.may_publish(None, "any"), Ok(()));
    }

    #[tokio::test]
    async fn alg_none_is_rejected() {
        let auth = authenticator(&hs_config());
        let payload = b64url_encode(valid_claims().to_string().as_bytes());
        for alg in ["none", "None", "NONE"] {
            let header = b64url_encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            for sig in ["", "AAAA"] {
                let token = format!("{header}.{payload}.{sig}");
                assert_eq!(
                    auth.verify(&token),
                    Err(AuthError::AlgNone),
                    "{alg} {sig:?}"
                );
            }
        }
        let err = auth
            .authenticate_with_refresh(
                &bearer(&format!(
                    "{}.{payload}.",
                    b64url_encode(br#"{"alg":"none"}"#)
                )),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.status()),
            ("alg_none", StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn unpinned_algorithm_is_rejected_before_verifying() {
        let auth = authenticator(&hs_config());
        let hs512 = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &valid_claims(),
        );
        assert_eq!(auth.verify(&hs512), Err(AuthError::AlgNotAllowed));
        let header = b64url_encode(br#"{"alg":"XS999"}"#);
        let token = format!("{header}.{}.sig", b64url_encode(b"{}"));
        assert_eq!(auth.verify(&token), Err(AuthError::AlgNotAllowed));
    }

    #[test]
    fn hs_rs_confusion_fails() {
        // RS256 only: an HS256 token "signed" with the public key is refused.
        let rs_only = authenticator(&AuthConfig {
            enabled: true,
            algorithms: vec!["RS256".into()],
            public_key_files: vec![fixture("rsa-public.pem")],
            ..AuthConfig::default()
        });
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC),
            &valid_claims(),
        );
        assert_eq!(rs_only.verify(&forged), Err(AuthError::AlgNotAllowed));

        // Both families pinned: the HS key is the secret, never the PEM.
        let both = authenticator(&AuthConfig {
            algorithms: vec!["HS256".into(), "RS256".into()],
            public_key_files: vec![fixture("rsa-public.pem")],
            ..hs_config()
        });
        assert_eq!(both.verify(&forged), Err(AuthError::BadSignature));

        // And a genuine RS256 token verifies with the public key.
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("fixture key");
        let genuine = sign(Algorithm::RS256, &rsa, &valid_claims());
        assert!(both.verify(&genuine).is_ok());
        assert!(rs_only.verify(&genuine).is_ok());

        // An RS256 header over an HMAC signature fails too.
        let hs_body: Vec<&str> = forged.split('.').collect();
        let header = b64url_encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let relabelled = format!("{header}.{}.{}", hs_body[1], hs_body[2]);
        assert_eq!(both.verify(&relabelled), Err(AuthError::BadSignature));
    }

    #[test]
    fn rotation_tries_every_key_of_the_family() {
        let auth = authenticator(&AuthConfig {
            enabled: true,
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            public_key_files: vec![
                fixture("rsa-other-public.pem"),
                fixture("rsa-public.pem"),
                fixture("ec-p256-public.pem"),
                fixture("ed25519-public.pem"),
            ],
            ..AuthConfig::default()
        });
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("fixture key");
        assert!(
            auth.verify(&sign(Algorithm::RS256, &rsa, &valid_claims()))
                .is_ok()
        );
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE).expect("fixture key");
        assert!(
            auth.verify(&sign(Algorithm::ES256, &ec, &valid_claims()))
                .is_ok()
        );
        let ed = EncodingKey::from_ed_pem(ED_PRIVATE).expect("fixture key");
        assert!(
            auth.verify(&sign(Algorithm::EdDSA, &ed, &valid_claims()))
                .is_ok()
        );

        let only_other = authenticator(&AuthConfig {
            enabled: true,
            algorithms: vec!["RS256".into()],
            public_key_files: vec![fixture("rsa-other-public.pem")],
            ..AuthConfig::default()
        });
        assert_eq!(
            only_other.verify(&sign(Algorithm::RS256, &rsa, &valid_claims())),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_fails() {
        let auth = authenticator(&hs_config());
        let token = hs(valid_claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = valid_claims();
        claims["herald"]["publish"] = json!(["**"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64url_encode(claims.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(auth.verify(&forged), Err(AuthError::BadSignature));

        let wrong_key = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another secret"),
            &valid_claims(),
        );
        assert_eq!(auth.verify(&wrong_key), Err(AuthError::BadSignature));
    }

    #[test]
    fn time_claims_are_enforced() {
        let auth = authenticator(&hs_config());
        let expired = hs(json!({"sub": "a", "exp": now() - 3600}));
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        // Within the leeway it still passes.
        let just_expired = hs(json!({"sub": "a", "exp": now() - 5}));
        assert!(auth.verify(&just_expired).is_ok());

        let future = hs(json!({"sub": "a", "exp": now() + 7200, "nbf": now() + 3600}));
        assert_eq!(auth.verify(&future), Err(AuthError::NotYetValid));

        let no_exp = hs(json!({"sub": "a"}));
        assert_eq!(auth.verify(&no_exp), Err(AuthError::Malformed));

        let float_exp = hs(json!({"sub": "a", "exp": (now() + 60) as f64 + 0.5}));
        assert!(auth.verify(&float_exp).is_ok());
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let auth = authenticator(&AuthConfig {
            audience: Some("herald".into()),
            issuer: Some("https://idp.example".into()),
            ..hs_config()
        });
        let base = |extra: serde_json::Value| {
            let mut c = valid_claims();
            for (k, v) in extra.as_object().expect("object").iter() {
                c[k] = v.clone();
            }
            hs(c)
        };
        let good = base(json!({"aud": "herald", "iss": "https://idp.example"}));
        assert!(auth.verify(&good).is_ok());
        let good_list = base(json!({"aud": ["x", "herald"], "iss": "https://idp.example"}));
        assert!(auth.verify(&good_list).is_ok());
        assert_eq!(
            auth.verify(&base(json!({"aud": "other", "iss": "https://idp.example"}))),
            Err(AuthError::BadAudience)
        );
        assert_eq!(
            auth.verify(&base(json!({"iss": "https://idp.example"}))),
            Err(AuthError::BadAudience)
        );
        assert_eq!(
            auth.verify(&base(
                json!({"aud": "herald", "iss": "https://evil.example"})
            )),
            Err(AuthError::BadIssuer)
        );
        assert_eq!(
            auth.verify(&base(json!({"aud": "herald"}))),
            Err(AuthError::BadIssuer)
        );

        // Unconfigured: aud and iss are ignored.
        let plain = authenticator(&hs_config());
        assert!(plain.verify(&base(json!({"aud": "x", "iss": "y"}))).is_ok());
    }

    #[test]
    fn garbage_is_malformed_and_never_echoed() {
        let auth = authenticator(&hs_config());
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            "e30.e30.sig",
            &"x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            let err = auth.verify(token).unwrap_err();
            assert!(matches!(err, AuthError::Malformed), "{token:.20}: {err:?}");
        }
        let secret_looking = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ";
        let err = auth.verify(secret_looking).unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        assert!(!format!("{err:?}").contains("c2VjcmV0"), "{err:?}");
    }

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

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        const OTHER_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/keys/rsa-other-private.pem");
        let cfg = AuthConfig {
            algorithms: vec!["HS256".into(), "RS256".into(), "ES256".into()],
            public_key_files: vec![fixture("rsa-other-public.pem")],
            jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
            ..hs_config()
        };
        assert!(cfg.validate().is_ok());
        let auth = authenticator(&cfg);
        auth.jwks()
            .expect("configured")
            .load_for_test(include_str!("../tests/fixtures/jwks/initial.json"));
        let with_kid = |alg: Algorithm, kid: &str, key: &EncodingKey| {
            let mut header = Header::new(alg);
            header.kid = Some(kid.to_string());
            jsonwebtoken::encode(&header, &valid_claims(), key).expect("signs")
        };
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa");
        let other = EncodingKey::from_rsa_pem(OTHER_PRIVATE).expect("rsa");
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE).expect("ec");

        // A kid in the set verifies with that key, and only with it.
        assert!(
            auth.verify(&with_kid(Algorithm::RS256, "rsa-1", &rsa))
                .is_ok()
        );
        assert!(
            auth.verify(&with_kid(Algorithm::ES256, "ec-1", &ec))
                .is_ok()
        );
        assert_eq!(
            auth.verify(&with_kid(Algorithm::RS256, "rsa-1", &other)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            auth.verify(&with_kid(Algorithm::ES256, "rsa-1", &ec)),
            Err(AuthError::BadSignature)
        );
        // An unknown kid: the static PEM key may still verify it...
        assert!(
            auth.verify(&with_kid(Algorithm::RS256, "nope", &other))
                .is_ok()
        );
        // ...otherwise it is unknown_key.
        assert_eq!(
            auth.verify(&with_kid(Algorithm::RS256, "nope", &rsa)),
            Err(AuthError::UnknownKey)
        );
        // No kid: the static keys only, as without a JWKS.
        let rs = |key: &EncodingKey| sign(Algorithm::RS256, key, &valid_claims());
        assert!(auth.verify(&rs(&other)).is_ok());
        assert_eq!(auth.verify(&rs(&rsa)), Err(AuthError::BadSignature));
        // HS never uses JWKS keys: the skipped `oct` key's secret is useless,
        // and a kid on an HS token changes nothing.
        let trap = EncodingKey::from_secret(b"herald-jwks-hmac-trap");
        assert_eq!(
            auth.verify(&with_kid(Algorithm::HS256, "hs-trap", &trap)),
            Err(AuthError::BadSignature)
        );
        let secret = EncodingKey::from_secret(SECRET.as_bytes());
        assert!(
            auth.verify(&with_kid(Algorithm::HS256, "rsa-1", &secret))
                .is_ok()
        );
        // Claims are still checked with a JWKS key.
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let expired =
            jsonwebtoken::encode(&header, &json!({"sub": "a", "exp": now() - 3600}), &rsa)
                .expect("signs");
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn jwks_only_config_needs_no_pem_and_an_asymmetric_alg() {
        let jwks_only = AuthConfig {
            enabled: true,
            algorithms: vec!["RS256".into()],
            jwks_url: Some("https://idp.example/jwks.json".into()),
            ..AuthConfig::default()
        };
        assert!(jwks_only.validate().is_ok());
        let hs_only = AuthConfig {
            jwks_url: Some("https://idp.example/jwks.json".into()),
            ..hs_config()
        };
        assert!(hs_only.validate().is_err());
        // Before any fetch, every kid is unknown.
        let auth = authenticator(&jwks_only);
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let token = jsonwebtoken::encode(&header, &valid_claims(), &rsa).expect("signs");
        assert_eq!(auth.verify(&token), Err(AuthError::UnknownKey));
    }

    #[test]
    fn subscribe_needs_a_right_for_every_channel() {
        let auth = authenticator(&AuthConfig {
            anonymous_subscribe: vec!["public/**".into()],
            ..hs_config()
        });
        let claims = auth.verify(&hs(valid_claims())).expect("valid");
        let chans = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        assert_eq!(
            auth.may_subscribe(Some(&claims), &chans(&["news/a", "news/b"])),
            Ok(())
        );
        assert_eq!(
            auth.may_subscribe(Some(&claims), &chans(&["news/a", "public/x/y"])),
            Ok(())
        );
        let err = auth
            .may_subscribe(Some(&claims), &chans(&["news/a", "sport/a"]))
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            err,
            AuthError::Forbidden {
                action: "subscribe",
                channel: "sport/a".into()
            }
        );

        assert_eq!(auth.may_subscribe(None, &chans(&["public/x"])), Ok(()));
        assert_eq!(
            auth.may_subscribe(None, &chans(&["public/x", "news/a"])),
            Err(AuthError::MissingToken)
        );
    }

    #[test]
    fn publish_needs_a_right() {
        let auth = authenticator(&AuthConfig {
            anonymous_publish: vec!["sandbox/*".into()],
            ..hs_config()
        });
        let claims = auth.verify(&hs(valid_claims())).expect("valid");
        assert_eq!(auth.may_publish(Some(&claims), "news/a"), Ok(()));
        assert_eq!(auth.may_publish(None, "sandbox/x"), Ok(()));
        assert_eq!(
            auth.may_publish(Some(&claims), "news/b")
                .map_err(|e| e.code()),
            Err("forbidden")
        );
        assert_eq!(
            auth.may_publish(None, "news/a"),
            Err(AuthError::MissingToken)
        );
    }

    #[test]
    fn expires_in_counts_down() {
        let claims = Claims {
            exp: Some(now() + 100),
            ..Claims::default()
        };
        let left = claims.expires_in().expect("has exp");
        assert!(left > Duration::from_secs(90) && left <= Duration::from_secs(100));
        let past = Claims {
            exp: Some(now() - 1),
            ..Claims::default()
        };
        assert_eq!(past.expires_in(), Some(Duration::ZERO));
        assert_eq!(Claims::default().expires_in(), None);
        let far = Claims {
            exp: Some(u64::MAX),
            ..Claims::default()
        };
        assert_eq!(far.expires_in(), Some(MAX_EXPIRES_IN));
    }

    /// A request for `sub` with the given rights and the configured aud/iss.
    fn request(sub: &str, subscribe: &[&str], publish: &[&str], ttl: Duration) -> TokenRequest {
        let patterns = |p: &[&str]| p.iter().map(|s| s.to_string()).collect();
        TokenRequest {
            sub: sub.to_string(),
            subscribe: patterns(subscribe),
            publish: patterns(publish),
            ttl,
            audience: None,
            issuer: None,
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let cfg = AuthConfig {
            audience: Some("herald".into()),
            ..hs_config()
        };
        let hour = Duration::from_secs(3600);
        let token = mint(&cfg, &request("alice", &["news/*"], &["news/*"], hour)).expect("mints");
        let claims = authenticator(&cfg).verify(&token).expect("verifies");
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert!(claims.can_publish("news/x"));
        let left = claims.expires_in().expect("exp");
        assert!(left > Duration::from_secs(3500));

        let second = Duration::from_secs(1);
        let no_secret = AuthConfig::default();
        assert!(matches!(
            mint(&no_secret, &request("a", &[], &[], second)),
            Err(AuthError::Config(_))
        ));
        let rs_only = AuthConfig {
            algorithms: vec!["RS256".into()],
            ..hs_config()
        };
        assert!(mint(&rs_only, &request("a", &[], &[], second)).is_err());
        assert!(mint(&cfg, &request("a", &["bad pattern"], &[], second)).is_err());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        for bad in ["", "0s", "h", "1w", "1.5h", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_sources_and_redaction() {
        let mut cfg = AuthConfig {
            hs_secret: Some(Secret::new("inline")),
            ..AuthConfig::default()
        };
        cfg.resolve_secrets_from(Some("from-env".into()))
            .expect("env");
        assert_eq!(
            cfg.hs_secret.as_ref().map(Secret::expose),
            Some(&b"from-env"[..])
        );
        assert!(!format!("{cfg:?}").contains("from-env"));

        let dir = std::env::temp_dir().join(format!("herald-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("secret");
        std::fs::write(&file, "from-file\n").expect("write");
        let mut cfg = AuthConfig {
            hs_secret_file: Some(file.clone()),
            ..AuthConfig::default()
        };
        cfg.resolve_secrets_from(None).expect("file");
        assert_eq!(
            cfg.hs_secret.as_ref().map(Secret::expose),
            Some(&b"from-file"[..])
        );
        std::fs::write(&file, "\n").expect("write");
        assert!(cfg.resolve_secrets_from(None).is_err());
        let mut missing = AuthConfig {
            hs_secret_file: Some(dir.join("nope")),
            ..AuthConfig::default()
        };
        assert!(missing.resolve_secrets_from(None).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn validate_refuses_what_cannot_work() {
        assert!(AuthConfig::default().validate().is_ok());
        assert!(hs_config().validate().is_ok());

        let no_key = AuthConfig {
            enabled: true,
            ..AuthConfig::default()
        };
        assert!(
            no_key
                .validate()
                .unwrap_err()
                .to_string()
                .contains(SECRET_ENV)
        );

        let bad = [
            AuthConfig {
                algorithms: vec![],
                ..hs_config()
            },
            AuthConfig {
                algorithms: vec!["none".into()],
                ..hs_config()
            },
            AuthConfig {
                algorithms: vec!["HS1".into()],
                ..hs_config()
            },
            AuthConfig {
                algorithms: vec!["RS256".into()],
                ..hs_config()
            },
            AuthConfig {
                cookie_name: "a b".into(),
                ..hs_config()
            },
            AuthConfig {
                leeway_secs: 100_000,
                ..hs_config()
            },
            AuthConfig {
                anonymous_subscribe: vec!["".into()],
                ..hs_config()
            },
            AuthConfig {
                algorithms: vec!["RS256".into()],
                public_key_files: vec![fixture("rsa-private.pem")],
                ..hs_config()
            },
            AuthConfig {
                algorithms: vec!["ES256".into()],
                public_key_files: vec![fixture("rsa-public.pem")],
                ..hs_config()
            },
            AuthConfig {
                algorithms: vec!["RS256".into()],
                public_key_files: vec![fixture("missing.pem")],
                ..hs_config()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn production_refuses_development_settings() {
        let prod = AuthConfig {
            production: true,
            ..hs_config()
        };
        assert!(prod.validate().is_ok());
        let refused = [
            AuthConfig {
                hs_secret: Some(Secret::new(DEV_SECRET)),
                ..prod.clone()
            },
            AuthConfig {
                hs_secret: Some(Secret::new("short")),
                ..prod.clone()
            },
            AuthConfig {
                hs_secret: None,
                ..prod.clone()
            },
            AuthConfig {
                enabled: false,
                ..prod.clone()
            },
            AuthConfig {
                anonymous_publish: vec!["x".into()],
                ..prod.clone()
            },
        ];
        for cfg in refused {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
        let dev = AuthConfig {
            hs_secret: Some(Secret::new(DEV_SECRET)),
            ..hs_config()
        };
        assert!(dev.uses_dev_secret());
        assert!(dev.validate().is_ok());
        // Asymmetric-only production needs no HMAC secret at all.
        let rs_prod = AuthConfig {
            enabled: true,
            production: true,
            algorithms: vec!["RS256".into()],
            public_key_files: vec![fixture("rsa-public.pem")],
            ..AuthConfig::default()
        };
        assert!(rs_prod.validate().is_ok());
    }

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

    proptest::proptest! {
        #[test]
        fn random_tokens_never_panic_and_are_401(
            raw in ".{0,300}",
            parts in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5),
        ) {
            let auth = authenticator(&hs_config());
            for token in [raw.clone(), parts.join(".")] {
                let err = auth.verify(&token).expect_err("random input never verifies");
                proptest::prop_assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
            }
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {raw}")) {
                headers.insert(header::AUTHORIZATION, v);
            }
            // No JWKS is configured, so the future never waits on the network.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime builds without I/O drivers");
            let found = runtime.block_on(auth.authenticate_with_refresh(&headers, Some(&raw)));
            if let Err(e) = found {
                proptest::prop_assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            }
        }
    }

    #[test]
    fn base64url_decoder() {
        for input in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            &[0xff, 0xfe, 0x00],
        ] {
            assert_eq!(b64url_decode(&b64url_encode(input)).as_deref(), Some(input));
        }
        assert_eq!(b64url_decode("a"), None);
        assert_eq!(b64url_decode("ab=="), None);
        assert_eq!(b64url_decode("a+b/"), None);
    }
}
