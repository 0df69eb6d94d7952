//! [`Authenticator`]: verifies a request's token and checks its rights.
//!
//! # Verifying
//!
//! Tokens are verified with the algorithms pinned in
//! [`AuthConfig::algorithms`]. The header is read first (see `header.rs`):
//! its `alg` only ever selects among the pinned algorithms, so `alg: none`
//! and unpinned algorithms are refused before any signature is computed.
//! Each algorithm family has its own keys (see `keys.rs`): the HMAC secret
//! verifies only `HS*` tokens, PEM public keys only `RS*`/`PS*`, `ES*` or
//! `EdDSA` tokens.
//!
//! With [`AuthConfig::jwks_url`] set, asymmetric keys also come from a JWKS
//! (see [`JwksCache`]). An asymmetric token whose header names a `kid` found
//! in the set is verified with that key only. A `kid` not in the set is
//! tried against the static PEM keys; if none verifies it, the answer is
//! `401 unknown_key`, and the request may trigger a rate-limited refresh of
//! the set first ([`Authenticator::authenticate_with_refresh`]). A token
//! without a `kid` uses the static PEM keys, as without a JWKS. `HS*` tokens
//! never use JWKS keys, whatever their `kid`.
//!
//! `exp` is required and checked; `nbf` is checked when present; `aud` and
//! `iss` are required and checked when configured. `iss`, when present,
//! must be a single string, configured or not
//! ([`Claims::issuer_is_single`]). All time checks allow
//! [`AuthConfig::leeway_secs`] of clock skew. Error messages never contain
//! the token.
//!
//! # Rights
//!
//! Subscribing needs a subscribe right (in the `herald` claim, see
//! [`Claims`]) for **every** requested channel, except channels matching
//! [`AuthConfig::anonymous_subscribe`], which anyone may read. Publishing
//! needs a publish right (or an [`AuthConfig::anonymous_publish`] match, for
//! development).

use std::sync::Arc;

use axum::http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use super::claims::Claims;
use super::config::{AuthConfig, parse_algorithms};
use super::error::AuthError;
use super::header;
use super::jwks::JwksCache;
use super::keys::{self, FamilyKeys};
use super::pattern::matches_any;
use super::source::TokenSources;
use super::verified::VerifiedTokens;

/// One algorithm family's static keys, and the rules its tokens' claims are
/// checked with.
#[derive(Debug, Clone)]
struct Family {
    keys: FamilyKeys,
    validation: Validation,
}

/// Which kind of key verified a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// The HMAC secret or a PEM key: fixed for the life of the process.
    Static,
    /// A JWKS key: the set may drop it.
    Jwks,
}

/// Verifies tokens and checks per-channel rights. Built once at start from
/// [`AuthConfig`] and shared (it is cheap to clone).
#[derive(Debug, Clone)]
pub struct Authenticator {
    enabled: bool,
    pinned: Vec<Algorithm>,
    families: Vec<Family>,
    jwks: Option<Arc<JwksCache>>,
    sources: TokenSources,
    anonymous_subscribe: Vec<String>,
    anonymous_publish: Vec<String>,
    /// Tokens verified with a static key, reused for a short while.
    verified: Arc<VerifiedTokens>,
    leeway: std::time::Duration,
}

