//! Minting tokens with the configured HMAC secret, and the `herald token`
//! command that prints one. Asymmetric tokens are minted by the identity
//! provider that holds the private key, never by Herald.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{AlgorithmFamily, EncodingKey, Header};
use serde::Serialize;

use super::claims::Rights;
use super::config::{AuthConfig, parse_algorithms};
use super::error::AuthError;
use super::pattern::is_valid_pattern;
use super::secret::SECRET_ENV;

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
pub fn run_token_command(cfg: &AuthConfig, args: TokenArgs) -> anyhow::Result<()> {
    let token = mint(
        cfg,
        &TokenRequest {
            sub: args.sub,
            subscribe: args.subscribe,
            publish: args.publish,
            ttl: args.ttl,
            audience: args.aud,
            issuer: args.iss,
        },
    )?;
    if !cfg.enabled {
        eprintln!("note: auth.enabled is false, so this server does not check tokens");
    }
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{authenticator, hs_config};

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
}
