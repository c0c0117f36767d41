//! One identity per machine, against a real etcd with auth on: a worker's
//! credential reaches its own keys and nothing else; a control-plane
//! machine's also reaches the engine's and the API writers' ranges.

use std::time::Duration;

use fleet_registry::auth::{EtcdAdmin, MachineCredential};
use fleet_registry::testing::{Etcd, delete_raw, list_keys, put_raw};
use fleet_registry::{
    Leadership, MetadataOp, Placement, Registry, RegistryError, ScheduleChange, TargetState,
    UnitState,
};

use crate::util::{machine, machine_id, unique_prefix, unit_file, unit_name};

async fn connect_as(etcd: &Etcd, prefix: &str, credential: &MachineCredential) -> Registry {
    Registry::connect(&etcd.config_as(prefix, &credential.username, &credential.password))
        .await
        .expect("connecting with a machine credential")
}

fn state(unit: &str, machine: &str) -> UnitState {
    UnitState {
        unit: unit_name(unit),
        machine: machine_id(machine),
        hash: unit_file("/bin/a").hash(),
        load_state: "loaded".to_owned(),
        active_state: "active".to_owned(),
        sub_state: "running".to_owned(),
        reached: TargetState::Launched,
        run: None,
    }
}

fn place(unit: &str, machine: &str) -> ScheduleChange {
    ScheduleChange::Place(Placement {
        unit: unit_name(unit),
        machine: machine_id(machine),
        hash: unit_file("/bin/a").hash(),
        target_state: TargetState::Launched,
    })
}

fn assert_denied(result: Result<(), RegistryError>, what: &str) {
    match result {
        Err(RegistryError::Etcd { message, .. }) if message.contains("permission denied") => {}
        other => panic!("{what}: expected etcd's permission denied, got {other:?}"),
    }
}

/// A control plane `cp`, workers `w1` and `w2`, each with its own etcd
/// user; `cp` has created a unit, leads, and placed the unit on both workers;
/// `w2` has registered and reported a state.
struct Cluster {
    _etcd: Etcd,
    root: Registry,
    cp: Registry,
    w1: Registry,
    leadership: Leadership,
}

async fn cluster(test: &str) -> Cluster {
    let prefix = unique_prefix(test);
    let etcd = Etcd::start_auth(&prefix).await;
    let admin = EtcdAdmin::connect(&etcd.root_config(&prefix))
        .await
        .expect("connecting as root");
    let mut credentials = Vec::new();
    for (id, control_plane) in [("cp", true), ("w1", false), ("w2", false)] {
        let credential = admin
            .add_machine(&machine_id(id), control_plane)
            .await
            .expect("adding a machine");
        assert_eq!(credential.username, format!("fleet-machine-{id}"));
        credentials.push(credential);
    }
    let root = Registry::connect(&etcd.root_config(&prefix))
        .await
        .expect("connecting as root");
    let cp = connect_as(&etcd, &prefix, &credentials[0]).await;
    let w1 = connect_as(&etcd, &prefix, &credentials[1]).await;
    let w2 = connect_as(&etcd, &prefix, &credentials[2]).await;

    let cp_lease = cp
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("lease");
    cp.register_machine(&machine("cp"), cp_lease)
        .await
        .expect("the control plane registers");
    cp.create_unit(
        &unit_name("a.service"),
        &unit_file("/bin/a"),
        TargetState::Launched,
    )
    .await
    .expect("the control plane writes units");
    cp.apply_metadata(&[MetadataOp::Set {
        machine: machine_id("w2"),
        key: "region".to_owned(),
        value: "eu".to_owned(),
    }])
    .await
    .expect("the control plane writes metadata");
    let leadership = cp
        .campaign(&machine_id("cp"), cp_lease)
        .await
        .expect("campaign")
        .expect("the only engine leads");
    cp.commit_schedule(
        &leadership,
        &[place("a.service", "w1"), place("a.service", "w2")],
    )
    .await
    .expect("the engine writes the schedule");

    let w2_lease = w2
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("lease");
    w2.register_machine(&machine("w2"), w2_lease)
        .await
        .expect("w2 registers");
    w2.put_unit_state(&state("a.service", "w2"), w2_lease)
        .await
        .expect("w2 reports a state");
    Cluster {
        _etcd: etcd,
        root,
        cp,
        w1,
        leadership,
    }
}

/// Every key and what the registry reads from them, as root.
async fn everything(root: &Registry) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        list_keys(root).await.expect("keys"),
        root.machines().await.expect("machines"),
        root.units().await.expect("units"),
        root.placements().await.expect("placements"),
        root.unit_states().await.expect("states"),
        root.leader().await.expect("leader"),
    )
}