impl Authenticator {
    /// Loads the keys and builds the validation rules. When auth is disabled
    /// no key is loaded and every request is anonymous.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let pinned = parse_algorithms(&cfg.algorithms)?;
        let mut families = Vec::new();
        let mut jwks = None;
        if cfg.enabled {
            jwks = JwksCache::from_config(cfg, &pinned)?;
            families = keys::load(&pinned, cfg.key_sources())?
                .into_iter()
                .map(|keys| Family {
                    validation: validation_for(cfg, &keys.algorithms),
                    keys,
                })
                .collect();
        }
        Ok(Self {
            enabled: cfg.enabled,
            pinned,
            families,
            jwks,
            sources: TokenSources::new(cfg),
            anonymous_subscribe: cfg.anonymous_subscribe.clone(),
            anonymous_publish: cfg.anonymous_publish.clone(),
            verified: Arc::default(),
            leeway: std::time::Duration::from_secs(cfg.leeway_secs),
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
    ) -> Result<Option<Arc<Claims>>, AuthError> {
        let Some(token) = self.presented_token(headers, query_token)? else {
            return Ok(None);
        };
        if let Some(claims) = self.verified.get(token) {
            return Ok(Some(claims));
        }
        let mut verified = self.verify_keyed(token);
        if matches!(verified, Err(AuthError::UnknownKey))
            && let Some(jwks) = &self.jwks
            // Boxed: the HTTP fetch is a large future, and this rare path
            // would otherwise size every request's future.
            // Boxed: the HTTP fetch is a large future, and this rare path
            // would otherwise size every request's future.
            && Box::pin(jwks.refresh_for_unknown_kid()).await
        {
            verified = self.verify_keyed(token);
        }
        match verified {
            Ok((claims, key)) => {
                let claims = Arc::new(claims);
                if key == Key::Static {
                    self.verified.remember(token, &claims, self.leeway);
                }
                Ok(Some(claims))
            }
            Err(e) => {
                e.record();
                Err(e)
            }
        }
    }

    /// Periodic upkeep: forgets remembered tokens that are no longer valid.
    pub fn sweep(&self) {
        self.verified.sweep();
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
        self.sources
            .find(headers, query_token)
            .inspect_err(AuthError::record)
    }

    /// Verifies one token against the pinned algorithms and their keys.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_keyed(token).map(|(claims, _)| claims)
    }

    /// [`Authenticator::verify`], saying which kind of key verified it.
    fn verify_keyed(&self, token: &str) -> Result<(Claims, Key), AuthError> {
        let header = header::read(token, &self.pinned)?;
        let family = self
            .families
            .iter()
            .find(|f| f.keys.family == header.alg.family())
            .ok_or(AuthError::AlgNotAllowed)?;
        if let (Some(kid), Some(jwks)) = (&header.kid, &self.jwks)
            && family.keys.family != AlgorithmFamily::Hmac
        {
            let keys = jwks.snapshot();
            if let Some(found) = keys.get(kid) {
                // The named key, and only it: no falling back to other keys.
                let key = found.for_alg(header.alg).ok_or(AuthError::BadSignature)?;
                return decode(token, key, &family.validation).map(|c| (c, Key::Jwks));
            }
            // Not in the set: a static PEM key may still have signed it.
            return match Self::verify_with(token, family) {
                Err(AuthError::BadSignature) => Err(AuthError::UnknownKey),
                other => other.map(|c| (c, Key::Static)),
            };
        }
        Self::verify_with(token, family).map(|c| (c, Key::Static))
    }

