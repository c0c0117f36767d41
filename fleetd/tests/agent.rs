//! The agent against a real etcd and a real systemd (owned by the agent's
//! author): a `systemd-nspawn` host booted by `functional_tests::Cluster`,
//! the agent running in this process and talking to the host's bus.
//!
//! The agent writes unit files where it runs (here, outside the host) and
//! hands the same paths to systemd (inside the host). To make one path name
//! the same file on both sides, the units directory is the host's own
//! `/var/lib/fleet-agent-test/units` seen from outside (through the host's
//! root overlay), and inside the host that outside path is a symlink to it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use fleet_registry::testing::Etcd;
use fleet_registry::testing::wait::wait_for;
use fleet_registry::{MachineId, Placement, Registry, ScheduleChange, TargetState, UnitState};
use fleet_systemd::dbus::Manager;
use fleet_systemd::unit::{UnitFile, UnitName};
use fleetd::agent::Agent;
use fleetd::config::AgentConfig;
use functional_tests::{Cluster, STATE_DIR};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the agent may take to bring a unit where it is asked.
const DEADLINE: Duration = Duration::from_secs(30);
/// The units directory inside the host.
const INSIDE_DIR: &str = "/var/lib/fleet-agent-test/units";

struct Fixture {
    registry: Registry,
    machine: MachineId,
    leadership: fleet_registry::Leadership,
    units_dir: PathBuf,
    bus: String,
    systemd: Manager,
}

impl Fixture {
    fn config(&self, stop_units_on_shutdown: bool) -> AgentConfig {
        AgentConfig {
            units_directory: self.units_dir.clone(),
            bus_address: Some(self.bus.clone()),
            agent_ttl: Duration::from_secs(10),
            stop_units_on_shutdown,
            allow_host_unit_override: false,
            unload_breaker_fraction: 0.5,
        }
    }

    /// Starts an agent with a fresh lease; returns its lease, its stop token and its task.
    async fn start_agent(
        &self,
        stop_units_on_shutdown: bool,
    ) -> (
        fleet_registry::LeaseId,
        CancellationToken,
        JoinHandle<anyhow::Result<()>>,
    ) {
        let lease = self
            .registry
            .grant_lease(Duration::from_secs(30))
            .await
            .expect("granting a lease");
        let (_sender, presence) = watch::channel(Some(lease));
        // The sender may go: the receiver keeps the last value.
        let agent = Agent::new(
            self.config(stop_units_on_shutdown),
            self.registry.clone(),
            self.machine.clone(),
            presence,
        );
        let token = CancellationToken::new();
        let task = tokio::spawn(agent.run(token.clone()));
        (lease, token, task)
    }

    async fn submit(&self, name: &str, text: &str, target: TargetState) -> (UnitName, UnitFile) {
        let unit = UnitName::from_str(name).expect("unit name");
        let file = UnitFile::parse(text).expect("unit text");
        self.registry
            .create_unit(&unit, &file, target)
            .await
            .expect("create unit");
        self.place(&unit, &file, target).await;
        (unit, file)
    }

    async fn place(&self, unit: &UnitName, file: &UnitFile, target: TargetState) {
        let placement = Placement {
            unit: unit.clone(),
            machine: self.machine.clone(),
            hash: file.hash(),
            target_state: target,
        };
        self.registry
            .commit_schedule(&self.leadership, &[ScheduleChange::Place(placement)])
            .await
            .expect("placing the unit");
    }

    async fn unplace(&self, unit: &UnitName) {
        let change = ScheduleChange::Unplace {
            unit: unit.clone(),
            machine: self.machine.clone(),
        };
        self.registry
            .commit_schedule(&self.leadership, &[change])
            .await
            .expect("unplacing the unit");
    }

    /// Waits until our machine's state of `unit` satisfies `matches`.
    async fn wait_state(
        &self,
        unit: &UnitName,
        what: &str,
        matches: impl Fn(&UnitState) -> bool,
    ) -> UnitState {
        wait_for(DEADLINE, what, || async {
            let state = self
                .registry
                .unit_state_on(unit, &self.machine)
                .await
                .ok()?;
            state.filter(|s| matches(s))
        })
        .await
    }

