//! Machine loss: the grace period and the breaker, so an etcd
//! hiccup that hides many machines at once does not reschedule everything.
//!
//! [`LossTracker`] remembers when each machine vanished (the first time the
//! engine saw it absent) and turns that, with a caller-supplied `now`, into
//! the [`LossPolicy`] the scheduler takes. It reads no clock itself, so the
//! rules are tested with made-up instants.
//!
//! The rules:
//! - A vanished machine's units stay placed until it has been gone for the
//!   grace period (`machine_loss_grace`); then they are re-placed.
//! - The breaker: when more than `breaker_fraction` of the known machines
//!   (present + recently vanished) vanished within one window (the agent TTL:
//!   a network blip or an etcd leader change makes leases expire together),
//!   nothing is re-placed. The breaker latches on the machines that tripped
//!   it and lets go when either
//!   - enough of them return that the fraction is no longer above the limit, or
//!   - they have been gone for 5 × the grace period since the trip: by then
//!     it is an outage, not a blip, and their units had better run elsewhere.
//!
//!   Machines released that way are not counted again until they return, so
//!   the breaker does not re-trip on the same loss.
//! - A machine whose fleetd stopped cleanly (it left a clean-stop mark, its
//!   units still run there) gets the restart grace (`machine_restart_grace`)
//!   instead: a restart or an upgrade must not run its units twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fleet_registry::MachineId;

use crate::engine::scheduler::LossPolicy;

/// How long the breaker holds at most, in grace periods.
pub const BREAKER_HOLD_GRACES: u32 = 5;

/// A change of the breaker, for the engine to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BreakerEvent {
    /// `lost` of `known` machines vanished within `window`.
    Tripped {
        lost: usize,
        known: usize,
        window: Duration,
    },
    /// Enough machines came back.
    ResumedMachinesReturned { still_lost: usize },
    /// The lost machines stayed away for the maximum hold.
    ResumedHoldExpired { lost: usize, held: Duration },
}

/// The breaker while it holds.
#[derive(Clone, Debug)]
struct Trip {
    machines: BTreeSet<MachineId>,
    since: Instant,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct LossTracker {
    grace: Duration,
    /// The grace of machines in `stopped_cleanly`.
    restart_grace: Duration,
    stopped_cleanly: BTreeSet<MachineId>,
    fraction: f64,
    window: Duration,
    /// Absent machines and when we first saw each absent.
    vanished: BTreeMap<MachineId, Instant>,
    trip: Option<Trip>,
    /// Machines a breaker let go after its hold: not counted again.
    forgiven: BTreeSet<MachineId>,
    /// The `now` of the last [`LossTracker::evaluate`]: a deadline after it
    /// has not been acted on yet, even if it is already past (found by the
    /// scale benchmark: with deadlines filtered on `> now`, the machines whose
    /// grace ended while a pass ran waited for the next window deadline).
    evaluated_at: Option<Instant>,
}

impl LossTracker {
    pub fn new(grace: Duration, fraction: f64, window: Duration) -> LossTracker {
        LossTracker {
            grace,
            restart_grace: grace,
            stopped_cleanly: BTreeSet::new(),
            fraction,
            window,
            vanished: BTreeMap::new(),
            trip: None,
            forgiven: BTreeSet::new(),
            evaluated_at: None,
        }
    }

    /// Machines marked as stopped cleanly get `restart_grace`.
    pub fn with_restart_grace(mut self, restart_grace: Duration) -> LossTracker {
        self.restart_grace = restart_grace;
        self
    }

    /// The machines whose fleetd stopped cleanly (their marks, read from
    /// the registry), replacing what was known.
    pub fn set_stopped_cleanly(&mut self, machines: BTreeSet<MachineId>) {
        self.stopped_cleanly = machines;
    }

    /// How long `machine` may stay away before its units move.
    fn grace_of(&self, machine: &MachineId) -> Duration {
        if self.stopped_cleanly.contains(machine) {
            self.restart_grace
        } else {
            self.grace
        }
    }

    /// `machine` is absent as of `now` (keeps the earliest time).
    pub fn vanished(&mut self, machine: &MachineId, now: Instant) {
        self.vanished.entry(machine.clone()).or_insert(now);
    }

