//! The engine's side: election, leader-guarded schedule writes, placements,
//! snapshots at one revision, and watches (with compaction).

use std::time::Duration;

use fleet_registry::changes::{Change, ChangeStream, Changed, Watched};
use fleet_registry::testing::compact;
use fleet_registry::{
    Placement, Registry, RegistryError, Revision, ScheduleChange, TargetState, WatchEvent,
    WatchStream,
};

use crate::util::{
    machine, machine_id, register_m1_in_us_on_ssd, registry, unit_file, unit_name, wait_until,
};

fn placement(unit: &str, machine: &str, target_state: TargetState) -> Placement {
    Placement {
        unit: unit_name(unit),
        machine: machine_id(machine),
        hash: unit_file(&format!("/bin/{unit}")).hash(),
        target_state,
    }
}

/// The next batch of a watch, or a panic after 10 s.
async fn next_changes(watch: &mut ChangeStream) -> Vec<Changed> {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a batch of changes within 10 s")
        .expect("watch ok")
        .expect("the watch is open")
}

async fn next_batch(watch: &mut WatchStream) -> Vec<WatchEvent> {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a watch batch within 10 s")
        .expect("watch ok")
        .expect("the watch is open")
}

#[tokio::test]
async fn only_the_leader_writes_the_schedule() {
    let (_etcd, registry) = registry("leader").await;
    let (m1, m2) = (machine_id("m1"), machine_id("m2"));
    let lease1 = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    let lease2 = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");

    assert_eq!(registry.leader().await.expect("leader"), None);
    let leadership = registry
        .campaign(&m1, lease1)
        .await
        .expect("campaign")
        .expect("m1 leads");
    assert_eq!(
        registry
            .campaign(&m1, lease1)
            .await
            .expect("campaign again"),
        Some(leadership.clone())
    );
    assert_eq!(
        registry.campaign(&m2, lease2).await.expect("campaign m2"),
        None
    );
    assert_eq!(registry.leader().await.expect("leader"), Some(m1.clone()));

    let a1 = placement("a.service", "m1", TargetState::Launched);
    let b2 = placement("b.service", "m2", TargetState::Loaded);
    let a2 = placement("a.service", "m2", TargetState::Launched);
    let changes = [
        ScheduleChange::Place(a1.clone()),
        ScheduleChange::Place(b2.clone()),
        ScheduleChange::Place(a2.clone()),
    ];
    registry
        .commit_schedule(&leadership, &changes)
        .await
        .expect("commit");
    assert_eq!(
        registry.placements().await.expect("placements"),
        vec![a1.clone(), a2.clone(), b2.clone()]
    );
    assert_eq!(
        registry
            .unit_placements(&unit_name("a.service"))
            .await
            .expect("where is a"),
        vec![m1.clone(), m2.clone()]
    );
    let (schedule, revision) = registry.machine_schedule(&m2).await.expect("m2's schedule");
    assert_eq!(schedule, vec![a2.clone(), b2.clone()]);
    assert!(revision > Revision::new(0));

    let unplace = [ScheduleChange::Unplace {
        unit: unit_name("a.service"),
        machine: m2.clone(),
    }];
    registry
        .commit_schedule(&leadership, &unplace)
        .await
        .expect("unplace");
    assert_eq!(
        registry
            .unit_placements(&unit_name("a.service"))
            .await
            .expect("where is a"),
        vec![m1.clone()]
    );

    // m1's engine lease expires: m2 takes over and m1's writes bounce.
    registry.revoke_lease(lease1).await.expect("revoke");
    let new_leadership = registry
        .campaign(&m2, lease2)
        .await
        .expect("campaign")
        .expect("m2 leads now");
    assert_ne!(new_leadership.revision, leadership.revision);
    let late = [ScheduleChange::Place(placement(
        "c.service",
        "m1",
        TargetState::Launched,
    ))];
    assert!(matches!(
        registry.commit_schedule(&leadership, &late).await,
        Err(RegistryError::NotLeader)
    ));
    assert_eq!(
        registry.placements().await.expect("placements"),
        vec![a1, b2]
    );

    // Resigning an old leadership does not depose the new leader.
    registry.resign(&leadership).await.expect("resign old");
    assert_eq!(registry.leader().await.expect("leader"), Some(m2.clone()));
    registry.resign(&new_leadership).await.expect("resign");
    assert_eq!(registry.leader().await.expect("leader"), None);
}

