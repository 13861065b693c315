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

/// A token bucket of bytes, refilling at `rate` bytes per second up to `burst` bytes.
///
/// A large write (most of the directory: bulk changes) may start while the balance is not
/// negative, and may overdraw it by its own size. A small write (an edit: a shard or two, at
/// most half of the directory and an eighth of the burst) may also start on credit, as long as
/// the overdraft stays within one burst, so an edit right after a bulk import is not queued
/// behind the import's pace. Either way the average stays at `rate`. A refused write holds the
/// bucket until it would be let through, so a reconcile in that time need not compile to learn
/// that it would be refused too.
///
/// Smallness is relative to the directory: at 10,000 mailboxes a whole version is about 1 MiB,
/// and counting it as small let bulk creation run one burst into debt and then stall for 30 s.
#[derive(Debug, Clone)]
pub struct WriteBudget {
    rate: f64,
    burst: f64,
    balance: f64,
    updated: Instant,
    held_until: Option<Instant>,
}

/// How many seconds of the rate the bucket holds when full.
pub const BURST_SECONDS: u64 = 30;

/// A write is small when it is at most this fraction of the burst (about 4 s of the rate)...
const SMALL_FRACTION_OF_BURST: f64 = 1.0 / 8.0;
/// ...and at most this fraction of the whole directory.
const SMALL_FRACTION_OF_DIRECTORY: f64 = 1.0 / 2.0;

impl WriteBudget {
    /// A full bucket refilling at `bytes_per_second` (0 means unpaced).
    pub fn new(bytes_per_second: u64, now: Instant) -> WriteBudget {
        let burst = bytes_per_second.saturating_mul(BURST_SECONDS) as f64;
        WriteBudget {
            rate: bytes_per_second as f64,
            burst,
            balance: burst,
            updated: now,
            held_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.balance = (self.balance + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// How long the bucket is still held after a refused write, if it is.
    pub fn held(&self, now: Instant) -> Option<Duration> {
        self.held_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Take `bytes` for a write starting now, of a directory of `directory_bytes` in all, or say
    /// how long to wait.
    pub fn take(&mut self, bytes: u64, directory_bytes: u64, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        if let Some(wait) = self.held(now) {
            return Err(wait);
        }
        self.refill(now);
        let bytes = bytes as f64;
        let small = bytes <= self.burst * SMALL_FRACTION_OF_BURST
            && bytes <= directory_bytes as f64 * SMALL_FRACTION_OF_DIRECTORY;
        // The lowest balance the write may start from.
        let floor = if small { bytes - self.burst } else { 0.0 };
        if self.balance >= floor {
            self.balance -= bytes;
            self.held_until = None;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((floor - self.balance) / self.rate);
        self.held_until = Some(now + wait);
        Err(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A full bucket of 1 MiB/s (30 MiB of burst), and the moment it was made.
    fn full_bucket() -> (WriteBudget, Instant) {
        let start = Instant::now();
        (WriteBudget::new(MIB, start), start)
    }

    /// A directory of 100,000 mailboxes is about 12 MiB.
    const DIRECTORY: u64 = 12 * MIB;

    #[test]
    fn a_full_bucket_lets_large_writes_through_until_it_is_overdrawn() {
        let (mut budget, start) = full_bucket();
        // 30 MiB of burst: three 12 MiB writes start, the third overdraws by 6 MiB.
        for _ in 0..3 {
            assert_eq!(budget.take(12 * MIB, DIRECTORY, start), Ok(()));
        }
        assert_eq!(budget.take(12 * MIB, DIRECTORY, start), Err(secs(6)));
    }

    #[test]
    fn a_refused_write_holds_the_bucket_until_the_balance_is_back() {
        let (mut budget, start) = full_bucket();
        assert_eq!(budget.take(40 * MIB, DIRECTORY, start), Ok(()));
        assert_eq!(budget.take(12 * MIB, DIRECTORY, start), Err(secs(10)));
        assert_eq!(budget.held(start + secs(4)), Some(secs(6)));
        // Held: even a small write waits now (it would have passed on credit before).
        assert_eq!(budget.take(MIB, DIRECTORY, start + secs(4)), Err(secs(6)));
        assert_eq!(budget.held(start + secs(10)), None);
        assert_eq!(budget.take(12 * MIB, DIRECTORY, start + secs(10)), Ok(()));
    }

    #[test]
    fn a_small_write_goes_on_credit_within_one_burst() {
        let (mut budget, start) = full_bucket();
        // A bulk import leaves the balance at -12 MiB.
        assert_eq!(budget.take(42 * MIB, DIRECTORY, start), Ok(()));
        // An edit (one shard) is not queued behind it...
        assert_eq!(budget.take(MIB, DIRECTORY, start), Ok(()));
        // ...but a large write is.
        assert_eq!(budget.take(12 * MIB, DIRECTORY, start), Err(secs(13)));
    }

    #[test]
    fn small_writes_on_credit_stop_at_one_burst_of_overdraft() {
        let (mut budget, start) = full_bucket();
        assert_eq!(budget.take(30 * MIB, DIRECTORY, start), Ok(()));
        for _ in 0..10 {
            assert_eq!(budget.take(3 * MIB, DIRECTORY, start), Ok(()));
        }
        // -30 MiB: the average holds, whatever the size of the writes; the next small write
        // waits only for its own bytes, so steady edits are paced smoothly, not in 30 s stalls.
        assert_eq!(budget.take(3 * MIB, DIRECTORY, start), Err(secs(3)));
        assert_eq!(budget.take(3 * MIB, DIRECTORY, start + secs(3)), Ok(()));
    }

    #[test]
    fn most_of_a_small_directory_is_a_large_write() {
        let (mut budget, start) = full_bucket();
        // Bulk creation at 10,000 mailboxes: each version rewrites the whole 1 MiB directory.
        // Such writes never go on credit: the overdraft stays within one write...
        for _ in 0..31 {
            assert_eq!(budget.take(MIB, MIB, start), Ok(()));
        }
        assert_eq!(budget.take(MIB, MIB, start), Err(secs(1)));
        // ...so the last version waits about one write's worth, not one burst.
        assert_eq!(budget.take(MIB, MIB, start + secs(1)), Ok(()));
        // One shard of four is an edit, and goes on credit.
        assert_eq!(budget.take(MIB / 4, MIB, start + secs(1)), Ok(()));
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let (mut budget, start) = full_bucket();
        let much_later = start + secs(3600);
        assert_eq!(budget.take(31 * MIB, DIRECTORY, much_later), Ok(()));
        assert_eq!(budget.take(12 * MIB, DIRECTORY, much_later), Err(secs(1)));
    }

    #[test]
    fn rate_zero_never_paces() {
        let start = Instant::now();
        let mut budget = WriteBudget::new(0, start);
        assert_eq!(budget.take(u64::MAX, u64::MAX, start), Ok(()));
        assert_eq!(budget.take(u64::MAX, u64::MAX, start), Ok(()));
        assert_eq!(budget.held(start), None);
    }
}
