//! Shared fixtures: a connected registry on a fresh etcd, test values, and a
//! condition wait with a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};

use fleet_registry::testing::Etcd;
use fleet_registry::{MachineId, MachineState, Registry};
use fleet_systemd::unit::{UnitFile, UnitName, UnitOption};

/// A prefix no other test uses (tests of one binary share the process).
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "/fleet-test/{test}-{}-{}/",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh etcd and a registry on it under a unique prefix.
pub async fn registry(test: &str) -> (Etcd, Registry) {
    let etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config(&unique_prefix(test)))
        .await
        .expect("connecting to the test etcd");
    (etcd, registry)
}

pub fn machine_id(id: &str) -> MachineId {
    id.parse().expect("test machine ids are valid")
}

pub fn unit_name(name: &str) -> UnitName {
    name.parse().expect("test unit names are valid")
}

pub fn machine(id: &str) -> MachineState {
    MachineState {
        id: machine_id(id),
        public_ip: "10.0.0.1".to_owned(),
        metadata: Default::default(),
        version: "0.1.0".to_owned(),
        disable_engine: false,
        disable_agent: false,
        api_url: String::new(),
    }
}

/// Registers machine `m1` under a new 30 s lease with the configured
/// metadata `region=us`, `disk=ssd` (what the metadata tests override);
/// the record as registered and its lease.
pub async fn register_m1_in_us_on_ssd(
    registry: &Registry,
) -> (MachineState, fleet_registry::store::LeaseId) {
    let lease = registry
        .grant_lease(std::time::Duration::from_secs(30))
        .await
        .expect("grant");
    let mut configured = machine("m1");
    configured.metadata = std::collections::BTreeMap::from([
        ("region".to_owned(), "us".to_owned()),
        ("disk".to_owned(), "ssd".to_owned()),
    ]);
    registry
        .register_machine(&configured, lease)
        .await
        .expect("register");
    (configured, lease)
}

/// A small unit file whose content differs with `exec`.
pub fn unit_file(exec: &str) -> UnitFile {
    UnitFile::from_options(vec![
        UnitOption {
            section: "Unit".to_owned(),
            name: "Description".to_owned(),
            value: "test".to_owned(),
        },
        UnitOption {
            section: "Service".to_owned(),
            name: "ExecStart".to_owned(),
            value: exec.to_owned(),
        },
    ])
}

pub use fleet_registry::testing::wait::wait_until;
