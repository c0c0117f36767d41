//! [`Backoff`]: the one retry delay policy of fleetd; no retry loop sleeps on its own.
//!
//! Exponential (doubling from `initial`), capped at `max`, with full jitter
//! (each delay is uniform in `[0, ceiling]`, so many fleetds that lost etcd
//! at the same moment do not come back in lock step), reset after a success.
//! The randomness is `fastrand` (a small seeded-per-thread generator): this is
//! jitter, not cryptography.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential, capped, full-jitter backoff.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The ceiling of the next delay; doubles after each use, up to `max`.
    ceiling: Duration,
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
        }
    }

    /// The next delay: full jitter, uniform in `[0, ceiling]`, with a floor
    /// of 1 ms so a retry loop never spins.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = fastrand::u64(0..=nanos);
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
