//! The agent: makes this machine's systemd match its schedule and reports
//! what systemd says back into etcd (Documentation/compatibility.md, "Agent behaviour").
//!
//! One loop ([`Agent::run`]) over a closed set of inputs:
//! - the schedule: `P/engine/schedule/<me>/` read once at a revision, then watched
//!   from the next one (re-listed after a compaction);
//! - systemd's signals (job ends, unit property changes) from one D-Bus
//!   subscription: states are never polled;
//! - the machine lease ([`Presence`]): unit states are published under it,
//!   all again when it changes;
//! - timers: a short debounce that batches events, retries with backoff, and
//!   a slow resync as a safety net.
//!
//! A reconcile pass is [`plan::plan`] (pure) over the schedule and the units
//! directory, then the tasks in order. A failing unit does not stop the
//! others: its failure is logged with systemd's message, shows in its
//! reported state, and the pass is retried with backoff.
//!
//! Self-fencing ([`fence`]): when the machine's lease may have expired long
//! enough for the engine to move its units, a pass stops the movable ones
//! (their target is taken as `loaded`) before anything else; when etcd is
//! back the schedule is read afresh before any unit starts again.
//!
//! Restart adoption: units a previous fleetd left running with the right
//! content are adopted, never restarted. Shutdown leaves units running unless
//! `stop_units_on_shutdown`, which stops and unloads them once, within a
//! deadline (the original could spin forever).

mod batch;
mod breaker;
pub mod fence;
pub mod health;
mod plan;
mod units_dir;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleet_registry::changes::{Change, ChangeStream, Changed, Watched};
use fleet_registry::store::{LeaseId, Revision};
use fleet_registry::{
    MachineId, Registry, RegistryError, RunOutcome, RunReport, TargetState, UnitState,
};
use fleet_systemd::dbus::{DbusError, Event, Events, Manager, UnitStatus};
use fleet_systemd::unit::{Requirements, UnitFile, UnitHash, UnitName};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::pacing::Pacer;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::heart::Presence;

pub use breaker::{BreakerEvent, UnloadBreaker};
pub use fence::{Fence, FenceConfig, Verdict};
pub use plan::{Current, Desired, Task, plan, with_pending_reload};
pub use units_dir::{UnitsDir, UnitsDirError};

/// The least time between the end of a reconcile pass and the next: a
/// schedule change on an idle agent is acted on at once, the changes that
/// arrive during a pass and this gap after it go into the next pass
/// (see [`crate::pacing`]).
const RECONCILE_GAP: Duration = Duration::from_millis(50);
/// The same for reading and publishing states after systemd's signals.
const STATE_GAP: Duration = Duration::from_millis(20);
/// How long a pass waits for the stop jobs of the units it unloaded, and
/// how often it looks.
const STOP_WAIT: Duration = Duration::from_secs(30);
const STOP_POLL: Duration = Duration::from_millis(100);
/// The safety-net pass, in case an event was missed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// Retry delays (systemd, etcd, failed tasks): 1 s doubling to 1 min.
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// The bound on stopping and unloading every unit at shutdown.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
/// Names per `ListUnitsByNames` call.
const STATUS_CHUNK: usize = 1000;

/// How often a failed daemon-reload is tried again within one pass.
const RELOAD_ATTEMPTS: u32 = 3;
const RELOAD_RETRY: Duration = Duration::from_millis(500);

/// systemd's answer when a unit is not loaded.
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// Why one task failed.
#[derive(Debug, thiserror::Error)]
enum TaskError {
    #[error(transparent)]
    Dbus(#[from] DbusError),
    #[error(transparent)]
    File(#[from] UnitsDirError),
    #[error("the content of {unit} (hash {hash}) is not in the registry")]
    MissingContent { unit: UnitName, hash: UnitHash },
    #[error("cannot delete the outcome of the previous run of {unit}: {source}")]
    ForgetRun {
        unit: UnitName,
        #[source]
        source: RegistryError,
    },
    #[error("cannot fetch the content of {unit}: {source}")]
    Registry {
        unit: UnitName,
        #[source]
        source: RegistryError,
    },
    #[error("Failed to enable systemd unit {unit}: {message}")]
    Enable { unit: UnitName, message: String },
    #[error(
        "Refused to load {unit}: this host already has a unit of that name ({found}); a fleet unit may replace it only on a machine with allow_host_unit_override=true"
    )]
    HostUnit { unit: UnitName, found: String },
}

impl TaskError {
    /// The D-Bus connection is gone: stop the pass and reconnect.
    fn lost_connection(&self) -> Option<&DbusError> {
        match self {
            TaskError::Dbus(error) if error.is_connection_lost() => Some(error),
            _ => None,
        }
    }
}

/// The last task that failed for a unit, shown in its reported state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Reported as `LoadState=error`.
    Load,
    /// Reported as `ActiveState=failed` (unless systemd says it is active).
    Start,
    /// Stop or unload: systemd's own state says enough.
    Other,
    /// The host has a unit of that name and the agent would not replace it.
    /// Reported as `error`/`inactive`/[`REFUSED_HOST_UNIT`], never as the
    /// host unit's own state.
    HostUnit,
}

/// The sub-state reported for a unit refused because the host has one of
/// that name.
pub const REFUSED_HOST_UNIT: &str = "refused-host-unit";

/// Why [`Agent::serve`] returned.
enum Exit {
    Shutdown,
    SystemdLost(DbusError),
}

/// Drives this machine's systemd from its schedule.
pub struct Agent {
    config: AgentConfig,
    registry: Registry,
    machine: MachineId,
    presence: Presence,
    units: UnitsDir,
    /// The schedule of this machine, once read.
    desired: BTreeMap<UnitName, Desired>,
    schedule_known: bool,
    /// The revision `desired` reflects (watch from the next one).
    schedule_revision: Revision,
    /// The next schedule read must be a full list (start, compaction).
    need_relist: bool,
    /// Unit contents by hash, for the hashes in `desired`.
    contents: HashMap<UnitHash, Arc<UnitFile>>,
    /// The files in the units directory and their hashes.
    on_disk: BTreeMap<UnitName, Option<UnitHash>>,
    /// What this agent brought each unit to.
    reached: BTreeMap<UnitName, TargetState>,
    failures: BTreeMap<UnitName, Failure>,
    /// systemd's last known view of the units we manage.
    statuses: BTreeMap<UnitName, UnitStatus>,
    /// What we last wrote to etcd, and under which lease.
    published: BTreeMap<UnitName, UnitState>,
    published_lease: Option<LeaseId>,
    /// Units no longer scheduled here, with the last schedule revision at
    /// which they were (the breaker's test of an engine's order).
    left_at: BTreeMap<UnitName, Revision>,
    breaker: UnloadBreaker,
    /// Units the engine ordered off this machine (their orders are deleted
    /// once they are unloaded).
    ordered: BTreeSet<UnitName>,
    /// Unit files written or removed since the last successful daemon-reload.
    reload_pending: bool,
    /// Units whose new file systemd has not loaded yet: never started.
    unreloaded: BTreeSet<UnitName>,
    /// Units loaded this pass that systemd never had a definition of: it
    /// reads their new files when first asked about them, so they need no
    /// daemon-reload (see [`Agent::reload_unit_files`]).
    fresh_loads: BTreeSet<UnitName>,
    /// Units unloaded this pass whose stop job systemd may not have run yet.
    stopping: Vec<UnitName>,
    /// Self-fencing; `None` when the machine opted out.
    fence: Option<Fence>,
    /// While fenced: the units kept stopped (computed at each fenced pass).
    fenced: Option<BTreeSet<UnitName>>,
    /// Whether the units of the current fence were logged.
    fence_announced: bool,
    /// How the runs of run-to-completion units ended here, as written to
    /// `P/machine/runs/<me>/` (read at every schedule listing, so a
    /// restarted agent knows which units must not run again).
    runs: BTreeMap<UnitName, RunOutcome>,
    /// Run-to-completion units this agent started or adopted while they
    /// ran, with the time (µs since the epoch) from which an exit counts as
    /// the end of that run (0 for an adopted run).
    running: BTreeMap<UnitName, u64>,
    /// The start job this agent queued for each unit of `running`, and the
    /// units whose start job systemd reported `done`: a oneshot's start
    /// job is done when its run succeeded. systemd may unload a unit whose
    /// run succeeded right away (nothing refers to it), and with it the
    /// run's exit time and status; the job's end is then the only word of
    /// the success.
    start_jobs: BTreeMap<UnitName, String>,
    started_ok: BTreeSet<UnitName>,
}

