//! The leader's lease, kept alive from a task of its own.
//!
//! The leader key lives under the engine's lease. If the keep-alives shared a
//! loop with the engine's work, a long scheduling pass or a flood of watch
//! events would delay them past the TTL and depose a healthy engine. So
//! [`LeaseTask`] keeps the lease alive on its own task (over one long-lived
//! keep-alive stream, [`LeaseKeepAlive`]) and only tells the engine when the
//! lease is lost: etcd says it expired, or no keep-alive succeeded for a
//! whole TTL.

use std::time::Duration;

use fleet_registry::{LeaseKeepAlive, Registry, store::LeaseId};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Keeps the engine's lease alive until dropped; [`LeaseTask::lost`] fires
/// when the lease is gone.
pub(super) struct LeaseTask {
    task: JoinHandle<()>,
    lost: CancellationToken,
}

impl LeaseTask {
    /// Starts keeping `lease` (of `ttl`) alive, every TTL/3. Each
    /// keep-alive may wait TTL/4 for its answer (see [`keep_alive_deadline`]).
    pub(super) fn spawn(registry: &Registry, lease: LeaseId, ttl: Duration) -> LeaseTask {
        let lost = CancellationToken::new();
        let keeper = LeaseKeepAlive::new(registry, lease).with_deadline(keep_alive_deadline(ttl));
        let task = tokio::spawn(keep_alive(keeper, ttl, lost.clone()));
        LeaseTask { task, lost }
    }

    /// Completes when the lease is lost.
    pub(super) async fn lost(&self) {
        self.lost.cancelled().await;
    }
}

impl Drop for LeaseTask {
    fn drop(&mut self) {
        // The engine stopped leading: it revokes the lease itself.
        self.task.abort();
    }
}

/// How long one keep-alive of the engine's lease waits for etcd's answer.
///
/// An etcd whose apply lags (overloaded by a burst of writes) answers
/// keep-alives late; with the request timeout (1 s by default) as deadline
/// the engine gave up stream after stream and was deposed although etcd
/// kept renewing its lease. With a quarter of the TTL, a keep-alive sent at
/// TTL/3 that gets no answer still leaves time for one more try (on another
/// member, after TTL/12) before the TTL rule ("no keep-alive for a whole
/// TTL") gives the leadership up.
pub(super) fn keep_alive_deadline(ttl: Duration) -> Duration {
    ttl / 4
}

async fn keep_alive(mut keeper: LeaseKeepAlive, ttl: Duration, lost: CancellationToken) {
    let lease = keeper.lease();
    let period = (ttl / 3).max(Duration::from_millis(100));
    // After a failure, try again sooner: the lease is running out.
    let retry_period = (ttl / 12).max(Duration::from_millis(100));
    let mut last_success = Instant::now();
    let mut next = last_success + period;
    loop {
        tokio::time::sleep_until(next).await;
        match keeper.keep_alive().await {
            Ok(Some(remaining)) => {
                debug!(%lease, ?remaining, "Kept the engine lease alive.");
                last_success = Instant::now();
                next = last_success + period;
            }
            Ok(None) => {
                warn!(%lease, "The engine lease has expired.");
                lost.cancel();
                return;
            }
            Err(error) => {
                if last_success.elapsed() >= ttl {
                    warn!(%error, %lease, "No keep-alive of the engine lease succeeded for a whole TTL; giving up the leadership.");
                    lost.cancel();
                    return;
                }
                warn!(%error, %lease, "Keeping the engine lease alive failed; retrying.");
                next = Instant::now() + retry_period;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keep-alive sent at TTL/3 that runs to its deadline still leaves
    /// room for one retry (TTL/12 later) to get its answer within the TTL.
    #[test]
    fn a_timed_out_keep_alive_leaves_room_for_a_retry_within_the_ttl() {
        for ttl in [2, 10, 30, 120].map(Duration::from_secs) {
            let deadline = keep_alive_deadline(ttl);
            let retry_answered_by = ttl / 3 + deadline + ttl / 12 + deadline;
            assert!(
                retry_answered_by <= ttl,
                "ttl {ttl:?}: {retry_answered_by:?}"
            );
            assert!(deadline >= ttl / 5, "a long deadline: {deadline:?}");
        }
    }
}