#[tokio::test]
async fn large_schedules_are_written_in_batches() {
    let (_etcd, registry) = registry("batches").await;
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    let leadership = registry
        .campaign(&machine_id("m1"), lease)
        .await
        .expect("campaign")
        .expect("leads");
    let changes: Vec<_> = (0..300)
        .map(|i| {
            ScheduleChange::Place(placement(
                &format!("u{i:03}.service"),
                "m1",
                TargetState::Launched,
            ))
        })
        .collect();
    registry
        .commit_schedule(&leadership, &changes)
        .await
        .expect("commit 300 changes");
    assert_eq!(registry.placements().await.expect("placements").len(), 300);
    let unplace: Vec<_> = (0..300)
        .map(|i| ScheduleChange::Unplace {
            unit: unit_name(&format!("u{i:03}.service")),
            machine: machine_id("m1"),
        })
        .collect();
    registry
        .commit_schedule(&leadership, &unplace)
        .await
        .expect("unplace 300");
    assert_eq!(registry.placements().await.expect("placements"), vec![]);
}

#[tokio::test]
async fn snapshot_reads_at_one_revision_and_a_watch_continues_from_it() {
    let (_etcd, registry) = registry("snapshot").await;
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register");
    let a = unit_name("a.service");
    registry
        .create_unit(&a, &unit_file("/bin/a"), TargetState::Launched)
        .await
        .expect("create");
    let leadership = registry
        .campaign(&machine_id("m1"), lease)
        .await
        .expect("campaign")
        .expect("leads");
    let a1 = Placement {
        unit: a.clone(),
        machine: machine_id("m1"),
        hash: unit_file("/bin/a").hash(),
        target_state: TargetState::Launched,
    };
    registry
        .commit_schedule(&leadership, &[ScheduleChange::Place(a1.clone())])
        .await
        .expect("place");

    let snapshot = registry.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.machines, vec![machine("m1")]);
    assert_eq!(
        snapshot
            .units
            .iter()
            .map(|unit| &unit.name)
            .collect::<Vec<_>>(),
        vec![&a]
    );
    assert_eq!(snapshot.placements, vec![a1.clone()]);

    // Writes after the snapshot are exactly what a watch from revision + 1 sees.
    let b = unit_name("b.service");
    registry
        .create_unit(&b, &unit_file("/bin/b"), TargetState::Loaded)
        .await
        .expect("create b");
    let from = snapshot.revision.next();
    let mut units = registry
        .watch_changes(Watched::Units, from)
        .await
        .expect("watch units");
    let mut contents = registry
        .watch_changes(Watched::Content, from)
        .await
        .expect("watch contents");
    let changes = next_changes(&mut units).await;
    assert!(changes.iter().all(|c| c.revision > snapshot.revision));
    let records: Vec<_> = changes
        .into_iter()
        .filter_map(|changed| match changed.change {
            Change::UnitRecord { unit, record } => Some((unit, record)),
            _ => None,
        })
        .collect();
    assert_eq!(
        records,
        vec![(
            b.clone(),
            Some((unit_file("/bin/b").hash(), TargetState::Loaded))
        )]
    );
    let contents: Vec<_> = next_changes(&mut contents)
        .await
        .into_iter()
        .filter_map(|changed| match changed.change {
            Change::Content { hash, file } => Some((hash, file)),
            _ => None,
        })
        .collect();
    assert_eq!(
        contents,
        vec![(unit_file("/bin/b").hash(), unit_file("/bin/b"))]
    );

    // A snapshot at an older revision than a later write does not see it.
    let later = registry.snapshot().await.expect("snapshot");
    assert!(later.revision > snapshot.revision);
    assert_eq!(later.units.len(), 2);
}

