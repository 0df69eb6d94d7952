//! Static verification keys: the HMAC secret and PEM public keys, grouped by
//! algorithm family. Each family verifies with its own keys only, so an `HS*`
//! token is never checked against a PEM public key (the classic HS/RS
//! confusion fails) and an `RS*` token never against the HMAC secret.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::error::AuthError;
use super::secret::{SECRET_ENV, Secret};

/// The settings that name the static keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySources<'a> {
    /// PEM public keys for the asymmetric families.
    pub(crate) public_key_files: &'a [PathBuf],
    /// The HMAC secret, for the HS family.
    pub(crate) hs_secret: Option<&'a Secret>,
    /// A JWKS may supply asymmetric keys, so an asymmetric family may start
    /// without a static key.
    pub(crate) jwks: bool,
}

/// The pinned algorithms of one family, and its static keys (tried in turn,
/// which allows rotation).
#[derive(Debug, Clone)]
pub(crate) struct FamilyKeys {
    pub(crate) family: AlgorithmFamily,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) keys: Vec<DecodingKey>,
}

/// Groups the `pinned` algorithms by family and loads each family's keys.
///
/// Fails when a key file cannot be read, holds a private key, or fits no
/// pinned family, and when a family is left without a key: HS needs the
/// secret; an asymmetric family needs a PEM key unless a JWKS is configured.
pub(crate) fn load(
    pinned: &[Algorithm],
    sources: KeySources<'_>,
) -> Result<Vec<FamilyKeys>, AuthError> {
    let mut families: Vec<FamilyKeys> = Vec::new();
    for alg in pinned {
        match families.iter_mut().find(|f| f.family == alg.family()) {
            Some(f) => f.algorithms.push(*alg),
            None => families.push(FamilyKeys {
                family: alg.family(),
                algorithms: vec![*alg],
                keys: Vec::new(),
            }),
        }
    }
    for path in sources.public_key_files {
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
    for family in &mut families {
        if family.family == AlgorithmFamily::Hmac {
            match sources.hs_secret {
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
        } else if family.keys.is_empty() && !sources.jwks {
            return Err(AuthError::Config(format!(
                "{:?} is pinned but no matching key is in auth.public_key_files (or set auth.jwks_url)",
                family.algorithms
            )));
        }
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::fixture;

    fn sources<'a>(files: &'a [PathBuf], secret: Option<&'a Secret>) -> KeySources<'a> {
        KeySources {
            public_key_files: files,
            hs_secret: secret,
            jwks: false,
        }
    }

    #[test]
    fn each_family_gets_its_own_keys() {
        let secret = Secret::new("s");
        let files = [fixture("rsa-public.pem"), fixture("ec-p256-public.pem")];
        let pinned = [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::HS384,
            Algorithm::PS256,
        ];
        let families = load(&pinned, sources(&files, Some(&secret))).expect("loads");
        let summary: Vec<_> = families
            .iter()
            .map(|f| (f.family, f.algorithms.clone(), f.keys.len()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    AlgorithmFamily::Hmac,
                    vec![Algorithm::HS256, Algorithm::HS384],
                    1
                ),
                (
                    AlgorithmFamily::Rsa,
                    vec![Algorithm::RS256, Algorithm::PS256],
                    1
                ),
                (AlgorithmFamily::Ec, vec![Algorithm::ES256], 1),
            ]
        );
    }

    #[test]
    fn a_family_without_a_key_is_refused_unless_a_jwks_may_fill_it() {
        let rs = [Algorithm::RS256];
        assert!(load(&rs, sources(&[], None)).is_err());
        let jwks = KeySources {
            jwks: true,
            ..sources(&[], None)
        };
        assert_eq!(load(&rs, jwks).expect("jwks fills it")[0].keys.len(), 0);
        // An empty secret is no secret; a JWKS never fills the HS family.
        let empty = Secret::new("");
        let hs = [Algorithm::HS256];
        let err = load(&hs, sources(&[], Some(&empty))).expect_err("no secret");
        assert!(err.to_string().contains(SECRET_ENV), "{err}");
        let jwks_hs = KeySources {
            jwks: true,
            ..sources(&[], None)
        };
        assert!(load(&hs, jwks_hs).is_err());
        // A key that fits no pinned family is an error, not ignored.
        let ec = [fixture("ec-p256-public.pem")];
        assert!(load(&rs, sources(&ec, None)).is_err());
    }
}