    /// `machine` is present again.
    pub fn returned(&mut self, machine: &MachineId) {
        self.vanished.remove(machine);
        self.forgiven.remove(machine);
    }

    /// Forgets vanished machines that no longer matter: gone for longer
    /// than any rule looks back and without placements (`has_placements`).
    /// Keeps memory bounded when machines come and go with new ids.
    pub fn prune(&mut self, now: Instant, has_placements: impl Fn(&MachineId) -> bool) {
        let forget_after = self.retire_after();
        let in_trip = |machine: &MachineId| {
            self.trip
                .as_ref()
                .is_some_and(|trip| trip.machines.contains(machine))
        };
        let forgotten: Vec<MachineId> = self
            .vanished
            .iter()
            .filter(|(machine, since)| {
                now.saturating_duration_since(**since) >= forget_after
                    && !has_placements(machine)
                    && !in_trip(machine)
            })
            .map(|(machine, _)| machine.clone())
            .collect();
        for machine in forgotten {
            self.vanished.remove(&machine);
            self.forgiven.remove(&machine);
        }
    }

    /// How long a machine stays away before it counts as retired (its global
    /// units are released) and may be forgotten: longer than any rule looks
    /// back, twice over (30 minutes with the default restart grace).
    fn retire_after(&self) -> Duration {
        self.window
            .max(self.grace * (BREAKER_HOLD_GRACES + 1))
            .max(self.restart_grace)
            * 2
    }

    /// Whether the breaker holds.
    pub fn is_tripped(&self) -> bool {
        self.trip.is_some()
    }

    /// The policy for a pass at `now`, with `n_present` live machines, and
    /// the breaker change this evaluation caused (if any).
    pub fn evaluate(
        &mut self,
        now: Instant,
        n_present: usize,
    ) -> (LossPolicy, Option<BreakerEvent>) {
        self.evaluated_at = Some(now);
        let recent: BTreeSet<MachineId> = self
            .vanished
            .iter()
            .filter(|(machine, since)| {
                now.saturating_duration_since(**since) <= self.window
                    && !self.forgiven.contains(*machine)
            })
            .map(|(machine, _)| machine.clone())
            .collect();
        let mut event = None;
        match &mut self.trip {
            None => {
                if above(recent.len(), n_present, self.fraction) {
                    event = Some(BreakerEvent::Tripped {
                        lost: recent.len(),
                        known: n_present + recent.len(),
                        window: self.window,
                    });
                    self.trip = Some(Trip {
                        machines: recent,
                        since: now,
                    });
                }
            }
            Some(trip) => {
                trip.machines
                    .retain(|machine| self.vanished.contains_key(machine));
                trip.machines.extend(recent);
                let held = now.saturating_duration_since(trip.since);
                if !above(trip.machines.len(), n_present, self.fraction) {
                    event = Some(BreakerEvent::ResumedMachinesReturned {
                        still_lost: trip.machines.len(),
                    });
                    self.trip = None;
                } else if held >= self.grace * BREAKER_HOLD_GRACES {
                    event = Some(BreakerEvent::ResumedHoldExpired {
                        lost: trip.machines.len(),
                        held,
                    });
                    self.forgiven.extend(trip.machines.iter().cloned());
                    self.trip = None;
                }
            }
        }
        let lost_beyond_grace = self
            .vanished
            .iter()
            .filter(|(machine, since)| {
                now.saturating_duration_since(**since) >= self.grace_of(machine)
            })
            .map(|(machine, _)| machine.clone())
            .collect();
        let retired = self
            .vanished
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= self.retire_after())
            .map(|(machine, _)| machine.clone())
            .collect();
        (
            LossPolicy {
                lost_beyond_grace,
                retired,
                breaker_tripped: self.trip.is_some(),
            },
            event,
        )
    }