#[tokio::test]
async fn a_worker_runs_its_units_with_its_own_credential() {
    let cluster = cluster("auth-worker").await;
    let w1 = &cluster.w1;
    let lease = w1
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("lease");
    w1.register_machine(&machine("w1"), lease)
        .await
        .expect("a worker registers");
    w1.update_machine(&machine("w1"), lease)
        .await
        .expect("a worker updates its presence");
    let (schedule, _) = w1
        .machine_schedule(&machine_id("w1"))
        .await
        .expect("a worker reads its schedule");
    assert_eq!(schedule.len(), 1);
    let content = w1
        .unit_content(&schedule[0].hash)
        .await
        .expect("a worker reads unit contents");
    assert!(content.is_some());
    w1.put_unit_state(&state("a.service", "w1"), lease)
        .await
        .expect("a worker reports its states");
    assert_eq!(
        w1.states_of_unit(&unit_name("a.service"))
            .await
            .expect("a worker reads states"),
        vec![state("a.service", "w1"), state("a.service", "w2")]
    );
    w1.delete_unit_state(&unit_name("a.service"), &machine_id("w1"))
        .await
        .expect("a worker deletes its own state");
    assert!(!w1.may_write(w1.keys().engine_probe()).await.expect("probe"));
    assert!(!w1.may_write(w1.keys().api_probe()).await.expect("probe"));
    assert!(
        cluster
            .cp
            .may_write(cluster.cp.keys().engine_probe())
            .await
            .expect("probe")
    );
    assert!(
        cluster
            .cp
            .may_write(cluster.cp.keys().api_probe())
            .await
            .expect("probe")
    );
    w1.unregister_machine(&machine_id("w1"), lease)
        .await
        .expect("a worker unregisters");
}

#[tokio::test]
async fn a_worker_cannot_write_or_delete_any_key_it_does_not_own() {
    let cluster = cluster("auth-refused").await;
    let (w1, keys) = (&cluster.w1, cluster.w1.keys().clone());
    let hash = unit_file("/bin/a").hash();
    let before = everything(&cluster.root).await;
    let foreign = [
        (
            "another machine's presence",
            keys.machine(&machine_id("w2")),
        ),
        (
            "the control plane's presence",
            keys.machine(&machine_id("cp")),
        ),
        (
            "another machine's unit state",
            keys.state(&unit_name("a.service"), &machine_id("w2")),
        ),
        ("a unit", keys.unit(&unit_name("a.service"))),
        ("a unit content", keys.content(&hash)),
        (
            "a content reference",
            keys.content_ref(&hash, &unit_name("a.service")),
        ),
        (
            "another machine's metadata",
            keys.metadata(&machine_id("w2"), "region"),
        ),
        (
            "its own metadata",
            keys.metadata(&machine_id("w1"), "region"),
        ),
        (
            "its own schedule",
            keys.scheduled(&machine_id("w1"), &unit_name("a.service")),
        ),
        (
            "another machine's schedule",
            keys.scheduled(&machine_id("w2"), &unit_name("a.service")),
        ),
        (
            "a placement",
            keys.placement(&unit_name("a.service"), &machine_id("w1")),
        ),
        ("the leader key", keys.engine_leader()),
        (
            "a machine whose id it prefixes",
            keys.machine(&machine_id("w10")),
        ),
        ("a new top-level key", format!("{}other", keys.prefix())),
    ];
    for (what, key) in &foreign {
        assert_denied(put_raw(w1, key, b"forged").await, &format!("put {what}"));
        assert_denied(delete_raw(w1, key).await, &format!("delete {what}"));
    }
    let lease = w1
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("lease");
    assert_denied(
        w1.put_unit_state(&state("a.service", "w2"), lease).await,
        "report a state as w2",
    );
    assert_denied(
        w1.register_machine(&machine("w2"), lease).await,
        "register as w2",
    );
    assert_denied(
        w1.create_unit(
            &unit_name("b.service"),
            &unit_file("/bin/b"),
            TargetState::Launched,
        )
        .await,
        "create a unit",
    );
    assert_denied(
        w1.destroy_unit(&unit_name("a.service")).await.map(drop),
        "destroy a unit",
    );
    assert_denied(
        w1.commit_schedule(&cluster.leadership, &[place("a.service", "w1")])
            .await,
        "commit the schedule with the leader's proof",
    );
    assert_denied(
        w1.campaign(&machine_id("w1"), lease).await.map(drop),
        "campaign for the engine",
    );
    assert_denied(
        w1.resign(&cluster.leadership).await,
        "resign the leader's leadership",
    );
    assert_eq!(
        everything(&cluster.root).await,
        before,
        "a refused write changed nothing"
    );
}
