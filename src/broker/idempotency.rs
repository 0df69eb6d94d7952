//! Idempotent publish: a publish may carry an `Idempotency-Key`; a retry
//! with the same key within the window returns the first publish's ids and
//! publishes nothing. Both brokers use the same key scope and fingerprint,
//! so a retry that lands on another replica behaves the same.
//!
//! A key is scoped to the publisher (token subject, or "anonymous") and the
//! channel, so two publishers cannot collide. The fingerprint covers the
//! request body: a key reused with a different body is a conflict (422),
//! never a silent drop of the second publish.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::hub::EventId;

/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 128;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters")]
pub struct InvalidKey;

/// A publish's idempotency key, scoped and fingerprinted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// SHA-256 of scope, channel and key, in hex: the storage key.
    pub scoped: String,
    /// SHA-256 of the request body, in hex.
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// Builds the key for `raw` (the header value) sent by `publisher` to
    /// `channel` with `body`.
    pub fn new(
        raw: &[u8],
        publisher: Option<&str>,
        channel: &str,
        batch: bool,
        body: &[u8],
    ) -> Result<Self, InvalidKey> {
        if raw.is_empty() || raw.len() > MAX_KEY_LEN || !raw.iter().all(u8::is_ascii_graphic) {
            return Err(InvalidKey);
        }
        let mut scope = Sha256::new();
        // Lengths first, so no two (publisher, channel, key) share a hash.
        for part in [
            publisher.map_or(&b""[..], str::as_bytes),
            channel.as_bytes(),
            raw,
        ] {
            scope.update((part.len() as u64).to_be_bytes());
            scope.update(part);
        }
        scope.update([u8::from(publisher.is_some())]);
        let mut fingerprint = Sha256::new();
        fingerprint.update([u8::from(batch)]);
        fingerprint.update(body);
        Ok(Self {
            scoped: hex(&scope.finalize()),
            fingerprint: hex(&fingerprint.finalize()),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What a key lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The key is new: publish, then [`IdempotencyCache::remember`].
    New,
    /// The same request was published before: these are its ids.
    Replay(Vec<EventId>),
    /// The key was used with a different body.
    Conflict,
}

/// The memory broker's record of recent keys: bounded by a window and a
/// count; the oldest keys are forgotten first when full.
#[derive(Debug)]
pub struct IdempotencyCache {
    window: Duration,
    max_keys: usize,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, Entry>,
    order: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    ids: Vec<EventId>,
    expires: Instant,
}

impl IdempotencyCache {
    /// A cache keeping keys for `window`, at most `max_keys` of them.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys: max_keys.max(1),
            inner: Mutex::new(Entries::default()),
        }
    }

    /// Runs `publish` unless `key` was seen within the window; the check,
    /// the publish and the record happen under one lock, so two concurrent
    /// retries cannot both publish. `publish` must not block.
    pub fn once<E>(
        &self,
        key: &IdempotencyKey,
        publish: impl FnOnce() -> Result<Vec<EventId>, E>,
    ) -> Result<(Vec<EventId>, bool), SeenOrError<E>> {
        let now = Instant::now();
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        entries.expire(now);
        if let Some(entry) = entries.by_key.get(&key.scoped) {
            if entry.fingerprint != key.fingerprint {
                return Err(SeenOrError::Conflict);
            }
            return Ok((entry.ids.clone(), true));
        }
        let ids = publish().map_err(SeenOrError::Publish)?;
        while entries.by_key.len() >= self.max_keys {
            let Some((_, old)) = entries.order.pop_front() else {
                break;
            };
            entries.by_key.remove(&old);
        }
        let expires = now + self.window;
        entries.by_key.insert(
            key.scoped.clone(),
            Entry {
                fingerprint: key.fingerprint.clone(),
                ids: ids.clone(),
                expires,
            },
        );
        entries.order.push_back((expires, key.scoped.clone()));
        Ok((ids, false))
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A conflict, or the publish's own error.
#[derive(Debug)]
pub enum SeenOrError<E> {
    /// The key was used with a different body.
    Conflict,
    /// Publishing failed (nothing recorded).
    Publish(E),
}

impl Entries {
    fn expire(&mut self, now: Instant) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            if let Some((_, key)) = self.order.pop_front()
                && self.by_key.get(&key).is_some_and(|e| e.expires <= now)
            {
                self.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str, who: Option<&str>, body: &str) -> IdempotencyKey {
        IdempotencyKey::new(raw.as_bytes(), who, "news", false, body.as_bytes()).expect("valid")
    }

    #[test]
    fn keys_are_scoped_and_fingerprinted() {
        assert_eq!(key("k1", Some("a"), "x"), key("k1", Some("a"), "x"));
        assert_ne!(
            key("k1", Some("a"), "x").scoped,
            key("k1", Some("b"), "x").scoped
        );
        assert_ne!(key("k1", None, "x").scoped, key("k1", Some(""), "x").scoped);
        assert_ne!(
            key("k1", Some("a"), "x").fingerprint,
            key("k1", Some("a"), "y").fingerprint
        );
        for bad in ["", "has space", &"x".repeat(129), "tab\t"] {
            assert_eq!(
                IdempotencyKey::new(bad.as_bytes(), None, "c", false, b""),
                Err(InvalidKey),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_retry_replays_and_a_different_body_conflicts() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 2);
        let id = |seq| EventId { epoch: 1, seq };
        let k = key("k", None, "body");
        let first = cache.once(&k, || Ok::<_, ()>(vec![id(1)]));
        assert!(matches!(first, Ok((ref ids, false)) if ids == &[id(1)]));
        let retry = cache.once(&k, || -> Result<Vec<EventId>, ()> {
            panic!("published twice")
        });
        assert!(matches!(retry, Ok((ref ids, true)) if ids == &[id(1)]));
        let other = key("k", None, "other body");
        assert!(matches!(
            cache.once(&other, || Ok::<_, ()>(vec![id(2)])),
            Err(SeenOrError::Conflict)
        ));
        // Bounded: the oldest key goes first.
        let _ = cache.once(&key("k2", None, "b"), || Ok::<_, ()>(vec![id(3)]));
        let _ = cache.once(&key("k3", None, "b"), || Ok::<_, ()>(vec![id(4)]));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn keys_expire_after_the_window() {
        let cache = IdempotencyCache::new(Duration::from_millis(1), 10);
        let k = key("k", None, "b");
        let _ = cache.once(&k, || Ok::<_, ()>(vec![EventId { epoch: 1, seq: 1 }]));
        std::thread::sleep(Duration::from_millis(5));
        let again = cache.once(&k, || Ok::<_, ()>(vec![EventId { epoch: 1, seq: 2 }]));
        assert!(matches!(again, Ok((_, false))));
    }
}
