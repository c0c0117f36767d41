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

/// Listings are read in pages of 10,000 keys (each its own request, all at
/// the revision of the first): a listing of more keys than one page is
/// whole, without a key twice.
#[tokio::test]
async fn a_listing_larger_than_a_page_is_read_whole() {
    let (_etcd, registry) = registry("states-paged").await;
    // Long enough for 10,050 puts on a loaded machine without keep-alives.
    let lease = registry
        .grant_lease(Duration::from_secs(600))
        .await
        .expect("grant");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register m1");
    let n = 10_050;
    let names: Vec<String> = (0..n).map(|i| format!("u{i:05}.service")).collect();
    for chunk in names.chunks(32) {
        let mut puts = tokio::task::JoinSet::new();
        for name in chunk {
            let (registry, state) = (registry.clone(), state(name, "m1"));
            // A loaded test machine may miss the 2 s deadline now and then;
            // the put is idempotent, so send it again.
            puts.spawn(async move {
                let mut attempts = 0;
                loop {
                    match registry.put_unit_state(&state, lease).await {
                        Err(error) if error.is_retriable() && attempts < 5 => attempts += 1,
                        done => return done,
                    }
                }
            });
        }
        while let Some(put) = puts.join_next().await {
            put.expect("the put task").expect("put");
        }
    }
    let listed: Vec<String> = registry
        .unit_states()
        .await
        .expect("states")
        .into_iter()
        .map(|state| state.unit.as_str().to_owned())
        .collect();
    assert_eq!(listed, names, "every state once, in key order");
}
