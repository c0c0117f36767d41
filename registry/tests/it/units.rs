//! Units: content stored once per hash, released with its last reference in
//! the same txn, desired state, and nothing left behind.

use std::sync::Arc;

use fleet_registry::testing::{count_keys, delete_raw, dump, list_keys, put_raw};
use fleet_registry::{
    Registry, RegistryError, TargetState, UNITS_PER_CREATE_TXN, UNITS_PER_STATE_TXN,
};
use fleet_systemd::unit::UnitHash;

use crate::util::{machine_id, registry, unique_prefix, unit_file, unit_name};

/// The content keys under the registry's prefix.
async fn content_keys(registry: &Registry) -> Vec<String> {
    let all_content = registry.keys().all_content();
    list_keys(registry)
        .await
        .expect("list keys")
        .into_iter()
        .filter(|key| key.starts_with(&all_content))
        .collect()
}

fn content_key(registry: &Registry, hash: &UnitHash) -> String {
    registry.keys().content(hash)
}

#[tokio::test]
async fn create_replace_and_destroy_release_content() {
    let (_etcd, registry) = registry("units").await;
    let (a, b) = (unit_name("a.service"), unit_name("b.service"));
    let (one, two) = (unit_file("/bin/one"), unit_file("/bin/two"));

    registry
        .create_unit(&a, &one, TargetState::Launched)
        .await
        .expect("create a");
    registry
        .create_unit(&b, &one, TargetState::Inactive)
        .await
        .expect("create b");
    assert_eq!(
        content_keys(&registry).await,
        vec![content_key(&registry, &one.hash())],
        "one content for one hash"
    );

    let unit = registry.unit(&a).await.expect("get a").expect("a exists");
    assert_eq!(
        (unit.hash, unit.desired_state, &*unit.file),
        (one.hash(), TargetState::Launched, &one)
    );

    // Replacing a with other content keeps the old content while b uses it.
    registry
        .create_unit(&a, &two, TargetState::Loaded)
        .await
        .expect("replace a");
    let mut expected = vec![
        content_key(&registry, &one.hash()),
        content_key(&registry, &two.hash()),
    ];
    expected.sort();
    assert_eq!(content_keys(&registry).await, expected);

    // Replacing b too releases the last reference to `one`: it is deleted.
    registry
        .create_unit(&b, &two, TargetState::Loaded)
        .await
        .expect("replace b");
    assert_eq!(
        content_keys(&registry).await,
        vec![content_key(&registry, &two.hash())]
    );

    // Destroying one of two users keeps the content; the last one deletes it.
    assert!(registry.destroy_unit(&a).await.expect("destroy a"));
    assert_eq!(
        content_keys(&registry).await,
        vec![content_key(&registry, &two.hash())]
    );
    assert!(registry.destroy_unit(&b).await.expect("destroy b"));
    assert!(
        !registry.destroy_unit(&b).await.expect("destroy b again"),
        "already gone"
    );
    assert_eq!(
        list_keys(&registry).await.expect("list"),
        Vec::<String>::new(),
        "nothing left behind"
    );
    assert_eq!(registry.unit(&a).await.expect("get a"), None);
}

#[tokio::test]
async fn a_thousand_instances_share_one_content_and_leave_nothing_behind() {
    let (_etcd, registry) = registry("instances").await;
    let template = unit_file("/bin/worker %i");
    let names: Vec<_> = (0..1000)
        .map(|i| unit_name(&format!("worker@{i}.service")))
        .collect();
    for name in &names {
        registry
            .create_unit(name, &template, TargetState::Launched)
            .await
            .expect("create instance");
    }
    assert_eq!(
        content_keys(&registry).await.len(),
        1,
        "content is stored once"
    );

    let units = registry.units().await.expect("units");
    assert_eq!(units.len(), 1000);
    assert!(
        units.windows(2).all(|pair| pair[0].name < pair[1].name),
        "sorted by name"
    );
    assert!(
        units
            .iter()
            .all(|unit| Arc::ptr_eq(&unit.file, &units[0].file)),
        "parsed once and shared"
    );
    assert_eq!(*units[0].file, template);

    // unit record + content ref per instance, plus the content.
    assert_eq!(count_keys(&registry).await.expect("count"), 2001);
    for name in &names {
        assert!(registry.destroy_unit(name).await.expect("destroy instance"));
    }
    assert_eq!(
        count_keys(&registry).await.expect("count"),
        0,
        "left: {:?}",
        list_keys(&registry).await
    );
}

