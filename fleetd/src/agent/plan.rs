//! The agent's planning: what this machine should run vs what it runs →
//! an ordered list of [`Task`]s. Pure: no I/O, no clock.
//!
//! Differences from the original, on purpose:
//! - Adoption (restarting fleetd must not restart services): a unit found in the units directory at
//!   start-up with the scheduled hash, loaded in systemd and already in the
//!   wanted active/inactive condition is *adopted* (bookkeeping only): no
//!   rewrite, no reload, not even a no-op `StartUnit`.
//! - Every file in the units directory is tracked, whatever its type.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use fleet_registry::TargetState;
use fleet_systemd::unit::{UnitHash, UnitName};

/// What the schedule asks of one unit on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desired {
    pub hash: UnitHash,
    /// `Loaded` or `Launched` (an `Inactive` target means "not here").
    pub target: TargetState,
}

/// What is on this machine for one unit (a file in the units directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    /// The hash of the file's canonical text; `None` when it does not parse.
    pub hash: Option<UnitHash>,
    /// What this agent brought the unit to; `None` when it was found on disk
    /// (a previous fleetd's) and not touched since.
    pub reached: Option<TargetState>,
    /// systemd has the unit loaded (`LoadState=loaded`).
    pub loaded: bool,
    /// systemd says it is active (or activating/reloading).
    pub active: bool,
    /// A run-to-completion unit whose run with this content is over (its
    /// outcome is in the registry): it is never started again by a
    /// restarted agent, only by a new start after a stop.
    pub completed: bool,
}

/// One step of a reconcile pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// Stop, disable, reset-failed and remove the file.
    Unload {
        unit: UnitName,
        reason: &'static str,
    },
    /// Write the file of `hash`, link it (and enable it with `[Install]`).
    Load {
        unit: UnitName,
        hash: UnitHash,
        reason: &'static str,
    },
    /// systemd daemon-reload, after the loads and unloads.
    ReloadUnitFiles,
    /// Take over a unit a previous fleetd left in the wanted condition.
    Adopt {
        unit: UnitName,
        reached: TargetState,
    },
    Stop {
        unit: UnitName,
        reason: &'static str,
    },
    Start {
        unit: UnitName,
        reason: &'static str,
    },
}

impl Task {
    /// The execution order: Unload < Load < ReloadUnitFiles < Adopt < Stop < Start.
    fn priority(&self) -> u8 {
        match self {
            Task::Unload { .. } => 1,
            Task::Load { .. } => 2,
            Task::ReloadUnitFiles => 3,
            Task::Adopt { .. } => 4,
            Task::Stop { .. } => 5,
            Task::Start { .. } => 6,
        }
    }

    /// The unit the task is about (`None` for the daemon reload).
    pub fn unit(&self) -> Option<&UnitName> {
        match self {
            Task::Unload { unit, .. }
            | Task::Load { unit, .. }
            | Task::Adopt { unit, .. }
            | Task::Stop { unit, .. }
            | Task::Start { unit, .. } => Some(unit),
            Task::ReloadUnitFiles => None,
        }
    }

