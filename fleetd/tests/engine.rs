//! The engine against a real etcd, with simulated machines registered
//! through the registry under real leases (no systemd involved).
//!
//! Each test starts its own etcd (`fleet_registry::testing::Etcd`) and runs
//! engines in-process with their own shutdown token, as `fleetd` does.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use fleet_registry::store::{LeaseId, ScheduleChange};
use fleet_registry::testing::Etcd;
use fleet_registry::testing::wait::wait_until;
use fleet_registry::{MachineId, MachineState, Placement, Registry, RegistryError, TargetState};
use fleet_systemd::unit::{UnitFile, UnitName};
use fleetd::config::EngineConfig;
use fleetd::engine::{Engine, EngineStatus};

const GRACE: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(20);

fn engine_config(breaker_fraction: f64) -> EngineConfig {
    EngineConfig {
        lease_ttl: Duration::from_secs(3),
        machine_loss_grace: GRACE,
        breaker_fraction,
        machine_restart_grace: GRACE,
    }
}

fn id(name: &str) -> MachineId {
    name.parse().expect("machine id")
}

fn unit_name(name: &str) -> UnitName {
    name.parse().expect("unit name")
}

async fn registry(etcd: &Etcd, prefix: &str) -> Registry {
    Registry::connect(&etcd.config(prefix))
        .await
        .expect("connecting to the test etcd")
}

/// A machine as the engine sees it: a record under a live lease, kept alive
/// by a task until the machine is "lost".
struct SimMachine {
    lease: LeaseId,
    keep_alive: JoinHandle<()>,
}

impl SimMachine {
    async fn register(registry: &Registry, name: &str) -> SimMachine {
        let lease = registry
            .grant_lease(Duration::from_secs(5))
            .await
            .expect("granting a machine lease");
        let state = MachineState {
            id: id(name),
            public_ip: "127.0.0.1".to_owned(),
            metadata: BTreeMap::new(),
            version: "0.1.0".to_owned(),
            disable_engine: false,
            disable_agent: false,
            api_url: String::new(),
        };
        registry
            .register_machine(&state, lease)
            .await
            .expect("registering a machine");
        let keeper = registry.clone();
        let keep_alive = tokio::spawn(async move {
            loop {
                sleep(Duration::from_secs(1)).await;
                if !matches!(keeper.keep_alive_once(lease).await, Ok(Some(_))) {
                    return;
                }
            }
        });
        SimMachine { lease, keep_alive }
    }

    /// The machine vanishes at once: its lease is revoked.
    async fn lose(self, registry: &Registry) {
        self.keep_alive.abort();
        registry
            .revoke_lease(self.lease)
            .await
            .expect("revoking a machine lease");
    }
}

