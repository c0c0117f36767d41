//! The engine: leader election and scheduling.
//!
//! Every fleetd with the engine enabled runs an [`Engine`]. One of them leads:
//! it holds `P/engine/leader` under its own lease (TTL `lease_ttl`, kept alive
//! every TTL/3 from a task of its own, module `lease`), keeps an in-memory [`model::Model`] of the cluster (one
//! snapshot at a revision, then watches from the next revision, re-listing
//! after a compaction), batches watch events for about 50 ms, runs the pure
//! [`scheduler::schedule`] and writes the decisions with
//! [`Registry::commit_schedule`], whose transactions are guarded by the
//! leadership so that a deposed leader cannot write. The others follow: they
//! watch the leader key and campaign when it disappears.
//!
//! Machine loss goes through [`loss::LossTracker`] (grace period and breaker);
//! the scheduler gets its verdict as an input.
//!
//! Rolling updates go through [`rollouts::Rollouts`], which runs the pure
//! [`rollout_driver`] about once a second while a rollout is active and pins
//! the placements it has updated to the new content.
//!
//! Run-to-completion units go through [`runs::plan`]: a finished run stays
//! where it ran (also on a lost machine), a failed one is retried while
//! `Retries=` allows.
//!
//! The engine never talks to systemd and never writes anything but the
//! schedule, its leader key, rollout progress, run counts and, at the end of
//! a successful rollout, the rolled-out unit records.

pub mod drain;
mod lease;
pub mod loss;
pub mod model;
pub mod rollout_driver;
pub mod rollouts;
pub mod runs;
#[cfg(test)]
mod slow_pass_tests;
/// The pure scheduler, its own crate so nothing impure can creep in.
pub use fleet_scheduler as scheduler;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use fleet_registry::changes::{Change, ChangeStream, Changed, Watched};
use fleet_registry::store::{Leadership, LeaseId, Revision, ScheduleChange, ScheduleReasons};
use fleet_registry::{MachineId, MachineState, Placement, Registry, RegistryError};
use fleet_systemd::unit::UnitName;

use crate::backoff::Backoff;
use crate::config::EngineConfig;
use crate::engine::drain::DrainTracker;
use crate::engine::lease::LeaseTask;
use crate::engine::loss::{BreakerEvent, LossTracker};
use crate::engine::model::Model;
use crate::engine::rollouts::Rollouts;
use crate::engine::runs::{RunBook, RunPlan};
use crate::engine::scheduler::{Cordons, Decision, LossPolicy, UnitSpec, schedule_with};
use crate::pacing::Pacer;

/// The least time between the end of a pass and the start of the next: a
/// change on an idle engine is scheduled at once, while a `fleetctl start`
/// of 100 units, which arrives as 100 events, is gathered into a few passes
/// with one batch of writes each, far cheaper than 100 (see
/// [`crate::pacing`]).
const PASS_GAP: Duration = Duration::from_millis(50);

/// How soon a pass follows changes that cannot lead to a decision (see
/// `apply`): it only brings the pass's gauges (units by target state,
/// unschedulable units) up to date. Not at once, because a pass that wrote
/// nothing still starts the [`PASS_GAP`]: `fleetctl start` creates a unit
/// `inactive` and sets it `launched` a few milliseconds later, and that
/// `launched` waited the whole gap behind a pass run for the create.
const IDLE_CHANGE_DELAY: Duration = Duration::from_secs(1);

/// The safety-net resync: re-list everything and run a pass, in case a watch
/// silently missed something. Slow on purpose (a re-list of 20,000 units is
/// a large read).
const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// The breaker window when nothing better is known: the default agent TTL,
/// the time over which machine leases expire together after a blip.
const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(30);

/// How often an active rollout looks at its units' health.
const ROLLOUT_TICK: Duration = Duration::from_secs(1);

/// At most this many unschedulable units are logged one by one per pass.
const MAX_UNSCHEDULABLE_LOGGED: usize = 20;

/// What the engine is doing, for observers (tests, a future status API).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// The leader as last seen.
    pub leader: Option<MachineId>,
    /// Our leadership while we lead.
    pub leadership: Option<Leadership>,
    /// Our engine lease while we lead.
    pub lease: Option<LeaseId>,
    /// Whether the machine-loss breaker holds.
    pub breaker_tripped: bool,
}

