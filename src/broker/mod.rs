//! Where events are sequenced and carried, behind one small interface:
//! publish (which assigns ids), subscribe (history, then live), and
//! readiness. The core (`hub`) knows nothing of Redis, as it knows nothing
//! of HTTP.
//!
//! - [`Broker::Memory`]: the embedded default. The hub's own sequencer
//!   assigns seqs; one replica.
//! - [`Broker::Redis`]: Redis assigns seqs and carries events between
//!   replicas, which then behave as one (see [`redis`]).
//!
//! Both honour `Idempotency-Key` ([`idempotency`]) and record the same
//! metrics.

mod config;
pub mod idempotency;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{BrokerConfig, BrokerConfigError, BrokerKind, redact_url};
use idempotency::{IdempotencyCache, IdempotencyKey, SeenOrError};

use crate::hub::{EventId, Hub, HubError, HubSettings, NewEvent, Resume, Subscription};

/// One publish, validated.
#[derive(Debug)]
pub struct PublishRequest<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The events, in order.
    pub events: Vec<NewEvent>,
    /// The request's `Idempotency-Key`, scoped and fingerprinted.
    pub idempotency: Option<IdempotencyKey>,
    /// The publish span's context, for fan-out span links.
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

/// What a publish returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The events' ids.
    pub ids: Vec<EventId>,
    /// The ids of an earlier publish with the same `Idempotency-Key`:
    /// nothing new was published.
    pub replayed: bool,
}

/// Why the broker refused.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The core refused (bad channel, capacity...).
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The broker cannot be reached right now; nothing was published.
    #[error("{0}")]
    Unavailable(String),
    /// The `Idempotency-Key` was used with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
}

/// The memory broker: the hub's own sequencer, plus idempotency.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Hub,
    seen: IdempotencyCache,
}

/// The configured broker.
#[derive(Debug, Clone)]
pub enum Broker {
    /// One replica, everything in this process.
    Memory(Arc<MemoryBroker>),
    /// Many replicas over Redis.
    Redis(Arc<redis::RedisBroker>),
}

