//! Verification keys fetched from a JWKS URL (`auth.jwks_url`).
//!
//! # What is used
//!
//! Only asymmetric signature keys with a `kid` are taken from the set. Each
//! is filed under its `kid` with the algorithm it may verify: the JWK's `alg`
//! when present, otherwise one decided by the key type (`RSA`: any pinned
//! RS*/PS* algorithm; `EC` P-256: ES256; P-384: ES384; `OKP` Ed25519: EdDSA).
//! A key is skipped, with a warning, and never fails the whole set, when it
//! has no `kid`, is meant for encryption (`use: enc`), is symmetric (`oct`:
//! HS tokens never use JWKS keys), has an algorithm that is not pinned or
//! does not fit its key type, or does not parse.
//!
//! # Refreshing
//!
//! - **At start** the server fetches the set once, bounded by
//!   `jwks_timeout_secs`, before it accepts connections. A failure is logged
//!   as an error and does not stop the server: tokens naming a `kid` are
//!   refused with `401 unknown_key` until a later fetch works.
//! - **Periodically** a background task fetches it again
//!   `jwks_refresh_secs` after the previous fetch of any kind.
//! - **On an unknown `kid`.** When an asymmetric token names a `kid` that is
//!   not in the set (and no static PEM key verifies it), the request that
//!   meets it fetches the set at once and verifies again, if no fetch has
//!   started in the last `jwks_min_refresh_interval_secs`. That request waits
//!   for the fetch, which the timeout bounds. Every other request in the
//!   meantime is answered `401 unknown_key` without waiting, so verification
//!   never queues behind the network and random `kid`s cannot make Herald
//!   hammer the identity provider: there is at most one fetch of any kind per
//!   minimum interval. A client that gets `unknown_key` may retry after it.
//!
//! A new set replaces the old one atomically (an `Arc` swapped under a
//! `RwLock` that is never held across an `.await`). A failed fetch keeps the
//! previous keys. Fetches are counted in
//! `herald_jwks_refreshes_total{result="ok"|"error"}`; each success is
//! logged at info with the key count, each failure at warn (error at start).
//! Logs name the URL's host only, never its path or query.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use reqwest::Url;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{AuthConfig, parse_jwks_url};
use super::error::AuthError;
use crate::telemetry::metrics::JWKS_REFRESHES;

/// Largest JWKS document accepted, in bytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Most redirects followed when fetching the set.
const MAX_REDIRECTS: usize = 5;

/// Which algorithms one JWKS key may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyAlg {
    /// The JWK named its `alg` (or its curve decides it).
    Exact(Algorithm),
    /// An RSA key without `alg`: any pinned algorithm of the family.
    Family(AlgorithmFamily),
}

/// One usable key from the set.
#[derive(Clone)]
pub(crate) struct JwksKey {
    key: DecodingKey,
    alg: KeyAlg,
}

impl JwksKey {
    /// The decoding key, if it may verify a token signed with `alg`.
    pub(crate) fn for_alg(&self, alg: Algorithm) -> Option<&DecodingKey> {
        let fits = match self.alg {
            KeyAlg::Exact(a) => a == alg,
            KeyAlg::Family(f) => f == alg.family(),
        };
        fits.then_some(&self.key)
    }
}

/// The keys of one fetched set, by `kid`.
type KeyMap = HashMap<String, JwksKey>;

/// What started a fetch, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Startup,
    Periodic,
    UnknownKid,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Periodic => "periodic",
            Trigger::UnknownKid => "unknown_kid",
        }
    }
}

