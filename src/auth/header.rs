//! The JOSE header of a token, read by Herald itself before jsonwebtoken
//! sees the token, so that the pinned algorithms are enforced before any key
//! is touched: `alg: none` (which jsonwebtoken cannot even parse) is refused
//! with `alg_none`, any algorithm not pinned with `alg_not_allowed`. The
//! header only ever *selects* among the pinned algorithms; it is never
//! trusted on its own.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

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
    Ok(TokenHeader { alg, kid: raw.kid })
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
    use jsonwebtoken::EncodingKey;

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
}
