//! Run-to-completion units in the engine: when a run is over, and when a
//! failed run is tried again.
//!
//! A unit with `Type=oneshot` and without `RemainAfterExit=yes` runs once.
//! Its agent writes how the run ended to `P/machine/runs/<machine>/<unit>`
//! ([`RunOutcome`], no lease: it outlives the machine). From those records
//! and its own count (`P/engine/runs/<unit>`, [`RunAttempts`]) the engine
//! decides, with the pure [`plan`]:
//! - a run that succeeded, or failed with no retry left, is **finished**: the
//!   unit and its placement are left out of the scheduler's input, so the
//!   placement stays where the unit ran, even on a machine that is lost
//!   (nothing runs it again elsewhere);
//! - a failed run with retries left (`[X-Fleet] Retries=N`) is counted, then
//!   the unit is taken off the machine it failed on and, in the same pass,
//!   placed on a machine it has not failed on when one fits
//!   ([`RunPlan::avoid`]); when none fits, it is placed in a later pass
//!   anywhere the scheduler allows (possibly the same machine: a placement
//!   cannot be removed and written again in one transaction).
//!
//! Only launched, non-global units with a known content are concerned. The
//! count is written before the unplacement, and a counted failure is never
//! counted again (a failure is named by its machine and exit time), so an
//! engine killed between the two steps is finished by the next one.

use std::collections::{BTreeMap, BTreeSet};

use fleet_registry::{MachineId, Placement, RunAttempts, RunFailure, RunOutcome, TargetState};
use fleet_systemd::unit::UnitName;

use crate::engine::model::UnitRecord;

/// What the engine knows of the runs: every machine's outcomes and its own
/// counts, read at every re-list and then followed by a watch.
#[derive(Clone, Debug, Default)]
pub struct RunBook {
    pub outcomes: BTreeMap<(UnitName, MachineId), RunOutcome>,
    pub attempts: BTreeMap<UnitName, RunAttempts>,
}

impl RunBook {
    pub fn new(outcomes: Vec<RunOutcome>, attempts: Vec<RunAttempts>) -> RunBook {
        RunBook {
            outcomes: outcomes
                .into_iter()
                .map(|outcome| ((outcome.unit.clone(), outcome.machine.clone()), outcome))
                .collect(),
            attempts: attempts
                .into_iter()
                .map(|attempts| (attempts.unit.clone(), attempts))
                .collect(),
        }
    }
}

/// What one pass does about run-to-completion units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunPlan {
    /// Runs are over: these units and their placements stay out of the
    /// scheduler's input (they stay where they ran).
    pub finished: BTreeSet<UnitName>,
    /// Counts to write (leader-guarded) before anything else.
    pub counts: Vec<RunAttempts>,
    /// Failed runs to try again: take the unit off this machine (after the
    /// count is written); the unit stays out of the main pass.
    pub retries: Vec<(UnitName, MachineId)>,
    /// Units to place for a retry (those of `retries`, and unplaced ones
    /// whose retry is pending), with the machines their runs failed on:
    /// placed apart from the main pass, on another machine when one fits.
    pub avoid: BTreeMap<UnitName, BTreeSet<MachineId>>,
    /// Counts of units that are gone, not launched or have new content.
    pub forget: Vec<UnitName>,
}

impl RunPlan {
    /// Whether the main scheduling pass must leave `unit` alone.
    pub fn holds(&self, unit: &UnitName) -> bool {
        self.finished.contains(unit)
            || self.avoid.contains_key(unit)
            || self.retries.iter().any(|(retried, _)| retried == unit)
    }
}