    /// Why the task is needed, for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            Task::Unload { reason, .. }
            | Task::Load { reason, .. }
            | Task::Stop { reason, .. }
            | Task::Start { reason, .. } => reason,
            Task::ReloadUnitFiles => "unit files changed",
            Task::Adopt { .. } => "unit already in the wanted state",
        }
    }

    /// The task's name as the original logs it.
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Unload { .. } => "UnloadUnit",
            Task::Load { .. } => "LoadUnit",
            Task::ReloadUnitFiles => "ReloadUnitFiles",
            Task::Adopt { .. } => "AdoptUnit",
            Task::Stop { .. } => "StopUnit",
            Task::Start { .. } => "StartUnit",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unit() {
            Some(unit) => write!(f, "{} {unit}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// The tasks that take `current` to `desired`, in execution order (stable:
/// by priority, then unit name).
pub fn plan(
    desired: &BTreeMap<UnitName, Desired>,
    current: &BTreeMap<UnitName, Current>,
) -> Vec<Task> {
    let names: BTreeSet<&UnitName> = desired.keys().chain(current.keys()).collect();
    let mut tasks = Vec::new();
    for name in names {
        let wanted = desired
            .get(name)
            .filter(|d| d.target != TargetState::Inactive);
        plan_unit(name, wanted, current.get(name), &mut tasks);
    }
    if tasks
        .iter()
        .any(|t| matches!(t, Task::Load { .. } | Task::Unload { .. }))
    {
        tasks.push(Task::ReloadUnitFiles);
    }
    // Stable: within a priority the units stay in name order.
    tasks.sort_by_key(Task::priority);
    tasks
}

/// `tasks` with a daemon-reload added when an earlier one failed
/// (`reload_pending`): files written then are not loaded by systemd until a
/// reload works, even if this pass changes no file.
pub fn with_pending_reload(mut tasks: Vec<Task>, reload_pending: bool) -> Vec<Task> {
    if reload_pending && !tasks.contains(&Task::ReloadUnitFiles) {
        tasks.push(Task::ReloadUnitFiles);
        tasks.sort_by_key(Task::priority);
    }
    tasks
}

fn plan_unit(
    name: &UnitName,
    desired: Option<&Desired>,
    current: Option<&Current>,
    tasks: &mut Vec<Task>,
) {
    let unit = || name.clone();
    let (desired, current) = match (desired, current) {
        (None, None) => return,
        (None, Some(_)) => {
            tasks.push(Task::Unload {
                unit: unit(),
                reason: "unit loaded but not scheduled here",
            });
            return;
        }
        (Some(desired), None) => {
            tasks.push(Task::Load {
                unit: unit(),
                hash: desired.hash,
                reason: "unit scheduled here but not loaded",
            });
            if desired.target == TargetState::Launched {
                tasks.push(Task::Start {
                    unit: unit(),
                    reason: "unit's target is launched",
                });
            }
            return;
        }
        (Some(desired), Some(current)) => (desired, current),
    };
    let launch = desired.target == TargetState::Launched;
    if current.hash != Some(desired.hash) {
        tasks.push(Task::Unload {
            unit: unit(),
            reason: "unit's content changed",
        });
        tasks.push(Task::Load {
            unit: unit(),
            hash: desired.hash,
            reason: "unit's content changed",
        });
        if launch {
            tasks.push(Task::Start {
                unit: unit(),
                reason: "unit's target is launched",
            });
        }
        return;
    }
    match current.reached {
        Some(reached) if reached == desired.target => {}
        Some(TargetState::Launched) => tasks.push(Task::Stop {
            unit: unit(),
            reason: "unit's target is loaded",
        }),
        Some(_) => tasks.push(Task::Start {
            unit: unit(),
            reason: "unit's target is launched",
        }),
        // Found on disk, not touched by this agent yet.
        None if !current.loaded => {
            tasks.push(Task::Load {
                unit: unit(),
                hash: desired.hash,
                reason: "unit on disk but not loaded in systemd",
            });
            if launch && current.completed {
                tasks.push(Task::Adopt {
                    unit: unit(),
                    reached: TargetState::Launched,
                });
            } else if launch {
                tasks.push(Task::Start {
                    unit: unit(),
                    reason: "unit's target is launched",
                });
            }
        }
        None => match (launch, current.active) {
            (true, true) => tasks.push(Task::Adopt {
                unit: unit(),
                reached: TargetState::Launched,
            }),
            // Its run is over: starting it would run it a second time.
            (true, false) if current.completed => tasks.push(Task::Adopt {
                unit: unit(),
                reached: TargetState::Launched,
            }),
            (false, false) => tasks.push(Task::Adopt {
                unit: unit(),
                reached: TargetState::Loaded,
            }),
            (true, false) => tasks.push(Task::Start {
                unit: unit(),
                reason: "unit's target is launched",
            }),
            (false, true) => tasks.push(Task::Stop {
                unit: unit(),
                reason: "unit's target is loaded",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UnitName {
        s.parse()
            .unwrap_or_else(|e| panic!("test unit name {s}: {e}"))
    }

    fn hash(n: u8) -> UnitHash {
        UnitHash([n; 20])
    }

    fn want(unit: &str, h: u8, target: TargetState) -> (UnitName, Desired) {
        (
            name(unit),
            Desired {
                hash: hash(h),
                target,
            },
        )
    }

    fn have(
        unit: &str,
        h: Option<u8>,
        reached: Option<TargetState>,
        loaded: bool,
        active: bool,
    ) -> (UnitName, Current) {
        (
            name(unit),
            Current {
                hash: h.map(hash),
                reached,
                loaded,
                active,
                completed: false,
            },
        )
    }

    /// Plans and renders the tasks as `Kind unit` strings.
    fn check(desired: &[(UnitName, Desired)], current: &[(UnitName, Current)], expected: &[&str]) {
        let desired: BTreeMap<_, _> = desired.iter().cloned().collect();
        let current: BTreeMap<_, _> = current.iter().cloned().collect();
        let got: Vec<String> = plan(&desired, &current)
            .iter()
            .map(Task::to_string)
            .collect();
        assert_eq!(got, expected, "desired {desired:?}\ncurrent {current:?}");
    }

    use TargetState::{Inactive, Launched, Loaded};

    #[test]
    fn nothing_to_do() {
        check(&[], &[], &[]);
        check(
            &[want("a.service", 1, Launched)],
            &[have("a.service", Some(1), Some(Launched), true, true)],
            &[],
        );
        check(
            &[want("a.service", 1, Loaded)],
            &[have("a.service", Some(1), Some(Loaded), true, false)],
            &[],
        );
    }

    #[test]
    fn new_units_are_loaded_then_started() {
        check(
            &[want("b.service", 1, Launched), want("a.service", 2, Loaded)],
            &[],
            &[
                "LoadUnit a.service",
                "LoadUnit b.service",
                "ReloadUnitFiles",
                "StartUnit b.service",
            ],
        );
    }

    #[test]
    fn units_not_scheduled_here_are_unloaded() {
        check(
            &[],
            &[have("a.service", Some(1), Some(Launched), true, true)],
            &["UnloadUnit a.service", "ReloadUnitFiles"],
        );
        // An inactive target means the same as no placement.
        check(
            &[want("a.service", 1, Inactive)],
            &[have("a.service", Some(1), Some(Loaded), true, false)],
            &["UnloadUnit a.service", "ReloadUnitFiles"],
        );
        check(&[want("a.service", 1, Inactive)], &[], &[]);
    }

    #[test]
    fn a_changed_hash_replaces_the_unit() {
        check(
            &[want("a.service", 2, Launched)],
            &[have("a.service", Some(1), Some(Launched), true, true)],
            &[
                "UnloadUnit a.service",
                "LoadUnit a.service",
                "ReloadUnitFiles",
                "StartUnit a.service",
            ],
        );
        // An unparsable file on disk is replaced too.
        check(
            &[want("a.service", 2, Loaded)],
            &[have("a.service", None, None, false, false)],
            &[
                "UnloadUnit a.service",
                "LoadUnit a.service",
                "ReloadUnitFiles",
            ],
        );
    }

    #[test]
    fn target_changes_start_or_stop_without_reload() {
        check(
            &[want("a.service", 1, Launched)],
            &[have("a.service", Some(1), Some(Loaded), true, false)],
            &["StartUnit a.service"],
        );
        check(
            &[want("a.service", 1, Loaded)],
            &[have("a.service", Some(1), Some(Launched), true, true)],
            &["StopUnit a.service"],
        );
    }

    #[test]
    fn a_restarted_agent_adopts_running_units() {
        // Running with the right hash: adopted, no start, no reload.
        check(
            &[want("a.service", 1, Launched)],
            &[have("a.service", Some(1), None, true, true)],
            &["AdoptUnit a.service"],
        );
        check(
            &[want("a.service", 1, Loaded)],
            &[have("a.service", Some(1), None, true, false)],
            &["AdoptUnit a.service"],
        );
        // Loaded but not running: started; running but should not be: stopped.
        check(
            &[want("a.service", 1, Launched)],
            &[have("a.service", Some(1), None, true, false)],
            &["StartUnit a.service"],
        );
        check(
            &[want("a.service", 1, Loaded)],
            &[have("a.service", Some(1), None, true, true)],
            &["StopUnit a.service"],
        );
        // On disk but unknown to systemd (e.g. the link is gone): load again.
        check(
            &[want("a.service", 1, Launched)],
            &[have("a.service", Some(1), None, false, false)],
            &[
                "LoadUnit a.service",
                "ReloadUnitFiles",
                "StartUnit a.service",
            ],
        );
    }

    #[test]
    fn tasks_are_ordered_by_kind_then_name() {
        check(
            &[
                want("a.service", 1, Launched),
                want("b.service", 1, Loaded),
                want("c.service", 2, Launched),
                want("e.service", 1, Launched),
            ],
            &[
                have("b.service", Some(1), Some(Launched), true, true),
                have("c.service", Some(1), Some(Launched), true, true),
                have("d.service", Some(1), Some(Launched), true, true),
                have("e.service", Some(1), None, true, true),
            ],
            &[
                "UnloadUnit c.service",
                "UnloadUnit d.service",
                "LoadUnit a.service",
                "LoadUnit c.service",
                "ReloadUnitFiles",
                "AdoptUnit e.service",
                "StopUnit b.service",
                "StartUnit a.service",
                "StartUnit c.service",
            ],
        );
    }

    #[test]
    fn every_unit_type_is_tracked() {
        // The original ignored types outside its list (`target`, `slice`, …).
        check(
            &[],
            &[have("x.target", Some(1), Some(Loaded), true, false)],
            &["UnloadUnit x.target", "ReloadUnitFiles"],
        );
    }

    #[test]
    fn a_pending_reload_comes_back_before_the_starts() {
        // The file was written in an earlier pass whose daemon-reload failed:
        // this pass only starts the unit, so the reload must be added, first.
        let desired: BTreeMap<_, _> = [want("a.service", 1, Launched)].into_iter().collect();
        let current: BTreeMap<_, _> = [have("a.service", Some(1), Some(Loaded), true, false)]
            .into_iter()
            .collect();
        let render =
            |tasks: Vec<Task>| -> Vec<String> { tasks.iter().map(Task::to_string).collect() };
        assert_eq!(render(plan(&desired, &current)), ["StartUnit a.service"]);
        assert_eq!(
            render(with_pending_reload(plan(&desired, &current), true)),
            ["ReloadUnitFiles", "StartUnit a.service"]
        );
        assert_eq!(
            render(with_pending_reload(plan(&desired, &current), false)),
            ["StartUnit a.service"]
        );
        // Not twice when the pass reloads anyway.
        let tasks = with_pending_reload(plan(&desired, &BTreeMap::new()), true);
        assert_eq!(
            render(tasks),
            [
                "LoadUnit a.service",
                "ReloadUnitFiles",
                "StartUnit a.service"
            ]
        );
    }

    #[test]
    fn a_restarted_agent_never_runs_a_completed_unit_again() {
        let mut finished = have("job.service", Some(1), None, true, false);
        finished.1.completed = true;
        check(
            &[want("job.service", 1, Launched)],
            std::slice::from_ref(&finished),
            &["AdoptUnit job.service"],
        );
        // Not known to systemd any more (collected after its run): loaded
        // again, still not started.
        let mut collected = finished.clone();
        collected.1.loaded = false;
        check(
            &[want("job.service", 1, Launched)],
            &[collected],
            &[
                "LoadUnit job.service",
                "ReloadUnitFiles",
                "AdoptUnit job.service",
            ],
        );
        // Stopped, then started again: it runs again.
        let mut stopped = finished.clone();
        stopped.1.reached = Some(Loaded);
        check(
            &[want("job.service", 1, Launched)],
            &[stopped],
            &["StartUnit job.service"],
        );
        // New content runs again.
        check(
            &[want("job.service", 2, Launched)],
            &[finished],
            &[
                "UnloadUnit job.service",
                "LoadUnit job.service",
                "ReloadUnitFiles",
                "StartUnit job.service",
            ],
        );
    }
}
