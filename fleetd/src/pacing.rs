//! Pacing of the engine's passes and the agent's reconcile passes and state
//! publishing: act at once when idle, batch only while work is in flight.
//!
//! A fixed window ("wait 50 ms after the first event, then act") delays a
//! lone change by the whole window although nothing else is going on. A
//! [`Pacer`] instead lets work that becomes due run at once when the last
//! run ended at least `gap` ago, and otherwise runs it `gap` after the last
//! run ended: during a burst the events that arrive while a run is in flight
//! and during the gap after it are handled together by the next run, so a
//! burst of a thousand events still costs a handful of runs.
//!
//! Pure: the caller passes the clock in, so the rules are tested without
//! sleeping.

use std::time::Duration;

use tokio::time::Instant;

/// When the next run may start, given when the last one ended.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    gap: Duration,
    last_end: Option<Instant>,
}

impl Pacer {
    /// A pacer that keeps at least `gap` between the end of one run and the
    /// start of the next.
    pub fn new(gap: Duration) -> Pacer {
        Pacer {
            gap,
            last_end: None,
        }
    }

    /// When work that became due at `since` should run: `since` itself when
    /// that is at least `gap` after the last run ended, else `gap` after it.
    pub fn due(&self, since: Instant) -> Instant {
        match self.last_end {
            Some(end) => since.max(end + self.gap),
            None => since,
        }
    }

    /// Records that a run ended at `at`.
    pub fn ran(&mut self, at: Instant) {
        self.last_end = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_millis(50);

    #[test]
    fn the_first_change_runs_at_once() {
        let now = Instant::now();
        assert_eq!(Pacer::new(GAP).due(now), now);
    }

    #[test]
    fn a_change_after_an_idle_gap_runs_at_once() {
        let start = Instant::now();
        let mut pacer = Pacer::new(GAP);
        pacer.ran(start);
        let later = start + GAP * 3;
        assert_eq!(pacer.due(later), later);
        assert_eq!(pacer.due(start + GAP), start + GAP);
    }

    #[test]
    fn changes_right_after_a_run_wait_for_the_gap_together() {
        let start = Instant::now();
        let mut pacer = Pacer::new(GAP);
        pacer.ran(start);
        let first = start + Duration::from_millis(1);
        let second = start + Duration::from_millis(30);
        assert_eq!(pacer.due(first), start + GAP);
        assert_eq!(pacer.due(second), start + GAP);
    }
}