/// Why a broker could not be built.
#[derive(Debug, thiserror::Error)]
#[error("broker: {0}")]
pub struct BrokerSetupError(#[from] redis::LinkError);

impl Broker {
    /// Builds the broker `cfg` names over a hub with `settings` (nothing
    /// connects yet: see [`Broker::start`]).
    pub fn new(cfg: &BrokerConfig, settings: HubSettings) -> Result<Self, BrokerSetupError> {
        metrics::init(cfg.kind);
        Ok(match cfg.kind {
            BrokerKind::Memory => Self::Memory(Arc::new(MemoryBroker {
                hub: Hub::new(settings),
                seen: IdempotencyCache::new(
                    Duration::from_secs(cfg.idempotency_window_secs),
                    cfg.idempotency_max_keys,
                ),
            })),
            BrokerKind::Redis => Self::Redis(Arc::new(redis::RedisBroker::new(
                cfg,
                Hub::new_remote(settings),
            )?)),
        })
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        match self {
            Self::Memory(_) => BrokerKind::Memory,
            Self::Redis(_) => BrokerKind::Redis,
        }
    }

    /// The hub local subscribers read from.
    pub fn hub(&self) -> &Hub {
        match self {
            Self::Memory(m) => &m.hub,
            Self::Redis(r) => r.hub(),
        }
    }

    /// Starts background work (the Redis link).
    pub fn start(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        if let Self::Redis(r) = self {
            r.spawn_link(tracker, shutdown);
        }
    }

    /// Whether the broker can serve (the Redis link is synced).
    pub fn is_ready(&self) -> bool {
        self.hub().is_synced()
    }

    /// Publishes events to one channel; all get consecutive ids, or none is
    /// published.
    pub async fn publish(&self, req: PublishRequest<'_>) -> Result<Published, BrokerError> {
        let started = Instant::now();
        let result = match self {
            Self::Memory(m) => m.publish(req),
            // Boxed: the Redis round trip is a large future, which would
            // otherwise size every publish's future, memory broker included.
            Self::Redis(r) => Box::pin(r.publish(req)).await,
        };
        metrics::publish_took(started.elapsed());
        match &result {
            Ok(p) if p.replayed => metrics::idempotent("replayed"),
            Err(BrokerError::IdempotencyConflict) => metrics::idempotent("conflict"),
            _ => {}
        }
        result
    }

    /// Subscribes to channels (validated, de-duplicated).
    pub async fn subscribe(
        &self,
        channels: &[String],
        resume: Resume<'_>,
        envelope: bool,
    ) -> Result<Subscription, BrokerError> {
        match self {
            Self::Memory(m) => Ok(m.hub.subscribe(channels, resume, envelope)?),
            Self::Redis(r) => r.subscribe(channels, resume, envelope).await,
        }
    }
}

impl MemoryBroker {
    fn publish(&self, req: PublishRequest<'_>) -> Result<Published, BrokerError> {
        let PublishRequest {
            channel,
            events,
            idempotency,
            trace,
        } = req;
        let Some(key) = idempotency else {
            let ids = self.hub.publish(channel, events, trace)?;
            return Ok(Published {
                ids,
                replayed: false,
            });
        };
        match self
            .seen
            .once(&key, || self.hub.publish(channel, events, trace))
        {
            Ok((ids, replayed)) => Ok(Published { ids, replayed }),
            Err(SeenOrError::Conflict) => Err(BrokerError::IdempotencyConflict),
            Err(SeenOrError::Publish(e)) => Err(e.into()),
        }
    }
}

/// The broker's metrics, the same for both kinds.
pub(crate) mod metrics {
    use std::sync::OnceLock;
    use std::time::Duration;

    use crate::broker::BrokerKind;
    use crate::telemetry::metrics as m;

    /// Every `op` label of `herald_broker_errors_total`.
    const OPS: &[&str] = &["publish", "fill", "link", "sweep"];
    /// Every `result` label of `herald_broker_resyncs_total`.
    const RESYNCS: &[&str] = &["complete", "reset", "error"];

    static KIND: OnceLock<&'static str> = OnceLock::new();
    /// The publish-duration handle, made once (no registry lookup per
    /// publish); the recorder is installed before any broker is built.
    static PUBLISH_DURATION: OnceLock<metrics::Histogram> = OnceLock::new();

    fn kind() -> &'static str {
        KIND.get().copied().unwrap_or("memory")
    }

    /// Registers every series at zero, so dashboards see them from the start.
    pub(crate) fn init(kind: BrokerKind) {
        let _ = KIND.set(kind.as_str());
        for op in OPS {
            metrics::counter!(m::BROKER_ERRORS, "op" => *op).increment(0);
        }
        for result in RESYNCS {
            metrics::counter!(m::BROKER_RESYNCS, "result" => *result).increment(0);
        }
        for result in ["replayed", "conflict"] {
            metrics::counter!(m::IDEMPOTENT_PUBLISHES, "result" => result).increment(0);
        }
        set_up(kind == BrokerKind::Memory);
    }

    /// `herald_broker_up`.
    pub(crate) fn set_up(up: bool) {
        metrics::gauge!(m::BROKER_UP, "broker" => kind()).set(if up { 1.0 } else { 0.0 });
    }

    /// `herald_broker_errors_total{op}`.
    pub(crate) fn error(op: &'static str) {
        metrics::counter!(m::BROKER_ERRORS, "op" => op).increment(1);
    }

    /// `herald_broker_resyncs_total{result}`.
    pub(crate) fn resync(result: &'static str) {
        metrics::counter!(m::BROKER_RESYNCS, "result" => result).increment(1);
    }

    /// `herald_broker_publish_duration_seconds`.
    pub(crate) fn publish_took(d: Duration) {
        PUBLISH_DURATION
            .get_or_init(|| metrics::histogram!(m::BROKER_PUBLISH_DURATION, "broker" => kind()))
            .record(d.as_secs_f64());
    }

    /// `herald_idempotent_publishes_total{result}`.
    pub(crate) fn idempotent(result: &'static str) {
        metrics::counter!(m::IDEMPOTENT_PUBLISHES, "result" => result).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubConfig;

    /// A publish through the memory broker stays a small future. The Redis
    /// round trip is boxed: unboxed, it sized every publish's future, and a
    /// publish connection's future grew to 33 KB, copied in part on every
    /// request (see README, publish throughput).
    #[test]
    fn a_memory_publish_is_a_small_future() {
        let settings = HubSettings::from_config(&HubConfig::default(), 64 * 1024, 0);
        let broker = Broker::new(&BrokerConfig::default(), settings).expect("memory broker");
        let publish = broker.publish(PublishRequest {
            channel: "news",
            events: Vec::new(),
            idempotency: None,
            trace: None,
        });
        let size = std::mem::size_of_val(&publish);
        assert!(size <= 512, "the publish future is {size} bytes");
    }
}
