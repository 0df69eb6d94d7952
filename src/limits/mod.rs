//! Rate and connection limits.
//!
//! Three kinds of limit protect the server, each reported with its own label
//! in `herald_rate_limited_total{limit}` and refused with [`Limited`] (429,
//! code `rate_limited`, a `Retry-After` in whole seconds):
//!
//! | `limit` label         | what it bounds                                     | how |
//! |-----------------------|----------------------------------------------------|-----|
//! | `publish`             | publishes per subject, or per client IP when anonymous | governor keyed GCRA |
//! | `new_streams`         | new SSE streams opened per client IP               | governor keyed GCRA |
//! | `streams_per_ip`      | concurrent SSE streams per client IP               | counter, [`StreamPermit`] |
//! | `streams_per_subject` | concurrent SSE streams per token subject           | counter, [`StreamPermit`] |
//! | `connections`         | concurrent SSE streams in total                    | counter, [`StreamPermit`] |
//!
//! A rate or count of `0` in config turns that limit off.
//!
//! IPv6 clients are limited per /64 prefix, the block one subscriber usually
//! holds, so a client cannot dodge its limit by rotating addresses inside it;
//! IPv4-mapped IPv6 addresses count as their IPv4 address.
//!
//! State stays bounded: a [`StreamPermit`] removes its counter entry when the
//! last stream of an IP or subject closes, and [`Limits::retain_recent`],
//! called periodically, evicts rate-limiter keys that have gone idle.
//!
//! The client IP is the socket peer's, unless the peer is a configured
//! trusted proxy; then it is the right-most `X-Forwarded-For` entry that is
//! not itself a trusted proxy (see [`client_ip`]).

mod client_ip;
mod config;
mod streams;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

pub use client_ip::{InvalidNet, IpNet, client_ip, ip_bucket};
pub use config::{LimitsConfig, LimitsConfigError};
pub use streams::StreamPermit;

use crate::telemetry::metrics::RATE_LIMITED;
use streams::StreamCounters;

/// A request refused by a limit: 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many requests ({limit}); retry in {} s", self.retry_after_secs())]
pub struct Limited {
    /// Which limit refused: `publish`, `new_streams`, `streams_per_ip`,
    /// `streams_per_subject` or `connections` (the metric label).
    pub limit: &'static str,
    /// How long until the request could succeed.
    pub retry_after: Duration,
}

impl Limited {
    /// Builds the refusal and counts it in `herald_rate_limited_total{limit}`.
    pub(crate) fn new(limit: &'static str, retry_after: Duration) -> Self {
        metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
        Self { limit, retry_after }
    }

    /// The `Retry-After` value: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// Who a publish is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The token's `sub`.
    Subject(String),
    /// The client IP (IPv6 reduced to its /64), for anonymous requests.
    Ip(IpAddr),
}

impl LimitKey {
    /// The subject when the request has one, else the client IP.
    pub fn new(subject: Option<&str>, ip: IpAddr) -> Self {
        match subject {
            Some(sub) => LimitKey::Subject(sub.to_string()),
            None => LimitKey::Ip(ip_bucket(ip)),
        }
    }
}

type KeyedLimiter<K, C> =
    RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The live limiters, shared by every request (wrap in `Arc`).
///
/// Generic over the clock only so tests can drive time; production code uses
/// the default.
#[derive(Debug)]
pub struct Limits<C: Clock = DefaultClock> {
    clock: C,
    publish: Option<KeyedLimiter<LimitKey, C>>,
    /// Time for the publish burst to refill completely.
    publish_refill: Duration,
    new_streams: Option<KeyedLimiter<IpAddr, C>>,
    streams: Arc<StreamCounters>,
    trusted_proxies: Vec<IpNet>,
    stream_retry_after: Duration,
}

