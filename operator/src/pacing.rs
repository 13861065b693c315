//! Pacing of directory writes, so publishing cannot fill etcd.
//!
//! Every directory version rewrites the shards whose content changed, and while mailboxes are
//! created in bulk that is nearly all of them (addresses are spread over the shards by hash):
//! at 100,000 mailboxes about 12 MB per version. etcd keeps every written revision until the
//! apiserver compacts (every 5 minutes by default), so unpaced publishing wrote 2 GiB of history
//! in 12 minutes and hit etcd's default quota (`mvcc: database space exceeded`, after which the
//! whole cluster refuses writes). A token bucket bounds the average write rate and still lets a
//! single edit after a quiet period through at once.

use std::time::{Duration, Instant};

/// A token bucket of bytes: refills at `rate` bytes per second up to `burst` bytes; a write may
/// start while the balance is not negative and spends its size (the balance may go below zero,
/// so one write larger than the burst is never blocked forever).
#[derive(Debug, Clone)]
pub struct WriteBudget {
    rate: f64,
    burst: f64,
    balance: f64,
    updated: Instant,
}

/// How many seconds of the rate the bucket holds when full.
pub const BURST_SECONDS: u64 = 30;

impl WriteBudget {
    /// A full bucket refilling at `bytes_per_second` (0 means unpaced).
    pub fn new(bytes_per_second: u64, now: Instant) -> WriteBudget {
        let burst = bytes_per_second.saturating_mul(BURST_SECONDS) as f64;
        WriteBudget {
            rate: bytes_per_second as f64,
            burst,
            balance: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.balance = (self.balance + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// How long until a write may start, or `None` if it may start now.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        self.refill(now);
        (self.balance < 0.0).then(|| Duration::from_secs_f64(-self.balance / self.rate))
    }

    /// Account for `bytes` written.
    pub fn spend(&mut self, bytes: u64, now: Instant) {
        if self.rate <= 0.0 {
            return;
        }
        self.refill(now);
        self.balance -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_full_bucket_lets_writes_through_until_the_burst_is_spent() {
        let start = Instant::now();
        let mut budget = WriteBudget::new(MIB, start);
        for _ in 0..2 {
            assert_eq!(budget.wait(start), None);
            budget.spend(12 * MIB, start);
        }
        // 30 MiB burst - 24 MiB: a third write may start, and overdraws.
        assert_eq!(budget.wait(start), None);
        budget.spend(12 * MIB, start);
        assert_eq!(budget.wait(start), Some(Duration::from_secs(6)));
    }

    #[test]
    fn an_overdrawn_bucket_paces_writes_to_the_rate() {
        let start = Instant::now();
        let mut budget = WriteBudget::new(MIB, start);
        budget.spend(40 * MIB, start);
        assert_eq!(budget.wait(start), Some(Duration::from_secs(10)));
        let later = start + Duration::from_secs(4);
        assert_eq!(budget.wait(later), Some(Duration::from_secs(6)));
        assert_eq!(budget.wait(start + Duration::from_secs(10)), None);
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let start = Instant::now();
        let mut budget = WriteBudget::new(MIB, start);
        let much_later = start + Duration::from_secs(3600);
        budget.spend(31 * MIB, much_later);
        assert_eq!(budget.wait(much_later), Some(Duration::from_secs(1)));
    }

    #[test]
    fn rate_zero_never_paces() {
        let start = Instant::now();
        let mut budget = WriteBudget::new(0, start);
        budget.spend(u64::MAX, start);
        assert_eq!(budget.wait(start), None);
    }
}