impl Agent {
    pub fn new(
        config: AgentConfig,
        registry: Registry,
        machine: MachineId,
        presence: Presence,
    ) -> Agent {
        let units = UnitsDir::new(config.units_directory.clone());
        let breaker = UnloadBreaker::new(config.unload_breaker_fraction);
        Agent {
            config,
            registry,
            machine,
            presence,
            units,
            desired: BTreeMap::new(),
            schedule_known: false,
            schedule_revision: Revision::default(),
            need_relist: true,
            contents: HashMap::new(),
            on_disk: BTreeMap::new(),
            reached: BTreeMap::new(),
            failures: BTreeMap::new(),
            statuses: BTreeMap::new(),
            published: BTreeMap::new(),
            published_lease: None,
            left_at: BTreeMap::new(),
            breaker,
            ordered: BTreeSet::new(),
            reload_pending: false,
            unreloaded: BTreeSet::new(),
            fresh_loads: BTreeSet::new(),
            stopping: Vec::new(),
            fence: None,
            fenced: None,
            fence_announced: false,
            runs: BTreeMap::new(),
            running: BTreeMap::new(),
            start_jobs: BTreeMap::new(),
            started_ok: BTreeSet::new(),
        }
    }

    /// Fences this machine's movable units with `fence` (see [`fence`]).
    pub fn with_fence(mut self, fence: Option<Fence>) -> Agent {
        self.fence = fence;
        self
    }

