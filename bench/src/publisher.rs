//! The publishing side of the bench: paced `POST /channels/{c}/events`
//! (or `/events/batch`) requests over a few keep-alive connections.
//!
//! Request `r` (counting from 0 over the whole run) is due at
//! `start + r * batch / rate`, goes to channel `r % C`, and carries the
//! channel-local event indices `(r / C) * batch ..`. Connection `j` sends the
//! requests with `r % K == j`, one at a time; when it falls behind it sends
//! immediately, and whatever is not sent by the end of the window is never
//! sent (reported as the gap between target and sent).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::accounting::IndexSet;
use crate::protocol::{new_histogram, unix_ns};
use crate::sse::Payload;
use crate::target::Target;

/// What to publish, and when.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// The server.
    pub targets: Vec<Target>,
    /// Bearer token for publish requests.
    pub token: Option<String>,
    /// Channel names.
    pub channels: Vec<String>,
    /// Events per second, all channels together.
    pub rate: f64,
    /// Events per request (1 uses the single-event endpoint).
    pub batch: usize,
    /// Bytes of data per event.
    pub payload: usize,
    /// Concurrent publish connections.
    pub connections: usize,
    /// When the first request is due.
    pub start: Instant,
    /// Events sent from here on are flagged as measured.
    pub measure_start: Instant,
    /// No request is sent from here on.
    pub end: Instant,
}

/// What the publisher did.
#[derive(Debug, Default)]
pub struct PublishResult {
    /// Requests written.
    pub requests: u64,
    /// Requests answered 202.
    pub requests_ok: u64,
    /// Events in the requests written.
    pub events_sent: u64,
    /// Events in requests answered 202.
    pub events_accepted: u64,
    /// Events sent in the measured window.
    pub events_sent_measured: u64,
    /// Non-202 answers by status.
    pub http_status: BTreeMap<u16, u64>,
    /// Requests that failed on the wire (connect, reset, timeout).
    pub io_errors: u64,
    /// One error message, for diagnosis.
    pub last_error: Option<String>,
    /// Accepted indices, per channel.
    pub accepted: Vec<IndexSet>,
    /// Publish request round trip, µs.
    pub rtt_us: Option<Histogram<u64>>,
}

impl PublishResult {
    fn merge(&mut self, o: PublishResult) {
        self.requests += o.requests;
        self.requests_ok += o.requests_ok;
        self.events_sent += o.events_sent;
        self.events_accepted += o.events_accepted;
        self.events_sent_measured += o.events_sent_measured;
        for (k, v) in o.http_status {
            *self.http_status.entry(k).or_default() += v;
        }
        self.io_errors += o.io_errors;
        if self.last_error.is_none() {
            self.last_error = o.last_error;
        }
        if self.accepted.len() < o.accepted.len() {
            self.accepted
                .resize_with(o.accepted.len(), IndexSet::default);
        }
        for (a, b) in self.accepted.iter_mut().zip(&o.accepted) {
            a.union_with(b);
        }
        match (&mut self.rtt_us, o.rtt_us) {
            (Some(a), Some(b)) => {
                // Same bounds on both sides, so adding cannot fail.
                let _ = a.add(&b);
            }
            (None, b) => self.rtt_us = b,
            _ => {}
        }
    }
}

/// Runs the publisher to the end of its window.
pub async fn publish(plan: PublishPlan) -> PublishResult {
    let k = plan.connections.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for j in 0..k {
        tasks.spawn(publish_connection(plan.clone(), j, k));
    }
    let mut total = PublishResult {
        accepted: vec![IndexSet::default(); plan.channels.len()],
        ..Default::default()
    };
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            total.merge(r);
        }
    }
    total
}

async fn publish_connection(plan: PublishPlan, j: usize, k: usize) -> PublishResult {
    // Connections are spread over the servers round-robin.
    let target = plan.targets[j % plan.targets.len()].clone();
    let c = plan.channels.len().max(1);
    let batch = plan.batch.max(1);
    let mut res = PublishResult {
        accepted: vec![IndexSet::default(); c],
        rtt_us: Some(new_histogram()),
        ..Default::default()
    };
    let mut conn: Option<TcpStream> = None;
    let mut rbuf = vec![0u8; 4096];
    let mut body = String::new();
    let mut req: Vec<u8> = Vec::new();
    let per_request = batch as f64 / plan.rate;
    let mut r = j as u64;
    loop {
        let due = plan.start + Duration::from_secs_f64(r as f64 * per_request);
        if due >= plan.end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        let ch = (r % c as u64) as usize;
        let first_index = (r / c as u64) * batch as u64;
        let measured = now >= plan.measure_start;
        let sent_unix_ns = unix_ns();
        body.clear();
        if batch == 1 {
            body.push_str("{\"data\":\"");
            Payload {
                sent_unix_ns,
                index: first_index,
                measured,
            }
            .write(plan.payload, &mut body);
            body.push_str("\"}");
        } else {
            body.push_str("{\"events\":[");
            for i in 0..batch as u64 {
                if i > 0 {
                    body.push(',');
                }
                body.push_str("{\"data\":\"");
                Payload {
                    sent_unix_ns,
                    index: first_index + i,
                    measured,
                }
                .write(plan.payload, &mut body);
                body.push_str("\"}");
            }
            body.push_str("]}");
        }
        req.clear();
        let path_suffix = if batch == 1 { "" } else { "/batch" };
        let auth = match &plan.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        req.extend_from_slice(
            format!(
                "POST {}/channels/{}/events{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n",
                target.base_path,
                plan.channels[ch],
                path_suffix,
                target.host,
                auth,
                body.len()
            )
            .as_bytes(),
        );
        req.extend_from_slice(body.as_bytes());
        res.requests += 1;
        res.events_sent += batch as u64;
        if measured {
            res.events_sent_measured += batch as u64;
        }
        let t0 = Instant::now();
        match crate::client::request(&target, &mut conn, &req, &mut rbuf).await {
            Ok(status) => {
                if let Some(h) = &mut res.rtt_us {
                    h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                }
                if status == 202 {
                    res.requests_ok += 1;
                    res.events_accepted += batch as u64;
                    for i in 0..batch as u64 {
                        res.accepted[ch].insert(first_index + i);
                    }
                } else {
                    *res.http_status.entry(status).or_default() += 1;
                }
            }
            Err(failure) => {
                res.io_errors += 1;
                res.last_error = Some(failure.message());
            }
        }
        r += k as u64;
    }
    res
}
