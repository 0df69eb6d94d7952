//! The link: one pub/sub connection per replica, subscribed to the one
//! events channel, feeding every batch to the hub in seq order.
//!
//! Redis pub/sub is at-most-once: a dropped connection loses what was
//! published meanwhile, silently. So the link never trusts it alone:
//!
//! 1. **Sync.** Subscribe first, then read Redis's epoch and newest seq `S`
//!    (anything published after that read arrives on the new connection),
//!    then re-read every ready local channel's stream after the newest seq
//!    its ring holds, up to `S`. Channels whose stream no longer reaches
//!    back that far learn it (`evicted_through`) and their subscribers get
//!    `herald.reset`. Only then does `committed` move to `S`; until then
//!    subscribers wait, and no fill starts.
//! 2. **Follow.** Batches arrive with consecutive seqs (every publish goes
//!    through the one channel). A batch at or below `committed` is a
//!    duplicate from the overlap; a batch past `committed + 1` means one
//!    was lost, and a batch of another epoch means Redis lost its data:
//!    both start a new sync, as does a dropped connection or a PING that
//!    goes unanswered.
//!
//! The link also sweeps expired channels out of the high-water hash.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::connect::LinkError;
use super::{RedisBroker, backoff, wire};
use crate::broker::metrics as bm;
use crate::hub::remote::Applied;

/// How often an idle link checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How often a slice of the high-water hash is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Channels re-read at once during a sync.
const SYNC_CONCURRENCY: usize = 32;

/// Why following stopped.
enum Stopped {
    Shutdown,
    Resync(&'static str),
}

/// Runs until `shutdown`: sync, follow, and again after any break.
pub(super) async fn run(broker: Arc<RedisBroker>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    let mut sweep_cursor = String::from("0");
    loop {
        broker.hub.begin_resync();
        bm::set_up(false);
        let synced = tokio::select! {
            () = shutdown.cancelled() => return,
            synced = sync(&broker) => synced,
        };
        match synced {
            Ok(pubsub) => {
                failures = 0;
                bm::set_up(true);
                match follow(&broker, pubsub, &shutdown, &mut sweep_cursor).await {
                    Stopped::Shutdown => return,
                    Stopped::Resync(why) => {
                        tracing::warn!(why, "Redis link broken; resyncing");
                    }
                }
            }
            Err(e) => {
                bm::error("link");
                bm::resync("error");
                let wait = backoff(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?wait, "cannot sync with Redis");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Subscribes, then brings every ready ring up to Redis's newest seq.
async fn sync(broker: &RedisBroker) -> Result<redis::aio::PubSub, LinkError> {
    let redis = &broker.redis;
    let mut pubsub = redis.pubsub().await?;
    redis
        .bounded(
            redis.command_timeout(),
            pubsub.subscribe(&broker.keys.events),
        )
        .await??;
    let (epoch, newest) = broker.state().await?;
    let hub = &broker.hub;
    if epoch != hub.epoch() {
        if hub.epoch() != 0 {
            tracing::warn!(
                old = hub.epoch(),
                new = epoch,
                "Redis lost its history: a new epoch begins; subscribers get herald.reset"
            );
        }
        hub.switch_epoch(epoch);
    }
    let channels = hub.ready_channels();
    let mut lost = 0usize;
    for chunk in channels.chunks(SYNC_CONCURRENCY) {
        let reads = chunk.iter().map(|(name, high)| async move {
            let history = broker.read_history(name, newest, *high).await?;
            let lost = history.evicted_through > *high;
            hub.resync_channel(name, history);
            Ok::<bool, LinkError>(lost)
        });
        for read in join_all(reads).await {
            lost += usize::from(read?);
        }
    }
    hub.finish_resync(newest);
    bm::resync(if lost == 0 { "complete" } else { "reset" });
    tracing::info!(
        epoch,
        seq = newest,
        channels = channels.len(),
        channels_with_loss = lost,
        "synced with Redis"
    );
    Ok(pubsub)
}

/// Applies batches as they arrive until the link breaks or shutdown.
async fn follow(
    broker: &RedisBroker,
    pubsub: redis::aio::PubSub,
    shutdown: &CancellationToken,
    sweep_cursor: &mut String,
) -> Stopped {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.reset();
    let timeout = broker.redis.command_timeout();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Stopped::Shutdown,
            msg = stream.next() => {
                let Some(msg) = msg else {
                    bm::error("link");
                    return Stopped::Resync("the pub/sub connection closed");
                };
                ping.reset();
                let batch = match wire::decode_batch(msg.get_payload_bytes()) {
                    Ok(batch) => batch,
                    Err(e) => {
                        bm::error("link");
                        tracing::error!(error = %e, "undecodable batch; resyncing");
                        return Stopped::Resync("undecodable batch");
                    }
                };
                match broker.hub.apply(
                    batch.epoch,
                    batch.first_seq,
                    &batch.channel,
                    batch.events,
                    batch.trace,
                ) {
                    Applied::Committed | Applied::Duplicate => {}
                    Applied::Gap { expected } => {
                        tracing::warn!(expected, got = batch.first_seq, "a batch went missing");
                        return Stopped::Resync("a batch went missing");
                    }
                    Applied::OtherEpoch => return Stopped::Resync("a new epoch began"),
                }
            }
            _ = ping.tick() => {
                let answered: Result<Result<redis::Value, _>, _> =
                    tokio::time::timeout(timeout, sink.ping()).await;
                if !matches!(answered, Ok(Ok(_))) {
                    bm::error("link");
                    return Stopped::Resync("Redis stopped answering PING");
                }
            }
            _ = sweep.tick() => {
                match broker.sweep(sweep_cursor).await {
                    Ok(next) => *sweep_cursor = next,
                    Err(e) => {
                        bm::error("sweep");
                        tracing::debug!(error = %e, "high-water sweep failed");
                    }
                }
            }
        }
    }
}

impl RedisBroker {
    /// Sweeps one slice of the high-water hash; returns the next cursor.
    async fn sweep(&self, cursor: &str) -> Result<String, LinkError> {
        let mut invocation = self.scripts.sweep.prepare_invoke();
        invocation
            .key(&self.keys.high_water)
            .key(&self.keys.floor)
            .arg(cursor)
            .arg(200)
            .arg(&self.keys.stream_prefix);
        let (next, moved): (String, u64) = self
            .command(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        if moved > 0 {
            tracing::debug!(moved, "expired channels moved to the history floor");
        }
        Ok(next)
    }
}
