//! Concurrent-stream caps: counts of open SSE streams in total, per client
//! IP and per token subject, each released by dropping its permit.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::Limited;
use super::client_ip::ip_bucket;

/// Open-stream counts, shared with every [`StreamPermit`].
#[derive(Debug, Default)]
pub(super) struct StreamCounters {
    pub(super) total: AtomicUsize,
    pub(super) max_total: usize,
    pub(super) per_ip: DashMap<IpAddr, usize>,
    pub(super) max_per_ip: usize,
    pub(super) per_subject: DashMap<String, usize>,
    pub(super) max_per_subject: usize,
}

impl StreamCounters {
    /// Takes a slot for one open SSE stream, counted in total, per IP and
    /// per subject, or refuses with the limit that is full.
    pub(super) fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        subject: Option<&str>,
        retry_after: Duration,
    ) -> Result<StreamPermit, Limited> {
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        // The permit owns every slot taken so far, so dropping it on an early
        // return gives back exactly those.
        let mut permit = StreamPermit {
            counters: Arc::clone(self),
            ip: None,
            subject: None,
        };
        if self.max_total > 0 && prev >= self.max_total {
            drop(permit);
            return Err(Limited::new("connections", retry_after));
        }
        if self.max_per_ip > 0 {
            let ip = ip_bucket(ip);
            if !take_slot(&self.per_ip, ip, self.max_per_ip) {
                drop(permit);
                return Err(Limited::new("streams_per_ip", retry_after));
            }
            permit.ip = Some(ip);
        }
        if self.max_per_subject > 0
            && let Some(sub) = subject
        {
            if !take_slot(&self.per_subject, sub.to_string(), self.max_per_subject) {
                drop(permit);
                return Err(Limited::new("streams_per_subject", retry_after));
            }
            permit.subject = Some(sub.to_string());
        }
        Ok(permit)
    }
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