impl Limits {
    /// Builds the limiters from validated config.
    pub fn new(cfg: &LimitsConfig) -> Result<Self, LimitsConfigError> {
        Self::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// Builds the limiters on a given clock (tests use a fake one).
    pub fn with_clock(cfg: &LimitsConfig, clock: C) -> Result<Self, LimitsConfigError> {
        cfg.validate()?;
        Ok(Self {
            publish: keyed(cfg.publish_per_second, cfg.publish_burst, &clock),
            publish_refill: Duration::from_secs_f64(
                f64::from(cfg.publish_burst) / f64::from(cfg.publish_per_second.max(1)),
            ),
            new_streams: keyed(
                cfg.streams_per_ip_per_second,
                cfg.streams_per_ip_burst,
                &clock,
            ),
            streams: Arc::new(StreamCounters {
                max_total: cfg.max_connections,
                max_per_ip: cfg.max_streams_per_ip,
                max_per_subject: cfg.max_streams_per_subject,
                ..StreamCounters::default()
            }),
            trusted_proxies: cfg.trusted_proxies()?,
            stream_retry_after: Duration::from_secs(cfg.stream_retry_after_secs),
            clock,
        })
    }

    /// Charges one publish to `key`.
    pub fn check_publish(&self, key: &LimitKey) -> Result<(), Limited> {
        self.check_publish_n(key, 1)
    }

    /// Charges a batch of `n` publishes to `key`, all or nothing. A batch
    /// larger than the burst can never pass and is refused.
    pub fn check_publish_n(&self, key: &LimitKey, n: u32) -> Result<(), Limited> {
        let Some(limiter) = &self.publish else {
            return Ok(());
        };
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Limited::new(
                "publish",
                not_until.wait_time_from(self.clock.now()),
            )),
            // Larger than the burst, so never satisfiable: the best hint is
            // the time a full burst takes to refill.
            Err(_) => Err(Limited::new("publish", self.publish_refill)),
        }
    }

    /// Charges one new SSE stream to the client IP.
    pub fn check_new_stream(&self, ip: IpAddr) -> Result<(), Limited> {
        let Some(limiter) = &self.new_streams else {
            return Ok(());
        };
        limiter.check_key(&ip_bucket(ip)).map_err(|not_until| {
            Limited::new("new_streams", not_until.wait_time_from(self.clock.now()))
        })
    }

    /// Takes a slot for one open SSE stream, counted in total, per IP and per
    /// subject. Hold the permit for the life of the stream: dropping it
    /// frees the slots.
    pub fn acquire_stream(
        &self,
        ip: IpAddr,
        subject: Option<&str>,
    ) -> Result<StreamPermit, Limited> {
        self.streams.acquire(ip, subject, self.stream_retry_after)
    }

    /// Evicts rate-limiter keys that are back to a fresh state. Call it
    /// periodically (every 10–60 s) so limiter memory stays bounded.
    pub fn retain_recent(&self) {
        if let Some(l) = &self.publish {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.new_streams {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently held by the rate limiters and stream counters.
    pub fn tracked_keys(&self) -> usize {
        self.publish.as_ref().map_or(0, |l| l.len())
            + self.new_streams.as_ref().map_or(0, |l| l.len())
            + self.streams.per_ip.len()
            + self.streams.per_subject.len()
    }

    /// The configured cap on concurrent streams (`0` = none), for the
    /// `herald_connections_limit` gauge.
    pub fn max_connections(&self) -> usize {
        self.streams.max_total
    }

    /// Streams holding a permit right now.
    pub fn open_streams(&self) -> usize {
        self.streams.total.load(Ordering::Acquire)
    }

    /// The client IP of a request, trusting `X-Forwarded-For` only from the
    /// configured proxies (see [`client_ip`]).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted_proxies)
    }
}

/// A keyed limiter, or `None` when the rate or burst is zero (limit off).
fn keyed<K, C>(rate: u32, burst: u32, clock: &C) -> Option<KeyedLimiter<K, C>>
where
    K: std::hash::Hash + Eq + Clone,
    C: Clock + Clone,
{
    let (rate, burst) = (NonZeroU32::new(rate)?, NonZeroU32::new(burst)?);
    Some(RateLimiter::dashmap_with_clock(
        Quota::per_second(rate).allow_burst(burst),
        clock.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    fn limits(cfg: LimitsConfig) -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            Limits::with_clock(&cfg, clock.clone()).expect("valid"),
            clock,
        )
    }

    #[test]
    fn publish_burst_then_429_then_recovers() {
        let (l, clock) = limits(LimitsConfig {
            publish_per_second: 2,
            publish_burst: 3,
            ..LimitsConfig::default()
        });
        let alice = LimitKey::new(Some("alice"), ip("10.0.0.1"));
        for _ in 0..3 {
            l.check_publish(&alice).expect("within burst");
        }
        let err = l.check_publish(&alice).unwrap_err();
        // Its 429 `rate_limited` answer is tested where errors become
        // responses (src/http/error.rs).
        assert_eq!(err.limit, "publish");
        assert_eq!(err.retry_after, Duration::from_millis(500));
        assert_eq!(err.retry_after_secs(), 1);

        // Other keys are unaffected.
        l.check_publish(&LimitKey::new(Some("bob"), ip("10.0.0.1")))
            .expect("separate key");
        l.check_publish(&LimitKey::new(None, ip("10.0.0.1")))
            .expect("anonymous is keyed by IP");

        clock.advance(Duration::from_millis(500));
        l.check_publish(&alice).expect("one cell refilled");
        assert!(l.check_publish(&alice).is_err());
    }

    #[test]
    fn publish_batches_are_all_or_nothing() {
        let (l, clock) = limits(LimitsConfig {
            publish_per_second: 10,
            publish_burst: 10,
            ..LimitsConfig::default()
        });
        let key = LimitKey::new(Some("a"), ip("10.0.0.1"));
        l.check_publish_n(&key, 8).expect("fits");
        let err = l.check_publish_n(&key, 5).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_millis(300));
        l.check_publish_n(&key, 2).expect("what is left");
        assert!(
            l.check_publish_n(&key, 11).is_err(),
            "larger than the burst"
        );
        clock.advance(Duration::from_secs(1));
        l.check_publish_n(&key, 10).expect("refilled");
        l.check_publish_n(&key, 0).expect("empty batch is free");
    }

    #[test]
    fn new_streams_per_ip_with_ipv6_prefix() {
        let (l, clock) = limits(LimitsConfig {
            streams_per_ip_per_second: 1,
            streams_per_ip_burst: 2,
            ..LimitsConfig::default()
        });
        l.check_new_stream(ip("2001:db8::1")).expect("1");
        l.check_new_stream(ip("2001:db8::2")).expect("2: same /64");
        let err = l.check_new_stream(ip("2001:db8::3")).unwrap_err();
        assert_eq!(err.limit, "new_streams");
        assert_eq!(err.retry_after_secs(), 1);
        l.check_new_stream(ip("2001:db8:0:1::1"))
            .expect("another /64");
        l.check_new_stream(ip("192.0.2.1")).expect("another IP");
        clock.advance(Duration::from_secs(1));
        l.check_new_stream(ip("2001:db8::4")).expect("refilled");
    }

    #[test]
    fn zero_rate_disables_the_limiter() {
        let (l, _) = limits(LimitsConfig {
            publish_per_second: 0,
            streams_per_ip_per_second: 0,
            ..LimitsConfig::default()
        });
        let key = LimitKey::new(None, ip("10.0.0.1"));
        for _ in 0..100_000 {
            l.check_publish(&key).expect("unlimited");
        }
        l.check_new_stream(ip("10.0.0.1")).expect("unlimited");
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn retain_recent_evicts_idle_keys() {
        let (l, clock) = limits(LimitsConfig {
            publish_per_second: 10,
            publish_burst: 10,
            streams_per_ip_per_second: 10,
            streams_per_ip_burst: 10,
            ..LimitsConfig::default()
        });
        for i in 0..100u8 {
            l.check_publish(&LimitKey::new(None, IpAddr::from([10, 0, 0, i])))
                .expect("fresh key");
            l.check_new_stream(IpAddr::from([10, 0, 1, i]))
                .expect("fresh key");
        }
        assert_eq!(l.tracked_keys(), 200);
        l.retain_recent();
        assert_eq!(l.tracked_keys(), 200, "keys still recovering stay");
        clock.advance(Duration::from_secs(2));
        l.retain_recent();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn stream_caps_hold_and_release() {
        let (l, _) = limits(LimitsConfig {
            max_streams_per_ip: 2,
            max_streams_per_subject: 3,
            max_connections: 5,
            stream_retry_after_secs: 7,
            ..LimitsConfig::default()
        });
        let a = ip("10.0.0.1");
        let p1 = l.acquire_stream(a, None).expect("1");
        let p2 = l.acquire_stream(a, Some("alice")).expect("2");
        let err = l.acquire_stream(a, None).unwrap_err();
        assert_eq!(err.limit, "streams_per_ip");
        assert_eq!(err.retry_after_secs(), 7);
        assert_eq!(l.open_streams(), 2, "a refusal leaks no slot");

        let p3 = l.acquire_stream(ip("10.0.0.2"), Some("alice")).expect("3");
        let p4 = l.acquire_stream(ip("10.0.0.3"), Some("alice")).expect("4");
        let err = l.acquire_stream(ip("10.0.0.4"), Some("alice")).unwrap_err();
        assert_eq!(err.limit, "streams_per_subject");
        let p5 = l.acquire_stream(ip("10.0.0.4"), Some("bob")).expect("5");
        let err = l.acquire_stream(ip("10.0.0.5"), None).unwrap_err();
        assert_eq!(err.limit, "connections");
        assert_eq!(l.open_streams(), 5);
        // The subject refusal for 10.0.0.4 gave its IP slot back.
        assert_eq!(l.streams.per_ip.get(&ip("10.0.0.4")).map(|v| *v), Some(1));

        drop(p2);
        let p6 = l.acquire_stream(a, None).expect("a slot came back");
        for p in [p1, p3, p4, p5, p6] {
            drop(p);
        }
        assert_eq!(l.open_streams(), 0);
        assert_eq!(l.tracked_keys(), 0, "zero counts are removed");
    }

    #[test]
    fn stream_caps_are_exact_under_concurrency() {
        let (l, _) = limits(LimitsConfig {
            max_streams_per_ip: 0,
            max_connections: 100,
            ..LimitsConfig::default()
        });
        let l = Arc::new(l);
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..50 {
                        if let Ok(p) = l.acquire_stream(IpAddr::from([10, 0, 0, t]), Some("s")) {
                            held.push(p);
                        }
                    }
                    held
                })
            })
            .collect();
        let held: Vec<StreamPermit> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(held.len(), 100);
        assert_eq!(l.open_streams(), 100);
        drop(held);
        assert_eq!(l.open_streams(), 0);
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |ms| {
            Limited {
                limit: "publish",
                retry_after: Duration::from_millis(ms),
            }
            .retry_after_secs()
        };
        assert_eq!(secs(0), 1);
        assert_eq!(secs(1), 1);
        assert_eq!(secs(1000), 1);
        assert_eq!(secs(1001), 2);
        assert_eq!(secs(59_500), 60);
    }

    #[test]
    fn development_defaults_fit_the_bench() {
        let (l, _) = limits(LimitsConfig::default());
        let local = ip("127.0.0.1");
        let mut held = Vec::with_capacity(19_000);
        for _ in 0..19_000 {
            l.check_new_stream(local).expect("bench connects");
            held.push(l.acquire_stream(local, None).expect("bench holds"));
        }
        let key = LimitKey::new(None, local);
        for _ in 0..1_000 {
            l.check_publish(&key)
                .expect("bench publishes one second's worth");
        }
    }
}
