//! A long engine pass does not depose the engine: its leader lease is kept
//! alive from a task of its own (`lease`), not from the loop that runs the
//! passes. Against a real etcd, with a pass held at a gate for three lease
//! TTLs.
//!
//! The test can fail: with the keep-alives on the pass's loop (the lease task
//! not spawned, keep-alives sent between passes instead) the leader key
//! vanishes with the lease within one TTL of the held pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_registry::testing::Etcd;
use fleet_registry::testing::wait::wait_until;
use fleet_registry::{MachineId, Registry};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineStatus};
use crate::config::EngineConfig;

/// Where every pass waits until the test opens it.
pub(crate) struct PassGate {
    /// Passes that reached the gate.
    entered: AtomicUsize,
    /// No permit until opened; a pass takes one and gives it back.
    open: Semaphore,
}

impl PassGate {
    fn closed() -> PassGate {
        PassGate {
            entered: AtomicUsize::new(0),
            open: Semaphore::new(0),
        }
    }

    pub(crate) async fn enter(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        // A closed semaphore cannot happen here (never closed); either way
        // the pass goes on.
        let _permit = self.open.acquire().await;
    }

    fn open(&self) {
        self.open.add_permits(1);
    }
}

const LEASE_TTL: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_longer_than_the_lease_ttl_does_not_depose_the_engine() {
    let etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config("/engine-slow-pass/"))
        .await
        .expect("connecting to the test etcd");
    let machine: MachineId = "0123456789abcdef0123456789abcdef".parse().unwrap();
    let config = EngineConfig {
        lease_ttl: LEASE_TTL,
        machine_loss_grace: Duration::from_secs(1),
        breaker_fraction: 0.5,
        machine_restart_grace: Duration::from_secs(1),
    };
    let gate = Arc::new(PassGate::closed());
    let mut engine = Engine::new(config, registry.clone(), machine.clone());
    engine.pass_gate = Some(Arc::clone(&gate));
    let status = engine.status();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));

    // The first pass follows the first listing at once and waits at the gate.
    wait_until(WAIT, "the engine's first pass at the gate", || async {
        gate.entered.load(Ordering::SeqCst) >= 1
    })
    .await;
    let leading: EngineStatus = status.borrow().clone();
    assert!(
        leading.leadership.is_some() && leading.lease.is_some(),
        "{leading:?}"
    );
    assert_eq!(registry.leader().await.unwrap(), Some(machine.clone()));

    // Three TTLs inside one pass; the leader key (under the engine's lease)
    // and the leadership must hold throughout. A polled invariant.
    let held_since = Instant::now();
    let mut checks = 0;
    while held_since.elapsed() < LEASE_TTL * 3 {
        assert_eq!(
            registry.leader().await.unwrap(),
            Some(machine.clone()),
            "the leader key is gone {:?} into a held pass",
            held_since.elapsed()
        );
        assert_eq!(
            *status.borrow(),
            leading,
            "the engine lost or changed its leadership {:?} into a held pass",
            held_since.elapsed()
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(checks > 1);
    assert_eq!(
        gate.entered.load(Ordering::SeqCst),
        1,
        "the pass is still held"
    );

    gate.open();
    wait_until(WAIT, "the engine runs its passes again", || async {
        gate.entered.load(Ordering::SeqCst) >= 1 && gate.open.available_permits() == 1
    })
    .await;
    assert_eq!(*status.borrow(), leading, "still the same leadership");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
