//! Authentication: JWT verification, channel-pattern rights, and minting.
//!
//! With `auth.enabled`, every API request passes [`Authenticator`]: its token
//! is taken from the bearer header, a cookie or the query string, verified
//! against the pinned algorithms and their keys (static PEM keys, the HMAC
//! secret, or a JWKS), and its `herald` claim decides which channels the
//! holder may subscribe or publish to. [`Claims::expires_in`] tells the SSE
//! handler how long a stream may stay open: when it runs out the stream ends
//! with a final event telling the client to refresh its token, then a
//! `retry:` hint.
//!
//! Nothing here knows about HTTP statuses or the rest of the server's
//! config: the edge maps an [`AuthError`] onto a response, and `config`
//! composes [`AuthConfig`] as its `[auth]` section.
//!
//! # Layout
//!
//! One concept per file. A file uses only files listed above it (unit tests
//! aside), so there is no cycle:
//!
//! - `error.rs`: [`AuthError`], with its stable codes and metric reason.
//! - `pattern.rs`: channel glob patterns ([`glob_matches`], [`is_valid_pattern`]).
//! - `secret.rs`: the HMAC [`Secret`], where it comes from, the production rules.
//! - `keys.rs`: the static keys (HMAC secret, PEM public keys) by algorithm family.
//! - `config.rs`: [`AuthConfig`]: secret resolution, validation, algorithm parsing.
//! - `claims.rs`: [`Claims`] and [`Rights`], the verified part of a token.
//! - `header.rs`: the token header checks made before any key is touched.
//! - `source.rs`: where a token comes from: bearer header, cookie, query ([`query_token`]).
//! - `jwks.rs`: [`JwksCache`], keys fetched from `auth.jwks_url`, cached and refreshed.
//! - `authenticator.rs`: [`Authenticator`]: verification and rights checks.
//! - `verified.rs`: tokens verified with a static key, reused for up to a minute.
//! - `mint.rs`: [`mint`] and the `herald token` command ([`run_token_command`]).

mod authenticator;
mod claims;
mod config;
mod error;
mod header;
mod jwks;
mod keys;
mod mint;
mod pattern;
mod secret;
mod source;
#[cfg(test)]
mod test_support;
mod verified;

pub use authenticator::Authenticator;
pub use claims::{Claims, MAX_EXPIRES_IN, Rights};
pub use config::AuthConfig;
pub use error::AuthError;
pub use jwks::JwksCache;
pub use mint::{TokenArgs, TokenRequest, mint, parse_ttl, run_token_command};
pub use pattern::{glob_matches, is_valid_pattern};
pub use secret::{DEV_SECRET, MIN_SECRET_BYTES, SECRET_ENV, Secret};
pub use source::{QUERY_PARAM, query_token};