/// Decides what to do about run-to-completion units (see the module docs).
/// Pure: the engine's model and run book in, decisions out.
pub fn plan(
    units: &BTreeMap<UnitName, UnitRecord>,
    placements: &BTreeMap<(UnitName, MachineId), Placement>,
    book: &RunBook,
) -> RunPlan {
    let mut run_plan = RunPlan::default();
    let concerned: Vec<(&UnitName, &UnitRecord)> = units
        .iter()
        .filter(|(_, record)| {
            record.desired_state == TargetState::Launched
                && record.spec.as_ref().is_some_and(|spec| {
                    spec.requirements.runs_to_completion && !spec.requirements.global
                })
        })
        .collect();
    // Where each concerned unit is placed (one machine: not global).
    let placed: BTreeMap<&UnitName, &MachineId> = if concerned.is_empty() {
        BTreeMap::new()
    } else {
        placements
            .keys()
            .map(|(unit, machine)| (unit, machine))
            .collect()
    };
    for (name, record) in concerned {
        let retries = record
            .spec
            .as_ref()
            .map_or(0, |spec| spec.requirements.retries);
        let count = book
            .attempts
            .get(name)
            .filter(|attempts| attempts.hash == record.hash);
        let Some(machine) = placed.get(name).copied() else {
            if let Some(count) = count.filter(|count| retry_pending(count)) {
                let failed_on = count.failures.iter().map(|f| f.machine.clone()).collect();
                run_plan.avoid.insert(name.clone(), failed_on);
            }
            continue;
        };
        let Some(outcome) = book
            .outcomes
            .get(&(name.clone(), machine.clone()))
            .filter(|outcome| outcome.hash == record.hash)
        else {
            continue; // Not run yet, or running.
        };
        if outcome.report.succeeded() {
            run_plan.finished.insert(name.clone());
            continue;
        }
        on_failure(name, outcome, count, retries, &mut run_plan);
    }
    run_plan.forget = book
        .attempts
        .values()
        .filter(|attempts| {
            units.get(&attempts.unit).is_none_or(|record| {
                record.hash != attempts.hash || record.desired_state != TargetState::Launched
            })
        })
        .map(|attempts| attempts.unit.clone())
        .collect();
    run_plan
}

/// A failed run on the unit's machine: count it once, then retry while
/// retries are left, else the unit is finished (failed).
fn on_failure(
    name: &UnitName,
    outcome: &RunOutcome,
    count: Option<&RunAttempts>,
    retries: u32,
    run_plan: &mut RunPlan,
) {
    let failure = RunFailure {
        machine: outcome.machine.clone(),
        exited_at_usecs: outcome.report.exited_at_usecs,
    };
    let mut count = count.cloned().unwrap_or_else(|| RunAttempts {
        unit: name.clone(),
        hash: outcome.hash,
        attempts: 1,
        failures: Vec::new(),
    });
    if !count.failures.contains(&failure) {
        count.failures.push(failure);
        // `attempts` runs were started; the first is not a retry.
        if count.attempts <= retries {
            count.attempts += 1;
        }
        run_plan.counts.push(count.clone());
    }
    if retry_pending(&count) {
        run_plan
            .retries
            .push((name.clone(), outcome.machine.clone()));
        let failed_on = count.failures.iter().map(|f| f.machine.clone()).collect();
        run_plan.avoid.insert(name.clone(), failed_on);
    } else {
        run_plan.finished.insert(name.clone());
    }
}

/// A retry was decided and its run has not failed yet: more runs were
/// started than failed.
fn retry_pending(count: &RunAttempts) -> bool {
    usize::try_from(count.attempts).is_ok_and(|attempts| attempts > count.failures.len())
}

#[cfg(test)]
mod tests {
    use fleet_registry::RunReport;
    use fleet_systemd::unit::{UnitFile, UnitHash};

    use super::*;
    use crate::engine::scheduler::UnitSpec;

    fn name(unit: &str) -> UnitName {
        unit.parse().expect("a valid unit name")
    }

    fn machine(id: &str) -> MachineId {
        id.parse().expect("a valid machine id")
    }

    /// A unit record whose content says `text`.
    fn record(unit: &str, text: &str, desired_state: TargetState) -> (UnitName, UnitRecord) {
        let file = UnitFile::parse(text).expect("a valid unit");
        let hash = file.hash();
        let spec = UnitSpec::new(name(unit), &file, hash, desired_state);
        let record = UnitRecord {
            hash,
            desired_state,
            spec: Some(spec),
        };
        (name(unit), record)
    }

    const ONESHOT: &str = "[Service]\nType=oneshot\nExecStart=/bin/false\n[X-Fleet]\nRetries=1\n";

