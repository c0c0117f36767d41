//! The heart against a real etcd: registration, duplicate machine ids, lease
//! loss and expiry, and an etcd restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleet_registry::testing::Etcd;
use fleet_registry::{MachineId, Registry};
use fleetd::heart::{Heart, HeartConfig, Presence};
use fleetd::machine::LocalMachine;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::util::{machine_id_file, machine_ids, prefix, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

fn heart_config(ttl: Duration) -> HeartConfig {
    HeartConfig {
        ttl,
        refresh_interval: Duration::from_secs(60),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
    }
}

fn local(machine_id_file: &Path) -> LocalMachine {
    LocalMachine {
        machine_id_file: machine_id_file.to_owned(),
        public_ip: "10.0.0.1".to_owned(),
        metadata: BTreeMap::from([("role".to_owned(), "test".to_owned())]),
        disable_engine: false,
        disable_agent: false,
        api_url: String::new(),
    }
}

struct Running {
    presence: Presence,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(registry: &Registry, config: HeartConfig, local: LocalMachine) -> Running {
        let (heart, presence) = Heart::new(config, registry.clone(), local);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(heart.run(shutdown.child_token()));
        Running {
            presence,
            shutdown,
            task,
        }
    }

    async fn registered(&mut self) -> fleet_registry::LeaseId {
        let lease = tokio::time::timeout(DEADLINE, self.presence.wait_for(Option::is_some))
            .await
            .expect("the heart registers within the deadline")
            .expect("the heart is running");
        lease.expect("wait_for returned a registered presence")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the heart stops")
            .expect("no panic");
        result.expect("the heart stops without error");
    }
}

#[tokio::test]
async fn registers_the_machine_and_unregisters_on_shutdown() {
    let etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config(&prefix("register")))
        .await
        .expect("connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let id: MachineId = "m-register".parse().expect("valid id");
    let mut heart = Running::start(
        &registry,
        heart_config(Duration::from_secs(3)),
        local(&machine_id_file(dir.path(), id.as_str())),
    );
    heart.registered().await;
    let machine = registry
        .machine(&id)
        .await
        .expect("reads")
        .expect("the machine is listed");
    assert_eq!(machine.public_ip, "10.0.0.1");
    assert_eq!(
        machine.metadata.get("role").map(String::as_str),
        Some("test")
    );
    assert_eq!(machine.version, fleetd::machine::VERSION);
    heart.stop().await;
    assert!(
        machine_ids(&registry).await.is_empty(),
        "a graceful stop removes the machine at once"
    );
}

#[tokio::test]
async fn a_duplicate_machine_id_waits_until_the_first_is_gone() {
    let etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config(&prefix("duplicate")))
        .await
        .expect("connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = machine_id_file(dir.path(), "m-dup");
    let mut first = Running::start(
        &registry,
        heart_config(Duration::from_secs(3)),
        local(&id_file),
    );
    let first_lease = first.registered().await;

    let mut second = Running::start(
        &registry,
        heart_config(Duration::from_secs(3)),
        local(&id_file),
    );
    // The second heart retries every ≤ 0.5 s; over 3 s (a whole TTL, so the
    // first's keep-alives are proven to hold it) it must never get in.
    let took_over = tokio::time::timeout(
        Duration::from_secs(3),
        second.presence.wait_for(Option::is_some),
    )
    .await
    .is_ok();
    assert!(
        !took_over,
        "the second heart registered while the first was alive"
    );
    assert_eq!(
        *first.presence.borrow(),
        Some(first_lease),
        "the first heart kept its lease"
    );
    assert_eq!(machine_ids(&registry).await.len(), 1);

    first.stop().await;
    let second_lease = second.registered().await;
    assert_ne!(second_lease, first_lease);
    wait_until(DEADLINE, "the machine is listed again", || async {
        machine_ids(&registry).await.len() == 1
    })
    .await;
    second.stop().await;
}

#[tokio::test]
async fn the_machine_vanishes_with_its_lease_and_registers_again() {
    let etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config(&prefix("revoke")))
        .await
        .expect("connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut heart = Running::start(
        &registry,
        heart_config(Duration::from_secs(3)),
        local(&machine_id_file(dir.path(), "m-revoke")),
    );
    let lease = heart.registered().await;
    registry.revoke_lease(lease).await.expect("revokes");
    // The heart notices at its next keep-alive (≤ 1 s) and registers anew.
    let now = machine_ids(&registry).await;
    assert!(
        now.is_empty(),
        "revoking the lease removes the machine at once: {now:?}"
    );
    tokio::time::timeout(
        DEADLINE,
        heart
            .presence
            .wait_for(|presence| presence.is_some_and(|new| new != lease)),
    )
    .await
    .expect("the heart registers again with a new lease")
    .expect("the heart is running");
    wait_until(DEADLINE, "the machine is listed again", || async {
        machine_ids(&registry).await.len() == 1
    })
    .await;
    heart.stop().await;
}

#[tokio::test]
async fn the_machine_vanishes_when_its_lease_expires() {
    let etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config(&prefix("expire")))
        .await
        .expect("connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut heart = Running::start(
        &registry,
        heart_config(Duration::from_secs(2)),
        local(&machine_id_file(dir.path(), "m-expire")),
    );
    heart.registered().await;
    // Killed, not stopped: nothing unregisters, the lease must run out.
    heart.task.abort();
    wait_until(DEADLINE, "the machine's lease expires", || async {
        machine_ids(&registry).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn registers_again_after_etcd_restarts() {
    let mut etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config(&prefix("restart")))
        .await
        .expect("connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut heart = Running::start(
        &registry,
        heart_config(Duration::from_secs(2)),
        local(&machine_id_file(dir.path(), "m-restart")),
    );
    heart.registered().await;

    etcd.stop();
    tokio::time::timeout(DEADLINE, heart.presence.wait_for(Option::is_none))
        .await
        .expect("the heart gives up the lease once etcd is gone for a TTL")
        .expect("the heart is running");
    etcd.restart().await;
    // The restarted etcd kept the lease (and renewed it with its new
    // leader), so the heart takes it up again; had it expired, the heart
    // would register with a new one. Either way it is present again.
    tokio::time::timeout(
        Duration::from_secs(40),
        heart.presence.wait_for(Option::is_some),
    )
    .await
    .expect("the heart registers again once etcd is back")
    .expect("the heart is running");
    wait_until(DEADLINE, "the machine is listed again", || async {
        machine_ids(&registry).await.len() == 1
    })
    .await;
    heart.stop().await;
}