    async fn wait_no_state(&self, unit: &UnitName) {
        wait_for(DEADLINE, "the unit's state to be deleted", || async {
            let state = self
                .registry
                .unit_state_on(unit, &self.machine)
                .await
                .ok()?;
            state.is_none().then_some(())
        })
        .await;
    }

    async fn active(&self, unit: &UnitName) -> (String, String) {
        let rows = self
            .systemd
            .list_units_by_names(&[unit.to_string()])
            .await
            .expect("ListUnitsByNames");
        let row = rows.into_iter().next().expect("one row");
        (row.active_state, row.sub_state)
    }
}

fn running(state: &UnitState) -> bool {
    state.active_state == "active"
        && state.sub_state == "running"
        && state.reached == TargetState::Launched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_drives_a_real_systemd() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(1))
        .await
        .expect("the harness thread")
        .expect("booting a test host (run scripts/setup.sh as root first)");
    let etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config("/agent-test/"))
        .await
        .expect("connecting to etcd");
    let machine = MachineId::from_str("agent-test-machine").expect("machine id");
    let engine_lease = registry
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("engine lease");
    let leadership = registry
        .campaign(&machine, engine_lease)
        .await
        .expect("campaign")
        .expect("we lead");

    // One path, one file, on both sides (see the module doc).
    let root = PathBuf::from(format!("{STATE_DIR}/hosts/h1/root"));
    let units_dir = root.join(INSIDE_DIR.trim_start_matches('/'));
    let link = units_dir.display().to_string();
    let parent = Path::new(&link)
        .parent()
        .expect("a parent")
        .display()
        .to_string();
    cluster
        .exec_ok(
            "h1",
            &[
                "sh",
                "-c",
                &format!("mkdir -p {INSIDE_DIR} {parent} && ln -sfn {INSIDE_DIR} {link}"),
            ],
        )
        .expect("linking the units dir inside the host");
    let bus = cluster.bus("h1").expect("bus address");
    let systemd = Manager::connect(Some(&bus))
        .await
        .expect("the host's systemd");
    let fx = Fixture {
        registry,
        machine,
        leadership,
        units_dir,
        bus,
        systemd,
    };

    // --- a launched unit runs, its state is published under the lease ---
    let (lease, token, agent) = fx.start_agent(false).await;
    let (hello, hello_file) = fx
        .submit(
            "hello.service",
            "[Service]\nExecStart=/usr/bin/sleep 3000\n\n[Install]\nWantedBy=multi-user.target\n",
            TargetState::Launched,
        )
        .await;
    let state = fx
        .wait_state(&hello, "hello.service active/running", running)
        .await;
    assert_eq!(state.hash, hello_file.hash());
    assert_eq!(state.load_state, "loaded");
    let file = fx.units_dir.join("hello.service");
    let mode = std::fs::metadata(&file)
        .expect("the unit file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(
        std::fs::read_to_string(&file).expect("unit file"),
        hello_file.serialize()
    );
    // [Install]: enabled at runtime, as the original did.
    let wants = "/run/systemd/system/multi-user.target.wants/hello.service";
    cluster
        .exec_ok("h1", &["test", "-L", wants])
        .expect("hello.service is enabled (runtime)");
    let started = fx
        .systemd
        .unit_properties("hello.service")
        .await
        .expect("properties")
        .exec_main_start_timestamp;

    // --- a failing unit does not stop the others; its failure is its state ---
    let (broken, _) = fx
        .submit(
            "broken.service",
            "[Service]\nExecStart=/usr/bin/sleep 3000\n\n[Install]\nX-Nothing=1\n",
            TargetState::Launched,
        )
        .await;
    let (other, _) = fx
        .submit(
            "other.service",
            "[Service]\nExecStart=/usr/bin/sleep 3001\n",
            TargetState::Launched,
        )
        .await;
    fx.wait_state(
        &other,
        "other.service running next to a broken unit",
        running,
    )
    .await;
    let state = fx
        .wait_state(&broken, "broken.service reported as failed to load", |s| {
            s.load_state == "error"
        })
        .await;
    assert_ne!(state.reached, TargetState::Launched, "{state:?}");
    fx.unplace(&broken).await;
    fx.wait_no_state(&broken).await;
    assert!(
        !fx.units_dir.join("broken.service").exists(),
        "a unit that failed to load leaves no file"
    );

    // --- new content: the unit is replaced and runs the new text ---
    let (_, replaced) = fx
        .submit(
            "other.service",
            "[Service]\nExecStart=/usr/bin/sleep 3002\n",
            TargetState::Launched,
        )
        .await;
    fx.wait_state(&other, "other.service replaced", |s| {
        running(s) && s.hash == replaced.hash()
    })
    .await;
    let on_disk =
        std::fs::read_to_string(fx.units_dir.join("other.service")).expect("other.service's file");
    assert!(on_disk.contains("sleep 3002"), "{on_disk}");

    // --- restart: the running unit is adopted, not restarted ---
    token.cancel();
    agent
        .await
        .expect("agent task")
        .expect("the agent stops cleanly");
    assert_eq!(
        fx.active(&hello).await,
        ("active".to_owned(), "running".to_owned()),
        "units keep running"
    );
    // What the heart does on shutdown: the states go with the lease.
    fx.registry
        .revoke_lease(lease)
        .await
        .expect("revoking the lease");
    fx.wait_no_state(&hello).await;
    let (lease, token, agent) = fx.start_agent(false).await;
    // A new lease: the new agent publishes everything again.
    fx.wait_state(&hello, "hello.service adopted", running)
        .await;
    let again = fx
        .systemd
        .unit_properties("hello.service")
        .await
        .expect("properties")
        .exec_main_start_timestamp;
    assert_eq!(again, started, "hello.service was not restarted");

    // --- target loaded: stopped; unplaced: unloaded, state and file gone ---
    fx.place(&hello, &hello_file, TargetState::Loaded).await;
    fx.wait_state(&hello, "hello.service stopped", |s| {
        s.reached == TargetState::Loaded && s.active_state == "inactive"
    })
    .await;
    fx.unplace(&hello).await;
    fx.wait_no_state(&hello).await;
    wait_for(DEADLINE, "hello.service's file to be removed", || async {
        (!file.exists()).then_some(())
    })
    .await;
    let still_enabled = cluster
        .exec("h1", &["test", "-L", wants])
        .expect("test in the host");
    assert!(
        !still_enabled.status.success(),
        "unloading disabled hello.service"
    );
    token.cancel();
    agent
        .await
        .expect("agent task")
        .expect("the agent stops cleanly");
    assert_eq!(
        fx.active(&other).await.0,
        "active",
        "other.service keeps running after the agent stops"
    );
    fx.registry
        .revoke_lease(lease)
        .await
        .expect("revoking the lease");
    fx.wait_no_state(&other).await;

    // --- stop_units_on_shutdown: everything stopped and unloaded, in bounded time ---
    let (_lease, token, agent) = fx.start_agent(true).await;
    fx.wait_state(&other, "other.service adopted", running)
        .await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(40), agent)
        .await
        .expect("the agent stops within its shutdown deadline")
        .expect("agent task")
        .expect("the agent stops cleanly");
    assert!(
        !fx.units_dir.join("other.service").exists(),
        "other.service's file is removed"
    );
    let (active, _) = fx.active(&other).await;
    assert_ne!(active, "active", "other.service is stopped");

    drop(fx);
    drop(etcd);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("cleanup thread");
}

