//! The JOSE header of a token, read by Herald itself before jsonwebtoken
//! sees the token, so that the pinned algorithms are enforced before any key
//! is touched: `alg: none` (which jsonwebtoken cannot even parse) is refused
//! with `alg_none`, any algorithm not pinned with `alg_not_allowed`. The
//! header only ever *selects* among the pinned algorithms; it is never
//! trusted on its own.
//!
//! A header with `crit` is refused with `unsupported_crit`, whatever the
//! member's value. RFC 7515 §4.1.11 says a recipient must reject a token
//! whose `crit` names an extension it does not understand, and Herald
//! understands none (`b64: false` payloads, for instance, would be verified
//! over the wrong bytes); an empty or malformed `crit` is invalid per the
//! same section.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::error::AuthError;

/// Longest token accepted, in bytes; anything longer is `malformed` before
/// any decoding work is done.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What the header of a token that passed these checks says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenHeader {
    /// The signing algorithm, one of the pinned ones.
    pub(crate) alg: Algorithm,
    /// The key id, used to pick a JWKS key.
    pub(crate) kid: Option<String>,
}

/// Checks the token's size and shape (three dot-separated parts) and reads
/// its header; `pinned` are the accepted algorithms.
pub(crate) fn read(token: &str, pinned: &[Algorithm]) -> Result<TokenHeader, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
        #[serde(default)]
        crit: Present,
    }
    let header_json = b64url_decode(header_b64).ok_or(AuthError::Malformed)?;
    let raw: RawHeader = serde_json::from_slice(&header_json).map_err(|_| AuthError::Malformed)?;
    if raw.alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::AlgNone);
    }
    let alg = Algorithm::from_str(&raw.alg).map_err(|_| AuthError::AlgNotAllowed)?;
    if !pinned.contains(&alg) {
        return Err(AuthError::AlgNotAllowed);
    }
    if raw.crit.0 {
        return Err(AuthError::UnsupportedCrit);
    }
    Ok(TokenHeader { alg, kid: raw.kid })
}

/// Whether a header member is there at all. Any value counts, `null`
/// included, so it is not an `Option` (serde would read `null` as absent).
#[derive(Debug, Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

/// Decodes unpadded base64url (RFC 4648 §5), as used by JWS: padding, the
/// standard alphabet and non-canonical trailing bits are all refused.
fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::*;
    use jsonwebtoken::{EncodingKey, Header};

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
        assert_eq!((err.code(), err), ("alg_none", AuthError::AlgNone));
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
    fn any_crit_is_refused_before_the_signature_is_checked() {
        let auth = authenticator(&hs_config());
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        // Correctly signed tokens: crit names an extension (RFC 7797's b64),
        // a registered claim, or something unheard of.
        for crit in [&["b64"][..], &["exp"], &["x-unknown", "b64"]] {
            let mut header = Header::new(Algorithm::HS256);
            header.crit = Some(crit.iter().map(|c| c.to_string()).collect());
            let token = jsonwebtoken::encode(&header, &valid_claims(), &key).expect("signs");
            assert_eq!(
                auth.verify(&token),
                Err(AuthError::UnsupportedCrit),
                "{crit:?}"
            );
        }
        // Empty or malformed crit, with a signature that is never looked at.
        let payload = b64url_encode(valid_claims().to_string().as_bytes());
        let token = |header: &str| format!("{}.{payload}.AAAA", b64url_encode(header.as_bytes()));
        for crit in ["[]", r#""b64""#, "null", "{}", "[1]", r#"["b64","b64"]"#] {
            let crit_token = token(&format!(r#"{{"alg":"HS256","crit":{crit}}}"#));
            assert_eq!(
                read(&crit_token, &[Algorithm::HS256]),
                Err(AuthError::UnsupportedCrit),
                "{crit}"
            );
            assert_eq!(
                auth.verify(&crit_token),
                Err(AuthError::UnsupportedCrit),
                "{crit}"
            );
        }
        // The algorithm is still judged first, against the pinned list only.
        let none = token(r#"{"alg":"none","crit":["b64"]}"#);
        assert_eq!(auth.verify(&none), Err(AuthError::AlgNone));
        let hs512 = token(r#"{"alg":"HS512","crit":["b64"]}"#);
        assert_eq!(auth.verify(&hs512), Err(AuthError::AlgNotAllowed));
        // Without crit the same header passes, and the signature decides.
        let plain = token(r#"{"alg":"HS256","kid":"k1"}"#);
        assert_eq!(
            read(&plain, &[Algorithm::HS256]),
            Ok(TokenHeader {
                alg: Algorithm::HS256,
                kid: Some("k1".into()),
            })
        );
        assert_eq!(auth.verify(&plain), Err(AuthError::BadSignature));
    }
}