    /// Tries each of the family's static keys in turn.
    fn verify_with(token: &str, family: &Family) -> Result<Claims, AuthError> {
        let mut last = AuthError::BadSignature;
        for key in &family.keys.keys {
            match decode(token, key, &family.validation) {
                Ok(claims) => return Ok(claims),
                Err(e) => {
                    last = e;
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

/// Verifies the signature with `key`, then the claims.
fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| map_jwt_error(e.kind()))?;
    if !claims.issuer_is_single() {
        return Err(AuthError::BadIssuer);
    }
    Ok(claims)
}

/// Builds the validation rules shared by one family's algorithms.
fn validation_for(cfg: &AuthConfig, algorithms: &[Algorithm]) -> Validation {
    let mut v = Validation {
        algorithms: algorithms.to_vec(),
        leeway: cfg.leeway_secs,
        validate_exp: true,
        validate_nbf: true,
        ..Validation::default()
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::header::MAX_TOKEN_BYTES;
    use crate::auth::test_support::*;
    use axum::http::{HeaderValue, header};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// Verifying a token is a small future: the JWKS refresh on an unknown
    /// `kid` (an HTTP fetch) is boxed, so it does not size every request's.
    #[test]
    fn authenticating_is_a_small_future() {
        let auth = authenticator(&hs_config());
        let headers = bearer("x");
        let verify = auth.authenticate_with_refresh(&headers, None);
        let size = std::mem::size_of_val(&verify);
        assert!(size <= 320, "the authenticate future is {size} bytes");
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

    #[tokio::test]
    async fn a_token_verified_with_a_static_key_is_not_verified_again() {
        let auth = authenticator(&hs_config());
        let token = hs(valid_claims());
        let first = auth
            .authenticate_with_refresh(&bearer(&token), None)
            .await
            .expect("valid")
            .expect("claims");
        assert_eq!(auth.verified.len(), 1);
        let again = auth
            .authenticate_with_refresh(&bearer(&token), None)
            .await
            .expect("valid")
            .expect("claims");
        assert!(Arc::ptr_eq(&first, &again), "the remembered verdict");
        // A forged token never matches a remembered one.
        let forged = format!("{token}x");
        assert!(
            auth.authenticate_with_refresh(&bearer(&forged), None)
                .await
                .is_err()
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
    fn an_issuer_list_is_refused_configured_or_not() {
        const ISS: &str = "https://idp.example";
        let cfg = AuthConfig {
            issuer: Some(ISS.into()),
            ..hs_config()
        };
        let configured = authenticator(&cfg);
        let plain = authenticator(&hs_config());
        let claims_with_iss = |iss: serde_json::Value| {
            let mut c = valid_claims();
            c["iss"] = iss;
            c
        };
        let with_iss = |iss: serde_json::Value| hs(claims_with_iss(iss));
        let listed = with_iss(json!([ISS]));
        let mixed = with_iss(json!(["https://evil.example", ISS]));
        // jsonwebtoken alone accepts a list that holds the issuer.
        let secret = DecodingKey::from_secret(SECRET.as_bytes());
        let rules = validation_for(&cfg, &[Algorithm::HS256]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&mixed, &secret, &rules).is_ok());

        for auth in [&configured, &plain] {
            for token in [&listed, &mixed, &with_iss(json!([])), &with_iss(json!(42))] {
                assert_eq!(auth.verify(token), Err(AuthError::BadIssuer));
            }
        }
        assert!(configured.verify(&with_iss(json!(ISS))).is_ok());
        assert!(plain.verify(&with_iss(json!("anyone"))).is_ok());
        assert!(plain.verify(&with_iss(json!(null))).is_ok());
        assert_eq!(
            configured.verify(&with_iss(json!(null))),
            Err(AuthError::BadIssuer)
        );
        // The signature comes first: a forged list is a bad signature.
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"not the secret"),
            &claims_with_iss(json!([ISS])),
        );
        assert_eq!(plain.verify(&forged), Err(AuthError::BadSignature));
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
    fn jwks_keys_are_chosen_by_kid() {
        const OTHER_PRIVATE: &[u8] =
            include_bytes!("../../tests/fixtures/keys/rsa-other-private.pem");
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
            .load_for_test(include_str!("../../tests/fixtures/jwks/initial.json"));
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
        assert_eq!(err.code(), "forbidden");
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

    proptest::proptest! {
        #[test]
        fn random_tokens_never_panic_and_are_401(
            raw in ".{0,300}",
            parts in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5),
        ) {
            let auth = authenticator(&hs_config());
            for token in [raw.clone(), parts.join(".")] {
                let err = auth.verify(&token).expect_err("random input never verifies");
                proptest::prop_assert!(is_token_refusal(&err), "{:?}", err);
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
                proptest::prop_assert!(is_token_refusal(&e), "{:?}", e);
            }
        }
    }
}
