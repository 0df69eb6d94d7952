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

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;

use crate::telemetry::metrics::RATE_LIMITED;

/// Rate and connection limit settings (`[limits]`).
///
/// The defaults are the development values: generous enough that
/// `herald bench` over loopback holds 19,000 subscribers from one IP and
/// publishes 1,000 events/s without touching a limit. Suggested production
/// values are given on each field.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained publishes per second per subject (or per IP when anonymous);
    /// `0` disables the limit. Env `HERALD_LIMITS__PUBLISH_PER_SECOND`.
    /// Production: about 50.
    pub publish_per_second: u32,
    /// Publishes a key may make at once before the rate applies. A batch of
    /// `n` events costs `n`; a batch larger than this is always refused, so
    /// keep `http.max_batch_events` at or below it.
    /// Env `HERALD_LIMITS__PUBLISH_BURST`. Production: about 1000.
    pub publish_burst: u32,
    /// Sustained new SSE streams per second per client IP; `0` disables.
    /// Production: about 5.
    pub streams_per_ip_per_second: u32,
    /// New SSE streams one IP may open at once. Production: about 50.
    pub streams_per_ip_burst: u32,
    /// Concurrent SSE streams per client IP; `0` disables. Production: a few
    /// hundred, more if many users share one NAT address.
    pub max_streams_per_ip: usize,
    /// Concurrent SSE streams per token subject; `0` disables.
    /// Production: about 20.
    pub max_streams_per_subject: usize,
    /// Concurrent SSE streams in total; `0` disables. Size it to memory
    /// (roughly 10–20 KiB per idle stream) and file descriptors.
    pub max_connections: usize,
    /// `Retry-After` sent when a concurrent-stream cap refuses a stream.
    pub stream_retry_after_secs: u64,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR
    /// blocks, e.g. `["10.0.0.0/8", "::1"]`. Empty: the socket peer is the
    /// client.
    pub trusted_proxies: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            publish_per_second: 10_000,
            publish_burst: 20_000,
            streams_per_ip_per_second: 10_000,
            streams_per_ip_burst: 20_000,
            max_streams_per_ip: 100_000,
            max_streams_per_subject: 100_000,
            max_connections: 50_000,
            stream_retry_after_secs: 5,
            trusted_proxies: Vec::new(),
        }
    }
}

impl LimitsConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.publish_per_second > 0 && self.publish_burst == 0 {
            return Err("publish_burst must be at least 1 when publish_per_second is set".into());
        }
        if self.streams_per_ip_per_second > 0 && self.streams_per_ip_burst == 0 {
            return Err(
                "streams_per_ip_burst must be at least 1 when streams_per_ip_per_second is set"
                    .into(),
            );
        }
        if self.stream_retry_after_secs == 0 {
            return Err("stream_retry_after_secs must be at least 1".into());
        }
        parse_proxies(&self.trusted_proxies)?;
        Ok(())
    }
}

fn parse_proxies(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|s| IpNet::from_str(s).map_err(|e| format!("trusted_proxies: {e}")))
        .collect()
}

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
    fn new(limit: &'static str, retry_after: Duration) -> Self {
        metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
        Self { limit, retry_after }
    }

    /// Stable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        "rate_limited"
    }

    /// Always 429 Too Many Requests.
    pub fn status(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
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

/// Open-stream counts, shared with every [`StreamPermit`].
#[derive(Debug, Default)]
struct StreamCounters {
    total: AtomicUsize,
    max_total: usize,
    per_ip: DashMap<IpAddr, usize>,
    max_per_ip: usize,
    per_subject: DashMap<String, usize>,
    max_per_subject: usize,
}

impl Limits {
    /// Builds the limiters from validated config.
    pub fn new(cfg: &LimitsConfig) -> Result<Self, String> {
        Self::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// Builds the limiters on a given clock (tests use a fake one).
    pub fn with_clock(cfg: &LimitsConfig, clock: C) -> Result<Self, String> {
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
            trusted_proxies: parse_proxies(&cfg.trusted_proxies)?,
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
        let counters = &self.streams;
        let prev = counters.total.fetch_add(1, Ordering::AcqRel);
        // The permit owns every slot taken so far, so dropping it on an early
        // return gives back exactly those.
        let mut permit = StreamPermit {
            counters: Arc::clone(counters),
            ip: None,
            subject: None,
        };
        if counters.max_total > 0 && prev >= counters.max_total {
            drop(permit);
            return Err(Limited::new("connections", self.stream_retry_after));
        }
        if counters.max_per_ip > 0 {
            let ip = ip_bucket(ip);
            if !take_slot(&counters.per_ip, ip, counters.max_per_ip) {
                drop(permit);
                return Err(Limited::new("streams_per_ip", self.stream_retry_after));
            }
            permit.ip = Some(ip);
        }
        if counters.max_per_subject > 0
            && let Some(sub) = subject
        {
            if !take_slot(
                &counters.per_subject,
                sub.to_string(),
                counters.max_per_subject,
            ) {
                drop(permit);
                return Err(Limited::new("streams_per_subject", self.stream_retry_after));
            }
            permit.subject = Some(sub.to_string());
        }
        Ok(permit)
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

/// Increments `key`'s count unless it is at `max`.
fn take_slot<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, key: K, max: usize) -> bool {
    match map.entry(key) {
        Entry::Occupied(mut e) => {
            if *e.get() >= max {
                return false;
            }
            *e.get_mut() += 1;
        }
        Entry::Vacant(e) => {
            e.insert(1);
        }
    }
    true
}

/// Decrements `key`'s count, removing the entry at zero.
fn give_slot<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, key: K) {
    if let Entry::Occupied(mut e) = map.entry(key) {
        if *e.get() <= 1 {
            e.remove();
        } else {
            *e.get_mut() -= 1;
        }
    }
}

/// One open stream's slots; dropping it gives them back.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct StreamPermit {
    counters: Arc<StreamCounters>,
    ip: Option<IpAddr>,
    subject: Option<String>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.counters.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip.take() {
            give_slot(&self.counters.per_ip, ip);
        }
        if let Some(sub) = self.subject.take() {
            give_slot(&self.counters.per_subject, sub);
        }
    }
}