#[tokio::test]
async fn an_agent_watch_sees_its_schedule_and_deletes() {
    let (_etcd, registry) = registry("watch").await;
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    let leadership = registry
        .campaign(&machine_id("m0"), lease)
        .await
        .expect("campaign")
        .expect("leads");
    let m1 = machine_id("m1");
    let (schedule, revision) = registry.machine_schedule(&m1).await.expect("schedule");
    assert_eq!(schedule, vec![]);
    let mut watch = registry
        .watch_changes(Watched::ScheduleOf(m1.clone()), revision.next())
        .await
        .expect("watch");

    let a1 = placement("a.service", "m1", TargetState::Loaded);
    let other = placement("a.service", "m2", TargetState::Loaded);
    registry
        .commit_schedule(
            &leadership,
            &[
                ScheduleChange::Place(a1.clone()),
                ScheduleChange::Place(other),
            ],
        )
        .await
        .expect("place");
    let changes = next_changes(&mut watch).await;
    assert_eq!(
        changes.len(),
        1,
        "only this machine's schedule: {changes:?}"
    );
    assert!(
        matches!(&changes[0].change, Change::Placed(placed) if *placed == a1),
        "{changes:?}"
    );

    let unplace = ScheduleChange::Unplace {
        unit: a1.unit.clone(),
        machine: m1.clone(),
    };
    registry
        .commit_schedule(&leadership, &[unplace])
        .await
        .expect("unplace");
    let changes = next_changes(&mut watch).await;
    assert_eq!(changes.len(), 1);
    assert!(
        matches!(&changes[0].change, Change::Unplaced { unit, machine } if *unit == a1.unit && *machine == m1),
        "{changes:?}"
    );
}

/// Watching from a compacted revision fails with `Compacted` (from the watch
/// call or its first batch), carrying the revision to list again from.
async fn expect_compacted(registry: &Registry, from_revision: Revision) -> Revision {
    match registry
        .watch_prefix(registry.keys().prefix().to_owned(), from_revision)
        .await
    {
        Err(RegistryError::Compacted { revision }) => revision,
        Err(error) => panic!("expected Compacted, got {error}"),
        Ok(mut watch) => match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Err(RegistryError::Compacted { revision })) => revision,
            other => panic!("expected Compacted, got {other:?}"),
        },
    }
}

#[tokio::test]
async fn watching_compacted_history_says_so() {
    let (_etcd, registry) = registry("compacted").await;
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    let leadership = registry
        .campaign(&machine_id("m1"), lease)
        .await
        .expect("campaign")
        .expect("leads");
    let first = registry.snapshot().await.expect("snapshot").revision;
    for i in 0..5 {
        let place = ScheduleChange::Place(placement(
            &format!("u{i}.service"),
            "m1",
            TargetState::Launched,
        ));
        registry
            .commit_schedule(&leadership, &[place])
            .await
            .expect("place");
    }
    let now = registry.snapshot().await.expect("snapshot").revision;
    compact(&registry, now).await.expect("compact");
    let compacted = expect_compacted(&registry, first.next()).await;
    assert_eq!(compacted, now);
    // Re-listing and watching from the new revision works.
    let snapshot = registry.snapshot().await.expect("re-list");
    assert_eq!(snapshot.placements.len(), 5);
    let mut watch = registry
        .watch_prefix(
            registry.keys().prefix().to_owned(),
            snapshot.revision.next(),
        )
        .await
        .expect("watch");
    let unplace = ScheduleChange::Unplace {
        unit: unit_name("u0.service"),
        machine: machine_id("m1"),
    };
    registry
        .commit_schedule(&leadership, &[unplace])
        .await
        .expect("unplace");
    assert_eq!(
        next_batch(&mut watch).await.len(),
        3,
        "the schedule key, the placement index and the unload order"
    );
}

