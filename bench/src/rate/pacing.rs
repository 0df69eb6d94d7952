//! Open-loop pacing: when each publish is due, and which connection sends it.
//!
//! Request `r` (counting from 0 over the whole run) is due at `r / rate`
//! seconds after the start, and connection `j` of `k` sends the requests with
//! `r % k == j`, one at a time. A connection that falls behind sends at once,
//! and its latency is counted from when the request was due, not from when it
//! went out, so a slow server shows up as latency rather than as a quietly
//! lower rate (no coordinated omission).

use std::time::Duration;

/// The schedule of one connection.
#[derive(Debug, Clone)]
pub struct Pacer {
    next: u64,
    step: u64,
    rate: f64,
    max_requests: u64,
    window: Duration,
}

impl Pacer {
    /// Connection `j` of `k` at `rate` requests/s over all connections,
    /// sending none at or past `window` after the start, nor any request
    /// numbered `max_requests` or more.
    pub fn new(j: usize, k: usize, rate: f64, max_requests: u64, window: Duration) -> Pacer {
        Pacer {
            next: j as u64,
            step: k.max(1) as u64,
            rate,
            max_requests,
            window,
        }
    }

    /// When request `r` is due, after the start.
    pub fn offset(rate: f64, r: u64) -> Duration {
        Duration::from_secs_f64(r as f64 / rate)
    }
}

impl Iterator for Pacer {
    /// The request number and when it is due, after the start.
    type Item = (u64, Duration);

    fn next(&mut self) -> Option<(u64, Duration)> {
        let r = self.next;
        if r >= self.max_requests {
            return None;
        }
        let due = Pacer::offset(self.rate, r);
        if due >= self.window {
            return None;
        }
        self.next += self.step;
        Some((r, due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_share_the_schedule_without_gaps() {
        let window = Duration::from_secs(2);
        let mut all: Vec<(u64, Duration)> = (0..4)
            .flat_map(|j| Pacer::new(j, 4, 1000.0, u64::MAX, window))
            .collect();
        all.sort();
        // 1,000/s for 2 s: requests 0..2000, each due 1 ms after the one before.
        assert_eq!(all.len(), 2000);
        for (i, (r, due)) in all.iter().enumerate() {
            assert_eq!(*r, i as u64);
            assert_eq!(*due, Duration::from_micros(1000 * i as u64));
        }
        // One connection sends every 4th request, 4 ms apart.
        let one: Vec<_> = Pacer::new(1, 4, 1000.0, u64::MAX, window).take(3).collect();
        assert_eq!(
            one,
            vec![
                (1, Duration::from_millis(1)),
                (5, Duration::from_millis(5)),
                (9, Duration::from_millis(9))
            ]
        );
    }

    #[test]
    fn count_bound_ends_the_schedule_early() {
        let window = Duration::from_secs(3600);
        let total: usize = (0..3)
            .map(|j| Pacer::new(j, 3, 50_000.0, 1000, window).count())
            .sum();
        assert_eq!(total, 1000);
        assert_eq!(Pacer::new(5, 8, 10.0, 3, window).count(), 0);
    }

    #[test]
    fn fractional_rates() {
        // 2.5 requests/s for 2 s: due at 0, 0.4, 0.8, 1.2 and 1.6 s.
        let dues: Vec<_> = Pacer::new(0, 1, 2.5, u64::MAX, Duration::from_secs(2))
            .map(|(_, d)| d.as_millis())
            .collect();
        assert_eq!(dues, vec![0, 400, 800, 1200, 1600]);
    }
}