/// With systemd unreachable the agent keeps retrying (it does not fail), and
/// it still stops at once when asked.
#[tokio::test]
async fn agent_waits_for_an_unreachable_systemd() {
    let etcd = Etcd::start().await;
    let registry = Registry::connect(&etcd.config("/agent-nobus/"))
        .await
        .expect("connecting to etcd");
    let units = tempfile::tempdir().expect("a temporary units dir");
    let config = AgentConfig {
        units_directory: units.path().join("units"),
        bus_address: Some(format!("unix:path={}/no-bus", units.path().display())),
        agent_ttl: Duration::from_secs(10),
        stop_units_on_shutdown: true,
        allow_host_unit_override: false,
        unload_breaker_fraction: 0.5,
    };
    let (_sender, presence) = watch::channel(None);
    let machine = MachineId::from_str("agent-nobus").expect("machine id");
    let token = CancellationToken::new();
    let mut agent =
        tokio::spawn(Agent::new(config, registry, machine, presence).run(token.clone()));
    // It must still be retrying after a few attempts (1 s backoff ceiling at first).
    let early = tokio::time::timeout(Duration::from_secs(2), &mut agent).await;
    assert!(early.is_err(), "the agent ended without systemd: {early:?}");
    assert!(
        units.path().join("units").is_dir(),
        "the units directory is created"
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("the agent stops promptly")
        .expect("agent task")
        .expect("the agent stops cleanly");
}

/// Boots nothing: sets up a [`Fixture`] on `cluster`'s host h1 with its own
/// etcd prefix and machine id (see the module doc for the units directory).
async fn fixture_on(cluster: &Cluster, etcd: &Etcd, prefix: &str, machine: &str) -> Fixture {
    let registry = Registry::connect(&etcd.config(prefix))
        .await
        .expect("connecting to etcd");
    let machine = MachineId::from_str(machine).expect("machine id");
    let leadership = lead(&registry, &machine).await;
    let root = PathBuf::from(format!("{STATE_DIR}/hosts/h1/root"));
    let units_dir = root.join(INSIDE_DIR.trim_start_matches('/'));
    let link = units_dir.display().to_string();
    let parent = Path::new(&link)
        .parent()
        .expect("a parent")
        .display()
        .to_string();
    cluster
        .exec_ok(
            "h1",
            &[
                "sh",
                "-c",
                &format!("mkdir -p {INSIDE_DIR} {parent} && ln -sfn {INSIDE_DIR} {link}"),
            ],
        )
        .expect("linking the units dir inside the host");
    let bus = cluster.bus("h1").expect("bus address");
    let systemd = Manager::connect(Some(&bus))
        .await
        .expect("the host's systemd");
    Fixture {
        registry,
        machine,
        leadership,
        units_dir,
        bus,
        systemd,
    }
}

/// Becomes the engine leader (a test plays the engine).
async fn lead(registry: &Registry, machine: &MachineId) -> fleet_registry::Leadership {
    let lease = registry
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("engine lease");
    registry
        .campaign(machine, lease)
        .await
        .expect("campaign")
        .expect("we lead")
}

/// Waits up to `limit` for `check`, polling every 200 ms.
async fn wait_long<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A wiped registry (`etcdctl del --prefix ""`) under running units: the
/// agent's unload breaker holds, the units keep running; what the engine
/// then orders is unloaded, the rest stays held (the breaker latches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_registry_does_not_unload_the_machine() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(1))
        .await
        .expect("the harness thread")
        .expect("booting a test host (run scripts/setup.sh as root first)");
    let etcd = Etcd::start().await;
    let mut fx = fixture_on(&cluster, &etcd, "/agent-wipe/", "agent-wipe-machine").await;
    let (_lease, token, agent) = fx.start_agent(false).await;
    let mut names = Vec::new();
    for (i, name) in ["a.service", "b.service", "c.service"].iter().enumerate() {
        let text = format!("[Service]\nExecStart=/usr/bin/sleep {}\n", 4000 + i);
        let (unit, _) = fx.submit(name, &text, TargetState::Launched).await;
        names.push(unit);
    }
    for unit in &names {
        fx.wait_state(unit, "the unit running", running).await;
    }

    fleet_registry::testing::wipe_everything(&fx.registry)
        .await
        .expect("wiping etcd");
    // A unit placed after the wipe runs: the agent has seen the wipe and
    // reconciled since.
    fx.leadership = lead(&fx.registry, &fx.machine).await;
    let (after, _) = fx
        .submit(
            "after.service",
            "[Service]\nExecStart=/usr/bin/sleep 4100\n",
            TargetState::Launched,
        )
        .await;
    fx.wait_state(&after, "after.service running after the wipe", running)
        .await;
    for unit in &names {
        assert_eq!(
            fx.active(unit).await.0,
            "active",
            "{unit} keeps running after the wipe"
        );
        assert!(
            fx.units_dir.join(unit.as_str()).exists(),
            "{unit}'s file stays"
        );
    }

    // The engine orders a and b off the machine: they go (with the breaker's
    // retries); c, the rest of the mass unload, stays.
    for unit in &names[..2] {
        fx.unplace(unit).await;
    }
    for unit in &names[..2] {
        let file = fx.units_dir.join(unit.as_str());
        wait_long("an ordered unload", Duration::from_secs(120), || {
            let gone = !file.exists();
            async move { gone }
        })
        .await;
        assert_ne!(fx.active(unit).await.0, "active", "{unit} was stopped");
    }
    assert_eq!(
        fx.active(&names[2]).await.0,
        "active",
        "c.service is still held"
    );
    assert_eq!(fx.active(&after).await.0, "active");

    token.cancel();
    agent
        .await
        .expect("agent task")
        .expect("the agent stops cleanly");
    drop(fx);
    drop(etcd);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("cleanup thread");
}

