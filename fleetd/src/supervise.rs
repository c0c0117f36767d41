//! Supervision of fleetd's components: a component that dies takes fleetd
//! down.
//!
//! A fleetd whose agent or engine task has died while its API keeps
//! answering is worse than a dead fleetd: it looks healthy, its machine stays
//! registered, and nothing reconciles. So every component (heart, engine,
//! agent) runs under [`supervised`], which turns each way of dying into one
//! [`Failures`] report:
//! - it returned an error;
//! - it panicked (the panic is caught at the task boundary, its message kept);
//! - it returned `Ok` although nobody asked it to stop.
//!
//! The server waits on [`Failures::cancelled`], stops what is left and exits
//! non-zero with the reason, so systemd (`Restart=on-failure`) starts a
//! clean fleetd. Restarting a component in-process would hide the bug and
//! could leave its half-done state (a held lease, a watch) behind.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use tracing::error;

/// The first failure of a generation's components, and a token cancelled
/// when it happens.
#[derive(Clone, Debug, Default)]
pub struct Failures {
    token: CancellationToken,
    first: Arc<Mutex<Option<String>>>,
}

impl Failures {
    pub fn new() -> Failures {
        Failures::default()
    }

    /// Records `message` (the first one wins) and wakes the server.
    pub fn report(&self, message: String) {
        error!("{message}");
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(message);
        self.token.cancel();
    }

    /// Resolves once a component has failed.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// The first failure, if any.
    pub fn first(&self) -> Option<String> {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Runs `task` (the component `name`) on its own tokio task and reports to
/// `failures` if it fails, panics, or ends before `shutdown` was cancelled.
pub async fn supervised<F>(
    name: &'static str,
    task: F,
    shutdown: CancellationToken,
    failures: Failures,
) where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    // A separate task so that a panic stops at its JoinHandle instead of
    // silently ending this future.
    let outcome = tokio::spawn(task).await;
    let message = match outcome {
        Ok(Ok(())) if shutdown.is_cancelled() => return,
        Ok(Ok(())) => format!("{name} stopped although nothing asked it to"),
        Ok(Err(error)) => format!("{name} failed: {error:#}"),
        Err(join) if join.is_panic() => {
            format!("{name} panicked: {}", panic_message(join.into_panic()))
        }
        Err(join) => format!("{name} was cancelled: {join}"),
    };
    failures.report(message);
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn outcome<F>(task: F, stop_first: bool) -> Option<String>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let failures = Failures::new();
        if stop_first {
            shutdown.cancel();
        }
        supervised("agent", task, shutdown, failures.clone()).await;
        assert_eq!(
            failures.token.is_cancelled(),
            failures.first().is_some(),
            "the token is cancelled exactly when a failure is recorded"
        );
        failures.first()
    }

    #[tokio::test]
    async fn a_panicking_component_is_reported_with_its_message() {
        let message = outcome(
            async {
                let units: Vec<u8> = Vec::new();
                if units.is_empty() {
                    panic!("schedule index {} out of range", 3);
                }
                Ok(())
            },
            false,
        )
        .await;
        assert_eq!(
            message.as_deref(),
            Some("agent panicked: schedule index 3 out of range")
        );
    }

    #[tokio::test]
    async fn an_error_is_reported_with_its_context() {
        let message = outcome(
            async { Err(anyhow::anyhow!("disk full").context("preparing the units directory")) },
            false,
        )
        .await;
        assert_eq!(
            message.as_deref(),
            Some("agent failed: preparing the units directory: disk full")
        );
    }

    #[tokio::test]
    async fn ending_without_being_asked_is_a_failure() {
        let message = outcome(async { Ok(()) }, false).await;
        assert_eq!(
            message.as_deref(),
            Some("agent stopped although nothing asked it to")
        );
    }

    #[tokio::test]
    async fn ending_after_shutdown_is_not_a_failure() {
        assert_eq!(outcome(async { Ok(()) }, true).await, None);
    }

    #[tokio::test]
    async fn the_first_failure_wins() {
        let failures = Failures::new();
        failures.report("heart failed: first".to_owned());
        failures.report("engine failed: second".to_owned());
        failures.cancelled().await;
        assert_eq!(failures.first().as_deref(), Some("heart failed: first"));
    }
}
