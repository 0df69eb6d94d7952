//! Connections waiting for the rest of their first request head, counted
//! per client IP. Such a socket costs a file descriptor and a task while
//! proving nothing, so one client could otherwise hold every descriptor the
//! process has (slowloris). A connection joins the count when what it sent
//! by the time it is first read is not a whole head, and leaves it as soon
//! as the head is complete; a client over its cap has that connection
//! closed at once.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;

use super::client_ip::{IpNet, ip_bucket};
use super::streams::{give_slot, take_slot};
use crate::telemetry::metrics::{PENDING_CONNECTIONS, RATE_LIMITED};

/// The `limit` label of a refused pending connection.
pub const PENDING_LIMIT: &str = "pending_per_ip";

/// Pending-connection counts, shared by the accept loop and every
/// [`PendingPermit`].
#[derive(Debug)]
pub struct PendingConnections {
    per_ip: DashMap<IpAddr, usize>,
    /// `0`: no cap.
    max_per_ip: usize,
    /// Peers never capped: trusted proxies send whole heads and time out
    /// their own clients, and all their clients share their address.
    exempt: Vec<IpNet>,
    /// `herald_connections_pending`.
    gauge: metrics::Gauge,
}

impl PendingConnections {
    /// Counts with a cap of `max_per_ip` (`0`: none) for every peer outside
    /// `exempt`.
    pub fn new(max_per_ip: usize, exempt: Vec<IpNet>) -> Self {
        Self {
            per_ip: DashMap::new(),
            max_per_ip,
            exempt,
            gauge: metrics::gauge!(PENDING_CONNECTIONS),
        }
    }

    /// Counts a connection from `peer` as pending, or refuses it (counted in
    /// `herald_rate_limited_total{limit="pending_per_ip"}`) when the peer
    /// already holds its cap of them.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<PendingPermit> {
        let mut permit = PendingPermit {
            counters: Arc::clone(self),
            ip: None,
        };
        self.gauge.increment(1.0);
        let capped = self.max_per_ip > 0 && !self.exempt.iter().any(|net| net.contains(peer));
        if capped {
            let ip = ip_bucket(peer);
            if !take_slot(&self.per_ip, ip, self.max_per_ip) {
                drop(permit);
                metrics::counter!(RATE_LIMITED, "limit" => PENDING_LIMIT).increment(1);
                return None;
            }
            permit.ip = Some(ip);
        }
        Some(permit)
    }

    /// Pending connections counted against `ip`'s cap.
    pub fn of(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip_bucket(ip)).map_or(0, |n| *n)
    }

    /// Client IPs with a pending count (for bounded-state checks).
    pub(super) fn tracked_keys(&self) -> usize {
        self.per_ip.len()
    }
}

/// One pending connection's slot; dropped when its first request head is
/// complete, or when the connection closes before that.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct PendingPermit {
    counters: Arc<PendingConnections>,
    ip: Option<IpAddr>,
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        self.counters.gauge.decrement(1.0);
        if let Some(ip) = self.ip.take() {
            give_slot(&self.counters.per_ip, ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn cap_holds_per_ip_and_slots_come_back() {
        let pending = Arc::new(PendingConnections::new(2, vec![]));
        let a = ip("10.0.0.1");
        let first = pending.admit(a).expect("1");
        let second = pending.admit(a).expect("2");
        assert!(pending.admit(a).is_none(), "over the cap");
        assert_eq!(pending.of(a), 2, "a refusal takes no slot");
        let other = pending.admit(ip("10.0.0.2")).expect("another IP");
        drop(first);
        let third = pending.admit(a).expect("a slot came back");
        drop((second, third, other));
        assert_eq!(pending.tracked_keys(), 0, "zero counts are removed");
    }

    #[test]
    fn ipv6_shares_its_prefix_and_proxies_are_exempt() {
        let proxy: IpNet = "10.9.0.0/16".parse().expect("cidr");
        let pending = Arc::new(PendingConnections::new(1, vec![proxy]));
        let held = pending.admit(ip("2001:db8::1")).expect("1");
        assert!(pending.admit(ip("2001:db8::2")).is_none(), "same /64");
        let from_proxy: Vec<_> = (0..10)
            .map(|_| pending.admit(ip("10.9.1.1")).expect("exempt"))
            .collect();
        assert_eq!(pending.of(ip("10.9.1.1")), 0);
        drop((held, from_proxy));
        assert_eq!(pending.tracked_keys(), 0);
    }

    #[test]
    fn zero_turns_the_cap_off() {
        let pending = Arc::new(PendingConnections::new(0, vec![]));
        let held: Vec<_> = (0..1000)
            .map(|_| pending.admit(ip("10.0.0.1")).expect("no cap"))
            .collect();
        assert_eq!(pending.tracked_keys(), 0);
        drop(held);
    }
}