impl Drop for SimMachine {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

async fn create_unit(registry: &Registry, name: &str, x_fleet: &str) {
    let text = format!("[Service]\nExecStart=/bin/sleep 1000\n{x_fleet}");
    let file = UnitFile::parse(&text).expect("parsing a test unit");
    registry
        .create_unit(&unit_name(name), &file, TargetState::Launched)
        .await
        .expect("creating a unit");
}

/// unit -> machines it is placed on.
async fn schedule_of(registry: &Registry) -> BTreeMap<String, Vec<String>> {
    let mut schedule: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for placement in registry.placements().await.expect("reading placements") {
        schedule
            .entry(placement.unit.to_string())
            .or_default()
            .push(placement.machine.to_string());
    }
    schedule
}

/// An engine running in a task; stopped (and awaited) by `stop`.
struct RunningEngine {
    shutdown: CancellationToken,
    status: tokio::sync::watch::Receiver<EngineStatus>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningEngine {
    fn start(registry: &Registry, machine: &str, breaker_fraction: f64) -> RunningEngine {
        let engine = Engine::new(
            engine_config(breaker_fraction),
            registry.clone(),
            id(machine),
        );
        let status = engine.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(engine.run(shutdown.clone()));
        RunningEngine {
            shutdown,
            status,
            task,
        }
    }

    fn leads(&self) -> bool {
        self.status.borrow().leadership.is_some()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("engine task panicked")
            .expect("engine failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_places_units_and_global_units() {
    let etcd = Etcd::start().await;
    let registry = registry(&etcd, "/engine-places/").await;
    let _m1 = SimMachine::register(&registry, "m1").await;
    let _m2 = SimMachine::register(&registry, "m2").await;
    let engine = RunningEngine::start(&registry, "m1", 0.5);

    create_unit(&registry, "a.service", "").await;
    create_unit(&registry, "b.service", "").await;
    create_unit(&registry, "global.service", "[X-Fleet]\nGlobal=true\n").await;
    create_unit(
        &registry,
        "nowhere.service",
        "[X-Fleet]\nMachineMetadata=region=mars\n",
    )
    .await;
    wait_until(WAIT, "a, b and the global unit are placed", || async {
        let schedule = schedule_of(&registry).await;
        schedule.get("global.service").map(Vec::len) == Some(2)
            && schedule.contains_key("a.service")
            && schedule.contains_key("b.service")
    })
    .await;
    let schedule = schedule_of(&registry).await;
    assert_ne!(
        schedule["a.service"], schedule["b.service"],
        "least loaded: a and b on different machines"
    );
    assert!(!schedule.contains_key("nowhere.service"));

    // A desired-state change is rewritten in place.
    registry
        .set_desired_state(&unit_name("a.service"), TargetState::Loaded)
        .await
        .expect("setting the desired state");
    wait_until(WAIT, "a's placement targets loaded", || async {
        registry
            .placements()
            .await
            .expect("placements")
            .iter()
            .any(|p: &Placement| {
                p.unit.as_str() == "a.service" && p.target_state == TargetState::Loaded
            })
    })
    .await;
    // Destroying a unit removes its placement.
    registry
        .destroy_unit(&unit_name("b.service"))
        .await
        .expect("destroying a unit");
    wait_until(WAIT, "b is unplaced", || async {
        !schedule_of(&registry).await.contains_key("b.service")
    })
    .await;

    assert!(engine.leads());
    engine.stop().await;
    assert_eq!(
        registry.leader().await.expect("reading the leader"),
        None,
        "the leader resigns on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_of_a_lost_machine_move_after_the_grace() {
    let etcd = Etcd::start().await;
    let registry = registry(&etcd, "/engine-loss/").await;
    let m1 = SimMachine::register(&registry, "m1").await;
    let m2 = SimMachine::register(&registry, "m2").await;
    let m3 = SimMachine::register(&registry, "m3").await;
    let engine = RunningEngine::start(&registry, "m1", 0.5);
    for name in ["a.service", "b.service", "c.service"] {
        create_unit(&registry, name, "").await;
    }
    wait_until(WAIT, "three units are placed", || async {
        schedule_of(&registry).await.len() == 3
    })
    .await;
    let before = schedule_of(&registry).await;
    let on_m2: Vec<String> = before
        .iter()
        .filter(|(_, machines)| machines.contains(&"m2".to_owned()))
        .map(|(unit, _)| unit.clone())
        .collect();
    assert_eq!(on_m2.len(), 1, "one unit per machine: {before:?}");

    let lost_at = Instant::now();
    m2.lose(&registry).await;
    wait_until(WAIT, "the unit of m2 moves", || async {
        let schedule = schedule_of(&registry).await;
        schedule
            .get(&on_m2[0])
            .is_some_and(|machines| !machines.contains(&"m2".to_owned()))
    })
    .await;
    assert!(
        lost_at.elapsed() >= GRACE,
        "moved after {:?}, before the grace of {GRACE:?}",
        lost_at.elapsed()
    );
    let after = schedule_of(&registry).await;
    for (unit, machines) in &before {
        if unit != &on_m2[0] {
            assert_eq!(&after[unit], machines, "{unit} must not move");
        }
    }
    engine.stop().await;
    drop((m1, m3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_takes_over_and_the_deposed_leader_cannot_write() {
    let etcd = Etcd::start().await;
    let registry = registry(&etcd, "/engine-takeover/").await;
    let _m1 = SimMachine::register(&registry, "m1").await;
    let _m2 = SimMachine::register(&registry, "m2").await;
    let first = RunningEngine::start(&registry, "m1", 0.5);
    wait_until(WAIT, "the first engine leads", || async { first.leads() }).await;
    let second = RunningEngine::start(&registry, "m2", 0.5);
    wait_until(
        WAIT,
        "the second engine sees the first as leader",
        || async { second.status.borrow().leader == Some(id("m1")) },
    )
    .await;
    assert!(!second.leads());

    let old = first.status.borrow().clone();
    let (leadership, lease) = (
        old.leadership.expect("leadership"),
        old.lease.expect("lease"),
    );
    registry
        .revoke_lease(lease)
        .await
        .expect("revoking the leader's lease");
    wait_until(WAIT, "the second engine leads", || async { second.leads() }).await;
    wait_until(WAIT, "the first engine notices it was deposed", || async {
        !first.leads()
    })
    .await;

    // The new leader schedules.
    create_unit(&registry, "after-takeover.service", "").await;
    wait_until(WAIT, "the new unit is placed", || async {
        schedule_of(&registry)
            .await
            .contains_key("after-takeover.service")
    })
    .await;

    // The deposed leader's write is refused.
    let stale = ScheduleChange::Place(Placement {
        unit: unit_name("stale.service"),
        machine: id("m1"),
        hash: UnitFile::parse("[Service]\nExecStart=/bin/true\n")
            .expect("unit")
            .hash(),
        target_state: TargetState::Launched,
    });
    match registry.commit_schedule(&leadership, &[stale]).await {
        Err(RegistryError::NotLeader) => {}
        other => panic!("a deposed leader's write must fail with NotLeader, got {other:?}"),
    }
    assert!(!schedule_of(&registry).await.contains_key("stale.service"));

    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_holds_when_half_the_machines_vanish() {
    let etcd = Etcd::start().await;
    let registry = registry(&etcd, "/engine-breaker/").await;
    let m1 = SimMachine::register(&registry, "m1").await;
    let m2 = SimMachine::register(&registry, "m2").await;
    let m3 = SimMachine::register(&registry, "m3").await;
    let m4 = SimMachine::register(&registry, "m4").await;
    // Above 40 %: two of four machines trip it, one of four does not.
    let engine = RunningEngine::start(&registry, "m1", 0.4);
    for n in 0..8 {
        create_unit(&registry, &format!("u{n}.service"), "").await;
    }
    wait_until(WAIT, "eight units are placed", || async {
        schedule_of(&registry).await.len() == 8
    })
    .await;
    let before = schedule_of(&registry).await;

    m3.lose(&registry).await;
    m4.lose(&registry).await;
    wait_until(WAIT, "the breaker trips", || async {
        engine.status.borrow().breaker_tripped
    })
    .await;
    // Hold: well past the grace, nothing moves.
    let hold_until = Instant::now() + GRACE * 2;
    while Instant::now() < hold_until {
        assert_eq!(
            schedule_of(&registry).await,
            before,
            "nothing may move while the breaker holds"
        );
        sleep(Duration::from_millis(200)).await;
    }

    // m3 returns: one of four is lost, the breaker lets go and only m4's units move.
    let m3 = SimMachine::register(&registry, "m3").await;
    wait_until(WAIT, "m4's units move", || async {
        let schedule = schedule_of(&registry).await;
        schedule.len() == 8
            && schedule
                .values()
                .all(|machines| !machines.contains(&"m4".to_owned()))
    })
    .await;
    assert!(!engine.status.borrow().breaker_tripped);
    let after = schedule_of(&registry).await;
    for (unit, machines) in &before {
        if !machines.contains(&"m4".to_owned()) {
            assert_eq!(&after[unit], machines, "{unit} must not move");
        }
    }
    engine.stop().await;
    drop((m1, m2, m3));
}