    struct Cluster {
        units: BTreeMap<UnitName, UnitRecord>,
        placements: BTreeMap<(UnitName, MachineId), Placement>,
        book: RunBook,
    }

    impl Cluster {
        fn with(unit: &str, text: &str) -> Cluster {
            let units: BTreeMap<_, _> = [record(unit, text, TargetState::Launched)]
                .into_iter()
                .collect();
            Cluster {
                units,
                placements: BTreeMap::new(),
                book: RunBook::default(),
            }
        }

        fn hash(&self, unit: &str) -> UnitHash {
            self.units[&name(unit)].hash
        }

        fn place(&mut self, unit: &str, on: &str) {
            let placement = Placement {
                unit: name(unit),
                machine: machine(on),
                hash: self.hash(unit),
                target_state: TargetState::Launched,
            };
            self.placements.clear();
            self.placements.insert((name(unit), machine(on)), placement);
        }

        fn ended(&mut self, unit: &str, on: &str, result: &str, exited_at_usecs: u64) {
            let outcome = RunOutcome {
                unit: name(unit),
                machine: machine(on),
                hash: self.hash(unit),
                report: RunReport {
                    result: result.to_owned(),
                    exit_status: if result == "success" { 0 } else { 3 },
                    exited_at_usecs,
                    attempt: 1,
                },
            };
            self.book
                .outcomes
                .insert((name(unit), machine(on)), outcome);
        }

        fn plan(&self) -> RunPlan {
            plan(&self.units, &self.placements, &self.book)
        }

        /// Applies the plan's counts and unplacements, as the engine does.
        fn apply(&mut self, run_plan: &RunPlan) {
            for count in &run_plan.counts {
                self.book.attempts.insert(count.unit.clone(), count.clone());
            }
            for (unit, on) in &run_plan.retries {
                self.placements.remove(&(unit.clone(), on.clone()));
            }
        }
    }

    #[test]
    fn a_run_that_succeeded_is_finished_even_on_a_lost_machine() {
        let mut cluster = Cluster::with("job.service", ONESHOT);
        cluster.place("job.service", "m1");
        assert_eq!(
            cluster.plan(),
            RunPlan::default(),
            "running: the scheduler's"
        );
        cluster.ended("job.service", "m1", "success", 10);
        let run_plan = cluster.plan();
        assert!(run_plan.holds(&name("job.service")));
        assert_eq!(run_plan.finished, BTreeSet::from([name("job.service")]));
        assert!(run_plan.counts.is_empty() && run_plan.retries.is_empty());
    }

    #[test]
    fn ordinary_stopped_and_global_units_are_the_schedulers() {
        let mut cluster = Cluster::with("web.service", "[Service]\nExecStart=/bin/web\n");
        cluster.place("web.service", "m1");
        cluster.ended("web.service", "m1", "success", 10);
        assert_eq!(cluster.plan(), RunPlan::default());
        let remains = "[Service]\nType=oneshot\nRemainAfterExit=yes\n";
        let mut cluster = Cluster::with("setup.service", remains);
        cluster.place("setup.service", "m1");
        cluster.ended("setup.service", "m1", "success", 10);
        assert_eq!(cluster.plan(), RunPlan::default());
        let global = "[Service]\nType=oneshot\n[X-Fleet]\nGlobal=true\n";
        let mut cluster = Cluster::with("g.service", global);
        cluster.place("g.service", "m1");
        cluster.ended("g.service", "m1", "success", 10);
        assert_eq!(cluster.plan(), RunPlan::default());
        let mut cluster = Cluster::with("job.service", ONESHOT);
        let (unit, mut stopped) = record("job.service", ONESHOT, TargetState::Loaded);
        stopped.desired_state = TargetState::Loaded;
        cluster.units.insert(unit, stopped);
        cluster.place("job.service", "m1");
        cluster.ended("job.service", "m1", "success", 10);
        assert_eq!(cluster.plan(), RunPlan::default());
    }

