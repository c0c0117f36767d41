//! The scheduling benchmark: 1,000 machines and 20,000 units with a mix of
//! constraints (a goal of this rebuild: the original stopped at about 100
//! machines and 1,000 units).
//!
//! The mix: 4 regions and an `ssd` disk on every third machine; 6,000 units
//! pinned to a region (some also to ssd); 200 templates of 20 instances each
//! that conflict with their siblings (one instance per machine); 2,000
//! `MachineOf` pairs; 5 global units (2 of them region-bound, one with
//! `Conflicts`); the rest unconstrained.
//!
//! Cases: from scratch (an empty schedule), incremental (one new unit into
//! the full cluster), and steady state (nothing changed).
//!
//! Run: `cargo bench -p fleet-scheduler --bench scheduler -- --sample-size 10`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};

use fleet_model::{MachineState, Placement, TargetState};
use fleet_scheduler::{Decision, LossPolicy, UnitSpec, schedule};
use fleet_systemd::unit::{Requirements, UnitHash, UnitName};

const N_MACHINES: usize = 1_000;
const N_UNITS: usize = 20_000;

fn machines() -> Vec<MachineState> {
    (0..N_MACHINES)
        .map(|n| {
            let mut metadata = std::collections::BTreeMap::new();
            metadata.insert("region".to_owned(), format!("r{}", n % 4));
            if n % 3 == 0 {
                metadata.insert("disk".to_owned(), "ssd".to_owned());
            }
            MachineState {
                id: format!("{n:032x}").parse().expect("machine id"),
                public_ip: format!("10.0.{}.{}", n / 256, n % 256),
                metadata,
                version: "0.1.0".to_owned(),
                disable_engine: false,
                disable_agent: false,
                api_url: String::new(),
            }
        })
        .collect()
}

fn spec(name: &str, requirements: Requirements) -> UnitSpec {
    UnitSpec {
        name: name.parse::<UnitName>().expect("unit name"),
        requirements: Arc::new(requirements),
        desired_state: TargetState::Launched,
        hash: UnitHash([7; 20]),
    }
}

fn units() -> Vec<UnitSpec> {
    let mut units = Vec::with_capacity(N_UNITS);
    // 5 globals.
    for n in 0..5 {
        let mut requirements = Requirements {
            global: true,
            ..Requirements::default()
        };
        if n < 2 {
            requirements
                .machine_metadata
                .entry("region".to_owned())
                .or_default()
                .insert(format!("r{n}"));
        }
        if n == 4 {
            requirements.conflicts.push("legacy-*.service".to_owned());
        }
        units.push(spec(&format!("global-{n}.service"), requirements));
    }
    // 200 templates × 20 instances, one instance per machine.
    for template in 0..200 {
        for instance in 0..20 {
            let requirements = Requirements {
                conflicts: vec![format!("app{template}@*.service")],
                ..Requirements::default()
            };
            units.push(spec(
                &format!("app{template}@{instance}.service"),
                requirements,
            ));
        }
    }
    // 2,000 MachineOf pairs.
    for pair in 0..2_000 {
        units.push(spec(&format!("db{pair}.service"), Requirements::default()));
        let requirements = Requirements {
            machine_of: vec![format!("db{pair}.service")],
            ..Requirements::default()
        };
        units.push(spec(&format!("db{pair}-sidecar.service"), requirements));
    }
    // 6,000 region-bound units, every fourth also wants ssd.
    for n in 0..6_000 {
        let mut requirements = Requirements::default();
        requirements
            .machine_metadata
            .entry("region".to_owned())
            .or_default()
            .insert(format!("r{}", n % 4));
        if n % 4 == 0 {
            requirements
                .machine_metadata
                .entry("disk".to_owned())
                .or_default()
                .insert("ssd".to_owned());
        }
        units.push(spec(&format!("regional-{n}.service"), requirements));
    }
    // The rest, unconstrained.
    let n_plain = N_UNITS - units.len();
    for n in 0..n_plain {
        units.push(spec(&format!("plain-{n}.service"), Requirements::default()));
    }
    units
}

fn placed(decisions: &[Decision]) -> Vec<Placement> {
    decisions
        .iter()
        .filter_map(|decision| match decision {
            Decision::Place { placement, .. } => Some(placement.clone()),
            Decision::Unplace { .. } => None,
        })
        .collect()
}

fn bench(criterion: &mut Criterion) {
    let machines = machines();
    let mut units = units();
    let loss = LossPolicy::default();

    let outcome = schedule(&machines, &units, &[], &loss);
    let placements = placed(&outcome.decisions);
    eprintln!(
        "scheduler bench: {} machines, {} units, {} placements, {} unschedulable",
        machines.len(),
        units.len(),
        placements.len(),
        outcome.unschedulable.len()
    );

    let mut group = criterion.benchmark_group("scheduler_1000_machines_20000_units");
    group.bench_function("from_scratch", |bencher| {
        bencher.iter(|| schedule(black_box(&machines), black_box(&units), &[], &loss))
    });
    group.bench_function("steady_state", |bencher| {
        bencher.iter(|| {
            schedule(
                black_box(&machines),
                black_box(&units),
                black_box(&placements),
                &loss,
            )
        })
    });
    units.push(spec(
        "new-unit.service",
        Requirements {
            conflicts: vec!["app1@*.service".to_owned()],
            ..Requirements::default()
        },
    ));
    group.bench_function("incremental_one_new_unit", |bencher| {
        bencher.iter(|| {
            let outcome = schedule(
                black_box(&machines),
                black_box(&units),
                black_box(&placements),
                &loss,
            );
            assert_eq!(outcome.decisions.len(), 1);
            outcome
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