/// See the module docs.
pub struct Engine {
    config: EngineConfig,
    registry: Registry,
    machine: MachineId,
    breaker_window: Duration,
    status: watch::Sender<EngineStatus>,
    /// Tests only: every pass waits at this gate first (a pass that takes
    /// as long as the test wants).
    #[cfg(test)]
    pass_gate: Option<std::sync::Arc<slow_pass_tests::PassGate>>,
}

/// Why leading stopped.
enum Stop {
    Shutdown,
    Deposed,
}

impl Engine {
    pub fn new(config: EngineConfig, registry: Registry, machine: MachineId) -> Engine {
        let breaker_window = DEFAULT_BREAKER_WINDOW.max(config.machine_loss_grace);
        Engine {
            config,
            registry,
            machine,
            breaker_window,
            status: watch::Sender::new(EngineStatus::default()),
            #[cfg(test)]
            pass_gate: None,
        }
    }

    /// The breaker window: machines vanishing within it count together
    /// (default 30 s, the default agent TTL; use the configured `agent_ttl`).
    pub fn with_breaker_window(mut self, window: Duration) -> Engine {
        self.breaker_window = window;
        self
    }

    /// A view of what the engine is doing.
    pub fn status(&self) -> watch::Receiver<EngineStatus> {
        self.status.subscribe()
    }