/// The cached JWKS keys of one [`Authenticator`](crate::auth::Authenticator),
/// and the fetching that keeps them fresh. See the module docs.
pub struct JwksCache {
    url: Url,
    pinned: Vec<Algorithm>,
    refresh_every: Duration,
    min_interval: Duration,
    timeout: Duration,
    keys: RwLock<Arc<KeyMap>>,
    /// When the latest fetch of any kind started.
    last_fetch: Mutex<Option<Instant>>,
    /// Serializes fetches and holds the HTTP client, built on first use (so
    /// validating a config never builds one).
    client: tokio::sync::Mutex<Option<reqwest::Client>>,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache")
            .field("host", &self.url.host_str())
            .field("keys", &self.snapshot().len())
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// The cache for `cfg.jwks_url`, or `None` when none is set. Nothing is
    /// fetched until [`startup`](Self::startup) or [`run`](Self::run).
    pub(crate) fn from_config(
        cfg: &AuthConfig,
        pinned: &[Algorithm],
    ) -> Result<Option<Arc<Self>>, AuthError> {
        let Some(url) = &cfg.jwks_url else {
            return Ok(None);
        };
        cfg.check_jwks(pinned)?;
        Ok(Some(Arc::new(Self {
            url: parse_jwks_url(url)?,
            pinned: pinned.to_vec(),
            refresh_every: Duration::from_secs(cfg.jwks_refresh_secs),
            min_interval: Duration::from_secs(cfg.jwks_min_refresh_interval_secs),
            timeout: Duration::from_secs(cfg.jwks_timeout_secs),
            keys: RwLock::new(Arc::new(KeyMap::new())),
            last_fetch: Mutex::new(None),
            client: tokio::sync::Mutex::new(None),
        })))
    }

    /// The current keys; cheap (an `Arc` clone under a short read lock).
    pub(crate) fn snapshot(&self) -> Arc<KeyMap> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the keys with those of `body`, as a fetch would (unit tests).
    #[cfg(test)]
    pub(crate) fn load_for_test(&self, body: &str) {
        let map = self.parse(body.as_bytes()).expect("test JWKS parses");
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
    }

    /// The number of usable keys held now.
    pub fn key_count(&self) -> usize {
        self.snapshot().len()
    }

    /// The initial fetch, before the server accepts connections. A failure
    /// is logged as an error; the server starts anyway.
    pub async fn startup(&self) {
        if self.url.scheme() == "http" {
            tracing::warn!(
                host = self.url.host_str(),
                "auth.jwks_url uses plain http: keys can be tampered with in transit"
            );
        }
        self.stamp();
        self.fetch(Trigger::Startup).await;
    }

