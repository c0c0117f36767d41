//! [`Backoff`]: the one retry delay policy of fleetd (style.md 7).
//!
//! Exponential (doubling from `initial`), capped at `max`, with full jitter
//! (each delay is uniform in `[0, ceiling]`, so many fleetds that lost etcd
//! at the same moment do not come back in lock step), reset after a success.
//! The randomness is a tiny xorshift seeded from the clock: this is jitter,
//! not cryptography, and needs no crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// Exponential, capped, full-jitter backoff.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The ceiling of the next delay; doubles after each use, up to `max`.
    ceiling: Duration,
    rng: XorShift,
}

impl Backoff {
    /// A backoff whose ceilings go `initial`, 2×, 4×, … up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            ceiling: initial,
            rng: XorShift::from_clock(),
        }
    }

    /// The next delay: full jitter, uniform in `[0, ceiling]`, with a floor
    /// of 1 ms so a retry loop never spins.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = self.rng.next() % nanos.saturating_add(1);
        Duration::from_nanos(jittered).max(Duration::from_millis(1))
    }

    /// The ceiling the next delay is drawn under (for logs).
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// Back to `initial`, after a success.
    pub fn reset(&mut self) {
        self.ceiling = self.initial;
    }

    /// Sleeps for the next delay. Returns `false` if `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// xorshift64*: enough randomness for jitter.
#[derive(Clone, Debug)]
struct XorShift(u64);

impl XorShift {
    fn from_clock() -> XorShift {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        // Mix in the address of a stack value so two backoffs made in the
        // same nanosecond still differ; the state must never be zero.
        let marker = 0u8;
        let seed =
            nanos ^ (std::ptr::addr_of!(marker) as u64).rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let expected_ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for ceiling in expected_ceilings {
            assert_eq!(backoff.ceiling(), Duration::from_secs(ceiling));
            let delay = backoff.next_delay();
            assert!(
                delay <= Duration::from_secs(ceiling),
                "{delay:?} > {ceiling}s"
            );
            assert!(delay >= Duration::from_millis(1));
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered() {
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[tokio::test]
    async fn wait_stops_on_shutdown() {
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!backoff.wait(&shutdown).await);
        let mut quick = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        assert!(quick.wait(&CancellationToken::new()).await);
    }
}