    /// Runs until `shutdown`. systemd or etcd being unreachable is retried
    /// with backoff (units keep running meanwhile), never an error.
    ///
    /// # Errors
    /// The units directory cannot be created.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.units.ensure().await.with_context(|| {
            format!(
                "preparing the units directory {}",
                self.config.units_directory.display()
            )
        })?;
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        loop {
            let connected = async {
                let manager = Manager::connect(self.config.bus_address.as_deref()).await?;
                let events = manager.subscribe().await?;
                Ok::<_, DbusError>((manager, events))
            };
            let (manager, events) = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                connected = connected => match connected {
                    Ok(connected) => connected,
                    Err(error) => {
                        warn!(%error, retry_within = ?backoff.ceiling(), "Cannot reach systemd; retrying.");
                        if !backoff.wait(&shutdown).await {
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            backoff.reset();
            info!(address = manager.address(), "Connected to systemd.");
            match self.serve(&manager, events, &shutdown).await {
                Exit::Shutdown => {
                    if self.config.stop_units_on_shutdown {
                        self.stop_everything(&manager).await;
                    } else {
                        info!(
                            units = self.on_disk.len(),
                            "Stopping the agent; units keep running."
                        );
                    }
                    return Ok(());
                }
                Exit::SystemdLost(error) => {
                    warn!(%error, "Lost the connection to systemd; reconnecting.");
                    if !backoff.wait(&shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The loop on one systemd connection: waits for whatever comes first (a
    /// systemd signal, a schedule change, a presence change, a due clock),
    /// notes it, then does the work that is due.
    async fn serve(
        &mut self,
        manager: &Manager,
        mut events: Events,
        shutdown: &CancellationToken,
    ) -> Exit {
        self.rescan_units_dir().await;
        let mut loop_state = Serving::new(Instant::now());
        let mut fence_changes = self.fence.as_ref().map(Fence::subscribe);
        loop {
            let wake = loop_state.clocks.wake();
            tokio::select! {
                () = shutdown.cancelled() => return Exit::Shutdown,
                event = events.next() => match event {
                    Ok(event) => {
                        if self.on_systemd_event(event, &mut loop_state.dirty) {
                            loop_state.clocks.states_soon();
                        }
                    }
                    Err(error) => return Exit::SystemdLost(error),
                },
                batch = next_batch(&mut loop_state.schedule) => self.on_schedule_batch(batch, &mut loop_state),
                () = fence_changed(&mut fence_changes) => {}
                changed = self.presence.changed(), if loop_state.presence_open => {
                    if changed.is_err() {
                        // The heart is gone: nothing more will change.
                        loop_state.presence_open = false;
                    }
                    loop_state.clocks.states_at = Some(Instant::now());
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            if let Err(exit) = self.run_due(manager, &mut loop_state).await {
                return exit;
            }
        }
    }

    /// Reads the units directory again (what fleet wrote before, across
    /// restarts); on error keeps what it knew.
    async fn rescan_units_dir(&mut self) {
        match self.units.scan().await {
            Ok(found) => self.on_disk = found,
            Err(error) => warn!(%error, "Cannot read the units directory; using what we knew."),
        }
    }

    /// A batch of the schedule watch, or its end: the watch is opened again
    /// after a backoff (listing again if etcd compacted past it).
    fn on_schedule_batch(
        &mut self,
        batch: Result<Option<Vec<Changed>>, RegistryError>,
        loop_state: &mut Serving,
    ) {
        match batch {
            Ok(Some(batch)) => {
                if self.apply_schedule_events(batch) {
                    loop_state.clocks.reconcile_soon();
                }
                return;
            }
            Ok(None) => warn!("etcd ended the schedule watch; watching again."),
            Err(error) => {
                if matches!(error, RegistryError::Compacted { .. }) {
                    self.need_relist = true;
                }
                warn!(%error, "The schedule watch failed; watching again.");
            }
        }
        loop_state.schedule = None;
        loop_state.clocks.list_later();
    }

    /// Does the work whose clock is due, in order: watch the schedule,
    /// reconcile (or resync), publish unit states.
    async fn run_due(&mut self, manager: &Manager, loop_state: &mut Serving) -> Result<(), Exit> {
        let now = Instant::now();
        // First: a thawed machine whose fence instant passed acts on nothing
        // before it stopped its movable units.
        self.follow_fence(loop_state, now);
        if Clocks::take_due(&mut loop_state.clocks.list_at, now) {
            self.open_schedule_watch(loop_state, now).await;
        }
        let resync = loop_state.clocks.resync_at <= now;
        if Clocks::take_due(&mut loop_state.clocks.reconcile_at, now) || resync {
            self.reconcile_due(manager, loop_state, now, resync).await?;
        }
        if Clocks::take_due(&mut loop_state.clocks.states_at, now) {
            self.publish_due(manager, loop_state, now).await?;
        }
        Ok(())
    }

    /// Takes up the fence's verdict: a new fence makes a pass due at once;
    /// a lifted one forgets the schedule, which is read afresh before any
    /// pass (units moved away meanwhile must not start again).
    fn follow_fence(&mut self, loop_state: &mut Serving, now: Instant) {
        let Some(fence) = &self.fence else {
            return;
        };
        match (fence.verdict(), self.fenced.is_some()) {
            (Verdict::Fenced, false) => {
                self.fenced = Some(BTreeSet::new());
                self.fence_announced = false;
                loop_state.clocks.reconcile_at = Some(now);
            }
            (Verdict::Open, true) => {
                self.fenced = None;
                self.schedule_known = false;
                self.need_relist = true;
                loop_state.schedule = None;
                loop_state.clocks.list_at = Some(now);
            }
            _ => {}
        }
    }

    /// While fenced: the schedule as the fence lets it run (the movable
    /// units' `launched` taken as `loaded`), and those units noted.
    async fn fenced_schedule(&mut self) -> Option<BTreeMap<UnitName, Desired>> {
        self.fenced.as_ref()?;
        let mut requirements = BTreeMap::new();
        for (unit, desired) in &self.desired {
            if desired.target != TargetState::Launched {
                continue;
            }
            let file = match self.contents.get(&desired.hash) {
                Some(file) => Some(Arc::clone(file)),
                None => self.units.read(unit).await.map(Arc::new),
            };
            requirements.insert(unit.clone(), file.map(|file| Requirements::of(&file, unit)));
        }
        let movable = fence::movable_units(&requirements);
        let mut desired = self.desired.clone();
        for unit in &movable {
            if let Some(desired) = desired.get_mut(unit) {
                desired.target = TargetState::Loaded;
            }
        }
        if !self.fence_announced {
            self.fence_announced = true;
            error!(
                target: "fleet::audit",
                who = "fleetd self-fencing",
                stopped = movable.len(),
                kept = requirements.len() - movable.len(),
                units = ?movable,
                "Self-fencing: stopping this machine's movable units until it reaches etcd again."
            );
        }
        self.fenced = Some(movable);
        Some(desired)
    }

    /// Lists the schedule if needed and watches it; a failure is retried
    /// after a backoff.
    async fn open_schedule_watch(&mut self, loop_state: &mut Serving, now: Instant) {
        match self.watch_schedule().await {
            Ok(stream) => {
                loop_state.schedule = Some(stream);
                loop_state.clocks.registry_backoff.reset();
                loop_state.clocks.reconcile_at = Some(now);
            }
            Err(error) => {
                if matches!(error, RegistryError::Compacted { .. }) {
                    self.need_relist = true;
                }
                let retry_within = loop_state.clocks.registry_backoff.ceiling();
                warn!(%error, ?retry_within, "Cannot read this machine's schedule; retrying.");
                loop_state.clocks.list_later();
            }
        }
    }

    /// One reconcile pass (with a rescan of the units directory on the
    /// periodic resync). Never acts on an unknown schedule: with etcd
    /// unreachable the units keep running as they are, as in the original.
    async fn reconcile_due(
        &mut self,
        manager: &Manager,
        loop_state: &mut Serving,
        now: Instant,
        resync: bool,
    ) -> Result<(), Exit> {
        let clocks = &mut loop_state.clocks;
        // A resync is a reconcile: one pass serves both.
        clocks.reconcile_at = None;
        clocks.resync_at = now + RESYNC_INTERVAL;
        if resync {
            debug!("Periodic resync.");
            self.rescan_units_dir().await;
        }
        if !self.schedule_known {
            return Ok(());
        }
        let outcome = self.reconcile(manager).await;
        clocks.reconcile_pacer.ran(Instant::now());
        match outcome {
            Err(error) => return Err(Exit::SystemdLost(error)),
            Ok(true) => clocks.task_backoff.reset(),
            Ok(false) => clocks.reconcile_at = Some(now + clocks.task_backoff.next_delay()),
        }
        loop_state.dirty.clear();
        clocks.states_at = Some(now);
        Ok(())
    }

    /// Reads the states of the units systemd signalled about, then publishes
    /// what changed; a failure is retried after a backoff.
    async fn publish_due(
        &mut self,
        manager: &Manager,
        loop_state: &mut Serving,
        now: Instant,
    ) -> Result<(), Exit> {
        let clocks = &mut loop_state.clocks;
        if !loop_state.dirty.is_empty() {
            let names: Vec<UnitName> = std::mem::take(&mut loop_state.dirty).into_iter().collect();
            if let Err(error) = self.refresh_statuses(manager, &names).await {
                if error.is_connection_lost() {
                    return Err(Exit::SystemdLost(error));
                }
                warn!(%error, "Cannot read unit states from systemd; retrying.");
                loop_state.dirty.extend(names);
                clocks.states_at = Some(now + clocks.state_backoff.next_delay());
                return Ok(());
            }
        }
        if let Err(error) = self.note_finished_runs(manager).await {
            if error.is_connection_lost() {
                return Err(Exit::SystemdLost(error));
            }
            warn!(%error, "Cannot read how a run ended from systemd; retrying.");
            clocks.states_at = Some(now + clocks.state_backoff.next_delay());
        }
        let published = self.publish_states().await;
        clocks.state_pacer.ran(Instant::now());
        if published {
            clocks.state_backoff.reset();
        } else {
            clocks.states_at = Some(now + clocks.state_backoff.next_delay());
        }
        Ok(())
    }

    // --- the schedule ---

    /// Lists the schedule if needed and watches it from the next revision.
    async fn watch_schedule(&mut self) -> Result<ChangeStream, RegistryError> {
        if self.need_relist {
            let (placements, revision) = self.registry.machine_schedule(&self.machine).await?;
            self.runs = self
                .registry
                .machine_run_outcomes(&self.machine)
                .await?
                .into_iter()
                .map(|outcome| (outcome.unit.clone(), outcome))
                .collect();
            let known_until = self.schedule_revision;
            let previous = std::mem::take(&mut self.desired);
            self.desired = placements
                .into_iter()
                .map(|p| {
                    (
                        p.unit,
                        Desired {
                            hash: p.hash,
                            target: p.target_state,
                        },
                    )
                })
                .collect();
            for unit in previous.keys().chain(self.on_disk.keys()) {
                if !self.desired.contains_key(unit) {
                    self.left_at.entry(unit.clone()).or_insert(known_until);
                }
            }
            self.schedule_revision = revision;
            self.schedule_known = true;
            self.need_relist = false;
            debug!(
                units = self.desired.len(),
                %revision, "Read this machine's schedule."
            );
        }
        let watched = Watched::ScheduleOf(self.machine.clone());
        self.registry
            .watch_changes(watched, self.schedule_revision.next())
            .await
    }

    /// Applies a batch of schedule changes; `true` if the schedule changed.
    fn apply_schedule_events(&mut self, batch: Vec<Changed>) -> bool {
        let mut changed = false;
        for Changed { revision, change } in batch {
            self.schedule_revision = self.schedule_revision.max(revision);
            match change {
                Change::Placed(placement) if placement.machine == self.machine => {
                    let desired = Desired {
                        hash: placement.hash,
                        target: placement.target_state,
                    };
                    self.left_at.remove(&placement.unit);
                    changed |= self.desired.insert(placement.unit, desired) != Some(desired);
                }
                Change::Unplaced { unit, machine }
                    if machine == self.machine && self.desired.remove(&unit).is_some() =>
                {
                    self.left_at.insert(unit, revision.previous());
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            debug!(
                units = self.desired.len(),
                revision = %self.schedule_revision,
                "This machine's schedule changed."
            );
        }
        changed
    }

    // --- systemd's signals ---

    /// Notes what a signal tells; `true` if states should be read again.
    fn on_systemd_event(&mut self, event: Event, dirty: &mut BTreeSet<UnitName>) -> bool {
        match event {
            Event::Reloading { active: false } => {
                dirty.extend(self.managed());
                true
            }
            Event::Reloading { active: true } => false,
            Event::JobRemoved {
                ref unit,
                ref result,
                ref job,
                ..
            } => {
                let Some(unit) = self.managed_unit(unit) else {
                    return false;
                };
                if result == "done" && self.start_jobs.get(&unit) == Some(job) {
                    self.started_ok.insert(unit.clone());
                }
                if result != "done" {
                    // systemd's word for why (failed, dependency, timeout, canceled).
                    warn!(unit = %unit, result = %result, "A systemd job of the unit did not succeed.");
                }
                dirty.insert(unit);
                true
            }
            Event::UnitChanged { ref unit, .. } | Event::UnitRemoved { ref unit } => {
                let Some(unit) = self.managed_unit(unit) else {
                    return false;
                };
                dirty.insert(unit);
                true
            }
        }
    }

    /// `name` if we manage that unit.
    fn managed_unit(&self, name: &str) -> Option<UnitName> {
        let unit: UnitName = name.parse().ok()?;
        (self.desired.contains_key(&unit) || self.on_disk.contains_key(&unit)).then_some(unit)
    }

    /// Every unit we manage: scheduled here or on disk.
    fn managed(&self) -> BTreeSet<UnitName> {
        self.desired
            .keys()
            .chain(self.on_disk.keys())
            .cloned()
            .collect()
    }

    /// Reads systemd's state of `names` into `statuses`.
    async fn refresh_statuses(
        &mut self,
        manager: &Manager,
        names: &[UnitName],
    ) -> Result<(), DbusError> {
        for chunk in names.chunks(STATUS_CHUNK) {
            let query: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            let rows = manager.list_units_by_names(&query).await?;
            for row in rows {
                if let Ok(unit) = row.name.parse::<UnitName>() {
                    self.statuses.insert(unit, row);
                }
            }
        }
        Ok(())
    }

    // --- reconciling ---

    /// One pass: plan, run the tasks. `Ok(false)` if a task failed (retry
    /// later); `Err` only when the connection to systemd is lost.
    async fn reconcile(&mut self, manager: &Manager) -> Result<bool, DbusError> {
        let _timer = ReconcileTimer(std::time::Instant::now());
        let managed: Vec<UnitName> = self.managed().into_iter().collect();
        if let Err(error) = self.refresh_statuses(manager, &managed).await {
            if error.is_connection_lost() {
                return Err(error);
            }
            warn!(%error, "Cannot read unit states from systemd; will retry the pass.");
            return Ok(false);
        }
        let current: BTreeMap<UnitName, Current> = self
            .on_disk
            .iter()
            .map(|(unit, hash)| {
                let status = self.statuses.get(unit);
                let current = Current {
                    hash: *hash,
                    reached: self.reached.get(unit).copied(),
                    loaded: status.is_some_and(|s| s.load_state == "loaded"),
                    active: status.is_some_and(|s| {
                        matches!(
                            s.active_state.as_str(),
                            "active" | "activating" | "reloading"
                        )
                    }),
                    completed: self
                        .runs
                        .get(unit)
                        .is_some_and(|outcome| Some(outcome.hash) == *hash),
                };
                (unit.clone(), current)
            })
            .collect();
        let fenced = self.fenced_schedule().await;
        let desired = fenced.as_ref().unwrap_or(&self.desired);
        let tasks = with_pending_reload(plan(desired, &current), self.reload_pending);
        let tasks = self.hold_unordered_unloads(tasks).await;
        let mut all_ok = !self.breaker.is_tripped();
        if !tasks.is_empty() {
            debug!(
                tasks = tasks.len(),
                scheduled = self.desired.len(),
                "Reconciling units."
            );
            let mut failed: BTreeSet<UnitName> = BTreeSet::new();
            // Fetch new contents first: a unit whose new content is missing
            // or does not parse keeps running its old definition (its
            // content-change unload is skipped with the rest of its tasks).
            for task in &tasks {
                if let Task::Load { unit, hash, .. } = task
                    && let Err(error) = self.content(unit, *hash).await
                {
                    all_ok = false;
                    error!(unit = %unit, %error, "Cannot load the unit's content; leaving the unit as it is.");
                    failed.insert(unit.clone());
                    self.failures.insert(unit.clone(), Failure::Load);
                }
            }
            // New units of a burst are linked together (see `batch`); their
            // `Load` tasks take the batch's outcome.
            let mut batched = self.load_fresh_batch(manager, &tasks).await?;
            // Counts per task kind for the pass summary (INFO is per pass,
            // not per unit: a pass may touch thousands).
            let mut done: BTreeMap<&'static str, usize> = BTreeMap::new();
            let mut skipped = 0usize;
            for task in &tasks {
                if task.unit().is_some_and(|unit| failed.contains(unit)) {
                    skipped += 1; // an earlier task of this unit failed this pass
                    continue;
                }
                let unit = task.unit().map_or("", UnitName::as_str);
                if let Task::Start { unit: name, .. } = task
                    && self.unreloaded.contains(name)
                {
                    all_ok = false;
                    warn!(
                        unit,
                        "Not starting the unit: systemd has not loaded its new definition (daemon-reload failed); retrying."
                    );
                    failed.insert(name.clone());
                    self.failures.insert(name.clone(), Failure::Start);
                    continue;
                }
                let outcome = match task {
                    Task::Load { unit, .. } => match batched.remove(unit) {
                        Some(outcome) => outcome,
                        None => self.execute(manager, task).await,
                    },
                    _ => self.execute(manager, task).await,
                };
                match outcome {
                    Ok(()) => {
                        if let Some(unit) = task.unit() {
                            self.failures.remove(unit);
                        }
                        *done.entry(task.kind()).or_default() += 1;
                        debug!(
                            task = task.kind(),
                            unit,
                            reason = task.reason(),
                            "AgentReconciler completed task."
                        );
                    }
                    Err(error) => {
                        if let Some(lost) = error.lost_connection() {
                            return Err(lost.clone());
                        }
                        all_ok = false;
                        error!(task = task.kind(), unit, reason = task.reason(), %error, "AgentReconciler task failed.");
                        if let Some(unit) = task.unit() {
                            failed.insert(unit.clone());
                            let failure = match (task, &error) {
                                (_, TaskError::HostUnit { .. }) => Failure::HostUnit,
                                (Task::Load { .. }, _) => Failure::Load,
                                (Task::Start { .. }, _) => Failure::Start,
                                _ => Failure::Other,
                            };
                            self.failures.insert(unit.clone(), failure);
                        }
                    }
                }
            }
            self.await_stopped(manager).await?;
            info!(done = ?done, failed = failed.len(), skipped, "Reconcile pass finished.");
            let managed: Vec<UnitName> = self.managed().into_iter().collect();
            if let Err(error) = self.refresh_statuses(manager, &managed).await {
                if error.is_connection_lost() {
                    return Err(error);
                }
                warn!(%error, "Cannot read unit states from systemd after the pass.");
                all_ok = false;
            }
        }
        // Forget what no longer concerns us.
        let hashes: HashSet<UnitHash> = self.desired.values().map(|d| d.hash).collect();
        self.contents.retain(|hash, _| hashes.contains(hash));
        let managed = self.managed();
        self.statuses.retain(|unit, _| managed.contains(unit));
        self.failures.retain(|unit, _| managed.contains(unit));
        self.left_at.retain(|unit, _| managed.contains(unit));
        self.unreloaded.retain(|unit| managed.contains(unit));
        if fenced.is_some()
            && all_ok
            && let Some(fence) = &self.fence
        {
            // The units are stopped: a renewal from now on may lift it.
            fence.applied();
        }
        self.running.retain(|unit, _| managed.contains(unit));
        self.start_jobs.retain(|unit, _| managed.contains(unit));
        self.started_ok.retain(|unit| managed.contains(unit));
        Ok(all_ok)
    }

    async fn execute(&mut self, manager: &Manager, task: &Task) -> Result<(), TaskError> {
        match task {
            Task::Load { unit, hash, .. } => self.load(manager, unit, *hash).await,
            Task::Unload { unit, .. } => {
                self.unload(manager, unit).await?;
                self.forget_run(unit).await?;
                if self.ordered.remove(unit)
                    && let Err(error) = self.registry.delete_unload_order(&self.machine, unit).await
                {
                    // A stale order is older than any later placement: harmless.
                    debug!(unit = %unit, %error, "Deleting a carried-out unload order failed.");
                }
                Ok(())
            }
            Task::ReloadUnitFiles => self.reload_unit_files(manager).await,
            Task::Adopt { unit, reached } => {
                self.reached.insert(unit.clone(), *reached);
                if *reached == TargetState::Launched && !self.runs.contains_key(unit) {
                    // Maybe a run that was going on when this agent started.
                    self.running.insert(unit.clone(), 0);
                }
                Ok(())
            }
            Task::Stop { unit, .. } => {
                let job = manager.stop_unit(unit.as_str()).await?;
                debug!(unit = %unit, job = %job.path, "Stop job queued.");
                self.reached.insert(unit.clone(), TargetState::Loaded);
                self.forget_run(unit).await
            }
            Task::Start { unit, .. } => {
                // A new run: the previous one's outcome goes first, so that
                // a failure here cannot leave it claiming the new run ended.
                self.forget_run(unit).await?;
                let started_at = unix_micros();
                let job = manager.start_unit(unit.as_str()).await?;
                debug!(unit = %unit, job = %job.path, "Start job queued.");
                self.reached.insert(unit.clone(), TargetState::Launched);
                self.running.insert(unit.clone(), started_at);
                self.start_jobs.insert(unit.clone(), job.path);
                Ok(())
            }
        }
    }

    /// The content of `hash`, from the cache or the registry.
    async fn content(
        &mut self,
        unit: &UnitName,
        hash: UnitHash,
    ) -> Result<Arc<UnitFile>, TaskError> {
        if let Some(file) = self.contents.get(&hash) {
            return Ok(Arc::clone(file));
        }
        match self.registry.unit_content(&hash).await {
            Ok(Some(file)) => {
                let file = Arc::new(file);
                self.contents.insert(hash, Arc::clone(&file));
                Ok(file)
            }
            Ok(None) => Err(TaskError::MissingContent {
                unit: unit.clone(),
                hash,
            }),
            Err(source) => Err(TaskError::Registry {
                unit: unit.clone(),
                source,
            }),
        }
    }

    /// Writes the file, links it, enables it if it has `[Install]`. On
    /// failure nothing is left behind, so the next pass starts clean.
    async fn load(
        &mut self,
        manager: &Manager,
        unit: &UnitName,
        hash: UnitHash,
    ) -> Result<(), TaskError> {
        let file = self.content(unit, hash).await?;
        // systemd has never had a definition of this unit: no file of ours
        // before, and not loaded from anywhere else.
        let fresh = !self.on_disk.contains_key(unit)
            && self
                .statuses
                .get(unit)
                .is_none_or(|status| status.load_state == "not-found");
        if !self.config.allow_host_unit_override && !self.on_disk.contains_key(unit) {
            self.refuse_host_unit(manager, unit).await?;
        }
        let path = self.units.write(unit, &file).await?;
        self.on_disk.insert(unit.clone(), Some(hash));
        let paths = [path.to_string_lossy().into_owned()];
        let linked = async {
            manager.link_unit_files(&paths, true, true).await?;
            if file.has_section("Install") {
                match manager.enable_unit_files(&paths, true, true).await {
                    Ok(report) if report.carries_install_info => {}
                    Ok(_) => {
                        return Err(TaskError::Enable {
                            unit: unit.clone(),
                            message: "systemd reports no install information".to_owned(),
                        });
                    }
                    Err(error) if error.is_connection_lost() => return Err(error.into()),
                    Err(error) => {
                        return Err(TaskError::Enable {
                            unit: unit.clone(),
                            message: error.to_string(),
                        });
                    }
                }
            }
            Ok(())
        };
        if let Err(error) = linked.await {
            if error.lost_connection().is_none()
                && let Err(disable_error) =
                    manager.disable_unit_files(&[unit.to_string()], true).await
            {
                debug!(unit = %unit, error = %disable_error, "Unlinking after a failed load failed.");
            }
            if let Err(remove_error) = self.units.remove(unit).await {
                warn!(unit = %unit, error = %remove_error, "Cannot remove the file of a unit that failed to load.");
            } else {
                self.on_disk.remove(unit);
            }
            return Err(error);
        }
        self.reached.insert(unit.clone(), TargetState::Loaded);
        if fresh {
            self.fresh_loads.insert(unit.clone());
        } else {
            self.reload_pending = true;
            self.unreloaded.insert(unit.clone());
        }
        Ok(())
    }

    /// The pass's `ReloadUnitFiles` task. A daemon-reload re-reads every unit
    /// and blocks systemd meanwhile, so its cost grows with the units the
    /// machine runs; one per pass made a burst of starts wait behind it.
    /// It is needed only when systemd holds an old definition: a changed or
    /// removed file, or a unit it knew before. A unit it never had a
    /// definition of is read from its new file the first time it is asked
    /// about it (systemd rebuilds its unit-file map when a unit directory
    /// changed), so for those we ask once, for all of them, whether systemd
    /// now finds them loaded, and reload only when one is still not found.
    async fn reload_unit_files(&mut self, manager: &Manager) -> Result<(), TaskError> {
        let fresh: Vec<UnitName> = std::mem::take(&mut self.fresh_loads).into_iter().collect();
        if !self.reload_pending && self.all_loaded_by_systemd(manager, &fresh).await? {
            return Ok(());
        }
        // Until a reload works, these are not started either.
        self.unreloaded.extend(fresh);
        self.reload_pending = true;
        self.daemon_reload(manager).await
    }

    /// Whether systemd reports every unit in `units` as loaded (asking
    /// makes it read a new unit file); remembers what it says.
    async fn all_loaded_by_systemd(
        &mut self,
        manager: &Manager,
        units: &[UnitName],
    ) -> Result<bool, TaskError> {
        if units.is_empty() {
            return Ok(true);
        }
        match self.refresh_statuses(manager, units).await {
            Ok(()) => {}
            Err(error) if error.is_connection_lost() => return Err(error.into()),
            Err(error) => {
                debug!(%error, "Cannot ask systemd about new units; reloading instead.");
                return Ok(false);
            }
        }
        Ok(units.iter().all(|unit| {
            self.statuses
                .get(unit)
                .is_some_and(|status| status.load_state == "loaded")
        }))
    }

    /// Fails with [`TaskError::HostUnit`] when systemd already knows `unit`
    /// from elsewhere than our units directory (called only for units we
    /// have not written): a unit file on the host (`GetUnitFileState`
    /// answers, e.g. `enabled` or `generated`) or an active unit without one
    /// (such as `-.mount` in a container).
    async fn refuse_host_unit(&self, manager: &Manager, unit: &UnitName) -> Result<(), TaskError> {
        let found = match manager.unit_file_state(unit.as_str()).await {
            Ok(state) => Some(format!("unit file state {state}")),
            Err(error) if error.is_connection_lost() => return Err(error.into()),
            // No unit file anywhere: systemd answers with an error.
            Err(_) => None,
        };
        let found = match found {
            Some(found) => Some(found),
            None => manager
                .list_units_by_names(&[unit.to_string()])
                .await?
                .into_iter()
                // Active, not just loaded: a unit we unloaded stays loaded
                // (stopped) until systemd's next reload.
                .find(|status| status.load_state == "loaded" && status.active_state == "active")
                .map(|_| "loaded and active without a unit file".to_owned()),
        };
        match found {
            Some(found) => Err(TaskError::HostUnit {
                unit: unit.clone(),
                found,
            }),
            None => Ok(()),
        }
    }

    /// systemd daemon-reload, tried [`RELOAD_ATTEMPTS`] times. Until one
    /// works, the units loaded since are not started (their old definition,
    /// or none, is what systemd would run) and the next pass reloads again.
    async fn daemon_reload(&mut self, manager: &Manager) -> Result<(), TaskError> {
        let mut attempt = 1;
        loop {
            match manager.reload().await {
                Ok(()) => {
                    self.reload_pending = false;
                    self.unreloaded.clear();
                    return Ok(());
                }
                Err(error) if error.is_connection_lost() || attempt >= RELOAD_ATTEMPTS => {
                    return Err(error.into());
                }
                Err(error) => {
                    warn!(%error, attempt, "systemd daemon-reload failed; trying again.");
                    attempt += 1;
                    tokio::time::sleep(RELOAD_RETRY).await;
                }
            }
        }
    }

    /// The breaker (see [`breaker`]): drops from `tasks` the unloads of
    /// units that left the schedule without an order from the engine, when
    /// they are too many. Logs loudly while it holds.
    async fn hold_unordered_unloads(&mut self, tasks: Vec<Task>) -> Vec<Task> {
        let leaving: Vec<UnitName> = tasks
            .iter()
            .filter_map(|task| match task {
                Task::Unload { unit, .. } if !self.desired.contains_key(unit) => Some(unit.clone()),
                _ => None,
            })
            .collect();
        let orders = if leaving.is_empty() {
            BTreeMap::new()
        } else {
            match self.registry.unload_orders(&self.machine).await {
                Ok(orders) => orders,
                Err(error) => {
                    warn!(%error, "Cannot read the engine's unload orders; counting the unloads as unordered.");
                    BTreeMap::new()
                }
            }
        };
        let (ordered, unordered): (BTreeSet<UnitName>, BTreeSet<UnitName>) =
            leaving.into_iter().partition(|unit| {
                let known_until = self.left_at.get(unit).copied().unwrap_or_default();
                orders.get(unit).is_some_and(|order| *order > known_until)
            });
        self.ordered = ordered;
        let verdict = self
            .breaker
            .decide(Instant::now(), self.on_disk.len(), &unordered);
        match verdict.event {
            Some(BreakerEvent::Tripped { held, on_machine }) => error!(
                held,
                on_machine,
                units = ?verdict.held,
                "Unload breaker tripped: units vanished from this machine's schedule without an order from the engine (wiped registry, wrong etcd_key_prefix or an old backup?). They keep running; nothing is unloaded until the engine orders it or the schedule returns."
            ),
            Some(BreakerEvent::Released) => {
                info!("Unload breaker released: no unordered unload is held any more.")
            }
            None if !verdict.held.is_empty() => {
                warn!(
                    held = verdict.held.len(),
                    "Unload breaker holds; units keep running."
                )
            }
            None => {}
        }
        if !unordered.is_empty() && verdict.held.is_empty() {
            info!(units = ?unordered, "Unloading units that left the schedule without an engine order (below the breaker's threshold).");
        }
        let tasks: Vec<Task> = tasks
            .into_iter()
            .filter(
                |task| !matches!(task, Task::Unload { unit, .. } if verdict.held.contains(unit)),
            )
            .collect();
        // Without a file change left, a reload would only repeat on every retry.
        let files_change = tasks
            .iter()
            .any(|task| matches!(task, Task::Load { .. } | Task::Unload { .. }));
        if files_change || self.reload_pending {
            tasks
        } else {
            tasks
                .into_iter()
                .filter(|task| *task != Task::ReloadUnitFiles)
                .collect()
        }
    }

    /// Waits (at most [`STOP_WAIT`]) until systemd has run the stop jobs of
    /// the units unloaded this pass. `StopUnit` only queues a job, and
    /// systemd runs its job queue when no D-Bus request is waiting, so right
    /// after a burst of unloads the units may still run; their states are
    /// deleted after this pass, and a deleted state says "not running here"
    /// (`fleetctl drain` returns on it).
    async fn await_stopped(&mut self, manager: &Manager) -> Result<(), DbusError> {
        // A unit loaded again this pass (new content) is meant to run.
        let names: Vec<String> = std::mem::take(&mut self.stopping)
            .iter()
            .filter(|unit| !self.on_disk.contains_key(*unit))
            .map(ToString::to_string)
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            let mut running = 0usize;
            for chunk in names.chunks(STATUS_CHUNK) {
                let statuses = match manager.list_units_by_names(chunk).await {
                    Ok(statuses) => statuses,
                    Err(error) if error.is_connection_lost() => return Err(error),
                    Err(error) => {
                        warn!(%error, "Cannot ask systemd whether unloaded units stopped.");
                        return Ok(());
                    }
                };
                running += statuses
                    .iter()
                    .filter(|status| {
                        matches!(
                            status.active_state.as_str(),
                            "active" | "activating" | "deactivating" | "reloading"
                        )
                    })
                    .count();
            }
            if running == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(
                    running,
                    "Unloaded units are still stopping; reporting them gone anyway."
                );
                return Ok(());
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// Stops the unit and, only if that worked (so it never becomes
    /// unmanageable), disables it, resets its failed state and removes its
    /// file. The file goes even if disable or reset-failed fail.
    async fn unload(&mut self, manager: &Manager, unit: &UnitName) -> Result<(), TaskError> {
        self.reached.remove(unit);
        match manager.stop_unit(unit.as_str()).await {
            Ok(_) => self.stopping.push(unit.clone()),
            Err(error) if error.systemd_error_name() == Some(NO_SUCH_UNIT) => {}
            Err(error) => return Err(error.into()),
        }
        let disabled = manager.disable_unit_files(&[unit.to_string()], true).await;
        if let Err(error) = &disabled
            && error.is_connection_lost()
        {
            return Err(error.clone().into());
        }
        match manager.reset_failed_unit(unit.as_str()).await {
            Ok(()) => {}
            Err(error) if error.systemd_error_name() == Some(NO_SUCH_UNIT) => {}
            Err(error) if error.is_connection_lost() => return Err(error.into()),
            Err(error) => debug!(unit = %unit, %error, "ResetFailedUnit failed."),
        }
        self.units.remove(unit).await?;
        self.on_disk.remove(unit);
        self.reload_pending = true;
        self.unreloaded.remove(unit);
        disabled?;
        Ok(())
    }

    // --- runs of run-to-completion units ---

    /// Deletes the outcome of `unit`'s previous run here, if there is one
    /// (the unit runs again, was stopped, or leaves the machine).
    async fn forget_run(&mut self, unit: &UnitName) -> Result<(), TaskError> {
        self.running.remove(unit);
        self.start_jobs.remove(unit);
        self.started_ok.remove(unit);
        if !self.runs.contains_key(unit) {
            return Ok(());
        }
        self.registry
            .delete_run_outcome(unit, &self.machine)
            .await
            .map_err(|source| TaskError::ForgetRun {
                unit: unit.clone(),
                source,
            })?;
        self.runs.remove(unit);
        Ok(())
    }

    /// Records the runs that ended since we last looked: a run-to-completion
    /// unit this agent started (or adopted while it ran) that systemd now
    /// reports `inactive` or `failed`, with its main process exited after
    /// the start. The outcome goes to the registry without a lease (see
    /// [`RunOutcome`]) before the unit's state shows it. A registry failure
    /// is logged and tried again at the next publication.
    async fn note_finished_runs(&mut self, manager: &Manager) -> Result<(), DbusError> {
        // Every unit started here is in `running`; most are not
        // run-to-completion, and their content is read only once they stop.
        let ended: Vec<(UnitName, UnitHash, u64)> = self
            .running
            .iter()
            .filter_map(|(unit, started_at)| {
                let desired = self.desired.get(unit)?;
                let status = self.statuses.get(unit)?;
                matches!(status.active_state.as_str(), "inactive" | "failed")
                    .then(|| (unit.clone(), desired.hash, *started_at))
            })
            .collect();
        for (unit, hash, started_at) in ended {
            match self.content(&unit, hash).await {
                Ok(file) if fleet_systemd::unit::runs_to_completion(&file) => {}
                Ok(_) => {
                    self.running.remove(&unit);
                    continue;
                }
                Err(error) => {
                    debug!(unit = %unit, %error, "Cannot read the unit's content to see whether it runs to completion.");
                    continue;
                }
            }
            let properties = match manager.unit_properties(unit.as_str()).await {
                Ok(properties) => properties,
                Err(error) if error.is_connection_lost() => return Err(error),
                Err(error) => {
                    warn!(unit = %unit, %error, "Cannot read how the unit's run ended.");
                    continue;
                }
            };
            let mut exited_at = properties.exec_main_exit_timestamp.unwrap_or(0);
            let mut properties = properties;
            if exited_at == 0 && self.started_ok.contains(&unit) {
                // Unloaded by systemd after a successful run (see
                // `started_ok`): the job's end is when we heard of it.
                exited_at = unix_micros();
                properties.result = "success".to_owned();
                properties.exec_main_status = Some(0);
            }
            if exited_at == 0 || exited_at < started_at {
                continue; // Not this run's end (yet).
            }
            let attempt = match self.registry.run_attempts(&unit).await {
                Ok(attempts) => attempts
                    .filter(|attempts| attempts.hash == hash)
                    .map_or(1, |attempts| attempts.attempts),
                Err(error) => {
                    warn!(unit = %unit, %error, "Cannot read the unit's run count; retrying.");
                    continue;
                }
            };
            let outcome = RunOutcome {
                unit: unit.clone(),
                machine: self.machine.clone(),
                hash,
                report: RunReport {
                    result: properties.result,
                    exit_status: properties.exec_main_status.unwrap_or(0),
                    exited_at_usecs: exited_at,
                    attempt,
                },
            };
            if let Err(error) = self.registry.put_run_outcome(&outcome).await {
                warn!(unit = %unit, %error, "Cannot record how the unit's run ended; retrying.");
                continue;
            }
            info!(unit = %unit, result = %outcome.report.result, exit_status = outcome.report.exit_status, attempt, "The unit's run ended.");
            self.running.remove(&unit);
            self.start_jobs.remove(&unit);
            self.started_ok.remove(&unit);
            self.runs.insert(unit, outcome);
        }
        Ok(())
    }

    // --- states ---

    /// What we report for a scheduled unit.
    fn report(&self, unit: &UnitName, desired: &Desired) -> UnitState {
        let (load_state, active_state, sub_state) = match self.statuses.get(unit) {
            Some(status) => (
                status.load_state.clone(),
                status.active_state.clone(),
                status.sub_state.clone(),
            ),
            None => (
                "not-found".to_owned(),
                "inactive".to_owned(),
                "dead".to_owned(),
            ),
        };
        let (load_state, active_state, sub_state) = match self.failures.get(unit) {
            Some(Failure::HostUnit) => (
                "error".to_owned(),
                "inactive".to_owned(),
                REFUSED_HOST_UNIT.to_owned(),
            ),
            _ => (load_state, active_state, sub_state),
        };
        let (load_state, active_state) = match self.failures.get(unit) {
            Some(Failure::Load) => ("error".to_owned(), active_state),
            Some(Failure::Start) if active_state != "active" => (load_state, "failed".to_owned()),
            _ => (load_state, active_state),
        };
        let hash = self
            .on_disk
            .get(unit)
            .copied()
            .flatten()
            .unwrap_or(desired.hash);
        UnitState {
            unit: unit.clone(),
            machine: self.machine.clone(),
            hash,
            load_state,
            active_state,
            sub_state,
            reached: self
                .reached
                .get(unit)
                .copied()
                .unwrap_or(TargetState::Inactive),
            run: self
                .runs
                .get(unit)
                .filter(|outcome| outcome.hash == hash)
                .map(|outcome| outcome.report.clone()),
        }
    }

    /// Writes the states that changed since the last publication (all of
    /// them under a new lease) and deletes those of units no longer
    /// scheduled here. `false` if etcd failed (retry later).
    async fn publish_states(&mut self) -> bool {
        if !self.schedule_known {
            return true;
        }
        let Some(lease) = *self.presence.borrow() else {
            return true; // not registered: a presence change wakes us
        };
        if self.published_lease != Some(lease) {
            self.published.clear();
            self.published_lease = Some(lease);
        }
        let states: Vec<UnitState> = self
            .desired
            .iter()
            .filter(|(_, desired)| desired.target != TargetState::Inactive)
            .map(|(unit, desired)| self.report(unit, desired))
            .collect();
        let states_units: BTreeSet<UnitName> =
            states.iter().map(|state| state.unit.clone()).collect();
        let changed: Vec<UnitState> = states
            .into_iter()
            .filter(|state| self.published.get(&state.unit) != Some(state))
            .collect();
        let (puts, mut deletes) = (changed.len(), 0usize);
        // Together: a burst of starts changes many states at once.
        if let Err(error) = self.registry.put_unit_states(&changed, lease).await {
            warn!(units = changed.len(), %error, "Publishing unit states failed; retrying.");
            return false;
        }
        for state in changed {
            fleet_metrics::get().agent.state_write("put");
            self.published.insert(state.unit.clone(), state);
        }
        let stale: Vec<UnitName> = self
            .published
            .keys()
            .filter(|unit| !states_units.contains(*unit))
            .cloned()
            .collect();
        for unit in stale {
            if let Err(error) = self.registry.delete_unit_state(&unit, &self.machine).await {
                warn!(unit = %unit, %error, "Deleting the unit's state failed; retrying.");
                return false;
            }
            deletes += 1;
            fleet_metrics::get().agent.state_write("delete");
            self.published.remove(&unit);
        }
        if puts + deletes > 0 {
            debug!(puts, deletes, %lease, "Published unit states.");
        }
        let units = self.published.values();
        fleet_metrics::get()
            .agent
            .units(units.map(|s| (s.active_state.as_str(), s.sub_state.as_str())));
        true
    }

    // --- shutdown ---

    /// `stop_units_on_shutdown`: one pass of unload over every unit on disk,
    /// within [`SHUTDOWN_DEADLINE`]; a unit systemd refuses to stop is left
    /// as it is (logged), never retried forever.
    async fn stop_everything(&mut self, manager: &Manager) {
        let work = async {
            let units: Vec<UnitName> = self.on_disk.keys().cloned().collect();
            info!(
                units = units.len(),
                "Stopping and unloading every unit (stop_units_on_shutdown)."
            );
            for unit in &units {
                if let Err(error) = self.unload(manager, unit).await {
                    warn!(unit = %unit, %error, "Cannot unload the unit at shutdown; leaving it.");
                }
            }
            if let Err(error) = manager.reload().await {
                warn!(%error, "Reloading systemd after unloading the units failed.");
            }
            let published: Vec<UnitName> =
                std::mem::take(&mut self.published).into_keys().collect();
            for unit in published {
                if let Err(error) = self.registry.delete_unit_state(&unit, &self.machine).await {
                    debug!(unit = %unit, %error, "Deleting the unit's state at shutdown failed.");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_DEADLINE, work).await.is_err() {
            warn!(after = ?SHUTDOWN_DEADLINE, "Unloading the units at shutdown did not finish in time; leaving the rest.");
        }
    }
}

/// Ready when the fence's verdict may have changed; never without a fence
/// (or once the fence is gone).
async fn fence_changed(changes: &mut Option<watch::Receiver<u64>>) {
    match changes {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                *changes = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// Now, in µs since the Unix epoch (systemd's timestamps are in these).
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// The next batch of the schedule watch; never ready without a watch.
async fn next_batch(
    watch: &mut Option<ChangeStream>,
) -> Result<Option<Vec<Changed>>, RegistryError> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

fn earliest(current: Option<Instant>, candidate: Instant) -> Instant {
    current.map_or(candidate, |at| at.min(candidate))
}

/// What the loop on one systemd connection keeps between wake-ups.
struct Serving {
    /// The watch of this machine's schedule (`None` until it is opened, and
    /// after it broke).
    schedule: Option<ChangeStream>,
    /// Units systemd signalled about whose state is not read yet.
    dirty: BTreeSet<UnitName>,
    /// Whether the heart still sends presence changes.
    presence_open: bool,
    clocks: Clocks,
}

impl Serving {
    fn new(now: Instant) -> Serving {
        Serving {
            schedule: None,
            dirty: BTreeSet::new(),
            presence_open: true,
            clocks: Clocks::new(now),
        }
    }
}

/// When each kind of the agent's work is next due, and the backoffs and
/// pacers that decide it. `None`: not due until something happens.
struct Clocks {
    /// Open (and if needed list) the schedule watch.
    list_at: Option<Instant>,
    /// Reconcile systemd with the schedule.
    reconcile_at: Option<Instant>,
    /// Read and publish unit states.
    states_at: Option<Instant>,
    /// The periodic resync: reconcile even if nothing was signalled.
    resync_at: Instant,
    registry_backoff: Backoff,
    task_backoff: Backoff,
    state_backoff: Backoff,
    /// At once when idle, a short gap after the previous pass when busy.
    reconcile_pacer: Pacer,
    state_pacer: Pacer,
}

impl Clocks {
    fn new(now: Instant) -> Clocks {
        Clocks {
            list_at: Some(now),
            reconcile_at: None,
            states_at: None,
            resync_at: now + RESYNC_INTERVAL,
            registry_backoff: Backoff::new(RETRY_INITIAL, RETRY_MAX),
            task_backoff: Backoff::new(RETRY_INITIAL, RETRY_MAX),
            state_backoff: Backoff::new(RETRY_INITIAL, RETRY_MAX),
            reconcile_pacer: Pacer::new(RECONCILE_GAP),
            state_pacer: Pacer::new(STATE_GAP),
        }
    }

    /// When the loop must wake at the latest.
    fn wake(&self) -> Instant {
        [self.list_at, self.reconcile_at, self.states_at]
            .into_iter()
            .flatten()
            .fold(self.resync_at, Instant::min)
    }

    /// The schedule changed: reconcile as soon as the pacer allows.
    fn reconcile_soon(&mut self) {
        let due = self.reconcile_pacer.due(Instant::now());
        self.reconcile_at = Some(earliest(self.reconcile_at, due));
    }

    /// A unit changed in systemd: publish states as soon as the pacer allows.
    fn states_soon(&mut self) {
        let due = self.state_pacer.due(Instant::now());
        self.states_at = Some(earliest(self.states_at, due));
    }

    /// Open the schedule watch again after a backoff.
    fn list_later(&mut self) {
        self.list_at = Some(Instant::now() + self.registry_backoff.next_delay());
    }

    /// Whether `slot` is due at `now`; if so it is cleared (the caller sets
    /// it again if the work must be retried).
    fn take_due(slot: &mut Option<Instant>, now: Instant) -> bool {
        if slot.is_some_and(|at| at <= now) {
            *slot = None;
            true
        } else {
            false
        }
    }
}

/// Records one reconcile pass in the metrics when dropped, whichever way the
/// pass ends.
struct ReconcileTimer(std::time::Instant);

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        fleet_metrics::get().agent.reconcile(self.0);
    }
}
