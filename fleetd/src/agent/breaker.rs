//! The agent's breaker against mass unloads. Pure: the caller passes `now`.
//!
//! An agent obeys its schedule, so an empty schedule means "stop everything".
//! But a schedule can vanish without anyone deciding it: the registry was
//! wiped (`etcdctl del --prefix ""`), a SIGHUP brought a wrong
//! `etcd_key_prefix`, an old backup was restored. Obeying would take every
//! unit on the machine down.
//!
//! So every unload of a unit that is no longer scheduled here must be either
//! - **ordered**: the engine writes `P/engine/unload-order/<machine>/<unit>` in the
//!   same leader-guarded transaction that takes the unit off the machine. An
//!   unload is ordered when that key's mod revision is later than the last
//!   revision at which the agent saw the unit scheduled. A wipe deletes the
//!   key, a foreign prefix or an old backup does not have a later one; or
//! - **few**: unordered unloads are allowed while they stay below the
//!   threshold: fewer than 2, or less than `unload_breaker_fraction` of the
//!   units on this machine, counting those done in the last [`WINDOW`].
//!
//! Beyond the threshold the breaker trips: the unordered unloads wait (the
//! units keep running) and the agent logs it at ERROR. It latches: every
//! unordered unload waits until none is left, because the schedule came
//! back or the engine ordered them (an operator can also unload a unit by
//! hand with systemctl).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use fleet_systemd::unit::UnitName;
use tokio::time::Instant;

/// How far back unordered unloads are counted.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Fewer unordered unloads than this never trip the breaker.
pub const MIN_UNITS: usize = 2;

/// A change of the breaker, for the agent to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BreakerEvent {
    /// `held` unordered unloads of the `on_machine` units wait.
    Tripped { held: usize, on_machine: usize },
    /// Nothing is held any more.
    Released,
}

/// What may be unloaded in this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub held: BTreeSet<UnitName>,
    pub event: Option<BreakerEvent>,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct UnloadBreaker {
    fraction: f64,
    /// When each recent unordered unload was allowed.
    recent: VecDeque<Instant>,
    tripped: bool,
}

impl UnloadBreaker {
    pub fn new(fraction: f64) -> UnloadBreaker {
        UnloadBreaker {
            fraction,
            recent: VecDeque::new(),
            tripped: false,
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped
    }

    /// Decides on the `unordered` unloads a pass wants, with `on_machine`
    /// units on this machine. Ordered unloads are not the breaker's business.
    pub fn decide(
        &mut self,
        now: Instant,
        on_machine: usize,
        unordered: &BTreeSet<UnitName>,
    ) -> Verdict {
        while self
            .recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) > WINDOW)
        {
            self.recent.pop_front();
        }
        let count = unordered.len() + self.recent.len();
        let was_tripped = self.tripped;
        // Latched: once tripped, what is left of the mass unload is held
        // too, however few (the engine ordering part of it is no proof for
        // the rest).
        let mass = !unordered.is_empty()
            && (was_tripped
                || (count >= MIN_UNITS
                    && count as f64 >= self.fraction * on_machine.max(1) as f64));
        self.tripped = mass;
        if mass {
            let event = (!was_tripped).then_some(BreakerEvent::Tripped {
                held: unordered.len(),
                on_machine,
            });
            return Verdict {
                held: unordered.clone(),
                event,
            };
        }
        self.recent.extend(unordered.iter().map(|_| now));
        Verdict {
            held: BTreeSet::new(),
            event: was_tripped.then_some(BreakerEvent::Released),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(names: &[&str]) -> BTreeSet<UnitName> {
        names
            .iter()
            .map(|name| name.parse().expect("unit name"))
            .collect()
    }

    #[test]
    fn a_whole_schedule_vanishing_is_held() {
        let mut breaker = UnloadBreaker::new(0.5);
        let gone = units(&["a.service", "b.service", "c.service"]);
        let verdict = breaker.decide(Instant::now(), 3, &gone);
        assert_eq!(verdict.held, gone);
        assert_eq!(
            verdict.event,
            Some(BreakerEvent::Tripped {
                held: 3,
                on_machine: 3
            })
        );
        assert!(breaker.is_tripped());
        // Still held on the next pass, without a second trip event.
        let verdict = breaker.decide(Instant::now(), 3, &gone);
        assert_eq!(verdict.held, gone);
        assert_eq!(verdict.event, None);
    }

    #[test]
    fn one_unordered_unload_goes_through() {
        let mut breaker = UnloadBreaker::new(0.5);
        let verdict = breaker.decide(Instant::now(), 1, &units(&["a.service"]));
        assert!(verdict.held.is_empty());
        assert_eq!(verdict.event, None);
    }

    #[test]
    fn a_few_of_many_go_through() {
        let mut breaker = UnloadBreaker::new(0.5);
        let verdict = breaker.decide(Instant::now(), 10, &units(&["a.service", "b.service"]));
        assert!(verdict.held.is_empty());
    }

    #[test]
    fn a_trickle_within_the_window_adds_up() {
        let mut breaker = UnloadBreaker::new(0.5);
        let start = Instant::now();
        for (i, name) in ["a.service", "b.service"].iter().enumerate() {
            let at = start + Duration::from_secs(i as u64);
            assert!(breaker.decide(at, 6, &units(&[name])).held.is_empty());
        }
        let verdict = breaker.decide(start + Duration::from_secs(2), 6, &units(&["c.service"]));
        assert_eq!(
            verdict.held,
            units(&["c.service"]),
            "3 of 6 within the window"
        );
    }

    #[test]
    fn unloads_older_than_the_window_no_longer_count() {
        let mut breaker = UnloadBreaker::new(0.5);
        let start = Instant::now();
        assert!(
            breaker
                .decide(start, 4, &units(&["a.service"]))
                .held
                .is_empty()
        );
        let later = start + WINDOW + Duration::from_secs(1);
        assert!(
            breaker
                .decide(later, 4, &units(&["b.service"]))
                .held
                .is_empty()
        );
    }

    #[test]
    fn the_breaker_releases_when_nothing_unordered_is_left() {
        let mut breaker = UnloadBreaker::new(0.5);
        let now = Instant::now();
        breaker.decide(now, 2, &units(&["a.service", "b.service"]));
        let verdict = breaker.decide(now, 2, &BTreeSet::new());
        assert!(verdict.held.is_empty());
        assert_eq!(verdict.event, Some(BreakerEvent::Released));
        assert!(!breaker.is_tripped());
    }

    #[test]
    fn the_breaker_latches_until_no_unordered_unload_is_left() {
        let mut breaker = UnloadBreaker::new(0.5);
        let now = Instant::now();
        breaker.decide(now, 4, &units(&["a.service", "b.service", "c.service"]));
        // The engine ordered two of them; the last one alone would be few,
        // but it is what is left of the mass unload.
        let verdict = breaker.decide(now, 4, &units(&["c.service"]));
        assert_eq!(verdict.held, units(&["c.service"]));
        assert!(breaker.is_tripped());
    }
}