    /// Campaigns, leads or follows until `shutdown`; a leader resigns on the
    /// way out so that another engine takes over at once.
    ///
    /// # Errors
    /// None so far: etcd errors are retried with backoff for as long as it takes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(
            Duration::from_secs(1),
            self.config.lease_ttl.max(Duration::from_secs(2)),
        );
        info!(machine = %self.machine, "Engine started.");
        while !shutdown.is_cancelled() {
            match self.round(&shutdown).await {
                Ok(()) => backoff.reset(),
                Err(error) => {
                    warn!(%error, "Engine election round failed; retrying.");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        info!("Engine stopped.");
        Ok(())
    }

    fn note_leader(&self, leader: Option<&MachineId>) {
        let changed = self.status.borrow().leader.as_ref() != leader;
        if changed {
            match leader {
                Some(leader) => info!(leader = %leader, "Engine leader is {leader}."),
                None => info!("No engine leader."),
            }
            self.status
                .send_modify(|status| status.leader = leader.cloned());
        }
    }

    /// One election round: follow a live leader until its key goes, or
    /// campaign and lead.
    async fn round(&self, shutdown: &CancellationToken) -> Result<(), RegistryError> {
        if let Some(leader) = self.registry.leader().await? {
            self.note_leader(Some(&leader));
            return self.follow(shutdown).await;
        }
        let lease = self.registry.grant_lease(self.config.lease_ttl).await?;
        let leadership = match self.registry.campaign(&self.machine, lease).await {
            Ok(Some(leadership)) => leadership,
            Ok(None) => {
                self.revoke(lease).await;
                return Ok(());
            }
            Err(error) => {
                self.revoke(lease).await;
                return Err(error);
            }
        };
        self.note_leader(Some(&self.machine));
        info!(
            revision = %leadership.revision,
            %lease, "Became the engine leader."
        );
        fleet_metrics::get().engine.set_leader(true);
        self.status.send_modify(|status| {
            status.leadership = Some(leadership.clone());
            status.lease = Some(lease);
        });
        let stop = self.lead(&leadership, lease, shutdown).await;
        fleet_metrics::get().engine.set_leader(false);
        self.status.send_modify(|status| {
            status.leadership = None;
            status.lease = None;
            status.breaker_tripped = false;
        });
        match stop {
            Stop::Shutdown => {
                if let Err(error) = self.registry.resign(&leadership).await {
                    warn!(%error, "Resigning the engine leadership failed; it ends with the lease.");
                }
                self.revoke(lease).await;
                info!("Resigned the engine leadership.");
            }
            Stop::Deposed => {
                warn!("Lost the engine leadership.");
                self.revoke(lease).await;
                self.note_leader(None);
            }
        }
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) {
        if let Err(error) = self.registry.revoke_lease(lease).await {
            debug!(%error, %lease, "Revoking the engine lease failed; it expires by itself.");
        }
    }

    /// Waits until the leader key is gone (or a lease TTL passes, as a
    /// safety net), without any request while the leader lives.
    async fn follow(&self, shutdown: &CancellationToken) -> Result<(), RegistryError> {
        // Revision 0: from now. The key may have gone between our read and
        // the watch, so read again once the watch is in place.
        let mut stream = self
            .registry
            .watch_changes(Watched::EngineLeader, Revision::default())
            .await?;
        match self.registry.leader().await? {
            None => return Ok(()),
            Some(leader) => self.note_leader(Some(&leader)),
        }
        let deadline = sleep(self.config.lease_ttl * 2);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = &mut deadline => return Ok(()),
                events = stream.next() => match events? {
                    None => return Ok(()),
                    Some(events) => {
                        for changed in events {
                            match changed.change {
                                Change::LeaderGone => return Ok(()),
                                Change::LeaderIs(leader) => self.note_leader(Some(&leader)),
                                _ => {}
                            }
                        }
                    }
                },
            }
        }
    }

    /// Leads until shutdown or until the leadership is lost. Errors other
    /// than losing the leadership are retried inside.
    async fn lead(
        &self,
        leadership: &Leadership,
        lease: LeaseId,
        shutdown: &CancellationToken,
    ) -> Stop {
        let mut leader = Leader::new(self, leadership.clone());
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            self.config.lease_ttl.max(Duration::from_secs(1)),
        );
        // Kept alive on its own task, so a long pass cannot depose us.
        let lease = LeaseTask::spawn(&self.registry, lease, self.config.lease_ttl);

        'relist: loop {
            let mut watches = match leader.relist().await {
                Ok(watches) => watches,
                Err(error) => {
                    warn!(%error, "Listing the cluster failed; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => return Stop::Shutdown,
                        () = sleep(backoff.next_delay()) => continue 'relist,
                    }
                }
            };
            backoff.reset();
            let mut dirty_since: Option<Instant> = Some(Instant::now());
            let mut rollout_at = Instant::now();
            let resync_at = Instant::now() + RESYNC_INTERVAL;
            let mut pacer = Pacer::new(PASS_GAP);
            loop {
                let now = Instant::now();
                let batch_deadline = dirty_since.map(|since| pacer.due(since));
                let loss_deadline = leader
                    .loss
                    .next_deadline(now.into_std())
                    .map(Instant::from_std);
                let wake = [
                    batch_deadline,
                    loss_deadline,
                    leader.drain.wake(),
                    Some(resync_at),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(resync_at);
                tokio::select! {
                    () = shutdown.cancelled() => return Stop::Shutdown,
                    () = lease.lost() => return Stop::Deposed,
                    events = watches.machines.next() => {
                        if !leader.on_events(events, &mut dirty_since).await { continue 'relist; }
                    }
                    events = watches.metadata.next() => {
                        if !leader.on_events(events, &mut dirty_since).await { continue 'relist; }
                    }
                    events = watches.units.next() => {
                        if !leader.on_events(events, &mut dirty_since).await { continue 'relist; }
                    }
                    events = watches.content.next() => {
                        if !leader.on_events(events, &mut dirty_since).await { continue 'relist; }
                    }
                    events = watches.rollouts.next() => {
                        if !leader.on_rollout_events(events) { continue 'relist; }
                        rollout_at = Instant::now();
                    }
                    () = sleep_until(rollout_at), if leader.rollouts.any_active() => {
                        rollout_at = Instant::now() + ROLLOUT_TICK;
                        match leader.rollout_tick().await {
                            Ok(()) => {}
                            Err(RegistryError::NotLeader) => return Stop::Deposed,
                            Err(error) => {
                                warn!(%error, "Advancing a rollout failed; re-listing.");
                                tokio::select! {
                                    () = shutdown.cancelled() => return Stop::Shutdown,
                                    () = sleep(backoff.next_delay()) => continue 'relist,
                                }
                            }
                        }
                    }
                    events = watches.cordons.next() => {
                        if !leader.on_events(events, &mut dirty_since).await { continue 'relist; }
                    }
                    events = watches.runs.next() => {
                        if !leader.on_events(events, &mut dirty_since).await { continue 'relist; }
                    }
                    () = sleep_until(wake) => {
                        if Instant::now() >= resync_at {
                            debug!("Periodic resync.");
                            continue 'relist;
                        }
                        dirty_since = None;
                        let outcome = leader.pass().await;
                        pacer.ran(Instant::now());
                        match outcome {
                            Ok(()) => {}
                            Err(RegistryError::NotLeader) => return Stop::Deposed,
                            Err(error) => {
                                // Some batches may have been written: re-list
                                // rather than guess what the schedule holds.
                                warn!(%error, "Writing the schedule failed; re-listing.");
                                tokio::select! {
                                    () = shutdown.cancelled() => return Stop::Shutdown,
                                    () = sleep(backoff.next_delay()) => continue 'relist,
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The watches of a leader.
struct Watches {
    machines: ChangeStream,
    metadata: ChangeStream,
    units: ChangeStream,
    content: ChangeStream,
    rollouts: ChangeStream,
    cordons: ChangeStream,
    runs: ChangeStream,
}

/// The state of a leading engine.
struct Leader<'a> {
    engine: &'a Engine,
    leadership: Leadership,
    model: Model,
    loss: LossTracker,
    /// The reason last logged for each unschedulable unit, so that a unit
    /// stuck for an hour is logged once, not every pass.
    reported: HashMap<UnitName, String>,
    /// The rolling updates, read at every re-list and fed by their watch.
    rollouts: Rollouts,
    /// Cordoned and draining machines, and the drain's pace.
    drain: DrainTracker,
    /// How the runs of run-to-completion units ended, and our counts.
    runs: RunBook,
}

impl<'a> Leader<'a> {
    fn new(engine: &'a Engine, leadership: Leadership) -> Leader<'a> {
        let config = &engine.config;
        Leader {
            engine,
            leadership,
            model: Model::default(),
            loss: LossTracker::new(
                config.machine_loss_grace,
                config.breaker_fraction,
                engine.breaker_window,
            )
            .with_restart_grace(config.machine_restart_grace),
            reported: HashMap::new(),
            rollouts: Rollouts::default(),
            drain: DrainTracker::default(),
            runs: RunBook::default(),
        }
    }

    fn registry(&self) -> &Registry {
        &self.engine.registry
    }

    /// Reads a snapshot and watches from the revision after it.
    async fn relist(&mut self) -> Result<Watches, RegistryError> {
        let snapshot = self.registry().snapshot().await?;
        let revision = snapshot.revision;
        let from = revision.next();
        let registry = self.registry();
        let watches = Watches {
            machines: registry.watch_changes(Watched::Machines, from).await?,
            metadata: registry.watch_changes(Watched::Metadata, from).await?,
            units: registry.watch_changes(Watched::Units, from).await?,
            content: registry.watch_changes(Watched::Content, from).await?,
            rollouts: registry.watch_changes(Watched::Rollouts, from).await?,
            cordons: registry.watch_changes(Watched::Cordons, from).await?,
            runs: registry.watch_changes(Watched::Runs, from).await?,
        };
        // Read after the snapshot: a cordon written in between shows up both
        // here and as a watch event, which is harmless.
        let cordons = self.registry().cordons().await?;
        self.drain.set_all(cordons);
        // Read after the watch started too: an outcome seen twice is the same.
        let outcomes = self.registry().run_outcomes().await?;
        let counts = self.registry().all_run_attempts().await?;
        self.runs = RunBook::new(outcomes, counts);
        self.model = Model::from_snapshot(snapshot);
        // Read after the watch started, so no spec is missed; a spec seen
        // twice is the same spec.
        self.rollouts = Rollouts::load(self.registry()).await?;
        // Machines that hold placements but are gone: their clock starts now
        // if we did not see them go (we may have just become the leader).
        let now = Instant::now().into_std();
        for machine in self.model.absent_placed_machines() {
            self.loss.vanished(&machine, now);
        }
        for machine in self.model.machines.keys() {
            self.loss.returned(machine);
        }
        self.read_clean_stops().await;
        info!(
            %revision,
            n_machines = self.model.machines.len(),
            n_units = self.model.units.len(),
            n_placements = self.model.placements.len(),
            "Engine listed the cluster."
        );
        Ok(watches)
    }

    /// Applies a batch from one watch. `false` when the watch broke and the
    /// model must be re-listed.
    async fn on_events(
        &mut self,
        events: Result<Option<Vec<Changed>>, RegistryError>,
        dirty_since: &mut Option<Instant>,
    ) -> bool {
        let events = match events {
            Ok(Some(events)) => events,
            Ok(None) => {
                warn!("An engine watch ended; re-listing.");
                return false;
            }
            Err(error) => {
                warn!(%error, "An engine watch failed; re-listing.");
                return false;
            }
        };
        let mut may_decide = false;
        for changed in events {
            may_decide |= self.apply(changed.change).await;
        }
        let now = Instant::now();
        let due = if may_decide {
            now
        } else {
            now + IDLE_CHANGE_DELAY
        };
        *dirty_since = Some(dirty_since.map_or(due, |since| since.min(due)));
        true
    }

    /// Applies a batch from the rollouts watch; `false` when it broke.
    fn on_rollout_events(&mut self, events: Result<Option<Vec<Changed>>, RegistryError>) -> bool {
        let events = match events {
            Ok(Some(events)) => events,
            Ok(None) | Err(_) => {
                warn!("The engine's rollouts watch ended; re-listing.");
                return false;
            }
        };
        for changed in events {
            match changed.change {
                Change::RolloutRequested { name, spec } => self.rollouts.put_spec(&name, &spec),
                Change::RolloutRemoved(name) => self.rollouts.remove(&name),
                _ => {}
            }
        }
        true
    }

    /// One step of every active rollout.
    async fn rollout_tick(&mut self) -> Result<(), RegistryError> {
        let registry = self.engine.registry.clone();
        self.rollouts
            .tick(&registry, &self.leadership, &mut self.model)
            .await
    }

    /// Reads which machines stopped cleanly (their units still run): those
    /// get the restart grace. On error the marks known so far stay.
    async fn read_clean_stops(&mut self) {
        match self.registry().stopped_machines().await {
            Ok(stopped) => {
                let absent: std::collections::BTreeSet<MachineId> = stopped
                    .into_keys()
                    .filter(|machine| !self.model.machines.contains_key(machine))
                    .collect();
                if !absent.is_empty() {
                    info!(machines = ?absent, grace = ?self.engine.config.machine_restart_grace, "Machines stopped cleanly with their units running; they get the restart grace.");
                }
                self.loss.set_stopped_cleanly(absent);
            }
            Err(error) => {
                warn!(%error, "Reading the clean-stop marks failed; keeping those known.")
            }
        }
    }

    /// Applies one change to the model, the loss clocks or the drains.
    /// `false` when a scheduling pass provably has nothing to decide after
    /// it: a unit created or set `inactive` that is placed nowhere (what
    /// `fleetctl start` writes first, before the target state), its content
    /// or its destruction. Such a change only asks for a pass within
    /// [`IDLE_CHANGE_DELAY`].
    async fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::UnitRecord {
                record: Some(_), ..
            }
            | Change::UnitRemoved(_)
            | Change::Content { .. }
            | Change::ContentRemoved(_) => self.apply_unit_change(change),
            other => {
                self.apply_other(other).await;
                true
            }
        }
    }

    /// A unit record, destruction or content, applied to the model. `false`
    /// when it leaves every unit it touches idle (see [`Model::is_idle`]): a
    /// record that leaves its unit idle, the destruction of an idle unit, a
    /// content no unit that is not idle waited for.
    fn apply_unit_change(&mut self, change: Change) -> bool {
        match change {
            Change::UnitRecord {
                unit,
                record: Some((hash, desired_state)),
            } => {
                self.model
                    .put_unit_record(unit.clone(), hash, desired_state);
                !self.model.is_idle(&unit)
            }
            Change::UnitRemoved(unit) => {
                let idle = self.model.is_idle(&unit);
                self.model.remove_unit(&unit);
                !idle
            }
            Change::Content { hash, file } => {
                let may_decide = self.model.content_may_decide(&hash);
                self.model.put_content(hash, file);
                may_decide
            }
            Change::ContentRemoved(hash) => {
                self.model.remove_content(&hash);
                false
            }
            _ => true,
        }
    }

    /// Every other change: machines, cordons, runs; each may lead to a
    /// decision.
    async fn apply_other(&mut self, change: Change) {
        let now = Instant::now().into_std();
        match change {
            Change::MachineRemoved(machine) => {
                if self.model.machines.remove(&machine).is_some() {
                    info!(machine = %machine, "Machine vanished.");
                }
                self.loss.vanished(&machine, now);
                self.read_clean_stops().await;
            }
            Change::MachinePresent(record) => {
                let machine = record.id.clone();
                if self.model.put_machine_record(record) {
                    info!(machine = %machine, "Machine present.");
                }
                self.loss.returned(&machine);
            }
            Change::MetadataChanged {
                machine,
                key,
                value,
            } => {
                self.model.put_dynamic_metadata(&machine, key, value);
                // Rare (an operator's edit): read the merged machine.
                if self.model.machines.contains_key(&machine) {
                    self.reread_machine(machine, now).await;
                }
            }
            Change::MachineUpdated(machine) => self.reread_machine(machine, now).await,
            Change::UnitRecord { unit, record: None } => {
                // Not a destroy: the unit keeps its placements (and keeps
                // running) until a record that decodes replaces this one.
                error!(unit = %unit, "The unit's record does not decode; keeping the unit as it was.");
                self.model.hold_unusable(unit);
            }
            Change::Cordoned(cordon) => self.drain.put(cordon),
            Change::CordonLifted(machine) => self.drain.remove(&machine),
            Change::RunEnded(outcome) => {
                let key = (outcome.unit.clone(), outcome.machine.clone());
                self.runs.outcomes.insert(key, outcome);
            }
            Change::RunForgotten { unit, machine } => {
                self.runs.outcomes.remove(&(unit, machine));
            }
            // The schedule is not watched (the engine is its only writer) and
            // rollouts come on their own watch.
            Change::Placed(_)
            | Change::Unplaced { .. }
            | Change::RolloutRequested { .. }
            | Change::RolloutRemoved(_)
            | Change::LeaderIs(_)
            | Change::LeaderGone => {}
            // Taken by `apply_unit_change`.
            Change::UnitRecord {
                record: Some(_), ..
            }
            | Change::UnitRemoved(_)
            | Change::Content { .. }
            | Change::ContentRemoved(_) => {}
        }
    }

    /// Reads a machine with its metadata merged: after an edit of its
    /// dynamic metadata, or when its record did not decode (rare events).
    async fn reread_machine(&mut self, machine: MachineId, now: std::time::Instant) {
        match self.engine.registry.machine(&machine).await {
            Ok(Some(state)) => {
                if self.model.machines.insert(machine.clone(), state).is_none() {
                    info!(machine = %machine, "Machine present.");
                }
                self.loss.returned(&machine);
            }
            Ok(None) => {
                if self.model.machines.remove(&machine).is_some() {
                    self.loss.vanished(&machine, now);
                }
            }
            Err(error) => {
                warn!(%error, machine = %machine, "Reading a changed machine failed; the next resync corrects it.")
            }
        }
    }

    /// One scheduling pass over the model; writes its decisions.
    async fn pass(&mut self) -> Result<(), RegistryError> {
        #[cfg(test)]
        if let Some(gate) = &self.engine.pass_gate {
            gate.enter().await;
        }
        // Units whose content has not come through the content watch yet
        // (it is a separate stream): read them directly.
        for name in self.model.units_without_content() {
            match self.engine.registry.unit(&name).await {
                Ok(Some(unit)) => self.model.put_unit(unit),
                Ok(None) => self.model.remove_unit(&name),
                // Missing or unparsable content: the unit waits, placements
                // untouched; one bad unit must not stop every pass.
                Err(RegistryError::Decode { key, message }) => {
                    warn!(unit = %name, key, message, "The unit's content is unusable; leaving the unit where it runs.");
                }
                Err(error) => return Err(error),
            }
        }
        let now = Instant::now().into_std();
        let n_present = self.model.machines.len();
        let (policy, event) = self.loss.evaluate(now, n_present);
        self.log_breaker(event, n_present);
        let metrics = &fleet_metrics::get().engine;
        metrics.breaker(policy.breaker_tripped);
        metrics.machines(n_present, policy.lost_beyond_grace.len());
        metrics.units_by_target(self.model.units.values().map(|u| u.desired_state.as_str()));
        self.engine.status.send_if_modified(|status| {
            let changed = status.breaker_tripped != policy.breaker_tripped;
            status.breaker_tripped = policy.breaker_tripped;
            changed
        });
        let model = &self.model;
        self.loss
            .prune(now, |machine| model.has_placements_on(machine));

        let run_plan = runs::plan(&self.model.units, &self.model.placements, &self.runs);
        self.write_run_counts(&run_plan).await?;

        let started = std::time::Instant::now();
        let (machines, units, placements) = self.model.scheduler_input();
        let (units, placements) = without_held_runs(units, placements, &run_plan);
        let cordons = self.drain.cordons(&self.engine.registry).await?;
        let mut outcome = schedule_with(&machines, &units, &placements, &policy, &cordons);
        outcome.decisions.extend(run_decisions(
            &run_plan,
            &self.model,
            &machines,
            &units,
            &placements,
            &policy,
            &cordons,
        ));
        let elapsed = started.elapsed();
        metrics.pass(started);
        metrics.unschedulable(outcome.unschedulable.iter().map(|u| u.reason.as_str()));
        debug!(
            n_decisions = outcome.decisions.len(),
            n_unschedulable = outcome.unschedulable.len(),
            ?elapsed,
            "Scheduler pass."
        );
        self.log_unschedulable(&outcome.unschedulable);
        self.drain.after_pass(
            &outcome.drain_moves,
            &outcome.drain_blocked,
            outcome.drain_waiting,
        );
        if outcome.decisions.is_empty() {
            return Ok(());
        }
        let changes: Vec<ScheduleChange> = outcome
            .decisions
            .iter()
            .map(|decision| match decision {
                Decision::Place { placement, .. } => ScheduleChange::Place(placement.clone()),
                Decision::Unplace { unit, machine, .. } => ScheduleChange::Unplace {
                    unit: unit.clone(),
                    machine: machine.clone(),
                },
            })
            .collect();
        let changes = self.rollouts.apply_pins(changes, &self.model);
        if changes.is_empty() {
            return Ok(());
        }
        for decision in &outcome.decisions {
            debug!(unit = %decision.unit(), machine = %decision.machine(), reason = decision.reason(), "{}", if matches!(decision, Decision::Place { .. }) { "Placing unit." } else { "Unplacing unit." });
        }
        // The scheduler's reason of each decision is stored with it, for
        // the event stream; a change the rollouts added is theirs.
        let reasons: ScheduleReasons = outcome
            .decisions
            .iter()
            .map(|decision| {
                let key = (decision.unit().clone(), decision.machine().clone());
                (key, decision.reason().to_owned())
            })
            .collect();
        self.engine
            .registry
            .commit_explained_schedule(&self.leadership, &changes, &reasons)
            .await?;
        self.model.apply(&changes);
        let n_placed = changes
            .iter()
            .filter(|change| matches!(change, ScheduleChange::Place(_)))
            .count();
        metrics.decisions("place", n_placed);
        metrics.decisions("unplace", changes.len() - n_placed);
        info!(
            n_placed,
            n_unplaced = changes.len() - n_placed,
            "Engine wrote schedule changes."
        );
        Ok(())
    }

    /// Writes the run counts `run_plan` decided, and deletes those no longer
    /// needed, before any schedule change that depends on them.
    async fn write_run_counts(&mut self, run_plan: &RunPlan) -> Result<(), RegistryError> {
        for count in &run_plan.counts {
            self.engine
                .registry
                .put_run_attempts(&self.leadership, count)
                .await?;
            let failure = count.failures.last();
            info!(
                unit = %count.unit,
                machine = ?failure.map(|failure| &failure.machine),
                attempts = count.attempts,
                "A run of the unit failed; {}.",
                if run_plan.retries.iter().any(|(unit, _)| unit == &count.unit) {
                    "running it again"
                } else {
                    "no retry left"
                }
            );
            self.runs.attempts.insert(count.unit.clone(), count.clone());
        }
        for unit in &run_plan.forget {
            self.engine
                .registry
                .delete_run_attempts(&self.leadership, unit)
                .await?;
            self.runs.attempts.remove(unit);
        }
        Ok(())
    }

    fn log_breaker(&self, event: Option<BreakerEvent>, n_present: usize) {
        match event {
            None => {}
            Some(BreakerEvent::Tripped {
                lost,
                known,
                window,
            }) => {
                fleet_metrics::get().engine.breaker_event("tripped");
                warn!(
                    lost,
                    known,
                    "Rescheduling paused: {lost} of {known} machines vanished within {window:?}; waiting for them to return or for an operator."
                )
            }
            Some(BreakerEvent::ResumedMachinesReturned { still_lost }) => {
                fleet_metrics::get()
                    .engine
                    .breaker_event("resumed_returned");
                info!(
                    still_lost,
                    n_present, "Rescheduling resumed: enough machines returned."
                );
            }
            Some(BreakerEvent::ResumedHoldExpired { lost, held }) => {
                fleet_metrics::get().engine.breaker_event("resumed_expired");
                warn!(
                    lost,
                    ?held,
                    "Rescheduling resumed: the vanished machines stayed away too long; moving their units."
                );
            }
        }
    }

    fn log_unschedulable(&mut self, unschedulable: &[scheduler::Unschedulable]) {
        let mut n_logged = 0;
        let mut current = HashMap::with_capacity(unschedulable.len());
        for entry in unschedulable {
            if self.reported.get(&entry.unit) != Some(&entry.reason) {
                if n_logged < MAX_UNSCHEDULABLE_LOGGED {
                    warn!(unit = %entry.unit, reason = %entry.reason, "Unit cannot be scheduled: {}.", entry.reason);
                }
                n_logged += 1;
            }
            current.insert(entry.unit.clone(), entry.reason.clone());
        }
        if n_logged > MAX_UNSCHEDULABLE_LOGGED {
            warn!(
                n_units = n_logged - MAX_UNSCHEDULABLE_LOGGED,
                "More units cannot be scheduled (not listed)."
            );
        }
        self.reported = current;
    }
}

/// The scheduler's input without the run-to-completion units `run_plan`
/// holds (finished, being retried, or waiting for a retry placement) and
/// without their placements: the main pass leaves them alone.
fn without_held_runs(
    units: Vec<UnitSpec>,
    placements: Vec<Placement>,
    run_plan: &RunPlan,
) -> (Vec<UnitSpec>, Vec<Placement>) {
    if !run_plan.finished.is_empty() || !run_plan.retries.is_empty() || !run_plan.avoid.is_empty() {
        let units = units
            .into_iter()
            .filter(|unit| !run_plan.holds(&unit.name))
            .collect();
        let placements = placements
            .into_iter()
            .filter(|placement| !run_plan.holds(&placement.unit))
            .collect();
        return (units, placements);
    }
    (units, placements)
}

/// The schedule changes of retries: a failed run's unit leaves the machine
/// it failed on, and is placed by a pass of its own in which the machines it
/// failed on take no new placement (as if cordoned); when no other machine
/// fits, it is placed in a later pass anywhere the scheduler allows.
fn run_decisions(
    run_plan: &RunPlan,
    model: &Model,
    machines: &[MachineState],
    units: &[UnitSpec],
    placements: &[Placement],
    policy: &LossPolicy,
    cordons: &Cordons,
) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = run_plan
        .retries
        .iter()
        .map(|(unit, machine)| Decision::Unplace {
            unit: unit.clone(),
            machine: machine.clone(),
            reason: "its run failed: retrying".to_owned(),
        })
        .collect();
    for (name, failed_on) in &run_plan.avoid {
        let Some(spec) = model.units.get(name).and_then(|record| record.spec.clone()) else {
            continue;
        };
        let mut with_unit = units.to_vec();
        with_unit.push(spec);
        let mut avoiding = cordons.clone();
        avoiding.cordoned.extend(failed_on.iter().cloned());
        let placed_by = |cordons: &Cordons| {
            schedule_with(machines, &with_unit, placements, policy, cordons)
                .decisions
                .into_iter()
                .find(|decision| {
                    matches!(decision, Decision::Place { placement, .. } if &placement.unit == name)
                })
        };
        // A unit leaving a machine in this pass cannot be placed there again
        // in the same transaction: it waits for the next pass instead.
        let leaving = run_plan.retries.iter().any(|(unit, _)| unit == name);
        let decision = match placed_by(&avoiding) {
            Some(decision) => Some(decision),
            None if leaving => None,
            None => placed_by(cordons),
        };
        decisions.extend(decision);
    }
    decisions
}
