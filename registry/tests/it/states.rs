//! Unit states: published under the machine's lease, deleted per machine.

use std::time::Duration;

use fleet_registry::{TargetState, UnitState};

use crate::util::{machine, machine_id, registry, unit_file, unit_name};

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

#[tokio::test]
async fn unit_states_vanish_with_the_lease_and_are_deleted_per_machine() {
    let (_etcd, registry) = registry("states").await;
    let lease1 = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    let lease2 = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    // The states of one unit are those of live machines: register both.
    registry
        .register_machine(&machine("m1"), lease1)
        .await
        .expect("register m1");
    registry
        .register_machine(&machine("m2"), lease2)
        .await
        .expect("register m2");
    registry
        .put_unit_state(&state("a.service", "m1"), lease1)
        .await
        .expect("put");
    registry
        .put_unit_state(&state("a.service", "m2"), lease2)
        .await
        .expect("put");
    registry
        .put_unit_state(&state("b.service", "m1"), lease1)
        .await
        .expect("put");
    registry
        .put_unit_state(&state("a.b.service", "m1"), lease1)
        .await
        .expect("put");

    let all = registry.unit_states().await.expect("states");
    assert_eq!(
        all,
        vec![
            state("a.b.service", "m1"),
            state("a.service", "m1"),
            state("a.service", "m2"),
            state("b.service", "m1")
        ],
        "sorted by (unit, machine)"
    );
    assert_eq!(
        registry
            .states_of_unit(&unit_name("a.service"))
            .await
            .expect("states of a"),
        vec![state("a.service", "m1"), state("a.service", "m2")]
    );

    registry
        .delete_unit_state(&unit_name("a.service"), &machine_id("m2"))
        .await
        .expect("delete");
    assert_eq!(
        registry
            .states_of_unit(&unit_name("a.service"))
            .await
            .expect("states of a"),
        vec![state("a.service", "m1")]
    );
    assert_eq!(
        registry
            .unit_state_on(&unit_name("a.service"), &machine_id("m1"))
            .await
            .expect("state of a on m1"),
        Some(state("a.service", "m1"))
    );
    assert_eq!(
        registry
            .unit_state_on(&unit_name("a.service"), &machine_id("m2"))
            .await
            .expect("state of a on m2"),
        None
    );

    registry.revoke_lease(lease1).await.expect("revoke");
    assert_eq!(registry.unit_states().await.expect("states"), vec![]);
}
