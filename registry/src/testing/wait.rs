//! Waiting on a condition with a deadline, for the async tests of every crate
//! (feature `testing`): the one polling helper, so every test waits the same
//! way and fails with the same message.
//!
//! Tests poll where there is nothing to subscribe to (a key in etcd, a unit's
//! state in another process's systemd). They never sleep a fixed time and
//! hope: they poll a condition every 50 ms and panic with what they were
//! waiting for when the deadline passes, which is a test failure that says
//! why.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled: quick enough not to slow a test, slow
/// enough not to load etcd.
const POLL: Duration = Duration::from_millis(50);

/// Polls `condition` until it holds.
///
/// # Panics
/// With `what` when it still does not hold after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(deadline, what, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await;
}

/// Polls `probe` until it yields a value, and returns it.
///
/// # Panics
/// With `what` when it yields nothing before `deadline`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_value_once_the_probe_yields_one() {
        let calls = AtomicU32::new(0);
        let value = wait_for(Duration::from_secs(5), "the third call", || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until never")]
    async fn panics_with_what_it_waited_for_after_the_deadline() {
        wait_until(Duration::from_millis(120), "never", || async { false }).await;
    }
}