    #[test]
    fn a_failure_is_retried_elsewhere_once_then_the_unit_is_finished() {
        let mut cluster = Cluster::with("job.service", ONESHOT);
        cluster.place("job.service", "m1");
        cluster.ended("job.service", "m1", "exit-code", 10);
        // First failure: counted (2 runs), taken off m1.
        let run_plan = cluster.plan();
        assert_eq!(run_plan.retries, vec![(name("job.service"), machine("m1"))]);
        assert_eq!(run_plan.counts.len(), 1);
        assert_eq!(run_plan.counts[0].attempts, 2);
        assert!(run_plan.holds(&name("job.service")));
        let away_from_m1 = BTreeMap::from([(name("job.service"), BTreeSet::from([machine("m1")]))]);
        assert_eq!(
            run_plan.avoid, away_from_m1,
            "placed again in the same pass"
        );
        cluster.apply(&run_plan);
        // Unplaced (when no other machine took it at once): it still waits
        // for a placement away from m1.
        let run_plan = cluster.plan();
        assert_eq!(
            run_plan.avoid,
            BTreeMap::from([(name("job.service"), BTreeSet::from([machine("m1")]))])
        );
        assert!(run_plan.counts.is_empty());
        // Placed on m2, fails there too: counted, no retry left.
        cluster.place("job.service", "m2");
        assert_eq!(cluster.plan(), RunPlan::default(), "running on m2");
        cluster.ended("job.service", "m2", "exit-code", 20);
        let run_plan = cluster.plan();
        assert!(run_plan.retries.is_empty());
        assert_eq!(run_plan.counts.len(), 1);
        assert_eq!(run_plan.counts[0].attempts, 2);
        assert_eq!(run_plan.counts[0].failures.len(), 2);
        assert_eq!(run_plan.finished, BTreeSet::from([name("job.service")]));
        cluster.apply(&run_plan);
        // Counted once: the next pass only holds it.
        let run_plan = cluster.plan();
        assert!(run_plan.counts.is_empty() && run_plan.retries.is_empty());
        assert_eq!(run_plan.finished.len(), 1);
    }

    #[test]
    fn a_retry_interrupted_after_its_count_is_finished_by_the_next_pass() {
        let mut cluster = Cluster::with("job.service", ONESHOT);
        cluster.place("job.service", "m1");
        cluster.ended("job.service", "m1", "exit-code", 10);
        let run_plan = cluster.plan();
        // The count was written, the unplacement was not (engine killed).
        for count in &run_plan.counts {
            cluster
                .book
                .attempts
                .insert(count.unit.clone(), count.clone());
        }
        let again = cluster.plan();
        assert!(again.counts.is_empty(), "counted once");
        assert_eq!(again.retries, run_plan.retries);
    }

    #[test]
    fn no_retries_means_one_run() {
        let text = "[Service]\nType=oneshot\nExecStart=/bin/false\n";
        let mut cluster = Cluster::with("job.service", text);
        cluster.place("job.service", "m1");
        cluster.ended("job.service", "m1", "exit-code", 10);
        let run_plan = cluster.plan();
        assert!(run_plan.retries.is_empty());
        assert_eq!(run_plan.counts[0].attempts, 1);
        assert!(run_plan.finished.contains(&name("job.service")));
    }

    #[test]
    fn stale_counts_and_outcomes_are_ignored_or_forgotten() {
        let mut cluster = Cluster::with("job.service", ONESHOT);
        cluster.place("job.service", "m1");
        cluster.ended("job.service", "m1", "exit-code", 10);
        let run_plan = cluster.plan();
        cluster.apply(&run_plan);
        // New content: the old outcome and count no longer apply.
        let text = "[Service]\nType=oneshot\nExecStart=/bin/true\n";
        let (unit, new) = record("job.service", text, TargetState::Launched);
        cluster.units.insert(unit, new);
        cluster.place("job.service", "m2");
        let run_plan = cluster.plan();
        assert_eq!(run_plan.forget, vec![name("job.service")]);
        assert!(!run_plan.holds(&name("job.service")));
        // A destroyed unit's count goes too.
        cluster.units.clear();
        assert_eq!(cluster.plan().forget, vec![name("job.service")]);
        // Outcomes of other machines than the unit's are stale.
        let mut cluster = Cluster::with("job.service", ONESHOT);
        cluster.ended("job.service", "m1", "success", 10);
        cluster.place("job.service", "m2");
        assert_eq!(cluster.plan(), RunPlan::default());
    }
}
