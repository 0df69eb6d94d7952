//! The Redis broker: many replicas behave as one.
//!
//! - **Ids from Redis, never from a clock.** One Lua script per publish
//!   (`publish.lua`) takes the next seqs from one global counter, appends
//!   the events to the channel's stream (trimmed to the ring size), records
//!   an idempotency key, and publishes the batch on one pub/sub channel.
//!   Scripts run one at a time, so seq order and pub/sub order agree. The
//!   epoch lives in Redis too: when Redis loses its data, the next script
//!   starts a new one, and clients with old ids get `unknown_epoch`.
//! - **Delivery** (`link`): each replica reads that one pub/sub channel,
//!   so it receives every batch in seq order with consecutive seqs, and
//!   hands them to the hub ([`Hub::apply`]), which keeps a ring per local
//!   channel as a cache of the stream. A missing seq, a dropped connection
//!   or a new epoch makes the replica resync: it re-reads every local
//!   channel's stream up to Redis's current seq before it moves
//!   `committed` again, and channels whose history is gone get
//!   `herald.reset`.
//! - **New channels** are filled from their stream before anyone reads
//!   them; why history then meets live events with nothing lost or
//!   repeated is written down in [`crate::hub::remote`].
//!
//! Every key carries the hash tag `{prefix}`, so a deployment's keys live
//! in one slot. The cost of one id space across channels is that every
//! publish goes through one Redis; see the README for figures.

mod connect;
mod link;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::Script;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use connect::Connector;
pub use connect::LinkError;

use super::{BrokerConfig, BrokerError, PublishRequest, Published, metrics as bm};
use crate::hub::remote::{FillPlan, History};
use crate::hub::{EventId, Hub, Resume, Subscription};

/// Redis key names for one deployment.
#[derive(Debug, Clone)]
struct Keys {
    seq: String,
    epoch: String,
    high_water: String,
    floor: String,
    stream_prefix: String,
    idempotency_prefix: String,
    events: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let tag = format!("{{{prefix}}}");
        Self {
            seq: format!("{tag}:seq"),
            epoch: format!("{tag}:epoch"),
            high_water: format!("{tag}:hw"),
            floor: format!("{tag}:floor"),
            stream_prefix: format!("{tag}:s:"),
            idempotency_prefix: format!("{tag}:i:"),
            events: format!("{tag}:events"),
        }
    }

    fn stream(&self, channel: &str) -> String {
        format!("{}{channel}", self.stream_prefix)
    }
}

/// The scripts, loaded once per connection (EVALSHA, with a fallback).
struct Scripts {
    publish: Script,
    history: Script,
    state: Script,
    sweep: Script,
}

/// The Redis broker. Cheap to share (`Arc`).
pub struct RedisBroker {
    hub: Hub,
    redis: Connector,
    keys: Keys,
    scripts: Scripts,
    ring_size: usize,
    history_ttl_secs: u64,
    idempotency_window_secs: u64,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("keys", &self.keys)
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Builds the broker over a remote-mode hub; nothing connects until
    /// [`RedisBroker::spawn_link`].
    pub fn new(cfg: &BrokerConfig, hub: Hub) -> Result<Self, LinkError> {
        let ring_size = hub.settings().ring_size;
        Ok(Self {
            redis: Connector::new(cfg)?,
            keys: Keys::new(&cfg.key_prefix),
            scripts: Scripts {
                publish: Script::new(concat!(
                    include_str!("epoch.lua"),
                    include_str!("publish.lua")
                )),
                history: Script::new(include_str!("history.lua")),
                state: Script::new(concat!(
                    include_str!("epoch.lua"),
                    include_str!("state.lua")
                )),
                sweep: Script::new(include_str!("sweep.lua")),
            },
            ring_size,
            history_ttl_secs: cfg.history_ttl_secs,
            idempotency_window_secs: cfg.idempotency_window_secs,
            hub,
        })
    }

    /// The hub this replica serves its subscribers from.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Starts the link task (pub/sub, resyncs, sweeping).
    pub fn spawn_link(self: &Arc<Self>, tracker: &TaskTracker, shutdown: CancellationToken) {
        tracker.spawn(link::run(Arc::clone(self), shutdown));
    }

