//! Tokens already verified with a static key (the HMAC secret or a PEM
//! public key), remembered briefly so a publisher that sends the same
//! token with every request pays for its signature once, not per request.
//!
//! Only static keys qualify: they cannot change while the process runs, so
//! a remembered verdict cannot outlive its key. Tokens verified with a JWKS
//! key are always verified again, since the set may drop the key. An entry
//! lasts at most [`REMEMBER_FOR`], and never past the token's `exp` plus the
//! leeway, the instant a fresh verification would start to fail; `nbf` was
//! already satisfied when the token was verified. The set is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::claims::Claims;

/// How long a verdict is reused at most.
pub const REMEMBER_FOR: Duration = Duration::from_secs(60);

/// Most tokens remembered at once; past it new ones are verified every time
/// until the periodic sweep frees room.
const MAX_REMEMBERED: usize = 10_000;

/// Verified tokens and the instant each stops being valid.
#[derive(Debug, Default)]
pub(crate) struct VerifiedTokens {
    by_token: DashMap<Box<str>, (Arc<Claims>, Instant)>,
}

impl VerifiedTokens {
    /// The claims of `token` if it was verified and is still valid.
    pub(crate) fn get(&self, token: &str) -> Option<Arc<Claims>> {
        let entry = self.by_token.get(token)?;
        if entry.1 > Instant::now() {
            return Some(Arc::clone(&entry.0));
        }
        drop(entry);
        self.by_token.remove(token);
        None
    }

    /// Remembers a token just verified with a static key.
    pub(crate) fn remember(&self, token: &str, claims: &Arc<Claims>, leeway: Duration) {
        if self.by_token.len() >= MAX_REMEMBERED {
            return;
        }
        let now = Instant::now();
        let mut until = now + REMEMBER_FOR;
        if let Some(left) = claims.expires_in_after(leeway) {
            until = until.min(now + left);
        }
        if until > now {
            self.by_token
                .insert(token.into(), (Arc::clone(claims), until));
        }
    }

    /// Drops the entries that are no longer valid (called periodically).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.by_token.retain(|_, (_, until)| *until > now);
    }

    /// Tokens remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_token.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn claims(exp: Option<u64>) -> Arc<Claims> {
        let mut claims = Claims::default();
        claims.sub = Some("alice".into());
        claims.exp = exp;
        Arc::new(claims)
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    #[test]
    fn a_verdict_is_reused_only_while_the_token_is_valid() {
        let tokens = VerifiedTokens::default();
        tokens.remember("long", &claims(Some(now_secs() + 3600)), Duration::ZERO);
        assert_eq!(
            tokens.get("long").and_then(|c| c.sub.clone()).as_deref(),
            Some("alice")
        );
        assert!(tokens.get("other").is_none());
        // Valid for under a second more (exp plus leeway): not reused after.
        tokens.remember(
            "ending",
            &claims(Some(now_secs())),
            Duration::from_millis(800),
        );
        std::thread::sleep(Duration::from_millis(1100));
        assert!(tokens.get("ending").is_none(), "reused past exp + leeway");
        // Already past: never remembered.
        tokens.remember("expired", &claims(Some(now_secs() - 100)), Duration::ZERO);
        assert!(tokens.get("expired").is_none());
        tokens.sweep();
        assert_eq!(tokens.len(), 1);
    }
}
