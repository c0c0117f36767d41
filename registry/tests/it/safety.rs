//! The fail-safe markers: the engine's unload orders (written with every
//! unplacement, in the same txn) and the clean-stop marks of machines.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_registry::store::MetadataOp;
use fleet_registry::testing::{list_keys, put_raw};
use fleet_registry::{Placement, RegistryError, ScheduleChange, TargetState};

use crate::util::{machine, machine_id, registry, unit_file, unit_name};

#[tokio::test]
async fn every_unplacement_writes_its_unload_order_in_batches_etcd_accepts() {
    let (_etcd, registry) = registry("unload-orders").await;
    let m1 = machine_id("m1");
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    let leadership = registry
        .campaign(&m1, lease)
        .await
        .expect("campaign")
        .expect("we lead");
    // 150 units: more unplacements than fit in one 128-operation txn.
    let names: Vec<String> = (0..150).map(|i| format!("u{i:03}.service")).collect();
    let places: Vec<ScheduleChange> = names
        .iter()
        .map(|name| {
            ScheduleChange::Place(Placement {
                unit: unit_name(name),
                machine: m1.clone(),
                hash: unit_file("/bin/true").hash(),
                target_state: TargetState::Launched,
            })
        })
        .collect();
    registry
        .commit_schedule(&leadership, &places)
        .await
        .expect("place");
    let (_, placed_at) = registry.machine_schedule(&m1).await.expect("schedule");
    assert!(
        registry
            .unload_orders(&m1)
            .await
            .expect("orders")
            .is_empty(),
        "placing orders no unload"
    );
    let unplaces: Vec<ScheduleChange> = names
        .iter()
        .map(|name| ScheduleChange::Unplace {
            unit: unit_name(name),
            machine: m1.clone(),
        })
        .collect();
    registry
        .commit_schedule(&leadership, &unplaces)
        .await
        .expect("unplace in batches of at most 128 operations");
    let orders = registry.unload_orders(&m1).await.expect("orders");
    assert_eq!(orders.len(), 150);
    assert!(orders.values().all(|revision| *revision > placed_at));
    let (schedule, _) = registry.machine_schedule(&m1).await.expect("schedule");
    assert!(schedule.is_empty());

    let first = unit_name(&names[0]);
    registry
        .delete_unload_order(&m1, &first)
        .await
        .expect("delete order");
    let orders = registry.unload_orders(&m1).await.expect("orders");
    assert_eq!(orders.len(), 149);
    assert!(!orders.contains_key(&first));
}

#[tokio::test]
async fn clean_stop_marks_are_written_listed_and_cleared() {
    let (_etcd, registry) = registry("stopped").await;
    let (m1, m2) = (machine_id("m1"), machine_id("m2"));
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    registry.mark_stopped(&m1, at).await.expect("mark m1");
    registry
        .mark_stopped(&m2, SystemTime::now())
        .await
        .expect("mark m2");
    // Someone else's garbage under the prefix is skipped, not fatal.
    let garbage = format!("{}stopped/m3", registry.keys().prefix());
    put_raw(&registry, &garbage, b"not json")
        .await
        .expect("put garbage");
    let stopped = registry.stopped_machines().await.expect("list");
    assert_eq!(
        stopped.keys().cloned().collect::<BTreeSet<_>>(),
        [m1.clone(), m2.clone()].into_iter().collect()
    );
    assert_eq!(stopped.get(&m1), Some(&at));
    registry.clear_stopped(&m1).await.expect("clear");
    let stopped = registry.stopped_machines().await.expect("list");
    assert_eq!(stopped.keys().cloned().collect::<Vec<_>>(), vec![m2]);
}

#[tokio::test]
async fn a_machine_gone_for_good_is_forgotten_but_never_while_registered() {
    let (_etcd, registry) = registry("forget").await;
    let (m1, m2) = (machine_id("m1"), machine_id("m2"));
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register m1");
    let keys = registry.keys().clone();
    put_raw(
        &registry,
        &keys.unload_order(&machine_id("m1"), &unit_name("a.service")),
        b"",
    )
    .await
    .expect("plant an unload order");
    registry
        .mark_stopped(&m1, SystemTime::now())
        .await
        .expect("mark m1");
    registry
        .mark_stopped(&m2, SystemTime::now())
        .await
        .expect("mark m2");

    let refused = registry.forget_machine(&m1).await;
    assert!(
        matches!(refused, Err(RegistryError::MachineExists(ref id)) if *id == m1),
        "a registered machine is refused: {refused:?}"
    );
    assert!(
        list_keys(&registry)
            .await
            .expect("list")
            .contains(&keys.stopped(&machine_id("m1")))
    );

    registry
        .unregister_machine(&m1, lease)
        .await
        .expect("unregister");
    let deleted = registry.forget_machine(&m1).await.expect("forget");
    assert_eq!(deleted, 2, "the unload order and the clean-stop mark");
    let left = list_keys(&registry).await.expect("list");
    assert!(
        !left.iter().any(|key| key.contains("/m1")),
        "m1 keys left: {left:?}"
    );
    assert!(
        left.contains(&keys.stopped(&machine_id("m2"))),
        "m2 is untouched: {left:?}"
    );
    assert_eq!(registry.forget_machine(&m1).await.expect("again"), 0);
}

#[tokio::test]
async fn a_forgotten_machines_api_metadata_goes_and_nobody_elses() {
    let (_etcd, registry) = registry("forget-metadata").await;
    let set = |machine: &str, key: &str| MetadataOp::Set {
        machine: machine_id(machine),
        key: key.to_owned(),
        value: "v".to_owned(),
    };
    registry
        .apply_metadata(&[set("m1", "rack"), set("m1", "region"), set("m10", "rack")])
        .await
        .expect("metadata");
    assert_eq!(
        registry
            .forget_machine_metadata(&machine_id("m1"))
            .await
            .expect("forget"),
        2
    );
    let left = list_keys(&registry).await.expect("list");
    assert!(
        left.contains(&registry.keys().metadata(&machine_id("m10"), "rack")),
        "m10, whose id m1 prefixes, keeps its metadata: {left:?}"
    );
    assert!(
        !left.iter().any(|key| key.contains("/metadata/m1/")),
        "m1's metadata is gone: {left:?}"
    );
}
