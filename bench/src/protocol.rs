//! The messages between the bench's controller and its subscriber workers
//! (one JSON object per line when the worker is a child process), the
//! worker's report, and the histogram and clock helpers both sides share.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::accounting::Expected;

/// What the controller tells a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Publishing has started (reconnect mode starts its timers).
    Start {
        /// Wall-clock start, ns since the Unix epoch.
        unix_ns: u64,
    },
    /// Drop every connection now and resume with `Last-Event-ID`.
    Storm {
        /// Wall-clock time of the storm, ns since the Unix epoch.
        unix_ns: u64,
    },
    /// Publishing is over: here is what each channel should have received.
    /// Report once every subscriber has it all, or after `drain_ms`.
    Finish {
        /// Per channel (same order as the plan's channels).
        expected: Vec<Expected>,
        /// Longest wait for stragglers.
        drain_ms: u64,
    },
    /// Stop now and report.
    Stop,
}

/// What a worker tells the controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// The initial connect phase is over.
    Connected {
        /// Subscribers that got a 200 response head.
        held: u64,
        /// Subscribers that did not (failed or still trying).
        failed: u64,
        /// The last reason a subscriber gave up, if any did.
        error: Option<String>,
    },
    /// Final counts.
    Report(Box<WorkerReport>),
}

/// A worker's results; reports from several workers merge by addition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Subscribers run.
    pub subscribers: u64,
    /// Subscribers that got a 200 head at least once.
    pub held: u64,
    /// Failed connect attempts (TCP error, timeout or non-200).
    pub connect_errors: u64,
    /// Non-200 statuses seen on subscribe, by status.
    pub http_status: BTreeMap<u16, u64>,
    /// One connect error message, for diagnosis.
    pub last_error: Option<String>,
    /// Bench events received, warm-up and duplicates included.
    pub events: u64,
    /// Events received that were sent in the measured window (latency sample count).
    pub measured: u64,
    /// Events received twice.
    pub duplicates: u64,
    /// New events whose seq was not above the last seq seen.
    pub out_of_order: u64,
    /// Events that were not the bench's.
    pub foreign: u64,
    /// `herald.reset` events received.
    pub resets: u64,
    /// Accepted events on a subscriber's channel it never received (held subscribers only).
    pub lost: u64,
    /// Events received that the publisher never saw accepted.
    pub unexpected: u64,
    /// Subscribers that lost at least one event.
    pub subs_with_loss: u64,
    /// Planned drops (reconnect and storm modes).
    pub reconnects: u64,
    /// Unplanned ends of stream (server closed, error).
    pub disconnects: u64,
    /// Resumptions that succeeded (200 head after a drop).
    pub resumed: u64,
    /// Times an id's epoch changed under a subscriber.
    pub epoch_changes: u64,
    /// `read` calls that returned data.
    pub reads: u64,
    /// SSE comments (heartbeats) seen.
    pub comments: u64,
    /// Subscribers still running when the worker gave up waiting.
    pub aborted: u64,
    /// Publish-to-receive latency, µs, as (value, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// Storm: time from the storm to the 200 head of the resumed stream, ms.
    pub storm_reconnect_ms: Vec<(u64, u64)>,
    /// Storm: time from the storm until the first event sent after the
    /// subscriber resumed arrived (it had replayed and was live again), ms.
    pub storm_recover_ms: Vec<(u64, u64)>,
    /// Storm: held subscribers that never recovered.
    pub storm_unrecovered: u64,
}

impl WorkerReport {
    /// Adds another worker's counts into this one.
    pub fn merge(&mut self, o: &WorkerReport) {
        self.subscribers += o.subscribers;
        self.held += o.held;
        self.connect_errors += o.connect_errors;
        for (k, v) in &o.http_status {
            *self.http_status.entry(*k).or_default() += v;
        }
        if self.last_error.is_none() {
            self.last_error.clone_from(&o.last_error);
        }
        self.events += o.events;
        self.measured += o.measured;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.foreign += o.foreign;
        self.resets += o.resets;
        self.lost += o.lost;
        self.unexpected += o.unexpected;
        self.subs_with_loss += o.subs_with_loss;
        self.reconnects += o.reconnects;
        self.disconnects += o.disconnects;
        self.resumed += o.resumed;
        self.epoch_changes += o.epoch_changes;
        self.reads += o.reads;
        self.comments += o.comments;
        self.aborted += o.aborted;
        self.latency_us.extend_from_slice(&o.latency_us);
        self.storm_reconnect_ms
            .extend_from_slice(&o.storm_reconnect_ms);
        self.storm_recover_ms.extend_from_slice(&o.storm_recover_ms);
        self.storm_unrecovered += o.storm_unrecovered;
    }
}

/// A histogram wide enough for 1 µs .. 1 h at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Flattens a histogram to (value, count) pairs for the report line.
pub fn histogram_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Rebuilds a histogram from (value, count) pairs.
pub fn histogram_from_pairs(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &(v, n) in pairs {
        h.saturating_record_n(v.max(1), n);
    }
    h
}

/// Wall-clock now, ns since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_merge_and_round_trip_as_json() {
        let mut h = new_histogram();
        h.record(1500).unwrap();
        h.record(2500).unwrap();
        let a = WorkerReport {
            subscribers: 2,
            lost: 1,
            latency_us: histogram_pairs(&h),
            ..Default::default()
        };
        let line = serde_json::to_string(&WorkerMsg::Report(Box::new(a.clone()))).unwrap();
        let WorkerMsg::Report(b) = serde_json::from_str(&line).unwrap() else {
            panic!("wrong variant");
        };
        let mut total = WorkerReport::default();
        total.merge(&a);
        total.merge(&b);
        assert_eq!((total.subscribers, total.lost), (4, 2));
        let merged = histogram_from_pairs(&total.latency_us);
        assert_eq!(merged.len(), 4);
        assert!(merged.value_at_quantile(1.0) >= 2500);
        let cmd = serde_json::to_string(&Command::Storm { unix_ns: 5 }).unwrap();
        assert_eq!(cmd, r#"{"cmd":"storm","unix_ns":5}"#);
    }
}
