//! Machines: registration under a lease, duplicates, expiry, metadata, and
//! the behaviour of requests while etcd is down.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use fleet_registry::store::MetadataOp;
use fleet_registry::{Registry, RegistryConfig, RegistryError};

use crate::util::{machine, machine_id, register_m1_in_us_on_ssd, registry, wait_until};

#[tokio::test]
async fn register_refuses_a_live_duplicate_and_frees_the_id_on_revoke() {
    let (_etcd, registry) = registry("register").await;
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("first registration");
    // A retry under the same lease (the first answer was lost) is fine.
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("same lease again");

    let other = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    match registry.register_machine(&machine("m1"), other).await {
        Err(RegistryError::MachineExists(id)) => assert_eq!(id, machine_id("m1")),
        result => panic!("expected MachineExists, got {result:?}"),
    }
    assert!(matches!(
        registry.update_machine(&machine("m1"), other).await,
        Err(RegistryError::MachineExists(_))
    ));

    let machines = registry.machines().await.expect("machines");
    assert_eq!(machines, vec![machine("m1")]);

    registry.revoke_lease(lease).await.expect("revoke");
    assert_eq!(registry.machines().await.expect("machines"), vec![]);
    assert_eq!(
        registry.machine(&machine_id("m1")).await.expect("machine"),
        None
    );
    registry
        .register_machine(&machine("m1"), other)
        .await
        .expect("the id is free again");
    // Revoking a lease that is gone is not an error.
    registry.revoke_lease(lease).await.expect("revoke again");
}

#[tokio::test]
async fn update_and_unregister_touch_only_our_record() {
    let (_etcd, registry) = registry("update").await;
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    let other = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register");

    let mut moved = machine("m1");
    moved.public_ip = "10.0.0.9".to_owned();
    registry
        .update_machine(&moved, lease)
        .await
        .expect("update");
    assert_eq!(
        registry.machine(&machine_id("m1")).await.expect("machine"),
        Some(moved.clone())
    );

    // Not our lease: nothing happens.
    registry
        .unregister_machine(&machine_id("m1"), other)
        .await
        .expect("unregister with another lease");
    assert_eq!(registry.machines().await.expect("machines").len(), 1);
    registry
        .unregister_machine(&machine_id("m1"), lease)
        .await
        .expect("unregister");
    assert_eq!(registry.machines().await.expect("machines"), vec![]);

    // Updating a record that vanished while our lease lives publishes it again.
    registry
        .update_machine(&moved, lease)
        .await
        .expect("update recreates");
    assert_eq!(registry.machines().await.expect("machines"), vec![moved]);
}

#[tokio::test]
async fn machine_vanishes_when_its_lease_expires() {
    let (_etcd, registry) = registry("expiry").await;
    let lease = registry
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register");
    assert!(
        registry
            .keep_alive_once(lease)
            .await
            .expect("keep-alive")
            .is_some()
    );
    wait_until(
        Duration::from_secs(10),
        "the machine record expires",
        || async { registry.machines().await.expect("machines").is_empty() },
    )
    .await;
    assert_eq!(
        registry
            .keep_alive_once(lease)
            .await
            .expect("keep-alive of an expired lease"),
        None
    );
}

#[tokio::test]
async fn metadata_merges_over_configured_and_tombstones_hide_keys() {
    let (_etcd, registry) = registry("metadata").await;
    let (configured, lease) = register_m1_in_us_on_ssd(&registry).await;

    let ops = [
        MetadataOp::Set {
            machine: machine_id("m1"),
            key: "rack".to_owned(),
            value: "r1".to_owned(),
        },
        MetadataOp::Set {
            machine: machine_id("m1"),
            key: "region".to_owned(),
            value: "eu".to_owned(),
        },
        MetadataOp::Remove {
            machine: machine_id("m1"),
            key: "disk".to_owned(),
        },
        // Later edits of one key win.
        MetadataOp::Set {
            machine: machine_id("m1"),
            key: "rack".to_owned(),
            value: "r2".to_owned(),
        },
        // Machines need not exist, as in the original (metadata may be set before a machine joins).
        MetadataOp::Set {
            machine: machine_id("m9"),
            key: "x".to_owned(),
            value: "y".to_owned(),
        },
    ];
    registry.apply_metadata(&ops).await.expect("apply");
    let expected = BTreeMap::from([
        ("rack".to_owned(), "r2".to_owned()),
        ("region".to_owned(), "eu".to_owned()),
    ]);
    let machines = registry.machines().await.expect("machines");
    assert_eq!(
        machines.len(),
        1,
        "metadata alone does not make a machine: {machines:?}"
    );
    assert_eq!(machines[0].metadata, expected);

    // Dynamic metadata outlives the machine's lease and applies when it comes back.
    registry.revoke_lease(lease).await.expect("revoke");
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    registry
        .register_machine(&configured, lease)
        .await
        .expect("register again");
    let again = registry
        .machine(&machine_id("m1"))
        .await
        .expect("machine")
        .expect("registered");
    assert_eq!(again.metadata, expected);
}

#[tokio::test]
async fn requests_fail_while_etcd_is_down_and_work_again_after_a_restart() {
    let (mut etcd, registry) = registry("restart").await;
    let lease = registry
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register");

    etcd.stop();
    let error = registry.machines().await.expect_err("etcd is down");
    assert!(error.is_retriable(), "{error}");

    etcd.restart().await;
    wait_until(
        Duration::from_secs(20),
        "the registry reaches etcd again",
        || async { registry.machines().await.is_ok() },
    )
    .await;
    assert_eq!(
        registry.machines().await.expect("machines"),
        vec![machine("m1")],
        "data survives a restart"
    );
}

#[tokio::test]
async fn a_silent_etcd_times_out() {
    // Accepts TCP connections (the kernel does) but never speaks HTTP/2.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let config = RegistryConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        key_prefix: "/silent/".to_owned(),
        request_timeout: Duration::from_millis(300),
        username: None,
        password: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let registry = Registry::connect(&config)
        .await
        .expect("connect does not need etcd");
    match registry.machines().await {
        Err(RegistryError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(300)),
        result => panic!("expected a timeout, got {result:?}"),
    }
    drop(listener);
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let base = RegistryConfig {
        endpoints: vec!["http://127.0.0.1:1".to_owned()],
        key_prefix: "/x/".to_owned(),
        request_timeout: Duration::from_secs(1),
        username: None,
        password: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let cases = [
        RegistryConfig {
            endpoints: vec![],
            ..base.clone()
        },
        RegistryConfig {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            ..base.clone()
        },
        RegistryConfig {
            username: Some("root".to_owned()),
            ..base.clone()
        },
        RegistryConfig {
            request_timeout: Duration::ZERO,
            ..base.clone()
        },
        RegistryConfig {
            ca_file: Some("/nonexistent/ca.pem".to_owned()),
            ..base.clone()
        },
    ];
    for config in cases {
        assert!(
            matches!(
                Registry::connect(&config).await,
                Err(RegistryError::Config(_))
            ),
            "accepted {config:?}"
        );
    }
}
