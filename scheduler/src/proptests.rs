//! Property tests: the scheduler's rules hold on random clusters, not just on
//! the hand-picked cases of the unit tests.
//!
//! A random cluster has up to 8 machines in two regions and up to 40 units
//! mixing every `[X-Fleet]` option: region pins, machine pins, template
//! siblings that conflict with each other, `MachineOf` peers and global
//! units, in random target states. For each one:
//!
//! - a pass settles the schedule: the next pass decides nothing (no
//!   ping-pong), and no placement breaks a unit's requirements or puts two
//!   conflicting units together (`Cluster::check_invariants`);
//! - every unit that should run is placed or reported unschedulable;
//! - a machine joining moves nothing already placed (no rebalancing);
//! - a machine lost beyond its grace loses all its placements, and the units
//!   that fit elsewhere land elsewhere, again with every rule holding.

use std::collections::BTreeSet;

use fleet_model::{MachineState, TargetState};
use fleet_systemd::unit::UnitName;
use proptest::prelude::*;

use crate::UnitSpec;
use crate::tests::{Cluster, machine, unit};

/// One generated unit: its kind picks its `[X-Fleet]` options.
#[derive(Clone, Debug)]
enum Kind {
    Free,
    Region(bool),
    PinnedTo(usize),
    Sibling,
    PeerOf(usize),
    Global,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Free),
        2 => any::<bool>().prop_map(Kind::Region),
        1 => (0usize..8).prop_map(Kind::PinnedTo),
        2 => Just(Kind::Sibling),
        1 => (0usize..40).prop_map(Kind::PeerOf),
        1 => Just(Kind::Global),
    ]
}

fn target_state() -> impl Strategy<Value = TargetState> {
    prop_oneof![
        1 => Just(TargetState::Inactive),
        1 => Just(TargetState::Loaded),
        4 => Just(TargetState::Launched),
    ]
}

fn machine_id(index: usize) -> String {
    format!("m{index:02}")
}

fn machines(count: usize) -> Vec<MachineState> {
    (0..count)
        .map(|i| {
            let region = if i % 2 == 0 {
                "region=east"
            } else {
                "region=west"
            };
            machine(&machine_id(i), &[region])
        })
        .collect()
}

/// The units for generated kinds; unit `i` is `u{i:02}` (siblings are
/// instances of one template that refuse to share a machine).
fn units(kinds: &[(Kind, TargetState)], machine_count: usize) -> Vec<UnitSpec> {
    let mut specs = Vec::new();
    for (i, (kind, state)) in kinds.iter().enumerate() {
        let (name, options): (String, Vec<String>) = match kind {
            Kind::Free => (format!("u{i:02}.service"), vec![]),
            Kind::Region(east) => (
                format!("u{i:02}.service"),
                vec![format!(
                    "MachineMetadata=region={}",
                    if *east { "east" } else { "west" }
                )],
            ),
            Kind::PinnedTo(m) => (
                format!("u{i:02}.service"),
                vec![format!(
                    "MachineID={}",
                    machine_id(m % machine_count.max(1))
                )],
            ),
            Kind::Sibling => (
                format!("web@{i:02}.service"),
                vec!["Conflicts=web@*.service".to_owned()],
            ),
            // A peer of an earlier unit only, so MachineOf has no cycles.
            Kind::PeerOf(peer) if *peer < i => match &kinds[*peer].0 {
                Kind::Sibling => (
                    format!("u{i:02}.service"),
                    vec![format!("MachineOf=web@{peer:02}.service")],
                ),
                Kind::Global => (format!("u{i:02}.service"), vec![]),
                _ => (
                    format!("u{i:02}.service"),
                    vec![format!("MachineOf=u{peer:02}.service")],
                ),
            },
            Kind::PeerOf(_) => (format!("u{i:02}.service"), vec![]),
            Kind::Global => (format!("g{i:02}.service"), vec!["Global=true".to_owned()]),
        };
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        let mut spec = unit(&name, &options);
        spec.desired_state = *state;
        specs.push(spec);
    }
    specs
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (
        1usize..=8,
        proptest::collection::vec((kind(), target_state()), 0..40),
    )
        .prop_map(|(machine_count, kinds)| {
            Cluster::new(machines(machine_count), units(&kinds, machine_count))
        })
}

/// The (unit, machine) pairs of the schedule.
fn placed(cluster: &Cluster) -> BTreeSet<(String, String)> {
    cluster
        .placements
        .iter()
        .map(|p| (p.unit.to_string(), p.machine.to_string()))
        .collect()
}

/// Every unit that should run and is not global is placed once, or is
/// reported unschedulable by the last pass.
fn check_complete(cluster: &Cluster) {
    for spec in &cluster.units {
        if spec.desired_state == TargetState::Inactive || spec.requirements.global {
            continue;
        }
        let copies = cluster
            .placements
            .iter()
            .filter(|p| p.unit == spec.name)
            .count();
        let reported = cluster
            .last
            .unschedulable
            .iter()
            .any(|u| u.unit == spec.name);
        assert!(
            copies == 1 || (copies == 0 && reported),
            "{} is placed {copies} times and reported unschedulable: {reported}",
            spec.name
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_pass_settles_the_schedule_and_every_rule_holds(mut cluster in cluster()) {
        cluster.settle();
        // The settling pass reported what it could not place.
        cluster.pass();
        check_complete(&cluster);
    }

    #[test]
    fn a_joining_machine_moves_nothing(mut cluster in cluster()) {
        cluster.settle();
        let before = placed(&cluster);
        let index = cluster.machines.len();
        cluster.machines.push(machine(&machine_id(index), &["region=east"]));
        cluster.settle();
        let after = placed(&cluster);
        let moved: Vec<_> = before.difference(&after).collect();
        prop_assert!(moved.is_empty(), "placements moved when a machine joined: {:?}", moved);
    }

    #[test]
    fn a_lost_machine_releases_its_units_but_global_ones(mut cluster in cluster(), victim in 0usize..8) {
        cluster.settle();
        let victim = victim % cluster.machines.len();
        let lost = cluster.machines.remove(victim).id;
        cluster.loss.lost_beyond_grace.insert(lost.clone());
        cluster.settle();
        let global = |unit: &UnitName| {
            cluster.units.iter().any(|spec| spec.name == *unit && spec.requirements.global)
        };
        prop_assert!(
            cluster.placements.iter().all(|p| p.machine != lost || global(&p.unit)),
            "non-global placements stay on the lost machine {}", lost
        );
        cluster.pass();
        check_complete(&cluster);
    }
}