#[tokio::test]
async fn a_watch_fails_when_etcd_goes_away_and_can_resume_after_a_restart() {
    let (mut etcd, registry) = registry("watch-restart").await;
    let lease = registry
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    let leadership = registry
        .campaign(&machine_id("m0"), lease)
        .await
        .expect("campaign")
        .expect("leads");
    let m1 = machine_id("m1");
    let (_, revision) = registry.machine_schedule(&m1).await.expect("schedule");
    let mut watch = registry
        .watch_changes(Watched::ScheduleOf(m1.clone()), revision.next())
        .await
        .expect("watch");

    etcd.stop();
    // The HTTP/2 keep-alive (5 s interval, 5 s timeout) bounds how long a
    // dead connection goes unnoticed; a killed process is usually seen at once.
    match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
        Ok(Err(error)) => assert!(error.is_retriable(), "{error}"),
        Ok(Ok(None)) => {}
        other => panic!("expected the watch to end, got {other:?}"),
    }

    etcd.restart().await;
    wait_until(
        Duration::from_secs(20),
        "the registry reaches etcd again",
        || async { registry.machine_schedule(&m1).await.is_ok() },
    )
    .await;
    let (_, last_seen) = registry
        .machine_schedule(&m1)
        .await
        .expect("schedule after the restart");
    let mut watch = registry
        .watch_changes(Watched::ScheduleOf(m1.clone()), last_seen.next())
        .await
        .expect("watch again");
    let a1 = placement("a.service", "m1", TargetState::Launched);
    registry
        .commit_schedule(&leadership, &[ScheduleChange::Place(a1.clone())])
        .await
        .expect("place");
    let changes = next_changes(&mut watch).await;
    assert!(
        matches!(&changes[0].change, Change::Placed(placed) if *placed == a1),
        "{changes:?}"
    );
}

/// The engine takes a registering machine from its watch event instead of
/// reading it: the event carries the record (configured metadata) and the
/// snapshot and metadata events carry the dynamic metadata, whose merge is
/// what a read of the machine gives.
#[tokio::test]
async fn machine_events_carry_the_record_and_metadata_edits() {
    use fleet_registry::store::{MetadataOp, merge_metadata};
    use std::collections::BTreeMap;

    let (_etcd, registry) = registry("machine-events").await;
    let m1 = machine_id("m1");
    // Set before the machine joins, as an operator may.
    registry
        .apply_metadata(&[
            MetadataOp::Set {
                machine: m1.clone(),
                key: "region".to_owned(),
                value: "eu".to_owned(),
            },
            MetadataOp::Remove {
                machine: m1.clone(),
                key: "disk".to_owned(),
            },
        ])
        .await
        .expect("metadata");
    let snapshot = registry.snapshot().await.expect("snapshot");
    let dynamic = snapshot
        .dynamic_metadata
        .get(&m1)
        .cloned()
        .expect("m1's dynamic metadata is in the snapshot");
    assert_eq!(
        dynamic,
        BTreeMap::from([
            ("disk".to_owned(), String::new()),
            ("region".to_owned(), "eu".to_owned())
        ])
    );
    let from = snapshot.revision.next();
    let mut machines = registry
        .watch_changes(Watched::Machines, from)
        .await
        .expect("watch machines");
    let mut metadata = registry
        .watch_changes(Watched::Metadata, from)
        .await
        .expect("watch metadata");

    let (configured, _lease) = register_m1_in_us_on_ssd(&registry).await;
    let changes: Vec<Change> = next_changes(&mut machines)
        .await
        .into_iter()
        .map(|changed| changed.change)
        .collect();
    let [Change::MachinePresent(record)] = changes.as_slice() else {
        panic!("expected the record of m1, got {changes:?}");
    };
    assert_eq!(record, &configured, "the record as stored");
    let read = registry.machine(&m1).await.expect("read").expect("present");
    assert_eq!(merge_metadata(&record.metadata, &dynamic), read.metadata);
    assert_eq!(
        read.metadata,
        BTreeMap::from([("region".to_owned(), "eu".to_owned())])
    );

    // An edit arrives with its key and value; a tombstone is an empty value.
    registry
        .apply_metadata(&[MetadataOp::Set {
            machine: m1.clone(),
            key: "rack".to_owned(),
            value: "r1".to_owned(),
        }])
        .await
        .expect("set rack");
    let changes: Vec<Change> = next_changes(&mut metadata)
        .await
        .into_iter()
        .map(|changed| changed.change)
        .collect();
    assert_eq!(
        changes,
        vec![Change::MetadataChanged {
            machine: m1.clone(),
            key: "rack".to_owned(),
            value: Some("r1".to_owned()),
        }]
    );
}
