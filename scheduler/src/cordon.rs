//! Cordoned and draining machines, and the scheduler's explanations.
//!
//! A **cordoned** machine takes no new placement (the check every candidate
//! machine goes through rejects it) but keeps what it runs, global units
//! included. A **draining** machine is cordoned, and each pass moves its
//! non-global units to other machines, at most [`Cordons::drain_budget`] per
//! pass, each to the least-loaded machine that satisfies every `[X-Fleet]`
//! rule (a unit's `MachineOf` followers go with it). A unit that no other
//! machine can take (pinned with `MachineID`, or nowhere else fits) stays and
//! is reported in [`Outcome::drain_blocked`] with the reason. The engine owns
//! the budget (how many moved units are still starting elsewhere); the
//! scheduler only spends it, so a drain stays a pure function of the snapshot
//! and continues on whichever engine leads next.
//!
//! [`explain`] runs the same pass and says, for each unit asked about, where
//! it is (or would be) placed and what every machine thinks of it: that is
//! what `fleetctl plan` and `fleetctl why` print.

use std::collections::BTreeSet;

use fleet_model::{MachineId, MachineState, Placement, TargetState};
use fleet_systemd::unit::UnitName;

use super::{LossPolicy, MIdx, Outcome, Pass, Reject, UIdx, UnitSpec};

/// The machines operators took out of rotation, as the engine read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cordons {
    /// Machines that take no new placements.
    pub cordoned: BTreeSet<MachineId>,
    /// Machines whose units move away (cordoned too, listed or not above).
    pub draining: BTreeSet<MachineId>,
    /// How many units the drain may move in this pass.
    pub drain_budget: usize,
}

/// What one machine thinks of one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineVerdict {
    pub machine: MachineId,
    /// The unit is (or would be) placed here.
    pub chosen: bool,
    /// Whether the machine could take the unit now.
    pub fits: bool,
    /// Why not (or `fits`, `placed here`).
    pub reason: String,
}

/// Where a unit is or would be placed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub unit: UnitName,
    /// Its machines after the pass (empty: not placed).
    pub placed_on: Vec<MachineId>,
    /// One line: the placement's reason, or why nothing can take it.
    pub summary: String,
    /// Every live machine, in id order.
    pub machines: Vec<MachineVerdict>,
}

/// [`super::schedule`] with cordoned and draining machines.
pub fn schedule_with(
    machines: &[MachineState],
    units: &[UnitSpec],
    placements: &[Placement],
    loss: &LossPolicy,
    cordons: &Cordons,
) -> Outcome {
    run(machines, units, placements, loss, cordons).finish()
}

/// Explains the pass [`schedule_with`] would make for each unit of `wanted`
/// (unknown names are left out). Writes nothing: this is a dry run.
pub fn explain(
    machines: &[MachineState],
    units: &[UnitSpec],
    placements: &[Placement],
    loss: &LossPolicy,
    cordons: &Cordons,
    wanted: &[UnitName],
) -> Vec<Explanation> {
    let pass = run(machines, units, placements, loss, cordons);
    wanted
        .iter()
        .filter_map(|name| pass.unit_by_name.get(name.as_str()).copied())
        .map(|unit| pass.explanation(unit))
        .collect()
}

fn run<'a>(
    machines: &'a [MachineState],
    units: &'a [UnitSpec],
    placements: &'a [Placement],
    loss: &'a LossPolicy,
    cordons: &Cordons,
) -> Pass<'a> {
    let mut pass = Pass::new(machines, units, placements, loss);
    pass.set_cordons(cordons);
    pass.validate_existing();
    pass.place_globals();
    pass.drain();
    pass.place_pending();
    pass
}