    /// Refreshes every `jwks_refresh_secs` after the previous fetch of any
    /// kind, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let due = self
                .last_fetch()
                .map_or_else(Instant::now, |t| t + self.refresh_every);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(due) => {}
            }
            // An unknown-kid fetch may have run meanwhile; then wait anew.
            if self
                .last_fetch()
                .is_some_and(|t| t + self.refresh_every > Instant::now())
            {
                continue;
            }
            self.stamp();
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = self.fetch(Trigger::Periodic) => {}
            }
        }
    }

    /// Fetches the set now because a token named an unknown `kid`, unless a
    /// fetch started less than the minimum interval ago. Returns whether a
    /// fetch succeeded, so the caller knows a second look may help.
    pub(crate) async fn refresh_for_unknown_kid(&self) -> bool {
        if !self.try_claim() {
            return false;
        }
        self.fetch(Trigger::UnknownKid).await
    }

    fn last_fetch(&self) -> Option<Instant> {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stamp(&self) {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Takes the right to fetch now: true when no fetch started within the
    /// minimum interval (and records this one).
    fn try_claim(&self) -> bool {
        let mut last = self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.min_interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// One fetch: download, parse, swap, count and log. True on success.
    async fn fetch(&self, trigger: Trigger) -> bool {
        let outcome = self.download().await.and_then(|body| self.parse(&body));
        match outcome {
            Ok(map) => {
                let count = map.len();
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
                metrics::counter!(JWKS_REFRESHES, "result" => "ok").increment(1);
                tracing::info!(
                    host = self.url.host_str(),
                    trigger = trigger.as_str(),
                    keys = count,
                    "JWKS refreshed"
                );
                true
            }
            Err(error) => {
                metrics::counter!(JWKS_REFRESHES, "result" => "error").increment(1);
                let kept = self.key_count();
                if trigger == Trigger::Startup {
                    tracing::error!(
                        host = self.url.host_str(),
                        %error,
                        "cannot fetch the JWKS at start; tokens naming a kid get 401 \
                         unknown_key until a refresh works"
                    );
                } else {
                    tracing::warn!(
                        host = self.url.host_str(),
                        trigger = trigger.as_str(),
                        kept_keys = kept,
                        %error,
                        "JWKS refresh failed; keeping the previous keys"
                    );
                }
                false
            }
        }
    }

    /// GETs the set, with the timeout and a size cap.
    async fn download(&self) -> Result<Vec<u8>, String> {
        // Held across the request on purpose: fetches run one at a time.
        let mut slot = self.client.lock().await;
        if slot.is_none() {
            *slot = Some(build_client(self.timeout)?);
        }
        let Some(client) = slot.as_ref() else {
            return Err("no HTTP client".to_string());
        };
        let mut res = client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(describe)?;
        if !res.status().is_success() {
            return Err(format!("the JWKS endpoint answered {}", res.status()));
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Parses a JWKS document, keeping every usable key and skipping (with a
    /// warning) the rest. Only a document that is not a JWKS at all fails.
    fn parse(&self, body: &[u8]) -> Result<KeyMap, String> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let set: RawSet =
            serde_json::from_slice(body).map_err(|e| format!("the JWKS is not valid: {e}"))?;
        let mut map = KeyMap::new();
        for raw in set.keys {
            let kid_hint = raw
                .get("kid")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .chars()
                .take(64)
                .collect::<String>();
            match self.usable_key(raw) {
                Ok((kid, key)) => match map.entry(kid) {
                    Entry::Vacant(slot) => {
                        slot.insert(key);
                    }
                    Entry::Occupied(_) => {
                        tracing::warn!(kid = %kid_hint, "skipping a JWKS key: duplicate kid");
                    }
                },
                Err(reason) => {
                    tracing::warn!(kid = %kid_hint, reason, "skipping a JWKS key");
                }
            }
        }
        Ok(map)
    }

    /// Turns one JWK into a usable key, or says why it is skipped.
    fn usable_key(&self, raw: serde_json::Value) -> Result<(String, JwksKey), &'static str> {
        let jwk: Jwk = serde_json::from_value(raw).map_err(|_| "not a JWK Herald can read")?;
        let kid = jwk.common.key_id.clone().ok_or("no kid")?;
        if kid.is_empty() {
            return Err("empty kid");
        }
        match &jwk.common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(_) => return Err("not a signature key (use is not sig)"),
        }
        let alg = key_alg(&jwk)?;
        let pinned = match alg {
            KeyAlg::Exact(a) => self.pinned.contains(&a),
            KeyAlg::Family(f) => self.pinned.iter().any(|a| a.family() == f),
        };
        if !pinned {
            return Err("its algorithm is not pinned in auth.algorithms");
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| "its key material does not parse")?;
        Ok((kid, JwksKey { key, alg }))
    }
}

/// The algorithms a JWK may verify: its `alg`, checked against its key type,
/// or the one its key type implies.
fn key_alg(jwk: &Jwk) -> Result<KeyAlg, &'static str> {
    let declared = match &jwk.common.key_algorithm {
        Some(ka) => Some(
            Algorithm::from_str(&ka.to_string())
                .map_err(|_| "its alg is not a signature algorithm Herald knows")?,
        ),
        None => None,
    };
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyAlg::Family(AlgorithmFamily::Rsa),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyAlg::Exact(Algorithm::ES256),
            EllipticCurve::P384 => KeyAlg::Exact(Algorithm::ES384),
            _ => return Err("unsupported EC curve"),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => KeyAlg::Exact(Algorithm::EdDSA),
            _ => return Err("unsupported OKP curve"),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never taken from a JWKS");
        }
        _ => return Err("unsupported key type"),
    };
    match (declared, implied) {
        (None, implied) => Ok(implied),
        (Some(a), KeyAlg::Family(f)) if a.family() == f => Ok(KeyAlg::Exact(a)),
        (Some(a), KeyAlg::Exact(b)) if a == b => Ok(KeyAlg::Exact(a)),
        _ => Err("its alg does not fit its key type"),
    }
}