/// Where the host's own `ssh.service` comes from and its main PID.
fn host_ssh(cluster: &Cluster) -> String {
    cluster
        .exec_ok(
            "h1",
            &[
                "systemctl",
                "show",
                "-p",
                "FragmentPath,MainPID",
                "ssh.service",
            ],
        )
        .expect("the host's ssh.service")
}

/// How many calls of `method` this process has made to systemd (the agent's
/// own metric).
fn dbus_calls(method: &str) -> u64 {
    let prefix = format!("fleet_agent_dbus_calls_total{{method=\"{method}\"}} ");
    fleet_metrics::render()
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str())?.trim().parse().ok())
        .unwrap_or(0)
}

/// A burst of new units reaches the agent's first pass at once: they are
/// linked with one `LinkUnitFiles` and the host-unit check asks systemd for
/// all of them at once (`ListUnitFilesByPatterns`), while the unit the
/// host already has (`ssh.service`, in the same pass) is still refused and
/// the others run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_units_is_loaded_together() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(1))
        .await
        .expect("the harness thread")
        .expect("booting a test host (run scripts/setup.sh as root first)");
    let etcd = Etcd::start().await;
    let fx = fixture_on(&cluster, &etcd, "/agent-burst/", "agent-burst-machine").await;
    let ssh_before = host_ssh(&cluster);
    let mut changes = Vec::new();
    let mut burst = Vec::new();
    for i in 0..4 {
        let name = format!("burst-{i}.service");
        let text = format!("[Service]\nExecStart=/usr/bin/sleep {}\n", 4200 + i);
        burst.push(UnitName::from_str(&name).expect("unit name"));
        changes.push((name, text));
    }
    changes.push((
        "ssh.service".to_owned(),
        "[Service]\nExecStart=/usr/bin/sleep 4300\n".to_owned(),
    ));
    let mut placements = Vec::new();
    for (name, text) in &changes {
        let unit = UnitName::from_str(name).expect("unit name");
        let file = UnitFile::parse(text).expect("unit text");
        fx.registry
            .create_unit(&unit, &file, TargetState::Launched)
            .await
            .expect("create unit");
        placements.push(ScheduleChange::Place(Placement {
            unit,
            machine: fx.machine.clone(),
            hash: file.hash(),
            target_state: TargetState::Launched,
        }));
    }
    // One schedule write: the agent's first pass sees all five.
    fx.registry
        .commit_schedule(&fx.leadership, &placements)
        .await
        .expect("placing the burst");
    let (links, patterns) = (
        dbus_calls("LinkUnitFiles"),
        dbus_calls("ListUnitFilesByPatterns"),
    );
    let (_lease, token, agent) = fx.start_agent(false).await;
    for unit in &burst {
        fx.wait_state(unit, "a unit of the burst running", running)
            .await;
    }
    let ssh = UnitName::from_str("ssh.service").expect("unit name");
    let refused = fx
        .wait_state(&ssh, "ssh.service refused", |state| {
            state.sub_state == fleetd::agent::REFUSED_HOST_UNIT
        })
        .await;
    assert_eq!(refused.active_state, "inactive", "{refused:?}");
    assert_eq!(
        dbus_calls("LinkUnitFiles") - links,
        1,
        "the four new units were not linked together"
    );
    // The new units' host-unit check was one joint look-up. (ssh.service,
    // which systemd already knows, takes the one-by-one path, and its refusal
    // is retried with backoff, so `GetUnitFileState` is not counted.)
    assert!(
        dbus_calls("ListUnitFilesByPatterns") > patterns,
        "the new units were not checked for host units together"
    );
    let ssh_after = host_ssh(&cluster);
    assert_eq!(ssh_after, ssh_before, "the host's ssh.service changed");
    assert!(
        !fx.units_dir.join("ssh.service").exists(),
        "the refused unit was written to the units directory"
    );

    token.cancel();
    agent
        .await
        .expect("agent task")
        .expect("the agent stops cleanly");
    drop(fx);
    drop(etcd);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("cleanup thread");
}
