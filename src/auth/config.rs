//! [`AuthConfig`], the `[auth]` settings: reading the HMAC secret from the
//! environment or a file, checking every setting (and loading every key)
//! before the server binds, and parsing the pinned algorithm names.

use std::path::PathBuf;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use reqwest::Url;
use serde::Deserialize;

use super::error::AuthError;
use super::keys::{self, KeySources};
use super::pattern::is_valid_pattern;
use super::secret::{DEV_SECRET, MIN_SECRET_BYTES, SECRET_ENV, Secret};

/// Most leeway a config may grant for clock skew.
const MAX_LEEWAY_SECS: u64 = 3600;

/// Longest periodic refresh interval a config may set (one day).
const MAX_REFRESH_SECS: u64 = 86_400;

/// Longest fetch timeout a config may set.
const MAX_TIMEOUT_SECS: u64 = 60;

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
    /// asymmetric algorithms (see [`JwksCache`](super::JwksCache)). Needs an asymmetric
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
            self.hs_secret = Some(Secret::new(value));
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
            self.hs_secret = Some(Secret::new(value));
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
        self.check_jwks(&pinned)?;
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
            keys::load(&pinned, self.key_sources())?;
        }
        Ok(())
    }

    /// Checks the `jwks_*` settings; `pinned` are the parsed algorithms.
    pub(crate) fn check_jwks(&self, pinned: &[Algorithm]) -> Result<(), AuthError> {
        let bad = |msg: String| Err(AuthError::Config(msg));
        if self.jwks_refresh_secs == 0 || self.jwks_refresh_secs > MAX_REFRESH_SECS {
            return bad(format!(
                "jwks_refresh_secs must be between 1 and {MAX_REFRESH_SECS}"
            ));
        }
        if self.jwks_min_refresh_interval_secs == 0
            || self.jwks_min_refresh_interval_secs > self.jwks_refresh_secs
        {
            return bad(
                "jwks_min_refresh_interval_secs must be at least 1 and at most jwks_refresh_secs"
                    .to_string(),
            );
        }
        if self.jwks_timeout_secs == 0 || self.jwks_timeout_secs > MAX_TIMEOUT_SECS {
            return bad(format!(
                "jwks_timeout_secs must be between 1 and {MAX_TIMEOUT_SECS}"
            ));
        }
        if let Some(url) = &self.jwks_url {
            parse_jwks_url(url)?;
            if !pinned.iter().any(|a| a.family() != AlgorithmFamily::Hmac) {
                return bad(
                    "jwks_url needs an asymmetric algorithm (RS*, PS*, ES* or EdDSA) in algorithms"
                        .to_string(),
                );
            }
        }
        Ok(())
    }

    /// The settings that name the static keys.
    pub(crate) fn key_sources(&self) -> KeySources<'_> {
        KeySources {
            public_key_files: &self.public_key_files,
            hs_secret: self.hs_secret.as_ref(),
            jwks: self.jwks_url.is_some(),
        }
    }
}

/// Parses and checks the pinned algorithm names.
pub(crate) fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, AuthError> {
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

/// Parses `jwks_url`: an absolute `http` or `https` URL with a host.
pub(crate) fn parse_jwks_url(url: &str) -> Result<Url, AuthError> {
    let parsed = Url::parse(url)
        .map_err(|e| AuthError::Config(format!("jwks_url is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(AuthError::Config(
            "jwks_url must be an http or https URL".to_string(),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(AuthError::Config("jwks_url has no host".to_string()));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{fixture, hs_config};

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
    fn jwks_settings_are_checked() {
        let ok = AuthConfig {
            algorithms: vec!["RS256".into()],
            jwks_url: Some("https://idp.example/.well-known/jwks.json".into()),
            ..AuthConfig::default()
        };
        let pinned = [Algorithm::RS256];
        assert!(ok.check_jwks(&pinned).is_ok());
        let bad = [
            AuthConfig {
                jwks_url: Some("ftp://idp.example/jwks".into()),
                ..ok.clone()
            },
            AuthConfig {
                jwks_url: Some("not a url".into()),
                ..ok.clone()
            },
            AuthConfig {
                jwks_refresh_secs: 0,
                ..ok.clone()
            },
            AuthConfig {
                jwks_min_refresh_interval_secs: 0,
                ..ok.clone()
            },
            AuthConfig {
                jwks_min_refresh_interval_secs: 600,
                ..ok.clone()
            },
            AuthConfig {
                jwks_timeout_secs: 0,
                ..ok.clone()
            },
        ];
        for cfg in bad {
            assert!(cfg.check_jwks(&pinned).is_err(), "{cfg:?}");
        }
        assert!(ok.check_jwks(&[Algorithm::HS256]).is_err());
    }
}