/// A fetch error with its causes (the top-level reqwest message alone says
/// little), without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The HTTP client for fetches: the timeout bounds connect, request and
/// body; redirects are followed a few times but never from https to http.
fn build_client(timeout: Duration) -> Result<reqwest::Client, String> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() != "https"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if downgrade {
            attempt.error("a redirect from https to http")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(policy)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: &str = include_str!("../../tests/fixtures/jwks/initial.json");
    const ROTATED: &str = include_str!("../../tests/fixtures/jwks/rotated.json");

    fn cache(algorithms: &[&str]) -> Arc<JwksCache> {
        let cfg = AuthConfig {
            enabled: true,
            algorithms: algorithms.iter().map(|s| s.to_string()).collect(),
            jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
            ..AuthConfig::default()
        };
        let pinned: Vec<Algorithm> = algorithms
            .iter()
            .map(|a| Algorithm::from_str(a).expect("known"))
            .collect();
        JwksCache::from_config(&cfg, &pinned)
            .expect("valid")
            .expect("configured")
    }

    fn kids(map: &KeyMap) -> Vec<&str> {
        let mut k: Vec<&str> = map.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn usable_keys_are_kept_and_the_rest_skipped() {
        let all = cache(&["RS256", "ES256", "EdDSA", "HS256"]);
        let map = all.parse(INITIAL.as_bytes()).expect("parses");
        // hs-trap (oct), rsa-enc (use enc), future-1 (unknown kty) and
        // broken-1 (bad modulus) are skipped; the set still loads.
        assert_eq!(kids(&map), ["ec-1", "ed-1", "rsa-1"]);
        assert!(map["rsa-1"].for_alg(Algorithm::RS256).is_some());
        assert!(map["rsa-1"].for_alg(Algorithm::RS512).is_none());
        assert!(map["ec-1"].for_alg(Algorithm::ES256).is_some());
        assert!(map["ec-1"].for_alg(Algorithm::ES384).is_none());
        assert!(map["ed-1"].for_alg(Algorithm::EdDSA).is_some());

        let rs_only = cache(&["RS256"]);
        let map = rs_only.parse(INITIAL.as_bytes()).expect("parses");
        assert_eq!(kids(&map), ["rsa-1"]);
        let map = rs_only.parse(ROTATED.as_bytes()).expect("parses");
        assert_eq!(kids(&map), ["rsa-2"]);
    }

    #[test]
    fn rsa_without_alg_fits_the_pinned_family() {
        let c = cache(&["PS256", "RS384"]);
        let body = INITIAL.replace("\"alg\": \"RS256\", \"e\"", "\"e\"");
        let map = c.parse(body.as_bytes()).expect("parses");
        let key = &map["rsa-1"];
        assert!(key.for_alg(Algorithm::PS256).is_some());
        assert!(key.for_alg(Algorithm::RS384).is_some());
        assert!(key.for_alg(Algorithm::ES256).is_none());
    }

    #[test]
    fn mismatched_or_duplicate_keys_are_skipped() {
        let c = cache(&["RS256", "ES256"]);
        let doc = serde_json::json!({"keys": [
            {"kty": "EC", "kid": "a", "alg": "RS256", "crv": "P-256",
             "x": "uH8qaI6SwHRvLZKQdMuM5u3VF4T9mokgy974xsmC-oY",
             "y": "YWTUNI_rzOGY17NukMwY9XvWhhEJyG85asgar8-QRPA"},
            {"kty": "EC", "kid": "b", "crv": "P-256",
             "x": "uH8qaI6SwHRvLZKQdMuM5u3VF4T9mokgy974xsmC-oY",
             "y": "YWTUNI_rzOGY17NukMwY9XvWhhEJyG85asgar8-QRPA"},
            {"kty": "EC", "kid": "b", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            "not an object",
        ]});
        let map = c.parse(doc.to_string().as_bytes()).expect("parses");
        assert_eq!(kids(&map), ["b"]);
        for bad in [&b"[]"[..], b"{}", b"not json", b"{\"keys\": 1}"] {
            assert!(c.parse(bad).is_err());
        }
    }
    #[tokio::test]
    async fn unknown_kid_refreshes_are_rate_limited() {
        let c = cache(&["RS256"]);
        // Nothing listens on port 9: the fetch fails fast, but it is claimed.
        assert!(!c.refresh_for_unknown_kid().await);
        let first = c.last_fetch().expect("claimed");
        assert!(!c.try_claim(), "within the minimum interval");
        assert_eq!(c.last_fetch(), Some(first));
    }
}