    /// When the policy may next change by the clock alone (a grace period
    /// ending, the breaker's hold ending, a loss leaving the window): the
    /// engine runs a pass then. A deadline that passed after the last
    /// evaluation (e.g. while that pass was running) is returned too: it is
    /// due at once.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let after = self.evaluated_at.map_or(now, |at| at.min(now));
        let mut deadlines: Vec<Instant> = Vec::new();
        for (machine, since) in &self.vanished {
            for deadline in [
                *since + self.grace_of(machine),
                *since + self.window + Duration::from_millis(1),
                *since + self.retire_after(),
            ] {
                if deadline > after {
                    deadlines.push(deadline);
                }
            }
        }
        if let Some(trip) = &self.trip {
            deadlines.push(trip.since + self.grace * BREAKER_HOLD_GRACES);
        }
        deadlines.into_iter().min()
    }
}

/// Whether `lost` of `lost + n_present` machines is above `fraction`.
fn above(lost: usize, n_present: usize, fraction: f64) -> bool {
    let known = lost + n_present;
    lost > 0 && known > 0 && (lost as f64) / (known as f64) > fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(30);

    fn id(name: &str) -> MachineId {
        name.parse().expect("machine id")
    }

    fn released(policy: &LossPolicy, machine: &str) -> bool {
        policy.releases(&id(machine))
    }

    #[test]
    fn one_lost_machine_is_released_after_the_grace() {
        let start = Instant::now();
        let mut tracker = LossTracker::new(GRACE, 0.5, WINDOW);
        tracker.vanished(&id("m1"), start);
        let (policy, event) = tracker.evaluate(start + Duration::from_secs(5), 3);
        assert_eq!(event, None);
        assert!(!released(&policy, "m1"));
        assert_eq!(
            tracker.next_deadline(start + Duration::from_secs(5)),
            Some(start + GRACE)
        );
        let (policy, _) = tracker.evaluate(start + GRACE, 3);
        assert!(released(&policy, "m1"));
    }

    #[test]
    fn a_machine_away_for_twice_the_longest_rule_is_retired_and_its_globals_released() {
        let start = Instant::now();
        let restart_grace = Duration::from_secs(900);
        let mut tracker = LossTracker::new(GRACE, 0.5, WINDOW).with_restart_grace(restart_grace);
        tracker.vanished(&id("m1"), start);
        let later = start + WINDOW * 2;
        let (policy, _) = tracker.evaluate(later, 3);
        assert!(released(&policy, "m1"));
        assert!(!policy.releases_globals(&id("m1")));
        let retire = start + restart_grace * 2;
        assert_eq!(tracker.next_deadline(later), Some(retire));
        let (policy, _) = tracker.evaluate(retire, 3);
        assert!(policy.releases_globals(&id("m1")));
    }

    #[test]
    fn returning_machine_is_not_released() {
        let start = Instant::now();
        let mut tracker = LossTracker::new(GRACE, 0.5, WINDOW);
        tracker.vanished(&id("m1"), start);
        tracker.returned(&id("m1"));
        let (policy, _) = tracker.evaluate(start + GRACE * 2, 4);
        assert!(policy.lost_beyond_grace.is_empty());
    }

    #[test]
    fn breaker_trips_when_too_many_vanish_and_resumes_when_they_return() {
        let start = Instant::now();
        let mut tracker = LossTracker::new(GRACE, 0.5, WINDOW);
        for machine in ["m1", "m2", "m3"] {
            tracker.vanished(&id(machine), start);
        }
        // 3 of 5 known machines: above one half.
        let (policy, event) = tracker.evaluate(start + GRACE, 2);
        assert_eq!(
            event,
            Some(BreakerEvent::Tripped {
                lost: 3,
                known: 5,
                window: WINDOW
            })
        );
        assert!(!released(&policy, "m1"));
        // Two come back: 1 of 5 lost, the breaker lets go and m3 moves.
        tracker.returned(&id("m1"));
        tracker.returned(&id("m2"));
        let (policy, event) = tracker.evaluate(start + GRACE * 2, 4);
        assert_eq!(
            event,
            Some(BreakerEvent::ResumedMachinesReturned { still_lost: 1 })
        );
        assert!(released(&policy, "m3"));
    }

    #[test]
    fn breaker_lets_go_after_five_graces_and_does_not_trip_again() {
        let start = Instant::now();
        let mut tracker = LossTracker::new(GRACE, 0.5, WINDOW);
        tracker.vanished(&id("m1"), start);
        tracker.vanished(&id("m2"), start);
        let (_, event) = tracker.evaluate(start, 1);
        assert!(matches!(
            event,
            Some(BreakerEvent::Tripped {
                lost: 2,
                known: 3,
                ..
            })
        ));
        let (policy, event) = tracker.evaluate(start + GRACE * 4, 1);
        assert_eq!(event, None);
        assert!(policy.breaker_tripped);
        assert_eq!(
            tracker.next_deadline(start + GRACE * 4),
            Some(start + GRACE * 5)
        );
        let (policy, event) = tracker.evaluate(start + GRACE * 5, 1);
        assert!(matches!(
            event,
            Some(BreakerEvent::ResumedHoldExpired { lost: 2, .. })
        ));
        assert!(released(&policy, "m1") && released(&policy, "m2"));
        let (policy, event) = tracker.evaluate(start + GRACE * 5 + Duration::from_secs(1), 1);
        assert_eq!(event, None);
        assert!(!policy.breaker_tripped);
    }

    #[test]
    fn a_grace_ending_during_a_pass_is_due_at_once() {
        let start = Instant::now();
        let mut tracker = LossTracker::new(GRACE, 0.5, WINDOW);
        let later = start + Duration::from_millis(5);
        tracker.vanished(&id("m1"), start);
        tracker.vanished(&id("m2"), later);
        let (policy, _) = tracker.evaluate(start + GRACE, 8);
        assert!(released(&policy, "m1") && !released(&policy, "m2"));
        // The pass took 20 ms: m2's grace ended meanwhile and is due now,
        // not at the end of the breaker window.
        let after_pass = start + GRACE + Duration::from_millis(20);
        assert_eq!(tracker.next_deadline(after_pass), Some(later + GRACE));
        let (policy, _) = tracker.evaluate(after_pass, 8);
        assert!(released(&policy, "m2"));
        assert_eq!(
            tracker.next_deadline(after_pass),
            Some(start + WINDOW + Duration::from_millis(1))
        );
    }

    #[test]
    fn losses_spread_over_more_than_a_window_do_not_trip() {
        let start = Instant::now();
        let mut tracker = LossTracker::new(GRACE, 0.5, WINDOW);
        tracker.vanished(&id("m1"), start);
        let (_, event) = tracker.evaluate(start, 3);
        assert_eq!(event, None);
        let later = start + WINDOW + Duration::from_secs(1);
        tracker.vanished(&id("m2"), later);
        let (policy, event) = tracker.evaluate(later, 2);
        assert_eq!(event, None, "only m2 is recent: 1 of 3");
        assert!(released(&policy, "m1"));
        assert!(!released(&policy, "m2"));
    }

    #[test]
    fn a_cleanly_stopped_machine_waits_for_the_restart_grace() {
        let restart_grace = Duration::from_secs(600);
        let start = Instant::now();
        let mut tracker = LossTracker::new(GRACE, 0.5, WINDOW).with_restart_grace(restart_grace);
        tracker.set_stopped_cleanly([id("m1")].into_iter().collect());
        tracker.vanished(&id("m1"), start);
        tracker.vanished(&id("m2"), start);
        // Long past the machine-loss grace (and past the breaker's hold):
        // the crashed machine's units move, the stopped one's stay.
        let later = start + GRACE * (BREAKER_HOLD_GRACES + 1);
        let (policy, _) = tracker.evaluate(later, 8);
        assert!(released(&policy, "m2"));
        assert!(!released(&policy, "m1"));
        assert_eq!(tracker.next_deadline(later), Some(start + restart_grace));
        let (policy, _) = tracker.evaluate(start + restart_grace, 8);
        assert!(released(&policy, "m1"));
        // Without its mark (it registered again and stopped by a crash
        // since), the ordinary grace applies.
        tracker.set_stopped_cleanly(BTreeSet::new());
        tracker.returned(&id("m1"));
        tracker.vanished(&id("m1"), later);
        let (policy, _) = tracker.evaluate(later + GRACE, 8);
        assert!(released(&policy, "m1"));
    }
}