#[tokio::test]
async fn desired_state_changes_only_existing_units() {
    let (_etcd, registry) = registry("desired").await;
    let name = unit_name("a.service");
    assert!(
        !registry
            .set_desired_state(&name, TargetState::Launched)
            .await
            .expect("set on a missing unit")
    );
    registry
        .create_unit(&name, &unit_file("/bin/a"), TargetState::Inactive)
        .await
        .expect("create");
    assert!(
        registry
            .set_desired_state(&name, TargetState::Launched)
            .await
            .expect("set")
    );
    let unit = registry.unit(&name).await.expect("get").expect("exists");
    assert_eq!(unit.desired_state, TargetState::Launched);
    assert_eq!(
        unit.hash,
        unit_file("/bin/a").hash(),
        "the content is unchanged"
    );
    // The agent fetches content by hash.
    let content = registry.unit_content(&unit.hash).await.expect("content");
    assert_eq!(content, Some(unit_file("/bin/a")));
    let unknown = registry
        .unit_content(&unit_file("/bin/b").hash())
        .await
        .expect("content");
    assert_eq!(unknown, None);
}

#[tokio::test]
async fn a_unit_without_content_is_skipped_in_lists_and_an_error_alone() {
    let (_etcd, registry) = registry("missing-content").await;
    let (a, b) = (unit_name("a.service"), unit_name("b.service"));
    registry
        .create_unit(&a, &unit_file("/bin/a"), TargetState::Launched)
        .await
        .expect("create a");
    registry
        .create_unit(&b, &unit_file("/bin/b"), TargetState::Launched)
        .await
        .expect("create b");
    // Break b by hand: drop its reference, then let the collector take the content.
    let b_hash = unit_file("/bin/b").hash();
    delete_raw(
        &registry,
        &registry
            .keys()
            .content_ref(&b_hash, &unit_name("b.service")),
    )
    .await
    .expect("delete the ref");
    assert!(
        registry
            .collect_content(&unit_file("/bin/b").hash())
            .await
            .expect("collect")
    );
    assert!(
        !registry
            .collect_content(&unit_file("/bin/a").hash())
            .await
            .expect("collect a"),
        "a still refers to it"
    );

    let names: Vec<_> = registry
        .units()
        .await
        .expect("units")
        .into_iter()
        .map(|unit| unit.name)
        .collect();
    assert_eq!(names, vec![a]);
    assert!(matches!(
        registry.unit(&b).await,
        Err(RegistryError::Decode { .. })
    ));
}

#[tokio::test]
async fn undecodable_records_are_skipped() {
    let (_etcd, registry) = registry("corrupt").await;
    let a = unit_name("a.service");
    registry
        .create_unit(&a, &unit_file("/bin/a"), TargetState::Launched)
        .await
        .expect("create a");
    put_raw(
        &registry,
        &registry.keys().unit(&unit_name("b.service")),
        b"not json",
    )
    .await
    .expect("plant");
    put_raw(&registry, &registry.keys().machine(&machine_id("m1")), b"{")
        .await
        .expect("plant");
    let names: Vec<_> = registry
        .units()
        .await
        .expect("units")
        .into_iter()
        .map(|unit| unit.name)
        .collect();
    assert_eq!(names, vec![a]);
    assert_eq!(registry.machines().await.expect("machines"), vec![]);
    assert!(matches!(
        registry.unit(&unit_name("b.service")).await,
        Err(RegistryError::Decode { .. })
    ));
    // Destroying the corrupt record still works (its content cannot be known).
    assert!(
        registry
            .destroy_unit(&unit_name("b.service"))
            .await
            .expect("destroy b")
    );
}