/// The address limits are keyed on: IPv4 as is, IPv4-mapped IPv6 as IPv4,
/// other IPv6 reduced to its /64 prefix.
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// An IP network in CIDR notation, e.g. `10.0.0.0/8`; a bare address is a
/// single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// True when `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr = IpAddr::from_str(addr)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        };
        Ok(Self { addr, prefix })
    }
}

/// The client's IP: the socket peer, unless the peer is a trusted proxy.
/// Then `X-Forwarded-For` is read from the right (the entry closest to us),
/// skipping trusted proxies, and the first untrusted address is the client.
/// If every entry is trusted, the left-most one is used; if an entry cannot
/// be parsed, the last trusted hop before it is used, so a forged header can
/// never name an arbitrary address.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut client = peer.ip().to_canonical();
    if !is_trusted(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        if !is_trusted(ip) {
            return ip;
        }
        client = ip;
    }
    client
}

/// Parses one `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:80`, `::1` or `[::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    IpAddr::from_str(hop)
        .ok()
        .or_else(|| SocketAddr::from_str(hop).ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
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
        assert_eq!((err.limit, err.code()), ("publish", "rate_limited"));
        assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
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
    fn cidr_parsing_and_matching() {
        let net: IpNet = "10.0.0.0/8".parse().expect("cidr");
        assert!(net.contains(ip("10.255.1.2")));
        assert!(net.contains(ip("::ffff:10.1.1.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::1")));
        let host: IpNet = "192.0.2.7".parse().expect("host");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6: IpNet = "fd00::/8".parse().expect("v6");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: IpNet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let xff = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_str(v).expect("ascii"));
            h
        };
        let proxy: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        let stranger: SocketAddr = "203.0.113.9:5000".parse().expect("addr");

        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(stranger, &xff("1.1.1.1"), &trusted),
            ip("203.0.113.9")
        );
        // From a proxy: the right-most untrusted entry, not the spoofable left one.
        assert_eq!(
            client_ip(proxy, &xff("6.6.6.6, 198.51.100.4, 10.0.0.2"), &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(proxy, &xff("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(proxy, &xff("198.51.100.4:80"), &trusted),
            ip("198.51.100.4")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(proxy, &xff("198.51.100.4, junk, 10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
        // All trusted: the left-most.
        assert_eq!(
            client_ip(proxy, &xff("10.1.1.1, 10.0.0.2"), &trusted),
            ip("10.1.1.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Several header lines read as one list.
        let mut two = xff("198.51.100.4");
        two.append("x-forwarded-for", HeaderValue::from_static("10.0.0.3"));
        assert_eq!(client_ip(proxy, &two, &trusted), ip("198.51.100.4"));
        // No proxies configured: always the peer; mapped v4 peers are canonical.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:80".parse().expect("addr");
        assert_eq!(client_ip(mapped, &xff("1.1.1.1"), &[]), ip("192.0.2.1"));
    }

    #[test]
    fn ip_buckets() {
        assert_eq!(ip_bucket(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(ip_bucket(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(ip_bucket(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn validate_refuses_what_cannot_work() {
        assert!(LimitsConfig::default().validate().is_ok());
        let bad = [
            LimitsConfig {
                publish_burst: 0,
                ..LimitsConfig::default()
            },
            LimitsConfig {
                streams_per_ip_burst: 0,
                ..LimitsConfig::default()
            },
            LimitsConfig {
                stream_retry_after_secs: 0,
                ..LimitsConfig::default()
            },
            LimitsConfig {
                trusted_proxies: vec!["10.0.0.0/99".into()],
                ..LimitsConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
        let off = LimitsConfig {
            publish_per_second: 0,
            publish_burst: 0,
            ..LimitsConfig::default()
        };
        assert!(off.validate().is_ok());
    }

    #[test]
    fn env_keys_map_onto_fields() {
        let env = [
            ("HERALD_LIMITS__PUBLISH_PER_SECOND", "7"),
            ("HERALD_LIMITS__PUBLISH_BURST", "9"),
            ("HERALD_LIMITS__MAX_CONNECTIONS", "11"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = crate::config::Config::load(None, env).expect("valid");
        assert_eq!(cfg.limits.publish_per_second, 7);
        assert_eq!(cfg.limits.publish_burst, 9);
        assert_eq!(cfg.limits.max_connections, 11);
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