    /// Publishes through the script; answers within the command timeout.
    pub async fn publish(&self, req: PublishRequest<'_>) -> Result<Published, BrokerError> {
        let body = wire::encode_body(req.channel, &req.events, req.trace.as_ref());
        let mut invocation = self.scripts.publish.prepare_invoke();
        let idem = req.idempotency.as_ref();
        invocation
            .key(&self.keys.seq)
            .key(&self.keys.epoch)
            .key(self.keys.stream(req.channel))
            .key(&self.keys.high_water)
            .key(&self.keys.floor)
            .key(format!(
                "{}{}",
                self.keys.idempotency_prefix,
                idem.map_or("-", |k| k.scoped.as_str())
            ))
            .arg(req.channel)
            .arg(if idem.is_some() { "1" } else { "0" })
            .arg(self.idempotency_window_secs)
            .arg(idem.map_or("", |k| k.fingerprint.as_str()))
            .arg(self.ring_size)
            .arg(self.history_ttl_secs)
            .arg(&self.keys.events)
            .arg(body)
            .arg(req.events.len());
        for e in &req.events {
            invocation
                .arg(e.event_type.as_deref().unwrap_or(""))
                .arg(&e.data)
                .arg(if e.data_is_json { "1" } else { "0" });
        }
        let reply: Vec<String> = self
            .command(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
            .map_err(|e| unavailable("publish", &e))?;
        let [epoch, first, count, outcome] = reply.as_slice() else {
            return Err(unavailable(
                "publish",
                &LinkError::Protocol(format!("{reply:?}")),
            ));
        };
        let parse = |s: &str| s.parse::<u64>().ok();
        let (Some(epoch), Some(first), Some(count)) = (parse(epoch), parse(first), parse(count))
        else {
            return Err(unavailable(
                "publish",
                &LinkError::Protocol(format!("{reply:?}")),
            ));
        };
        if outcome == "conflict" {
            return Err(BrokerError::IdempotencyConflict);
        }
        let ids = (first..first + count)
            .map(|seq| EventId { epoch, seq })
            .collect();
        Ok(Published {
            ids,
            replayed: outcome == "replayed",
        })
    }

    /// Subscribes once the link is synced and every channel is filled.
    pub async fn subscribe(
        &self,
        channels: &[String],
        resume: Resume<'_>,
        envelope: bool,
    ) -> Result<Subscription, BrokerError> {
        let patience = self.redis.command_timeout() * 3;
        let until = tokio::time::Instant::now() + patience;
        if !self.hub.wait_synced(until).await {
            return Err(BrokerError::Unavailable(
                "the link to Redis is down; retry shortly".into(),
            ));
        }
        // An id another replica delivered may not have reached this one yet.
        if let Resume::After(raw) = resume
            && let Ok(id) = EventId::parse(raw)
            && id.epoch == self.hub.epoch()
        {
            self.hub
                .wait_committed(id.seq, self.redis.command_timeout())
                .await;
        }
        let joined = self.hub.join(channels);
        let fills = Hub::unready(&joined).into_iter().map(|channel| async move {
            loop {
                if let Some(plan) = self.hub.begin_fill(&channel) {
                    if self.fill(plan).await {
                        return true;
                    }
                } else if self.hub.wait_filled(&channel, until).await {
                    return true;
                }
                if tokio::time::Instant::now() >= until {
                    return false;
                }
                // Abandoned, stale, or the link is resyncing: once more.
                let _ = self.hub.wait_synced(until).await;
            }
        });
        if !join_all(fills).await.into_iter().all(|ok| ok) {
            self.hub.leave_all(joined);
            return Err(BrokerError::Unavailable(
                "could not read the channel history from Redis; retry shortly".into(),
            ));
        }
        Ok(self.hub.start(joined, resume, envelope))
    }

    /// Reads a channel's history up to the plan's snapshot into its ring.
    async fn fill(&self, plan: FillPlan) -> bool {
        let started = Instant::now();
        match self
            .read_history(plan.channel.name(), plan.snapshot, 0)
            .await
        {
            Ok(history) => {
                let filled = self.hub.complete_fill(plan, history).is_ok();
                tracing::debug!(elapsed = ?started.elapsed(), filled, "channel filled from Redis");
                filled
            }
            Err(e) => {
                bm::error("fill");
                tracing::warn!(error = %e, "cannot read a channel's history from Redis");
                self.hub.abandon_fill(plan);
                false
            }
        }
    }

    /// A channel's newest events with seqs in `(after, upto]`, at most the
    /// ring size, and the seq below which its history is gone.
    async fn read_history(
        &self,
        channel: &str,
        upto: u64,
        after: u64,
    ) -> Result<History, LinkError> {
        let mut invocation = self.scripts.history.prepare_invoke();
        invocation
            .key(self.keys.stream(channel))
            .key(&self.keys.high_water)
            .key(&self.keys.floor)
            .arg(channel)
            .arg(upto)
            .arg(after + 1)
            .arg(self.ring_size + 1);
        let reply: redis::Value = self
            .command(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        wire::parse_history(&reply, upto, self.ring_size)
    }

    /// Redis's epoch and newest seq (creating the epoch if Redis has none).
    async fn state(&self) -> Result<(u64, u64), LinkError> {
        let mut invocation = self.scripts.state.prepare_invoke();
        invocation.key(&self.keys.seq).key(&self.keys.epoch);
        let reply: Vec<String> = self
            .command(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        match reply.as_slice() {
            [epoch, seq] => match (epoch.parse(), seq.parse()) {
                (Ok(epoch), Ok(seq)) => Ok((epoch, seq)),
                _ => Err(LinkError::Protocol(format!("{reply:?}"))),
            },
            _ => Err(LinkError::Protocol(format!("{reply:?}"))),
        }
    }

    /// Runs one command on the shared connection within the command
    /// timeout; a failure drops the connection so the next one reconnects.
    async fn command<T, F, Fut>(&self, run: F) -> Result<T, LinkError>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let timeout = self.redis.command_timeout();
        let attempt = async {
            let conn = self.redis.commands().await?;
            Ok::<_, LinkError>(run(conn).await?)
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(LinkError::Timeout(timeout)),
        };
        if result.is_err() {
            self.redis.reset_commands();
        }
        result
    }
}

fn unavailable(op: &'static str, e: &LinkError) -> BrokerError {
    bm::error(op);
    tracing::warn!(op, error = %e, "Redis broker operation failed");
    BrokerError::Unavailable(format!("the broker is unavailable: {e}"))
}

/// The backoff between reconnect attempts.
fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.min(5));
    Duration::from_millis(ms.min(2000) + fastrand::u64(0..100))
}