impl Pass<'_> {
    fn set_cordons(&mut self, cordons: &Cordons) {
        for machine in self.present_machines() {
            let id = self.machines[machine].id;
            let draining = cordons.draining.contains(id);
            self.drain.cordoned[machine] = draining || cordons.cordoned.contains(id);
            if draining {
                self.drain.draining.push(machine);
            }
        }
        self.drain.budget = cordons.drain_budget;
    }

    /// Moves the movable units off every draining machine, within the budget.
    fn drain(&mut self) {
        for machine in self.drain.draining.clone() {
            let from = self.machines[machine].id;
            let mut here = self.machines[machine].units.clone();
            // Unit indexes are in name order: a drain moves units alphabetically.
            here.sort_unstable();
            for &unit in &here {
                if self.is_global(unit)
                    || !self.on[unit].contains(&machine)
                    || self.follows_peer_on(unit, machine).is_some()
                {
                    continue;
                }
                match self.drain_destination(unit, machine) {
                    Err(reason) => {
                        self.drain.blocked.insert(unit, reason);
                    }
                    Ok(_) if self.drain.budget == 0 => self.drain.waiting += 1,
                    Ok(destination) => {
                        self.drain.budget -= 1;
                        self.displaced.insert(unit);
                        self.unplace(unit, machine, format!("machine {from} is draining"));
                        self.place(
                            unit,
                            destination,
                            format!("moved off draining machine {from}"),
                        );
                        self.drain.moves.push((unit, destination));
                    }
                }
            }
            // Followers still here stay with (or wait for) their peer.
            for &unit in &here {
                if self.is_global(unit) || !self.on[unit].contains(&machine) {
                    continue;
                }
                if let Some(peer) = self.follows_peer_on(unit, machine) {
                    if self.drain.blocked.contains_key(&peer) {
                        let reason = format!("stays with its MachineOf peer {}", self.name(peer));
                        self.drain.blocked.insert(unit, reason);
                    } else {
                        self.drain.waiting += 1;
                    }
                }
            }
        }
    }

    /// The `MachineOf` peer of `unit` on `machine`, if any: `unit` moves with it.
    fn follows_peer_on(&self, unit: UIdx, machine: MIdx) -> Option<UIdx> {
        self.peers[unit]
            .iter()
            .flatten()
            .copied()
            .find(|&peer| self.on[peer].contains(&machine))
    }

    /// The least-loaded other machine that can take `unit` and its followers
    /// on `from`, or why none can.
    fn drain_destination(&self, unit: UIdx, from: MIdx) -> Result<MIdx, String> {
        let followers: Vec<UIdx> = self.followers[unit]
            .iter()
            .copied()
            .filter(|&follower| self.on[follower].contains(&from))
            .collect();
        let mut rejects = Vec::new();
        let mut followers_refused = false;
        for &(_, machine) in &self.by_load {
            if machine == from {
                continue;
            }
            if let Err(reject) = self.check(unit, machine) {
                rejects.push(reject);
                continue;
            }
            let followers_fit = followers.iter().all(|&follower| {
                self.check_static(follower, machine).is_ok()
                    && self.first_conflict(follower, machine).is_none()
            });
            if followers_fit {
                return Ok(machine);
            }
            followers_refused = true;
        }
        if followers_refused {
            return Err("no other machine can take it with its MachineOf followers".to_owned());
        }
        if rejects.is_empty() {
            return Err("no other machine is available".to_owned());
        }
        // Only the draining machine matches: say so rather than "no machine".
        if let Some(machine_id) = &self.units[unit].requirements.machine_id
            && rejects
                .iter()
                .all(|reject| matches!(reject, Reject::MachineId))
        {
            return Err(format!("no other machine matches MachineID={machine_id}"));
        }
        Err(self.explain(unit, &rejects))
    }

    /// The explanation of one unit after the pass.
    fn explanation(&self, unit: UIdx) -> Explanation {
        let placed_on: Vec<MIdx> = self.on[unit]
            .iter()
            .copied()
            .filter(|&machine| self.is_present(machine))
            .collect();
        let machines = self
            .present_machines()
            .map(|machine| {
                let chosen = placed_on.contains(&machine);
                let verdict = if chosen {
                    Ok(())
                } else if self.is_global(unit) {
                    self.check_static(unit, machine)
                        .and_then(|()| self.check_peers_placed(unit, machine))
                        .and_then(|()| match self.drain.cordoned[machine] {
                            true => Err(Reject::Cordoned),
                            false => Ok(()),
                        })
                } else {
                    self.check(unit, machine)
                };
                MachineVerdict {
                    machine: self.machines[machine].id.clone(),
                    chosen,
                    fits: verdict.is_ok(),
                    reason: match &verdict {
                        Ok(()) if chosen => "placed here".to_owned(),
                        Ok(()) => "fits".to_owned(),
                        Err(reject) => self.describe(unit, reject),
                    },
                }
            })
            .collect();
        Explanation {
            unit: self.units[unit].name.clone(),
            placed_on: placed_on
                .iter()
                .map(|&machine| self.machines[machine].id.clone())
                .collect(),
            summary: self.summary(unit, &placed_on),
            machines,
        }
    }

    fn summary(&self, unit: UIdx, placed_on: &[MIdx]) -> String {
        if self.units[unit].desired_state == TargetState::Inactive {
            return "desired state is inactive: not placed".to_owned();
        }
        if let Some(reason) = self.drain.blocked.get(&unit) {
            return format!("stays on its draining machine: {reason}");
        }
        if let Some(reason) = self.unschedulable.get(&unit)
            && placed_on.is_empty()
        {
            return format!("cannot be placed: {reason}");
        }
        let Some(&first) = placed_on.first() else {
            return "not placed".to_owned();
        };
        match self.place_reasons.get(&(unit, first)) {
            Some(reason) => format!("would be placed on {}: {reason}", self.machines[first].id),
            None => format!("placed on {}", self.machines[first].id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{machines, name, placement, unit};

    fn cordons(cordoned: &[&str], draining: &[&str], budget: usize) -> Cordons {
        let ids = |list: &[&str]| {
            list.iter()
                .map(|id| id.parse().expect("test machine id"))
                .collect()
        };
        Cordons {
            cordoned: ids(cordoned),
            draining: ids(draining),
            drain_budget: budget,
        }
    }

    /// Runs passes, applying decisions, until one decides nothing; returns the placements.
    fn settle(
        machines: &[MachineState],
        units: &[UnitSpec],
        mut placements: Vec<Placement>,
        cordons: &Cordons,
    ) -> (Vec<Placement>, Outcome) {
        for _ in 0..100 {
            let outcome = schedule_with(
                machines,
                units,
                &placements,
                &LossPolicy::default(),
                cordons,
            );
            if outcome.decisions.is_empty() {
                return (placements, outcome);
            }
            for decision in &outcome.decisions {
                placements
                    .retain(|p| !(&p.unit == decision.unit() && &p.machine == decision.machine()));
                if let crate::Decision::Place { placement, .. } = decision {
                    placements.push(placement.clone());
                }
            }
        }
        panic!("the schedule did not settle in 100 passes");
    }

    fn machine_of(placements: &[Placement], unit_name: &str) -> Vec<String> {
        let mut found: Vec<String> = placements
            .iter()
            .filter(|p| p.unit.as_str() == unit_name)
            .map(|p| p.machine.to_string())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_cordoned_machine_gets_no_new_unit_and_keeps_its_own() {
        let machines = machines(&["m1", "m2"]);
        let units = vec![
            unit("a.service", &[]),
            unit("b.service", &[]),
            unit("c.service", &[]),
        ];
        let (placements, _) = settle(
            &machines,
            &units,
            vec![placement("a.service", "m1")],
            &cordons(&["m1"], &[], 0),
        );
        assert_eq!(machine_of(&placements, "a.service"), ["m1"]);
        assert_eq!(machine_of(&placements, "b.service"), ["m2"]);
        assert_eq!(machine_of(&placements, "c.service"), ["m2"]);
    }

    #[test]
    fn a_cordoned_machine_keeps_its_global_units_and_gets_no_new_global() {
        let machines = machines(&["m1", "m2"]);
        let units = vec![
            unit("old.service", &["Global=true"]),
            unit("new.service", &["Global=true"]),
        ];
        let (placements, _) = settle(
            &machines,
            &units,
            vec![
                placement("old.service", "m1"),
                placement("old.service", "m2"),
            ],
            &cordons(&["m1"], &[], 0),
        );
        assert_eq!(machine_of(&placements, "old.service"), ["m1", "m2"]);
        assert_eq!(machine_of(&placements, "new.service"), ["m2"]);
    }

    #[test]
    fn every_machine_cordoned_is_said() {
        let machines = machines(&["m1", "m2"]);
        let units = vec![unit("a.service", &[])];
        let outcome = schedule_with(
            &machines,
            &units,
            &[],
            &LossPolicy::default(),
            &cordons(&["m1", "m2"], &[], 0),
        );
        assert!(outcome.decisions.is_empty());
        assert_eq!(
            outcome.unschedulable[0].reason,
            "every machine is cordoned (2)"
        );
    }

    #[test]
    fn drain_moves_within_the_budget_and_leaves_pinned_and_global_units() {
        let machines = machines(&["m1", "m2", "m3"]);
        let units = vec![
            unit("a.service", &[]),
            unit("b.service", &[]),
            unit("c.service", &[]),
            unit("g.service", &["Global=true"]),
            unit("pinned.service", &["MachineID=m1"]),
        ];
        let on_m1 = ["a.service", "b.service", "c.service", "pinned.service"];
        let mut placements: Vec<Placement> = on_m1.iter().map(|u| placement(u, "m1")).collect();
        for m in ["m1", "m2", "m3"] {
            placements.push(placement("g.service", m));
        }
        let drain = cordons(&[], &["m1"], 2);
        let first = schedule_with(
            &machines,
            &units,
            &placements,
            &LossPolicy::default(),
            &drain,
        );
        assert_eq!(first.drain_moves.len(), 2, "{first:#?}");
        assert_eq!(first.drain_waiting, 1);
        assert_eq!(first.drain_blocked.len(), 1);
        assert_eq!(first.drain_blocked[0].unit.as_str(), "pinned.service");
        assert_eq!(
            first.drain_blocked[0].reason,
            "no other machine matches MachineID=m1"
        );

        let (placements, last) = settle(&machines, &units, placements, &drain);
        for moved in ["a.service", "b.service", "c.service"] {
            assert_ne!(machine_of(&placements, moved), ["m1"], "{moved} stayed");
        }
        assert_eq!(machine_of(&placements, "pinned.service"), ["m1"]);
        assert_eq!(machine_of(&placements, "g.service"), ["m1", "m2", "m3"]);
        assert_eq!(last.drain_waiting, 0);
        assert_eq!(last.drain_blocked.len(), 1);
    }

    #[test]
    fn drain_respects_conflicts_and_moves_followers_with_their_peer() {
        let machines = machines(&["m1", "m2", "m3"]);
        let units = vec![
            unit("db.service", &[]),
            unit("sidecar.service", &["MachineOf=db.service"]),
            unit("web@1.service", &["Conflicts=web@*"]),
            unit("web@2.service", &["Conflicts=web@*"]),
            unit("web@3.service", &["Conflicts=web@*"]),
        ];
        let placements = vec![
            placement("db.service", "m1"),
            placement("sidecar.service", "m1"),
            placement("web@1.service", "m1"),
            placement("web@2.service", "m2"),
            placement("web@3.service", "m3"),
        ];
        let (placements, last) = settle(&machines, &units, placements, &cordons(&[], &["m1"], 10));
        let db = machine_of(&placements, "db.service");
        assert_ne!(db, ["m1"]);
        assert_eq!(machine_of(&placements, "sidecar.service"), db);
        // Three conflicting instances, two machines left: one stays, and says why.
        assert_eq!(machine_of(&placements, "web@1.service"), ["m1"]);
        assert_eq!(last.drain_blocked.len(), 1);
        assert_eq!(
            last.drain_blocked[0].reason,
            "conflicts with web@2.service and web@3.service on every machine"
        );
    }

    #[test]
    fn a_follower_of_a_pinned_unit_stays_with_it() {
        let machines = machines(&["m1", "m2"]);
        let units = vec![
            unit("pinned.service", &["MachineID=m1"]),
            unit("follower.service", &["MachineOf=pinned.service"]),
        ];
        let placements = vec![
            placement("pinned.service", "m1"),
            placement("follower.service", "m1"),
        ];
        let outcome = schedule_with(
            &machines,
            &units,
            &placements,
            &LossPolicy::default(),
            &cordons(&[], &["m1"], 10),
        );
        assert!(outcome.decisions.is_empty(), "{outcome:#?}");
        let blocked: Vec<(&str, &str)> = outcome
            .drain_blocked
            .iter()
            .map(|b| (b.unit.as_str(), b.reason.as_str()))
            .collect();
        assert_eq!(
            blocked,
            [
                (
                    "follower.service",
                    "stays with its MachineOf peer pinned.service"
                ),
                ("pinned.service", "no other machine matches MachineID=m1"),
            ]
        );
    }

    #[test]
    fn explain_names_the_rule_that_excludes_each_machine() {
        let machines = machines(&["m1", "m2", "m3"]);
        let units = vec![
            unit("other.service", &[]),
            unit("x.service", &["Conflicts=other.service"]),
            unit("lost.service", &["MachineOf=missing.service"]),
        ];
        let placements = vec![placement("other.service", "m1")];
        let found = explain(
            &machines,
            &units,
            &placements,
            &LossPolicy::default(),
            &cordons(&["m2"], &[], 0),
            &[
                name("x.service"),
                name("lost.service"),
                name("nope.service"),
            ],
        );
        assert_eq!(found.len(), 2, "unknown units are left out");
        let x = &found[0];
        assert_eq!(x.placed_on, ["m3".parse::<MachineId>().expect("id")]);
        assert_eq!(
            x.summary,
            "would be placed on m3: least-loaded machine that fits"
        );
        let reasons: Vec<(&str, bool, &str)> = x
            .machines
            .iter()
            .map(|v| (v.machine.as_str(), v.fits, v.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("m1", false, "conflicts with other.service"),
                ("m2", false, "machine is cordoned"),
                ("m3", true, "placed here"),
            ]
        );
        let lost = &found[1];
        assert!(lost.placed_on.is_empty());
        assert_eq!(
            lost.summary,
            "cannot be placed: MachineOf peer missing.service is not scheduled (no such unit)"
        );
        assert!(lost.machines.iter().all(|v| !v.fits));
    }

    #[test]
    fn explain_writes_nothing_the_schedule_would_not() {
        let machines = machines(&["m1", "m2"]);
        let units = vec![unit("a.service", &[]), unit("b.service", &[])];
        let placements = vec![placement("a.service", "m1")];
        let found = explain(
            &machines,
            &units,
            &placements,
            &LossPolicy::default(),
            &Cordons::default(),
            &[name("a.service"), name("b.service")],
        );
        assert_eq!(found[0].summary, "placed on m1");
        assert_eq!(found[1].placed_on, ["m2".parse::<MachineId>().expect("id")]);
    }
}