/// A batch of creates writes what a `create_unit` per unit writes: the same
/// keys and values, content once per hash, an existing unit replaced, a
/// repeated name created twice in order.
#[tokio::test]
async fn creating_new_units_together_writes_what_single_creates_write() {
    let (etcd, batch) = registry("batch-create").await;
    let single = Registry::connect(&etcd.config(&unique_prefix("single-create")))
        .await
        .expect("connect");
    let (template, other) = (unit_file("/bin/worker %i"), unit_file("/bin/other"));
    let mut units: Vec<_> = (0..40)
        .map(|i| {
            let state = if i % 2 == 0 {
                TargetState::Launched
            } else {
                TargetState::Inactive
            };
            (
                unit_name(&format!("worker@{i}.service")),
                template.clone(),
                state,
            )
        })
        .collect();
    units.insert(
        20,
        (
            unit_name("other.service"),
            other.clone(),
            TargetState::Loaded,
        ),
    );
    units.push((
        unit_name("worker@3.service"),
        other.clone(),
        TargetState::Loaded,
    ));
    // worker@5 exists already, with other content: its chunk falls back.
    for registry in [&batch, &single] {
        registry
            .create_unit(
                &unit_name("worker@5.service"),
                &other,
                TargetState::Inactive,
            )
            .await
            .expect("create the existing unit");
    }

    let results = batch.create_new_units(&units).await;
    assert_eq!(results.len(), units.len());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for (name, file, state) in &units {
        single
            .create_unit(name, file, *state)
            .await
            .expect("create one");
    }

    let written = dump(&batch).await.expect("dump batch");
    assert_eq!(written, dump(&single).await.expect("dump single"));
    assert_eq!(content_keys(&batch).await.len(), 2, "content once per hash");
    let replaced = batch
        .unit(&unit_name("worker@3.service"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (replaced.hash, replaced.desired_state),
        (other.hash(), TargetState::Loaded)
    );
    let names = batch
        .existing_unit_names(&[unit_name("worker@1.service"), unit_name("nope.service")])
        .await
        .expect("existing names");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![unit_name("worker@1.service")]
    );
}

/// New units go in one txn per [`UNITS_PER_CREATE_TXN`]: each txn raises
/// etcd's revision by one.
#[tokio::test]
async fn new_units_are_created_in_one_txn_per_chunk() {
    let (_etcd, registry) = registry("batch-txns").await;
    let template = unit_file("/bin/worker %i");
    let units: Vec<_> = (0..2 * UNITS_PER_CREATE_TXN)
        .map(|i| {
            (
                unit_name(&format!("w@{i}.service")),
                template.clone(),
                TargetState::Launched,
            )
        })
        .collect();
    let before = registry.head_revision().await.expect("revision");
    let results = registry.create_new_units(&units).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let after = registry.head_revision().await.expect("revision");
    assert_eq!(after.get() - before.get(), 2, "two txns");
    assert_eq!(registry.units().await.expect("units").len(), units.len());
}

/// Desired states set together are what `set_desired_state` of each sets:
/// a missing unit is `false`, a repeated name ends with its last state.
#[tokio::test]
async fn desired_states_set_together_are_those_set_one_by_one() {
    let (_etcd, registry) = registry("batch-desired").await;
    let template = unit_file("/bin/worker %i");
    // Two chunks' worth, and the repeat of a name of the second chunk.
    let n = UNITS_PER_STATE_TXN + 10;
    let units: Vec<_> = (0..n)
        .map(|i| {
            (
                unit_name(&format!("w@{i}.service")),
                template.clone(),
                TargetState::Inactive,
            )
        })
        .collect();
    assert!(
        registry
            .create_new_units(&units)
            .await
            .iter()
            .all(Result::is_ok)
    );
    let mut changes: Vec<_> = units
        .iter()
        .map(|(name, _, _)| (name.clone(), TargetState::Launched))
        .collect();
    changes.insert(7, (unit_name("missing.service"), TargetState::Loaded));
    let repeated = unit_name(&format!("w@{}.service", n - 1));
    changes.push((repeated.clone(), TargetState::Loaded));
    let before = registry.head_revision().await.expect("revision");
    let results: Vec<bool> = registry
        .set_desired_states(&changes)
        .await
        .into_iter()
        .map(|result| result.expect("set"))
        .collect();
    let after = registry.head_revision().await.expect("revision");
    let mut expected = vec![true; changes.len()];
    expected[7] = false;
    assert_eq!(results, expected);
    // A chunk of UNITS_PER_STATE_TXN (with the missing unit), the rest of
    // the units, then the repeated name on its own: three writes.
    assert_eq!(after.get() - before.get(), 3);
    for unit in registry.units().await.expect("units") {
        let state = if unit.name == repeated {
            TargetState::Loaded
        } else {
            TargetState::Launched
        };
        assert_eq!(
            (&unit.name, unit.desired_state, unit.hash),
            (&unit.name, state, template.hash())
        );
    }
}
